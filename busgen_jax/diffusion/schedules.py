"""Discrete-time variance-preserving (VP) noise schedules.

A schedule holds the betas of a DDPM forward chain over timestep indices n = 0, ..., T-1 and the
marginals q(x_n | x_0) = N(alpha_n x_0, sigma_n^2 I) with alpha_n^2 = prod_{i<=n} (1 - beta_i) and
sigma_n^2 = 1 - alpha_n^2 (Ho et al. 2020, eq. 4). Samplers also need the marginals between the
integer indices: as the official DPM-Solver `NoiseScheduleVP('discrete')` does (Lu et al. 2022a,
appendix), log alpha is interpolated piecewise-linearly in the timestep, so every quantity below
accepts a fractional index t in [0, T-1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SCHEDULES = ("linear", "cosine")
# Published BUSGen training schedule: linear betas over T = 500 steps.
BUSGEN_NUM_TIMESTEPS = 500
BUSGEN_BETA_START = 1e-4
BUSGEN_BETA_END = 0.028


@struct.dataclass
class Schedule:
    """A discrete VP schedule (a pytree: it can be passed through `jax.jit`).

    Attributes:
      betas: [T] forward-process variances beta_n.
      alphas_cumprod: [T] alpha_bar_n = prod_{i<=n} (1 - beta_i), i.e. alpha_n^2.
      log_alpha: [T] log alpha_n = 0.5 log alpha_bar_n, accumulated in float64 so that
        sigma_n stays accurate where alpha_bar_n is within float32 epsilon of 1.
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    log_alpha: jax.Array

    @property
    def T(self) -> int:  # noqa: N802 (the paper's name for the number of timesteps)
        """Number of discrete timesteps (static under `jax.jit`)."""
        return self.betas.shape[0]


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas linear in n from beta_start to beta_end (Ho et al. 2020, sec. 4)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule, Nichol & Dhariwal 2021 eq. (17): alpha_bar(t) = f(t) / f(0) with
    f(t) = cos^2(pi/2 (t/T + s) / (1 + s)), beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, 0.999).
    """
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def from_betas(betas: np.ndarray) -> Schedule:
    """Builds a Schedule from betas; raises ValueError unless 0 < beta < 1."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"betas must be a 1-D array of at least 2 values, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("betas must lie strictly between 0 and 1")
    log_alpha = 0.5 * np.cumsum(np.log1p(-betas))
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(np.exp(2 * log_alpha), jnp.float32),
        log_alpha=jnp.asarray(log_alpha, jnp.float32),
    )


def make_schedule(config) -> Schedule:
    """Builds the schedule named by an ml_collections ConfigDict (or any attribute mapping).

    Fields: `schedule` ('linear' | 'cosine'), `num_timesteps`, and for 'linear' `beta_start` and
    `beta_end`. Missing fields take the published BUSGen values (linear, 500, 1e-4, 0.028).
    """
    name = config.get("schedule", "linear")
    num_timesteps = int(config.get("num_timesteps", BUSGEN_NUM_TIMESTEPS))
    if num_timesteps < 2:
        raise ValueError(f"config field 'num_timesteps' must be >= 2, got {num_timesteps}")
    if name == "linear":
        start = float(config.get("beta_start", BUSGEN_BETA_START))
        end = float(config.get("beta_end", BUSGEN_BETA_END))
        if not 0 < start <= end < 1:
            raise ValueError(
                f"config fields 'beta_start'={start} and 'beta_end'={end} need 0 < start <= end < 1"
            )
        return from_betas(linear_betas(num_timesteps, start, end))
    if name == "cosine":
        return from_betas(cosine_betas(num_timesteps))
    raise ValueError(f"config field 'schedule' is {name!r}, not one of {SCHEDULES}")


def _segment(index: jax.Array, size: int) -> jax.Array:
    """Left end of the table segment used for index (clipped, so the end segments extrapolate)."""
    return jnp.clip(jnp.floor(index), 0, size - 2).astype(jnp.int32)


def log_alpha(schedule: Schedule, t: jax.Array) -> jax.Array:
    """log alpha_t at (fractional) timestep indices t, piecewise linear between integers.

    Written as index arithmetic on the uniform grid rather than `jnp.interp`, whose generic
    search compiles to a loop that dominated the compile time of every sampler.
    """
    t = jnp.asarray(t, jnp.float32)
    i = _segment(t, schedule.T)
    lo, hi = schedule.log_alpha[i], schedule.log_alpha[i + 1]
    return lo + (t - i) * (hi - lo)


def alpha(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal scale alpha_t = sqrt(alpha_bar_t)."""
    return jnp.exp(log_alpha(schedule, t))


def sigma(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Noise scale sigma_t = sqrt(1 - alpha_t^2) (VP), via expm1 for accuracy near t = 0."""
    return jnp.sqrt(-jnp.expm1(2.0 * log_alpha(schedule, t)))


def log_snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Half log-SNR lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022a, sec. 3.1)."""
    la = log_alpha(schedule, t)
    return la - 0.5 * jnp.log(-jnp.expm1(2.0 * la))


def t_from_log_snr(schedule: Schedule, lam: jax.Array) -> jax.Array:
    """Inverse of `log_snr`: the timestep index whose lambda_t equals `lam`.

    log alpha = -0.5 log(1 + exp(-2 lambda)), then the piecewise-linear log alpha table is
    inverted on the segment that brackets it (log alpha decreases strictly with t).
    """
    la = -0.5 * jnp.logaddexp(0.0, -2.0 * jnp.asarray(lam, jnp.float32))
    table = schedule.log_alpha
    # Segment i has table[i] >= la > table[i + 1]; counting is cheap for T of a few hundred.
    i = _segment(jnp.sum(table >= la[..., None], axis=-1) - 1, schedule.T)
    return i + (la - table[i]) / (table[i + 1] - table[i])
