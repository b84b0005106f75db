"""Distilling a guided diffusion model into a few-step, single-pass student.

Two stages, as in Meng et al. 2023 ("On distillation of guided diffusion models"):

1. Guidance distillation (their stage 1, eq. 6): a student x_eta(z_t, w) that takes the guidance
   weight w as an input learns the guided teacher's clean-image prediction
       x^w(z_t) = (1 + w) x_c(z_t) - w x_u(z_t)
   (Ho & Salimans 2022, eq. 6, applied to x0; guidance is affine in the prediction), with w drawn
   uniformly from a range. One pass of the student replaces the teacher's two.
2. Progressive distillation (Salimans & Ho 2022, Alg. 2; Meng et al. stage 2): a student with N
   DDIM steps learns to land where its teacher lands after 2N, i.e. one student step from t to
   t'' matches two teacher steps t -> t' -> t''. Its regression target is the x0 for which one
   DDIM step from z_t reaches the teacher's z_t'' (Salimans & Ho, Alg. 2):
       x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t).
   Each round's student becomes the next round's teacher; N halves every round.

The student keeps the teacher's parameterization, v (Salimans & Ho, sec. 4: eps is unusable at
few steps, where the network must predict x0 from almost pure noise; v and x0 are stable); the
loss is the x0 error weighted by max(SNR, 1) ("truncated SNR", their eq. 10), which is the v
error for a v-network.

The student's sampler is DDIM on a time-uniform grid of N intervals from the sampling start to
index 0: in this package that is `samplers` 'dpm_solver_pp_1s' (first-order DPM-Solver++ is the
DDIM update), whose N-interval grid nests in its 2N-interval grid as the halving needs. (The
'ddim' sampler spends its last evaluation at index 0 and its grids of N and 2N do not nest.)

Why this and not consistency distillation: progressive distillation's target is a teacher
trajectory on the exact grid the student samples on, which keeps every round a small,
well-posed regression that starts from the teacher's own weights; consistency distillation
(Song et al. 2023) needs a target network, a long EMA and, per the authors, hundreds of
thousands of steps to reach its quality, more than this CPU budget. The known failure of
deterministic samplers on under-trained networks (noise-like samples, see
`evaluation.sample_failures`) concerns the teacher's DDIM: the job starts progressive
distillation at the teacher's DDIM step count measured free of failures
(BENCHMARKS.md, "Distillation: student vs teacher": none of the foundation's guided DDIM
samples at 4, 8 or 16 steps failed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from busgen_jax.diffusion import guidance, losses, samplers, schedules
from busgen_jax.training import train_state

KINDS = ("guidance", "progressive")
STUDENT_SAMPLER = "dpm_solver_pp_1s"  # DDIM on the nesting time-uniform grid (module docstring)
STUDENT_SKIP = "time_uniform"


def grid_time(schedule: schedules.Schedule, frac: jax.Array) -> jax.Array:
    """Timestep at fraction `frac` of the student sampler's way from its start to index 0."""
    start = samplers.sampling_start(schedule)
    return samplers.spaced_time(schedule, start, jnp.float32(0.0), frac, STUDENT_SKIP)


def ddim_step(x_t, x0, a_t, s_t, a_s, s_s) -> jax.Array:
    """Deterministic DDIM step t -> s: alpha_s x0 + sigma_s eps_hat (Song et al. 2021, eq. 12)."""
    eps = (x_t - _b(a_t, x_t) * x0) / _b(s_t, x_t)
    return _b(a_s, x_t) * x0 + _b(s_s, x_t) * eps


def progressive_target(x_t, x_s, a_t, s_t, a_s, s_s) -> jax.Array:
    """The x0 whose single DDIM step from x_t lands on the teacher's x_s (Salimans & Ho 2022,
    Alg. 2): x~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)."""
    ratio = _b(s_s / s_t, x_t)
    return (x_s - ratio * x_t) / (_b(a_s, x_t) - ratio * _b(a_t, x_t))


def truncated_snr_loss(x0_hat, x0_target, a_t, s_t) -> jax.Array:
    """Mean over examples and pixels of max(SNR_t, 1) |x0_hat - x0_target|^2 (Salimans & Ho
    2022, eq. 10 "truncated SNR" weighting; equal to the v error of a v-network)."""
    weight = jnp.maximum(jnp.square(a_t / s_t), 1.0)
    sq = jnp.square(x0_hat - x0_target).reshape(x0_hat.shape[0], -1).mean(axis=1)
    return jnp.mean(weight * sq)


def _b(scale, like):
    """Per-example [B] (or scalar) scale broadcast against a [B, ...] array."""
    scale = jnp.asarray(scale, like.dtype)
    return scale.reshape(scale.shape + (1,) * (like.ndim - scale.ndim))


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Static hyperparameters of one round's `distill_step` (hashable, baked into the jit).

    kind: 'guidance' (teacher = the guided original, one step) or 'progressive' (teacher = the
      previous student, two DDIM steps per student step); steps: the student's step count N;
      prediction: the teacher's output type, which the student keeps; clip_x0: clip the
      teacher's x0 as its own sampler does.
    """

    kind: str
    steps: int
    teacher_graphdef: Any
    learning_rate: optax.Schedule
    guidance_range: tuple[float, float]
    prediction: str
    clip_x0: bool
    drop_box_mask: bool
    ema_decay: float
    image_channels: int


def distill_step(
    state: train_state.TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    teacher_state: nnx.State,
    *,
    cfg: RoundConfig,
    schedule: schedules.Schedule,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """One AdamW step of the student towards its teacher; pure in (state, batch, rng, teacher).

    Per example: a student interval j ~ U{0..N-1} with ends t = grid(j/N), t'' = grid((j+1)/N),
    x_t = alpha_t x0 + sigma_t eps from the data, w ~ U(guidance_range); the target is the
    guided teacher's x0 at t ('guidance') or `progressive_target` of two teacher DDIM steps
    t -> grid((j + 1/2)/N) -> t'' ('progressive').
    """
    rng = jax.random.fold_in(rng, state.step)
    j_rng, noise_rng, w_rng = jax.random.split(rng, 3)
    x0 = jnp.repeat(batch["image"], cfg.image_channels // batch["image"].shape[-1], axis=-1)
    size = x0.shape[0]
    j = jax.random.randint(j_rng, (size,), 0, cfg.steps).astype(jnp.float32)
    t, t_mid, t_next = (grid_time(schedule, (j + f) / cfg.steps) for f in (0.0, 0.5, 1.0))
    w = jax.random.uniform(
        w_rng, (size,), minval=cfg.guidance_range[0], maxval=cfg.guidance_range[1]
    )
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    x_t = losses.q_sample(schedule, x0, t, noise)
    a_t, s_t = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
    teacher = nnx.merge(cfg.teacher_graphdef, teacher_state)
    predict = lambda x, time: _teacher_x0(teacher, cfg, schedule, x, time, batch, w)
    if cfg.kind == "guidance":
        target = predict(x_t, t)
    else:
        a_m, s_m = schedules.alpha(schedule, t_mid), schedules.sigma(schedule, t_mid)
        a_n, s_n = schedules.alpha(schedule, t_next), schedules.sigma(schedule, t_next)
        x_mid = ddim_step(x_t, predict(x_t, t), a_t, s_t, a_m, s_m)
        x_next = ddim_step(x_mid, predict(x_mid, t_mid), a_m, s_m, a_n, s_n)
        target = progressive_target(x_t, x_next, a_t, s_t, a_n, s_n)
    target = jax.lax.stop_gradient(target)

    def loss_fn(params):
        student = nnx.merge(state.graphdef, params, state.rest)
        out = student(
            x_t, t, batch["class_id"], batch["device_id"], batch["box_mask"], guidance_weight=w
        )
        x0_hat = losses.to_x0(out, x_t, a_t, s_t, cfg.prediction)
        return truncated_snr_loss(x0_hat, target, a_t, s_t)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return train_state.apply_gradients(state, loss, grads, cfg.ema_decay, cfg.learning_rate)


def _teacher_x0(teacher, cfg: RoundConfig, schedule, x, t, batch, w) -> jax.Array:
    """The teacher's clean-image prediction at guidance weight w [B], clipped to [-1, 1] where
    its sampler clips. The original teacher is guided on a doubled [cond; null] batch
    (`guidance.combine`, null ids 0); a student teacher takes w as an input."""
    classes, devices, masks = batch["class_id"], batch["device_id"], batch["box_mask"]
    if cfg.kind == "progressive":
        out = teacher(x, t, classes, devices, masks, guidance_weight=w)
    else:
        null_masks = jnp.zeros_like(masks) if cfg.drop_box_mask else masks
        both = teacher(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([classes, jnp.full_like(classes, guidance.NULL_ID)]),
            jnp.concatenate([devices, jnp.full_like(devices, guidance.NULL_ID)]),
            jnp.concatenate([masks, null_masks]),
        )
        cond, uncond = jnp.split(both, 2)
        out = guidance.combine(cond, uncond, _b(w, cond))
    x0 = losses.to_x0(
        out, x, schedules.alpha(schedule, t), schedules.sigma(schedule, t), cfg.prediction
    )
    return jnp.clip(x0, -1.0, 1.0) if cfg.clip_x0 else x0
