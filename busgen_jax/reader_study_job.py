"""Analyses a reader study: each reader's sensitivity, specificity and ROC per modality, and, for
two modalities read by the same readers, the OR MRMC comparison (random readers and cases,
Hillis degrees of freedom; fixed-reader and fixed-case variants too).

    busgen reader-study --config=configs/reader_study.py:default --workdir=DIR \
        --config.reads=READS.csv --config.truth=TRUTH.csv

Writes DIR/reader_study/results.json. To compare a model with the readers, use `busgen evaluate`.
"""

from __future__ import annotations

import csv
import json
import pathlib

import ml_collections

from busgen_jax import job
from busgen_jax.evaluation import mrmc, reader_study


def read_truth(path: str) -> dict[str, int]:
    """`case_id, truth` rows; errors name the file and line."""
    truth = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row.get("truth") not in ("0", "1"):
                raise job.JobError(
                    f"{path} line {line}: truth must be 0 or 1, got {row.get('truth')!r}"
                )
            truth[row["case_id"]] = int(row["truth"])
    return truth


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if not config.reads or not config.truth:
        raise job.JobError("config.reads and config.truth (CSV files) are both required")
    try:
        study = reader_study.load_reader_study(config.reads, read_truth(config.truth))
    except ValueError as e:
        raise job.JobError(str(e)) from e
    results = {
        "simulated": study.simulated,
        "n_cases": len(study.case_ids),
        "n_readers": len(study.reader_ids),
        "modalities": list(study.modalities),
        "readers": {
            modality: [
                p.to_dict()
                for p in reader_study.reader_performance(
                    study,
                    threshold=config.threshold,
                    modality=modality,
                    method=config.binomial_method,
                    alpha=config.alpha,
                )
            ]
            for modality in study.modalities
        },  # fmt: skip
        "modality_comparison": None,
    }
    if len(study.modalities) == 2:
        results["modality_comparison"] = mrmc.or_modalities(
            study.truth, study.scores, modalities=study.modalities,
            cov_method=config.cov_method, alpha=config.alpha,
        ).to_dict()  # fmt: skip
    out = pathlib.Path(workdir) / "reader_study"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    comparison = results["modality_comparison"]
    summary = (
        f"; AUC {comparison['comparison']}: {comparison['rrrc']['estimate']:+.3f}, "
        f"p = {comparison['rrrc']['p_value']:.4f}"
        if comparison
        else ""
    )
    print(f"{results['n_readers']} readers, {results['n_cases']} cases{summary}; {out}")
    return results


main = job.command(run, "configs/reader_study.py:default", __doc__)

if __name__ == "__main__":
    job.run_main(main)
