"""The clinical evaluation of classifiers on the same test cases, as data.

Per model: ROC AUC with a DeLong and a bootstrap interval, and sensitivity, specificity, PPV, NPV
and accuracy at a threshold chosen on the model's validation predictions (or, flagged
`chosen_on: test`, on the test set itself); every pair of models: a paired DeLong test; with a
reader study, the models against the readers (`reader_evaluation`).

`evaluate(load_inputs(config), config)` is what `busgen evaluate` runs; the results are a
JSON-ready dict, written once (`write_results`) and rendered from there
(`busgen_jax.reporting.clinical`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from sklearn import metrics

from busgen_jax.core import config_files, errors
from busgen_jax.evaluation import (
    prediction_io,
    reader_evaluation,
    reader_io,
    reader_study,
    statistics,
)

THRESHOLD_RULES = ("target_specificity", "target_sensitivity", "youden", "fixed")


def choose_threshold(truth: Any, scores: Any, rule: str, *, target: float = 0.9) -> float:
    """Operating threshold: highest sensitivity at specificity >= target, highest specificity at
    sensitivity >= target, Youden's J = max(TPR - FPR), or `target` itself ("fixed")."""
    if rule == "target_specificity":
        return statistics.threshold_for_specificity(truth, scores, target)
    if rule == "target_sensitivity":
        return statistics.threshold_for_sensitivity(truth, scores, target)
    if rule == "youden":
        fpr, tpr, thresholds = metrics.roc_curve(truth, scores)
        return float(thresholds[np.argmax(tpr - fpr)])
    if rule == "fixed":
        return float(target)
    raise ValueError(f"threshold rule {rule!r} is not one of {THRESHOLD_RULES}")


def _evaluate_model(
    truth, scores, threshold, *, n_boot, seed, alpha, method, boot_method="percentile"
) -> dict[str, Any]:
    return {
        "auc": statistics.roc_auc_ci(truth, scores, alpha=alpha).to_dict(),
        "auc_bootstrap": statistics.bootstrap_ci(
            metrics.roc_auc_score,
            truth,
            scores,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
            method=boot_method,
        ).to_dict(),
        "operating_point": statistics.binary_metrics(
            truth, scores, threshold, method=method, alpha=alpha
        ).to_dict(),
    }


def evaluate_predictions(
    predictions: Mapping[str, Mapping[str, Sequence]],
    truth: Mapping[str, int],
    study: reader_study.ReaderStudy | None = None,
    *,
    validation: Mapping[str, Mapping[str, Sequence]] | None = None,
    threshold_rule: str = "target_specificity",
    threshold_target: float = 0.9,
    n_boot: int = 1000,
    boot_method: str = "percentile",
    seed: int = 0,
    alpha: float = 0.05,
    method: str = "clopper-pearson",
    reader_threshold: str | None = None,
    reader_modality: str | None = None,
    cov_method: str = "jackknife",
    mcnemar_method: str = "exact",
) -> dict[str, Any]:
    """All the numbers of the evaluation, as a JSON-ready dict (see the module docstring).

    Args:
      predictions: model name -> columns with `case_id` and `probability` (a dict of lists, or
        anything indexable by column name). The evaluated cases are the first model's; every
        model must score them.
      truth: case_id -> 0/1 for the test cases and any validation cases.
      study: a reader study on (a subset of) the evaluated cases, or None.
      validation: model name -> validation columns; a model's threshold is chosen there by
        `threshold_rule`, else on the test cases (flagged as such).
    """
    if not predictions:
        raise errors.JobError("no predictions to evaluate")
    first = next(iter(predictions.values()))
    case_ids = list(first["case_id"])
    no_truth = [case for case in case_ids if case not in truth]
    if no_truth:
        raise errors.JobError(f"{len(no_truth)} test case(s) have no truth, e.g. {no_truth[:3]}")
    y = statistics.check_truth([truth[case] for case in case_ids], "truth of the test cases")
    scores = {
        name: prediction_io.aligned_scores(cols, case_ids, name)
        for name, cols in predictions.items()
    }
    results: dict[str, Any] = {
        "cases": {
            "n": len(case_ids),
            "n_positive": int(y.sum()),
            "n_negative": int(y.size - y.sum()),
        },
        "models": {},
        "pairwise": [],
        "reader_study": None,
    }
    for name, s in scores.items():
        val = (validation or {}).get(name)
        if val is not None:
            val_cases = list(val["case_id"])
            val_truth = [truth[case] for case in val_cases]
            threshold = choose_threshold(
                val_truth,
                prediction_io.aligned_scores(val, val_cases, name),
                threshold_rule,
                target=threshold_target,
            )
        else:
            threshold = choose_threshold(y, s, threshold_rule, target=threshold_target)
        model = _evaluate_model(
            y,
            s,
            threshold,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
            method=method,
            boot_method=boot_method,
        )
        chosen_on = "fixed" if threshold_rule == "fixed" else "validation" if val else "test"
        model["threshold"] = {
            "value": threshold,
            "rule": threshold_rule,
            "target": threshold_target,
            "chosen_on": chosen_on,
        }
        results["models"][name] = model
    for a, b in itertools.combinations(scores, 2):
        paired = statistics.delong_test(y, scores[a], scores[b], alpha=alpha).to_dict()
        results["pairwise"].append({"model_a": a, "model_b": b, **paired})
    if study is not None:
        reader_evaluation.check_study_truth(study, truth, set(case_ids))
        by_case = {name: dict(zip(case_ids, s, strict=True)) for name, s in scores.items()}
        results["reader_study"] = reader_evaluation.analyse(
            study,
            by_case,
            modality=reader_modality,
            threshold=reader_threshold,
            method=method,
            alpha=alpha,
            cov_method=cov_method,
            mcnemar_method=mcnemar_method,
        )
    return results


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises JobError with one line naming the first bad field."""
    if not config.predictions:
        raise errors.ConfigError(
            "config.predictions is empty: name at least one 'model=predictions.csv'"
        )
    study = config.reader_study
    config_files.check_fields(
        config,
        [
            config_files.one_of("threshold.rule", config.threshold.rule, THRESHOLD_RULES),
            (
                "reader_study.csv",
                not (study.csv and study.simulate),
                "with simulate=True: not both",
            ),
            (
                "reader_study.data_paths",
                bool(study.data_paths) or not study.simulate,
                "is empty: a simulated study needs the dataset with the latent malignancy scores",
            ),
            config_files.one_of(
                "bootstrap.method", config.bootstrap.method, statistics.BOOTSTRAP_METHODS
            ),
            config_files.one_of("reader_study.format", study.format, reader_io.FORMATS),
            config_files.one_of("reader_study.mcnemar", study.mcnemar, statistics.MCNEMAR_METHODS),
            (
                "reader_study.n_readers",
                study.n_readers >= 2 or not study.simulate,
                "must be at least 2 for a simulated study",
            ),
        ],
    )
    reader_evaluation.rating_scale(study)
    try:
        statistics.check_alpha(config.alpha)
    except ValueError as e:
        raise errors.JobError(f"config.alpha: {e}") from e


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What an evaluation reads: the predictions of each model, the truth, the reader study.

    Attributes:
      tests: model name -> test prediction columns (`prediction_io.read_predictions`); the
        evaluated cases are the first model's.
      validation: model name -> validation prediction columns (may be empty).
      truth: case_id -> 0/1 of every test and validation case.
      study: the reader study on (a subset of) the evaluated cases, or None.
    """

    tests: dict[str, dict[str, list]]
    validation: dict[str, dict[str, list]]
    truth: dict[str, int]
    study: reader_study.ReaderStudy | None

    @property
    def case_ids(self) -> list[str]:
        return list(next(iter(self.tests.values()))["case_id"])


def load_inputs(config: ml_collections.ConfigDict) -> Inputs:
    """Reads the predictions and the reader study that a validated config names."""
    test_paths = prediction_io.named_paths(config.predictions, "predictions")
    val_paths = prediction_io.named_paths(config.validation, "validation")
    unknown = set(val_paths) - set(test_paths)
    if unknown:
        raise errors.JobError(
            f"config.validation names model(s) {sorted(unknown)} without test predictions"
        )
    tests = {name: prediction_io.read_predictions(path) for name, path in test_paths.items()}
    vals = {name: prediction_io.read_predictions(path) for name, path in val_paths.items()}
    tables = {f"{n} (test)": t for n, t in tests.items()}
    tables.update({f"{n} (validation)": t for n, t in vals.items()})
    truth = prediction_io.truth_from_labels(tables)
    case_ids = list(next(iter(tests.values()))["case_id"])
    return Inputs(tests, vals, truth, reader_evaluation.make_reader_study(config, truth, case_ids))


def evaluate(inputs: Inputs, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`evaluate_predictions` with the config's settings; the results record the config."""
    try:
        results = evaluate_predictions(
            inputs.tests,
            inputs.truth,
            inputs.study,
            validation=inputs.validation,
            threshold_rule=config.threshold.rule,
            threshold_target=config.threshold.target,
            n_boot=config.bootstrap.n_boot,
            boot_method=config.bootstrap.method,
            seed=config.bootstrap.seed,
            alpha=config.alpha,
            method=config.binomial_method,
            reader_threshold=config.reader_study.threshold or None,
            reader_modality=config.reader_study.modality or None,
            cov_method=config.cov_method,
            mcnemar_method=config.reader_study.mcnemar,
        )
    except ValueError as e:
        raise errors.JobError(str(e)) from e
    results["config"] = config.to_dict()
    return results


def write_results(results: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """The results as strict JSON (no NaN: undefined statistics are null)."""
    path = pathlib.Path(path)
    path.write_text(json.dumps(statistics.strict_json(results), indent=2, allow_nan=False))
    return path
