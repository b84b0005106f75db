"""Audits a synthetic dataset for near-copies of its generator's training images.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('SYNTHETIC',)" --config.train_paths="('TRAINING_DATA',)"

The synthesis job audits while it generates; this job audits any dataset after the fact (for
example one made elsewhere, or against a larger training set than the one used then).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from busgen_jax import job
from busgen_jax.data import pipeline, shards
from busgen_jax.privacy import audit


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if not config.synthetic_paths or not config.train_paths:
        raise job.JobError("config.synthetic_paths and config.train_paths are both required")
    size = config.image_size
    try:
        synthetic = pipeline.load_split(config.synthetic_paths, config.synthetic_split, size)
        train = pipeline.load_split(config.train_paths, "train", size)["image"]
        heldout = pipeline.load_split(config.train_paths, config.heldout_split, size)["image"]
    except shards.DatasetError as e:
        raise job.JobError(str(e)) from e
    heldout_sims, _ = audit.nearest_neighbours(heldout, train)
    threshold = config.threshold
    if threshold is None:
        threshold = audit.quantile_threshold(heldout_sims, config.quantile)
    sims, nearest = audit.nearest_neighbours(synthetic["image"], train)
    pairs = audit.select_closest_pairs(synthetic["image"], train, sims, nearest, config.num_closest)
    out = pathlib.Path(workdir) / "audit"
    report = audit.write_audit_report(
        out,
        sims=sims,
        heldout_sims=heldout_sims,
        threshold=threshold,
        rejected_count=int(np.sum(sims > threshold)),
        closest_pairs=pairs,
    )
    print(
        f"{report['rejected_count']} of {report['num_candidates']} synthetic images exceed the "
        f"threshold {threshold:.4f}; {report['memorization_test']['interpretation']}; "
        f"report: {out}"
    )
    return report


main = job.command(run, "configs/audit.py:default", __doc__)

if __name__ == "__main__":
    job.run_main(main)
