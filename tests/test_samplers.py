"""Samplers and guidance checked against Gaussian data, where everything is known in closed form.

For x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps, the marginal is N(alpha mu, D) with
D = alpha^2 Sigma + sigma^2 I, the exact noise predictor is E[eps | x_t] = sigma D^-1 (x_t - alpha mu)
and the probability-flow ODE maps x_s to x_t = alpha_t mu + D_t^1/2 D_s^-1/2 (x_s - alpha_s mu).
The schedule tables below are rebuilt in float64 NumPy from the published formulas, independently
of busgen_jax.diffusion.schedules.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import dpm_solver_reference
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from busgen_jax.data import box_priors
from busgen_jax.diffusion import guidance, samplers, schedules

T = 500
MU = np.array([0.5, -0.3, 0.2])
SIGMA = np.array([[0.5, 0.3, 0.1], [0.3, 0.4, -0.1], [0.1, -0.1, 0.2]])
EIGVALS, EIGVECS = np.linalg.eigh(SIGMA)
NUM_SAMPLES = 4000
LAMBDA_MIN = -5.1


def _log_alpha_table(name: str) -> np.ndarray:
    if name == "linear":
        betas = np.linspace(1e-4, 0.028, T)
        return 0.5 * np.cumsum(np.log(1 - betas))
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return 0.5 * np.cumsum(np.log(1 - betas))


@functools.cache
def _schedule(name: str) -> schedules.Schedule:
    return schedules.make_schedule(
        ml_collections.ConfigDict({"schedule": name, "num_timesteps": T})
    )


def _alpha_sigma_np(name: str, t: float) -> tuple[float, float]:
    la = np.interp(t, np.arange(T), _log_alpha_table(name))
    return float(np.exp(la)), float(np.sqrt(1 - np.exp(2 * la)))


def _start_np(name: str) -> float:
    """T - 1, or the index where the interpolated lambda reaches LAMBDA_MIN."""
    la = _log_alpha_table(name)
    lam = la - 0.5 * np.log1p(-np.exp(2 * la))
    if lam[-1] >= LAMBDA_MIN:
        return T - 1.0
    return float(np.interp(-LAMBDA_MIN, -lam, np.arange(T)))


@functools.cache
def _exact_model(name: str, prediction: str):
    """Exact E[eps | x_t] (or E[v | x_t]) for the Gaussian data, as a denoise_fn that also
    records the timestep of every call in _CALLS (to count network evaluations)."""
    table = jnp.asarray(_log_alpha_table(name), jnp.float32)
    mu, vecs, vals = (jnp.asarray(a, jnp.float32) for a in (MU, EIGVECS, EIGVALS))

    def model(x, t):
        jax.debug.callback(_CALLS.append, t[0])
        i = jnp.clip(jnp.floor(t), 0, T - 2).astype(jnp.int32)
        la = (table[i] + (t - i) * (table[i + 1] - table[i]))[:, None]
        a, s = jnp.exp(la), jnp.sqrt(-jnp.expm1(2 * la))
        y = (x - a * mu) @ vecs
        eps = (y * s / (a**2 * vals + s**2)) @ vecs.T
        if prediction == "eps":
            return eps
        x0 = mu + (y * a * vals / (a**2 * vals + s**2)) @ vecs.T
        return a * eps - s * x0

    return model


_CALLS: list = []


def _exact_flow(name: str, x_start: np.ndarray, to_clean: bool) -> np.ndarray:
    """Probability-flow ODE solution from the sampling start to t = 0 (or to the clean data)."""
    a_s, s_s = _alpha_sigma_np(name, _start_np(name))
    a_e, s_e = (1.0, 0.0) if to_clean else _alpha_sigma_np(name, 0.0)
    y = (x_start - a_s * MU) @ EIGVECS
    gain = np.sqrt((a_e**2 * EIGVALS + s_e**2) / (a_s**2 * EIGVALS + s_s**2))
    return a_e * MU + (y * gain) @ EIGVECS.T


def _run(sampler, name, prediction, steps, key=0, **kw):
    # One time grid for all (uniform log-SNR): each sampler/model pair compiles once.
    out = samplers.sample(
        _exact_model(name, prediction),
        (NUM_SAMPLES, 3),
        jax.random.key(key),
        _schedule(name),
        sampler=sampler,
        steps=steps,
        prediction=prediction,
        skip="logsnr",
        **kw,
    )
    return np.asarray(out, np.float64)


def _map_error(sampler, name, prediction, steps) -> float:
    """RMS distance of a deterministic sampler's output to the exact ODE solution from the same
    start (the documented start noise: normal(split(key)[0]))."""
    key = jax.random.key(7)
    noise = np.asarray(jax.random.normal(jax.random.split(key)[0], (NUM_SAMPLES, 3)), np.float64)
    out = _run(sampler, name, prediction, steps, key=7)
    exact = _exact_flow(name, noise, to_clean=sampler == "ddim")
    return float(np.sqrt(np.mean(np.sum((out - exact) ** 2, axis=1))))


CASES = [("linear", "eps"), ("cosine", "v")]
STEPS = {"ddpm": 500, "ddim": 200, "dpm_solver_pp_1s": 200}
STEPS = {sampler: STEPS.get(sampler, 50) for sampler in samplers.SAMPLERS}


@pytest.mark.parametrize("name,prediction", CASES)
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_samples_match_gaussian_and_are_reproducible(sampler, name, prediction):
    x = _run(sampler, name, prediction, STEPS[sampler])
    assert np.all(np.isfinite(x))
    # Monte-Carlo standard errors at 4000 samples are about 0.01 for these moments.
    np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), SIGMA, atol=0.05)
    np.testing.assert_array_equal(_run(sampler, name, prediction, STEPS[sampler]), x)
    assert not np.allclose(_run(sampler, name, prediction, STEPS[sampler], key=1), x)
    if sampler != "ddpm":
        assert _map_error(sampler, name, prediction, STEPS[sampler]) < 0.02


@pytest.mark.parametrize("name,prediction", CASES)
def test_dpm_solvers_beat_ddim_at_few_steps(name, prediction):
    for steps in (10, 15, 20):
        ddim = _map_error("ddim", name, prediction, steps)
        assert _map_error("dpm_solver_pp_2m", name, prediction, steps) < 0.5 * ddim
        assert _map_error("dpm_solver_3s", name, prediction, steps) < 0.5 * ddim


def test_convergence_orders():
    """Halving the log-SNR step halves DDIM's error (order 1) and quarters DPM-Solver++(2M)'s."""
    ratio = lambda s: _map_error(s, "linear", "eps", 80) / _map_error(s, "linear", "eps", 40)
    assert 0.4 < ratio("ddim") < 0.6
    assert 0.15 < ratio("dpm_solver_pp_2m") < 0.35


def test_ddim_with_eta_one_is_ddpm():
    """DDIM's eta = 1 noise (Song et al. eq. 16) is the DDPM posterior variance, same draws."""
    ddpm = _run("ddpm", "linear", "eps", 30, key=3)
    ddim = _run("ddim", "linear", "eps", 30, key=3, eta=1.0)
    np.testing.assert_allclose(ddim, ddpm, atol=2e-4)


def test_singlestep_order3_every_step_count():
    """Steps 1..60 (3n-1 forms such as the published 50 included): plan, NFE, finite, accuracy."""
    for steps in range(1, 61):
        for order in (1, 2, 3):
            orders = dpm_solver_reference.official_orders(steps, order)
            plan = [samplers.singlestep_plan(steps, k, order) for k in range(len(orders) + 1)]
            assert [int(o) for o, _ in plan[:-1]] == orders
            assert [int(c) for _, c in plan] == list(np.cumsum([0] + orders))
            assert samplers.num_outer_steps(steps, order) == len(orders)
        _CALLS.clear()
        out = _run("dpm_solver_3s", "linear", "eps", steps)
        jax.effects_barrier()
        assert len(_CALLS) == steps, steps
        assert np.all(np.isfinite(out)), steps
        assert _CALLS[0] == T - 1 and min(_CALLS) >= 0
        if steps >= 30:
            assert _map_error("dpm_solver_3s", "linear", "eps", steps) < 0.01, steps


def _exact_eps_np(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Float64 E[eps | x_t] of the Gaussian data under the linear schedule, at timestep index."""
    la = np.interp(index, np.arange(T), _log_alpha_table("linear"))[:, None]
    a, s = np.exp(la), np.sqrt(-np.expm1(2 * la))
    y = (x - a * MU) @ EIGVECS
    return (y * s / (a**2 * EIGVALS + s**2)) @ EIGVECS.T


def _published_grid_run(sampler: str, steps: int, key: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """(samples, start noise) of `sampler` on the time-uniform grid, 512 Gaussian samples."""
    shape = (512, 3)
    out = samplers.sample(
        _exact_model("linear", "eps"),
        shape,
        jax.random.key(key),
        _schedule("linear"),
        sampler=sampler,
        steps=steps,
    )
    noise = jax.random.normal(jax.random.split(jax.random.key(key))[0], shape)
    return np.asarray(out, np.float64), np.asarray(noise, np.float64)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_dpm_solver_pp_is_the_published_algorithm(order):
    """The data-form singlestep solver equals the published algorithm (written independently in
    dpm_solver_reference.py, float64) from the same noise, at the published 50 steps and fewer;
    the noise-form 'dpm_solver_3s' is a different solver and does not."""
    betas = np.linspace(1e-4, 0.028, T)
    for steps in (7, 20, 50):
        ours, noise = _published_grid_run(f"dpm_solver_pp_{order}s", steps)
        ref = dpm_solver_reference.dpm_solver_pp_singlestep(
            _exact_eps_np, betas, noise, steps, order
        )
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < 2e-6, (order, steps, rel)
        if order == 3:
            noise_form = _published_grid_run("dpm_solver_3s", steps)[0]
            assert np.linalg.norm(noise_form - ref) / np.linalg.norm(ref) > 100 * rel + 1e-3
    # The reference is itself a solver of the flow: at 50 steps of order 3 it is close to exact.
    if order == 3:
        exact = _exact_flow("linear", noise, to_clean=False)
        assert np.sqrt(np.mean(np.sum((ref - exact) ** 2, axis=1))) < 0.01


def test_sampling_start_clips_the_cosine_log_snr():
    assert float(samplers.sampling_start(_schedule("linear"))) == T - 1
    start = samplers.sampling_start(_schedule("cosine"))
    np.testing.assert_allclose(float(start), _start_np("cosine"), atol=1e-3)
    np.testing.assert_allclose(
        float(schedules.log_snr(_schedule("cosine"), start)), -5.1, atol=1e-3
    )


def test_time_grids():
    sch = _schedule("linear")
    frac = jnp.linspace(0.0, 1.0, 6)
    start, end = jnp.float32(T - 1), jnp.float32(0.0)
    np.testing.assert_allclose(
        samplers.spaced_time(sch, start, end, frac, "time_uniform"),
        np.linspace(T - 1, 0, 6),
        atol=1e-4,
    )
    quad = samplers.spaced_time(sch, start, end, frac, "time_quadratic")
    expected = np.linspace(1.0, np.sqrt(1 / T), 6) ** 2 * T - 1
    np.testing.assert_allclose(quad, expected, atol=1e-3)
    lam = schedules.log_snr(sch, samplers.spaced_time(sch, start, end, frac, "logsnr"))
    np.testing.assert_allclose(np.diff(np.asarray(lam)), np.full(5, np.diff(lam).mean()), atol=1e-3)


def test_bad_arguments_are_named():
    model = _exact_model("linear", "eps")
    sch = _schedule("linear")
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="'sampler'"):
        samplers.sample(model, (2, 3), key, sch, sampler="euler", steps=5)
    with pytest.raises(ValueError, match="'steps'"):
        samplers.sample(model, (2, 3), key, sch, sampler="ddim", steps=0)
    with pytest.raises(ValueError, match="'eta'"):
        samplers.sample(model, (2, 3), key, sch, sampler="ddpm", steps=5, eta=0.5)
    with pytest.raises(ValueError, match="'skip'"):
        samplers.sample(model, (2, 3), key, sch, sampler="ddim", steps=5, skip="karras")


def test_clip_x0_bounds_the_one_step_ddim_output():
    """One DDIM step from the start lands on the x0 prediction (here about 70 x), so it obeys
    the clip."""
    sch = _schedule("linear")
    out = samplers.sample(
        lambda x, t: -x, (64, 3), jax.random.key(0), sch, sampler="ddim", steps=1, clip_x0=0.1
    )
    assert np.max(np.abs(np.asarray(out))) <= 0.1 + 1e-6
    assert np.max(np.abs(np.asarray(out))) > 0.09


def _toy_conditional_model(calls: list):
    """A nonlinear conditional network whose output depends on every input."""

    def model_fn(x, t, class_ids, device_ids, box_mask):
        calls.append(x.shape[0])
        cond = (class_ids * 0.7 + device_ids * 0.3)[:, None, None, None]
        return jnp.tanh(x * (1 + cond) + box_mask * 0.5 + t[:, None, None, None] / T)

    return model_fn


@pytest.mark.parametrize("time_input", guidance.TIME_INPUTS)
@pytest.mark.parametrize("drop_box_mask", [False, True])
def test_guidance_is_one_batched_call_with_published_formula(drop_box_mask, time_input):
    calls: list = []
    model_fn = _toy_conditional_model(calls)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    t = jnp.asarray([10.0, 200.0, 350.5, 499.0])
    classes, devices = jnp.asarray([1, 2, 1, 2]), jnp.asarray([3, 1, 2, 3])
    mask = jnp.asarray(rng.random((4, 8, 8, 1)) > 0.5, jnp.float32)
    kw = dict(drop_box_mask=drop_box_mask, time_input=time_input)
    denoise_fn = guidance.guided_denoise_fn(
        model_fn, classes, devices, mask, guidance_weight=1.8, **kw
    )
    guided = denoise_fn(x, t)
    assert calls == [8]
    # The published network sees the integer part of the time: 350.5 -> 350.
    t_net = jnp.asarray([10.0, 200.0, 350.0, 499.0]) if time_input == "floor" else t
    cond = model_fn(x, t_net, classes, devices, mask)
    null_mask = jnp.zeros_like(mask) if drop_box_mask else mask
    uncond = model_fn(x, t_net, jnp.zeros_like(classes), jnp.zeros_like(devices), null_mask)
    np.testing.assert_allclose(guided, 2.8 * cond - 1.8 * uncond, atol=1e-5)
    unguided = guidance.guided_denoise_fn(
        model_fn, classes, devices, mask, guidance_weight=0.0, **kw
    )
    np.testing.assert_allclose(unguided(x, t), cond, atol=1e-6)
    with pytest.raises(ValueError, match="'time_input'"):
        guidance.guided_denoise_fn(model_fn, classes, devices, mask, time_input="round")


def test_published_box_raster_truncates_the_edges():
    """'truncate' is the published int() of each scaled edge (written out here pixel by pixel);
    'outward' also covers the partly covered pixels at the right and bottom."""
    boxes = [[0.123, 0.301, 0.517, 0.689], [0.6, 0.05, 0.93, 0.41], [0.8, 0.7, 0.805, 0.95]]
    expected = np.zeros((64, 64), np.float32)
    for x1, y1, x2, y2 in boxes:
        expected[int(y1 * 64) : int(y2 * 64), int(x1 * 64) : int(x2 * 64)] = 1.0
    got = box_priors.box_mask(boxes, 64, 64, raster="truncate")[..., 0]
    np.testing.assert_array_equal(got, expected)
    outward = box_priors.box_mask(boxes, 64, 64)[..., 0]
    assert np.all(outward >= got) and outward.sum() > got.sum()
    assert outward[44:61, 51].all() and not got[44:61, 51].any()  # the sub-pixel-wide third box
    with pytest.raises(ValueError, match="raster"):
        box_priors.box_mask(boxes, 64, 64, raster="round")


def test_sharded_sampling_matches_unsharded():
    """On 8 simulated CPU devices, a batch sharded over a data axis gives the same samples."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from busgen_jax.diffusion import samplers, schedules
        assert jax.device_count() == 8, jax.devices()
        sch = schedules.from_betas(schedules.linear_betas(500, 1e-4, 0.028))
        model = lambda x, t: jnp.tanh(x) * (t[:, None] / 500.0) + 0.1 * x
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        for sampler in ("ddpm", "dpm_solver_3s"):
            kw = dict(sampler=sampler, steps=20)
            ref = samplers.sample(model, (16, 3), jax.random.key(5), sch, **kw)
            out = samplers.sample(model, (16, 3), jax.random.key(5), sch, sharding=sharding, **kw)
            assert len(out.sharding.device_set) == 8, out.sharding
            np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)
        print("OK")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
