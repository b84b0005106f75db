"""Simulated reader panels from the Roe-Metz model, binned into BI-RADS categories.

The decision variable of reader j on case k in modality i follows the constrained
unequal-variance Roe & Metz model of Hillis (2012, Acad Radiol 19:1518-1528), which extends
Roe & Metz (1997, Acad Radiol 4:298-303):

    Y_ijk = delta_i d_k + s_k [R_j^(d) + (tau R)_ij^(d) + C_k + (tau C)_ik + (R C)_jk + E_ijk],

d_k = 1 for a malignant case, s_k = 1 for a benign one and 1/b for a malignant one (so each
diseased-case variance component is the non-diseased one times 1/b^2, and b is the binormal ROC
slope), with independent normal effects of variances var_r, var_tr (drawn separately for the
two truth states, as in Roe & Metz), var_c, var_tc, var_rc, var_error; var_c + var_tc + var_rc +
var_error = 1 as in Roe & Metz. A reader's expected AUC is about
Phi(delta / sqrt((1 + 1/b^2)(1 + var_r + var_tr))).

Each reader calls BI-RADS 1, 2, 3, 4A, 4B, 4C or 5 by cutting Y at six cut-points shifted by a
reader-specific offset (cautious or liberal readers) plus a small per-cut jitter; category 6
(proven cancer) is never called.

The defaults are chosen to match diagnostic breast-ultrasound reader studies: radiologists'
AUCs of about 0.8-0.9 (Shen et al., Nat Commun 2021, 12:5645, ten radiologists, mean AUROC
0.92 on a harder-than-average enriched set), and at the BI-RADS 4A cut sensitivities of about
0.8-0.95 and specificities of about 0.4-0.7 with visible reader-to-reader spread; US is less
sensitive for DCIS than for invasive cancer (Berg et al., Radiology 2004, 233:830-849), here a
smaller separation `dcis_shift` for DCIS cases. The test suite checks that a simulated
panel lands in these ranges.

For the phantom, `case_score` (its latent malignancy score) replaces the random case effect:
C_k is the score's logit standardized within each truth class times sqrt(var_c), so readers and
the model face the same hard and easy cases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special

from busgen_jax.evaluation import statistics
from busgen_jax.evaluation.reader_study import DEFAULT_MODALITY, ReaderStudy


@dataclasses.dataclass(frozen=True)
class RoeMetz:
    """Roe-Metz (Hillis 2012) parameters; delta of modality i is delta + i * modality_gain."""

    delta: float = 1.8
    modality_gain: float = 0.0
    b: float = 0.8
    var_r: float = 0.015
    var_tr: float = 0.005
    var_c: float = 0.3
    var_tc: float = 0.05
    var_rc: float = 0.15
    var_error: float = 0.5
    dcis_shift: float = 0.4
    # BI-RADS cut-points 1|2, 2|3, 3|4A, 4A|4B, 4B|4C, 4C|5 on the Y scale.
    cuts: tuple[float, ...] = (-1.3, -0.6, 0.0, 0.8, 1.5, 2.3)
    cut_sd: float = 0.25  # reader-specific offset of all cut-points
    cut_jitter: float = 0.08  # per reader and cut-point

    def __post_init__(self) -> None:
        for name in ("var_r", "var_tr", "var_c", "var_tc", "var_rc", "var_error", "cut_sd"):
            if getattr(self, name) < 0:
                raise ValueError(f"Roe-Metz '{name}' is {getattr(self, name)}, not >= 0")
        if self.b <= 0:
            raise ValueError(f"Roe-Metz 'b' is {self.b}, not > 0")
        if len(self.cuts) != 6 or list(self.cuts) != sorted(self.cuts):
            raise ValueError("Roe-Metz 'cuts' must be 6 increasing cut-points (1|2 ... 4C|5)")


def standardized_logit(truth: np.ndarray, score: Any) -> np.ndarray:
    """logit(score) standardized to mean 0, variance 1 within each truth class."""
    logit = special.logit(np.clip(np.asarray(score, np.float64), 1e-6, 1 - 1e-6))
    z = np.empty_like(logit)
    for label in (0, 1):
        part = logit[truth == label]
        spread = part.std()
        z[truth == label] = (part - part.mean()) / (spread if spread > 0 else 1.0)
    return z


def simulate_ratings(
    rng: np.random.Generator,
    truth: Any,
    params: RoeMetz,
    *,
    n_readers: int,
    n_modalities: int = 1,
    size: tuple[int, ...] = (),
    case_score: Any = None,
    dcis: Any = None,
) -> np.ndarray:
    """Continuous Roe-Metz decision variables [*size, modalities, readers, cases] (see the
    module docstring); `size` draws that many independent studies at once."""
    truth = statistics.check_truth(truth)
    t, r, n = n_modalities, n_readers, truth.size
    shape = (*size, t, r, n)

    def draw(var: float, *axes: int) -> np.ndarray:
        # axes: the sizes of (modality, reader, case) this effect varies over, 1 elsewhere.
        return np.sqrt(var) * rng.standard_normal((*size, *axes))

    # Reader effects drawn separately for each truth state (Roe & Metz 1997).
    reader = np.where(truth == 1, draw(params.var_r, 1, r, 1), draw(params.var_r, 1, r, 1))
    reader = reader + np.where(
        truth == 1, draw(params.var_tr, t, r, 1), draw(params.var_tr, t, r, 1)
    )
    if case_score is None:
        case = draw(params.var_c, 1, 1, n)
    else:
        case = np.sqrt(params.var_c) * standardized_logit(truth, case_score)
    noise = (
        case
        + draw(params.var_tc, t, 1, n)
        + draw(params.var_rc, 1, r, n)
        + draw(params.var_error, t, r, n)
    )
    scale = np.where(truth == 1, 1.0 / params.b, 1.0)
    delta = params.delta + params.modality_gain * np.arange(t).reshape(t, 1, 1)
    if dcis is not None:
        delta = delta - params.dcis_shift * np.asarray(dcis, bool)
    return np.broadcast_to(delta * truth + scale * (reader + noise), shape)


def birads_categories(rng: np.random.Generator, ratings: np.ndarray, params: RoeMetz) -> np.ndarray:
    """Ordinal BI-RADS scores 1..7 (1, 2, 3, 4A, 4B, 4C, 5) of ratings [..., readers, cases],
    with reader-specific cut-points (see the module docstring)."""
    lead, r = ratings.shape[:-3], ratings.shape[-2]
    offset = params.cut_sd * rng.standard_normal((*lead, 1, r, 1, 1))
    jitter = params.cut_jitter * rng.standard_normal((*lead, 1, r, 1, len(params.cuts)))
    cuts = np.sort(np.asarray(params.cuts) + offset + jitter, axis=-1)
    return 1 + np.sum(ratings[..., None] > cuts, axis=-1)


def simulate_panel(
    truth: Any,
    *,
    n_readers: int = 9,
    seed: int,
    modalities: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    case_score: Any = None,
    dcis: Any = None,
    params: RoeMetz | None = None,
) -> ReaderStudy:
    """A simulated BI-RADS reader study (marked simulated) of `n_readers` readers.

    Args:
      truth: [N] 0/1 labels.
      case_score: [N] latent malignancy score in (0, 1) that sets each case's difficulty (the
        phantom's), or None for a random case effect.
      dcis: [N] bool, malignant cases that are DCIS (less visible on ultrasound), or None.
      params: the Roe-Metz parameters (defaults: breast-ultrasound readers, see above).
    """
    params = params or RoeMetz()
    if n_readers < 2:
        raise ValueError(f"'n_readers' is {n_readers}: a reader panel needs at least 2")
    truth = statistics.check_truth(truth)
    if case_score is not None:
        case_score = statistics.check_scores(case_score, truth.size, "case_score", ndim=1)
    modalities = tuple(modalities or (DEFAULT_MODALITY,))
    rng = np.random.default_rng(seed)
    ratings = simulate_ratings(
        rng,
        truth,
        params,
        n_readers=n_readers,
        n_modalities=len(modalities),
        case_score=case_score,
        dcis=dcis,
    )
    scores = birads_categories(rng, ratings, params).astype(np.float64)
    cases = (
        tuple(case_ids)
        if case_ids is not None
        else tuple(f"case{i:04d}" for i in range(truth.size))
    )
    readers = tuple(f"sim_reader{j:02d}" for j in range(n_readers))
    return ReaderStudy(cases, readers, modalities, scores, truth, simulated=True)
