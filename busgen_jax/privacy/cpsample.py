"""Copy-protected sampling (CPSample; Kazdan et al. 2024, arXiv 2409.07025).

A small classifier is trained to *overfit* random binary labels attached to the training images,
on noised versions of them (x_t at every noise level, as guidance classifiers are). Labels that
carry no information can only be fitted by memorizing, so the classifier is confident near
training images and unsure elsewhere. During sampling, wherever it is confident
(|p - 1/2| > 1/2 - alpha) the noise prediction is moved by classifier guidance (Dhariwal & Nichol
2021, eq. 14: eps <- eps - s sigma_t grad_x log g(x_t)) on g = p (1 - p), which is largest at
p = 1/2: the sample is pushed off the regions the classifier has memorized, and thereby off the
training images, while elsewhere the sampler is untouched. It complements rejection (the audit)
rather than replacing it: rejection catches what slips through, guidance makes fewer slip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from busgen_jax.diffusion import losses, schedules


class RandomLabelClassifier(nnx.Module):
    """Three strided 3x3 convolutions, global mean, one logit; the noise level is an input plane."""

    def __init__(self, channels: int = 16, *, rngs: nnx.Rngs):
        widths = (2, channels, 2 * channels, 2 * channels)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.head = nnx.Linear(widths[-1], 1, rngs=rngs)

    def __call__(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        """x [B, H, W, 1], sigma [B] -> logits [B]."""
        h = jnp.concatenate([x, jnp.broadcast_to(sigma[:, None, None, None], x.shape)], -1)
        for conv in self.convs:
            h = nnx.silu(conv(h))
        return self.head(h.mean(axis=(1, 2)))[:, 0]


def train_classifier(
    images: np.ndarray,
    schedule: schedules.Schedule,
    *,
    steps: int = 600,
    learning_rate: float = 2e-3,
    channels: int = 16,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[RandomLabelClassifier, dict[str, Any]]:
    """Overfits balanced random labels on noised `images` ([N, H, W] in [-1, 1]).

    Returns:
      (classifier, info): info has the labels and the training accuracy on the clean images
      (near 1 when it memorized them).
    """
    n = len(images)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.float32)
    model = RandomLabelClassifier(channels, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(learning_rate)
    x_all, y_all = jnp.asarray(images, jnp.float32)[..., None], jnp.asarray(labels)

    def loss_fn(params, key):
        k_idx, k_t, k_noise = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch_size,), 0, n)
        t = jax.random.randint(k_t, (batch_size,), 0, schedule.T).astype(jnp.float32)
        noise = jax.random.normal(k_noise, (batch_size, *x_all.shape[1:]))
        x_t = losses.q_sample(schedule, x_all[idx], t, noise)
        logits = nnx.merge(graphdef, params)(x_t, schedules.sigma(schedule, t))
        return optax.sigmoid_binary_cross_entropy(logits, y_all[idx]).mean()

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    key = jax.random.key(seed)
    for i in range(steps):
        params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
    model = nnx.merge(graphdef, params)
    clean = model(x_all, jnp.full((n,), float(schedules.sigma(schedule, jnp.zeros(1))[0])))
    accuracy = float(np.mean((np.asarray(clean) > 0) == (labels > 0.5)))
    return model, {"labels": labels.tolist(), "train_accuracy": accuracy}


def protect(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    classifier: RandomLabelClassifier,
    schedule: schedules.Schedule,
    prediction: str,
    *,
    scale: float,
    alpha: float,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Wraps a (guided) denoise_fn(x, t) -> prediction with CPSample's protective guidance.

    The classifier sees the channel mean of x_t; the guidance is applied to the implied noise and
    converted back to the network's `prediction` type, so it composes with any sampler.
    """
    graphdef, params = nnx.split(classifier)

    def objective(x, sigma):
        logits = nnx.merge(graphdef, params)(x.mean(axis=-1, keepdims=True), sigma)
        # log p + log(1 - p) = -softplus(-l) - softplus(l): largest at p = 1/2.
        return jnp.sum(-jax.nn.softplus(-logits) - jax.nn.softplus(logits)), logits

    def guarded(x: jax.Array, t: jax.Array) -> jax.Array:
        pred = denoise_fn(x, t)
        a, s = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
        grad, logits = jax.grad(objective, has_aux=True)(x, s)
        confident = jnp.abs(jax.nn.sigmoid(logits) - 0.5) > 0.5 - alpha
        step = jnp.where(confident[:, None, None, None], grad, 0.0)
        a4, s4 = a[:, None, None, None], s[:, None, None, None]
        eps = losses.to_eps(pred, x, a, s, prediction) - scale * s4 * step
        return losses.target(prediction, (x - s4 * eps) / a4, eps, a, s).astype(pred.dtype)

    return guarded
