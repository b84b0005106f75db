"""`busgen audit` finds planted copies in a dataset, passes independent images, and attacks the
generator with membership inference when it is given."""

import json

import pytest
from generator_fixtures import phantom_dataset, tiny_generator

from busgen_jax.core import config_files, errors
from busgen_jax.data import pipeline
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.jobs import audit as audit_job
from busgen_jax.privacy import membership


def _config(synthetic, train):
    config = config_files.load("configs/audit.py:default")
    config.synthetic_paths = (str(synthetic),)
    config.train_paths = (str(train),)
    config.image_size = 32
    return config


def test_planted_copies_all_exceed_the_threshold_and_are_called_copying(tmp_path):
    data = phantom_dataset(tmp_path / "data", num=48)
    config = _config(data, data)
    config.private_pictures = True
    report = audit_job.run(config, str(tmp_path / "copies"))
    assert report["rejected_count"] == report["num_candidates"] > 0
    assert report["memorization_test"]["copying"]
    assert json.loads((tmp_path / "copies" / "audit" / "audit.json").read_text()) == report
    # A copy's nearest training case is itself: the audit names it by its pseudonymous id.
    pair = report["closest_pairs"][0]
    assert pair["train_case_id"] == pair["synthetic_case_id"]
    train_ids = pipeline.load_split([str(data)], "train", 32)["case_id"]
    assert {p["train_case_id"] for p in report["closest_pairs"]} <= set(train_ids)
    private = tmp_path / "copies" / "private_audit" / "closest_pairs.png"
    assert report["private_pictures"] == str(private) and private.stat().st_size > 0


def test_independent_images_mostly_pass(tmp_path):
    # ~18 held-out images: with two measures each calibrated at their maximum, about 2 / 19 of
    # new images are flagged by chance.
    train = phantom_dataset(tmp_path / "train", num=120, seed=0)
    other = phantom_dataset(tmp_path / "other", num=48, seed=1)
    report = audit_job.run(_config(other, train), str(tmp_path / "independent"))
    assert report["rejected_count"] <= 0.2 * report["num_candidates"]
    assert not report["memorization_test"]["copying"]
    assert report["private_pictures"] is None
    assert not (tmp_path / "independent" / "private_audit").exists()
    assert report["membership_inference"] is None  # no generator given: no attack


def test_membership_inference_attacks_the_given_generator(tmp_path, capsys):
    data = phantom_dataset(tmp_path / "data", num=48)
    config = _config(data, data)
    config.generator = str(tiny_generator(tmp_path / "gen"))
    config.membership_draws = 2
    report = audit_job.run(config, str(tmp_path / "mia"))
    result = report["membership_inference"]
    # The generator's training split against the held-out split, each image under its own
    # condition at the generator's size and classes: the same numbers as the attack run directly.
    model, spec = generator_lib.load_generator(config.generator)
    members, others = (
        pipeline.load_split([str(data)], split, spec.image_size, spec.class_names)
        for split in ("train", "test")
    )
    expected = membership.attack(model, spec, members, others, num_draws=2, seed=0)
    assert result["num_members"] == len(members["image"]) > 0
    assert result["num_nonmembers"] == len(others["image"]) > 0
    assert result["auc"] == pytest.approx(expected["auc"])
    assert result["tpr_at_1pct_fpr"] == pytest.approx(expected["tpr_at_1pct_fpr"])
    assert result["num_draws"] == 2
    # A large split is scored on a seeded sample of it.
    capped = membership.attack(model, spec, members, others, num_draws=2, seed=0, max_images=5)
    assert capped["num_members"] == capped["num_nonmembers"] == 5
    on_disk = json.loads((tmp_path / "mia" / "audit" / "audit.json").read_text())
    assert on_disk["membership_inference"] == result
    assert f"membership inference: AUC {result['auc']:.3f}" in capsys.readouterr().out


def test_an_adapter_without_its_generator_is_one_clear_error(tmp_path):
    data = phantom_dataset(tmp_path / "data", num=16)
    config = _config(data, data)
    config.adapter = str(tmp_path / "adapter")
    with pytest.raises(errors.JobError, match="config.generator"):
        audit_job.run(config, str(tmp_path / "out"))


def test_missing_inputs_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        audit_job.main(
            ["busgen audit", "--config=configs/audit.py:default", f"--workdir={tmp_path}"]
        )
    assert exc.value.code == 2
    assert "synthetic_paths and config.train_paths are both required" in capsys.readouterr().err
