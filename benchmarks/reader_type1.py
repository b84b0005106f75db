"""Type-I error and power of the OR RRRC test (Hillis df) on Roe-Metz simulated reader studies.

    nice python -m benchmarks.reader_type1 [--replicates=2000]

Null studies have no modality difference: two modalities, 9 readers, 300 cases (120 malignant,
180 benign), the default breast-ultrasound Roe-Metz parameters (`evaluation.roe_metz`, Hillis
2012 constrained unequal-variance model, b = 0.8). The RRRC test at alpha = 0.05 should reject
about 5% of them; the table gives the rejection rate with its exact (Clopper-Pearson) 95%
interval, and the power against separation gains that raise the expected AUC by 0.02 and 0.05
(delta -> delta', with E[AUC] = Phi(delta / sqrt((1 + 1/b^2)(1 + var_r + var_tr)))). Rows:
continuous ratings with jackknife and DeLong covariances, ratings binned into 7 BI-RADS
categories with reader-specific cut-points, and a split-plot design (3 groups of 3 readers, each
group reading its own 100 cases). Studies are drawn in one vectorized call per row.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/scipy load their thread pools

import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.common import report  # noqa: E402
from busgen_jax.evaluation import mrmc, roe_metz, statistics  # noqa: E402

N_READERS, N_POSITIVE, N_NEGATIVE, ALPHA = 9, 120, 180, 0.05
AUC_EFFECTS = (0.02, 0.05)


def expected_auc(params: roe_metz.RoeMetz, delta: float) -> float:
    spread = (1 + 1 / params.b**2) * (1 + params.var_r + params.var_tr)
    return float(stats.norm.cdf(delta / np.sqrt(spread)))


def gain_for_auc_effect(params: roe_metz.RoeMetz, effect: float) -> float:
    """The separation gain that raises the expected reader AUC by `effect`."""
    spread = (1 + 1 / params.b**2) * (1 + params.var_r + params.var_tr)
    target = expected_auc(params, params.delta) + effect
    return float(np.sqrt(spread) * stats.norm.ppf(target) - params.delta)


def split_plot_mask(truth: np.ndarray, groups: int = 3) -> np.ndarray:
    """[readers, cases] True where read: reader group g reads the g-th third of each class."""
    mask = np.zeros((N_READERS, truth.size), bool)
    per_group = N_READERS // groups
    for label in (0, 1):
        cases = np.flatnonzero(truth == label)
        for g, part in enumerate(np.array_split(cases, groups)):
            mask[g * per_group : (g + 1) * per_group, part] = True
    return mask


def run_row(params, *, replicates, seed, cov_method="jackknife", birads=False, mask=None):
    """Rejection rate of RRRC at ALPHA over `replicates` studies, its CI, mean difference."""
    truth = np.r_[np.ones(N_POSITIVE), np.zeros(N_NEGATIVE)].astype(int)
    rng = np.random.default_rng(seed)
    ratings = roe_metz.simulate_ratings(
        rng, truth, params, n_readers=N_READERS, n_modalities=2, size=(replicates,)
    )
    if birads:
        ratings = roe_metz.birads_categories(rng, ratings, params).astype(np.float64)
    if mask is not None:
        ratings = np.where(mask, ratings, np.nan)
    start = time.process_time()
    results = [mrmc.or_modalities(truth, r, cov_method=cov_method).rrrc for r in ratings]
    seconds = (time.process_time() - start) / replicates
    rejected = sum(r.p_value < ALPHA for r in results)
    rate = statistics.binomial_ci(rejected, replicates)
    return rate, float(np.mean([r.estimate for r in results])), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    args = parser.parse_args()
    null = roe_metz.RoeMetz()
    gains = [gain_for_auc_effect(null, effect) for effect in AUC_EFFECTS]
    truth = np.r_[np.ones(N_POSITIVE), np.zeros(N_NEGATIVE)].astype(int)
    rows_spec = [
        ("factorial, continuous", {"cov_method": "jackknife"}),
        ("factorial, continuous", {"cov_method": "delong"}),
        ("factorial, 7 BI-RADS categories", {"birads": True}),
        ("split-plot 3 x (3 readers, 100 cases)", {"mask": split_plot_mask(truth)}),
    ]
    rows = []
    for k, (design, options) in enumerate(rows_spec):
        type1, null_diff, seconds = run_row(null, replicates=args.replicates, seed=k, **options)
        row = [
            design,
            options.get("cov_method", "jackknife"),
            args.replicates,
            f"{type1.estimate:.4f} ({type1.ci_low:.4f}-{type1.ci_high:.4f})",
            f"{null_diff:+.4f}",
        ]
        for e, gain in enumerate(gains):
            alternative = dataclasses.replace(null, modality_gain=gain)
            power, diff, _ = run_row(
                alternative, replicates=args.replicates, seed=100 * (e + 1) + k, **options
            )
            row.append(
                f"{power.estimate:.3f} ({power.ci_low:.3f}-{power.ci_high:.3f}), {diff:+.4f}"
            )
        rows.append([*row, f"{1000 * seconds:.1f}"])
    report(
        "Reader study: OR RRRC type-I error and power on Roe-Metz studies",
        f"benchmarks/reader_type1.py --replicates={args.replicates}: {N_READERS} readers, "
        f"{N_POSITIVE} malignant + {N_NEGATIVE} benign cases, 2 modalities, RoeMetz() defaults "
        f"(delta {null.delta}, b {null.b}, var_r {null.var_r}, var_tr {null.var_tr}, var_c "
        f"{null.var_c}, var_tc {null.var_tc}, var_rc {null.var_rc}, var_error {null.var_error}); "
        f"alpha {ALPHA}",
        [
            "design",
            "covariance",
            "studies per arm",
            "type-I error (95% CI)",
            "mean AUC diff, null",
            *(f"power (95% CI), mean diff at E[dAUC] = {effect}" for effect in AUC_EFFECTS),
            "CPU ms per analysis",
        ],
        rows,
        notes=(
            "alternatives: separation gains "
            + ", ".join(f"{g:.3f}" for g in gains)
            + f" in the second modality, expected reader AUC {expected_auc(null, null.delta):.3f}"
            + " -> "
            + ", ".join(f"{expected_auc(null, null.delta + g):.3f}" for g in gains)
            + "; intervals are exact binomial (Clopper-Pearson)"
        ),
    )


if __name__ == "__main__":
    main()
