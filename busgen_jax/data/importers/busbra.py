"""BUS-BRA (Gomez-Flores et al., Med. Phys. 2024): 1,875 images of 1,064 patients.

Layout (`source` is the dataset folder):

    Images/bus_0001-l.png       image; the ID column of the label CSV plus ".png"
    Masks/mask_0001-l.png       lesion mask: the ID with "bus_" replaced by "mask_"
    bus_data.csv                one row per image

Columns read from `bus_data.csv` (header names matched case-insensitively):
  ID         image id, e.g. "bus_0001-l" (required)
  Case       patient number; images of one patient share it (required)
  Pathology  "benign" or "malignant", biopsy-proven (required)
  BIRADS     BI-RADS category, stored as birads["category"] (optional)
  Device     scanner name, used as the record's device unless `device` is given (optional)
Any other column (e.g. Histology, Side) is kept in the record's `labels`, except the image-size
and box columns (Width, Height, BBOX), which the importer derives from the pixels instead. The
dataset's own cross-validation fold files are not used: splits are made by patient (Case).
"""

from __future__ import annotations

import os
import pathlib

from busgen_jax.data.importers.common import (
    DatasetImportError,
    RawCase,
    check_inside,
    device_name,
    existing_file,
    load_image,
    load_mask,
    parse_scalar,
    read_csv_rows,
    source_roots,
)
from busgen_jax.data.importers.records import reader

BUSBRA_CSV = "bus_data.csv"
BUSBRA_PATHOLOGIES = ("benign", "malignant")
_READ_COLUMNS = ("id", "case", "pathology", "birads", "device")
_DERIVED_COLUMNS = ("width", "height", "bbox")


def _row_case(
    root: pathlib.Path, line: int, row: dict[str, str], device: str | None, roots: tuple
) -> RawCase:
    where = f"{root / BUSBRA_CSV} line {line}"
    image_id, patient = row["id"], row["case"]
    if not image_id or not patient:
        raise DatasetImportError(f"{where}: empty ID or Case")
    pathology = row["pathology"].lower()
    if pathology not in BUSBRA_PATHOLOGIES:
        raise DatasetImportError(
            f"{where}: Pathology {row['pathology']!r} is not one of {BUSBRA_PATHOLOGIES}"
        )
    image_path = root / "Images" / f"{image_id}.png"
    mask_path = root / "Masks" / f"{image_id.replace('bus_', 'mask_', 1)}.png"
    for path in (image_path, mask_path):
        existing_file(path, roots, where)
    image = load_image(image_path)
    labels = {
        key: parse_scalar(value)
        for key, value in row.items()
        if key not in _READ_COLUMNS + _DERIVED_COLUMNS and value
    }
    return RawCase(
        image=image,
        mask=load_mask([mask_path], image.shape, str(image_path)),
        pathology=pathology,
        device=device or device_name(row.get("device", "")),
        case_key=image_id,
        patient_key=patient,
        origin=f"{where} ({image_path.name})",
        birads={"category": parse_scalar(row["birads"])} if row.get("birads") else {},
        labels=labels,
    )


def scan_busbra(
    source: str | os.PathLike, device: str | None = None, allowed_roots=()
) -> list[RawCase]:
    """Reads and checks every BUS-BRA row, image and mask, without pseudonymising; an ID or
    symlink leading out of `source` and `allowed_roots` is refused."""
    root = pathlib.Path(source)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: BUS-BRA source directory not found")
    roots = source_roots(root, allowed_roots)
    csv_path = check_inside(root / BUSBRA_CSV, roots, str(root / BUSBRA_CSV))
    rows = read_csv_rows(csv_path, required=("id", "case", "pathology"))
    return [_row_case(root, line, row, device, roots) for line, row in rows]


read_busbra = reader(scan_busbra, "busbra")
