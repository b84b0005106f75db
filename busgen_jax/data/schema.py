"""The one record schema shared by real, phantom and synthetic data.

A record is a plain dict. On disk it is serialized with msgpack (one ArrayRecord entry per
record). Fields:

  image        PNG bytes, uint8 grayscale, any size (required)
  mask         PNG bytes, uint8 {0, 255}, same size as image, or None when unknown
  boxes        list of [x1, y1, x2, y2] normalized to [0, 1] (any number, possibly none)
  pathology    one of PATHOLOGIES, or a task-specific label string
  device       device (scanner) name, "unknown" when not known
  birads       dict of BI-RADS ultrasound descriptors when known ({} otherwise)
  labels       dict of extra label columns (e.g. prognosis), str -> str/int/float
  case_id      pseudonymous case id (unique within a dataset)
  patient_id   pseudonymous patient id (splits never share a patient)
  split        "train", "val" or "test"
  provenance   dict with at least "source" in SOURCES; synthetic records also carry
               "checkpoint", "adapter", "seed", "sampler", "steps", "guidance"
  malignancy_score  latent score in [0, 1] when known (phantom), else None
"""

from __future__ import annotations

import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
PATHOLOGIES = ("normal", "benign", "malignant", "dcis")
SOURCES = ("real", "phantom", "synthetic")
SPLITS = ("train", "val", "test")
REQUIRED_FIELDS = ("image", "pathology", "device", "case_id", "patient_id", "split", "provenance")


class SchemaError(ValueError):
    """A record does not follow the schema; the message names the record and field."""


def encode_png(array: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 array as lossless grayscale PNG."""
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise SchemaError(f"PNG input must be a 2-D uint8 array, got {array.dtype}{array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decodes PNG (or any PIL-readable) bytes to a 2-D uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def validate(record: dict[str, Any], where: str = "record") -> None:
    """Raises SchemaError naming `where` and the field if `record` breaks the schema."""
    for field in REQUIRED_FIELDS:
        if field not in record or record[field] is None:
            raise SchemaError(f"{where}: missing required field '{field}'")
    if not isinstance(record["image"], bytes | bytearray):
        raise SchemaError(f"{where}: field 'image' must be PNG bytes")
    if record["split"] not in SPLITS:
        raise SchemaError(f"{where}: field 'split' is {record['split']!r}, not one of {SPLITS}")
    source = record["provenance"].get("source")
    if source not in SOURCES:
        raise SchemaError(f"{where}: provenance 'source' is {source!r}, not one of {SOURCES}")
    for box in record.get("boxes") or []:
        x1, y1, x2, y2 = box
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise SchemaError(f"{where}: field 'boxes' has an invalid normalized box {box}")


def make_record(
    image: np.ndarray,
    *,
    pathology: str,
    device: str,
    case_id: str,
    patient_id: str,
    split: str,
    provenance: dict[str, Any],
    mask: np.ndarray | None = None,
    boxes: np.ndarray | list | None = None,
    birads: dict[str, Any] | None = None,
    labels: dict[str, Any] | None = None,
    malignancy_score: float | None = None,
) -> dict[str, Any]:
    """Builds a validated record from arrays."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "image": encode_png(image),
        "mask": None if mask is None else encode_png(mask),
        "boxes": [[float(v) for v in box] for box in (boxes if boxes is not None else [])],
        "pathology": pathology,
        "device": device,
        "birads": dict(birads or {}),
        "labels": dict(labels or {}),
        "case_id": case_id,
        "patient_id": patient_id,
        "split": split,
        "provenance": dict(provenance),
        "malignancy_score": None if malignancy_score is None else float(malignancy_score),
    }
    validate(record, where=f"case {case_id}")
    return record


def serialize(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def deserialize(data: bytes) -> dict[str, Any]:
    return msgpack.unpackb(data, raw=False)
