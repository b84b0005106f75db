"""Noise-like samples: the criterion, and synthesis redrawing them before anything is written."""

import numpy as np
import pytest
from generator_fixtures import phantom_dataset, tiny_generator
from scipy import ndimage

from busgen_jax.core import config_files
from busgen_jax.data import pipeline, schema, shards
from busgen_jax.diffusion import generator
from busgen_jax.evaluation import sample_failures
from busgen_jax.jobs import layout, synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(phantom_dataset(tmp_path_factory.mktemp("failures") / "data", num=96))


def _smooth_fields(rng, n, size=32):
    """Blurred random fields: low-frequency images unlike any training image."""
    fields = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 3, 3))
    return np.clip(fields / (3 * fields.std()), -1, 1).astype(np.float32)


def test_noise_is_failed_and_real_images_are_not(data):
    real = pipeline.load_split([data], "train", 32, schema.PATHOLOGIES)["image"]
    heldout = pipeline.load_split([data], "test", 32, schema.PATHOLOGIES)["image"]
    limit = sample_failures.failure_limit(real)
    rng = np.random.default_rng(0)
    salt_and_pepper = rng.choice([-1.0, 1.0], size=(16, 32, 32)).astype(np.float32)
    gaussian = np.clip(rng.normal(size=(16, 32, 32)), -1, 1).astype(np.float32)
    assert sample_failures.failed(salt_and_pepper, limit).all()
    assert sample_failures.failed(gaussian, limit).all()
    assert not sample_failures.failed(heldout, limit).any()
    assert not sample_failures.failed(_smooth_fields(rng, 16), limit).any()
    # Half-noise: a real image with noise over a third of its rows is still caught.
    mixed = heldout[:8].copy()
    mixed[:, :11] = salt_and_pepper[:8, :11]
    assert sample_failures.failed(mixed, limit).all()


def test_failure_limit_needs_real_images():
    with pytest.raises(ValueError, match="at least one real image"):
        sample_failures.failure_limit(np.zeros((0, 32, 32), np.float32))


def test_synthesis_redraws_noise_and_writes_none(data, tmp_path, monkeypatch):
    """First draw of every batch is noise for even plan indices; all are redrawn and counted."""
    rng = np.random.default_rng(1)
    calls = {"n": 0}

    def fake_make_sample_fn(spec, **kwargs):
        def sample_fn(model, key, classes, devices, masks):
            calls["n"] += 1
            images = _smooth_fields(rng, len(classes))
            if calls["n"] == 1:
                images[::2] = rng.choice([-1.0, 1.0], size=images[::2].shape)
            return images[..., None]

        return sample_fn

    monkeypatch.setattr(generator, "make_sample_fn", fake_make_sample_fn)
    config = config_files.load("configs/synthesize.py:tiny")
    config.update(
        generator=str(tiny_generator(tmp_path / "generator")),
        num_images=8,
        records_per_shard=8,
        redraw_failed=True,
        classes={"benign": 1.0, "dcis": 1.0},
    )
    config.audit.train_paths = [data]
    config.audit.membership_draws = 0
    manifest = synthesize.run(config, str(tmp_path / "run"))
    assert manifest["num_records"] == 8
    assert manifest["extra"]["failed_samples"]["redrawn"] == 4
    written = [
        schema.decode_png(r["image"]).astype(np.float32) / 127.5 - 1.0
        for r in shards.read_records(tmp_path / "run" / layout.SYNTHETIC, "train")
    ]
    limit = manifest["extra"]["failed_samples"]["limit"]
    assert not sample_failures.failed(np.stack(written), limit).any()
    redrawn = [
        r["provenance"]["attempt"]
        for r in shards.read_records(tmp_path / "run" / layout.SYNTHETIC, "train")
    ]
    assert redrawn == [1, 0, 1, 0, 1, 0, 1, 0]
