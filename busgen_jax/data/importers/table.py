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
Any other column is kept in the record's `labels` (numbers parsed as int/float).

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
    check_inside,
    device_name,
    load_image,
    load_mask,
    parse_scalar,
    read_csv_rows,
    source_roots,
)
from busgen_jax.data.importers.dicom import is_dicom, read_dicom
from busgen_jax.data.importers.records import reader

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


def _existing(base: pathlib.Path, cell: str, where: str, roots: tuple) -> pathlib.Path:
    path = check_inside(base / cell, roots, where)
    if not path.is_file():
        raise DatasetImportError(f"{where}: names a missing file {path}")
    return path


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
    base: pathlib.Path, where: str, row: dict[str, str], device: str | None, roots: tuple
) -> RawCase:
    if not row["image_path"] or not row["pathology"]:
        raise DatasetImportError(f"{where}: empty image_path or pathology")
    image_path = _existing(base, row["image_path"], where, roots)
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
    mask_paths = [_existing(base, cell, where, roots) for cell in mask_cells]
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
            key: parse_scalar(value)
            for key, value in row.items()
            if value and key not in _KNOWN_COLUMNS and not key.startswith("birads_")
        },
        split=row.get("split") or None,
    )


def scan_table(
    source: str | os.PathLike, device: str | None = None, allowed_roots=()
) -> list[RawCase]:
    """Reads and checks every row of a CSV table and its files, without pseudonymising; a path
    that resolves out of the CSV's folder and `allowed_roots` (`..`, absolute, symlink) is
    refused."""
    csv_path = pathlib.Path(source)
    rows = read_csv_rows(csv_path, required=("image_path", "pathology"))
    roots = source_roots(csv_path.parent, allowed_roots)
    return [
        _row_case(csv_path.parent, f"{csv_path} line {line}", row, device, roots)
        for line, row in rows
    ]


read_table = reader(scan_table, "table")
