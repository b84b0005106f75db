"""Models against a reader study: the study an evaluation config names, and the analysis.

The study is a reads file (long table, iMRMC or RJafroc layout on a BI-RADS or numeric scale)
or, for the phantom, a Roe-Metz panel *simulated* with the phantom's latent malignancy score as
case difficulty, labelled so everywhere. `analyse` gives each reader's operating point, each model
at each reader's specificity and sensitivity with McNemar tests, the mean sensitivity and
specificity gains with OR MRMC tests, the OR MRMC model-vs-readers AUC analysis, and with two or
more modalities the OR MRMC modality comparison, as a JSON-ready dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from busgen_jax.core import errors
from busgen_jax.data import shards
from busgen_jax.evaluation import mrmc, reader_io, reader_study, roe_metz

SIMULATED_LABEL = (
    "SIMULATED reader study (Roe-Metz readers; case difficulty from the phantom's latent score)"
)


def analyse(
    study: reader_study.ReaderStudy,
    models: Mapping[str, Mapping[str, float]],
    *,
    modality: str | None,
    threshold: str | None,
    method: str,
    alpha: float,
    cov_method: str,
    mcnemar_method: str = "exact",
) -> dict[str, Any]:
    """Readers' operating points, and each model (name -> case_id -> score) against the readers.

    `modality` (default: the study's first) is the one the models are compared with;
    `threshold` (default: the scale's) makes a read a positive call.
    """
    modality = modality or study.modalities[0]
    listed = sorted(set(models) & set(study.reader_ids))
    if listed:
        raise errors.JobError(f"model(s) {listed} are also listed among the reader study's readers")
    out: dict[str, Any] = {
        "simulated": study.simulated,
        "label": SIMULATED_LABEL if study.simulated else "reader study",
        "alpha": alpha,
        "n_cases": len(study.case_ids),
        "n_readers": len(study.reader_ids),
        "modalities": list(study.modalities),
        "compared_modality": modality,
        "call_rule": study.scale.call_rule(threshold),
        "readers": {
            m: [
                p.to_dict()
                for p in reader_study.reader_performance(
                    study, threshold=threshold, modality=m, method=method, alpha=alpha
                )
            ]
            for m in study.modalities
        },
        "models": {},
        "modality_comparison": None,
    }
    for name, by_case in models.items():
        scores = [by_case[case] for case in study.case_ids]
        vs_readers = reader_study.compare_model_to_readers(
            study,
            scores,
            threshold=threshold,
            modality=modality,
            method=method,
            alpha=alpha,
            mcnemar_method=mcnemar_method,
        )
        or_test = mrmc.or_model_vs_readers(
            study.truth,
            scores,
            study.modality_scores(modality),
            cov_method=cov_method,
            alpha=alpha,
            reader_ids=study.reader_ids,
        )
        out["models"][name] = {"vs_readers": vs_readers.to_dict(), "mrmc": or_test.to_dict()}
    if len(study.modalities) >= 2:
        out["modality_comparison"] = mrmc.or_modalities(
            study.truth,
            study.scores,
            modalities=study.modalities,
            cov_method=cov_method,
            alpha=alpha,
            reader_ids=study.reader_ids,
        ).to_dict()
    return out


def check_study_truth(study: reader_study.ReaderStudy, truth, evaluated: set[str]) -> None:
    """Raises unless every case of the study is evaluated and has the evaluation's truth."""
    for case, label in zip(study.case_ids, study.truth, strict=True):
        if case not in evaluated:
            raise errors.JobError(f"reader-study case {case!r} is not among the evaluated cases")
        if truth[case] != label:
            raise errors.JobError(
                f"reader-study case {case!r}: truth {label} differs from {truth[case]}"
            )


def latent_scores(dataset_dirs: Sequence[str], split: str) -> dict[str, tuple[float, str]]:
    """case_id -> (latent malignancy score, pathology) of a split's records (phantom data)."""
    scores = {}
    for directory in dataset_dirs:
        for record in shards.read_records(directory, split):
            if record.get("malignancy_score") is None:
                raise errors.JobError(
                    f"{directory}: case {record['case_id']!r} has no latent "
                    "malignancy_score; give reader_study.csv instead"
                )
            scores[record["case_id"]] = (
                float(record["malignancy_score"]),
                str(record.get("pathology", "")),
            )
    return scores


def rating_scale(cfg: ml_collections.ConfigDict) -> reader_study.RatingScale:
    """The rating scale `config.reader_study` declares (kind, direction, threshold)."""
    try:
        return reader_io.rating_scale_of(cfg)
    except ValueError as e:
        raise errors.JobError(f"config.reader_study: {e}") from e


def make_reader_study(
    config: ml_collections.ConfigDict, truth: Mapping[str, int], case_ids: Sequence[str]
) -> reader_study.ReaderStudy | None:
    """The study the config names: a reads file, a simulated study, or None."""
    cfg = config.reader_study
    if cfg.csv:
        if not os.path.exists(cfg.csv):
            raise errors.JobError(f"reader_study.csv: {cfg.csv} does not exist")
        try:
            return reader_io.load(cfg.csv, cfg.format, truth, rating_scale(cfg))
        except ValueError as e:
            raise errors.JobError(str(e)) from e
    if not cfg.simulate:
        return None
    latent = latent_scores(cfg.data_paths, cfg.split)
    missing = [case for case in case_ids if case not in latent]
    if missing:
        raise errors.JobError(
            f"reader_study.data_paths has no latent score for {len(missing)} "
            f"evaluated case(s), e.g. {missing[:3]}"
        )
    return roe_metz.simulate_panel(
        [truth[case] for case in case_ids],
        n_readers=cfg.n_readers,
        seed=cfg.seed,
        modalities=tuple(cfg.modalities) or None,
        case_ids=case_ids,
        case_score=[latent[case][0] for case in case_ids],
        dcis=[latent[case][1] == "dcis" for case in case_ids],
        params=roe_metz.RoeMetz(modality_gain=cfg.modality_gain),
    )
