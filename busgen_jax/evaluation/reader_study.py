"""Reader studies: reads on any rating scale, per-reader performance, and the model against each
reader at matched operating points with McNemar tests and an MRMC test of the mean gain.

A study holds ratings [modalities, readers, cases] oriented so that higher means more suspicious
(NaN where a reader did not read a case), and the `RatingScale` they came from: BI-RADS
categories 1, 2, 3, 4A, 4B, 4C, 5, 6 (ordinal scores 1..8), or numbers on any ordinal or
continuous scale (1-5 confidence, 0-100 probability), either direction. A read is a positive
call at or beyond the scale's threshold (BI-RADS 4A by default, as in BUSGen). File formats are
in `reader_io`; simulated panels in `roe_metz`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics

from busgen_jax.evaluation import mrmc, statistics

BIRADS_CATEGORIES = ("1", "2", "3", "4A", "4B", "4C", "5", "6")
DEFAULT_THRESHOLD = "4A"
DEFAULT_MODALITY = "default"
SCALE_KINDS = ("birads", "numeric")


def birads_score(value: Any, where: str = "birads") -> int:
    """Ordinal score 1..8 of a BI-RADS category ("4a", "4A", 5, "5" ...); raises naming `where`."""
    category = str(value).strip().upper()
    if category not in BIRADS_CATEGORIES:
        raise ValueError(f"{where}: BI-RADS {value!r} is not one of {', '.join(BIRADS_CATEGORIES)}")
    return BIRADS_CATEGORIES.index(category) + 1


@dataclasses.dataclass(frozen=True)
class RatingScale:
    """How ratings read: `kind` "birads" or "numeric"; `higher_is_malignant` False for scales
    where a low number is suspicious (e.g. rank 1 = most suspicious); a read at or beyond
    `threshold` (a category, or a number in the file's units; BI-RADS 4A when None on the
    BI-RADS scale) is a positive call."""

    kind: str = "birads"
    higher_is_malignant: bool = True
    threshold: str | float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCALE_KINDS:
            raise ValueError(f"rating scale 'kind' is {self.kind!r}, not one of {SCALE_KINDS}")
        if self.kind == "birads" and not self.higher_is_malignant:
            raise ValueError("BI-RADS categories always rise with suspicion")
        if self.threshold is not None:
            self.cut()

    @property
    def default_threshold(self) -> str | float | None:
        return (
            DEFAULT_THRESHOLD
            if self.threshold is None and self.kind == "birads"
            else self.threshold
        )

    def score(self, value: Any, where: str = "rating") -> float:
        """The oriented score of one rating (higher = more suspicious); raises naming `where`."""
        if self.kind == "birads":
            return float(birads_score(value, where))
        try:
            number = float(str(value).strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{where}: rating {value!r} is not a finite number")
        return number if self.higher_is_malignant else -number

    def cut(self, threshold: Any = None) -> float:
        """The oriented score at which a read becomes a positive call."""
        value = self.default_threshold if threshold is None else threshold
        if value is None:
            raise ValueError("the numeric rating scale has no 'threshold' for positive calls")
        return self.score(value, "threshold")

    def call_rule(self, threshold: Any = None) -> str:
        """A positive call in the scale's own units: "BI-RADS >= 4A", "rating <= 2"."""
        name = "BI-RADS" if self.kind == "birads" else "rating"
        sign = ">=" if self.higher_is_malignant else "<="
        return f"{name} {sign} {self.label(self.cut(threshold))}"

    def label(self, score: float) -> str:
        """A score back in the scale's own units, as files write it."""
        if self.kind == "birads":
            return BIRADS_CATEGORIES[int(score) - 1]
        value = score if self.higher_is_malignant else -score
        return f"{value:g}"


BIRADS = RatingScale()


@dataclasses.dataclass(frozen=True, eq=False)
class ReaderStudy:
    """Reads of `reader_ids` on `case_ids` in `modalities`: `scores` [t, r, N] oriented (higher =
    more suspicious) with NaN for a case a reader did not read."""

    case_ids: tuple[str, ...]
    reader_ids: tuple[str, ...]
    modalities: tuple[str, ...]
    scores: np.ndarray
    truth: np.ndarray
    simulated: bool = False
    scale: RatingScale = BIRADS

    def modality_index(self, modality: str | None = None) -> int:
        if modality is None:
            if len(self.modalities) != 1:
                raise ValueError(f"study has modalities {self.modalities}; name one")
            return 0
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not one of {self.modalities}")
        return self.modalities.index(modality)

    def modality_scores(self, modality: str | None = None) -> np.ndarray:
        """Scores [n_readers, n_cases] of one modality (the only one when None); NaN = unread."""
        return self.scores[self.modality_index(modality)]

    def calls(self, threshold: Any = None, modality: str | None = None) -> np.ndarray:
        """Positive calls [n_readers, n_cases]: 1.0, 0.0, or NaN where not read."""
        scores = self.modality_scores(modality)
        return np.where(np.isfinite(scores), scores >= self.scale.cut(threshold), np.nan)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per read (long table), with truth and the `simulated` marker."""
        column = "birads" if self.scale.kind == "birads" else "rating"
        return [
            {
                "case_id": case,
                "reader_id": reader,
                "modality": modality,
                column: self.scale.label(self.scores[m, r, c]),
                "truth": int(self.truth[c]),
                "simulated": self.simulated,
            }
            for m, modality in enumerate(self.modalities)
            for r, reader in enumerate(self.reader_ids)
            for c, case in enumerate(self.case_ids)
            if np.isfinite(self.scores[m, r, c])
        ]

    def write_csv(self, path: str | os.PathLike) -> None:
        """Writes the reads as the long table `reader_io.load_long_table` reads."""
        rows = self.to_rows()
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


@dataclasses.dataclass(frozen=True)
class ReaderPerformance(statistics.Result):
    """One reader's operating point at the threshold and empirical ROC over its ratings."""

    reader_id: str
    modality: str
    threshold: str
    n_cases: int
    sensitivity: statistics.Proportion
    specificity: statistics.Proportion
    auc: float
    roc_fpr: list[float]
    roc_tpr: list[float]
    simulated: bool


def _threshold_label(study: ReaderStudy, threshold: Any) -> str:
    value = study.scale.default_threshold if threshold is None else threshold
    return str(value).upper()


def reader_performance(
    study: ReaderStudy,
    *,
    threshold: Any = None,
    modality: str | None = None,
    method: str = "clopper-pearson",
    alpha: float = 0.05,
) -> list[ReaderPerformance]:
    """Sensitivity and specificity (with intervals) and the empirical ROC of every reader, each
    on the cases it read."""
    calls = study.calls(threshold, modality)
    scores = study.modality_scores(modality)
    results = []
    for r, reader_id in enumerate(study.reader_ids):
        read = np.isfinite(scores[r])
        truth = study.truth[read]
        binary = statistics.confusion_metrics(
            truth, calls[r][read].astype(np.int64), method=method, alpha=alpha
        )
        fpr, tpr, _ = metrics.roc_curve(truth, scores[r][read])
        results.append(
            ReaderPerformance(
                reader_id=reader_id,
                modality=modality or study.modalities[0],
                threshold=_threshold_label(study, threshold),
                n_cases=int(read.sum()),
                sensitivity=binary.sensitivity,
                specificity=binary.specificity,
                auc=float(metrics.roc_auc_score(truth, scores[r][read])),
                roc_fpr=fpr.tolist(),
                roc_tpr=tpr.tolist(),
                simulated=study.simulated,
            )
        )
    return results


@dataclasses.dataclass(frozen=True)
class ReaderComparison(statistics.Result):
    """The model against one reader on the cases it read: at the reader's specificity
    (`*_at_spec`), the model's sensitivity and a McNemar test on the malignant cases; at the
    reader's sensitivity, the model's specificity and a McNemar test on the non-malignant cases.
    In the McNemar results `only_a` counts cases only the model got right, `only_b` cases only
    the reader did."""

    reader_id: str
    reader_sensitivity: float
    reader_specificity: float
    threshold_at_spec: float
    model_sensitivity_at_spec: statistics.Proportion
    model_specificity_at_spec: float
    mcnemar_at_spec: statistics.McNemarResult
    threshold_at_sens: float
    model_specificity_at_sens: statistics.Proportion
    model_sensitivity_at_sens: float
    mcnemar_at_sens: statistics.McNemarResult


@dataclasses.dataclass(frozen=True)
class ModelVsReaders(statistics.Result):
    """Per-reader comparisons and the mean gain (model - reader) across readers.

    The mean sensitivity gain is the reader average of D_j = model sensitivity at reader j's
    specificity - reader j's sensitivity; its interval and p-value are the OR MRMC test of
    that mean (random readers and cases, Hillis df, jackknife covariance with each model
    threshold held fixed), and likewise the specificity gain at each reader's sensitivity.
    """

    modality: str
    threshold: str
    readers: list[ReaderComparison]
    mean_sensitivity_gain: float
    sensitivity_gain_ci: tuple[float, float]
    sensitivity_gain_p: float
    mean_specificity_gain: float
    specificity_gain_ci: tuple[float, float]
    specificity_gain_p: float
    test: str
    mcnemar_method: str
    simulated: bool


def _gain(comparison: ReaderComparison, name: str) -> float:
    if name == "sensitivity":
        return comparison.model_sensitivity_at_spec.estimate - comparison.reader_sensitivity
    return comparison.model_specificity_at_sens.estimate - comparison.reader_specificity


def compare_model_to_readers(
    study: ReaderStudy,
    model_scores: Sequence[float] | Mapping[str, float],
    *,
    threshold: Any = None,
    modality: str | None = None,
    method: str = "clopper-pearson",
    alpha: float = 0.05,
    mcnemar_method: str = "exact",
) -> ModelVsReaders:
    """The model at each reader's operating point; scores align with `study.case_ids` or map
    case_id -> score (higher = more suspicious)."""
    if isinstance(model_scores, Mapping):
        missing = [case for case in study.case_ids if case not in model_scores]
        if missing:
            raise ValueError(f"model_scores has no score for case(s) {missing[:5]}")
        model_scores = [model_scores[case] for case in study.case_ids]
    truth = study.truth
    scores = statistics.check_scores(model_scores, truth.size, "model_scores", ndim=1)
    calls = study.calls(threshold, modality)
    comparisons, at_spec_thresholds, at_sens_thresholds = [], [], []
    for r, reader_id in enumerate(study.reader_ids):
        read = np.isfinite(calls[r])
        y, s, c = truth[read], scores[read], calls[r][read].astype(np.int64)
        reader = statistics.confusion_metrics(y, c)
        spec, sens = reader.specificity.estimate, reader.sensitivity.estimate
        at_spec = statistics.sensitivity_at_specificity(y, s, spec, method=method, alpha=alpha)
        at_sens = statistics.specificity_at_sensitivity(y, s, sens, method=method, alpha=alpha)
        positive, negative = y == 1, y == 0
        comparisons.append(
            ReaderComparison(
                reader_id=reader_id,
                reader_sensitivity=sens,
                reader_specificity=spec,
                threshold_at_spec=at_spec.threshold,
                model_sensitivity_at_spec=at_spec.sensitivity,
                model_specificity_at_spec=at_spec.specificity.estimate,
                mcnemar_at_spec=statistics.mcnemar(
                    s[positive] >= at_spec.threshold, c[positive] == 1, method=mcnemar_method
                ),
                threshold_at_sens=at_sens.threshold,
                model_specificity_at_sens=at_sens.specificity,
                model_sensitivity_at_sens=at_sens.sensitivity.estimate,
                mcnemar_at_sens=statistics.mcnemar(
                    s[negative] < at_sens.threshold, c[negative] == 0, method=mcnemar_method
                ),
            )
        )
        at_spec_thresholds.append(at_spec.threshold)
        at_sens_thresholds.append(at_sens.threshold)
    reader_scores = study.modality_scores(modality)
    gains = {}
    for name, model_thresholds in (
        ("sensitivity", at_spec_thresholds),
        ("specificity", at_sens_thresholds),
    ):
        if len(study.reader_ids) < 2:
            # One reader: its gain, with no reader sample to test it over.
            gain = float(np.mean([_gain(c, name) for c in comparisons]))
            gains[name] = mrmc.ORTest(
                "RRRC", gain, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan
            )
            continue
        gains[name] = mrmc.or_model_vs_readers(
            truth,
            scores,
            reader_scores,
            fom=name,
            reader_thresholds=study.scale.cut(threshold),
            model_thresholds=model_thresholds,
            alpha=alpha,
            reader_ids=study.reader_ids,
        ).rrrc
    sens, spec = gains["sensitivity"], gains["specificity"]
    return ModelVsReaders(
        modality=modality or study.modalities[0],
        threshold=_threshold_label(study, threshold),
        readers=comparisons,
        mean_sensitivity_gain=sens.estimate,
        sensitivity_gain_ci=(sens.ci_low, sens.ci_high),
        sensitivity_gain_p=sens.p_value,
        mean_specificity_gain=spec.estimate,
        specificity_gain_ci=(spec.ci_low, spec.ci_high),
        specificity_gain_p=spec.p_value,
        test="OR MRMC, random readers and cases (Hillis df), jackknife covariance",
        mcnemar_method=comparisons[0].mcnemar_at_spec.method,
        simulated=study.simulated,
    )
