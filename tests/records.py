"""Small schema records for data-layer tests, independent of the phantom."""

from __future__ import annotations

import numpy as np

from busgen_jax.data import schema


def make_records(num: int = 40, *, seed: int = 0, size=(48, 64), test_every: int = 5) -> list[dict]:
    """Records cycling through the pathologies and three devices; every `test_every`-th is test."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num):
        pathology = schema.PATHOLOGIES[i % len(schema.PATHOLOGIES)]
        boxes = [] if pathology == "normal" else [[0.25, 0.3, 0.5, 0.55]]
        records.append(
            schema.make_record(
                rng.integers(0, 256, size, dtype=np.uint8),
                pathology=pathology,
                device=f"device-{i % 3}",
                case_id=f"case-{i:04d}",
                patient_id=f"patient-{i // 2:04d}",
                split="test" if i % test_every == 0 else "train",
                provenance={"source": "phantom", "seed": seed},
                boxes=boxes,
                malignancy_score=float(i) / num,
            )
        )
    return records
