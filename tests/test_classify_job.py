"""The classifier job end to end on a separable task: learning, evaluation, export, predict,
resume, U-Net initialisation and one-line config errors."""

from __future__ import annotations

import csv
import json
import re
import shutil

import jax
import numpy as np
import pytest
from generator_fixtures import tiny_generator
from sklearn.metrics import roc_auc_score

from busgen_jax.classification import inference, train
from busgen_jax.core import config_files
from busgen_jax.data import schema, shards
from busgen_jax.diffusion import generator
from busgen_jax.jobs import predict, train_classifier
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.training import train_state


def bright_dark_records(num: int, seed: int = 0, size: int = 32) -> list[dict]:
    """Benign images are dark, malignant bright (plus speckle); normal cases are not in the task.

    Every fifth case is a test case, so both classes are in the test split.
    """
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num):
        pathology = ("benign", "malignant", "normal")[i % 2 if i % 7 else 2]
        level = {"benign": 70, "malignant": 180, "normal": 125}[pathology]
        image = np.clip(rng.normal(level, 30, (size, size)), 0, 255).astype(np.uint8)
        records.append(
            schema.make_record(
                image,
                pathology=pathology,
                device="scanner-a",
                case_id=f"bd-{i:04d}",
                patient_id=f"bd-p{i:04d}",
                split="test" if i % 5 == 0 else "train",
                provenance={"source": "phantom", "seed": seed},
            )
        )
    return records


def _tiny_config(data_dir, **train):
    config = config_files.load("configs/classifier.py:tiny")
    config.data.paths = (str(data_dir),)
    config.train.update(train)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bright_dark")
    shards.write_dataset(bright_dark_records(80), directory, name="bright_dark")
    return directory


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("classifier_run")
    return workdir, train.train_and_evaluate(_tiny_config(data_dir), str(workdir))


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_learns_a_separable_task_and_reports_its_auc(trained):
    workdir, result = trained
    assert result["eval"]["auc"] > 0.9
    rows = _read_csv(workdir / "predictions_test.csv")
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["probability"]) for r in rows]
    assert roc_auc_score(labels, scores) == pytest.approx(result["eval"]["auc"], abs=1e-9)
    saved = json.loads((workdir / "eval_test.json").read_text())
    assert saved["auc"] == result["eval"]["auc"] and saved["ci_low"] <= saved["auc"]
    # Training accuracy rises well above chance by the end.
    assert np.mean([m["accuracy"] for _, m in result["history"][-5:]]) > 0.8


def test_predict_writes_one_row_per_test_case_with_the_models_probabilities(trained, tmp_path):
    workdir, result = trained
    predict.main(
        [
            "busgen predict",
            "--config=configs/classifier.py:predict",
            f"--workdir={tmp_path}",
            f"--config.export_dir={workdir / 'export'}",
        ]
    )
    rows = _read_csv(tmp_path / "predictions_test.csv")
    test = [
        r for r in bright_dark_records(80) if r["split"] == "test" and r["pathology"] != "normal"
    ]
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in test]
    assert [int(r["label"]) for r in rows] == [int(r["pathology"] == "malignant") for r in test]
    assert set(inference.CSV_COLUMNS) == set(rows[0])
    # The same probabilities straight from the trained EMA model.
    state = result["state"]
    images = np.stack([schema.decode_png(r["image"]) for r in test]) / 127.5 - 1.0
    logits = state.model(state.ema_params)(images[..., None].astype(np.float32))
    expected = jax.nn.sigmoid(logits[:, 0])
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected, atol=1e-5)
    features = inference.extract_features(workdir / "export", images)
    assert features.shape == (len(test), 16)


def test_resume_after_a_stop_equals_the_uninterrupted_run(trained, data_dir, tmp_path):
    workdir, reference = trained
    # A run stopped after its step-20 checkpoint: the step-40 one was never written.
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "40")
    resumed = train.train_and_evaluate(_tiny_config(data_dir), str(tmp_path))
    assert [step for step, _ in resumed["history"]] == list(range(21, 41))
    for key in ("params", "ema_params", "opt_state"):
        a, b = getattr(resumed["state"], key), getattr(reference["state"], key)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert resumed["eval"]["auc"] == pytest.approx(reference["eval"]["auc"])


def test_unet_init_copies_the_generators_encoder_weights(data_dir, tmp_path):
    generator_dir = tiny_generator(tmp_path / "generator")
    config = _tiny_config(data_dir)
    config.model.init_from_unet = str(generator_dir)
    config = train.resolve_config(config)
    train.validate_config(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    init, _, shardings, _ = train.compiled(config, mesh)
    state = train.with_unet_encoder(
        init(), str(generator_dir), train_state.trainable_filter("params")
    )
    unet, _ = generator.load_generator(generator_dir)
    expected = unet.head.kernel[...]
    for params in (state.params, state.ema_params):
        np.testing.assert_array_equal(params["encoder"]["head"]["kernel"][...], expected)
        np.testing.assert_array_equal(
            params["encoder"]["down"][0]["conv1"]["kernel"][...], unet.down[0].conv1.kernel[...]
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.task.positive=('benign',)"], "config.task.positive = .* shares"),
        (["--config.task.negative=('cyst',)"], "config.task.negative = .* not pathologies"),
        (["--config.data.paths=()"], "config.data.paths = .* at least one"),
        (["--config.data.image_size=48"], "config.data.image_size = 48 must equal"),
        (["--config.train.ema_decay=1.0"], "config.train.ema_decay"),
        (["--config.data.paths=('/nonexistent/data',)"], "/nonexistent/data/manifest.json"),
        (["--config.eval.split=holdout"], "config.eval.split"),
    ],
)
def test_bad_config_fails_with_one_line(data_dir, tmp_path, capsys, overrides, message):
    argv = [
        "busgen train-classifier",
        "--config=configs/classifier.py:tiny",
        f"--workdir={tmp_path}",
    ]
    if not any(o.startswith("--config.data.paths=") for o in overrides):
        argv.append(f"--config.data.paths=('{data_dir}',)")
    argv += overrides
    with pytest.raises(SystemExit) as exit_info:
        train_classifier.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "checkpoints").exists()
