"""Loss-based membership inference: the attack's metrics and the per-image denoising loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sklearn.metrics
from generator_fixtures import tiny_generator

from busgen_jax.diffusion import generator, schedules
from busgen_jax.privacy import membership


def test_attack_auc_and_tpr_at_low_fpr_match_sklearn():
    rng = np.random.default_rng(0)
    members = rng.normal(0.9, 0.1, 300)  # memorized: lower loss
    others = rng.normal(1.0, 0.1, 400)
    result = membership.loss_attack(members, others)
    labels = np.r_[np.ones(300), np.zeros(400)]
    scores = -np.r_[members, others]
    assert result["auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels, scores))
    fpr, tpr, _ = sklearn.metrics.roc_curve(labels, scores)
    assert result["fpr_at_threshold"] <= 0.01
    assert result["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max())
    same = membership.loss_attack(others[:200], others[200:])
    assert abs(same["auc"] - 0.5) < 0.08
    with pytest.raises(ValueError, match="member and non-member"):
        membership.loss_attack(np.array([]), others)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generator.load_generator(tiny_generator(tmp_path_factory.mktemp("mia") / "gen"))


def test_per_image_loss_is_the_direct_denoising_error_whatever_the_batch(tiny):
    model, spec = tiny
    rng = np.random.default_rng(1)
    size = spec.image_size
    images = rng.uniform(-1, 1, (5, size, size)).astype(np.float32)
    classes, devices = np.array([1, 2, 1, 3, 2]), np.array([1, 1, 2, 2, 0])
    masks = (rng.uniform(size=(5, size, size)) > 0.7).astype(np.float32)
    kw = {"num_draws": 2, "seed": 3}
    losses = membership.per_image_losses(model, spec, images, classes, devices, masks, **kw)
    again = membership.per_image_losses(
        model, spec, images[::-1], classes[::-1], devices[::-1], masks[::-1], batch=2, **kw
    )
    np.testing.assert_allclose(again[::-1], losses, rtol=1e-5)

    schedule = schedules.make_schedule(ml_collections.ConfigDict(spec.schedule))
    channels = model.head.in_features - 1
    expected = 0.0
    for d in range(2):
        t = (d + 0.5) * schedule.T // 2
        noise = jax.random.normal(jax.random.key(3 + d), (1, size, size, channels))
        x0 = jnp.repeat(jnp.asarray(images[:1])[..., None], channels, -1)
        a, s = schedules.alpha(schedule, jnp.array([t])), schedules.sigma(schedule, jnp.array([t]))
        x_t = a[:, None, None, None] * x0 + s[:, None, None, None] * noise
        pred = model(
            x_t, jnp.array([t], jnp.float32), classes[:1], devices[:1], masks[:1, ..., None]
        )
        assert spec.prediction == "eps"
        expected += float(jnp.mean((pred - noise) ** 2)) / 2
    assert losses[0] == pytest.approx(expected, rel=1e-4)
