"""Privacy audit of synthetic images: nearest training neighbours, copy filtering, copying test.

Every generated candidate is compared with the training set the generator was adapted from.
Similarity is normalized cross-correlation (NCC) on downsampled grayscale images: each image is
averaged over channels, resized to ``size x size`` (bilinear with antialiasing), flattened,
centred and scaled to unit norm, so the dot product of two vectors is their Pearson
correlation and a matrix product gives all pairs at once. With a ``feature_fn``, similarity is
instead the cosine of the (uncentred) learned features.

What NCC on 32x32 catches: verbatim copies (1.0), any brightness/contrast change (NCC is
invariant to affine intensity maps), mild noise or blur, and, because the reference set
includes horizontally flipped training images by default (training used random flips),
mirrored copies; also shifts by a few percent of the width (on smooth 48-px textures, a 4%
shift keeps NCC ~0.76 against ~0.54 between independent images; 8% does not). It does not
catch rotations, vertical flips, large crops or re-compositions: pass a learned ``feature_fn``
for those.

The rejection threshold is calibrated on real data: a high quantile of held-out-to-training
nearest-neighbour similarity (real images of other patients), so a candidate is rejected when
it is closer to a training image than nearly any unseen real image is. Constant images have no
defined correlation; they get similarity 0.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from matplotlib.figure import Figure

FeatureFn = Callable[[np.ndarray], Any]
Pair = tuple[np.ndarray, np.ndarray, float]


class AuditError(RuntimeError):
    """Audited generation could not produce enough candidates below the similarity threshold."""


def _check_images(images: Any, name: str) -> None:
    if np.ndim(images) not in (3, 4) or len(images) == 0:
        raise ValueError(
            f"{name}: expected a non-empty [N, H, W] or [N, H, W, C] array, "
            f"got shape {np.shape(images)}"
        )


@functools.partial(jax.jit, static_argnames="size")
def ncc_vectors(images: jax.Array, size: int = 32) -> jax.Array:
    """[N, H, W(, C)] images -> [N, size*size] zero-mean unit-norm vectors (0 for flat images)."""
    x = images.astype(jnp.float32)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    x = jax.image.resize(x, (x.shape[0], size, size), method="linear", antialias=True)
    v = x.reshape(x.shape[0], -1)
    v = v - v.mean(axis=1, keepdims=True)
    norm = jnp.linalg.norm(v, axis=1, keepdims=True)
    return jnp.where(norm > 1e-6 * jnp.sqrt(size * size), v / jnp.maximum(norm, 1e-30), 0.0)


def embed(
    images: Any, *, size: int = 32, feature_fn: FeatureFn | None = None, chunk: int = 1024
) -> np.ndarray:
    """Unit vectors whose dot products are the audit similarity, computed chunk by chunk.

    `images` may be any sliceable array (e.g. np.memmap); `feature_fn` maps an image chunk to
    [B, F] features, which are L2-normalized (cosine similarity).
    """
    out = []
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start : start + chunk])
        if feature_fn is None:
            out.append(np.asarray(ncc_vectors(batch, size)))
        else:
            f = np.asarray(feature_fn(batch), np.float32).reshape(len(batch), -1)
            out.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30))
    return np.concatenate(out)


@jax.jit
def _best_match(queries: jax.Array, reference: jax.Array) -> tuple[jax.Array, jax.Array]:
    sims = jnp.matmul(queries, reference.T, precision=jax.lax.Precision.HIGHEST)
    return sims.max(axis=1), sims.argmax(axis=1)


def _reference_vectors(reference: Any, include_flips: bool, **embed_kw: Any) -> np.ndarray:
    vectors = embed(reference, **embed_kw)
    if include_flips:  # width is axis 2 for both NHW and NHWC
        vectors = np.concatenate([vectors, embed(np.flip(reference, axis=2), **embed_kw)])
    return vectors


def _search(
    queries: Any, ref_vectors: np.ndarray, num_ref: int, *, chunk: int, **embed_kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Best reference match per query; reference rows past num_ref are mirrors of the first."""
    sims, idx = [], []
    for start in range(0, len(queries), chunk):
        q = embed(queries[start : start + chunk], chunk=chunk, **embed_kw)
        # Padding the last chunk keeps one compiled shape for the whole scan.
        padded = np.pad(q, ((0, chunk - len(q)), (0, 0))) if len(queries) > chunk else q
        s, i = _best_match(padded, ref_vectors)
        sims.append(np.asarray(s)[: len(q)])
        idx.append(np.asarray(i)[: len(q)] % num_ref)
    return np.concatenate(sims).astype(np.float64), np.concatenate(idx)


def nearest_neighbours(
    candidates: Any,
    reference: Any,
    *,
    size: int = 32,
    feature_fn: FeatureFn | None = None,
    include_flips: bool = True,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference image of every candidate.

    Memory is about chunk x len(reference) x 8 bytes per step (twice that with flips), so
    millions of candidates against thousands of training images stream in fixed memory.

    Returns:
      (sim [N] float64 in [-1, 1], index [N] into `reference`; a match may be its mirror image).
    """
    _check_images(candidates, "candidates")
    _check_images(reference, "reference")
    kw = {"size": size, "feature_fn": feature_fn, "chunk": chunk}
    ref = _reference_vectors(reference, include_flips, **kw)
    return _search(candidates, ref, len(reference), **kw)


def quantile_threshold(heldout_sims: np.ndarray, quantile: float = 0.999) -> float:
    """The `quantile` of held-out-to-training similarities (np.quantile, linear interpolation).

    With fewer than 1 / (1 - quantile) held-out images the estimate cannot resolve that tail and
    is in effect the maximum held-out similarity: about 1 / (n + 1) of real-like images would
    then be rejected instead of 1 - quantile. This is logged; calibrate on more held-out images
    for a tighter threshold.
    """
    sims = np.asarray(heldout_sims, np.float64)
    if sims.size == 0 or not np.all(np.isfinite(sims)):
        raise ValueError("heldout_sims: need at least one finite held-out similarity")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if quantile < 1 and sims.size < 1 / (1 - quantile):
        logging.warning(
            "Only %d held-out images for quantile %g: the threshold is close to the maximum "
            "held-out similarity.",
            sims.size,
            quantile,
        )
    return float(np.quantile(sims, quantile))


def calibrate_threshold(
    train_images: Any, heldout_images: Any, *, quantile: float = 0.999, **nn_kw: Any
) -> float:
    """Default rejection threshold: a quantile of held-out-to-training NN similarity.

    Held-out images must come from patients not in `train_images`. `nn_kw` is passed to
    nearest_neighbours (size, feature_fn, include_flips, chunk).
    """
    sims, _ = nearest_neighbours(heldout_images, train_images, **nn_kw)
    return quantile_threshold(sims, quantile)


def filter_candidates(
    candidates: Any, train_images: Any, threshold: float, **nn_kw: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keeps candidates whose nearest training similarity is <= threshold.

    Returns:
      (keep_mask [N] bool, sims [N], idx [N] index of the nearest training image).
    """
    sims, idx = nearest_neighbours(candidates, train_images, **nn_kw)
    return sims <= threshold, sims, idx


def memorization_test(
    gen_to_train_sims: np.ndarray, heldout_to_train_sims: np.ndarray, *, alpha: float = 0.05
) -> dict[str, Any]:
    """Data-copying test of Meehan et al. 2020 (global form, no cells) on NN distances.

    Distances are d = 1 - sim. U counts pairs where a generated sample is farther from training
    than a held-out one (ties 1/2), Z_U = (U - mn/2) / sqrt(mn(m+n+1)/12). Z_U < 0 (generated
    closer to training than unseen real images are) indicates copying; Z_U > 0 indicates
    samples farther from the data than real images (under-fitting).
    """
    d_gen = 1.0 - np.asarray(gen_to_train_sims, np.float64)
    d_held = 1.0 - np.asarray(heldout_to_train_sims, np.float64)
    m, n = d_gen.size, d_held.size
    if m == 0 or n == 0:
        raise ValueError("memorization_test needs generated and held-out similarities")
    u = float(scipy.stats.mannwhitneyu(d_gen, d_held).statistic)
    z = (u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12)
    p_copying = float(scipy.stats.mannwhitneyu(d_gen, d_held, alternative="less").pvalue)
    p_underfit = float(scipy.stats.mannwhitneyu(d_gen, d_held, alternative="greater").pvalue)
    if p_copying < alpha:
        verdict = "copying: generated images are closer to training than held-out images"
    elif p_underfit < alpha:
        verdict = "under-fitting: generated images are farther from training than held-out"
    else:
        verdict = "no evidence of data copying"
    return {
        "u": u,
        "z_u": float(z),
        "auc": u / (m * n),
        "p_copying": p_copying,
        "p_underfitting": p_underfit,
        "alpha": alpha,
        "num_generated": m,
        "num_heldout": n,
        "interpretation": verdict,
    }


def select_closest_pairs(
    candidates: Any, train_images: Any, sims: np.ndarray, idx: np.ndarray, k: int = 8
) -> list[Pair]:
    """The k most similar (candidate, nearest training image, similarity) triples, closest first."""
    order = np.argsort(-np.asarray(sims), kind="stable")[:k]
    return [
        (np.asarray(candidates[i]), np.asarray(train_images[idx[i]]), float(sims[i])) for i in order
    ]


def audited_generate(
    generate_fn: Callable[[int, int], Any],
    num: int,
    train_images: Any,
    threshold: float,
    *,
    max_rounds: int = 10,
    num_closest: int = 8,
    size: int = 32,
    feature_fn: FeatureFn | None = None,
    include_flips: bool = True,
    chunk: int = 1024,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Generates `num` images none of which is closer than `threshold` to a training image.

    Each round asks `generate_fn(missing, round_index)` for the images still missing, rejects
    candidates above the threshold and retries until `num` are accepted. The training set is
    embedded once; size, feature_fn, include_flips and chunk are as in nearest_neighbours.

    Returns:
      (images [num, ...], stats) with stats: rounds, generated, rejected, threshold, sims (every
      candidate, generation order), accepted_sims, accepted_index, closest_pairs (the
      num_closest most similar candidates of all rounds, for write_audit_report).

    Raises:
      AuditError: after `max_rounds` rounds with fewer than `num` accepted.
    """
    _check_images(train_images, "train_images")
    if num < 1 or max_rounds < 1:
        raise ValueError(
            f"audited_generate: need num >= 1 and max_rounds >= 1, got {num}, {max_rounds}"
        )
    embed_kw = {"size": size, "feature_fn": feature_fn, "chunk": chunk}
    ref = _reference_vectors(train_images, include_flips, **embed_kw)
    accepted, sims_all, acc_idx, closest = [], [], [], []
    rounds = 0
    while rounds < max_rounds and (missing := num - sum(map(len, accepted))) > 0:
        images = np.asarray(generate_fn(missing, rounds))
        if len(images) != missing:
            raise ValueError(f"generate_fn returned {len(images)} images, {missing} were asked")
        _check_images(images, "generate_fn output")
        sims, idx = _search(images, ref, len(train_images), **embed_kw)
        keep = sims <= threshold
        accepted.append(images[keep])
        sims_all.append(sims)
        acc_idx.append(idx[keep])
        closest += select_closest_pairs(images, train_images, sims, idx, num_closest)
        closest = sorted(closest, key=lambda pair: -pair[2])[:num_closest]
        rounds += 1
    sims_all = np.concatenate(sims_all)
    stats = {
        "rounds": rounds,
        "generated": int(sims_all.size),
        "rejected": int((sims_all > threshold).sum()),
        "threshold": float(threshold),
        "sims": sims_all,
        "accepted_sims": sims_all[sims_all <= threshold],
        "accepted_index": np.concatenate(acc_idx),
        "closest_pairs": closest,
    }
    if stats["generated"] - stats["rejected"] < num:
        raise AuditError(
            f"only {stats['generated'] - stats['rejected']} of {num} images passed the privacy "
            f"threshold {threshold:.4f} after {rounds} rounds ({stats['rejected']} rejected, max "
            f"similarity {sims_all.max():.4f}); the generator may be memorizing training images"
        )
    return np.concatenate(accepted), stats


def _summary(sims: np.ndarray) -> dict[str, float]:
    sims = np.asarray(sims, np.float64)
    quantiles = {f"q{q:g}": float(np.quantile(sims, q / 100)) for q in (50, 90, 99, 99.9)}
    return {
        "count": int(sims.size),
        "min": float(sims.min()),
        "mean": float(sims.mean()),
        "max": float(sims.max()),
        **quantiles,
    }


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return image.mean(axis=-1) if image.ndim == 3 else image


def _plot_histogram(path, sims, heldout_sims, threshold: float, rejected_count: int) -> None:
    # Figure without pyplot: no global backend state, safe in headless jobs and threads.
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(min(np.min(sims), np.min(heldout_sims)), 1.0, 50)
    ax.hist(sims, bins=bins, density=True, alpha=0.6, label=f"generated (n={np.size(sims)})")
    label = f"held-out real (n={np.size(heldout_sims)})"
    ax.hist(heldout_sims, bins=bins, density=True, alpha=0.6, label=label)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("similarity to nearest training image")
    ax.set_ylabel("density")
    ax.set_title(f"Privacy audit: {rejected_count} of {np.size(sims)} rejected")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_pairs(path, closest_pairs: Sequence[Pair], threshold: float) -> None:
    fig = Figure(figsize=(4, 2 * max(len(closest_pairs), 1)))
    axes = fig.subplots(max(len(closest_pairs), 1), 2, squeeze=False)
    for row, (candidate, train, sim) in enumerate(closest_pairs):
        verdict = " (rejected)" if sim > threshold else ""
        axes[row, 0].imshow(_gray(candidate), cmap="gray")
        axes[row, 0].set_title(f"candidate, sim {sim:.3f}{verdict}", fontsize=8)
        axes[row, 1].imshow(_gray(train), cmap="gray")
        axes[row, 1].set_title("nearest training (or its mirror)", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_audit_report(
    out_dir: str | os.PathLike,
    *,
    sims: np.ndarray,
    heldout_sims: np.ndarray,
    threshold: float,
    rejected_count: int,
    closest_pairs: Sequence[Pair],
) -> dict[str, Any]:
    """Writes audit.json, audit_similarity_hist.png and audit_closest_pairs.png; returns the JSON.

    Args:
      sims: NN similarity of every generated candidate (accepted and rejected); the
        memorization test in the JSON compares these with `heldout_sims`.
      heldout_sims: NN similarity of held-out real images to the training set.
      closest_pairs: (candidate, training image, similarity) triples, e.g. select_closest_pairs.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "threshold": float(threshold),
        "num_candidates": int(np.size(sims)),
        "rejected_count": int(rejected_count),
        "rejection_rate": int(rejected_count) / max(int(np.size(sims)), 1),
        "candidate_similarity": _summary(sims),
        "heldout_similarity": _summary(heldout_sims),
        "memorization_test": memorization_test(sims, heldout_sims),
        "closest_pair_similarities": [float(p[2]) for p in closest_pairs],
    }
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot_histogram(
        out / "audit_similarity_hist.png", sims, heldout_sims, threshold, rejected_count
    )
    _plot_pairs(out / "audit_closest_pairs.png", closest_pairs, threshold)
    return report
