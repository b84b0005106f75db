"""Analyses a reader study: each reader's sensitivity, specificity and ROC per modality, and, for
two or more modalities read by the same readers (any case subsets), the OR MRMC comparison per
figure of merit (random readers and cases with Hillis df; fixed-reader and fixed-case variants).

    busgen reader-study --config=configs/reader_study.py:default --workdir=DIR \
        --config.reads=READS.csv --config.truth=TRUTH.csv

Writes DIR/reader_study/results.json. To compare a model with the readers, use `busgen evaluate`.
"""

from __future__ import annotations

import csv
import json
import pathlib

import ml_collections

from busgen_jax.core import errors
from busgen_jax.evaluation import fom, mrmc, reader_io, reader_study, statistics
from busgen_jax.jobs import shell


def read_truth(path: str) -> dict[str, int]:
    """`case_id, truth` rows; errors name the file and line."""
    truth = {}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row.get("truth") not in ("0", "1"):
                raise errors.JobError(
                    f"{path} line {line}: truth must be 0 or 1, got {row.get('truth')!r}"
                )
            truth[row["case_id"]] = int(row["truth"])
    return truth


def _check(config: ml_collections.ConfigDict) -> None:
    if not config.reads:
        raise errors.JobError("config.reads (the reader-study file) is required")
    for name in config.foms:
        if name not in fom.FOMS:
            raise errors.JobError(f"config.foms: {name!r} is not one of {fom.FOMS}")
    if config.fixed_reader_test not in mrmc.FIXED_READER_TESTS:
        raise errors.JobError(
            f"config.fixed_reader_test = {config.fixed_reader_test!r} is not one of "
            f"{mrmc.FIXED_READER_TESTS}"
        )
    try:
        statistics.check_alpha(config.alpha)
        reader_io.rating_scale_of(config)
    except ValueError as e:
        raise errors.JobError(f"config: {e}") from e


def _comparisons(study: reader_study.ReaderStudy, config: ml_collections.ConfigDict) -> dict:
    """One OR analysis per figure of merit (sensitivity and specificity need a threshold)."""
    out = {}
    for name in config.foms:
        if name in ("sensitivity", "specificity") and study.scale.default_threshold is None:
            continue
        figure = fom.FigureOfMerit(name, max_fpr=config.max_fpr)
        out[figure.label] = mrmc.or_modalities(
            study.truth,
            study.scores,
            modalities=study.modalities,
            fom=figure,
            thresholds=study.scale.cut() if name in ("sensitivity", "specificity") else None,
            cov_method=config.cov_method if name == "auc" else "jackknife",
            alpha=config.alpha,
            fixed_reader_test=config.fixed_reader_test,
            reader_ids=study.reader_ids,
        ).to_dict()
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    try:
        truth = read_truth(config.truth) if config.truth else None
        study = reader_io.load(
            config.reads, config.format, truth, reader_io.rating_scale_of(config)
        )
        results = {
            "simulated": study.simulated,
            "n_cases": len(study.case_ids),
            "n_readers": len(study.reader_ids),
            "modalities": list(study.modalities),
            "readers": {
                modality: [
                    p.to_dict()
                    for p in reader_study.reader_performance(
                        study, modality=modality, method=config.binomial_method, alpha=config.alpha
                    )
                ]
                for modality in study.modalities
            }
            if study.scale.default_threshold is not None
            else None,
            "modality_comparison": _comparisons(study, config)
            if len(study.modalities) > 1
            else None,
        }
    except ValueError as e:
        raise errors.JobError(str(e)) from e
    out = pathlib.Path(workdir) / "reader_study"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(statistics.strict_json(results), indent=2, allow_nan=False)
    )
    summary = ""
    for name, comparison in (results["modality_comparison"] or {}).items():
        overall = comparison["overall"]["rrrc"]
        summary += (
            f"; {name}: F = {overall['statistic']:.3f}, p = {overall['p_value']:.4f} "
            f"({len(study.modalities)} modalities)"
        )
    print(f"{results['n_readers']} readers, {results['n_cases']} cases{summary}; {out}")
    return results


main = shell.command(run, "configs/reader_study.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
