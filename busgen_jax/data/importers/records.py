"""Turns `RawCase`s into schema records: checks, pseudonyms, splits, boxes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from busgen_jax.data import schema
from busgen_jax.data.importers.common import (
    DatasetImportError,
    RawCase,
    boxes_from_mask,
    pixel_digest,
    pseudonym,
)
from busgen_jax.data.importers.splits import assign_splits, check_fractions

DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
# What to do with one image found under two names (same decoded pixels): stop the import, or keep
# the first (in scan order) and report the rest. Either way no image lands in two splits.
DUPLICATE_POLICIES = ("refuse", "keep_first")


def drop_duplicates(cases: Sequence[RawCase], policy: str) -> list[RawCase]:
    """`cases` without repeated images (equal decoded pixels), as `policy` says.

    Raises:
      DatasetImportError: a duplicate under "refuse", naming both files; an unknown policy.
    """
    if policy not in DUPLICATE_POLICIES:
        raise DatasetImportError(f"duplicates: {policy!r} is not one of {DUPLICATE_POLICIES}")
    first: dict[str, str] = {}
    kept, dropped = [], []
    for case in cases:
        digest = pixel_digest(case.image)
        if digest not in first:
            first[digest] = case.origin
            kept.append(case)
        elif policy == "refuse":
            raise DatasetImportError(
                f"{case.origin}: the same image as {first[digest]} (equal pixels); remove one, "
                "or set config.duplicates='keep_first'"
            )
        else:
            dropped.append(f"{case.origin} (= {first[digest]})")
    if dropped:
        logging.warning("%d duplicate images left out: %s", len(dropped), "; ".join(dropped))
    return kept


def _check_unique_cases(cases: Sequence[RawCase]) -> None:
    seen: dict[str, str] = {}
    for case in cases:
        if case.case_key in seen:
            raise DatasetImportError(
                f"{case.origin}: duplicate case id {case.case_key!r}, "
                f"already used by {seen[case.case_key]}"
            )
        seen[case.case_key] = case.origin


def _preset_splits(cases: Sequence[RawCase]) -> dict[str, str]:
    """Patient -> split from splits given in the source, checked to be patient-level."""
    assignment: dict[str, tuple[str, str]] = {}
    for case in cases:
        if case.split not in schema.SPLITS:
            raise DatasetImportError(
                f"{case.origin}: split {case.split!r} is not one of {schema.SPLITS} (give a split "
                "for every case or for none)"
            )
        split, origin = assignment.setdefault(case.patient_key, (case.split, case.origin))
        if split != case.split:
            raise DatasetImportError(
                f"{case.origin}: its patient is in split {case.split!r} here but in {split!r} "
                f"for {origin}; a patient must not span splits"
            )
    return {patient: split for patient, (split, _) in assignment.items()}


def _computed_splits(
    cases: Sequence[RawCase], fractions: Sequence[float], seed: int
) -> dict[str, str]:
    pathologies: dict[str, set[str]] = {}
    for case in cases:
        pathologies.setdefault(case.patient_key, set()).add(case.pathology)
    # A patient's stratum is the set of its pathologies, so e.g. benign+malignant patients are
    # spread across splits like the rest.
    strata = {patient: "+".join(sorted(p)) for patient, p in pathologies.items()}
    return assign_splits(strata, fractions, seed)


def build_records(
    cases: Sequence[RawCase],
    *,
    source: str,
    namespace: str,
    salt: str,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    duplicates: str = "refuse",
) -> list[dict[str, Any]]:
    """Validates raw cases and returns schema records sorted by pseudonymous case id.

    Args:
      cases: everything read from the source.
      source: the source path, for error messages.
      namespace: dataset name mixed into pseudonyms so that equal raw ids of two datasets differ.
      salt: secret HMAC key for pseudonyms.
      seed: split seed (ignored when every case carries a split from the source).
      split_fractions: (train, val, test) patient fractions.
      duplicates: one of DUPLICATE_POLICIES, for images found under two names.
    """
    if not cases:
        raise DatasetImportError(f"{source}: no images found (empty dataset)")
    fractions = check_fractions(split_fractions)
    _check_unique_cases(cases)
    if any(case.split is not None for case in cases):
        patient_split = _preset_splits(cases)
    else:
        patient_split = _computed_splits(cases, fractions, seed)
    cases = drop_duplicates(cases, duplicates)

    records = []
    case_ids: dict[str, str] = {}
    for case in cases:
        case_id = pseudonym(case.case_key, salt=salt, namespace=f"{namespace}/case")
        if case_id in case_ids:
            raise DatasetImportError(
                f"{case.origin}: pseudonym collides with {case_ids[case_id]}; use another salt"
            )
        case_ids[case_id] = case.origin
        records.append(
            schema.make_record(
                case.image,
                mask=case.mask,
                boxes=None if case.mask is None else boxes_from_mask(case.mask),
                pathology=case.pathology,
                device=case.device,
                case_id=case_id,
                patient_id=pseudonym(case.patient_key, salt=salt, namespace=f"{namespace}/patient"),
                split=patient_split[case.patient_key],
                provenance={"source": "real", "dataset": namespace},
                birads=case.birads,
                labels=case.labels,
            )
        )
    return sorted(records, key=lambda record: record["case_id"])


def reader(
    scan: Callable[..., list[RawCase]], namespace: str
) -> Callable[..., list[dict[str, Any]]]:
    """A layout's `read_<layout>(source, *, salt, seed, split_fractions, device, allowed_roots,
    duplicates)`: its `scan(source, device, allowed_roots)` (read and check every file) followed
    by `build_records` (duplicates, pseudonyms, splits, schema)."""

    def read(
        source: str | os.PathLike,
        *,
        salt: str,
        seed: int = 0,
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        device: str | None = None,
        allowed_roots: Sequence[str | os.PathLike] = (),
        duplicates: str = "refuse",
        **scan_options: Any,
    ) -> list[dict[str, Any]]:
        return build_records(
            scan(source, device, allowed_roots, **scan_options),
            source=str(source),
            namespace=namespace,
            salt=salt,
            seed=seed,
            split_fractions=split_fractions,
            duplicates=duplicates,
        )

    read.__name__ = f"read_{namespace}"
    read.__doc__ = (
        f"Schema records of a {namespace} source: `scan_{namespace}` then `build_records`.\n\n"
        "salt keys the pseudonyms; seed and split_fractions fix the patient-level split; device "
        "overrides the device name the source gives; allowed_roots are folders besides the "
        "source's that files may be read from; duplicates is one of DUPLICATE_POLICIES; "
        "scan_options go to the layout's scan (the table's label_columns)."
    )
    return read
