"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski-Rockette (OR) with Hillis's df.

The OR model (Obuchowski & Rockette 1995) writes reader j's AUC in modality i as
theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij, with error covariances Var, Cov1 (same reader,
different modality), Cov2 (different reader, same modality), Cov3 (both different), estimated
from the case sample by the jackknife or by DeLong. Three analyses, as in OR-DBM MRMC,
RJafroc and MRMCaov (Hillis 2007, 2008; Hillis 2014 for the fixed-factor variants):

* RRRC, random readers and random cases:
  F = MS(T) / [MS(T:R) + r max(Cov2 - Cov3, 0)] on (t - 1, ddf_H) df with
  ddf_H = [MS(T:R) + r max(Cov2 - Cov3, 0)]^2 / {MS(T:R)^2 / [(t - 1)(r - 1)]} (Hillis 2008).
* FRRC, fixed readers: chi2 = MS(T) / [Var - Cov1 + (r - 1) max(Cov2 - Cov3, 0)] on t - 1 df.
* RRFC, fixed cases: F = MS(T) / MS(T:R) on (t - 1, (t - 1)(r - 1)) df.

The model against a reader panel follows the single-modality OR analysis of the differences
D_j = AUC_model - AUC_j (Hillis 2007, single test; Chen, Gong & Gallas 2018, "paradigm for
comparing a fixed algorithm with random readers"; RJafroc's "1T-RRRC" CAD-vs-radiologists
method). The model is one fixed "reader" with no reader variance, so the variability of the
mean difference comes from the readers (MS_R of D) and from the cases (Cov2 of D). This is the
two-modality OR analysis with the model copied into every reader's slot, which the tests check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import special

from busgen_jax.evaluation.statistics import Result, check_scores, check_truth, delong_components

COV_METHODS = ("jackknife", "delong")


@dataclasses.dataclass(frozen=True)
class ORTest(Result):
    """One OR test of a 1-df contrast; `statistic` is F (chi-square for FRRC) on 1 and `df` df."""

    analysis: str
    estimate: float
    std_err: float
    df: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float


@dataclasses.dataclass(frozen=True)
class MRMCResult(Result):
    """An OR comparison; `difference` is the second modality (or the model) minus the first
    modality (or the reader average), and `rrrc`, `frrc`, `rrfc` test it. `mean_auc` holds the
    reader-averaged AUC of each arm with its interval, tested against chance (0.5)."""

    comparison: str
    cov_method: str
    n_readers: int
    n_positive: int
    n_negative: int
    auc: dict[str, list[float]]
    mean_auc: dict[str, ORTest]
    difference: float
    components: dict[str, float]
    rrrc: ORTest
    frrc: ORTest
    rrfc: ORTest


def auc_covariance(
    truth: Any, ratings: Any, *, method: str = "jackknife"
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical AUCs of every row of `ratings` [..., N] and their case-sampling covariance.

    "delong": S10 / m + S01 / n from the placement values (DeLong et al. 1988, eq. 5).
    "jackknife": (N - 1) / N * sum_k (theta_(k) - mean)(theta_(k) - mean)^T over leave-one-case-
    out AUCs (Efron 1982), which are closed form in the placement values: dropping positive i
    gives (m AUC - V10_i) / (m - 1), dropping negative j gives (n AUC - V01_j) / (n - 1).

    Returns:
      (auc with the leading shape of ratings, covariance [K, K] over the flattened rows).
    """
    if method not in COV_METHODS:
        raise ValueError(f"'cov_method' is {method!r}, not one of {COV_METHODS}")
    truth = check_truth(truth)
    ratings = check_scores(ratings, truth.size, "ratings")
    flat = ratings.reshape(-1, truth.size)
    auc, v10, v01 = delong_components(truth, flat)
    m, n = v10.shape[1], v01.shape[1]
    if method == "delong":
        cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    else:
        leave_out = np.concatenate(
            [(m * auc[:, None] - v10) / (m - 1), (n * auc[:, None] - v01) / (n - 1)], axis=1
        )
        deviation = leave_out - leave_out.mean(axis=1, keepdims=True)
        cov = (truth.size - 1) / truth.size * deviation @ deviation.T
    return auc.reshape(ratings.shape[:-1]), cov


def or_covariances(cov: np.ndarray, n_modalities: int, n_readers: int) -> dict[str, float]:
    """Var, Cov1, Cov2, Cov3 of the OR model: averages of the matching entries of `cov`,
    indexed by modality * n_readers + reader (Obuchowski & Rockette 1995)."""
    t, r = n_modalities, n_readers
    same_t = np.broadcast_to(np.eye(t, dtype=bool)[:, None, :, None], (t, r, t, r))
    same_r = np.broadcast_to(np.eye(r, dtype=bool)[None, :, None, :], (t, r, t, r))
    blocks = np.asarray(cov).reshape(t, r, t, r)

    def average(mask: np.ndarray) -> float:
        return float(blocks[mask].mean()) if mask.any() else 0.0

    return {
        "var": average(same_t & same_r),
        "cov1": average(~same_t & same_r),
        "cov2": average(same_t & ~same_r),
        "cov3": average(~same_t & ~same_r),
    }


def mean_squares(theta: np.ndarray) -> dict[str, float]:
    """Two-way ANOVA mean squares MS(T), MS(R), MS(T:R) of the AUC table theta [t, r]."""
    t, r = theta.shape
    grand = theta.mean()
    by_t, by_r = theta.mean(axis=1), theta.mean(axis=0)
    interaction = theta - by_t[:, None] - by_r[None, :] + grand
    return {
        "ms_t": float(r * np.sum((by_t - grand) ** 2) / (t - 1)),
        "ms_r": float(t * np.sum((by_r - grand) ** 2) / (r - 1)),
        "ms_tr": float(np.sum(interaction**2) / ((t - 1) * (r - 1))),
    }


def _t_test(
    analysis: str, estimate: float, std_err: float, df: float, alpha: float, null: float = 0.0
) -> ORTest:
    """1-df test of estimate = null and interval; df = inf gives the normal (z, chi-square) form."""
    # scipy.special's Student t functions: the same values as scipy.stats.t at a fraction of
    # its per-call cost, which matters in simulation studies of many small analyses.
    half = special.stdtrit(df, 1 - alpha / 2) * std_err
    shift = estimate - null
    t_value = shift / std_err if std_err > 0 else np.copysign(np.inf, shift)
    p_value = float(2 * special.stdtr(df, -abs(t_value))) if np.isfinite(t_value) else 0.0
    return ORTest(
        analysis=analysis,
        estimate=float(estimate),
        std_err=float(std_err),
        df=float(df),
        ci_low=float(estimate - half),
        ci_high=float(estimate + half),
        statistic=float(t_value**2),
        p_value=p_value,
    )


def _hillis_df(numerator: float, ms: float, df_ms: int) -> float:
    """Satterthwaite df of `numerator` whose random part is the mean square `ms` (Hillis 2008)."""
    return float(numerator**2 / (ms**2 / df_ms)) if ms > 0 else float("inf")


def single_modality(
    theta: Any, cov: Any, *, alpha: float = 0.05, null: float = 0.0
) -> dict[str, ORTest]:
    """OR analysis of the reader mean of one modality's figures of merit theta [r] (Hillis 2007),
    testing mean = `null` (0.5 for an AUC against chance, 0 for a difference).

    RRRC: Var(mean) = [MS(R) + r max(Cov2, 0)] / r on ddf_H = [MS(R) + r max(Cov2, 0)]^2 /
    [MS(R)^2 / (r - 1)]; FRRC: [Var + (r - 1) max(Cov2, 0)] / r, normal; RRFC: MS(R) / r on
    r - 1 df. Cov2 is truncated at 0 as Cov2 - Cov3 is in the two-modality analysis.
    """
    theta = np.asarray(theta, dtype=np.float64)
    r = theta.size
    if r < 2:
        raise ValueError("an OR analysis needs at least 2 readers")
    components = or_covariances(cov, 1, r)
    ms_r = float(np.var(theta, ddof=1))
    estimate = float(theta.mean())
    random = ms_r + r * max(components["cov2"], 0.0)
    fixed = components["var"] + (r - 1) * max(components["cov2"], 0.0)
    return {
        "rrrc": _t_test(
            "RRRC", estimate, np.sqrt(random / r), _hillis_df(random, ms_r, r - 1), alpha
        ),
        "frrc": _t_test("FRRC", estimate, np.sqrt(max(fixed, 0.0) / r), np.inf, alpha),
        "rrfc": _t_test("RRFC", estimate, np.sqrt(ms_r / r), r - 1, alpha),
    }


def or_modalities(
    truth: Any,
    ratings: Any,
    *,
    modalities: tuple[str, str] = ("0", "1"),
    cov_method: str = "jackknife",
    alpha: float = 0.05,
) -> MRMCResult:
    """OR comparison of two modalities read by the same readers on the same cases.

    Args:
      truth: [N] 0/1 labels.
      ratings: [2, r, N] ratings (any ordinal or continuous scale, higher = more suspicious).
      modalities: names of the two modalities; the difference is second minus first.
      cov_method: "jackknife" or "delong".
      alpha: 1 - confidence level of the intervals.
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    if ratings.ndim != 3 or ratings.shape[0] != 2:
        raise ValueError(f"'ratings' must be [2 modalities, readers, cases], got {ratings.shape}")
    t, r = ratings.shape[:2]
    if r < 2:
        raise ValueError("an OR analysis needs at least 2 readers")
    theta, cov = auc_covariance(truth, ratings, method=cov_method)
    comps = or_covariances(cov, t, r) | mean_squares(theta)
    difference = float(theta[1].mean() - theta[0].mean())
    between = max(comps["cov2"] - comps["cov3"], 0.0)
    random = comps["ms_tr"] + r * between
    fixed = comps["var"] - comps["cov1"] + (r - 1) * between
    df_tr = (t - 1) * (r - 1)
    block = cov.reshape(t, r, t, r)
    truth = check_truth(truth)
    return MRMCResult(
        comparison=f"{modalities[1]} - {modalities[0]}",
        cov_method=cov_method,
        n_readers=r,
        n_positive=int(truth.sum()),
        n_negative=int(truth.size - truth.sum()),
        auc={name: theta[i].tolist() for i, name in enumerate(modalities)},
        mean_auc={
            name: single_modality(theta[i], block[i, :, i, :], alpha=alpha, null=0.5)["rrrc"]
            for i, name in enumerate(modalities)
        },
        difference=difference,
        components=comps,
        rrrc=_t_test(
            "RRRC",
            difference,
            np.sqrt(2 * random / r),
            _hillis_df(random, comps["ms_tr"], df_tr),
            alpha,
        ),
        frrc=_t_test("FRRC", difference, np.sqrt(2 * max(fixed, 0.0) / r), np.inf, alpha),
        rrfc=_t_test("RRFC", difference, np.sqrt(2 * comps["ms_tr"] / r), df_tr, alpha),
    )


def or_model_vs_readers(
    truth: Any,
    model_scores: Any,
    reader_ratings: Any,
    *,
    cov_method: str = "jackknife",
    alpha: float = 0.05,
) -> MRMCResult:
    """OR comparison of a fixed model's AUC with the reader-averaged AUC of a random panel.

    Single-modality OR analysis of D_j = AUC_model - AUC_j (see the module docstring), with the
    covariance of the D_j from the joint case-sampling covariance of all readers and the model.

    Args:
      truth: [N] 0/1 labels.
      model_scores: [N] model scores.
      reader_ratings: [r, N] reader ratings on the same cases.
    """
    truth = check_truth(truth)
    model_scores = check_scores(model_scores, truth.size, "model_scores")
    reader_ratings = np.atleast_2d(check_scores(reader_ratings, truth.size, "reader_ratings"))
    r = reader_ratings.shape[0]
    auc, cov = auc_covariance(truth, np.vstack([reader_ratings, model_scores]), method=cov_method)
    # D = C theta with C = [-I_r | 1]: each row is model minus one reader.
    contrast = np.hstack([-np.eye(r), np.ones((r, 1))])
    tests = single_modality(contrast @ auc, contrast @ cov @ contrast.T, alpha=alpha)
    readers = single_modality(auc[:r], cov[:r, :r], alpha=alpha, null=0.5)["rrrc"]
    model = _t_test("FRRC", float(auc[r]), float(np.sqrt(cov[r, r])), np.inf, alpha, 0.5)
    d_components = or_covariances(contrast @ cov @ contrast.T, 1, r)
    return MRMCResult(
        comparison="model - readers",
        cov_method=cov_method,
        n_readers=r,
        n_positive=int(truth.sum()),
        n_negative=int(truth.size - truth.sum()),
        auc={"readers": auc[:r].tolist(), "model": [float(auc[r])]},
        mean_auc={"readers": readers, "model": model},
        difference=tests["rrrc"].estimate,
        components={
            "var_d": d_components["var"],
            "cov2_d": d_components["cov2"],
            "ms_r_d": float(np.var(contrast @ auc, ddof=1)),
        },
        **tests,
    )
