"""DICOM ultrasound images: 8-bit grayscale pixels plus the few header fields an import needs.

De-identification is by allow-list. From a DICOM file the importer takes only:
  * the pixel data, converted to 8-bit grayscale;
  * the device name, from Manufacturer and ManufacturerModelName;
  * PatientID and SOPInstanceUID, which are used only as inputs to salted HMAC-SHA256
    pseudonyms (see `common.pseudonym`) and never stored.
No other tag (names, birth date, addresses, accession numbers, institution, physicians, dates and
times, private tags) and not the file name is carried into a record.

What this does NOT do: text burned into the pixels (the banner with patient name, date or
hospital that many scanners draw on the image) is not detected or removed; crop or mask it before
importing, and check images marked BurnedInAnnotation = YES (a warning is logged for them). The
pseudonyms protect identifiers only as long as the salt stays secret; whoever holds the salt can
link records back to source ids.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from busgen_jax.data.importers.common import DatasetImportError, device_name, to_uint8_gray

DICOM_SUFFIXES = (".dcm", ".dicom")
_GRAY = ("MONOCHROME1", "MONOCHROME2")
# pydicom's pixel_array already converts the YBR colour spaces to RGB.
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


@dataclasses.dataclass(frozen=True)
class DicomImage:
    """What an import keeps from a DICOM file; the two keys are hashed before use."""

    pixels: np.ndarray
    device: str
    patient_key: str | None
    instance_key: str | None


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a .dcm/.dicom name or a file with the DICM preamble marker."""
    path = pathlib.Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_pixels(ds: pydicom.Dataset, where: str) -> np.ndarray:
    """2-D uint8 grayscale of a single-frame DICOM image (MONOCHROME1/2, RGB, YBR, palette)."""
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DatasetImportError(
            f"{where}: multi-frame (cine) DICOM with {ds.NumberOfFrames} frames; export the "
            "frame to use as a single-frame file"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        array = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken or unsupported pixel data
        raise DatasetImportError(f"{where}: cannot decode pixel data ({e})") from e
    if photometric in _GRAY:
        gray = to_uint8_gray(apply_voi_lut(apply_modality_lut(array, ds), ds), where)
        # MONOCHROME1 shows low values bright; invert so that bright tissue is bright.
        return 255 - gray if photometric == "MONOCHROME1" else gray
    if photometric in _COLOR:
        return to_uint8_gray(array, where)
    if photometric == "PALETTE COLOR":
        return to_uint8_gray(apply_color_lut(array, ds), where)
    raise DatasetImportError(f"{where}: unsupported PhotometricInterpretation {photometric!r}")


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def read_dicom(path: str | os.PathLike) -> DicomImage:
    """Reads a DICOM file's pixels, device name and (unhashed) patient and instance keys."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetImportError(f"{path}: file not found")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DatasetImportError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise DatasetImportError(f"{path}: DICOM file has no pixel data")
    if _text(ds, "BurnedInAnnotation").upper() == "YES":
        logging.warning("%s: BurnedInAnnotation=YES; text in the pixels is not removed", path)
    return DicomImage(
        pixels=dicom_pixels(ds, str(path)),
        device=device_name(f"{_text(ds, 'Manufacturer')} {_text(ds, 'ManufacturerModelName')}"),
        patient_key=_text(ds, "PatientID") or None,
        instance_key=_text(ds, "SOPInstanceUID") or None,
    )
