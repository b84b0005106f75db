"""Clinical statistics: ROC AUC with DeLong intervals, paired DeLong test, percentile and BCa
bootstrap intervals, threshold metrics (sensitivity, specificity, PPV, NPV, accuracy) with exact
or Wilson binomial intervals, and exact, asymptotic or continuity-corrected McNemar tests.

Conventions: `truth` is 0/1 (1 = malignant), a higher score means more suspicious, and a case is
called positive when its score is >= the threshold.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics

BINOMIAL_METHODS = {"clopper-pearson": "exact", "wilson": "wilson"}
BOOTSTRAP_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}
MCNEMAR_METHODS = ("exact", "asymptotic", "corrected")


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of the result records: frozen, and JSON-serializable through `to_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any, strict: bool = False) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item, strict) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item, strict) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if strict and isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def strict_json(value: Any) -> Any:
    """`value` for strict JSON: numpy scalars become Python ones, and NaN and infinities (an
    undefined PPV, a degenerate test) become null."""
    return _jsonable(value, strict=True)


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
    std_err: float = float("nan")


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
    """Discordant counts: `only_a` cases right only by a, `only_b` right only by b; `statistic`
    is the chi-square of the asymptotic forms (NaN for the exact test)."""

    only_a: int
    only_b: int
    p_value: float
    method: str = "exact McNemar (binomial on discordant pairs)"
    statistic: float = float("nan")


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


def check_truth(truth: Any, name: str = "truth", *, min_per_class: int = 1) -> np.ndarray:
    """Validates 1-D 0/1 labels with at least `min_per_class` cases of each class (2 where a
    case-sampling variance is estimated: one case of a class leaves it undefined)."""
    truth = np.asarray(truth)
    if truth.ndim != 1 or not np.isin(truth, (0, 1)).all():
        raise ValueError(f"'{name}' must be a 1-D array of 0/1 labels")
    if truth.min() == truth.max():
        raise ValueError(f"'{name}' needs both positive and negative cases")
    counts = min(int(truth.sum()), int(truth.size - truth.sum()))
    if counts < min_per_class:
        raise ValueError(
            f"'{name}' has {counts} case(s) of one class; a variance across cases needs at "
            f"least {min_per_class} of each"
        )
    return truth.astype(np.int64)


def check_scores(
    scores: Any, n: int, name: str = "scores", *, ndim: int | None = None
) -> np.ndarray:
    """Validates finite float scores whose last axis has the n cases (and `ndim` axes if given)."""
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (ValueError, TypeError) as e:
        # A ragged list of readers' ratings lands here; numpy's message names no argument.
        raise ValueError(f"'{name}' is not a rectangular array of numbers ({e})") from e
    if ndim is not None and scores.ndim != ndim:
        raise ValueError(f"'{name}' must have {ndim} axis(es), got shape {scores.shape}")
    if scores.ndim == 0 or scores.shape[-1] != n:
        got = scores.shape[-1] if scores.ndim else "no"
        raise ValueError(f"'{name}' has {got} cases, truth has {n}")
    if not np.isfinite(scores).all():
        raise ValueError(f"'{name}' contains non-finite values")
    return scores


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """1 - the confidence level, in (0, 0.5): 0.95 is a confidence level given by mistake, and
    would silently give 5% intervals."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 0.5:
        raise ValueError(
            f"'{name}' is {alpha!r}: it must be 1 - the confidence level, in (0, 0.5) "
            "(0.05 for 95% intervals)"
        )
    return float(alpha)


def check_fraction(value: Any, name: str) -> float:
    """A target sensitivity, specificity or false-positive fraction in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"'{name}' is {value!r}, not a fraction in [0, 1]")
    return float(value)


def _check_count(value: Any, name: str, minimum: int = 0) -> int:
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral or value < minimum:
        raise ValueError(f"'{name}' is {value!r}, not an integer >= {minimum}")
    return int(value)


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
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # One case of a class: a NaN covariance, which the callers report as undefined.
        warnings.simplefilter("ignore", RuntimeWarning)
        s10 = np.atleast_2d(np.cov(v10))
        s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / v10.shape[1] + s01 / v01.shape[1]


def roc_auc_ci(truth: Any, scores: Any, *, alpha: float = 0.05) -> AUCResult:
    """Empirical ROC AUC with a DeLong Wald interval, clipped to [0, 1]; NaN bounds (and a
    warning) when the standard error is undefined, e.g. with one case of a class."""
    alpha = check_alpha(alpha)
    truth = check_truth(truth)
    scores = check_scores(scores, truth.size, ndim=1)
    auc = float(metrics.roc_auc_score(truth, scores))
    _, cov = delong_covariance(truth, scores)
    std_err = float(np.sqrt(cov[0, 0]))
    half = stats.norm.ppf(1 - alpha / 2) * std_err
    if not np.isfinite(std_err):
        warnings.warn(
            "AUC standard error is undefined (one case of a class?): no interval", stacklevel=2
        )
    return AUCResult(
        auc=auc,
        # min/max would turn a NaN bound into 0 or 1, an interval that looks real.
        ci_low=float(np.clip(auc - half, 0.0, 1.0)),
        ci_high=float(np.clip(auc + half, 0.0, 1.0)),
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
    alpha = check_alpha(alpha)
    truth = check_truth(truth)
    scores = np.stack(
        [
            check_scores(scores_a, truth.size, "scores_a", ndim=1),
            check_scores(scores_b, truth.size, "scores_b", ndim=1),
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
    method: str = "percentile",
) -> BootstrapResult:
    """Percentile, basic or BCa interval of `metric(truth, *arrays)` over case resamples.

    Cases are resampled with replacement within each truth class (stratified), so every
    replicate keeps the observed numbers of positives and negatives and a ranking metric such
    as AUC stays defined: scipy.stats.bootstrap resamples the positives' and the negatives'
    indices as two independent samples, and for BCa (Efron 1987) takes the acceleration from
    the jackknife over both. Each array in `arrays` is indexed along its last axis (cases).
    """
    alpha = check_alpha(alpha)
    n_boot = _check_count(n_boot, "n_boot", 1 if method != "bca" else 2)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"'method' is {method!r}, not one of {sorted(BOOTSTRAP_METHODS)}")
    truth = check_truth(truth)
    arrays = tuple(check_scores(array, truth.size, "arrays") for array in arrays)
    strata = tuple(np.flatnonzero(truth == label) for label in (1, 0))

    def statistic(positives: np.ndarray, negatives: np.ndarray) -> float:
        index = np.concatenate([positives, negatives]).astype(np.int64)
        return metric(truth[index], *(array[..., index] for array in arrays))

    with warnings.catch_warnings():
        # scipy warns when a replicate distribution is degenerate (e.g. AUC = 1 everywhere);
        # the interval it then returns (NaN for BCa) says so itself.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            strata,
            statistic,
            n_resamples=n_boot,
            vectorized=False,
            paired=False,
            confidence_level=1 - alpha,
            method=BOOTSTRAP_METHODS[method],
            rng=np.random.default_rng(seed),
        )
    return BootstrapResult(
        estimate=float(metric(truth, *arrays)),
        ci_low=float(result.confidence_interval.low),
        ci_high=float(result.confidence_interval.high),
        n_boot=n_boot,
        seed=seed,
        method=f"stratified case bootstrap, {BOOTSTRAP_METHODS[method]}",
        std_err=float(result.standard_error),
    )


def binomial_ci(
    successes: int, n: int, *, method: str = "clopper-pearson", alpha: float = 0.05
) -> Proportion:
    """Proportion with an exact Clopper-Pearson or a Wilson score interval (scipy).

    An empty denominator (e.g. PPV with no positive calls) gives NaN estimate and bounds.
    """
    if method not in BINOMIAL_METHODS:
        raise ValueError(f"'method' is {method!r}, not one of {sorted(BINOMIAL_METHODS)}")
    alpha = check_alpha(alpha)
    n = _check_count(n, "n")
    successes = _check_count(successes, "successes")
    if successes > n:
        raise ValueError(f"'successes' is {successes}, more than 'n' = {n}")
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
    scores = check_scores(scores, truth.size, ndim=1)
    fpr, tpr, thresholds = metrics.roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def threshold_for_specificity(truth: Any, scores: Any, target: float) -> float:
    """The threshold of highest sensitivity (then specificity) among those with
    specificity >= target."""
    target = check_fraction(target, "target")
    fpr, tpr, thresholds = _roc_points(truth, scores)
    # roc_curve lists thresholds in decreasing order, so fpr and tpr are non-decreasing.
    admissible = 1.0 - fpr >= target - 1e-12
    best = tpr[admissible].max()
    return float(thresholds[np.flatnonzero(admissible & (tpr == best))[0]])


def threshold_for_sensitivity(truth: Any, scores: Any, target: float) -> float:
    """The threshold of highest specificity (then sensitivity) among those with
    sensitivity >= target."""
    target = check_fraction(target, "target")
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


def mcnemar(correct_a: Any, correct_b: Any, *, method: str = "exact") -> McNemarResult:
    """McNemar test of two paired 0/1 correctness vectors on the same cases.

    Only discordant cases carry information: with b = #(a right, b wrong) and
    c = #(a wrong, b right), under H0 b ~ Binomial(b + c, 1/2). "exact": two-sided binomial
    p-value; "asymptotic": chi2 = (b - c)^2 / (b + c) on 1 df (McNemar 1947); "corrected": with
    Edwards's continuity correction, chi2 = (|b - c| - 1)^2 / (b + c). No discordant case: p = 1.
    """
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"'method' is {method!r}, not one of {MCNEMAR_METHODS}")
    correct_a, correct_b = np.asarray(correct_a), np.asarray(correct_b)
    for name, value in (("correct_a", correct_a), ("correct_b", correct_b)):
        if value.ndim != 1 or not np.isin(value, (0, 1)).all():
            raise ValueError(f"'{name}' must be a 1-D vector of 0/1 correctness, got {value.shape}")
    if correct_a.shape != correct_b.shape:
        raise ValueError(
            f"'correct_a' and 'correct_b' cover {correct_a.size} and {correct_b.size} cases"
        )
    only_a = int(np.sum((correct_a == 1) & (correct_b == 0)))
    only_b = int(np.sum((correct_a == 0) & (correct_b == 1)))
    n = only_a + only_b
    names = {
        "exact": "exact McNemar (binomial on discordant pairs)",
        "asymptotic": "McNemar chi-square, 1 df",
        "corrected": "McNemar chi-square with continuity correction, 1 df",
    }
    if n == 0:
        return McNemarResult(only_a, only_b, 1.0, names[method], 0.0)
    if method == "exact":
        return McNemarResult(only_a, only_b, float(stats.binomtest(only_a, n, 0.5).pvalue))
    gap = abs(only_a - only_b) - (1.0 if method == "corrected" else 0.0)
    chi2 = max(gap, 0.0) ** 2 / n
    return McNemarResult(only_a, only_b, float(stats.chi2.sf(chi2, 1)), names[method], chi2)
