"""The pure diffusion train step and its sharded, jitted form.

`train_step` draws timesteps and noise, drops conditions for classifier-free guidance, takes the
loss of `diffusion.losses` in the compute dtype, applies the optimizer and updates the EMA.
Pretraining, adaptation (which trains only LoRA params) and the demo all train with it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from busgen_jax.diffusion import losses, schedules
from busgen_jax.models import unet
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.training.train_state import TrainState, apply_gradients, learning_rate_schedule

COMPUTE_DTYPES = ("float32", "bfloat16")
BATCH_NDIMS = {"image": 4, "box_mask": 4, "class_id": 1, "device_id": 1}
COND_DROP_MODES = ("batch", "example")


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


def step_config(
    train: ml_collections.ConfigDict, diffusion: Mapping[str, Any], image_channels: int
) -> StepConfig:
    """The StepConfig of a job's `train` and `diffusion` sections, for a model of
    `image_channels` input channels."""
    return StepConfig(
        learning_rate=learning_rate_schedule(train),
        ema_decay=train.ema_decay,
        cond_drop_prob=train.cond_drop_prob,
        cond_drop_mode=train.cond_drop_mode,
        drop_box_mask=train.drop_box_mask,
        prediction=diffusion["prediction"],
        weighting=diffusion["weighting"],
        reduction=diffusion["reduction"],
        compute_dtype=train.compute_dtype,
        image_channels=image_channels,
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
    return apply_gradients(state, loss, grads, cfg.ema_decay, cfg.learning_rate)


def unet_fn(config: ml_collections.ConfigDict) -> Callable[[], unet.UNet]:
    """Builds the U-Net of `config.model`, seeded by `config.train.seed` (the state's model)."""
    return lambda: unet.UNet(config.model, rngs=nnx.Rngs(config.train.seed))


def make_train_step(
    cfg: StepConfig, schedule: schedules.Schedule, mesh: jax.sharding.Mesh, shardings: Any
):
    """`train_step` jitted with explicit shardings; the state argument is donated."""
    step = functools.partial(train_step, cfg=cfg, schedule=schedule)
    batch_shardings = {k: mesh_lib.batch_sharding(mesh, n) for k, n in BATCH_NDIMS.items()}
    return jax.jit(
        step,
        in_shardings=(shardings, batch_shardings, mesh_lib.replicated(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def make_pretrain_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, shardings: Any):
    """`make_train_step` for a pretraining config (`configs/pretrain.py`)."""
    cfg = step_config(config.train, config.diffusion, config.model.image_channels)
    return make_train_step(cfg, schedules.make_schedule(config.diffusion), mesh, shardings)
