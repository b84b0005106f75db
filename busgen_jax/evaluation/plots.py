"""Figures for reader studies: the model's ROC curve with each reader's operating point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on training or evaluation hosts.
import matplotlib.pyplot as plt  # noqa: E402
from sklearn import metrics  # noqa: E402

from busgen_jax.evaluation import statistics  # noqa: E402

_MAX_LEGEND_READERS = 9


def plot_roc_with_readers(
    path: str | os.PathLike,
    model_scores: Any,
    truth: Any,
    reader_points: Mapping[str, tuple[float, float]],
    *,
    model_label: str = "Model",
    title: str = "",
    simulated: bool = False,
    dpi: int = 150,
) -> None:
    """Writes a PNG of the model's ROC curve (with DeLong 95% CI of its AUC in the legend) and
    every reader's (1 - specificity, sensitivity) point.

    Args:
      path: output PNG path.
      model_scores: [N] model scores.
      truth: [N] 0/1 labels.
      reader_points: reader_id -> (sensitivity, specificity).
      simulated: adds "SIMULATED READERS" to the title, so simulated figures are never mistaken
        for a real reader study.
    """
    truth = statistics.check_truth(truth)
    scores = statistics.check_scores(model_scores, truth.size, "model_scores")
    fpr, tpr, _ = metrics.roc_curve(truth, scores)
    auc = statistics.roc_auc_ci(truth, scores)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(
        fpr,
        tpr,
        color="tab:blue",
        linewidth=2,
        label=f"{model_label} (AUC {auc.auc:.3f}, 95% CI {auc.ci_low:.3f}-{auc.ci_high:.3f})",
    )
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if reader_points:
        sens = [point[0] for point in reader_points.values()]
        fprs = [1.0 - point[1] for point in reader_points.values()]
        # One legend entry per reader while that stays readable; text labels would overlap when
        # readers cluster, as they usually do.
        if len(reader_points) <= _MAX_LEGEND_READERS:
            for k, (name, x, y) in enumerate(zip(reader_points, fprs, sens, strict=True)):
                # tab10 colour 0 is the model's curve.
                color = plt.cm.tab10((k + 1) % 10)
                axis.scatter([x], [y], color=color, marker="o", zorder=3, label=str(name))
        else:
            axis.scatter(fprs, sens, color="tab:red", marker="o", zorder=3, label="Readers")
        axis.scatter(
            [sum(fprs) / len(fprs)],
            [sum(sens) / len(sens)],
            color="black",
            marker="X",
            s=70,
            zorder=4,
            label="Reader mean",
        )
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="Sensitivity")
    axis.set_title((title + " " if title else "") + ("(SIMULATED READERS)" if simulated else ""))
    axis.set_aspect("equal")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
