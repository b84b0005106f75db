"""Sampler error against the exact answer, versus the number of network evaluations.

Data x0 ~ N(mu, Sigma) (3-D, correlated) under the published BUSGen schedule (linear betas,
T = 500). The exact noise predictor E[eps | x_t] = sigma D^-1 (x_t - alpha mu), D = alpha^2 Sigma +
sigma^2 I, stands in for a perfectly trained network, so all error is the sampler's. Deterministic
samplers are scored by the RMS distance of their output to the exact probability-flow ODE solution
from the same start noise; every sampler (DDPM too) by the 2-Wasserstein distance between the
Gaussian fitted to its samples and the data distribution.

Run: .venv/bin/python -m benchmarks.sampler_quality
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg

from benchmarks.common import report
from busgen_jax.diffusion import samplers, schedules

MU = np.array([0.5, -0.3, 0.2])
SIGMA = np.array([[0.5, 0.3, 0.1], [0.3, 0.4, -0.1], [0.1, -0.1, 0.2]])
NUM_SAMPLES = 20000
STEPS = (5, 10, 15, 20, 25, 30, 50, 100, 200)
RUNS = [
    ("ddim", "time_uniform"),
    ("ddim", "logsnr"),
    ("dpm_solver_3s", "time_uniform"),
    ("dpm_solver_3s", "logsnr"),
    ("dpm_solver_pp_2m", "time_uniform"),
    ("dpm_solver_pp_2m", "logsnr"),
    ("ddpm", "time_uniform"),
]
FIGURE = pathlib.Path(__file__).resolve().parent / "figures" / "sampler_error_vs_steps.png"


def exact_eps_model(schedule: schedules.Schedule):
    vals, vecs = (jnp.asarray(a, jnp.float32) for a in np.linalg.eigh(SIGMA))
    mu = jnp.asarray(MU, jnp.float32)

    def model(x, t):
        a = schedules.alpha(schedule, t)[:, None]
        s = schedules.sigma(schedule, t)[:, None]
        return (((x - a * mu) @ vecs) * s / (a**2 * vals + s**2)) @ vecs.T

    return model


def exact_flow(schedule, x_start: np.ndarray, to_clean: bool) -> np.ndarray:
    """ODE map x_s -> x_e = alpha_e mu + D_e^1/2 D_s^-1/2 (x_s - alpha_s mu) for Gaussian data."""
    vals, vecs = np.linalg.eigh(SIGMA)
    start = samplers.sampling_start(schedule)
    a_s, s_s = (float(f(schedule, start)) for f in (schedules.alpha, schedules.sigma))
    a_e, s_e = (
        (1.0, 0.0)
        if to_clean
        else (float(f(schedule, 0.0)) for f in (schedules.alpha, schedules.sigma))
    )
    gain = np.sqrt((a_e**2 * vals + s_e**2) / (a_s**2 * vals + s_s**2))
    return a_e * MU + (((x_start - a_s * MU) @ vecs) * gain) @ vecs.T


def gaussian_w2(x: np.ndarray) -> float:
    """2-Wasserstein distance between N(mean(x), cov(x)) and N(MU, SIGMA)."""
    cov = np.cov(x.T)
    root = scipy.linalg.sqrtm(SIGMA)
    cross = scipy.linalg.sqrtm(root @ cov @ root).real
    return float(np.sqrt(np.sum((x.mean(0) - MU) ** 2) + np.trace(cov + SIGMA - 2 * cross)))


def main() -> None:
    schedule = schedules.from_betas(schedules.linear_betas(500, 1e-4, 0.028))
    model = exact_eps_model(schedule)
    key = jax.random.key(0)
    start_noise = np.asarray(jax.random.normal(jax.random.split(key)[0], (NUM_SAMPLES, 3)))
    map_err, w2 = {}, {}
    for sampler, skip in RUNS:
        exact = exact_flow(schedule, start_noise, to_clean=sampler == "ddim")
        for steps in STEPS:
            out = samplers.sample(
                model, (NUM_SAMPLES, 3), key, schedule, sampler=sampler, steps=steps, skip=skip
            )
            out = np.asarray(out, np.float64)
            if sampler != "ddpm":
                map_err[sampler, skip, steps] = float(
                    np.sqrt(np.mean(np.sum((out - exact) ** 2, 1)))
                )
            w2[sampler, skip, steps] = gaussian_w2(out)
    # Monte-Carlo floor of the W2 score: exact samples of the data distribution.
    exact_samples = (
        MU + np.asarray(jax.random.normal(key, (NUM_SAMPLES, 3))) @ np.linalg.cholesky(SIGMA).T
    )
    floor = gaussian_w2(exact_samples)

    header = ["sampler", "grid", "metric"] + [f"{s} NFE" for s in STEPS]
    rows = []
    for sampler, skip in RUNS:
        if sampler != "ddpm":
            rows.append([sampler, skip, "ODE map RMS"] + [map_err[sampler, skip, s] for s in STEPS])
        rows.append([sampler, skip, "W2 to data"] + [w2[sampler, skip, s] for s in STEPS])
    report(
        "Sampler error vs steps (Gaussian data, exact model)",
        f"3-D Gaussian, linear betas 1e-4..0.028, T=500, {NUM_SAMPLES} samples, seed 0",
        header,
        rows,
        notes=(
            f"W2 Monte-Carlo floor (exact samples) = {floor:.4f}; converged samplers plateau near "
            "0.011 because the linear schedule keeps alpha_T = 0.03 while x_T ~ N(0, I) drops "
            "alpha_T mu. Singlestep order 3 on the time-uniform grid is worst at 3n-1 steps "
            f"(20, 50): their last, 2nd-order step spans the two final intervals. Figure: {FIGURE.name}"
        ),
    )
    plot(map_err, w2, floor)


def plot(map_err: dict, w2: dict, floor: float) -> None:
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_map, ax_w2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sampler, skip in RUNS:
        style = "-" if skip == "logsnr" else "--"
        label = f"{sampler} ({skip})"
        if sampler != "ddpm":
            ax_map.plot(
                STEPS, [map_err[sampler, skip, s] for s in STEPS], style, marker="o", label=label
            )
        ax_w2.plot(STEPS, [w2[sampler, skip, s] for s in STEPS], style, marker="o", label=label)
    ax_w2.axhline(floor, color="gray", lw=0.8, label="Monte-Carlo floor")
    for ax, title in (
        (ax_map, "RMS error vs exact ODE solution"),
        (ax_w2, "W2 of samples to data"),
    ):
        ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", title=title)
        ax.grid(True, which="both", alpha=0.3)
    ax_w2.legend(fontsize=7)
    fig.suptitle("Samplers on 3-D Gaussian data, exact noise model, BUSGen linear schedule")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


if __name__ == "__main__":
    main()
