"""Forward noising, prediction targets and the denoising training loss.

Notation: x_t = alpha_t x_0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1 (VP). A network predicts
one of
  'eps': the noise eps (Ho et al. 2020, eq. 14),
  'v':   v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, sec. 4 and appendix D),
  'x0':  the clean data x_0,
and the functions below convert any of them into the others given x_t.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from busgen_jax.diffusion import schedules

PREDICTIONS = ("eps", "v", "x0")
WEIGHTINGS = ("uniform", "min_snr")
REDUCTIONS = ("mean", "published")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"'{name}' is {value!r}, not one of {allowed}")


def _bcast(scale: jax.Array, like: jax.Array) -> jax.Array:
    """Broadcasts a per-example [B] (or scalar) scale against a [B, ...] array."""
    scale = jnp.asarray(scale, like.dtype)
    return scale.reshape(scale.shape + (1,) * (like.ndim - scale.ndim))


def q_sample(schedule: schedules.Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array):
    """Samples q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) (Ho et al. 2020, eq. 4) for t: [B]."""
    a = _bcast(schedules.alpha(schedule, t), x0)
    s = _bcast(schedules.sigma(schedule, t), x0)
    return a * x0 + s * noise


def target(prediction: str, x0: jax.Array, noise: jax.Array, alpha_t, sigma_t) -> jax.Array:
    """The regression target of a `prediction`-type network at x_t = alpha_t x0 + sigma_t noise."""
    _check("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return _bcast(alpha_t, x0) * noise - _bcast(sigma_t, x0) * x0


def to_x0(pred: jax.Array, x_t: jax.Array, alpha_t, sigma_t, prediction: str) -> jax.Array:
    """x_0 implied by a prediction: (x_t - sigma eps) / alpha for eps; alpha x_t - sigma v for v."""
    _check("prediction", prediction, PREDICTIONS)
    a, s = _bcast(alpha_t, x_t), _bcast(sigma_t, x_t)
    if prediction == "eps":
        return (x_t - s * pred) / a
    if prediction == "v":
        return a * x_t - s * pred
    return pred


def to_eps(pred: jax.Array, x_t: jax.Array, alpha_t, sigma_t, prediction: str) -> jax.Array:
    """eps implied by a prediction: (x_t - alpha x0) / sigma for x0; sigma x_t + alpha v for v."""
    _check("prediction", prediction, PREDICTIONS)
    a, s = _bcast(alpha_t, x_t), _bcast(sigma_t, x_t)
    if prediction == "v":
        return s * x_t + a * pred
    if prediction == "x0":
        return (x_t - a * pred) / s
    return pred


def to_v(pred: jax.Array, x_t: jax.Array, alpha_t, sigma_t, prediction: str) -> jax.Array:
    """v = alpha eps - sigma x0 implied by a prediction (Salimans & Ho 2022, eq. in appendix D)."""
    eps = to_eps(pred, x_t, alpha_t, sigma_t, prediction)
    x0 = to_x0(pred, x_t, alpha_t, sigma_t, prediction)
    return _bcast(alpha_t, x_t) * eps - _bcast(sigma_t, x_t) * x0


def loss_weight(
    snr: jax.Array, prediction: str, weighting: str, snr_gamma: float = 5.0
) -> jax.Array:
    """Per-example weight on the squared error of a `prediction`-type output.

    'uniform' weighs the chosen target's squared error equally at every t. 'min_snr' (Hang et al.
    2023, eq. 9) gives the implied x_0 error the weight min(SNR, gamma); since
    |eps - eps_hat|^2 = SNR |x0 - x0_hat|^2 and |v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2, that is
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v.
    """
    _check("prediction", prediction, PREDICTIONS)
    _check("weighting", weighting, WEIGHTINGS)
    if weighting == "uniform":
        return jnp.ones_like(snr)
    clipped = jnp.minimum(snr, snr_gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    return clipped


def reduce_loss(sq_err: jax.Array, weight: jax.Array, reduction: str) -> jax.Array:
    """Reduces a [B, ...] squared error with per-example weights [B].

    'mean' averages over every element. 'published' is the published BUSGen scale: the squared
    error summed over all elements and divided by B^2 (the learning rate was tuned to it).
    """
    _check("reduction", reduction, REDUCTIONS)
    per_example = jnp.sum(sq_err.reshape(sq_err.shape[0], -1), axis=1) * weight
    batch = sq_err.shape[0]
    if reduction == "mean":
        return jnp.sum(per_example) / sq_err.size
    return jnp.sum(per_example) / batch**2


def diffusion_loss(
    apply_fn: Callable[..., jax.Array],
    x0: jax.Array,
    rng: jax.Array,
    schedule: schedules.Schedule,
    *,
    prediction: str = "eps",
    weighting: str = "uniform",
    reduction: str = "mean",
    snr_gamma: float = 5.0,
    **cond,
) -> jax.Array:
    """Denoising loss E_{t, eps} w(t) |target - apply_fn(x_t, t, **cond)|^2 (Ho et al. 2020, eq. 14).

    Args:
      apply_fn: network, apply_fn(x_t, t, **cond) -> prediction shaped like x0; t is float32 [B]
        holding integer timestep indices (the dtype samplers use, so one code path serves both).
      x0: clean data [B, ...] in [-1, 1].
      rng: key; split into the timestep draw (uniform over 0..T-1) and the noise draw.
      schedule: the training schedule.
      prediction, weighting, reduction, snr_gamma: see `target`, `loss_weight`, `reduce_loss`.
      **cond: forwarded to apply_fn (class ids, device ids, box mask, ...).

    Returns:
      Scalar loss.
    """
    rng_t, rng_noise = jax.random.split(rng)
    t = jax.random.randint(rng_t, (x0.shape[0],), 0, schedule.T).astype(jnp.float32)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    alpha_t, sigma_t = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
    pred = apply_fn(q_sample(schedule, x0, t, noise), t, **cond)
    sq_err = jnp.square(pred.astype(jnp.float32) - target(prediction, x0, noise, alpha_t, sigma_t))
    weight = loss_weight(jnp.square(alpha_t / sigma_t), prediction, weighting, snr_gamma)
    return reduce_loss(sq_err, weight, reduction)
