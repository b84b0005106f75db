"""Schedules and losses against closed forms recomputed here in float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from busgen_jax.diffusion import losses, schedules


def _config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


LINEAR = schedules.make_schedule(_config(schedule="linear", num_timesteps=500))
COSINE = schedules.make_schedule(_config(schedule="cosine", num_timesteps=500))


def test_published_linear_schedule():
    betas = np.linspace(1e-4, 0.028, 500)
    assert LINEAR.T == 500
    np.testing.assert_allclose(LINEAR.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(LINEAR.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)


def test_cosine_schedule_closed_form():
    """alpha_bar_t = f(t) / f(0) (Nichol & Dhariwal eq. 17) wherever beta is not clipped."""
    steps = np.arange(1, 501) / 500
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f(steps) / f(0.0)
    unclipped = np.asarray(COSINE.betas) < 0.999
    np.testing.assert_allclose(
        np.asarray(COSINE.alphas_cumprod)[unclipped], expected[unclipped], rtol=1e-4, atol=1e-9
    )


def test_fractional_timesteps_interpolate_log_alpha():
    log_alpha = 0.5 * np.log(np.cumprod(1 - np.linspace(1e-4, 0.028, 500)))
    t = np.array([0.0, 0.25, 17.5, 250.0, 498.9, 499.0])
    expected_alpha = np.exp(np.interp(t, np.arange(500), log_alpha))
    np.testing.assert_allclose(schedules.alpha(LINEAR, t), expected_alpha, rtol=1e-5)
    np.testing.assert_allclose(
        schedules.sigma(LINEAR, t), np.sqrt(1 - expected_alpha**2), rtol=1e-4
    )
    lam = np.log(expected_alpha / np.sqrt(1 - expected_alpha**2))
    np.testing.assert_allclose(schedules.log_snr(LINEAR, t), lam, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(schedules.t_from_log_snr(LINEAR, lam), t, atol=2e-3)


def test_make_schedule_errors_name_the_field():
    with pytest.raises(ValueError, match="'schedule'"):
        schedules.make_schedule(_config(schedule="sigmoid"))
    with pytest.raises(ValueError, match="'beta_start'"):
        schedules.make_schedule(_config(schedule="linear", beta_start=0.5, beta_end=0.1))
    with pytest.raises(ValueError, match="'num_timesteps'"):
        schedules.make_schedule(_config(schedule="cosine", num_timesteps=1))


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_q_sample_and_targets_closed_form():
    x0, noise = _random((3, 4, 4, 1), 0), _random((3, 4, 4, 1), 1)
    t = jnp.asarray([0.0, 100.0, 499.0])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.028, 500))[[0, 100, 499]]
    a, s = np.sqrt(abar)[:, None, None, None], np.sqrt(1 - abar)[:, None, None, None]
    x_t = losses.q_sample(LINEAR, x0, t, noise)
    np.testing.assert_allclose(x_t, a * x0 + s * noise, rtol=1e-5, atol=1e-6)
    a_t, s_t = np.sqrt(abar), np.sqrt(1 - abar)
    np.testing.assert_allclose(losses.target("eps", x0, noise, a_t, s_t), noise)
    np.testing.assert_allclose(losses.target("x0", x0, noise, a_t, s_t), x0)
    v = losses.target("v", x0, noise, a_t, s_t)
    np.testing.assert_allclose(v, a * noise - s * x0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", losses.PREDICTIONS)
def test_prediction_conversions_recover_eps_x0_v(prediction):
    """From the exact target of any parametrization, every other one is recovered."""
    x0, noise = _random((4, 5), 2), _random((4, 5), 3)
    a = jnp.asarray([0.99, 0.7, 0.3, 0.05])
    s = jnp.sqrt(1 - a**2)
    x_t = a[:, None] * x0 + s[:, None] * noise
    pred = losses.target(prediction, x0, noise, a, s)
    np.testing.assert_allclose(losses.to_x0(pred, x_t, a, s, prediction), x0, atol=2e-4)
    np.testing.assert_allclose(losses.to_eps(pred, x_t, a, s, prediction), noise, atol=2e-4)
    v = a[:, None] * noise - s[:, None] * x0
    np.testing.assert_allclose(losses.to_v(pred, x_t, a, s, prediction), v, atol=2e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_is_min_snr_on_the_x0_error(prediction):
    """Any predictor: w * |target - pred|^2 = min(SNR, gamma) * |x0 - x0_hat|^2 per example."""
    x0, noise, pred = _random((6, 8), 4), _random((6, 8), 5), _random((6, 8), 6)
    a = jnp.linspace(0.05, 0.99, 6)
    s = jnp.sqrt(1 - a**2)
    x_t = a[:, None] * x0 + s[:, None] * noise
    snr = (a / s) ** 2
    weight = losses.loss_weight(snr, prediction, "min_snr", snr_gamma=5.0)
    lhs = weight * jnp.sum((losses.target(prediction, x0, noise, a, s) - pred) ** 2, axis=1)
    x0_err = jnp.sum((x0 - losses.to_x0(pred, x_t, a, s, prediction)) ** 2, axis=1)
    np.testing.assert_allclose(lhs, np.minimum(snr, 5.0) * x0_err, rtol=2e-4)
    uniform = losses.loss_weight(snr, prediction, "uniform")
    np.testing.assert_array_equal(uniform, np.ones(6))


def _recording_model(record: list):
    """A network that is not the identity on any input; records what it was called with."""

    def apply_fn(x_t, t, scale):
        record.append((np.asarray(x_t, np.float64), np.asarray(t)))
        return jnp.tanh(x_t) * scale

    return apply_fn


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_diffusion_loss_matches_numpy(prediction, weighting):
    x0 = jnp.clip(_random((4, 6, 6, 1), 7), -1, 1)
    record: list = []
    apply_fn = _recording_model(record)
    kw = dict(prediction=prediction, weighting=weighting, scale=0.5)
    mean = losses.diffusion_loss(apply_fn, x0, jax.random.key(3), LINEAR, **kw)
    published = losses.diffusion_loss(
        apply_fn, x0, jax.random.key(3), LINEAR, reduction="published", **kw
    )
    (x_t, t), _ = record
    assert t.dtype == np.float32 and np.all(t == np.round(t)) and np.all((t >= 0) & (t < 500))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.028, 500))[t.astype(int)]
    a, s = np.sqrt(abar)[:, None, None, None], np.sqrt(1 - abar)[:, None, None, None]
    x0_np = np.asarray(x0, np.float64)
    noise = (x_t - a * x0_np) / s  # the noise the loss drew, recovered from x_t
    target = noise if prediction == "eps" else a * noise - s * x0_np
    sq_err = (target - np.tanh(x_t) * 0.5) ** 2
    snr = abar / (1 - abar)
    weight = np.ones(4)
    if weighting == "min_snr":
        weight = np.minimum(snr, 5.0) / (snr if prediction == "eps" else snr + 1)
    per_example = sq_err.reshape(4, -1).sum(1) * weight
    np.testing.assert_allclose(mean, per_example.sum() / sq_err.size, rtol=2e-4)
    # Published BUSGen scale: summed over pixels, divided by the batch size squared.
    np.testing.assert_allclose(published, per_example.sum() / 4**2, rtol=2e-4)


def test_diffusion_loss_timesteps_are_uniform():
    record: list = []
    loss = losses.diffusion_loss(
        _recording_model(record), jnp.zeros((20000, 1)), jax.random.key(0), LINEAR, scale=0.0
    )
    # Zero prediction, eps target: the loss is the mean of eps^2, about 1.
    assert abs(float(loss) - 1.0) < 0.03
    counts = np.bincount(record[0][1].astype(int), minlength=500).reshape(50, 10).sum(1)
    chi2 = np.sum((counts - 400) ** 2 / 400)
    assert chi2 < 90  # 49 degrees of freedom: p < 1e-3 above 85


def test_diffusion_loss_jits_and_differentiates():
    x0 = jnp.clip(_random((4, 6, 6, 1), 8), -1, 1)
    loss_fn = lambda w: losses.diffusion_loss(
        lambda x_t, t: w * jnp.tanh(x_t), x0, jax.random.key(1), LINEAR, prediction="v"
    )
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(0.3)
    np.testing.assert_allclose(value, loss_fn(0.3), rtol=1e-5)
    numeric = (loss_fn(0.3 + 1e-2) - loss_fn(0.3 - 1e-2)) / 2e-2
    np.testing.assert_allclose(grad, numeric, rtol=1e-3)


def test_loss_options_are_validated():
    with pytest.raises(ValueError, match="'reduction'"):
        losses.diffusion_loss(
            lambda x, t: x, jnp.zeros((2, 3)), jax.random.key(0), LINEAR, reduction="sum"
        )
    with pytest.raises(ValueError, match="'weighting'"):
        losses.loss_weight(jnp.ones(2), "eps", "p2")
