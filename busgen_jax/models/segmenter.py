"""A small lesion segmenter for box-fidelity checks of generated images.

`Segmenter` is a U-Net-like conv net (Ronneberger et al. 2015) at a few levels: per level two
3x3 conv + GroupNorm + ReLU, 2x2 max pooling down, nearest upsampling and a skip concatenation
up, and a 1x1 conv to one logit per pixel. It is trained on real lesion masks with binary cross
entropy plus soft Dice (`segmentation_loss`) and only has to find a lesion, not grade it, so a
few thousand parameters at 32-64 px are enough.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def _conv_block(in_ch: int, out_ch: int, rngs: nnx.Rngs) -> nnx.Sequential:
    groups = min(4, out_ch)
    return nnx.Sequential(
        nnx.Conv(in_ch, out_ch, (3, 3), rngs=rngs),
        nnx.GroupNorm(out_ch, num_groups=groups, rngs=rngs),
        nnx.relu,
        nnx.Conv(out_ch, out_ch, (3, 3), rngs=rngs),
        nnx.GroupNorm(out_ch, num_groups=groups, rngs=rngs),
        nnx.relu,
    )


class Segmenter(nnx.Module):
    """Images [B, H, W, 1] in [-1, 1] -> lesion logits [B, H, W, 1]; H and W must be divisible
    by 2^(len(channels) - 1)."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32), *, rngs: nnx.Rngs):
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"segmenter 'channels' must be positive widths, got {channels}")
        self.channels = tuple(channels)
        widths = [1, *channels]
        self.down = nnx.List(
            [_conv_block(widths[i], widths[i + 1], rngs) for i in range(len(channels))]
        )
        self.up = nnx.List(
            [
                _conv_block(channels[i] + channels[i + 1], channels[i], rngs)
                for i in reversed(range(len(channels) - 1))
            ]
        )
        self.out = nnx.Conv(channels[0], 1, (1, 1), rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        factor = 2 ** (len(self.channels) - 1)
        if images.shape[1] % factor or images.shape[2] % factor:
            raise ValueError(
                f"segmenter input {images.shape[1]}x{images.shape[2]} is not divisible by {factor}"
            )
        skips, h = [], images
        for k, block in enumerate(self.down):
            if k:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = block(jnp.concatenate([h, skip], axis=-1))
        return self.out(h)


def soft_dice_loss(logits: jax.Array, masks: jax.Array, eps: float = 1.0) -> jax.Array:
    """Mean over images of 1 - (2 sum(p m) + eps) / (sum p + sum m + eps) with p = sigmoid(logits)
    (the soft Dice of Milletari et al. 2016, eq. 1, without squares in the denominator); eps
    makes an empty prediction of an empty mask a perfect score."""
    p = jax.nn.sigmoid(logits)
    axes = tuple(range(1, logits.ndim))
    overlap = jnp.sum(p * masks, axis=axes)
    total = jnp.sum(p, axis=axes) + jnp.sum(masks, axis=axes)
    return jnp.mean(1.0 - (2.0 * overlap + eps) / (total + eps))


def segmentation_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
    """Pixel-mean binary cross entropy plus soft Dice: BCE gives dense gradients early, Dice
    keeps a small lesion from being outweighed by the background."""
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, masks))
    return bce + soft_dice_loss(logits, masks)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    params: nnx.State,
    opt_state: optax.OptState,
    images: jax.Array,
    masks: jax.Array,
) -> tuple[nnx.State, optax.OptState, jax.Array]:
    """One optimizer step on `segmentation_loss`: (params, opt_state, loss)."""

    def loss_fn(p: nnx.State) -> jax.Array:
        return segmentation_loss(nnx.merge(graphdef, p)(images), masks)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    seed: int,
    steps: int = 300,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    channels: Sequence[int] = (8, 16, 32),
) -> tuple[Segmenter, list[float]]:
    """Trains a `Segmenter` on images [N, H, W] in [-1, 1] and {0, 1} masks [N, H, W].

    Batches are drawn with replacement by a seeded generator and randomly flipped left-right
    (lesions have no side), so the run is a function of the arguments.

    Returns:
      (the trained model, the loss of every step).
    """
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(
            f"segmenter training needs images [N, H, W] and masks of the same shape, got "
            f"{images.shape} and {masks.shape}"
        )
    if not np.isin(masks, (0.0, 1.0)).all():
        raise ValueError("segmenter training masks must be 0/1")
    rng = np.random.default_rng(seed)
    graphdef, params = nnx.split(Segmenter(channels, rngs=nnx.Rngs(seed)))
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        index = rng.integers(0, len(images), batch_size)
        flip = rng.random(batch_size) < 0.5
        x = np.where(flip[:, None, None], images[index, :, ::-1], images[index])
        y = np.where(flip[:, None, None], masks[index, :, ::-1], masks[index])
        params, opt_state, loss = train_step(
            graphdef, tx, params, opt_state, x[..., None], y[..., None]
        )
        losses.append(float(loss))
    if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"segmenter loss is {losses[-1]} after {steps} steps")
    return nnx.merge(graphdef, params), losses


@nnx.jit
def _probabilities(model: Segmenter, images: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(model(images))[..., 0]


def predict_masks(
    model: Segmenter, images: np.ndarray, *, threshold: float = 0.5, batch_size: int = 64
) -> np.ndarray:
    """Boolean lesion masks [N, H, W] of images [N, H, W] in [-1, 1]."""
    images = np.asarray(images, np.float32)
    out = [
        np.asarray(_probabilities(model, images[i : i + batch_size, ..., None]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) >= threshold
