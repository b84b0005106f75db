"""Clinical statistics: ROC AUC with DeLong intervals, paired DeLong test, bootstrap intervals,
and threshold metrics (sensitivity, specificity, PPV, NPV, accuracy) with exact or Wilson
binomial intervals.

Conventions: `truth` is 0/1 (1 = malignant), a higher score means more suspicious, and a case is
called positive when its score is >= the threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics

BINOMIAL_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of the result records: frozen, and JSON-serializable through `to_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class AUCResult(Result):
    auc: float
    ci_low: float
    ci_high: float
    std_err: float
    n_positive: int
    n_negative: int
    method: str = "DeLong"


@dataclasses.dataclass(frozen=True)
class PairedAUCResult(Result):
    """Paired comparison of two scorers on the same cases; `difference` is auc_b - auc_a."""

    auc_a: float
    auc_b: float
    difference: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    method: str = "DeLong paired"


@dataclasses.dataclass(frozen=True)
class BootstrapResult(Result):
    estimate: float
    ci_low: float
    ci_high: float
    n_boot: int
    seed: int
    method: str = "stratified case bootstrap, percentile"


@dataclasses.dataclass(frozen=True)
class Proportion(Result):
    estimate: float
    ci_low: float
    ci_high: float
    successes: int
    n: int
    method: str


@dataclasses.dataclass(frozen=True)
class McNemarResult(Result):
    """Discordant counts: `only_a` cases right only by a, `only_b` right only by b."""

    only_a: int
    only_b: int
    p_value: float
    method: str = "exact McNemar (binomial on discordant pairs)"


@dataclasses.dataclass(frozen=True)
class BinaryMetrics(Result):
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    accuracy: Proportion


def check_truth(truth: Any, name: str = "truth") -> np.ndarray:
    """Validates 0/1 labels with both classes present; returns them as int64."""
    truth = np.asarray(truth)
    if truth.ndim != 1 or not np.isin(truth, (0, 1)).all():
        raise ValueError(f"'{name}' must be a 1-D array of 0/1 labels")
    if truth.min() == truth.max():
        raise ValueError(f"'{name}' needs both positive and negative cases")
    return truth.astype(np.int64)


def check_scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    """Validates finite float scores whose last axis has the n cases."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[-1] != n:
        raise ValueError(f"'{name}' has {scores.shape[-1]} cases, truth has {n}")
    if not np.isfinite(scores).all():
        raise ValueError(f"'{name}' contains non-finite values")
    return scores


def delong_components(truth: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values of one or more scorers, by midranks (Sun & Xu 2014).

    With m positives X and n negatives Y, the structural components are
    V10(X_i) = (1/n) sum_j psi(X_i, Y_j) and V01(Y_j) = (1/m) sum_i psi(X_i, Y_j), with
    psi = 1, 1/2, 0 for X > Y, X = Y, X < Y (DeLong et al. 1988, eq. 2-3). Sun & Xu (eq. 8-10)
    get them in O(N log N) from midranks: V10 = (T_Z(X_i) - T_X(X_i)) / n and
    V01 = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m, where T_Z, T_X, T_Y rank within all, X and Y.

    Args:
      truth: [N] 0/1 labels.
      scores: [N] or [K, N] scores.

    Returns:
      (auc [K], v10 [K, m], v01 [K, n]).
    """
    truth = check_truth(truth)
    scores = np.atleast_2d(check_scores(scores, truth.size))
    x, y = scores[:, truth == 1], scores[:, truth == 0]
    m, n = x.shape[1], y.shape[1]
    ranks = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    v10 = (ranks[:, :m] - stats.rankdata(x, axis=1)) / n
    v01 = 1.0 - (ranks[:, m:] - stats.rankdata(y, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def delong_covariance(truth: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [K] and their DeLong covariance [K, K]: S10 / m + S01 / n (DeLong 1988, eq. 5)."""
    auc, v10, v01 = delong_components(truth, scores)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / v10.shape[1] + s01 / v01.shape[1]


def roc_auc_ci(truth: Any, scores: Any, *, alpha: float = 0.05) -> AUCResult:
    """Empirical ROC AUC with a DeLong Wald interval, clipped to [0, 1]."""
    truth = check_truth(truth)
    scores = check_scores(scores, truth.size)
    auc = float(metrics.roc_auc_score(truth, scores))
    _, cov = delong_covariance(truth, scores)
    std_err = float(np.sqrt(cov[0, 0]))
    half = stats.norm.ppf(1 - alpha / 2) * std_err
    return AUCResult(
        auc=auc,
        ci_low=float(max(0.0, auc - half)),
        ci_high=float(min(1.0, auc + half)),
        std_err=std_err,
        n_positive=int(truth.sum()),
        n_negative=int((1 - truth).sum()),
    )


def delong_test(
    truth: Any, scores_a: Any, scores_b: Any, *, alpha: float = 0.05
) -> PairedAUCResult:
    """Paired DeLong test of AUC_b - AUC_a for two scorers read on the same cases.

    z = (AUC_b - AUC_a) / sqrt(c^T S c) with c = (-1, 1) and S the DeLong covariance
    (DeLong et al. 1988, eq. 6); two-sided normal p-value and Wald interval.
    """
    truth = check_truth(truth)
    scores = np.stack(
        [
            check_scores(scores_a, truth.size, "scores_a"),
            check_scores(scores_b, truth.size, "scores_b"),
        ]
    )
    auc, cov = delong_covariance(truth, scores)
    contrast = np.array([-1.0, 1.0])
    difference = float(contrast @ auc)
    std_err = float(np.sqrt(max(contrast @ cov @ contrast, 0.0)))
    if std_err == 0.0:
        z, p_value = (0.0, 1.0) if difference == 0.0 else (np.copysign(np.inf, difference), 0.0)
    else:
        z = difference / std_err
        p_value = float(2 * stats.norm.sf(abs(z)))
    half = stats.norm.ppf(1 - alpha / 2) * std_err
    return PairedAUCResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        difference=difference,
        ci_low=difference - half,
        ci_high=difference + half,
        z=float(z),
        p_value=p_value,
    )


def bootstrap_ci(
    metric: Callable[..., float],
    truth: Any,
    *arrays: Any,
    n_boot: int = 1000,
    seed: int,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile interval of `metric(truth, *arrays)` over case resamples.

    Cases are resampled with replacement within each truth class (stratified), so every
    replicate keeps the observed numbers of positives and negatives and a ranking metric such
    as AUC stays defined. Each array in `arrays` is indexed along its last axis (cases).
    """
    truth = check_truth(truth)
    arrays = tuple(check_scores(array, truth.size, "arrays") for array in arrays)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(truth == label) for label in (0, 1)]
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        index = np.concatenate([rng.choice(stratum, stratum.size) for stratum in strata])
        replicates[b] = metric(truth[index], *(array[..., index] for array in arrays))
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        estimate=float(metric(truth, *arrays)),
        ci_low=float(low),
        ci_high=float(high),
        n_boot=n_boot,
        seed=seed,
    )


def binomial_ci(
    successes: int, n: int, *, method: str = "clopper-pearson", alpha: float = 0.05
) -> Proportion:
    """Proportion with an exact Clopper-Pearson or a Wilson score interval (scipy).

    An empty denominator (e.g. PPV with no positive calls) gives NaN estimate and bounds.
    """
    if method not in BINOMIAL_METHODS:
        raise ValueError(f"'method' is {method!r}, not one of {sorted(BINOMIAL_METHODS)}")
    if n == 0:
        return Proportion(float("nan"), float("nan"), float("nan"), 0, 0, method)
    interval = stats.binomtest(int(successes), int(n)).proportion_ci(
        confidence_level=1 - alpha, method=BINOMIAL_METHODS[method]
    )
    return Proportion(
        successes / n, float(interval.low), float(interval.high), int(successes), int(n), method
    )


def confusion_metrics(
    truth: Any,
    predicted: Any,
    *,
    threshold: float = float("nan"),
    method: str = "clopper-pearson",
    alpha: float = 0.05,
) -> BinaryMetrics:
    """Sensitivity, specificity, PPV, NPV and accuracy of 0/1 calls, each with its interval."""
    truth = check_truth(truth)
    predicted = np.asarray(predicted)
    if predicted.shape != truth.shape or not np.isin(predicted, (0, 1)).all():
        raise ValueError("'predicted' must be 0/1 calls with the same shape as truth")
    tp = int(np.sum((predicted == 1) & (truth == 1)))
    fp = int(np.sum((predicted == 1) & (truth == 0)))
    tn = int(np.sum((predicted == 0) & (truth == 0)))
    fn = int(np.sum((predicted == 0) & (truth == 1)))

    def ci(k: int, n: int) -> Proportion:
        return binomial_ci(k, n, method=method, alpha=alpha)

    return BinaryMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=ci(tp, tp + fn),
        specificity=ci(tn, tn + fp),
        ppv=ci(tp, tp + fp),
        npv=ci(tn, tn + fn),
        accuracy=ci(tp + tn, truth.size),
    )


def binary_metrics(
    truth: Any,
    scores: Any,
    threshold: float,
    *,
    method: str = "clopper-pearson",
    alpha: float = 0.05,
) -> BinaryMetrics:
    """Threshold metrics of scores, calling a case positive when score >= threshold."""
    truth = check_truth(truth)
    predicted = (check_scores(scores, truth.size) >= threshold).astype(np.int64)
    return confusion_metrics(truth, predicted, threshold=threshold, method=method, alpha=alpha)


def _roc_points(truth: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = check_truth(truth)
    scores = check_scores(scores, truth.size)
    fpr, tpr, thresholds = metrics.roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def threshold_for_specificity(truth: Any, scores: Any, target: float) -> float:
    """The threshold of highest sensitivity (then specificity) among those with
    specificity >= target."""
    fpr, tpr, thresholds = _roc_points(truth, scores)
    # roc_curve lists thresholds in decreasing order, so fpr and tpr are non-decreasing.
    admissible = 1.0 - fpr >= target - 1e-12
    best = tpr[admissible].max()
    return float(thresholds[np.flatnonzero(admissible & (tpr == best))[0]])


def threshold_for_sensitivity(truth: Any, scores: Any, target: float) -> float:
    """The threshold of highest specificity (then sensitivity) among those with
    sensitivity >= target."""
    fpr, tpr, thresholds = _roc_points(truth, scores)
    admissible = tpr >= target - 1e-12
    best = fpr[admissible].min()
    return float(thresholds[np.flatnonzero(admissible & (fpr == best))[-1]])


def sensitivity_at_specificity(
    truth: Any, scores: Any, target: float, **kwargs: Any
) -> BinaryMetrics:
    """Metrics at the threshold chosen by `threshold_for_specificity`."""
    return binary_metrics(truth, scores, threshold_for_specificity(truth, scores, target), **kwargs)


def specificity_at_sensitivity(
    truth: Any, scores: Any, target: float, **kwargs: Any
) -> BinaryMetrics:
    """Metrics at the threshold chosen by `threshold_for_sensitivity`."""
    return binary_metrics(truth, scores, threshold_for_sensitivity(truth, scores, target), **kwargs)


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """Exact McNemar test of two paired 0/1 correctness vectors on the same cases.

    Only discordant cases carry information: with b = #(a right, b wrong) and
    c = #(a wrong, b right), under H0 b ~ Binomial(b + c, 1/2); two-sided exact p-value.
    """
    correct_a, correct_b = np.asarray(correct_a), np.asarray(correct_b)
    if (
        correct_a.shape != correct_b.shape
        or not np.isin(np.stack([correct_a, correct_b]), (0, 1)).all()
    ):
        raise ValueError("McNemar inputs must be 0/1 vectors of the same length")
    only_a = int(np.sum((correct_a == 1) & (correct_b == 0)))
    only_b = int(np.sum((correct_a == 0) & (correct_b == 1)))
    n = only_a + only_b
    p_value = 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return McNemarResult(only_a=only_a, only_b=only_b, p_value=p_value)
