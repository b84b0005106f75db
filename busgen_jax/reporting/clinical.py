"""The clinical evaluation's results (`evaluation.clinical`) as report sections and a ROC figure.

`sections(results)` turns the results dict into tables and text; `busgen evaluate` renders them
as Markdown (evaluation.md) and the demo report as HTML, both from the same results, so neither
is parsed back from the other. `write_roc` draws every model's ROC curve with the readers'
operating points.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from busgen_jax.evaluation import clinical, plots, prediction_io
from busgen_jax.reporting.html import Figure, Section, Table

MODEL_HEADER = (
    "Model|AUC (DeLong CI)|AUC bootstrap CI|Threshold|Sensitivity|Specificity|PPV|NPV|Accuracy"
).split("|")
VS_READERS_HEADER = (
    "Reader|Reader sens.|Reader spec.|Model sens. at reader spec.|Sens. gain|McNemar p"
    "|Model spec. at reader sens.|McNemar p"
).split("|")


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(estimate: float, low: float, high: float) -> str:
    return f"{_num(estimate)} ({_num(low)} to {_num(high)})"


def _prop(p: Mapping[str, Any]) -> str:
    return f"{_ci(p['estimate'], p['ci_low'], p['ci_high'])} [{p['successes']}/{p['n']}]"


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


def _model_row(name: str, model: Mapping[str, Any]) -> list[str]:
    auc, boot, op, thr = (
        model[k] for k in ("auc", "auc_bootstrap", "operating_point", "threshold")
    )
    return [
        name,
        _ci(auc["auc"], auc["ci_low"], auc["ci_high"]),
        f"{_num(boot['ci_low'])} to {_num(boot['ci_high'])}",
        f"{_num(thr['value'], 4)} ({thr['rule']}, on {thr['chosen_on']})",
        *(_prop(op[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")),
    ]


def _pairwise_row(p: Mapping[str, Any]) -> list[str]:
    return [
        p["model_a"],
        p["model_b"],
        _ci(p["difference"], p["ci_low"], p["ci_high"]),
        _num(p["z"], 2),
        _num(p["p_value"], 4),
    ]


def _vs_readers_section(name: str, model: Mapping[str, Any], level: str, call_rule: str) -> Section:
    """BUSGen's reader figure as text: each reader against the model at matched operating
    points, the mean gains with MRMC intervals and p-values, and what was tested."""
    vs, rrrc = model["vs_readers"], model["mrmc"]["rrrc"]
    readers = vs["readers"]
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
        for c in readers
    ]
    better = [c["model_sensitivity_at_spec"]["estimate"] > c["reader_sensitivity"] for c in readers]
    significant = sum(
        more and c["mcnemar_at_spec"]["p_value"] < 0.05
        for more, c in zip(better, readers, strict=True)
    )
    sens_gain = _ci(vs["mean_sensitivity_gain"], *vs["sensitivity_gain_ci"])
    spec_gain = _ci(vs["mean_specificity_gain"], *vs["specificity_gain_ci"])
    tested = (
        f"What was tested: for each reader, {name}'s threshold was set to match that reader's "
        f"specificity on the cases the reader read, and the two sensitivities were compared on "
        f"the malignant cases by {vs['mcnemar_method']}. The mean sensitivity gain is the "
        f"average of these differences over readers; its {level} CI and p-value come from an "
        "Obuchowski-Rockette MRMC test on sensitivity with readers and cases both random "
        "(Hillis df, jackknife covariance). Specificity at each reader's sensitivity is "
        "tested the same way."
    )
    found = (
        f"{name} was more sensitive than {sum(better)} of {len(rows)} readers at their "
        f"specificity ({significant} with McNemar p < 0.05). Mean sensitivity gain {sens_gain}, "
        f"MRMC p = {_num(vs['sensitivity_gain_p'], 4)}; mean specificity gain {spec_gain}, "
        f"MRMC p = {_num(vs['specificity_gain_p'], 4)}."
    )
    auc = (
        f"OR MRMC {name} - reader mean AUC (RRRC): "
        f"{_ci(rrrc['estimate'], rrrc['ci_low'], rrrc['ci_high'])}, "
        f"p = {_num(rrrc['p_value'], 4)}."
    )
    return Section(
        f"{name} vs readers at {call_rule}",
        level=3,
        blocks=[tested, Table("", VS_READERS_HEADER, rows), found, auc],
    )


def _modality_section(comparison: Mapping[str, Any]) -> Section:
    overall = comparison["overall"]["rrrc"]
    blocks: list[str | Table | Figure] = [
        f"Equal reader-mean AUC in all modalities: F = {_num(overall['statistic'], 2)} on "
        f"({_num(overall['df_num'], 0)}, {_num(overall['df_den'], 1)}) df, "
        f"p = {_num(overall['p_value'], 4)}."
    ]
    for contrast in comparison["contrasts"]:
        rrrc = contrast["rrrc"]
        blocks.append(
            f"AUC {contrast['comparison']}: "
            f"{_ci(rrrc['estimate'], rrrc['ci_low'], rrrc['ci_high'])}, "
            f"p = {_num(rrrc['p_value'], 4)}."
        )
    return Section("Modality comparison (OR MRMC, RRRC)", level=3, blocks=blocks)


def _reader_sections(study: Mapping[str, Any]) -> list[Section]:
    level = _pct(1 - study.get("alpha", 0.05))
    out = [
        Section(
            study["label"],
            blocks=[
                f"{study['n_readers']} readers, {study['n_cases']} cases; models compared with "
                f"modality '{study['compared_modality']}'."
            ],
        )
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
        header = ("Reader", "Cases", "Sensitivity", "Specificity", "AUC")
        out.append(
            Section(f"Readers, modality '{modality}'", level=3, blocks=[Table("", header, rows)])
        )
    for name, model in study["models"].items():
        out.append(_vs_readers_section(name, model, level, study["call_rule"]))
    if study["modality_comparison"]:
        out.append(_modality_section(study["modality_comparison"]))
    return out


def sections(results: Mapping[str, Any], roc: Figure | None = None) -> list[Section]:
    """The evaluation's tables and text: a title section, the models, the paired DeLong tests
    and the reader study; `roc`, when given, sits with the reader study (as in BUSGen's reader
    figure), else under the title."""
    cases = results["cases"]
    out = [
        Section(
            "Evaluation",
            level=1,
            blocks=[
                f"{cases['n']} test cases ({cases['n_positive']} positive, "
                f"{cases['n_negative']} negative). Proportions show [successes/n]."
            ],
        ),
        Section(
            "Models",
            blocks=[
                Table("", MODEL_HEADER, [_model_row(n, m) for n, m in results["models"].items()])
            ],
        ),
    ]
    if results["pairwise"]:
        rows = [_pairwise_row(p) for p in results["pairwise"]]
        header = ("Model A", "Model B", "AUC B - A (CI)", "z", "p")
        out.append(Section("Paired DeLong tests", blocks=[Table("", header, rows)]))
    readers = _reader_sections(results["reader_study"]) if results["reader_study"] else []
    if roc is not None:
        (readers or out)[0].figures = [roc]
    return out + readers


def write_roc(path: str | os.PathLike, inputs: clinical.Inputs, readers: Mapping | None) -> None:
    """Every model's ROC curve on the reader study's cases (all evaluated cases without one),
    with the readers' points of the compared modality (`readers`: the results' reader study)."""
    case_ids: Sequence[str] = (
        list(inputs.study.case_ids) if inputs.study is not None else inputs.case_ids
    )
    models = {
        name: prediction_io.aligned_scores(cols, case_ids, name)
        for name, cols in inputs.tests.items()
    }
    points, title = {}, ""
    if readers is not None:
        for p in readers["readers"][readers["compared_modality"]]:
            points[p["reader_id"]] = (p["sensitivity"]["estimate"], p["specificity"]["estimate"])
            title = f"Readers at {readers['call_rule']}"
    plots.plot_roc_curves(
        path,
        models,
        [inputs.truth[case] for case in case_ids],
        points,
        title=title,
        simulated=bool(readers and readers["simulated"]),
    )
