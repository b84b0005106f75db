"""Copy-protected sampling: the random-label classifier memorizes, and its guidance is the
classifier-guidance formula on p (1 - p), applied only where the classifier is confident."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from busgen_jax.data import phantom, schema
from busgen_jax.diffusion import losses, schedules
from busgen_jax.privacy import cpsample

SCHEDULE = schedules.make_schedule(
    ml_collections.ConfigDict({"schedule": "linear", "num_timesteps": 200})
)


def _images(num: int, seed: int) -> np.ndarray:
    records = phantom.phantom_records(num, seed, 32)
    return np.stack([schema.decode_png(r["image"]) for r in records]) / 127.5 - 1.0


def test_classifier_memorizes_random_labels_of_the_training_images():
    classifier, info = cpsample.train_classifier(_images(16, 0), SCHEDULE, steps=400, seed=1)
    assert sorted(info["labels"]) == [0.0] * 8 + [1.0] * 8
    assert info["train_accuracy"] >= 0.9
    # Fresh images get no confident answer on average: the labels carried no signal to learn.
    fresh = jnp.asarray(_images(32, 5), jnp.float32)[..., None]
    p = jax.nn.sigmoid(classifier(fresh, jnp.full((32,), 0.05)))
    assert abs(float(p.mean()) - 0.5) < 0.3


def _objective_grad_fd(classifier, x, sigma, eps=1e-2):
    """Central finite differences of sum log p(1 - p) in a few pixels of x (independent of jax.grad)."""

    def f(x):
        p = np.asarray(jax.nn.sigmoid(classifier(x.mean(-1, keepdims=True), sigma)), np.float64)
        return float(np.sum(np.log(p) + np.log1p(-p)))

    out = {}
    for index in [(0, 3, 4, 0), (1, 10, 20, 1), (1, 31, 0, 0)]:
        d = jnp.zeros_like(x).at[index].set(eps)
        out[index] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_guidance_moves_the_implied_noise_by_minus_scale_sigma_grad(prediction):
    classifier = cpsample.RandomLabelClassifier(8, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 2)), jnp.float32)
    t = jnp.array([40.0, 150.0])
    a, s = schedules.alpha(SCHEDULE, t), schedules.sigma(SCHEDULE, t)
    eps_model = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    x0_model = (x - s[:, None, None, None] * eps_model) / a[:, None, None, None]
    pred = losses.target(prediction, x0_model, eps_model, a, s)

    def denoise(x_, t_):
        return pred

    scale = 3.0
    always = cpsample.protect(denoise, classifier, SCHEDULE, prediction, scale=scale, alpha=0.5)
    never = cpsample.protect(denoise, classifier, SCHEDULE, prediction, scale=scale, alpha=0.0)
    np.testing.assert_allclose(never(x, t), pred, rtol=1e-5, atol=1e-5)
    eps_guided = losses.to_eps(always(x, t), x, a, s, prediction)
    for index, grad in _objective_grad_fd(classifier, x, s).items():
        expected = float(eps_model[index] - scale * s[index[0]] * grad)
        assert float(eps_guided[index]) == pytest.approx(expected, rel=2e-2, abs=2e-4)
