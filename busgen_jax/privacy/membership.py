"""Loss-based membership inference against a (few-shot adapted) diffusion generator.

A generator that memorized its training images denoises them better than images of other
patients. The attack of Matsumoto et al. 2023 / Carlini et al. 2023 ("loss threshold") scores
each image by minus its denoising loss, averaged over fixed timesteps and noise draws that are the
same for every image, and asks how well that score separates training images (members) from
held-out real images (non-members): AUC (0.5 = no leak) and the true-positive rate at 1%
false-positive rate (Carlini et al. 2022's low-FPR metric).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from busgen_jax.data.vocabulary import Vocabulary
from busgen_jax.diffusion import generator, losses, schedules


@functools.partial(nnx.jit, static_argnames=("prediction", "guidance_input"))
def _squared_errors(
    model, x0, t, noise, class_ids, device_ids, box_mask, schedule, prediction, guidance_input
):
    alpha_t, sigma_t = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
    # A distilled student at w = 0: the conditional model, whose loss the attack reads.
    apply = generator.network_fn(model, guidance_input)
    pred = apply(losses.q_sample(schedule, x0, t, noise), t, class_ids, device_ids, box_mask)
    target = losses.target(prediction, x0, noise, alpha_t, sigma_t)
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=(1, 2, 3))


def per_image_losses(
    model: nnx.Module,
    spec: Any,
    images: np.ndarray,
    class_ids: np.ndarray,
    device_ids: np.ndarray,
    box_mask: np.ndarray,
    *,
    num_draws: int = 16,
    seed: int = 0,
    batch: int = 32,
) -> np.ndarray:
    """[N] mean denoising loss of each image in [-1, 1] [N, H, W] under its own condition.

    Timesteps are stratified over the schedule (draw d uses t = (d + 1/2) T / num_draws) and the
    noise of draw d is fixed, so every image meets the same t and noise: differences in loss are
    the model's, not the draws'.
    """
    schedule = schedules.make_schedule(ml_collections.ConfigDict(spec.schedule))
    channels = model.head.in_features - 1
    n, size = len(images), images.shape[1]
    total = np.zeros(n)
    for d in range(num_draws):
        t_value = int((d + 0.5) * schedule.T / num_draws)
        noise_one = jax.random.normal(jax.random.key(seed + d), (1, size, size, channels))
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            pad = batch - (stop - start)  # one compiled shape
            take = np.r_[np.arange(start, stop), np.full(pad, stop - 1)]
            x0 = jnp.repeat(jnp.asarray(images[take], jnp.float32)[..., None], channels, axis=-1)
            errors = _squared_errors(
                model,
                x0,
                jnp.full((batch,), t_value, jnp.float32),
                jnp.broadcast_to(noise_one, x0.shape),
                jnp.asarray(class_ids[take], jnp.int32),
                jnp.asarray(device_ids[take], jnp.int32),
                jnp.asarray(box_mask[take], jnp.float32)[..., None],
                schedule,
                spec.prediction,
                generator.takes_guidance_weight(spec),
            )
            total[start:stop] += np.asarray(errors)[: stop - start]
    return total / num_draws


def loss_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> dict[str, Any]:
    """AUC and TPR at 1% FPR of the score -loss for members against non-members.

    AUC counts ties 1/2 (the Mann-Whitney form). At 1% FPR the threshold leaves floor(n / 100)
    of the n non-member scores above it; with fewer than 100 non-members that is their maximum
    (FPR 0), so the reported FPR (`fpr_at_threshold`) is the one actually achieved.
    """
    members = -np.asarray(member_losses, np.float64)
    others = -np.asarray(nonmember_losses, np.float64)
    if members.size == 0 or others.size == 0:
        raise ValueError("membership inference needs member and non-member losses")
    greater = (members[:, None] > others[None, :]).mean()
    ties = (members[:, None] == others[None, :]).mean()
    # The most permissive threshold with at most 1% of non-members strictly above it.
    threshold = float(np.sort(others)[::-1][int(np.floor(0.01 * others.size))])
    return {
        "auc": float(greater + 0.5 * ties),
        "tpr_at_1pct_fpr": float((members > threshold).mean()),
        "fpr_at_threshold": float((others > threshold).mean()),
        "num_members": int(members.size),
        "num_nonmembers": int(others.size),
        "member_loss_mean": float(np.mean(member_losses)),
        "nonmember_loss_mean": float(np.mean(nonmember_losses)),
    }


def device_ids(spec: Any, devices: Sequence[str]) -> np.ndarray:
    """The generator's device id of each name; a device it does not know gets 0 (null)."""
    vocabulary = Vocabulary(spec.device_names)
    return np.asarray([vocabulary.id_or_null(d) for d in devices])


def attack(
    model: nnx.Module,
    spec: Any,
    members: dict[str, Any],
    nonmembers: dict[str, Any],
    *,
    num_draws: int = 16,
    seed: int = 0,
    max_images: int = 2048,
) -> dict[str, Any]:
    """`loss_attack` of the generator's training images against held-out real images.

    `members` and `nonmembers` are splits as `pipeline.load_split` returns them, loaded at the
    generator's image size with its class names (so `class_id` is the generator's), each image
    scored under its own class, device and box mask. A split larger than `max_images` is scored
    on a seeded random `max_images` of it: ~2,000 images per side pin the AUC to about +-0.02,
    and scoring a whole 18,000-image foundation corpus took over 10 minutes on 2 CPU cores.
    """
    rng = np.random.default_rng(seed)

    def capped(split: dict[str, Any]) -> dict[str, Any]:
        count = len(split["image"])
        if count <= max_images:
            return split
        keep = np.sort(rng.choice(count, max_images, replace=False))
        return {
            k: np.asarray(v)[keep] if isinstance(v, np.ndarray) else [v[i] for i in keep]
            for k, v in split.items()
        }

    members, nonmembers = capped(members), capped(nonmembers)
    losses = [
        per_image_losses(
            model,
            spec,
            split["image"],
            split["class_id"],
            device_ids(spec, split["device"]),
            split["box_mask"],
            num_draws=num_draws,
            seed=seed,
        )
        for split in (members, nonmembers)
    ]
    return {**loss_attack(*losses), "num_draws": int(num_draws)}
