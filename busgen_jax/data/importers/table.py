"""A generic CSV table of images: the way to import any dataset without a dedicated reader.

`source` is the CSV file; relative paths in it are relative to the CSV's folder. Columns (header
names matched case-insensitively):
  image_path   PNG/JPEG/BMP/TIFF or DICOM file (required)
  pathology    class label, e.g. normal/benign/malignant/dcis (required)
  mask_path    lesion mask; several masks of one image separated by ";" are unioned (optional)
  device       scanner name (optional)
  patient_id   patient identifier; images without one are their own patient (optional)
  case_id      image identifier, unique; defaults to image_path (optional)
  split        train/val/test for every row, to keep a split made elsewhere (optional)
  birads       BI-RADS category, stored as birads["category"] (optional)
  birads_<x>   BI-RADS descriptor x (e.g. birads_shape), stored as birads["x"] (optional)
Other columns are refused, unless listed in `label_columns`: then they are kept in the record's
`labels` (numbers parsed as int/float), after a check that neither the column's name nor any
value looks identifying (names, dates, record numbers, phone numbers, e-mail or street
addresses; `busgen_jax.privacy.identifiers`). A column listed in `deidentified_columns` is kept
without that check: list there only columns known to hold no identifiers.

DICOM rows are de-identified as `busgen_jax.data.importers.dicom` describes; their DICOM
PatientID, SOPInstanceUID and device fill in patient_id, case_id and device when those cells are
empty. Identifiers are only ever stored as salted pseudonyms.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from busgen_jax.data.importers.common import (
    DatasetImportError,
    RawCase,
    device_name,
    existing_file,
    load_image,
    load_mask,
    parse_scalar,
    read_csv_rows,
    source_roots,
)
from busgen_jax.data.importers.dicom import is_dicom, read_dicom
from busgen_jax.data.importers.records import reader
from busgen_jax.privacy import identifiers

_KNOWN_COLUMNS = (
    "image_path",
    "mask_path",
    "pathology",
    "device",
    "patient_id",
    "case_id",
    "split",
    "birads",
)


def _birads(row: dict[str, str]) -> dict[str, Any]:
    birads = {
        key[len("birads_") :]: parse_scalar(v)
        for key, v in row.items()
        if v and key.startswith("birads_")
    }
    if row.get("birads"):
        birads["category"] = parse_scalar(row["birads"])
    return birads


def _row_case(
    base: pathlib.Path,
    where: str,
    row: dict[str, str],
    device: str | None,
    roots: tuple,
    label_columns: frozenset[str] = frozenset(),
) -> RawCase:
    if not row["image_path"] or not row["pathology"]:
        raise DatasetImportError(f"{where}: empty image_path or pathology")
    image_path = existing_file(base / row["image_path"], roots, where)
    patient, case, source_device = row.get("patient_id"), row.get("case_id"), row.get("device")
    if is_dicom(image_path):
        dicom = read_dicom(image_path)
        image = dicom.pixels
        patient = patient or dicom.patient_key
        case = case or dicom.instance_key
        source_device = source_device or dicom.device
    else:
        image = load_image(image_path)
    case = case or row["image_path"]
    mask_cells = [cell.strip() for cell in row.get("mask_path", "").split(";") if cell.strip()]
    mask_paths = [existing_file(base / cell, roots, where) for cell in mask_cells]
    return RawCase(
        image=image,
        mask=load_mask(mask_paths, image.shape, str(image_path)) if mask_paths else None,
        pathology=row["pathology"].lower(),
        device=device or device_name(source_device or ""),
        case_key=case,
        patient_key=patient or f"case:{case}",
        origin=where,
        birads=_birads(row),
        labels={
            key: parse_scalar(value) for key, value in row.items() if value and key in label_columns
        },
        split=row.get("split") or None,
    )


def _label_columns(
    csv_path: pathlib.Path, rows, label_columns, deidentified_columns
) -> frozenset[str]:
    """The extra columns to keep; refuses unlisted ones and identifying names or values."""
    listed = {c.strip().lower() for c in label_columns}
    deidentified = {c.strip().lower() for c in deidentified_columns}
    header = list(rows[0][1]) if rows else []
    extra = [c for c in header if c not in _KNOWN_COLUMNS and not c.startswith("birads_")]
    unknown = [c for c in extra if c not in listed | deidentified]
    if unknown:
        raise DatasetImportError(
            f"{csv_path}: columns {unknown} are not table columns; to keep them as labels, list "
            "them in config.label_columns (they are checked for identifiers), else remove them"
        )
    for column in sorted(set(extra) - deidentified):
        if identifiers.identifying_column_name(column):
            raise DatasetImportError(
                f"{csv_path}: column {column!r} is named like an identifier; remove it, or list "
                "it in config.deidentified_columns if it holds no identifying value"
            )
        for line, row in rows:
            kind = identifiers.identifying_kind(row.get(column) or "")
            if kind:  # the value itself is never repeated
                raise DatasetImportError(
                    f"{csv_path} line {line}: column {column!r} holds what looks like {kind}; "
                    "labels must not identify patients (remove the column, or list it in "
                    "config.deidentified_columns if it is de-identified)"
                )
    return frozenset(extra)


def scan_table(
    source: str | os.PathLike,
    device: str | None = None,
    allowed_roots=(),
    *,
    label_columns=(),
    deidentified_columns=(),
) -> list[RawCase]:
    """Reads and checks every row of a CSV table and its files, without pseudonymising; a path
    that resolves out of the CSV's folder and `allowed_roots` (`..`, absolute, symlink) is
    refused, and so are extra columns not in `label_columns` and identifying label values."""
    csv_path = pathlib.Path(source)
    rows = read_csv_rows(csv_path, required=("image_path", "pathology"))
    labels = _label_columns(csv_path, rows, label_columns, deidentified_columns)
    roots = source_roots(csv_path.parent, allowed_roots)
    return [
        _row_case(csv_path.parent, f"{csv_path} line {line}", row, device, roots, labels)
        for line, row in rows
    ]


read_table = reader(scan_table, "table")
