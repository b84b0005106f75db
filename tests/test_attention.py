"""Attention implementations agree with each other and with a numpy softmax, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from busgen_jax.models.attention import (
    SpatialAttention,
    chunked_attention,
    dot_product_attention,
)


def _qkv(batch, length, heads, dim, seed=0, key_length=None):
    rng = np.random.default_rng(seed)
    shape = lambda n: (batch, n, heads, dim)
    q = rng.standard_normal(shape(length)) * 2.0  # large logits exercise the running max
    k = rng.standard_normal(shape(key_length or length))
    v = rng.standard_normal(shape(key_length or length))
    return (jnp.asarray(a, jnp.float32) for a in (q, k, v))


def _numpy_attention(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknd->bqnd", weights, v)


@pytest.mark.parametrize("impl", ["plain", "chunked", "xla"])
@pytest.mark.parametrize("length,heads,chunk", [(50, 2, 16), (40, 4, 128)])
def test_matches_numpy_softmax(impl, length, heads, chunk):
    q, k, v = _qkv(2, length, heads, 8)
    attend = jax.jit(dot_product_attention, static_argnames=("impl", "chunk"))
    out = attend(q, k, v, impl=impl, chunk=chunk)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_chunked_cross_attention_with_padded_keys():
    # 37 keys in chunks of 8: the last key chunk is padding-heavy and must be masked.
    q, k, v = _qkv(1, 20, 2, 4, seed=3, key_length=37)
    out = jax.jit(chunked_attention, static_argnums=3)(q, k, v, 8)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_gradients_match_plain(impl):
    q, k, v = _qkv(2, 48, 2, 8, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

    def loss(impl, q, k, v):
        return jnp.sum(weights * dot_product_attention(q, k, v, impl=impl, chunk=16))

    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    expected, got = grad("plain", q, k, v), grad(impl, q, k, v)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_spatial_attention_block_is_the_same_for_all_impls():
    # (The single-head published formula is checked against PyTorch in test_torch_convert.py.)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    block = nnx.eval_shape(
        lambda: SpatialAttention(16, num_heads=2, groups=4, impl="plain", rngs=nnx.Rngs(0))
    )
    # Random parameters (built abstractly: eager init is slow on CPU); the default init zeroes
    # the output projection, which would hide the attention branch.
    rng = np.random.default_rng(2)
    fill = lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype)
    nnx.update(block, jax.tree.map(fill, nnx.state(block)))
    apply = nnx.jit(lambda block, x: block(x))
    reference = apply(block, x)
    assert float(jnp.abs(reference - x).max()) > 0.1
    for impl in ("chunked", "xla"):
        block.impl, block.chunk = impl, 24
        np.testing.assert_allclose(apply(block, x), reference, rtol=1e-5, atol=1e-5)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="attention_impl"):
        SpatialAttention(8, groups=4, impl="flash", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_heads"):
        SpatialAttention(8, num_heads=3, groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention_chunk"):
        chunked_attention(*_qkv(1, 8, 1, 4), chunk=0)
