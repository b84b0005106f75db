"""Figures of merit (FOM) of reader studies and their case-sampling covariance, for complete,
split-plot and unbalanced designs.

A design is a ratings array [..., N] with NaN where a reader did not read a case, so a reader
(row) has its own case set S_a of n_a cases, and a FOM theta_a is computed on S_a alone:

* "auc": the empirical (Mann-Whitney) AUC;
* "sensitivity", "specificity": of the calls rating >= threshold (one threshold per row);
* "pauc": the un-standardized area under the empirical ROC curve for FPR in [0, max_fpr]
  (McClish 1989 before standardization; its chance value is max_fpr^2 / 2).

Covariances come from influence values u_a(k) on the cases each row read: the jackknife's
u_a(k) = (n_a - 1)(theta_a - theta_a(-k)) (Efron 1982), or for the AUC DeLong's placement
values, one set per truth class (DeLong et al. 1988). Two rows covary through the cases both
read (S_ab, n_ab of them):

    Cov(theta_a, theta_b) = n_ab / (n_a n_b) * sum_{k in S_ab} (u_a(k) - u_a)(u_b(k) - u_b) / (n_ab - 1)

with the means over S_ab, summed over the truth classes for DeLong. With every case read this is
exactly the usual jackknife and DeLong covariance (the Obuchowski-Rockette inputs of OR-DBM
MRMC, RJafroc and MRMCaov); rows that share no case are independent, as in the split-plot
designs of Obuchowski, Gallas & Hillis (2012), and a row's variance is its own jackknife or
DeLong variance. Pairs sharing a single case get covariance 0 (no sample covariance exists).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from sklearn import metrics

from busgen_jax.evaluation.statistics import check_fraction, check_truth, delong_components

FOMS = ("auc", "sensitivity", "specificity", "pauc")
COV_METHODS = ("jackknife", "delong")


@dataclasses.dataclass(frozen=True)
class FigureOfMerit:
    """Which FOM: `name` in FOMS; `max_fpr` bounds the partial AUC."""

    name: str = "auc"
    max_fpr: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in FOMS:
            raise ValueError(f"'fom' is {self.name!r}, not one of {FOMS}")
        check_fraction(self.max_fpr, "max_fpr")
        if self.max_fpr == 0:
            raise ValueError("'max_fpr' is 0: a partial AUC needs a positive FPR range")

    @property
    def chance(self) -> float:
        """The FOM of an uninformative reader (NaN for sensitivity and specificity)."""
        return {"auc": 0.5, "pauc": self.max_fpr**2 / 2}.get(self.name, float("nan"))

    @property
    def label(self) -> str:
        return f"pAUC (FPR <= {self.max_fpr:g})" if self.name == "pauc" else self.name


def as_fom(fom: str | FigureOfMerit) -> FigureOfMerit:
    return fom if isinstance(fom, FigureOfMerit) else FigureOfMerit(fom)


def check_ratings(truth: np.ndarray, ratings: Any, name: str = "ratings") -> np.ndarray:
    """Float ratings [..., N]; NaN marks a case a reader did not read. Every row must have read
    2 or more cases of each class, the least a case-sampling variance needs."""
    try:
        ratings = np.asarray(ratings, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"'{name}' is not a rectangular array of numbers ({e})") from e
    if ratings.ndim == 0 or ratings.shape[-1] != truth.size:
        got = ratings.shape[-1] if ratings.ndim else "no"
        raise ValueError(f"'{name}' has {got} cases, truth has {truth.size}")
    if np.isinf(ratings).any():
        raise ValueError(f"'{name}' contains infinite values (NaN marks an unread case)")
    read = np.isfinite(ratings).reshape(-1, truth.size)
    fewest = min((read & (truth == c)).sum(axis=1).min() for c in (0, 1))
    if fewest < 2:
        raise ValueError(
            f"'{name}': a reader has read {fewest} case(s) of one class; each needs at least 2 "
            "positive and 2 negative cases"
        )
    return ratings


def partial_auc(truth: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Area under the empirical ROC polyline (ties as diagonal segments) for FPR <= max_fpr."""
    fpr, tpr, _ = metrics.roc_curve(truth, scores, drop_intermediate=False)
    if max_fpr >= 1:
        return float(np.trapezoid(tpr, fpr))
    stop = np.searchsorted(fpr, max_fpr, side="right")
    # fpr is non-decreasing; the segment crossing max_fpr is interpolated linearly.
    lo, hi = fpr[stop - 1], fpr[stop]
    cut = tpr[stop - 1] + (tpr[stop] - tpr[stop - 1]) * (max_fpr - lo) / (hi - lo)
    return float(np.trapezoid(np.r_[tpr[:stop], cut], np.r_[fpr[:stop], max_fpr]))


def _placements(truth: np.ndarray, row: np.ndarray) -> tuple[float, np.ndarray]:
    """AUC and placement values [N] of one row on its read cases (NaN elsewhere)."""
    read = np.isfinite(row)
    auc, v10, v01 = delong_components(truth[read], row[read])
    values = np.full(truth.size, np.nan)
    values[read & (truth == 1)] = v10[0]
    values[read & (truth == 0)] = v01[0]
    return float(auc[0]), values


def _all_placements(truth, flat, read) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [K] and placement values [K, N]; one vectorized pass when every case was read."""
    if read.all():
        auc, v10, v01 = delong_components(truth, flat)
        values = np.empty_like(flat)
        values[:, truth == 1], values[:, truth == 0] = v10, v01
        return auc, values
    parts = [_placements(truth, row) for row in flat]
    return np.array([p[0] for p in parts]), np.stack([p[1] for p in parts])


def estimates(
    truth: Any,
    ratings: Any,
    fom: str | FigureOfMerit = "auc",
    thresholds: Any = None,
    *,
    cov_method: str = "jackknife",
) -> tuple[np.ndarray, np.ndarray]:
    """FOM of every row of `ratings` [..., N] (NaN = not read) and their covariance [K, K] over
    the K flattened rows (see the module docstring).

    Args:
      thresholds: sensitivity and specificity only: a rating >= threshold is a positive call;
        one value, or one per row (shape [...]).

    Returns:
      (theta with the leading shape of ratings, covariance [K, K]).
    """
    fom = as_fom(fom)
    if cov_method not in COV_METHODS:
        raise ValueError(f"'cov_method' is {cov_method!r}, not one of {COV_METHODS}")
    if cov_method == "delong" and fom.name != "auc":
        raise ValueError(f"'cov_method' delong is defined for the AUC only, not {fom.name}")
    truth = check_truth(truth, min_per_class=2)
    ratings = check_ratings(truth, ratings)
    flat = ratings.reshape(-1, truth.size)
    read = np.isfinite(flat)
    n_read = read.sum(axis=1).astype(np.float64)
    if fom.name in ("sensitivity", "specificity"):
        if thresholds is None:
            raise ValueError(f"'thresholds' are required for the {fom.name}")
        cut = np.broadcast_to(np.asarray(thresholds, np.float64), ratings.shape[:-1]).reshape(-1)
        theta, leave_out = _proportion(truth, flat, read, cut, fom.name)
    elif fom.name == "auc":
        theta, values = _all_placements(truth, flat, read)
        if cov_method == "delong":
            cov = sum(
                _shared_covariance(values - theta[:, None], read & (truth == c), counts)
                for c in (0, 1)
                for counts in [(read & (truth == c)).sum(axis=1).astype(np.float64)]
            )
            return theta.reshape(ratings.shape[:-1]), cov
        # Leaving out positive i gives (m AUC - V10_i) / (m - 1), negative j (n AUC - V01_j) / (n - 1).
        m = (read & (truth == 1)).sum(axis=1, keepdims=True)
        n = (read & (truth == 0)).sum(axis=1, keepdims=True)
        leave_out = np.where(
            truth == 1,
            (m * theta[:, None] - values) / (m - 1),
            (n * theta[:, None] - values) / (n - 1),
        )
    else:
        theta, leave_out = _partial_auc_leave_out(truth, flat, read, fom.max_fpr)
    influence = (n_read[:, None] - 1) * (theta[:, None] - leave_out)
    return theta.reshape(ratings.shape[:-1]), _shared_covariance(influence, read, n_read)


def _proportion(truth, flat, read, cut, name) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity or specificity of each row and its leave-one-case-out values (closed form:
    dropping a case of the other class leaves the proportion unchanged)."""
    label = 1 if name == "sensitivity" else 0
    hit = (flat >= cut[:, None]) == bool(label)
    mine = read & (truth == label)
    count = mine.sum(axis=1, keepdims=True)
    theta = (hit & mine).sum(axis=1) / count[:, 0]
    leave_out = np.where(mine, (count * theta[:, None] - hit) / (count - 1), theta[:, None])
    return theta, leave_out


def _partial_auc_leave_out(truth, flat, read, max_fpr) -> tuple[np.ndarray, np.ndarray]:
    """pAUC of each row and, by recomputation, without each of its cases: O(K N^2 log N), a few
    seconds for a study of tens of readers and hundreds of cases."""
    theta = np.empty(flat.shape[0])
    leave_out = np.full(flat.shape, np.nan)
    for a, row in enumerate(flat):
        cases = np.flatnonzero(read[a])
        theta[a] = partial_auc(truth[cases], row[cases], max_fpr)
        for k in cases:
            keep = cases[cases != k]
            leave_out[a, k] = partial_auc(truth[keep], row[keep], max_fpr)
    return theta, leave_out


def _shared_covariance(influence: np.ndarray, read: np.ndarray, n_rows: np.ndarray) -> np.ndarray:
    """n_ab / (n_a n_b) times the sample covariance of the influence values over shared cases."""
    mask = read.astype(np.float64)
    u = np.where(read, influence, 0.0)
    shared = mask @ mask.T
    sums = u @ mask.T  # sums[a, b]: sum of u_a over S_ab
    centred = u @ u.T - sums * sums.T / np.maximum(shared, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.where(shared > 1, centred / (shared - 1) * shared, 0.0)
    return cov / np.outer(n_rows, n_rows)
