"""`busgen audit` finds planted copies in a dataset and passes independent images."""

import json

from generator_fixtures import phantom_dataset

from busgen_jax import audit_job, job


def _config(synthetic, train):
    config = job.load_config("configs/audit.py:default")
    config.synthetic_paths = (str(synthetic),)
    config.train_paths = (str(train),)
    config.image_size = 32
    return config


def test_planted_copies_all_exceed_the_threshold(tmp_path):
    data = phantom_dataset(tmp_path / "data", num=48)
    report = audit_job.run(_config(data, data), str(tmp_path / "copies"))
    assert report["rejected_count"] == report["num_candidates"] > 0
    assert json.loads((tmp_path / "copies" / "audit" / "audit.json").read_text()) == report


def test_independent_images_mostly_pass(tmp_path):
    train = phantom_dataset(tmp_path / "train", num=48, seed=0)
    other = phantom_dataset(tmp_path / "other", num=48, seed=1)
    report = audit_job.run(_config(other, train), str(tmp_path / "independent"))
    assert report["rejected_count"] <= 0.2 * report["num_candidates"]


def test_missing_inputs_are_one_clear_error(tmp_path, capsys):
    try:
        audit_job.main(
            ["busgen audit", "--config=configs/audit.py:default", f"--workdir={tmp_path}"]
        )
    except SystemExit as exit_info:
        assert exit_info.code == 2
    assert "synthetic_paths and config.train_paths are both required" in capsys.readouterr().err
