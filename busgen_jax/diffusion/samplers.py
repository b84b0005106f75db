"""Samplers for discrete VP diffusion models: DDPM, DDIM, and the DPM-Solvers.

The DPM-Solvers: 'dpm_solver_3s', singlestep DPM-Solver-3 in noise form (Lu et al. 2022a, the
official code's algorithm_type='dpmsolver'); 'dpm_solver_pp_{1,2,3}s', singlestep DPM-Solver++ of
order 1-3 in data form (Lu et al. 2022b, algorithm_type='dpmsolver++'; order 3 with the official
step plan and a time-uniform grid is what the published BUSGen code samples with); and
'dpm_solver_pp_2m', multistep DPM-Solver++(2M). The two singlestep forms are different solvers
of the same ODE: on the Gaussian data of tests/test_samplers.py, 50 time-uniform steps from
the same noise end 4.4e-3 (data form) and 2.7e-2 (noise form) RMS from the exact flow.

All samplers start from x ~ N(0, I) at `sampling_start(schedule)`: the last timestep T-1, or the
earlier one where lambda = -5.1 for schedules such as cosine whose final log-SNR collapses (the
official DPM-Solver clips it there). They spend exactly `steps` network evaluations (NFE) on a
time grid chosen by `skip`:
  'time_uniform'   uniform in the timestep index (official DPM-Solver default),
  'logsnr'         uniform in lambda = log(alpha / sigma) (Lu et al. 2022a, sec. 3.4),
  'time_quadratic' uniform in sqrt of the continuous time (n + 1) / T (DDIM, Song et al. 2021).
DDPM and DDIM evaluate at `steps` grid points from the start down to index 0 and end with the
clean prediction (their final step goes to alpha = 1, sigma = 0), so `steps = T` with
'time_uniform' is the original integer DDPM chain. The DPM-Solvers integrate the probability-flow
ODE from the start to index 0 and return x there, as the official code does (no extra NFE).
The step count and eta are traced values: changing them does not recompile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from busgen_jax.diffusion import losses, schedules

SAMPLERS = (
    "ddpm",
    "ddim",
    "dpm_solver_3s",
    "dpm_solver_pp_1s",
    "dpm_solver_pp_2s",
    "dpm_solver_pp_3s",
    "dpm_solver_pp_2m",
)
# Singlestep DPM-Solver++ (data prediction) of each order; 'dpm_solver_pp_3s' is the published one.
SINGLESTEP_PP_ORDERS = {"dpm_solver_pp_1s": 1, "dpm_solver_pp_2s": 2, "dpm_solver_pp_3s": 3}
SKIPS = ("time_uniform", "logsnr", "time_quadratic")
LAMBDA_MIN = -5.1  # official DPM-Solver clip of the log-SNR at the start (cosine schedules)
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def sampling_start(schedule: schedules.Schedule) -> jax.Array:
    """Start index: T-1, or the index where lambda_t = LAMBDA_MIN if lambda_{T-1} is below it."""
    last = jnp.float32(schedule.T - 1)
    clipped = schedules.t_from_log_snr(schedule, LAMBDA_MIN)
    return jnp.where(schedules.log_snr(schedule, last) < LAMBDA_MIN, clipped, last)


def spaced_time(schedule, t_hi: jax.Array, t_lo: jax.Array, frac: jax.Array, skip: str):
    """Timestep at fraction `frac` in [0, 1] of the way from t_hi down to t_lo, spaced per `skip`.

    A grid of n + 1 points is `spaced_time(..., jnp.arange(n + 1) / n, skip)`; writing the grid as
    a function of the fraction lets the step count stay a traced value (one compile for all).
    """
    frac = jnp.asarray(frac, jnp.float32)
    if skip == "time_uniform":
        t = t_hi + (t_lo - t_hi) * frac
    elif skip == "time_quadratic":
        # Uniform in sqrt of the official continuous time (n + 1) / T.
        c_hi, c_lo = jnp.sqrt((t_hi + 1) / schedule.T), jnp.sqrt((t_lo + 1) / schedule.T)
        t = jnp.square(c_hi + (c_lo - c_hi) * frac) * schedule.T - 1
    else:
        lam_hi, lam_lo = schedules.log_snr(schedule, t_hi), schedules.log_snr(schedule, t_lo)
        t = schedules.t_from_log_snr(schedule, lam_hi + (lam_lo - lam_hi) * frac)
    # Endpoints exact, whatever the round-off of the spacing map.
    return jnp.where(frac <= 0, t_hi, jnp.where(frac >= 1, t_lo, t))


def singlestep_plan(steps, k, order: int = 3):
    """Order of outer step k and the number of evaluations before it, in the official plan of
    the singlestep solvers of `order` (DPM-Solver's `get_orders_and_timesteps_for_singlestep_solver`):
      3: K = steps // 3 + 1 outer steps of orders [3] * (K - 2) + [2, 1] if steps % 3 == 0,
         [3] * (K - 1) + [1] if 1, [3] * (K - 1) + [2] if 2;
      2: [2] * (steps // 2), then [1] if steps is odd;
      1: [1] * steps.
    Works on Python ints and on traced int32 alike; `cum` at k = K is `steps`.
    """
    if order == 1:
        return jnp.ones_like(jnp.asarray(k)), jnp.minimum(k, steps)
    if order == 2:
        n2 = steps // 2  # number of second-order steps
        cum = jnp.where(k >= num_outer_steps(steps, 2), steps, 2 * jnp.minimum(k, n2) + (k > n2))
        return jnp.where(k < n2, 2, 1), cum
    r = steps % 3
    n3 = steps // 3 - (r == 0)  # number of third-order steps
    tail_first = jnp.where(r == 1, 1, 2)
    order_k = jnp.where(k < n3, 3, jnp.where(r == 0, 2 - (k - n3), tail_first))
    cum = jnp.where(
        k >= num_outer_steps(steps, 3),
        steps,
        3 * jnp.minimum(k, n3) + jnp.where(k > n3, tail_first, 0),
    )
    return order_k, cum


def num_outer_steps(steps, order: int):
    """K, the number of outer steps of the official singlestep plan of `order`."""
    return {1: steps, 2: (steps + 1) // 2, 3: steps // 3 + 1}[order]


def _predictor(denoise_fn, schedule, prediction: str, clip_x0: float | None):
    """Wraps the network into (x, t scalar) -> (eps_hat, x0_hat), optionally clipping x0_hat."""

    def predict(x, t):
        out = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.float32))
        a, s = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
        x0 = losses.to_x0(out, x, a, s, prediction)
        if clip_x0 is None:
            return losses.to_eps(out, x, a, s, prediction), x0
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        return losses.to_eps(x0, x, a, s, "x0"), x0

    return predict


def ddim_step(x, eps, x0, a_t, s_t, a_s, s_s, eta, z):
    """DDIM update t -> s (Song et al. 2021, eq. 12) with c = eta * sigma_tilde of eq. 16."""
    c = eta * s_s / s_t * jnp.sqrt(jnp.maximum(1.0 - jnp.square(a_t / a_s), 0.0))
    return a_s * x0 + jnp.sqrt(jnp.maximum(jnp.square(s_s) - jnp.square(c), 0.0)) * eps + c * z


def ddpm_step(x, eps, x0, a_t, s_t, a_s, s_s, eta, z):
    """Ancestral step from the posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7), for the
    respaced chain whose single-step beta is 1 - alpha_bar_t / alpha_bar_s."""
    del eps, eta
    ratio2 = jnp.square(a_t / a_s)  # alpha_bar_t / alpha_bar_s
    var = jnp.square(s_s / s_t) * (1.0 - ratio2)
    mean = (
        a_s * (1.0 - ratio2) / jnp.square(s_t) * x0 + jnp.sqrt(ratio2) * jnp.square(s_s / s_t) * x
    )
    return mean + jnp.sqrt(var) * z


def _ancestral(step_fn, predict, schedule, x, key, steps, skip, eta):
    """Runs DDPM/DDIM over `steps` evaluations, the last transition going to x_0."""
    start, end = sampling_start(schedule), jnp.float32(0.0)
    last = jnp.maximum(steps - 1, 1)

    def body(i, x):
        t = spaced_time(schedule, start, end, i / last, skip)
        eps, x0 = predict(x, t)
        final = i + 1 >= steps
        t_next = spaced_time(schedule, start, end, (i + 1) / last, skip)
        a_next = jnp.where(final, 1.0, schedules.alpha(schedule, t_next))
        s_next = jnp.where(final, 0.0, schedules.sigma(schedule, t_next))
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        a_t, s_t = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
        return step_fn(x, eps, x0, a_t, s_t, a_next, s_next, eta, z)

    return lax.fori_loop(0, steps, body, x)


def _ns(schedule, t):
    """(log alpha_t, sigma_t, lambda_t) used by the DPM-Solver updates."""
    return (
        schedules.log_alpha(schedule, t),
        schedules.sigma(schedule, t),
        schedules.log_snr(schedule, t),
    )


def dpm_solver_update(predict_eps, schedule, x, s, t, order, skip: str):
    """One singlestep DPM-Solver-`order` update s -> t in noise form (Lu et al. 2022a, eq. 3.7
    and Algs. 4-5, the official 'dpmsolver' variant). `order` (1, 2 or 3) may be traced: the extra
    evaluations sit under `lax.cond`, so exactly `order` network calls run. Intermediate times
    split [s, t] as `skip` does (at 1/order and 2/3), so r1, r2 are their fractions of
    h = lambda_t - lambda_s, as in the official code."""
    la_s, _, lam_s = _ns(schedule, s)
    la_t, sig_t, lam_t = _ns(schedule, t)
    h = lam_t - lam_s
    phi_1 = jnp.expm1(h)
    eps_s = predict_eps(x, s)
    skip_eval = lambda x, t: eps_s
    s1 = spaced_time(schedule, s, t, 1.0 / order, skip)
    la_1, sig_1, lam_1 = _ns(schedule, s1)
    r1 = (lam_1 - lam_s) / h
    x_1 = jnp.exp(la_1 - la_s) * x - sig_1 * jnp.expm1(r1 * h) * eps_s
    eps_1 = lax.cond(order >= 2, predict_eps, skip_eval, x_1, s1)
    s2 = spaced_time(schedule, s, t, 2.0 / 3.0, skip)
    la_2, sig_2, lam_2 = _ns(schedule, s2)
    r2 = (lam_2 - lam_s) / h
    phi_22 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
    x_2 = (
        jnp.exp(la_2 - la_s) * x
        - sig_2 * jnp.expm1(r2 * h) * eps_s
        - (r2 / r1) * sig_2 * phi_22 * (eps_1 - eps_s)
    )
    eps_2 = lax.cond(order == 3, predict_eps, skip_eval, x_2, s2)
    x_t = jnp.exp(la_t - la_s) * x - sig_t * phi_1 * eps_s  # DPM-Solver-1 (= DDIM)
    second = x_t - (0.5 / r1) * sig_t * phi_1 * (eps_1 - eps_s)
    third = x_t - (1.0 / r2) * sig_t * (phi_1 / h - 1.0) * (eps_2 - eps_s)
    return jnp.where(order == 1, x_t, jnp.where(order == 2, second, third))


def dpm_solver_pp_update(predict_x0, schedule, x, s, t, order, skip: str):
    """One singlestep DPM-Solver++ update s -> t in data form (Lu et al. 2022b, eq. 3.4 with the
    singlestep updates of their appendix A, the official 'dpmsolver++' variant with solver_type
    'dpmsolver'). As `dpm_solver_update`, `order` may be traced, intermediate times split [s, t]
    as `skip` does and r1, r2 are their fractions of h = lambda_t - lambda_s."""
    _, sig_s, lam_s = _ns(schedule, s)
    la_t, sig_t, lam_t = _ns(schedule, t)
    h = lam_t - lam_s
    phi_1 = jnp.expm1(-h)
    x0_s = predict_x0(x, s)
    skip_eval = lambda x, t: x0_s
    s1 = spaced_time(schedule, s, t, 1.0 / order, skip)
    la_1, sig_1, lam_1 = _ns(schedule, s1)
    r1 = (lam_1 - lam_s) / h
    x_1 = sig_1 / sig_s * x - jnp.exp(la_1) * jnp.expm1(-r1 * h) * x0_s
    x0_1 = lax.cond(order >= 2, predict_x0, skip_eval, x_1, s1)
    s2 = spaced_time(schedule, s, t, 2.0 / 3.0, skip)
    la_2, sig_2, lam_2 = _ns(schedule, s2)
    r2 = (lam_2 - lam_s) / h
    phi_22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
    x_2 = (
        sig_2 / sig_s * x
        - jnp.exp(la_2) * jnp.expm1(-r2 * h) * x0_s
        + (r2 / r1) * jnp.exp(la_2) * phi_22 * (x0_1 - x0_s)
    )
    x0_2 = lax.cond(order == 3, predict_x0, skip_eval, x_2, s2)
    alpha_t = jnp.exp(la_t)
    x_t = sig_t / sig_s * x - alpha_t * phi_1 * x0_s  # DPM-Solver++1 (= DDIM)
    second = x_t - (0.5 / r1) * alpha_t * phi_1 * (x0_1 - x0_s)
    third = x_t + (1.0 / r2) * alpha_t * (phi_1 / h + 1.0) * (x0_2 - x0_s)
    return jnp.where(order == 1, x_t, jnp.where(order == 2, second, third))


def _singlestep(update, predict_fn, schedule, x, steps, skip, order: int):
    """A singlestep solver of `order` with the official plan (`singlestep_plan`), any steps >= 1.

    Outer times are the cumulative-NFE points of the `steps`-interval grid, or, for 'logsnr', a
    K-interval logSNR grid, as in the official code.
    """
    start, end = sampling_start(schedule), jnp.float32(0.0)
    num_outer = num_outer_steps(steps, order)

    def outer_time(k):
        frac = k / num_outer if skip == "logsnr" else singlestep_plan(steps, k, order)[1] / steps
        return spaced_time(schedule, start, end, frac, skip)

    def body(k, x):
        order_k = singlestep_plan(steps, k, order)[0]
        return update(predict_fn, schedule, x, outer_time(k), outer_time(k + 1), order_k, skip)

    return lax.fori_loop(0, num_outer, body, x)


def _dpm_solver_pp_2m(predict, schedule, x, steps, skip):
    """Multistep DPM-Solver++(2M) in data form (Lu et al. 2022b, Alg. 2). The first step is first
    order; for steps < 10 so is the last (the official `lower_order_final`)."""
    start, end = sampling_start(schedule), jnp.float32(0.0)

    def body(i, carry):
        x, x0_prev, lam_prev = carry
        s = spaced_time(schedule, start, end, i / steps, skip)
        t = spaced_time(schedule, start, end, (i + 1) / steps, skip)
        _, sig_s, lam_s = _ns(schedule, s)
        la_t, sig_t, lam_t = _ns(schedule, t)
        x0 = predict(x, s)[1]
        h = lam_t - lam_s
        second = (i > 0) & ((steps >= 10) | (i < steps - 1))
        # D1 = (x0_s - x0_prev) / r with r = h_prev / h (eq. 3.3 of Lu et al. 2022b).
        d1 = jnp.where(second, (x0 - x0_prev) * h / (lam_s - lam_prev), 0.0)
        x = sig_t / sig_s * x - jnp.exp(la_t) * jnp.expm1(-h) * (x0 + 0.5 * d1)
        return x, x0, lam_s

    carry = (x, jnp.zeros_like(x), jnp.float32(-jnp.inf))
    return lax.fori_loop(0, steps, body, carry)[0]


def sample(
    denoise_fn: DenoiseFn,
    shape: tuple[int, ...],
    rng: jax.Array,
    schedule: schedules.Schedule,
    *,
    sampler: str,
    steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    skip: str = "time_uniform",
    clip_x0: float | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """Draws samples of `shape` = [B, ...] from a diffusion model (jitted; see module docstring).

    Args:
      denoise_fn: denoise_fn(x_t: [B, ...], t: float32 [B] timestep index in [0, T-1]) -> model
        output of type `prediction`. It is a static argument of the compiled sampler: pass the
        same callable to reuse the compilation, or call `sample` inside your own jit with the
        model as an argument of that jit. The step count and eta are traced (no recompilation).
      shape: output shape, batch first.
      rng: key; the same key gives the same samples. The start x is
        `jax.random.normal(jax.random.split(rng)[0], shape)`, the same for every sampler, so
        samplers can be compared on identical starting noise.
      schedule: the model's training schedule.
      sampler: one of SAMPLERS.
      steps: number of network evaluations (>= 1).
      eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM posterior noise); DDIM only.
      prediction: 'eps', 'v' or 'x0' (what the network outputs).
      skip: time grid, one of SKIPS.
      clip_x0: if set, clip every x0 prediction to [-clip_x0, clip_x0] (pixel models in [-1, 1]).
      sharding: sharding of the batch (e.g. NamedSharding over a data axis) for the sampler state.

    Returns:
      Samples [B, ...] (float32).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"'sampler' is {sampler!r}, not one of {SAMPLERS}")
    if skip not in SKIPS:
        raise ValueError(f"'skip' is {skip!r}, not one of {SKIPS}")
    if prediction not in losses.PREDICTIONS:
        raise ValueError(f"'prediction' is {prediction!r}, not one of {losses.PREDICTIONS}")
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"'steps' must be >= 1, got {steps}")
    if isinstance(eta, int | float) and eta != 0.0 and sampler != "ddim":
        raise ValueError(f"'eta' applies to the 'ddim' sampler only, got eta={eta} for {sampler!r}")
    statics = dict(sampler=sampler, prediction=prediction, skip=skip, clip_x0=clip_x0)
    args = (denoise_fn, tuple(shape), rng, schedule, jnp.int32(steps), jnp.float32(eta))
    return _sample(*args, sharding=sharding, **statics)


@functools.partial(
    jax.jit,
    static_argnames=("denoise_fn", "shape", "sampler", "prediction", "skip", "clip_x0", "sharding"),
)
def _sample(
    denoise_fn, shape, rng, schedule, steps, eta, *, sampler, prediction, skip, clip_x0, sharding
):
    """The compiled body of `sample` (arguments validated there)."""
    rng_init, rng_steps = jax.random.split(rng)
    x = jax.random.normal(rng_init, shape, jnp.float32)
    if sharding is not None:
        x = lax.with_sharding_constraint(x, sharding)
    predict = _predictor(denoise_fn, schedule, prediction, clip_x0)
    if sampler == "ddpm":
        x = _ancestral(ddpm_step, predict, schedule, x, rng_steps, steps, skip, eta)
    elif sampler == "ddim":
        x = _ancestral(ddim_step, predict, schedule, x, rng_steps, steps, skip, eta)
    elif sampler == "dpm_solver_3s":
        x = _singlestep(
            dpm_solver_update, lambda x, t: predict(x, t)[0], schedule, x, steps, skip, 3
        )
    elif sampler in SINGLESTEP_PP_ORDERS:
        order = SINGLESTEP_PP_ORDERS[sampler]
        x = _singlestep(
            dpm_solver_pp_update, lambda x, t: predict(x, t)[1], schedule, x, steps, skip, order
        )
    else:
        x = _dpm_solver_pp_2m(predict, schedule, x, steps, skip)
    if sharding is not None:
        x = lax.with_sharding_constraint(x, sharding)
    return x
