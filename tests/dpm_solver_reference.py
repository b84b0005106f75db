"""The published BUSGen sampler, written for tests from the paper and independently of
busgen_jax.diffusion: singlestep DPM-Solver++ in data form (Lu et al. 2022b, appendix A,
"dpmsolver" solver type) with the official step plan and time grid, in float64 NumPy.

It follows the structure of the official DPM-Solver code that the published sampler runs
(`DPM_Solver(..., algorithm_type="dpmsolver++").sample(method="singlestep", order=3,
skip_type="time_uniform")`): continuous time t in [1/N, 1] with the discrete schedule's
t_n = (n + 1) / N and log alpha piecewise linear in t (`NoiseScheduleVP('discrete')`),
intermediate times found by inverting lambda, and the network called at the timestep index
(t - 1/N) * N. The caller's `eps_fn(x, index)` decides what the network does with a fractional
index (the published network truncates it to an integer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class DiscreteVP:
    """alpha, sigma, lambda of a discrete schedule in the official continuous time."""

    def __init__(self, betas: np.ndarray):
        self.N = len(betas)
        self.t_array = np.linspace(0.0, 1.0, self.N + 1)[1:]
        self.log_alpha_array = 0.5 * np.cumsum(np.log(1.0 - np.asarray(betas, np.float64)))

    def log_alpha(self, t):
        return np.interp(t, self.t_array, self.log_alpha_array)

    def sigma(self, t):
        return np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(1.0 - np.exp(2.0 * la))

    def inverse_lambda(self, lam):
        la = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return np.interp(la, self.log_alpha_array[::-1], self.t_array[::-1])


def official_orders(steps: int, order: int) -> list[int]:
    """`get_orders_and_timesteps_for_singlestep_solver`'s orders."""
    if order == 3:
        k = steps // 3 + 1
        tails = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
        return [3] * (k - len(tails)) + tails
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    return [1] * steps


def dpm_solver_pp_singlestep(
    eps_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    betas: np.ndarray,
    x: np.ndarray,
    steps: int,
    order: int = 3,
) -> np.ndarray:
    """Integrates from x at t = 1 (index N - 1) to t = 1/N (index 0) on the time-uniform grid."""
    vp = DiscreteVP(betas)
    x = np.asarray(x, np.float64)

    def alpha(t):
        return np.exp(vp.log_alpha(t))

    def data(x, t):  # the official data_prediction_fn, no thresholding
        index = np.full((x.shape[0],), (t - 1.0 / vp.N) * vp.N)
        return (x - vp.sigma(t) * eps_fn(x, index)) / alpha(t)

    orders = official_orders(steps, order)
    grid = np.linspace(1.0, 1.0 / vp.N, steps + 1)
    outer = grid[np.cumsum([0] + orders)]
    for o, s, t in zip(orders, outer[:-1], outer[1:], strict=True):
        inner = np.linspace(s, t, o + 1)
        lam_s, lam_t = vp.lam(s), vp.lam(t)
        h = lam_t - lam_s
        m_s = data(x, s)
        x_t = vp.sigma(t) / vp.sigma(s) * x - alpha(t) * np.expm1(-h) * m_s
        if o >= 2:
            r1 = (vp.lam(inner[1]) - lam_s) / h
            s1 = vp.inverse_lambda(lam_s + r1 * h)
            m_1 = data(vp.sigma(s1) / vp.sigma(s) * x - alpha(s1) * np.expm1(-r1 * h) * m_s, s1)
        if o == 2:
            x_t = x_t - 0.5 / r1 * alpha(t) * np.expm1(-h) * (m_1 - m_s)
        elif o == 3:
            r2 = (vp.lam(inner[2]) - lam_s) / h
            s2 = vp.inverse_lambda(lam_s + r2 * h)
            phi_22 = np.expm1(-r2 * h) / (r2 * h) + 1.0
            x_2 = (
                vp.sigma(s2) / vp.sigma(s) * x
                - alpha(s2) * np.expm1(-r2 * h) * m_s
                + r2 / r1 * alpha(s2) * phi_22 * (m_1 - m_s)
            )
            m_2 = data(x_2, s2)
            x_t = x_t + 1.0 / r2 * alpha(t) * (np.expm1(-h) / h + 1.0) * (m_2 - m_s)
        x = x_t
    return x
