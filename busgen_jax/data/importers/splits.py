"""Patient-level, pathology-stratified, seeded train/val/test assignment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from busgen_jax.data import schema
from busgen_jax.data.importers.common import DatasetImportError


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Validates (train, val, test) fractions: three non-negative numbers summing to 1."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(schema.SPLITS):
        raise DatasetImportError(
            f"split_fractions: need {len(schema.SPLITS)} values for {schema.SPLITS}, "
            f"got {fractions}"
        )
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DatasetImportError(
            f"split_fractions: must be non-negative and sum to 1, got {fractions}"
        )
    return fractions


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to `n`, closest to n * fractions (largest-remainder rounding).

    Ties go to the earlier split, so with (0.7, 0.15, 0.15) train gets the leftover patient.
    """
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(
    patient_strata: Mapping[str, str], fractions: Sequence[float], seed: int
) -> dict[str, str]:
    """Assigns every patient to one split, stratified by `patient_strata` values.

    Within each stratum (in sorted order) patients are sorted, permuted by a generator seeded with
    `seed`, and cut into consecutive runs of `split_counts` sizes. The result depends only on the
    set of (patient, stratum) pairs, the fractions and the seed, not on input order.

    Args:
      patient_strata: patient id -> stratum label (e.g. its pathologies joined).
      fractions: (train, val, test) fractions.
      seed: permutation seed.

    Returns:
      patient id -> split name.
    """
    fractions = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = {}
    for patient, stratum in patient_strata.items():
        by_stratum.setdefault(stratum, []).append(patient)
    assignment = {}
    for stratum in sorted(by_stratum):
        patients = sorted(by_stratum[stratum])
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        start = 0
        for split, count in zip(schema.SPLITS, split_counts(len(patients), fractions), strict=True):
            for patient in shuffled[start : start + count]:
                assignment[patient] = split
            start += count
    return assignment
