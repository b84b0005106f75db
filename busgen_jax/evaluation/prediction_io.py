"""Per-case predictions as the clinical evaluation reads them: columns of `busgen predict` CSVs.

A predictions CSV (`classification.inference.write_csv`) has one row per case: `case_id`,
`patient_id`, `pathology`, `device`, `label` (1 = the task's positive class) and `probability`.
Here they are read back as columns, checked, named from the config's 'name=path' entries, and
the ground truth is taken from their `label` column, which every file must agree on.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from busgen_jax.core import errors


def read_predictions(path: str | os.PathLike) -> dict[str, list]:
    """Columns of a predictions CSV (`case_id`, `probability`, `label` ...).

    Raises JobError naming the file, line and field on a missing column, a probability that is
    not a finite number, or a repeated case_id.
    """
    if not os.path.isfile(path):
        raise errors.JobError(f"{path}: predictions file does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case_id", "probability"} - set(reader.fieldnames or ())
        if missing:
            raise errors.JobError(f"{path}: missing column(s) {sorted(missing)}")
        columns: dict[str, list] = {name: [] for name in reader.fieldnames}
        seen: dict[str, int] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            case = row["case_id"].strip()
            if case in seen:
                raise errors.JobError(f"{where}: case_id {case!r} repeats line {seen[case]}")
            seen[case] = reader.line_num
            try:
                probability = float(row["probability"])
            except ValueError:
                probability = math.nan
            if not math.isfinite(probability):
                raise errors.JobError(
                    f"{where}: field 'probability' {row['probability']!r} is not a finite number"
                )
            for name in columns:
                columns[name].append(row[name].strip() if name != "probability" else probability)
            columns["case_id"][-1] = case
    if not seen:
        raise errors.JobError(f"{path}: no predictions")
    return columns


def truth_from_labels(tables: Mapping[str, Mapping[str, Sequence]]) -> dict[str, int]:
    """case_id -> 0/1 from the `label` column of every table (1 = the task's positive class).

    Raises JobError on a table without the column, a label other than 0/1, or tables that
    disagree about a case.
    """
    truth: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, columns in tables.items():
        if "label" not in columns:
            raise errors.JobError(f"predictions of {name!r} have no 'label' column (the truth)")
        for case, label in zip(columns["case_id"], columns["label"], strict=True):
            if str(label) not in ("0", "1"):
                raise errors.JobError(
                    f"predictions of {name!r}, case {case!r}: field 'label' is "
                    f"{label!r}, not 0 or 1"
                )
            if truth.setdefault(case, int(label)) != int(label):
                raise errors.JobError(
                    f"case {case!r}: label {label} in {name!r} disagrees with {origin[case]!r}"
                )
            origin.setdefault(case, name)
    return truth


def aligned_scores(
    columns: Mapping[str, Sequence], case_ids: Sequence[str], name: str
) -> np.ndarray:
    """The `probability` column reordered to `case_ids`; raises naming the missing cases."""
    by_case = dict(zip(columns["case_id"], columns["probability"], strict=True))
    missing = [case for case in case_ids if case not in by_case]
    if missing:
        raise errors.JobError(
            f"predictions of {name!r} lack {len(missing)} evaluated case(s), e.g. {missing[:3]}"
        )
    return np.array([by_case[case] for case in case_ids], np.float64)


def named_paths(entries: Sequence[str], field: str) -> dict[str, str]:
    """model name -> path from the config's 'name=path' entries of `config.<field>`."""
    named = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise errors.JobError(f"config.{field}: {entry!r} is not 'name=path'")
        if name.strip() in named:
            raise errors.JobError(f"config.{field}: model name {name.strip()!r} repeats")
        named[name.strip()] = path.strip()
    return named
