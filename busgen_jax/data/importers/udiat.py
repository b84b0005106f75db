"""UDIAT dataset B (Yap et al., IEEE JBHI 2018): 163 images, one per woman.

Layout (`source` is the dataset folder):

    original/000001.png    image
    GT/000001.png          lesion mask
    <labels>.csv           the only CSV file in `source`

The dataset ships its labels as an Excel sheet; export it to CSV (any name, one file) with a
header row. Columns (matched case-insensitively):
  image id   one of Image, Image_id, ID, Name: "000001", "1" or "000001.png" (required)
  type       one of Type, Class, Pathology: "benign" or "malignant" (required)
Other columns (e.g. the tumour type) are kept in the record's `labels`. Each image is its own
patient. Images come from a Siemens ACUSON Sequoia C512 scanner, the default device name.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from busgen_jax.data.importers.common import (
    DatasetImportError,
    RawCase,
    check_inside,
    existing_file,
    load_image,
    load_mask,
    parse_scalar,
    read_csv_rows,
    source_roots,
)
from busgen_jax.data.importers.records import reader

UDIAT_DEVICE = "Siemens-ACUSON-Sequoia-C512"
UDIAT_PATHOLOGIES = ("benign", "malignant")
_ID_COLUMNS = ("image", "image_id", "id", "name")
_TYPE_COLUMNS = ("type", "class", "pathology")


def _label_csv(root: pathlib.Path) -> pathlib.Path:
    found = sorted(path for path in root.glob("*.csv") if path.is_file())
    if len(found) != 1:
        raise DatasetImportError(
            f"{root}: need exactly one label CSV (an export of the dataset's xlsx), "
            f"found {[path.name for path in found]}"
        )
    return found[0]


def _pick_column(path: pathlib.Path, header: Sequence[str], choices: Sequence[str]) -> str:
    for name in choices:
        if name in header:
            return name
    raise DatasetImportError(f"{path}: no column among {choices}; header is {list(header)}")


def _image_stem(text: str) -> str:
    stem = text.removesuffix(".png").removesuffix(".PNG")
    return stem.zfill(6) if stem.isdigit() else stem


def scan_udiat(
    source: str | os.PathLike, device: str | None = None, allowed_roots=()
) -> list[RawCase]:
    """Reads and checks every UDIAT label row, image and mask, without pseudonymising; a name or
    symlink leading out of `source` and `allowed_roots` is refused."""
    root = pathlib.Path(source)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: UDIAT source directory not found")
    roots = source_roots(root, allowed_roots)
    csv_path = _label_csv(root)
    check_inside(csv_path, roots, str(csv_path))
    rows = read_csv_rows(csv_path, required=())
    header = list(rows[0][1])
    id_column = _pick_column(csv_path, header, _ID_COLUMNS)
    type_column = _pick_column(csv_path, header, _TYPE_COLUMNS)
    cases = []
    for line, row in rows:
        where = f"{csv_path} line {line}"
        stem = _image_stem(row[id_column])
        pathology = row[type_column].lower()
        if pathology not in UDIAT_PATHOLOGIES:
            raise DatasetImportError(
                f"{where}: {type_column} {row[type_column]!r} is not one of {UDIAT_PATHOLOGIES}"
            )
        image_path, mask_path = root / "original" / f"{stem}.png", root / "GT" / f"{stem}.png"
        for path in (image_path, mask_path):
            existing_file(path, roots, where)
        image = load_image(image_path)
        cases.append(
            RawCase(
                image=image,
                mask=load_mask([mask_path], image.shape, str(image_path)),
                pathology=pathology,
                device=device or UDIAT_DEVICE,
                case_key=stem,
                patient_key=stem,
                origin=f"{where} ({image_path.name})",
                labels={
                    key: parse_scalar(value)
                    for key, value in row.items()
                    if key not in (id_column, type_column) and value
                },
            )
        )
    return cases


read_udiat = reader(scan_udiat, "udiat")
