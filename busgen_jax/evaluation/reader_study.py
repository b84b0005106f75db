"""Reader studies: BI-RADS reads from a CSV, per-reader performance, the model against each
reader at matched operating points, and simulated readers for tests and demos.

CSV columns: `case_id, reader_id, birads` and optionally `modality` (e.g. unaided / aided) and
`simulated`. BI-RADS categories 1, 2, 3, 4A, 4B, 4C, 5, 6 map to ordinal scores 1..8; a read is
a positive call when its category is >= the threshold (4A by default, as in BUSGen).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special, stats
from sklearn import metrics

from busgen_jax.evaluation import statistics

BIRADS_CATEGORIES = ("1", "2", "3", "4A", "4B", "4C", "5", "6")
DEFAULT_THRESHOLD = "4A"
DEFAULT_MODALITY = "default"
# Malignancy-probability cut points between simulated categories 1|2|3|4A|4B|4C|5, from the
# BI-RADS likelihood bands (3: <= 2%, 4A: 2-10%, 4B: 10-50%, 4C: 50-95%, 5: > 95%).
_SIMULATED_CUTS = np.array([0.002, 0.005, 0.02, 0.10, 0.50, 0.95])


def birads_score(value: Any, where: str = "birads") -> int:
    """Ordinal score 1..8 of a BI-RADS category ("4a", "4A", 5, "5" ...); raises naming `where`."""
    category = str(value).strip().upper()
    if category not in BIRADS_CATEGORIES:
        raise ValueError(f"{where}: BI-RADS {value!r} is not one of {', '.join(BIRADS_CATEGORIES)}")
    return BIRADS_CATEGORIES.index(category) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class ReaderStudy:
    """A complete design: every reader reads every case in every modality.

    `scores` [n_modalities, n_readers, n_cases] holds ordinal BI-RADS scores (1..8).
    """

    case_ids: tuple[str, ...]
    reader_ids: tuple[str, ...]
    modalities: tuple[str, ...]
    scores: np.ndarray
    truth: np.ndarray
    simulated: bool = False

    def modality_scores(self, modality: str | None = None) -> np.ndarray:
        """Scores [n_readers, n_cases] of one modality (the only one when None)."""
        if modality is None:
            if len(self.modalities) != 1:
                raise ValueError(f"study has modalities {self.modalities}; name one")
            return self.scores[0]
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not one of {self.modalities}")
        return self.scores[self.modalities.index(modality)]

    def calls(self, threshold: Any = DEFAULT_THRESHOLD, modality: str | None = None) -> np.ndarray:
        """0/1 positive calls [n_readers, n_cases]: BI-RADS >= threshold."""
        cut = birads_score(threshold, "threshold")
        return (self.modality_scores(modality) >= cut).astype(np.int64)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per read, with the `simulated` marker."""
        return [
            {
                "case_id": case,
                "reader_id": reader,
                "modality": modality,
                "birads": BIRADS_CATEGORIES[int(self.scores[m, r, c]) - 1],
                "simulated": self.simulated,
            }
            for m, modality in enumerate(self.modalities)
            for r, reader in enumerate(self.reader_ids)
            for c, case in enumerate(self.case_ids)
        ]

    def write_csv(self, path: str | os.PathLike) -> None:
        """Writes the reads in the format `load_reader_study` reads."""
        rows = self.to_rows()
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def load_reader_study(path: str | os.PathLike, truth: Mapping[str, int]) -> ReaderStudy:
    """Reads a reader-study CSV; `truth` maps case_id to 0/1 (1 = malignant).

    Raises ValueError naming the file, line and field on a missing column, an unknown BI-RADS
    category, a case without truth, a duplicate (case, reader, modality) read or a missing read.
    """
    reads: dict[tuple[str, str, str], tuple[int, int]] = {}
    order: dict[str, dict[str, None]] = {"case": {}, "reader": {}, "modality": {}}
    simulated = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case_id", "reader_id", "birads"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            case, rater = row["case_id"].strip(), row["reader_id"].strip()
            modality = (row.get("modality") or DEFAULT_MODALITY).strip()
            if case not in truth:
                raise ValueError(f"{where}: field 'case_id' {case!r} has no ground truth")
            if truth[case] not in (0, 1):
                raise ValueError(f"truth for case {case!r} is {truth[case]!r}, not 0 or 1")
            key = (case, rater, modality)
            if key in reads:
                raise ValueError(
                    f"{where}: duplicate read of case {case!r} by reader {rater!r} in modality "
                    f"{modality!r} (first on line {reads[key][1]})"
                )
            reads[key] = (birads_score(row["birads"], f"{where}: field 'birads'"), reader.line_num)
            simulated.append(str(row.get("simulated", "")).strip().lower() == "true")
            for name, value in zip(("case", "reader", "modality"), key, strict=True):
                order[name][value] = None
    if not reads:
        raise ValueError(f"{path}: no reads")
    cases, raters, modalities = (tuple(order[name]) for name in ("case", "reader", "modality"))
    scores = np.zeros((len(modalities), len(raters), len(cases)), dtype=np.int64)
    for m, modality in enumerate(modalities):
        for r, rater in enumerate(raters):
            for c, case in enumerate(cases):
                if (case, rater, modality) not in reads:
                    raise ValueError(
                        f"{path}: no read of case {case!r} by reader {rater!r} in modality "
                        f"{modality!r} (every reader must read every case)"
                    )
                scores[m, r, c] = reads[case, rater, modality][0]
    return ReaderStudy(
        cases, raters, modalities, scores, np.array([truth[c] for c in cases]), all(simulated)
    )


@dataclasses.dataclass(frozen=True)
class ReaderPerformance(statistics.Result):
    """One reader's operating point at the BI-RADS threshold and empirical ROC over categories."""

    reader_id: str
    modality: str
    threshold: str
    sensitivity: statistics.Proportion
    specificity: statistics.Proportion
    auc: float
    roc_fpr: list[float]
    roc_tpr: list[float]
    simulated: bool


def reader_performance(
    study: ReaderStudy,
    *,
    threshold: str = DEFAULT_THRESHOLD,
    modality: str | None = None,
    method: str = "clopper-pearson",
    alpha: float = 0.05,
) -> list[ReaderPerformance]:
    """Sensitivity and specificity (with intervals) and the empirical ROC of every reader."""
    calls = study.calls(threshold, modality)
    scores = study.modality_scores(modality)
    results = []
    for r, reader_id in enumerate(study.reader_ids):
        binary = statistics.confusion_metrics(study.truth, calls[r], method=method, alpha=alpha)
        fpr, tpr, _ = metrics.roc_curve(study.truth, scores[r])
        results.append(
            ReaderPerformance(
                reader_id=reader_id,
                modality=modality or study.modalities[0],
                threshold=str(threshold).upper(),
                sensitivity=binary.sensitivity,
                specificity=binary.specificity,
                auc=float(metrics.roc_auc_score(study.truth, scores[r])),
                roc_fpr=fpr.tolist(),
                roc_tpr=tpr.tolist(),
                simulated=study.simulated,
            )
        )
    return results


@dataclasses.dataclass(frozen=True)
class ReaderComparison(statistics.Result):
    """The model against one reader: at the reader's specificity (`*_at_spec`), the model's
    sensitivity and an exact McNemar test on the malignant cases; at the reader's sensitivity,
    the model's specificity and a McNemar test on the non-malignant cases. In the McNemar
    results `only_a` counts cases only the model got right, `only_b` cases only the reader did."""

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
    """Per-reader comparisons and the mean improvement (model - reader) across readers.

    The p-values of the means come from a paired two-sided t-test over readers (readers random,
    the cases fixed); the intervals are the matching t intervals.
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
    simulated: bool


def _mean_gain(gains: np.ndarray, alpha: float) -> tuple[float, tuple[float, float], float]:
    if gains.size < 2 or np.ptp(gains) == 0:
        # A t-test is undefined without reader-to-reader spread.
        mean = float(gains.mean())
        return mean, (mean, mean), float("nan")
    result = stats.ttest_1samp(gains, 0.0)
    interval = result.confidence_interval(1 - alpha)
    return float(gains.mean()), (float(interval.low), float(interval.high)), float(result.pvalue)


def compare_model_to_readers(
    study: ReaderStudy,
    model_scores: Sequence[float] | Mapping[str, float],
    *,
    threshold: str = DEFAULT_THRESHOLD,
    modality: str | None = None,
    method: str = "clopper-pearson",
    alpha: float = 0.05,
) -> ModelVsReaders:
    """The model at each reader's operating point; scores align with `study.case_ids` or map
    case_id -> score."""
    if isinstance(model_scores, Mapping):
        missing = [case for case in study.case_ids if case not in model_scores]
        if missing:
            raise ValueError(f"model_scores has no score for case(s) {missing[:5]}")
        model_scores = [model_scores[case] for case in study.case_ids]
    truth = study.truth
    scores = statistics.check_scores(model_scores, truth.size, "model_scores")
    calls = study.calls(threshold, modality)
    comparisons = []
    for r, reader_id in enumerate(study.reader_ids):
        reader = statistics.confusion_metrics(truth, calls[r])
        spec, sens = reader.specificity.estimate, reader.sensitivity.estimate
        at_spec = statistics.sensitivity_at_specificity(truth, scores, spec, method=method)
        at_sens = statistics.specificity_at_sensitivity(truth, scores, sens, method=method)
        positive, negative = truth == 1, truth == 0
        model_at_spec = scores >= at_spec.threshold
        model_at_sens = scores >= at_sens.threshold
        comparisons.append(
            ReaderComparison(
                reader_id=reader_id,
                reader_sensitivity=sens,
                reader_specificity=spec,
                threshold_at_spec=at_spec.threshold,
                model_sensitivity_at_spec=at_spec.sensitivity,
                model_specificity_at_spec=at_spec.specificity.estimate,
                mcnemar_at_spec=statistics.mcnemar_exact(
                    model_at_spec[positive], calls[r][positive] == 1
                ),
                threshold_at_sens=at_sens.threshold,
                model_specificity_at_sens=at_sens.specificity,
                model_sensitivity_at_sens=at_sens.sensitivity.estimate,
                mcnemar_at_sens=statistics.mcnemar_exact(
                    ~model_at_sens[negative], calls[r][negative] == 0
                ),
            )
        )
    sens_gain = np.array(
        [c.model_sensitivity_at_spec.estimate - c.reader_sensitivity for c in comparisons]
    )
    spec_gain = np.array(
        [c.model_specificity_at_sens.estimate - c.reader_specificity for c in comparisons]
    )
    sens_mean, sens_ci, sens_p = _mean_gain(sens_gain, alpha)
    spec_mean, spec_ci, spec_p = _mean_gain(spec_gain, alpha)
    return ModelVsReaders(
        modality=modality or study.modalities[0],
        threshold=str(threshold).upper(),
        readers=comparisons,
        mean_sensitivity_gain=sens_mean,
        sensitivity_gain_ci=sens_ci,
        sensitivity_gain_p=sens_p,
        mean_specificity_gain=spec_mean,
        specificity_gain_ci=spec_ci,
        specificity_gain_p=spec_p,
        test="paired two-sided t-test over readers",
        simulated=study.simulated,
    )


def simulate_reader_study(
    truth: Any,
    latent_score: Any,
    *,
    n_readers: int,
    seed: int,
    modalities: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
) -> ReaderStudy:
    """Simulated readers calling BI-RADS from a latent malignancy probability; marked simulated.

    Reader j perceives logit(p) + s_j * g_k * eps with eps ~ N(0, 1), a reader-specific noise
    s_j ~ U(0.6, 1.4) and a modality factor g_k = 0.75^k (each later modality, e.g. "aided",
    reads with less noise), then calls the BI-RADS category whose likelihood band (on the logit
    scale, shifted by a reader-specific offset c_j ~ N(0, 0.4^2): cautious or liberal readers)
    contains it. Categories 1 to 5 are used (6 is for proven cancer).
    """
    truth = statistics.check_truth(truth)
    latent = statistics.check_scores(latent_score, truth.size, "latent_score")
    modalities = tuple(modalities or (DEFAULT_MODALITY,))
    rng = np.random.default_rng(seed)
    noise_scale = rng.uniform(0.6, 1.4, size=(1, n_readers, 1))
    offsets = rng.normal(0.0, 0.4, size=(1, n_readers, 1, 1))
    modality_factor = 0.75 ** np.arange(len(modalities)).reshape(-1, 1, 1)
    logit = special.logit(np.clip(latent, 1e-4, 1 - 1e-4))
    eps = rng.standard_normal((len(modalities), n_readers, truth.size))
    perceived = logit + noise_scale * modality_factor * eps
    cuts = special.logit(_SIMULATED_CUTS) + offsets
    # Scores 1..7 are categories 1, 2, 3, 4A, 4B, 4C, 5: one more per cut point passed.
    scores = 1 + np.sum(perceived[..., None] > cuts, axis=-1)
    cases = (
        tuple(case_ids)
        if case_ids is not None
        else tuple(f"case{i:04d}" for i in range(truth.size))
    )
    readers = tuple(f"sim_reader{j:02d}" for j in range(n_readers))
    return ReaderStudy(cases, readers, modalities, scores.astype(np.int64), truth, simulated=True)
