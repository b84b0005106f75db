"""`busgen reader-study` on a simulated two-modality study matches direct calls."""

import csv
import json

import numpy as np
import pytest

from busgen_jax import job, reader_study_job
from busgen_jax.evaluation import mrmc, reader_study


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 60)
    latent = np.clip(0.25 + 0.5 * truth + rng.normal(0, 0.2, 60), 0.01, 0.99)
    cases = [f"c{i:02d}" for i in range(60)]
    study = reader_study.simulate_reader_study(
        truth, latent, n_readers=4, seed=1, modalities=("unaided", "aided"), case_ids=cases
    )
    study.write_csv(tmp_path / "reads.csv")
    with open(tmp_path / "truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "truth"])
        writer.writerows(zip(cases, truth.tolist(), strict=True))
    return tmp_path, study


def test_job_reports_readers_and_the_modality_comparison(files):
    tmp_path, study = files
    config = job.load_config("configs/reader_study.py:default")
    config.reads, config.truth = str(tmp_path / "reads.csv"), str(tmp_path / "truth.csv")
    results = reader_study_job.run(config, str(tmp_path / "out"))
    assert results["n_readers"] == 4 and results["modalities"] == ["unaided", "aided"]
    direct = mrmc.or_modalities(study.truth, study.scores, modalities=study.modalities).to_dict()
    assert results["modality_comparison"]["rrrc"] == pytest.approx(direct["rrrc"])
    on_disk = json.loads((tmp_path / "out" / "reader_study" / "results.json").read_text())
    assert on_disk["readers"]["aided"][0]["reader_id"] == study.reader_ids[0]


def test_bad_truth_names_the_line(files):
    tmp_path, _ = files
    (tmp_path / "truth.csv").write_text("case_id,truth\nc00,yes\n")
    with pytest.raises(job.JobError, match=r"truth.csv line 2: truth must be 0 or 1"):
        reader_study_job.read_truth(str(tmp_path / "truth.csv"))
