"""The evaluation job and its library (`evaluation.clinical`, `evaluation.prediction_io`): numbers
agree with direct calls of the statistics, files are written."""

import csv
import json
import re
import types

import numpy as np
import pytest
from PIL import Image
from scipy import special
from sklearn import metrics

from busgen_jax.core import config_files, errors
from busgen_jax.data import schema, shards
from busgen_jax.evaluation import (
    clinical,
    mrmc,
    prediction_io,
    reader_io,
    reader_study,
    roe_metz,
    statistics,
)
from busgen_jax.jobs import evaluate
from busgen_jax.reporting import demo_report

N_TEST, N_VAL = 150, 120


def _cases(seed, n, prefix):
    """Latent malignancy p, truth ~ Bernoulli(p), and two models: 'strong' sees logit(p) with
    little noise, 'weak' with much more, so AUC(strong) > AUC(weak)."""
    rng = np.random.default_rng(seed)
    latent = rng.beta(0.6, 0.9, n)
    truth = (rng.random(n) < latent).astype(int)
    pathology = np.where(truth == 1, rng.choice(["malignant", "dcis"], n), "benign")
    pathology[(truth == 0) & (rng.random(n) < 0.2)] = "normal"
    logit = special.logit(np.clip(latent, 1e-4, 1 - 1e-4))
    scores = {
        "strong": special.expit(logit + 0.3 * rng.standard_normal(n)),
        "weak": special.expit(logit + 2.5 * rng.standard_normal(n)),
    }
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    return ids, latent, pathology, scores


def _write_csv(path, ids, pathology, probability):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "patient_id", "pathology", "device", "label", "probability"])
        for case, p, prob in zip(ids, pathology, probability, strict=True):
            writer.writerow(
                [case, f"p-{case}", p, "device-0", int(p in ("malignant", "dcis")), prob]
            )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    test_ids, latent, test_path, test_scores = _cases(0, N_TEST, "t")
    val_ids, _, val_path, val_scores = _cases(1, N_VAL, "v")
    paths = {}
    for name in ("strong", "weak"):
        paths[name] = (tmp / f"{name}_test.csv", tmp / f"{name}_val.csv")
        _write_csv(paths[name][0], test_ids, test_path, test_scores[name])
        _write_csv(paths[name][1], val_ids, val_path, val_scores[name])
    tiny = np.zeros((8, 8), np.uint8)
    records = [
        schema.make_record(
            tiny,
            pathology=str(p),
            device="device-0",
            case_id=c,
            patient_id=f"p-{c}",
            split="test",
            provenance={"source": "phantom"},
            malignancy_score=float(s),
        )
        for c, p, s in zip(test_ids, test_path, latent, strict=True)
    ]
    shards.write_dataset(records, tmp / "data", name="mini")
    config = config_files.load("configs/evaluate.py:phantom")
    config.predictions = tuple(f"{n}={paths[n][0]}" for n in ("strong", "weak"))
    config.validation = tuple(f"{n}={paths[n][1]}" for n in ("strong", "weak"))
    config.bootstrap.n_boot = 200
    config.reader_study.update(
        data_paths=(str(tmp / "data"),), n_readers=5, modalities=("unaided", "aided"), seed=3
    )
    results = evaluate.run(config, str(tmp / "work"))
    return {
        "tmp": tmp,
        "config": config,
        "results": results,
        "paths": paths,
        "test": (test_ids, latent, test_path, test_scores),
        "val": (val_ids, val_path, val_scores),
    }


def _truth(pathology):
    return np.isin(pathology, ["malignant", "dcis"]).astype(int)


def test_models_match_direct_statistics(setup):
    results = setup["results"]
    ids, latent, pathology, scores = setup["test"]
    y, strong, weak = _truth(pathology), scores["strong"], scores["weak"]
    assert results["cases"] == {
        "n": len(y),
        "n_positive": int(y.sum()),
        "n_negative": int((1 - y).sum()),
    }
    for name, s in (("strong", strong), ("weak", weak)):
        model = results["models"][name]
        assert model["auc"] == statistics.roc_auc_ci(y, s).to_dict()
        assert model["auc"]["auc"] == pytest.approx(metrics.roc_auc_score(y, s))
        boot = statistics.bootstrap_ci(metrics.roc_auc_score, y, s, n_boot=200, seed=0)
        assert model["auc_bootstrap"] == boot.to_dict()
    assert results["models"]["strong"]["auc"]["auc"] > results["models"]["weak"]["auc"]["auc"]
    pair = results["pairwise"][0]
    assert (pair["model_a"], pair["model_b"]) == ("strong", "weak")
    assert pair["difference"] < 0 and pair["p_value"] < 0.05
    assert pair["z"] == pytest.approx(statistics.delong_test(y, strong, weak).z)


def test_threshold_is_chosen_on_validation(setup):
    val_ids, val_path, val_scores = setup["val"]
    ids, _, pathology, scores = setup["test"]
    y_val, s_val = _truth(val_path), val_scores["strong"]
    y, s = _truth(pathology), scores["strong"]
    model = setup["results"]["models"]["strong"]
    threshold = statistics.threshold_for_specificity(y_val, s_val, 0.9)
    assert model["threshold"] == {
        "value": threshold,
        "rule": "target_specificity",
        "target": 0.9,
        "chosen_on": "validation",
    }
    assert model["operating_point"] == statistics.binary_metrics(y, s, threshold).to_dict()
    # Without validation predictions the threshold comes from the test set, and says so.
    preds = {"strong": prediction_io.read_predictions(setup["paths"]["strong"][0])}
    truth = prediction_io.truth_from_labels(preds)
    on_test = clinical.evaluate_predictions(preds, truth, n_boot=10, threshold_rule="youden")
    fpr, tpr, thresholds = metrics.roc_curve(y, s)
    assert on_test["models"]["strong"]["threshold"]["chosen_on"] == "test"
    assert on_test["models"]["strong"]["threshold"]["value"] == thresholds[np.argmax(tpr - fpr)]


def test_simulated_reader_study_matches_direct_calls(setup):
    study_results = setup["results"]["reader_study"]
    ids, latent, pathology, scores = setup["test"]
    y, strong = _truth(pathology), scores["strong"]
    study = roe_metz.simulate_panel(
        y,
        n_readers=5,
        seed=3,
        modalities=("unaided", "aided"),
        case_ids=ids,
        case_score=latent,
        dcis=pathology == "dcis",
        params=roe_metz.RoeMetz(modality_gain=0.3),
    )
    assert study_results["simulated"] and "SIMULATED" in study_results["label"]
    assert study_results["compared_modality"] == "unaided"
    assert study_results["call_rule"] == "BI-RADS >= 4A"
    readers = reader_study.reader_performance(study, modality="aided")
    assert study_results["readers"]["aided"] == [r.to_dict() for r in readers]
    vs = reader_study.compare_model_to_readers(study, strong, modality="unaided")
    got = study_results["models"]["strong"]
    assert json.dumps(got["vs_readers"]) == json.dumps(vs.to_dict())
    # The simulated readers are not degenerate: the model-vs-readers test has an answer.
    assert 0 < vs.sensitivity_gain_p < 1 and vs.sensitivity_gain_ci[0] < vs.sensitivity_gain_ci[1]
    or_test = mrmc.or_model_vs_readers(
        y, strong, study.modality_scores("unaided"), reader_ids=study.reader_ids
    )
    assert json.dumps(got["mrmc"]) == json.dumps(or_test.to_dict())
    comparison = mrmc.or_modalities(
        y, study.scores, modalities=("unaided", "aided"), reader_ids=study.reader_ids
    )
    assert study_results["modality_comparison"]["rrrc"] == comparison.rrrc.to_dict()


def test_outputs_are_written(setup):
    out = setup["tmp"] / "work" / "evaluation"
    # Strict JSON (no NaN), the same numbers as returned.
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"]["weak"]["auc"] == setup["results"]["models"]["weak"]["auc"]
    assert saved["reader_study"]["simulated"] is True
    with Image.open(out / "roc.png") as image:
        assert image.format == "PNG"
        assert np.asarray(image.convert("L")).std() > 10
    report = (out / "evaluation.md").read_text()
    auc = setup["results"]["models"]["strong"]["auc"]["auc"]
    assert f"| strong | {auc:.3f}" in report
    assert (
        "## SIMULATED reader study" in report and "### strong vs readers at BI-RADS >= 4A" in report
    )
    assert "What was tested: for each reader" in report
    assert re.search(
        r"Mean sensitivity gain [-+]?\d\.\d{3} \(.* to .*\), MRMC p = 0\.\d{4}", report
    )
    assert "### Modality comparison" in report


def test_reader_csv_study(setup, tmp_path):
    ids, latent, pathology, scores = setup["test"]
    study = roe_metz.simulate_panel(_truth(pathology), n_readers=3, seed=1, case_ids=ids)
    rows = [{k: v for k, v in row.items() if k != "simulated"} for row in study.to_rows()]
    reads = tmp_path / "reads.csv"
    with open(reads, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = setup["config"].copy_and_resolve_references()
    config.reader_study.update(simulate=False, csv=str(reads))
    config.bootstrap.update(n_boot=20, method="bca")
    results = evaluate.run(config, str(tmp_path))
    y, strong = _truth(pathology), scores["strong"]
    bca = statistics.bootstrap_ci(metrics.roc_auc_score, y, strong, n_boot=20, seed=0, method="bca")
    assert results["models"]["strong"]["auc_bootstrap"] == bca.to_dict()
    assert results["reader_study"]["simulated"] is False
    assert results["reader_study"]["modality_comparison"] is None
    assert "SIMULATED" not in (tmp_path / "evaluation" / "evaluation.md").read_text()


def test_cli_reports_bad_input_in_one_line(setup, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,label,probability\nc1,0,0.2\nc2,1,oops\n")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(
            ["busgen evaluate", f"--workdir={tmp_path}", f"--config.predictions=('m={bad}',)"]
        )
    assert exit_info.value.code == 2
    assert f"{bad}:3: field 'probability' 'oops' is not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"predictions": ()}, "config.predictions is empty"),
        ({"predictions": ("no-equals-sign",)}, "is not 'name=path'"),
        ({"validation": ("other=x.csv",)}, "names model(s) ['other'] without test"),
        ({"threshold": {"rule": "best"}}, "config.threshold.rule = 'best'"),
        ({"alpha": 0.95}, "config.alpha: 'alpha' is 0.95"),
        ({"bootstrap": {"method": "studentized"}}, "config.bootstrap.method = 'studentized'"),
        ({"reader_study": {"format": "excel"}}, "config.reader_study.format = 'excel'"),
        ({"reader_study": {"mcnemar": "yates"}}, "config.reader_study.mcnemar = 'yates'"),
        (
            {"reader_study": {"rating_scale": "numeric"}},
            "config.reader_study: threshold: rating '4A' is not a finite number",
        ),
    ],
)
def test_bad_config_is_named(setup, tmp_path, change, message):
    config = setup["config"].copy_and_resolve_references()
    config.update(change)
    with pytest.raises(errors.JobError, match=re.escape(message)):
        evaluate.run(config, str(tmp_path))


def test_model_missing_cases_is_named(setup, tmp_path):
    ids, _, pathology, scores = setup["test"]
    partial = tmp_path / "partial.csv"
    _write_csv(partial, ids[:-5], pathology[:-5], scores["weak"][:-5])
    preds = {
        "strong": prediction_io.read_predictions(setup["paths"]["strong"][0]),
        "partial": prediction_io.read_predictions(partial),
    }
    truth = prediction_io.truth_from_labels(preds)
    with pytest.raises(errors.JobError, match="predictions of 'partial' lack 5 evaluated case"):
        clinical.evaluate_predictions(preds, truth, n_boot=10)


def test_disagreeing_labels_are_named(setup, tmp_path):
    ids, _, pathology, scores = setup["test"]
    flipped = np.where(pathology == "benign", "malignant", pathology)
    other = tmp_path / "other.csv"
    _write_csv(other, ids, flipped, scores["weak"])
    preds = {
        "strong": prediction_io.read_predictions(setup["paths"]["strong"][0]),
        "other": prediction_io.read_predictions(other),
    }
    with pytest.raises(errors.JobError, match="label 1 in 'other' disagrees with 'strong'"):
        prediction_io.truth_from_labels(preds)


def test_numeric_reads_and_a_model_listed_as_a_reader(setup, tmp_path):
    ids, latent, pathology, scores = setup["test"]
    y = _truth(pathology)
    rng = np.random.default_rng(0)
    rows = ["reader_id,case_id,rating,truth"]
    for reader in ("r1", "r2", "strong"):
        probability = np.clip(100 * latent + rng.normal(0, 15, latent.size), 0, 100)
        rows += [f"{reader},{c},{p:.0f},{t}" for c, p, t in zip(ids, probability, y, strict=True)]
    reads = tmp_path / "reads.csv"
    reads.write_text("\n".join(rows) + "\n")
    config = setup["config"].copy_and_resolve_references()
    config.reader_study.update(
        simulate=False, csv=str(reads), rating_scale="numeric", threshold="20"
    )
    config.bootstrap.n_boot = 10
    with pytest.raises(errors.JobError, match=r"model\(s\) \['strong'\] are also listed among"):
        evaluate.run(config, str(tmp_path))
    reads.write_text("\n".join(r for r in rows if not r.startswith("strong")) + "\n")
    results = evaluate.run(config, str(tmp_path))
    study = reader_io.load(reads, "long", scale=reader_study.RatingScale("numeric", threshold=20))
    expected = reader_study.reader_performance(study)
    assert results["reader_study"]["readers"]["default"] == [r.to_dict() for r in expected]
    assert expected[0].threshold == "20"


def test_report_shows_the_roc_figure_with_the_reader_study(setup):
    paths = types.SimpleNamespace(evaluation=setup["tmp"] / "work" / "evaluation")
    sections = demo_report.evaluation_sections(paths)
    (readers,) = [s for s in sections if s.title.startswith("SIMULATED reader study")]
    assert [f.path for f in readers.figures] == [paths.evaluation / "roc.png"]
    assert "BI-RADS 4A" in readers.figures[0].caption
    texts = [b for s in sections for b in s.blocks if isinstance(b, str)]
    assert any(t.startswith("What was tested:") for t in texts)
