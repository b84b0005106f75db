"""Clinical evaluation of classifiers on the same test cases, with a reader study.

    busgen evaluate --config=configs/evaluate.py:default --workdir=DIR \
        --config.predictions="('real-only=RUN_A/predictions/test.csv', 'mixed=RUN_B/...')" \
        --config.validation="('real-only=RUN_A/predictions/val.csv', ...)" \
        --config.reader_study.csv=READS.csv

Inputs are the per-case CSVs of `busgen predict` (`case_id`, `label`, `probability`, ...), one
per named model; the ground truth is the `label` column (1 = the task's positive class), which
all files must agree on. Per model: ROC AUC with a DeLong and a
bootstrap interval, and sensitivity, specificity, PPV, NPV and accuracy at a threshold chosen on
the model's validation predictions (or, flagged `chosen_on: test`, on the test set itself);
every pair of models: a paired DeLong test. With a reader study (reads in a long table, iMRMC or
RJafroc layout on a BI-RADS or numeric scale, or for the phantom a Roe-Metz panel *simulated* with
its latent malignancy score as case difficulty, labelled so everywhere): each reader's operating
point, each model at each reader's specificity and sensitivity with McNemar tests, the mean
sensitivity and specificity gains with OR MRMC tests, the OR MRMC model-vs-readers AUC analysis,
and with two or more modalities the OR MRMC modality comparison. Writes
DIR/evaluation/{results.json, roc.png, evaluation.md}.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from sklearn import metrics

from busgen_jax.core import errors
from busgen_jax.data import shards
from busgen_jax.evaluation import mrmc, plots, reader_io, reader_study, roe_metz, statistics
from busgen_jax.jobs import shell

THRESHOLD_RULES = ("target_specificity", "target_sensitivity", "youden", "fixed")
SIMULATED_LABEL = (
    "SIMULATED reader study (Roe-Metz readers; case difficulty from the phantom's latent score)"
)


def read_predictions(path: str | os.PathLike) -> dict[str, list]:
    """Columns of a predictions CSV (`case_id`, `probability`, `label` ...).

    Raises JobError naming the file, line and field on a missing column, a probability that is
    not a finite number, or a repeated case_id.
    """
    if not os.path.isfile(path):
        raise errors.JobError(f"{path}: predictions file does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case_id", "probability"} - set(reader.fieldnames or ())
        if missing:
            raise errors.JobError(f"{path}: missing column(s) {sorted(missing)}")
        columns: dict[str, list] = {name: [] for name in reader.fieldnames}
        seen: dict[str, int] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            case = row["case_id"].strip()
            if case in seen:
                raise errors.JobError(f"{where}: case_id {case!r} repeats line {seen[case]}")
            seen[case] = reader.line_num
            try:
                probability = float(row["probability"])
            except ValueError:
                probability = math.nan
            if not math.isfinite(probability):
                raise errors.JobError(
                    f"{where}: field 'probability' {row['probability']!r} is not a finite number"
                )
            for name in columns:
                columns[name].append(row[name].strip() if name != "probability" else probability)
            columns["case_id"][-1] = case
    if not seen:
        raise errors.JobError(f"{path}: no predictions")
    return columns


def truth_from_labels(tables: Mapping[str, Mapping[str, Sequence]]) -> dict[str, int]:
    """case_id -> 0/1 from the `label` column of every table (1 = the task's positive class).

    Raises JobError on a table without the column, a label other than 0/1, or tables that
    disagree about a case.
    """
    truth: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, columns in tables.items():
        if "label" not in columns:
            raise errors.JobError(f"predictions of {name!r} have no 'label' column (the truth)")
        for case, label in zip(columns["case_id"], columns["label"], strict=True):
            if str(label) not in ("0", "1"):
                raise errors.JobError(
                    f"predictions of {name!r}, case {case!r}: field 'label' is "
                    f"{label!r}, not 0 or 1"
                )
            if truth.setdefault(case, int(label)) != int(label):
                raise errors.JobError(
                    f"case {case!r}: label {label} in {name!r} disagrees with {origin[case]!r}"
                )
            origin.setdefault(case, name)
    return truth


def aligned_scores(
    columns: Mapping[str, Sequence], case_ids: Sequence[str], name: str
) -> np.ndarray:
    """The `probability` column reordered to `case_ids`; raises naming the missing cases."""
    by_case = dict(zip(columns["case_id"], columns["probability"], strict=True))
    missing = [case for case in case_ids if case not in by_case]
    if missing:
        raise errors.JobError(
            f"predictions of {name!r} lack {len(missing)} evaluated case(s), e.g. {missing[:3]}"
        )
    return np.array([by_case[case] for case in case_ids], np.float64)


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


def _reader_analysis(
    study, models, *, modality, threshold, method, alpha, cov_method, mcnemar_method="exact"
):
    """Readers' operating points, and each model (case_id -> score) against the readers."""
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
            study, scores, threshold=threshold, modality=modality, method=method, alpha=alpha,
            mcnemar_method=mcnemar_method,
        )  # fmt: skip
        or_test = mrmc.or_model_vs_readers(
            study.truth, scores, study.modality_scores(modality), cov_method=cov_method,
            alpha=alpha, reader_ids=study.reader_ids,
        )  # fmt: skip
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
    scores = {name: aligned_scores(cols, case_ids, name) for name, cols in predictions.items()}
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
                aligned_scores(val, val_cases, name),
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
        _check_study_truth(study, truth, set(case_ids))
        by_case = {name: dict(zip(case_ids, s, strict=True)) for name, s in scores.items()}
        results["reader_study"] = _reader_analysis(
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


def _check_study_truth(study: reader_study.ReaderStudy, truth, evaluated: set[str]) -> None:
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


def _named_paths(entries: Sequence[str], field: str) -> dict[str, str]:
    named = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise errors.JobError(f"config.{field}: {entry!r} is not 'name=path'")
        if name.strip() in named:
            raise errors.JobError(f"config.{field}: model name {name.strip()!r} repeats")
        named[name.strip()] = path.strip()
    return named


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises JobError with one line naming the first bad field."""
    if not config.predictions:
        raise errors.JobError(
            "config.predictions is empty: name at least one 'model=predictions.csv'"
        )
    if config.threshold.rule not in THRESHOLD_RULES:
        raise errors.JobError(
            f"config.threshold.rule = {config.threshold.rule!r} is not one of {THRESHOLD_RULES}"
        )
    study = config.reader_study
    if study.csv and study.simulate:
        raise errors.JobError("config.reader_study: give either csv or simulate=True, not both")
    if study.simulate and not study.data_paths:
        raise errors.JobError(
            "config.reader_study.data_paths is empty: a simulated study needs the "
            "dataset holding the latent malignancy scores"
        )
    if config.bootstrap.method not in statistics.BOOTSTRAP_METHODS:
        raise errors.JobError(
            f"config.bootstrap.method = {config.bootstrap.method!r} is not one of "
            f"{sorted(statistics.BOOTSTRAP_METHODS)}"
        )
    if study.format not in reader_io.FORMATS:
        raise errors.JobError(
            f"config.reader_study.format = {study.format!r} is not one of {reader_io.FORMATS}"
        )
    if study.mcnemar not in statistics.MCNEMAR_METHODS:
        raise errors.JobError(
            f"config.reader_study.mcnemar = {study.mcnemar!r} is not one of "
            f"{statistics.MCNEMAR_METHODS}"
        )
    if study.simulate and study.n_readers < 2:
        raise errors.JobError(f"config.reader_study.n_readers = {study.n_readers}: at least 2")
    rating_scale(study)
    try:
        statistics.check_alpha(config.alpha)
    except ValueError as e:
        raise errors.JobError(f"config.alpha: {e}") from e


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Reads the predictions, evaluates them and writes results.json, roc.png, evaluation.md."""
    validate_config(config)
    test_paths = _named_paths(config.predictions, "predictions")
    val_paths = _named_paths(config.validation, "validation")
    unknown = set(val_paths) - set(test_paths)
    if unknown:
        raise errors.JobError(
            f"config.validation names model(s) {sorted(unknown)} without test predictions"
        )
    tests = {name: read_predictions(path) for name, path in test_paths.items()}
    vals = {name: read_predictions(path) for name, path in val_paths.items()}
    all_tables = {
        **{f"{n} (test)": t for n, t in tests.items()},
        **{f"{n} (validation)": t for n, t in vals.items()},
    }
    truth = truth_from_labels(all_tables)
    case_ids = list(next(iter(tests.values()))["case_id"])
    study = make_reader_study(config, truth, case_ids)
    try:
        results = evaluate_predictions(
            tests,
            truth,
            study,
            validation=vals,
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
    out = pathlib.Path(workdir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(statistics.strict_json(results), indent=2, allow_nan=False)
    )
    plot_cases = list(study.case_ids) if study is not None else case_ids
    write_roc(out / "roc.png", tests, truth, plot_cases, results["reader_study"])
    (out / "evaluation.md").write_text(markdown_report(results))
    print(f"evaluation of {len(tests)} model(s) on {len(case_ids)} cases: {out}")
    return results


def write_roc(path, tests, truth, case_ids, readers: dict[str, Any] | None) -> None:
    """Every model's ROC curve with the readers' points of the compared modality."""
    models = {name: aligned_scores(cols, case_ids, name) for name, cols in tests.items()}
    points, title = {}, ""
    if readers is not None:
        for p in readers["readers"][readers["compared_modality"]]:
            points[p["reader_id"]] = (p["sensitivity"]["estimate"], p["specificity"]["estimate"])
            title = f"Readers at {readers['call_rule']}"
    plots.plot_roc_curves(
        path,
        models,
        [truth[case] for case in case_ids],
        points,
        title=title,
        simulated=bool(readers and readers["simulated"]),
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(estimate: float, low: float, high: float) -> str:
    return f"{_num(estimate)} ({_num(low)} to {_num(high)})"


def _prop(p: Mapping[str, Any]) -> str:
    return f"{_ci(p['estimate'], p['ci_low'], p['ci_high'])} [{p['successes']}/{p['n']}]"


def _table(header: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; `header` is the column names joined by '|'."""
    lines = [f"| {header.replace('|', ' | ')} |", "|" + "---|" * (header.count("|") + 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def _vs_readers_markdown(
    name: str, model: Mapping[str, Any], level: str, call_rule: str
) -> list[str]:
    """BUSGen's reader figure as text: each reader against the model at matched operating
    points, the mean gains with MRMC intervals and p-values, and what was tested."""
    vs, rrrc = model["vs_readers"], model["mrmc"]["rrrc"]
    rows = [
        [
            c["reader_id"],
            _num(c["reader_sensitivity"]),
            _num(c["reader_specificity"]),
            _prop(c["model_sensitivity_at_spec"]),
            f"{c['model_sensitivity_at_spec']['estimate'] - c['reader_sensitivity']:+.3f}",
            _num(c["mcnemar_at_spec"]["p_value"], 4),
            _prop(c["model_specificity_at_sens"]),
            _num(c["mcnemar_at_sens"]["p_value"], 4),
        ]
        for c in vs["readers"]
    ]
    better = sum(
        c["model_sensitivity_at_spec"]["estimate"] > c["reader_sensitivity"] for c in vs["readers"]
    )
    significant = sum(
        c["model_sensitivity_at_spec"]["estimate"] > c["reader_sensitivity"]
        and c["mcnemar_at_spec"]["p_value"] < 0.05
        for c in vs["readers"]
    )
    sens_gain = _ci(vs["mean_sensitivity_gain"], *vs["sensitivity_gain_ci"])
    spec_gain = _ci(vs["mean_specificity_gain"], *vs["specificity_gain_ci"])
    lines = [f"### {name} vs readers at {call_rule}", ""]
    lines += [
        f"What was tested: for each reader, {name}'s threshold was set to match that reader's "
        f"specificity on the cases the reader read, and the two sensitivities were compared on "
        f"the malignant cases by {vs['mcnemar_method']}. The mean sensitivity gain is the "
        f"average of these differences over readers; its {level} CI and p-value come from an "
        "Obuchowski-Rockette MRMC test on sensitivity with readers and cases both random "
        "(Hillis df, jackknife covariance). Specificity at each reader's sensitivity is "
        "tested the same way.",
        "",
    ]
    lines += _table(
        "Reader|Reader sens.|Reader spec.|Model sens. at reader spec.|Sens. gain|McNemar p"
        "|Model spec. at reader sens.|McNemar p",
        rows,
    )
    lines += [
        f"{name} was more sensitive than {better} of {len(rows)} readers at their "
        f"specificity ({significant} with McNemar p < 0.05). Mean sensitivity gain {sens_gain}, "
        f"MRMC p = {_num(vs['sensitivity_gain_p'], 4)}; mean specificity gain {spec_gain}, "
        f"MRMC p = {_num(vs['specificity_gain_p'], 4)}.",
        "",
        f"OR MRMC {name} - reader mean AUC (RRRC): "
        f"{_ci(rrrc['estimate'], rrrc['ci_low'], rrrc['ci_high'])}, "
        f"p = {_num(rrrc['p_value'], 4)}.",
        "",
    ]
    return lines


def _reader_markdown(study: Mapping[str, Any]) -> list[str]:
    level = _pct(1 - study.get("alpha", 0.05))
    lines = [
        f"## {study['label']}",
        "",
        f"{study['n_readers']} readers, {study['n_cases']} "
        f"cases; models compared with modality '{study['compared_modality']}'.",
        "",
    ]
    for modality, readers in study["readers"].items():
        rows = [
            [
                r["reader_id"],
                str(r["n_cases"]),
                _prop(r["sensitivity"]),
                _prop(r["specificity"]),
                _num(r["auc"]),
            ]
            for r in readers
        ]
        lines += [f"### Readers, modality '{modality}'", ""]
        lines += _table("Reader|Cases|Sensitivity|Specificity|AUC", rows)
    for name, model in study["models"].items():
        lines += _vs_readers_markdown(name, model, level, study["call_rule"])
    if study["modality_comparison"]:
        comparison = study["modality_comparison"]
        overall = comparison["overall"]["rrrc"]
        lines += [
            "### Modality comparison (OR MRMC, RRRC)",
            "",
            f"Equal reader-mean AUC in all modalities: F = {_num(overall['statistic'], 2)} on "
            f"({_num(overall['df_num'], 0)}, {_num(overall['df_den'], 1)}) df, "
            f"p = {_num(overall['p_value'], 4)}.",
            "",
        ]
        for contrast in comparison["contrasts"]:
            rrrc = contrast["rrrc"]
            lines += [
                f"AUC {contrast['comparison']}: "
                f"{_ci(rrrc['estimate'], rrrc['ci_low'], rrrc['ci_high'])}, "
                f"p = {_num(rrrc['p_value'], 4)}.",
                "",
            ]
    return lines


def markdown_report(results: Mapping[str, Any]) -> str:
    """The evaluation's tables in Markdown."""
    cases = results["cases"]
    lines = [
        "# Evaluation",
        "",
        f"{cases['n']} test cases ({cases['n_positive']} positive, "
        f"{cases['n_negative']} negative). "
        "Proportions show [successes/n].",
        "",
        "## Models",
        "",
    ]
    rows = []
    for name, model in results["models"].items():
        auc, boot, op, thr = (
            model[k] for k in ("auc", "auc_bootstrap", "operating_point", "threshold")
        )
        rows.append(
            [
                name,
                _ci(auc["auc"], auc["ci_low"], auc["ci_high"]),
                f"{_num(boot['ci_low'])} to {_num(boot['ci_high'])}",
                f"{_num(thr['value'], 4)} ({thr['rule']}, on {thr['chosen_on']})",
                *(_prop(op[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")),
            ]
        )
    lines += _table(
        "Model|AUC (DeLong CI)|AUC bootstrap CI|Threshold|Sensitivity|Specificity|PPV|NPV|Accuracy",
        rows,
    )
    if results["pairwise"]:
        rows = [
            [
                p["model_a"],
                p["model_b"],
                _ci(p["difference"], p["ci_low"], p["ci_high"]),
                _num(p["z"], 2),
                _num(p["p_value"], 4),
            ]
            for p in results["pairwise"]
        ]
        lines += ["## Paired DeLong tests", ""]
        lines += _table("Model A|Model B|AUC B - A (CI)|z|p", rows)
    if results["reader_study"]:
        lines += _reader_markdown(results["reader_study"])
    return "\n".join(lines)


main = shell.command(run, "configs/evaluate.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
