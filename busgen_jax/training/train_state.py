"""The train state as one pytree, its optimizer, and the pure diffusion train step.

`TrainState` holds the trainable params, the frozen rest of the model's variables, their EMA,
the optimizer state and the step; the model's NNX graph and the optax transformation ride along
as static (non-pytree) fields, so the state can be jitted, sharded, donated and checkpointed as
a plain tree. Which params train is a config filter (`train.trainable`): "params" trains all
of them; "lora" only `nnx.LoRAParam` adapters (the adaptation job), or a regex over param paths.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from busgen_jax.diffusion import losses

COND_DROP_MODES = ("batch", "example")


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    rest: nnx.State
    ema_params: nnx.State
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def model(self, params: nnx.State | None = None) -> nnx.Module:
        """The NNX model with `params` (default: the trained ones; pass `ema_params` for EMA)."""
        return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)


def trainable_filter(spec: str) -> nnx.filterlib.Filter:
    """The NNX filter of params that train: "params", "lora", or a regex over param paths."""
    if spec == "params":
        return nnx.Param
    if spec == "lora":
        return nnx.LoRAParam
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise ValueError(f"config.train.trainable: {spec!r} is not a valid regex: {e}") from e
    return lambda path, value: (
        isinstance(value, nnx.Param) and bool(pattern.search("/".join(str(p) for p in path)))
    )


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from `learning_rate` to `learning_rate * warmup_multiplier`, then cosine.

    This is the published GradualWarmupScheduler + CosineAnnealing pair: with a multiplier above
    1 the warm-up *raises* the rate above its base value; the cosine then decays it to 0.
    """
    peak = train.learning_rate * train.warmup_multiplier
    warmup = int(train.warmup_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(train.learning_rate, peak, max(warmup, 1)),
            optax.cosine_decay_schedule(peak, max(train.steps - warmup, 1)),
        ],
        [warmup],
    )


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with the warm-up/cosine schedule, after global-norm clipping (if `grad_clip` > 0)."""
    adamw = optax.adamw(
        learning_rate_schedule(train),
        b1=train.adam_b1,
        b2=train.adam_b2,
        eps=train.adam_eps,
        weight_decay=train.weight_decay,
    )
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
    return adamw


def init_train_state(
    model_fn: Callable[[], nnx.Module], tx: optax.GradientTransformation, wrt: Any = nnx.Param
) -> TrainState:
    """Builds the model and its state; meant to run under `jax.jit(..., out_shardings=...)`."""
    graphdef, params, rest = nnx.split(model_fn(), wrt, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        graphdef=graphdef,
        tx=tx,
    )


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static hyperparameters of `train_step` (hashable, baked into the compiled step)."""

    learning_rate: optax.Schedule
    ema_decay: float = 0.9999
    cond_drop_prob: float = 0.1
    cond_drop_mode: str = "batch"
    drop_box_mask: bool = False
    prediction: str = "eps"
    weighting: str = "uniform"
    reduction: str = "mean"
    compute_dtype: str = "float32"
    image_channels: int = 1


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
    """The StepConfig a job config describes."""
    train, diffusion = config.train, config.diffusion
    return StepConfig(
        learning_rate=learning_rate_schedule(train),
        ema_decay=train.ema_decay,
        cond_drop_prob=train.cond_drop_prob,
        cond_drop_mode=train.cond_drop_mode,
        drop_box_mask=train.drop_box_mask,
        prediction=diffusion.prediction,
        weighting=diffusion.weighting,
        reduction=diffusion.reduction,
        compute_dtype=train.compute_dtype,
        image_channels=config.model.image_channels,
    )


def drop_conditions(
    batch: dict[str, jax.Array], rng: jax.Array, prob: float, mode: str, drop_box_mask: bool
) -> dict[str, jax.Array]:
    """Replaces conditions by the null condition (id 0, empty mask) for classifier-free guidance.

    "batch" flips one coin for the whole batch and drops every condition at once (published);
    "example" flips one coin per example.
    """
    size = batch["class_id"].shape[0]
    coins = jax.random.uniform(rng, () if mode == "batch" else (size,)) < prob
    drop = jnp.broadcast_to(coins, (size,))
    out = dict(batch)
    out["class_id"] = jnp.where(drop, 0, batch["class_id"])
    out["device_id"] = jnp.where(drop, 0, batch["device_id"])
    if drop_box_mask:
        out["box_mask"] = jnp.where(drop[:, None, None, None], 0.0, batch["box_mask"])
    return out


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    cfg: StepConfig,
    schedule: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on the diffusion loss; params stay fp32 whatever `cfg.compute_dtype`.

    Randomness is `fold_in(rng, step)`, so the step is a pure function of (state, batch, rng).
    """
    rng = jax.random.fold_in(rng, state.step)
    drop_rng, loss_rng, dropout_rng = jax.random.split(rng, 3)
    cond = drop_conditions(
        batch, drop_rng, cfg.cond_drop_prob, cfg.cond_drop_mode, cfg.drop_box_mask
    )
    dtype = jnp.dtype(cfg.compute_dtype)
    # Grayscale data; the published model sees it repeated to RGB.
    x0 = jnp.repeat(batch["image"], cfg.image_channels // batch["image"].shape[-1], axis=-1)

    def loss_fn(params: nnx.State) -> jax.Array:
        model = nnx.merge(
            state.graphdef, _cast_floats(params, dtype), _cast_floats(state.rest, dtype)
        )

        def apply_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
            out = model(
                x_t.astype(dtype),
                t,
                cond["class_id"],
                cond["device_id"],
                cond["box_mask"].astype(dtype),
                dropout_rng=dropout_rng,
            )
            return out.astype(jnp.float32)

        return losses.diffusion_loss(
            apply_fn,
            x0,
            loss_rng,
            schedule,
            prediction=cfg.prediction,
            weighting=cfg.weighting,
            reduction=cfg.reduction,
        )

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - cfg.ema_decay)
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "learning_rate": cfg.learning_rate(state.step),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    return new_state, metrics
