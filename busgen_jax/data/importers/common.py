"""Helpers shared by the importers: image and mask loading, boxes, pseudonyms, label CSVs.

Every failure raises `DatasetImportError` with a message that names the offending file (and row
or field), so a user can fix the source tree and run the import again. Files are read only from
inside the source folder (or roots the config allows): a CSV cell `../../x.png`, an absolute path
or a symlink that leads elsewhere is refused, not followed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.ndimage
from PIL import Image, UnidentifiedImageError

# 64 bits of HMAC output: collisions are negligible for any realistic dataset size and the
# importer still checks that pseudonyms are unique.
PSEUDONYM_HEX_CHARS = 16
# 8-connectivity, so that a lesion outline touching only at a corner stays one lesion.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


class DatasetImportError(ValueError):
    """A source dataset cannot be imported; the message names the file and the problem."""


@dataclasses.dataclass
class RawCase:
    """One image as read from a source layout, before pseudonymisation and split assignment.

    `case_key` and `patient_key` are the original identifiers; they never reach a record
    (records carry only their salted hashes). `origin` names the source file in error messages.
    """

    image: np.ndarray
    mask: np.ndarray | None
    pathology: str
    device: str
    case_key: str
    patient_key: str
    origin: str
    birads: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    split: str | None = None


def to_uint8_gray(array: np.ndarray, where: str) -> np.ndarray:
    """Converts a decoded 2-D or HxWxC image array to 2-D uint8 grayscale."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # ITU-R BT.601 luma, the weights PIL's convert("L") uses.
        luma = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if array.dtype == np.uint8:
            return np.round(luma).astype(np.uint8)
        array = luma
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetImportError(f"{where}: expected a 2-D image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    # Wider data (16-bit PNG, DICOM after LUTs): stretch its own range to 8 bits.
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def source_roots(root: str | os.PathLike, allowed: Sequence[str | os.PathLike] = ()) -> tuple:
    """The folders an import may read from: the source's own `root` and the `allowed` extras,
    with symlinks resolved."""
    return tuple(pathlib.Path(r).resolve() for r in (root, *allowed))


def check_inside(path: pathlib.Path, roots: Sequence[pathlib.Path], where: str) -> pathlib.Path:
    """`path` if it resolves (through `..` and symlinks) into one of `roots`; else an error."""
    resolved = pathlib.Path(path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise DatasetImportError(
            f"{where}: {path} resolves to {resolved}, outside the source folder {roots[0]} "
            "(list other folders to read from in config.allowed_roots)"
        )
    return pathlib.Path(path)


def existing_file(path: pathlib.Path, roots: Sequence[pathlib.Path], where: str) -> pathlib.Path:
    """`path` if it lies inside `roots` (`check_inside`) and is a file; else an error that says
    `where` names a missing file."""
    if not check_inside(path, roots, where).is_file():
        raise DatasetImportError(f"{where}: names a missing file {path}")
    return pathlib.Path(path)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads a PNG/JPEG/BMP/TIFF file (fully decoded) as 2-D uint8 grayscale.

    Images over PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, ~89 megapixels, far
    beyond any ultrasound frame) are refused before their pixels are decoded.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetImportError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # Decodes all pixel data now, so truncated files fail here.
                if image.mode in ("L", "RGB", "RGBA", "LA", "P", "1"):
                    array = np.asarray(image.convert("L"))
                else:
                    array = np.asarray(image)
    except UnidentifiedImageError as e:
        raise DatasetImportError(f"{path}: not a readable image file") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetImportError(
            f"{path}: refused as a possible decompression bomb ({str(e).split(' could')[0]})"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetImportError(f"{path}: cannot decode image ({e})") from e
    return to_uint8_gray(array, str(path))


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 of decoded pixels and shape: equal for one image saved under two names or
    formats, whatever the file bytes."""
    image = np.ascontiguousarray(image)
    return hashlib.sha256(f"{image.dtype.str}{image.shape}".encode() + image.tobytes()).hexdigest()


def load_mask(paths: Sequence[str | os.PathLike], shape: tuple[int, ...], image: str) -> np.ndarray:
    """Unions one or more lesion masks (non-zero = lesion) into one {0, 255} uint8 mask.

    Raises if any mask's size differs from the image's `shape`, naming both files.
    """
    union = np.zeros(shape, dtype=bool)
    for path in paths:
        mask = load_image(path)
        if mask.shape != tuple(shape):
            raise DatasetImportError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match "
                f"image {image} size {shape[1]}x{shape[0]}"
            )
        union |= mask > 0
    return union.astype(np.uint8) * 255


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """One normalized [x1, y1, x2, y2] box per 8-connected lesion component of `mask`.

    Coordinates are pixel edges divided by the image size: a component spanning columns
    c0..c1 (inclusive) gives x1 = c0 / W and x2 = (c1 + 1) / W, so x1 < x2 always holds.
    Boxes are ordered by component label (raster order of each component's first pixel).

    Returns:
      float64 array of shape [num_components, 4].
    """
    labels, count = scipy.ndimage.label(np.asarray(mask) > 0, structure=_CONNECTIVITY)
    height, width = labels.shape
    boxes = [
        [rows.start / height, cols.start / width, rows.stop / height, cols.stop / width]
        for rows, cols in scipy.ndimage.find_objects(labels)
    ]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(count, 4)
    return boxes[:, [1, 0, 3, 2]]  # (y, x) slices -> x1, y1, x2, y2


def pseudonym(value: str, *, salt: str, namespace: str) -> str:
    """Salted pseudonym of an identifier: HMAC-SHA256(salt, "namespace:value"), truncated.

    Without the salt, the original identifier cannot be recovered or tested for by hashing
    guesses; with it, the same source id always maps to the same pseudonym, so a data holder can
    re-link records to source files.
    """
    if not salt:
        raise DatasetImportError("salt: a non-empty secret salt is required for pseudonymisation")
    message = f"{namespace}:{value}".encode()
    return hmac.new(salt.encode(), message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def device_name(text: str) -> str:
    """A device string as a single token (whitespace becomes dashes), "unknown" when empty."""
    return "-".join(text.split()) or "unknown"


def parse_scalar(text: str) -> str | int | float:
    """Parses a CSV cell as int or float when it is a number, else returns it stripped."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv_rows(
    path: str | os.PathLike, required: Sequence[str]
) -> list[tuple[int, dict[str, str]]]:
    """Reads a CSV with a header row as (line number, row) pairs; keys lower-cased, cells stripped.

    Raises if the file is missing, has no data rows, or lacks a `required` column.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetImportError(f"{path}: label CSV not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetImportError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the CSV as "
            "UTF-8"
        ) from e
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DatasetImportError(f"{path}: empty CSV (no header row)")
        header = [name.strip().lower() for name in reader.fieldnames]
        missing = [name for name in required if name not in header]
        if missing:
            raise DatasetImportError(f"{path}: missing column(s) {missing}; header is {header}")
        rows = []
        for row in reader:
            if None in row:
                raise DatasetImportError(
                    f"{path}: row {reader.line_num} has more cells than the header"
                )
            cells = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
            if any(cells.values()):
                rows.append((reader.line_num, cells))
    if not rows:
        raise DatasetImportError(f"{path}: no data rows (empty dataset)")
    return rows
