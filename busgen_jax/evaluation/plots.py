"""Figures for reader studies: models' ROC curves with each reader's operating point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn import metrics

from busgen_jax.evaluation import statistics

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
    """Writes a PNG of one model's ROC curve and the readers' points (see `plot_roc_curves`)."""
    plot_roc_curves(
        path,
        {model_label: model_scores},
        truth,
        reader_points,
        title=title,
        simulated=simulated,
        dpi=dpi,
    )


def plot_roc_curves(
    path: str | os.PathLike,
    models: Mapping[str, Any],
    truth: Any,
    reader_points: Mapping[str, tuple[float, float]],
    *,
    title: str = "",
    simulated: bool = False,
    dpi: int = 150,
) -> None:
    """Writes a PNG of every model's ROC curve (with DeLong 95% CI of its AUC in the legend) and
    every reader's (1 - specificity, sensitivity) point.

    Args:
      path: output PNG path.
      models: model name -> [N] scores, in legend order.
      truth: [N] 0/1 labels.
      reader_points: reader_id -> (sensitivity, specificity).
      simulated: adds "SIMULATED READERS" to the title, so simulated figures are never mistaken
        for a real reader study.
    """
    if not models:
        raise ValueError("'models' is empty: no ROC curve to plot")
    truth = statistics.check_truth(truth)
    # A Figure without pyplot: writes files without touching the global backend.
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    tab10 = colormaps["tab10"]
    for k, (name, model_scores) in enumerate(models.items()):
        scores = statistics.check_scores(model_scores, truth.size, f"scores of {name}")
        fpr, tpr, _ = metrics.roc_curve(truth, scores)
        auc = statistics.roc_auc_ci(truth, scores)
        axis.plot(
            fpr,
            tpr,
            color=tab10(k % 10),
            linewidth=2,
            label=f"{name} (AUC {auc.auc:.3f}, 95% CI {auc.ci_low:.3f}-{auc.ci_high:.3f})",
        )
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if reader_points:
        sens = [point[0] for point in reader_points.values()]
        fprs = [1.0 - point[1] for point in reader_points.values()]
        # One legend entry per reader while that stays readable; text labels would overlap when
        # readers cluster, as they usually do.
        if len(reader_points) <= _MAX_LEGEND_READERS:
            for k, (name, x, y) in enumerate(zip(reader_points, fprs, sens, strict=True)):
                # tab10 colours after the model curves' ones.
                color = tab10((len(models) + k) % 10)
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
