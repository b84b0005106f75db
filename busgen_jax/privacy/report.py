"""The privacy audit on disk: audit.json and figures that hold no training pixels.

What a shared synthetic dataset may carry about its training data is numbers and pseudonymous
case ids: similarity distributions, thresholds, memorization rates, the copying verdict, the
membership-inference result, and for the closest candidates the synthetic image beside the *id*
of its nearest training image. Pictures of training neighbours are for the operator only:
`write_private_pairs` puts them in a separate folder that is never part of a dataset.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from busgen_jax.jobs import layout
from busgen_jax.privacy import audit

PRIVATE_DIR = "private_audit"


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


def _plot_histograms(path, sims: audit.Sims, heldout: audit.Sims, thresholds, title) -> None:
    # Figure without pyplot: no global backend state, safe in headless jobs and threads.
    fig = Figure(figsize=(10, 4))
    for ax, measure in zip(fig.subplots(1, len(audit.MEASURES)), audit.MEASURES, strict=True):
        lo = min(np.min(sims[measure]), np.min(heldout[measure]))
        bins = np.linspace(lo, 1.0, 50)
        n, n_held = np.size(sims[measure]), np.size(heldout[measure])
        ax.hist(sims[measure], bins=bins, density=True, alpha=0.6, label=f"generated (n={n})")
        ax.hist(
            heldout[measure], bins=bins, density=True, alpha=0.6, label=f"held-out (n={n_held})"
        )
        threshold = thresholds[measure]
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.set_xlabel(f"{measure} similarity to nearest training image")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_synthetic_with_ids(path, closest: Sequence[dict]) -> None:
    """One row per closest candidate: the written image (or, for a rejected one, a note that it
    was not written) beside its nearest training case id and similarities."""
    fig = Figure(figsize=(6, 1.6 * max(len(closest), 1)))
    axes = fig.subplots(max(len(closest), 1), 2, squeeze=False)
    for row, pair in enumerate(closest):
        if pair.get("image") is not None:
            axes[row, 0].imshow(_gray(pair["image"]), cmap="gray")
            axes[row, 0].set_title(pair["synthetic_case_id"], fontsize=7)
        else:
            axes[row, 0].text(
                0.5,
                0.5,
                "rejected by the audit:\nnot written",
                fontsize=8,
                ha="center",
                va="center",
            )
        sims = ", ".join(f"{m} {pair['similarity'][m]:.3f}" for m in audit.MEASURES)
        text = f"nearest training case\n{pair['train_case_id']}\n{sims}"
        axes[row, 1].text(0.0, 0.5, text, fontsize=7, va="center")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_audit_report(
    out_dir: str | os.PathLike,
    *,
    candidate_sims: audit.Sims,
    heldout_sims: audit.Sims,
    thresholds: dict[str, float],
    rejected_count: int,
    closest: Sequence[dict[str, Any]],
    closest_written: Sequence[dict[str, Any]] | None = None,
    membership: dict[str, Any] | None = None,
    private_pictures: str | None = None,
) -> dict[str, Any]:
    """Writes audit.json, audit_similarity_hist.png, audit_closest_pairs.png and, when
    `closest_written` is given, audit_closest_written.png; returns the JSON.

    Args:
      candidate_sims: every generated candidate's similarities (accepted and rejected).
      heldout_sims: held-out real images' similarities to the training set.
      thresholds: the thresholds candidates were filtered with.
      closest: dicts with `similarity` (measure -> float), `train_case_id`, `flagged`,
        `synthetic_case_id` (None for a rejected candidate, which is never stored) and an
        optional synthetic `image` for the figure. No training image is ever taken.
      closest_written: the same for the written images closest to a training image, when
        `closest` ranks candidates that were rejected too (synthesis); None when every
        candidate was written (an audit of an existing dataset).
      membership: the membership-inference result, if one was run.
      private_pictures: where pictures of training neighbours were written, if anywhere.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num = int(np.size(candidate_sims["ncc"]))
    report = {
        "thresholds": {m: float(thresholds[m]) for m in audit.MEASURES},
        "threshold": float(thresholds["ncc"]),
        "num_candidates": num,
        "rejected_count": int(rejected_count),
        "rejection_rate": int(rejected_count) / max(num, 1),
        "candidate_similarity": _summary(candidate_sims["ncc"]),
        "heldout_similarity": _summary(heldout_sims["ncc"]),
        "similarity": {
            m: {"candidates": _summary(candidate_sims[m]), "heldout": _summary(heldout_sims[m])}
            for m in audit.MEASURES
        },
        "memorization_rates": audit.memorization_rates(candidate_sims, heldout_sims),
        "memorization_test": audit.copying_verdict(candidate_sims, heldout_sims),
        "closest_pairs": _without_images(closest),
        "closest_written": None if closest_written is None else _without_images(closest_written),
        "membership_inference": membership,
        "private_pictures": private_pictures,
    }
    (out / layout.AUDIT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    title = f"Privacy audit: {rejected_count} of {num} candidates rejected"
    _plot_histograms(out / layout.AUDIT_HISTOGRAM, candidate_sims, heldout_sims, thresholds, title)
    _plot_synthetic_with_ids(out / layout.AUDIT_CLOSEST_PAIRS, closest)
    if closest_written is not None:
        _plot_synthetic_with_ids(out / layout.AUDIT_CLOSEST_WRITTEN, closest_written)
    return report


def _without_images(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "image"} for c in pairs]


def write_private_pairs(
    path: str | os.PathLike, pairs: Sequence[tuple[np.ndarray, np.ndarray, str]]
) -> pathlib.Path:
    """Operator-only figure: (synthetic image, training neighbour, caption) rows. Never share."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4, 2 * max(len(pairs), 1)))
    axes = fig.subplots(max(len(pairs), 1), 2, squeeze=False)
    for row, (synthetic, train, caption) in enumerate(pairs):
        axes[row, 0].imshow(_gray(synthetic), cmap="gray")
        axes[row, 0].set_title(caption, fontsize=7)
        axes[row, 1].imshow(_gray(train), cmap="gray")
        axes[row, 1].set_title("training neighbour (private)", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("PRIVATE: contains training images; do not share", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
