"""Self-attention over image positions, with memory-efficient implementations.

The published BUSGen U-Net attends over every pixel, including at full resolution, which
materializes an (HW x HW) score matrix per image: 16384^2 floats (1 GiB) at 128 px. Three
numerically equivalent implementations are selectable by config (`attention_impl`):

  plain    softmax(q k^T / sqrt(d)) v written out; the reference.
  xla      `jax.nn.dot_product_attention`, which dispatches to fused kernels (cuDNN flash
           attention on GPU for half precision) and falls back to XLA elsewhere.
  chunked  query chunks mapped with `lax.map`, key chunks folded with the running-max softmax of
           Rabe & Staats (2021, "Self-attention does not need O(n^2) memory", Sec. 3) under
           `jax.checkpoint`, so forward and backward peak memory scale with chunk^2, not (HW)^2.

Tensors use the [batch, length, heads, head_dim] layout of `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

IMPLEMENTATIONS = ("plain", "chunked", "xla")


def plain_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, Eq. 1), softmax in float32."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bnqk,bknd->bqnd", weights, v)


def _pad_length(x: jax.Array, multiple: int) -> jax.Array:
    pad = -x.shape[1] % multiple
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else x


def _to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, L, N, D] -> [L / chunk, B, chunk, N, D] for mapping over chunks."""
    b, length, n, d = x.shape
    return x.reshape(b, length // chunk, chunk, n, d).swapaxes(0, 1)


def _fold_key_chunk(q_i, carry, key_block):
    """One key chunk of the running-max softmax update for the query chunk `q_i`."""
    out, row_max, norm = carry
    k_j, v_j, valid = key_block
    scores = jnp.einsum("bqnd,bknd->bnqk", q_i, k_j, preferred_element_type=jnp.float32)
    scores = jnp.where(valid, scores, -jnp.inf)
    new_max = jnp.maximum(row_max, scores.max(axis=-1))
    probs = jnp.exp(scores - new_max[..., None])
    correction = jnp.exp(row_max - new_max)
    norm = norm * correction + probs.sum(axis=-1)
    update = jnp.einsum("bnqk,bknd->bqnd", probs.astype(v_j.dtype), v_j)
    out = out * correction.transpose(0, 2, 1)[..., None] + update
    return (out, new_max, norm), None


def _attend_query_chunk(q_i, k_chunks, v_chunks, key_valid):
    b, c, n, _ = q_i.shape
    init = (
        jnp.zeros((b, c, n, v_chunks.shape[-1]), jnp.float32),
        jnp.full((b, n, c), -jnp.inf, jnp.float32),
        jnp.zeros((b, n, c), jnp.float32),
    )
    # Rematerializing each key step keeps only the carries, not the chunk^2 probabilities,
    # alive for the backward pass.
    fold = jax.checkpoint(functools.partial(_fold_key_chunk, q_i))
    (out, _, norm), _ = jax.lax.scan(fold, init, (k_chunks, v_chunks, key_valid))
    return (out / norm.transpose(0, 2, 1)[..., None]).astype(v_chunks.dtype)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int = 1024) -> jax.Array:
    """Exact attention in O(chunk^2) memory (Rabe & Staats 2021, Sec. 3).

    For each query chunk, keys are consumed chunk by chunk keeping the running row maximum m,
    normalizer l and unnormalized output a:  m' = max(m, max_j s_j),  l' = l e^{m-m'} +
    sum_j e^{s_j-m'},  a' = a e^{m-m'} + sum_j e^{s_j-m'} v_j;  the result is a / l.
    Sequences not divisible by `chunk` are zero-padded; padded keys are masked out.
    """
    if chunk < 1:
        raise ValueError(f"attention_chunk must be a positive integer, got {chunk}")
    length, key_length = q.shape[1], k.shape[1]
    q_chunk, k_chunk = min(chunk, length), min(chunk, key_length)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    q_chunks = _to_chunks(_pad_length(q, q_chunk), q_chunk)
    k_chunks = _to_chunks(_pad_length(k, k_chunk), k_chunk)
    v_chunks = _to_chunks(_pad_length(v, k_chunk), k_chunk)
    # Only the last key chunk can hold padding, so every row max stays finite.
    key_valid = (jnp.arange(k_chunks.shape[0] * k_chunk) < key_length).reshape(-1, k_chunk)
    attend = jax.checkpoint(
        functools.partial(
            _attend_query_chunk, k_chunks=k_chunks, v_chunks=v_chunks, key_valid=key_valid
        )
    )
    out = jax.lax.map(attend, q_chunks)
    return out.swapaxes(0, 1).reshape(q.shape[0], -1, *out.shape[-2:])[:, :length]


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "plain", chunk: int = 1024
) -> jax.Array:
    """Scaled dot-product attention by the implementation named in `impl`."""
    if impl == "plain":
        return plain_attention(q, k, v)
    if impl == "chunked":
        return chunked_attention(q, k, v, chunk)
    if impl == "xla":
        return jax.nn.dot_product_attention(q, k, v)
    raise ValueError(f"attention_impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


def group_norm(channels: int, groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with PyTorch's epsilon (1e-5) so imported weights reproduce the published net."""
    # Two-pass variance: the one-pass E[x^2] - E[x]^2 loses precision on large activations.
    return nnx.GroupNorm(channels, groups, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class SpatialAttention(nnx.Module):
    """Residual self-attention over all H*W positions: x + proj(attn(norm(x))).

    With one head this is the published block (1x1-conv q, k, v, scale C^-1/2); with more heads
    the scale is (C / heads)^-1/2 per head.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        groups: int = 32,
        impl: str = "plain",
        chunk: int = 1024,
        rngs: nnx.Rngs,
    ):
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide {channels} channels")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"attention_impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        dense = functools.partial(nnx.Linear, channels, channels, rngs=rngs)
        self.norm = group_norm(channels, groups, rngs=rngs)
        self.q, self.k, self.v = dense(), dense(), dense()
        # Zero output projection: the block starts as the identity (Ho et al. 2020 code).
        self.proj = dense(kernel_init=nnx.initializers.zeros_init())
        self.num_heads, self.impl, self.chunk = num_heads, impl, chunk

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        heads = (b, h * w, self.num_heads, c // self.num_heads)
        q, k, v = (f(tokens).reshape(heads) for f in (self.q, self.k, self.v))
        out = dot_product_attention(q, k, v, impl=self.impl, chunk=self.chunk)
        return x + self.proj(out.reshape(b, h, w, c))
