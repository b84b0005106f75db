"""The classifier network: shapes, features, config errors, and the U-Net encoder's weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from busgen_jax.models import classifier, presets, unet


def _config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(
            encoder="resnet",
            image_size=32,
            base_channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            norm_groups=4,
            stem_stride=1,
            dropout=0.1,
            num_outputs=1,
            init_from_unet="",
            unet=None,
        )
    )
    config.update(overrides)
    return config


def _make_test_model(module=classifier.Classifier, **overrides):
    """Built under jit with RBG keys: eager threefry initialisation compiles slowly on CPU."""
    config = overrides.pop("config", None) or _config(**overrides)
    build = lambda: module(config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, _ = nnx.split(nnx.eval_shape(build))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(build())[1])())


def _images(n=3, size=32, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 1), minval=-1.0, maxval=1.0)


@pytest.mark.parametrize(
    "overrides, feature_dim",
    [
        ({}, 16),
        ({"channel_mults": (1, 2, 4), "stem_stride": 2, "num_outputs": 3}, 32),
        ({"encoder": "unet", "unet": presets.model_config("tiny")}, 32),
    ],
)
def test_logits_and_features_shapes(overrides, feature_dim):
    model = _make_test_model(**overrides)
    logits, features = model(_images(), return_features=True)
    assert logits.shape == (3, overrides.get("num_outputs", 1))
    assert features.shape == (3, feature_dim)
    np.testing.assert_allclose(model.features(_images()), features, rtol=1e-5, atol=1e-6)
    # The head is a dense layer on the features (dropout off without a key).
    np.testing.assert_allclose(model.fc(features), logits, rtol=1e-5, atol=1e-6)


def test_dropout_only_with_a_key_and_per_example_independence():
    model = _make_test_model(dropout=0.5)
    images = _images(4)
    a, b = model(images), model(images)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(model(images, dropout_rng=jax.random.key(1)), a)
    # Examples do not interact (GroupNorm, not BatchNorm): one image alone gives its logit.
    np.testing.assert_allclose(model(images[1:2]), a[1:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"encoder": "vit"}, "encoder"),
        ({"norm_groups": 3}, "norm_groups"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"dropout": 1.0}, "dropout"),
        ({"encoder": "unet"}, "unet"),
        ({"stem_stride": 4}, "stem_stride"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"field '{field}'"):
        classifier.validate_config(_config(**overrides))


def test_unet_encoder_copies_weights_and_runs_the_unet_down_path():
    unet_config = presets.model_config("tiny")
    source = _make_test_model(unet.UNet, config=unet_config)
    model = _make_test_model(encoder="unet", unet=unet_config)
    classifier.copy_unet_weights(model, source)
    copied = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    reference = nnx.to_pure_dict(nnx.state(source, nnx.Param))
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(copied)]
    assert len(paths) > 20
    for path, value in jax.tree_util.tree_leaves_with_path(copied):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        expected = reference
        for key in keys:
            expected = expected[key]
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected))
    # Independent forward: the U-Net's own modules at t=0, null class and device, no box.
    images = _images(2)
    t, null = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    temb = unet.interpolate_rows(source.time_table[...], t)
    temb = source.time_dense2(nnx.swish(source.time_dense1(temb)))
    cemb = jnp.concatenate([source.class_embed(null), source.device_embed(null)], -1)
    cemb = source.cond_dense2(nnx.swish(source.cond_dense1(cemb)))
    h = source.head(jnp.concatenate([images, jnp.zeros_like(images)], -1))
    for block in source.down:
        h = block(h, temb, cemb) if isinstance(block, unet.ResBlock) else block(h)
    np.testing.assert_allclose(model.encoder(images), h, rtol=1e-4, atol=1e-5)


def test_copy_refuses_a_resnet_and_a_mismatched_unet():
    # Shapes are checked before any value is read, so abstract models suffice.
    abstract = lambda module, config: nnx.eval_shape(lambda: module(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="encoder 'unet'"):
        classifier.copy_unet_weights(abstract(classifier.Classifier, _config()), None)
    wider = presets.model_config("tiny")
    wider.base_channels = 32
    model = abstract(
        classifier.Classifier, _config(encoder="unet", unet=presets.model_config("tiny"))
    )
    with pytest.raises(ValueError, match="has shape"):
        classifier.copy_unet_weights(model, abstract(unet.UNet, wider))
