"""Multi-reader multi-case (MRMC) analysis: Obuchowski-Rockette (OR) with Hillis's df.

The OR model (Obuchowski & Rockette 1995) writes reader j's figure of merit (FOM) in modality i
as theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij, with error covariances Var, Cov1 (same
reader, different modality), Cov2 (different reader, same modality), Cov3 (both different),
estimated from the case sample (`fom.estimates`: jackknife or DeLong, any design). For t >= 2
modalities and r readers, as in OR-DBM MRMC, RJafroc and MRMCaov (Hillis 2007, 2008; Hillis
2014 for the fixed-factor variants):

* RRRC, random readers and random cases: F = MS(T) / [MS(T:R) + r max(Cov2 - Cov3, 0)] on
  (t - 1, ddf_H), ddf_H = [MS(T:R) + r max(Cov2 - Cov3, 0)]^2 / {MS(T:R)^2 / [(t - 1)(r - 1)]}.
* FRRC, fixed readers: chi2 = (t - 1) MS(T) / [Var - Cov1 + (r - 1) max(Cov2 - Cov3, 0)] on
  t - 1 df; or, as DBM software reports it, F = chi2 / (t - 1) on (t - 1, (t - 1)(c - 1)) df
  for c cases (`fixed_reader_test="f"`).
* RRFC, fixed cases: F = MS(T) / MS(T:R) on (t - 1, (t - 1)(r - 1)) df.

Pairwise contrasts use the same error terms (the t = 2 analysis is its one contrast). In a
split-plot or unbalanced design each reader's FOM is computed on the cases it read and the
covariances average over all reader pairs, those sharing no case adding 0: the OR expectations
E[MS(T)], E[MS(T:R)] are invariant under permuting readers and modalities, so they depend on the
covariance matrix only through these averages, whatever the design.

The model against a reader panel follows the single-modality OR analysis of the differences
D_j = FOM_model - FOM_j (Hillis 2007, single test; Chen, Gong & Gallas 2018, "paradigm for
comparing a fixed algorithm with random readers"; RJafroc's "1T-RRRC" CAD-vs-radiologists
method): the two-modality OR analysis with the model copied into every reader's slot.

A contrast whose standard error is 0 is no evidence of a difference: p = 1 when the estimate is
0 too, else NaN with a warning; never F = inf and p = 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special, stats

from busgen_jax.evaluation import fom as fom_lib
from busgen_jax.evaluation.statistics import Result, check_alpha, check_scores, check_truth

FIXED_READER_TESTS = ("chi2", "f")


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
class OverallTest(Result):
    """The test of equal modalities: F on (df_num, df_den); df_den = inf is the chi-square test
    of chi2 = df_num * statistic on df_num df (OR's fixed-reader form)."""

    analysis: str
    statistic: float
    df_num: float
    df_den: float
    p_value: float


@dataclasses.dataclass(frozen=True)
class Contrast(Result):
    """One pairwise contrast `comparison` (second minus first) under the three analyses."""

    comparison: str
    rrrc: ORTest
    frrc: ORTest
    rrfc: ORTest


@dataclasses.dataclass(frozen=True)
class MRMCResult(Result):
    """An OR analysis. `reader_fom` holds each arm's per-reader FOM, `mean_fom` their reader
    means with RRRC intervals (tested against chance for the AUC and pAUC); `overall` tests
    equality of all arms, `contrasts` every pair; `rrrc`, `frrc`, `rrfc` are the first contrast
    (`difference`), the whole comparison when there are two arms. `per_reader` are single-reader
    tests of the first contrast with that reader's own variance (fixed cases' normal test).
    `components` holds Var, Cov1-3, the mean squares and the reader variance components
    var_r and var_tr (method of moments, see `or_components`)."""

    comparison: str
    fom: str
    cov_method: str
    design: str
    n_readers: int
    n_cases: int
    n_positive: int
    n_negative: int
    reader_ids: list[str]
    reader_fom: dict[str, list[float]]
    mean_fom: dict[str, ORTest]
    difference: float
    components: dict[str, float]
    overall: dict[str, OverallTest]
    contrasts: list[Contrast]
    per_reader: list[ORTest]
    rrrc: ORTest
    frrc: ORTest
    rrfc: ORTest


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
    """Two-way ANOVA mean squares MS(T), MS(R), MS(T:R) of the FOM table theta [t, r]."""
    t, r = theta.shape
    by_t, by_r = theta.mean(axis=1), theta.mean(axis=0)
    # Each margin is centred on its own mean: identical modalities then give MS(T) = 0
    # exactly, not rounding residue that a near-zero error term would turn into an F of 4.
    interaction = theta - by_t[:, None] - by_r[None, :] + theta.mean()
    return {
        "ms_t": float(r * np.sum((by_t - by_t.mean()) ** 2) / (t - 1)) if t > 1 else float("nan"),
        "ms_r": float(t * np.sum((by_r - by_r.mean()) ** 2) / (r - 1)),
        "ms_tr": float(np.sum(interaction**2) / ((t - 1) * (r - 1))) if t > 1 else float("nan"),
    }


def or_components(theta: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """Covariances, mean squares and method-of-moments reader components of theta [t, r]:
    E[MS(T:R)] = var_tr + Var - Cov1 - Cov2 + Cov3 and
    E[MS(R)] = t var_r + var_tr + Var + (t - 1) Cov1 - Cov2 - (t - 1) Cov3
    (one modality: E[MS(R)] = var_r + Var - Cov2)."""
    t, r = theta.shape
    c = or_covariances(cov, t, r) | mean_squares(theta)
    if t > 1:
        c["var_tr"] = c["ms_tr"] - c["var"] + c["cov1"] + c["cov2"] - c["cov3"]
        error = c["var"] + (t - 1) * c["cov1"] - c["cov2"] - (t - 1) * c["cov3"]
        c["var_r"] = (c["ms_r"] - c["var_tr"] - error) / t
    else:
        c["var_r"] = c["ms_r"] - c["var"] + c["cov2"]
    return c


def _t_test(
    analysis: str, estimate: float, std_err: float, df: float, alpha: float, null: float = 0.0
) -> ORTest:
    """1-df test of estimate = null and interval; df = inf gives the normal (z, chi-square) form."""
    # scipy.special's Student t functions: the same values as scipy.stats.t at a fraction of
    # its per-call cost, which matters in simulation studies of many small analyses.
    half = special.stdtrit(df, 1 - alpha / 2) * std_err
    shift = estimate - null
    if std_err > 0 and np.isfinite(std_err):
        t_value = shift / std_err
        p_value = float(2 * special.stdtr(df, -abs(t_value)))
    elif std_err == 0 and shift == 0:
        t_value, p_value = 0.0, 1.0
    else:
        t_value, p_value = float("nan"), float("nan")
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


def _f_test(
    analysis: str, numerator: float, denominator: float, df1: float, df2: float
) -> OverallTest:
    if denominator > 0 and np.isfinite(denominator):
        statistic = numerator / denominator
        p_value = (
            float(special.fdtrc(df1, df2, statistic))
            if np.isfinite(df2)
            else float(stats.chi2.sf(statistic * df1, df1))
        )
    elif numerator == 0:
        statistic, p_value = 0.0, 1.0
    else:
        statistic, p_value = float("nan"), float("nan")
    return OverallTest(analysis, float(statistic), float(df1), float(df2), p_value)


def _warn_if_undefined(test: ORTest) -> None:
    if np.isnan(test.p_value):
        warnings.warn(
            f"{test.analysis} test undefined (standard error {test.std_err} with difference "
            f"{test.estimate}): p = NaN",
            stacklevel=3,
        )


def _hillis_df(numerator: float, ms: float, df_ms: float) -> float:
    """Satterthwaite df of `numerator` whose random part is the mean square `ms` (Hillis 2008)."""
    return float(numerator**2 / (ms**2 / df_ms)) if ms > 0 else float("inf")


def _fixed_df(test: str, df_num: int, n_cases: int) -> float:
    if test not in FIXED_READER_TESTS:
        raise ValueError(f"'fixed_reader_test' is {test!r}, not one of {FIXED_READER_TESTS}")
    return float("inf") if test == "chi2" else float(df_num * (n_cases - 1))


def single_modality(
    theta: Any,
    cov: Any,
    *,
    alpha: float = 0.05,
    null: float = 0.0,
    fixed_reader_test: str = "chi2",
    n_cases: int = 0,
) -> dict[str, ORTest]:
    """OR analysis of the reader mean of one modality's FOMs theta [r] (Hillis 2007), testing
    mean = `null` (0.5 for an AUC against chance, 0 for a difference).

    RRRC: Var(mean) = [MS(R) + r max(Cov2, 0)] / r on ddf_H = [MS(R) + r max(Cov2, 0)]^2 /
    [MS(R)^2 / (r - 1)]; FRRC: [Var + (r - 1) max(Cov2, 0)] / r, normal (or t on c - 1 df);
    RRFC: MS(R) / r on r - 1 df. Cov2 is truncated at 0 as Cov2 - Cov3 is with two modalities.
    """
    alpha = check_alpha(alpha)
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
            "RRRC", estimate, np.sqrt(random / r), _hillis_df(random, ms_r, r - 1), alpha, null
        ),
        "frrc": _t_test(
            "FRRC",
            estimate,
            np.sqrt(max(fixed, 0.0) / r),
            _fixed_df(fixed_reader_test, 1, n_cases),
            alpha,
            null,
        ),
        "rrfc": _t_test("RRFC", estimate, np.sqrt(ms_r / r), r - 1, alpha, null),
    }


def or_analysis(
    theta: Any,
    cov: Any,
    *,
    modalities: Sequence[str],
    alpha: float = 0.05,
    fixed_reader_test: str = "chi2",
    n_cases: int = 0,
) -> tuple[dict[str, float], dict[str, OverallTest], list[Contrast]]:
    """Components, overall F tests and pairwise contrasts of theta [t, r] with covariance
    [t r, t r] (see the module docstring)."""
    theta = np.asarray(theta, dtype=np.float64)
    t, r = theta.shape
    if t < 2 or r < 2:
        raise ValueError(f"an OR comparison needs 2+ modalities and 2+ readers, got {t} and {r}")
    c = or_components(theta, cov)
    between = max(c["cov2"] - c["cov3"], 0.0)
    random = c["ms_tr"] + r * between
    fixed = max(c["var"] - c["cov1"] + (r - 1) * between, 0.0)
    df_tr = (t - 1) * (r - 1)
    ddf_h = _hillis_df(random, c["ms_tr"], df_tr)
    ddf_fixed = _fixed_df(fixed_reader_test, t - 1, n_cases)
    overall = {
        "rrrc": _f_test("RRRC", c["ms_t"], random, t - 1, ddf_h),
        "frrc": _f_test("FRRC", c["ms_t"], fixed, t - 1, ddf_fixed),
        "rrfc": _f_test("RRFC", c["ms_t"], c["ms_tr"], t - 1, df_tr),
    }
    means = theta.mean(axis=1)
    contrasts = []
    for a, b in itertools.combinations(range(t), 2):
        d = float(means[b] - means[a])
        contrasts.append(
            Contrast(
                comparison=f"{modalities[b]} - {modalities[a]}",
                rrrc=_t_test("RRRC", d, np.sqrt(2 * random / r), ddf_h, alpha),
                frrc=_t_test("FRRC", d, np.sqrt(2 * fixed / r), ddf_fixed, alpha),
                rrfc=_t_test("RRFC", d, np.sqrt(2 * c["ms_tr"] / r), df_tr, alpha),
            )
        )
    return c, overall, contrasts


def _case_counts(truth: np.ndarray, ratings: np.ndarray) -> dict[str, Any]:
    """The design and the numbers of cases read (any reader) of ratings [..., N]."""
    finite = np.isfinite(ratings)
    read = finite.reshape(-1, truth.size).any(axis=0)
    return {
        "design": "factorial" if finite.all() else "split-plot/unbalanced",
        "n_cases": int(read.sum()),
        "n_positive": int(truth[read].sum()),
        "n_negative": int((1 - truth[read]).sum()),
    }


def _reader_ids(reader_ids: Sequence[str] | None, r: int) -> list[str]:
    ids = [str(j) for j in reader_ids] if reader_ids is not None else [str(j) for j in range(r)]
    if len(ids) != r:
        raise ValueError(f"'reader_ids' names {len(ids)} readers, the ratings have {r}")
    return ids


def or_modalities(
    truth: Any,
    ratings: Any,
    *,
    modalities: Sequence[str] | None = None,
    fom: str | fom_lib.FigureOfMerit = "auc",
    thresholds: Any = None,
    cov_method: str = "jackknife",
    alpha: float = 0.05,
    fixed_reader_test: str = "chi2",
    reader_ids: Sequence[str] | None = None,
) -> MRMCResult:
    """OR comparison of t >= 2 modalities read by the same r >= 2 readers.

    Args:
      truth: [N] 0/1 labels.
      ratings: [t, r, N] ratings (any ordinal or continuous scale, higher = more suspicious);
        NaN where a reader did not read a case (split-plot and unbalanced designs).
      modalities: names of the t modalities; each contrast is a later minus an earlier one.
      fom: "auc", "sensitivity", "specificity", "pauc" or a `fom.FigureOfMerit`.
      thresholds: sensitivity and specificity: rating >= threshold is a positive call.
      cov_method: "jackknife" or "delong" (AUC only).
      alpha: 1 - confidence level of the intervals.
      fixed_reader_test: "chi2" (OR) or "f" (F on (t - 1)(c - 1) denominator df, as DBM).
    """
    alpha = check_alpha(alpha)
    fom = fom_lib.as_fom(fom)
    truth = check_truth(truth, min_per_class=2)
    ratings = fom_lib.check_ratings(truth, ratings)
    if ratings.ndim != 3 or ratings.shape[0] < 2 or ratings.shape[1] < 2:
        raise ValueError(
            f"'ratings' must be [modalities >= 2, readers >= 2, cases], got {ratings.shape}"
        )
    t, r = ratings.shape[:2]
    names = [str(m) for m in (modalities if modalities is not None else range(t))]
    if len(names) != t:
        raise ValueError(f"'modalities' names {len(names)} modalities, the ratings have {t}")
    theta, cov = fom_lib.estimates(truth, ratings, fom, thresholds, cov_method=cov_method)
    counts = _case_counts(truth, ratings)
    components, overall, contrasts = or_analysis(
        theta,
        cov,
        modalities=names,
        alpha=alpha,
        fixed_reader_test=fixed_reader_test,
        n_cases=counts["n_cases"],
    )
    block = cov.reshape(t, r, t, r)
    ids = _reader_ids(reader_ids, r)
    first = contrasts[0]
    _warn_if_undefined(first.rrrc)
    per_reader = [
        _t_test(
            f"reader {ids[j]}",
            theta[1, j] - theta[0, j],
            np.sqrt(max(block[1, j, 1, j] + block[0, j, 0, j] - 2 * block[0, j, 1, j], 0.0)),
            np.inf,
            alpha,
        )
        for j in range(r)
    ]
    return MRMCResult(
        comparison=first.comparison if t == 2 else "all modalities",
        fom=fom.label,
        cov_method=cov_method,
        n_readers=r,
        **counts,
        reader_ids=ids,
        reader_fom={name: theta[i].tolist() for i, name in enumerate(names)},
        mean_fom={
            name: single_modality(theta[i], block[i, :, i, :], alpha=alpha, null=fom.chance)["rrrc"]
            for i, name in enumerate(names)
        },
        difference=first.rrrc.estimate,
        components=components,
        overall=overall,
        contrasts=contrasts,
        per_reader=per_reader,
        rrrc=first.rrrc,
        frrc=first.frrc,
        rrfc=first.rrfc,
    )


def _warn_if_model_among_readers(model: np.ndarray, readers: np.ndarray, ids: list[str]) -> None:
    """A reader whose ratings rank its cases exactly as the model does is most likely the model
    itself listed as a reader, which biases the reader mean towards the model."""
    for j, row in enumerate(readers):
        read = np.isfinite(row)
        if np.array_equal(stats.rankdata(row[read]), stats.rankdata(model[read])):
            warnings.warn(
                f"reader {ids[j]!r} ranks every case exactly as the model does: is the model "
                "listed among the readers?",
                stacklevel=3,
            )


def or_model_vs_readers(
    truth: Any,
    model_scores: Any,
    reader_ratings: Any,
    *,
    fom: str | fom_lib.FigureOfMerit = "auc",
    reader_thresholds: Any = None,
    model_thresholds: Any = None,
    cov_method: str = "jackknife",
    alpha: float = 0.05,
    fixed_reader_test: str = "chi2",
    reader_ids: Sequence[str] | None = None,
) -> MRMCResult:
    """OR comparison of a fixed model's FOM with the reader-averaged FOM of a random panel.

    Single-modality OR analysis of D_j = FOM_model - FOM_j (see the module docstring), with the
    covariance of the D_j from the joint case-sampling covariance of all readers and the model.

    Args:
      truth: [N] 0/1 labels.
      model_scores: [N] model scores.
      reader_ratings: [r, N] reader ratings on the same cases (NaN: not read).
      reader_thresholds, model_thresholds: sensitivity and specificity FOMs: a rating >= the
        threshold is a positive call; the model's may be one per reader ([r], e.g. the model at
        each reader's specificity), so D_j compares the model at reader j's operating point.
    """
    alpha = check_alpha(alpha)
    fom = fom_lib.as_fom(fom)
    truth = check_truth(truth, min_per_class=2)
    model_scores = check_scores(model_scores, truth.size, "model_scores", ndim=1)
    reader_ratings = fom_lib.check_ratings(truth, reader_ratings, "reader_ratings")
    if reader_ratings.ndim != 2:
        raise ValueError(f"'reader_ratings' must be [readers, cases], got {reader_ratings.shape}")
    r = reader_ratings.shape[0]
    ids = _reader_ids(reader_ids, r)
    _warn_if_model_among_readers(model_scores, reader_ratings, ids)
    # The model is read wherever reader j read, so D_j is a difference on the same cases.
    model_rows = np.where(np.isfinite(reader_ratings), model_scores, np.nan)
    thresholds = None
    if fom.name in ("sensitivity", "specificity"):
        if reader_thresholds is None or model_thresholds is None:
            raise ValueError(f"the {fom.name} needs 'reader_thresholds' and 'model_thresholds'")
        thresholds = np.concatenate(
            [
                np.broadcast_to(np.asarray(x, np.float64), (r,))
                for x in (reader_thresholds, model_thresholds)
            ]
        )
    theta, cov = fom_lib.estimates(
        truth, np.vstack([reader_ratings, model_rows]), fom, thresholds, cov_method=cov_method
    )
    contrast = np.hstack([-np.eye(r), np.eye(r)])  # D_j = model_j - reader_j
    d, d_cov = contrast @ theta, contrast @ cov @ contrast.T
    counts = _case_counts(truth, reader_ratings)
    tests = single_modality(
        d, d_cov, alpha=alpha, fixed_reader_test=fixed_reader_test, n_cases=counts["n_cases"]
    )
    readers = single_modality(theta[:r], cov[:r, :r], alpha=alpha, null=fom.chance)["rrrc"]
    # The model is fixed: only case sampling varies its mean over the reader-matched rows.
    model = _t_test(
        "FRRC", theta[r:].mean(), np.sqrt(max(cov[r:, r:].mean(), 0.0)), np.inf, alpha, fom.chance
    )
    _warn_if_undefined(tests["rrrc"])
    per_reader = [
        _t_test(f"reader {ids[j]}", d[j], np.sqrt(max(d_cov[j, j], 0.0)), np.inf, alpha)
        for j in range(r)
    ]
    components = {f"{k}_d": v for k, v in or_components(d[None], d_cov).items() if k != "ms_t"}
    return MRMCResult(
        comparison="model - readers",
        fom=fom.label,
        cov_method=cov_method,
        n_readers=r,
        **counts,
        reader_ids=ids,
        reader_fom={"readers": theta[:r].tolist(), "model": theta[r:].tolist()},
        mean_fom={"readers": readers, "model": model},
        difference=tests["rrrc"].estimate,
        components=components,
        overall={
            name: OverallTest(test.analysis, test.statistic, 1.0, test.df, test.p_value)
            for name, test in tests.items()
        },
        contrasts=[Contrast("model - readers", **tests)],
        per_reader=per_reader,
        **tests,
    )
