"""Audits a synthetic dataset for near-copies of its generator's training images.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('SYNTHETIC',)" --config.train_paths="('TRAINING_DATA',)"

The synthesis job audits while it generates; this job audits any dataset after the fact (for
example one made elsewhere, or against a larger training set than the one used then). Both
similarities of `busgen_jax.privacy.audit` are used and a synthetic image is flagged on either.

Given the generator that made the set (`config.generator`, and `config.adapter` if it was
adapted), the audit also runs loss-based membership inference (`busgen_jax.privacy.membership`)
on it: how well its denoising loss tells its training images from held-out ones (AUC, TPR at 1%
FPR). Without a generator the report's `membership_inference` is null.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from busgen_jax.core import errors
from busgen_jax.data import pipeline, shards
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.jobs import layout, shell
from busgen_jax.privacy import audit, membership
from busgen_jax.privacy import report as privacy_report


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if not config.synthetic_paths or not config.train_paths:
        raise errors.JobError("config.synthetic_paths and config.train_paths are both required")
    # The generator loads first: a wrong path fails before the similarity search costs its time.
    generator = _load_generator(config)
    size = config.image_size
    try:
        synthetic = pipeline.load_split(config.synthetic_paths, config.synthetic_split, size)
        train = pipeline.load_split(config.train_paths, "train", size)
        heldout = pipeline.load_split(config.train_paths, config.heldout_split, size)["image"]
    except shards.DatasetError as e:
        raise errors.JobError(str(e)) from e
    inference = _membership(config, *generator) if generator else None
    heldout_sims, _ = audit.search(heldout, train["image"])
    thresholds = audit.configured_thresholds(heldout_sims, config)
    sims, nearest = audit.search(synthetic["image"], train["image"])
    flagged = audit.flagged(sims, thresholds)
    order = np.argsort(-audit.margin(sims, thresholds), kind="stable")[: config.num_closest]
    closest = [
        {
            "synthetic_case_id": synthetic["case_id"][k],
            "train_case_id": train["case_id"][nearest["windowed"][k]],
            "similarity": {m: float(sims[m][k]) for m in audit.MEASURES},
            "flagged": bool(flagged[k]),
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
    out = pathlib.Path(workdir) / layout.AUDIT
    report = privacy_report.write_audit_report(
        out,
        candidate_sims=sims,
        heldout_sims=heldout_sims,
        thresholds=thresholds,
        rejected_count=int(np.sum(flagged)),
        closest=closest,
        membership=inference,
        private_pictures=private,
    )
    print(
        f"{report['rejected_count']} of {report['num_candidates']} synthetic images exceed the "
        f"thresholds {thresholds}; {report['memorization_test']['interpretation']}; "
        f"report: {out}"
        + (
            f"; membership inference: AUC {inference['auc']:.3f}, TPR "
            f"{inference['tpr_at_1pct_fpr']:.3f} at FPR {inference['fpr_at_threshold']:.3f} "
            f"({inference['num_members']} training vs {inference['num_nonmembers']} held-out)"
            if inference
            else ""
        )
        + (f"; private pictures of training neighbours: {private}" if private else "")
    )
    return report


def _load_generator(config: ml_collections.ConfigDict) -> tuple | None:
    """(model, spec) of the configured generator with its adapter merged; None if none is set."""
    if not config.generator:
        if config.adapter:
            raise errors.JobError("config.adapter is set but config.generator (its base) is empty")
        return None
    if config.membership_draws < 1:
        raise errors.JobError(f"config.membership_draws = {config.membership_draws} must be >= 1")
    try:
        return generator_lib.load_generator(config.generator, config.adapter or None)
    except ValueError as e:  # an adapter of another generator, a broken export
        raise errors.JobError(str(e)) from e


def _membership(config: ml_collections.ConfigDict, model, spec) -> dict:
    """Membership inference on the generator: `train_paths`' train split against held-out.

    The splits are read again at the generator's own image size and classes (the similarity
    audit may run at another size); records of classes it does not know are left out.
    """
    try:  # no record of the generator's classes in a split is a DatasetError too
        splits = [
            pipeline.load_split(config.train_paths, split, spec.image_size, spec.class_names)
            for split in ("train", config.heldout_split)
        ]
    except shards.DatasetError as e:
        raise errors.JobError(f"membership inference: {e}") from e
    return membership.attack(
        model, spec, *splits, num_draws=config.membership_draws, seed=config.membership_seed
    )


main = shell.command(run, "configs/audit.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
