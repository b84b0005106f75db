"""Audits a synthetic dataset for near-copies of its generator's training images.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('SYNTHETIC',)" --config.train_paths="('TRAINING_DATA',)"

The synthesis job audits while it generates; this job audits any dataset after the fact (for
example one made elsewhere, or against a larger training set than the one used then). Both
similarities of `busgen_jax.privacy.audit` are used and a synthetic image is flagged on either.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from busgen_jax import job
from busgen_jax.data import pipeline, shards
from busgen_jax.privacy import audit
from busgen_jax.privacy import report as privacy_report


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if not config.synthetic_paths or not config.train_paths:
        raise job.JobError("config.synthetic_paths and config.train_paths are both required")
    size = config.image_size
    try:
        synthetic = pipeline.load_split(config.synthetic_paths, config.synthetic_split, size)
        train = pipeline.load_split(config.train_paths, "train", size)
        heldout = pipeline.load_split(config.train_paths, config.heldout_split, size)["image"]
    except shards.DatasetError as e:
        raise job.JobError(str(e)) from e
    heldout_sims, _ = audit.search(heldout, train["image"])
    overrides = {"ncc": config.threshold, "windowed": config.windowed_threshold}
    thresholds = audit.calibrate(heldout_sims, config.quantile, overrides=overrides)
    sims, nearest = audit.search(synthetic["image"], train["image"])
    score = audit.margin(sims, thresholds)
    order = np.argsort(-score, kind="stable")[: config.num_closest]
    closest = [
        {
            "synthetic_case_id": synthetic["case_id"][k],
            "train_case_id": train["case_id"][nearest["windowed"][k]],
            "similarity": {m: float(sims[m][k]) for m in audit.MEASURES},
            "flagged": bool(score[k] > 0),
            # The synthetic image is in the dataset being audited already; shown in the figure.
            "image": synthetic["image"][k],
        }
        for k in order
    ]
    private = None
    if config.private_pictures:
        rows = [
            (synthetic["image"][k], train["image"][nearest["windowed"][k]], synthetic["case_id"][k])
            for k in order
        ]
        path = pathlib.Path(workdir) / privacy_report.PRIVATE_DIR / "closest_pairs.png"
        private = str(privacy_report.write_private_pairs(path, rows))
    out = pathlib.Path(workdir) / "audit"
    report = privacy_report.write_audit_report(
        out,
        candidate_sims=sims,
        heldout_sims=heldout_sims,
        thresholds=thresholds,
        rejected_count=int(np.sum(score > 0)),
        closest=closest,
        private_pictures=private,
    )
    print(
        f"{report['rejected_count']} of {report['num_candidates']} synthetic images exceed the "
        f"thresholds {thresholds}; {report['memorization_test']['interpretation']}; "
        f"report: {out}"
        + (f"; private pictures of training neighbours: {private}" if private else "")
    )
    return report


main = job.command(run, "configs/audit.py:default", __doc__)

if __name__ == "__main__":
    job.run_main(main)
