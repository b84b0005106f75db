"""The train state as one pytree, its optimizer, and its sharded initialisation.

`TrainState` holds the trainable params, the frozen rest of the model's variables, their EMA,
the optimizer state and the step; the model's NNX graph and the optax transformation ride along
as static (non-pytree) fields, so the state can be jitted, sharded, donated and checkpointed as
a plain tree. Which params train is a config filter (`train.trainable`): "params" trains all
of them; "lora" only `nnx.LoRAParam` adapters (the adaptation job), or a regex over param paths.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from busgen_jax.parallel import partition


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


def apply_gradients(
    state: TrainState,
    loss: jax.Array,
    grads: Any,
    ema_decay: float,
    learning_rate: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update and EMA step of `state`; the step's metrics (loss, gradient norm,
    learning rate), as every train step reports them."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate(state.step),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    return new_state, metrics


def abstract_state_and_shardings(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    model_fn: Callable[[], nnx.Module],
) -> tuple[Any, Any, Any]:
    """The state's init function, its abstract shapes and its shardings (nothing allocated).

    `model_fn` builds the model (`diffusion.train_step.unet_fn` for the diffusion U-Net).
    """
    tx = make_optimizer(config.train)
    wrt = trainable_filter(config.train.trainable)
    init_fn = functools.partial(init_train_state, model_fn, tx, wrt)
    abstract = jax.eval_shape(init_fn)
    rules = [tuple(rule) for rule in config.partition.rules]
    shardings = partition.state_shardings(abstract, rules, mesh, min_size=config.partition.min_size)
    return init_fn, abstract, shardings
