"""The conditional U-Net: published sizes, conditioning, time embedding, dropout, attention impls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from generator_fixtures import random_unet

from busgen_jax.models import UNet, count_params, model_config, unet
from busgen_jax.models.unet import dropout, interpolate_rows, sinusoidal_embedding

_forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs))


def _make_test_model(seed: int = 0, **overrides) -> UNet:
    config = model_config("tiny")
    config.update(overrides)
    return random_unet(config, seed)


@pytest.fixture(scope="module")
def model() -> UNet:
    return _make_test_model(seed=0, dropout=0.3)


def _batch():
    """Six samples equal but for one condition each: row 0 is the reference, rows 1-4 change the
    class, device, box mask and all conditions to null, row 5 repeats row 0."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 1)).astype(np.float32)
    mask = np.zeros((6, 32, 32, 1), np.float32)
    mask[:, 8:20, 10:24] = 1.0
    mask[3] = 0.0
    t = jnp.full((6,), 37.0)
    classes = jnp.array([1, 2, 1, 1, 0, 1])
    devices = jnp.array([1, 1, 2, 1, 0, 1])
    return np.repeat(x, 6, 0), t, classes, devices, mask


@pytest.mark.parametrize("name,expected", [("busgen_toy", 47_766_787), ("busgen", 47_768_835)])
def test_published_presets_have_the_published_parameter_count(name, expected):
    assert count_params(model_config(name)) == expected


def test_demo_presets_build_and_record_image_size():
    for name in ("tiny", "small", "efficient"):
        config = model_config(name)
        assert config.image_size % 2 ** (len(config.channel_mults) - 1) == 0
    assert 1_000_000 < count_params(model_config("small")) < 10_000_000
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge")


def test_efficient_preset_costs_at_most_40_percent_of_the_published_forward_pass():
    published = unet.forward_flops(model_config("busgen_toy"))
    assert 5.0e11 < published < 5.5e11  # the ~530 GFLOP per 128 px image of the published net
    efficient = model_config("efficient")
    assert unet.forward_flops(efficient) <= 0.40 * published
    assert efficient.image_size == 128 and efficient.image_channels == 1
    assert max(efficient.attention_levels) == 3 and min(efficient.attention_levels) >= 2


def test_conditions_act_per_sample_and_null_is_distinct(model):
    out = np.asarray(_forward(model, *_batch()))
    assert out.shape == (6, 32, 32, 1) and np.isfinite(out).all()
    np.testing.assert_allclose(out[5], out[0], rtol=1e-5, atol=1e-6)  # samples independent
    for changed in (1, 2, 3, 4):  # class, device, box mask, null condition
        assert np.abs(out[changed] - out[0]).max() > 1e-3, changed


def test_time_table_interpolates_linearly_and_is_exact_at_integers():
    table = jnp.asarray(np.random.default_rng(0).standard_normal((10, 6)), jnp.float32)
    t = np.array([0.0, 2.0, 2.25, 8.5, 9.0, 12.0, -1.0], np.float32)
    got = np.asarray(interpolate_rows(table, t))
    expected = np.stack([np.interp(t, np.arange(10), table[:, j]) for j in range(6)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1], table[2])


def test_sinusoids_are_interleaved_and_continuous():
    t = np.array([0.0, 3.0, 3.5, 499.0])
    got = np.asarray(sinusoidal_embedding(jnp.asarray(t), 8))
    freqs = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    np.testing.assert_allclose(got[:, 0::2], np.sin(t[:, None] * freqs), atol=2e-5)
    np.testing.assert_allclose(got[:, 1::2], np.cos(t[:, None] * freqs), atol=2e-5)


def test_dropout_keeps_expectation():
    x = jnp.ones((200_000,))
    y = np.asarray(dropout(x, 0.25, jax.random.key(0)))
    assert abs((y == 0).mean() - 0.25) < 0.005
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    assert dropout(x, 0.25, None) is x


def test_dropout_rng_controls_all_randomness(model):
    args = _batch()
    evaluation = _forward(model, *args)
    np.testing.assert_array_equal(evaluation, _forward(model, *args))
    key = jax.random.key(7)
    train = _forward(model, *args, dropout_rng=key)
    np.testing.assert_array_equal(train, _forward(model, *args, dropout_rng=key))
    other = _forward(model, *args, dropout_rng=jax.random.key(8))
    assert np.abs(train - evaluation).max() > 1e-3
    assert np.abs(train - other).max() > 1e-3


def test_chunked_multihead_attention_model_matches_plain(model):
    # Same seed, same parameters; 16x16 = 256 positions in chunks of 48 exercise padded,
    # multi-chunk queries and keys in both heads.
    chunked = _make_test_model(seed=0, dropout=0.3, attention_impl="chunked", attention_chunk=48)
    args = _batch()
    np.testing.assert_allclose(
        _forward(chunked, *args), _forward(model, *args), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("attention_levels", (2,)),
        ("time_embedding", "fourier"),
        ("attention_impl", "flash"),
        ("image_size", 33),
        ("norm_groups", 5),
        ("num_classes", -1),
        ("attention_chunk", 0),
    ],
)
def test_invalid_config_names_the_field(field, value):
    config = model_config("tiny")
    config[field] = value
    with pytest.raises(ValueError, match=field):
        count_params(config)


def test_missing_config_field_is_named():
    config = model_config("tiny")
    del config["num_devices"]
    with pytest.raises(ValueError, match="num_devices"):
        count_params(config)


@pytest.mark.parametrize("kernel,padding", [(5, (2, 3)), (3, (1, 2)), (4, (2, 2)), (4, (1, 3))])
def test_subpixel_transposed_conv_equals_the_dilated_one_and_its_gradients(kernel, padding):
    args = (6, 5, (kernel, kernel))
    kw = dict(strides=2, padding=(padding, padding))
    fast = unet.SubpixelConvTranspose(*args, **kw, rngs=nnx.Rngs(0))
    reference = nnx.ConvTranspose(*args, **kw, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 6))
    np.testing.assert_allclose(fast(x), reference(x), rtol=1e-5, atol=1e-5)
    assert fast(x).shape == (2, 14, 18, 5)

    def grads(module):
        graphdef, params = nnx.split(module)
        loss = lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x)))
        return jax.grad(loss, argnums=(0, 1))(params, x)

    for got, want in zip(
        jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(reference)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_subpixel_transposed_conv_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="strides"):
        unet.SubpixelConvTranspose(
            4, 4, (5, 5), strides=1, padding=((2, 3), (2, 3)), rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="sum to the kernel size"):
        unet.SubpixelConvTranspose(
            4, 4, (5, 5), strides=2, padding=((2, 2), (2, 2)), rngs=nnx.Rngs(0)
        )
