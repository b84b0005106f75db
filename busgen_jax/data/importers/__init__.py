"""Importers that turn public breast-ultrasound datasets into schema records and shards.

    BUSGEN_SALT=<secret> busgen import --config=configs/import_data.py:busi --workdir=DIR \
        --config.source=/data/Dataset_BUSI_with_GT

Layouts: "busi", "busbra", "udiat" and "table" (a generic CSV, which also takes DICOM files).
Every importer reads and checks the whole source before anything is written, pseudonymises case
and patient ids with a salted HMAC, and splits by patient, stratified by pathology.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from busgen_jax.data import shards
from busgen_jax.data.importers.busbra import read_busbra
from busgen_jax.data.importers.busi import read_busi
from busgen_jax.data.importers.common import DatasetImportError, boxes_from_mask, pseudonym
from busgen_jax.data.importers.dicom import read_dicom
from busgen_jax.data.importers.records import DEFAULT_SPLIT_FRACTIONS
from busgen_jax.data.importers.splits import assign_splits
from busgen_jax.data.importers.table import read_table
from busgen_jax.data.importers.udiat import read_udiat

READERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "busi": read_busi,
    "busbra": read_busbra,
    "udiat": read_udiat,
    "table": read_table,
}

__all__ = [
    "READERS",
    "DatasetImportError",
    "assign_splits",
    "boxes_from_mask",
    "import_dataset",
    "pseudonym",
    "read_busbra",
    "read_busi",
    "read_dicom",
    "read_table",
    "read_udiat",
]


def import_dataset(
    layout: str,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    salt: str,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    device: str | None = None,
    name: str | None = None,
    allowed_roots: Sequence[str | os.PathLike] = (),
    duplicates: str = "refuse",
    **scan_options: Any,
) -> dict[str, Any]:
    """Reads a whole source dataset, then writes it as ArrayRecord shards plus a manifest.

    Nothing is written unless every file of the source was read and checked, and the writer
    stages shards so that a failure leaves `out_dir` without a manifest or shard.

    Args:
      layout: one of READERS ("busi", "busbra", "udiat", "table").
      source: dataset folder (or, for "table", the CSV file).
      out_dir: new output directory.
      salt: secret HMAC key of the case/patient pseudonyms; it is not stored.
      seed: seed of the patient-level split.
      split_fractions: (train, val, test) fractions of patients.
      device: device name overriding the one the source gives.
      name: dataset name in shard file names; defaults to `layout`.
      allowed_roots: folders besides `source` that the source's files may lie in.
      duplicates: "refuse" an image found twice (equal pixels), or "keep_first" and report.
      **scan_options: layout options (the table's label_columns and deidentified_columns).

    Returns:
      The manifest dict.
    """
    if layout not in READERS:
        raise DatasetImportError(f"layout: unknown layout {layout!r}; choose from {list(READERS)}")
    records = READERS[layout](
        source,
        salt=salt,
        seed=seed,
        split_fractions=split_fractions,
        device=device,
        allowed_roots=allowed_roots,
        duplicates=duplicates,
        **scan_options,
    )
    settings = {
        "layout": layout,
        "seed": seed,
        "split_fractions": list(split_fractions),
        "duplicates": duplicates,
    }
    return shards.write_dataset(records, out_dir, name=name or layout, extra={"importer": settings})
