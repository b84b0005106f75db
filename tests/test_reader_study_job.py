"""`busgen reader-study` on simulated studies (two and three modalities, numeric and BI-RADS
scales, every file format) matches direct calls."""

import csv
import json
import re

import numpy as np
import pytest

from busgen_jax.core import config_files, errors
from busgen_jax.evaluation import mrmc, roe_metz
from busgen_jax.jobs import reader_study


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 60)
    latent = np.clip(0.25 + 0.5 * truth + rng.normal(0, 0.2, 60), 0.01, 0.99)
    cases = [f"c{i:02d}" for i in range(60)]
    study = roe_metz.simulate_panel(
        truth,
        n_readers=4,
        seed=1,
        modalities=("unaided", "aided"),
        case_ids=cases,
        case_score=latent,
    )
    study.write_csv(tmp_path / "reads.csv")
    with open(tmp_path / "truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "truth"])
        writer.writerows(zip(cases, truth.tolist(), strict=True))
    return tmp_path, study


def test_job_reports_readers_and_the_modality_comparison(files):
    tmp_path, study = files
    config = config_files.load("configs/reader_study.py:default")
    config.reads, config.truth = str(tmp_path / "reads.csv"), str(tmp_path / "truth.csv")
    results = reader_study.run(config, str(tmp_path / "out"))
    assert results["n_readers"] == 4 and results["modalities"] == ["unaided", "aided"]
    direct = mrmc.or_modalities(study.truth, study.scores, modalities=study.modalities).to_dict()
    assert results["modality_comparison"]["auc"]["rrrc"] == pytest.approx(direct["rrrc"])
    sensitivity = mrmc.or_modalities(
        study.truth, study.scores, modalities=study.modalities, fom="sensitivity", thresholds=4
    )
    assert results["modality_comparison"]["sensitivity"]["rrrc"] == pytest.approx(
        sensitivity.rrrc.to_dict()
    )
    on_disk = json.loads((tmp_path / "out" / "reader_study" / "results.json").read_text())
    assert on_disk["readers"]["aided"][0]["reader_id"] == study.reader_ids[0]


def test_bad_truth_names_the_line(files):
    tmp_path, _ = files
    (tmp_path / "truth.csv").write_text("case_id,truth\nc00,yes\n")
    with pytest.raises(errors.JobError, match=r"truth.csv line 2: truth must be 0 or 1"):
        reader_study.read_truth(str(tmp_path / "truth.csv"))


def test_three_modalities_from_an_imrmc_file_with_numeric_scores(tmp_path):
    rng = np.random.default_rng(2)
    truth = (np.arange(50) % 2).astype(int)
    scores = np.round(
        rng.normal(size=(3, 3, 50)) + truth * np.array([1.0, 1.5, 2.0])[:, None, None], 2
    )
    lines = ["NR: 3", "N0: 25", "N1: 25", "NM: 3", "BEGIN DATA:"]
    lines += [f"-1,{k},0,{t}" for k, t in enumerate(truth)]
    lines += [
        f"reader{j},{k},{m},{scores[i, j, k]}"
        for i, m in enumerate("ABC")
        for j in range(3)
        for k in range(50)
    ]
    (tmp_path / "study.imrmc").write_text("\n".join(lines) + "\n")
    config = config_files.load("configs/reader_study.py:default")
    config.update(
        reads=str(tmp_path / "study.imrmc"),
        format="imrmc",
        rating_scale="numeric",
        threshold="",
        foms=("auc", "pauc"),
        fixed_reader_test="f",
    )
    results = reader_study.run(config, str(tmp_path / "out"))
    assert results["readers"] is None and set(results["modality_comparison"]) == {
        "auc",
        "pAUC (FPR <= 0.2)",
    }
    direct = mrmc.or_modalities(truth, scores, modalities="ABC", fixed_reader_test="f")
    auc = results["modality_comparison"]["auc"]
    assert auc["overall"]["rrrc"]["p_value"] == pytest.approx(direct.overall["rrrc"].p_value)
    assert [c["comparison"] for c in auc["contrasts"]] == ["B - A", "C - A", "C - B"]
    # DBM fixed readers: the contrasts share the (t - 1)(c - 1) error df.
    assert auc["frrc"]["df"] == 98


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reads": ""}, "config.reads"),
        ({"foms": ("accuracy",)}, "config.foms: 'accuracy'"),
        ({"alpha": 0.95}, "'alpha' is 0.95"),
        ({"fixed_reader_test": "z"}, "config.fixed_reader_test = 'z'"),
        ({"format": "excel"}, "format 'excel' is not one of"),
    ],
)
def test_bad_config_is_one_error(files, change, message):
    tmp_path, _ = files
    config = config_files.load("configs/reader_study.py:default")
    config.reads, config.truth = str(tmp_path / "reads.csv"), str(tmp_path / "truth.csv")
    config.update(change)
    with pytest.raises(errors.JobError, match=re.escape(message)):
        reader_study.run(config, str(tmp_path / "out"))
