"""The main job end to end at the tiny size: every stage runs and the report holds its results."""

import json
import subprocess
import sys

import pytest


def _run_tiny_demo(workdir, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "busgen_jax.cli",
            "demo",
            "--config=configs/demo.py:tiny",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = _run_tiny_demo(tmp_path, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"report: {tmp_path / 'report.html'}" in out.stdout
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert list(timings) == [
        "phantom",
        "pretrain",
        "adapt",
        "guidance",
        "synthesize",
        "classifiers",
        "evaluate",
        "fidelity",
        "scaling",
        "report",
    ]
    html = (tmp_path / "report.html").read_text()
    for heading in (
        "Quality gates",
        "Phantom data",
        "Synthesis and privacy audit",
        "Classifiers over seeds",
        "Evaluation",
        "SIMULATED reader study",
        "Generative fidelity",
        "Data scaling",
    ):
        assert heading in html
    # The gates are measured by the shipped oracle and printed as well as reported.
    gates = json.loads((tmp_path / "gates.json").read_text())
    names = [g["gate"] for g in gates]
    assert "synthetic images of class dcis that the oracle calls dcis" in names
    assert "few-shot regime: synthetic-only AUC - few-shot real AUC" in names
    assert "full regime: mixed AUC - real-only AUC" in names
    assert all(isinstance(g["passed"], bool) for g in gates)
    assert out.stdout.count(", target ") == len(gates)
    oracle = json.loads((tmp_path / "fidelity" / "oracle.json").read_text())
    assert set(oracle["synthetic"]["class"]) == {"benign", "dcis"}
    results = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    # The full regime's real classifier, the few-shot regime's (the adapter's k-shot images), and
    # the synthetic and mixed ones.
    assert set(results["models"]) == {"real", "fewshot", "synthetic", "mixed"}
    # The tiny preset chooses its guidance weight by validation AUC and filters its candidates
    # with the few-shot classifier; both are recorded and reported.
    choice = json.loads((tmp_path / "guidance" / "guidance.json").read_text())
    assert set(choice["val_auc"]) == {"1", "3"} and choice["chosen"] in (1.0, 3.0)
    manifest = json.loads((tmp_path / "synthesize" / "synthetic" / "manifest.json").read_text())
    provenance = manifest["extra"]["provenance"]
    assert provenance["guidance"] == choice["chosen"]
    assert provenance["label_filter"]["classifier"].endswith("classifiers/fewshot/export")
    assert manifest["extra"]["off_label_redrawn"] >= 0
    assert "Guidance weight chosen by validation AUC" in html and "Label filter" in html
    # Phantom and synthetic grids, audit and evaluation figures; no training pictures (privacy).
    assert html.count("data:image/png;base64") >= 7
    # Started again, it finds every stage done and only rebuilds the report.
    again = _run_tiny_demo(tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 9


def test_guidance_search_picks_the_best_validation_auc_and_drops_refused_weights(
    tmp_path, monkeypatch
):
    """The search's choice is the validation-AUC argmax over the weights the privacy audit let
    through; when it refuses them all, the stage fails naming the search."""
    from busgen_jax.core import config_files, errors
    from busgen_jax.jobs import demo, layout, synthesize, train_classifier

    config = config_files.load("configs/demo.py:tiny")
    config.label_filter_source = ""
    config.guidance_search.weights = (1.0, 2.0, 4.0)
    paths = layout.Paths(tmp_path, config)
    val_auc = {1.0: 0.61, 2.0: 0.66, 4.0: 0.9}
    drawn = []

    def fake_synthesis(synth_config, workdir):
        drawn.append(synth_config.guidance_weight)
        assert synth_config.num_images == config.guidance_search.num_images
        if synth_config.guidance_weight == 4.0:
            raise errors.JobError("the accepted images test as copying")

    def fake_classifier(classifier_config, workdir):
        assert classifier_config.eval.split == "val"
        weight = float(workdir.split("/w")[-1].split("/")[0])
        return {"auc": val_auc[weight]}

    monkeypatch.setattr(synthesize, "run", fake_synthesis)
    monkeypatch.setattr(train_classifier, "run", fake_classifier)
    demo.stage_guidance(config, paths)
    choice = json.loads((paths.guidance / layout.GUIDANCE_CHOICE).read_text())
    assert drawn == [1.0, 2.0, 4.0]
    assert choice["chosen"] == 2.0 and set(choice["refused"]) == {"4"}
    assert demo.chosen_guidance(paths) == {"guidance_weight": 2.0}
    val_auc.clear()
    config.guidance_search.weights = (4.0,)
    with pytest.raises(errors.JobError, match="no weight gave a synthetic set"):
        demo.stage_guidance(config, layout.Paths(tmp_path / "again", config))


def test_a_label_filter_of_synthetic_data_is_refused_before_any_stage(tmp_path):
    from busgen_jax.core import config_files, errors
    from busgen_jax.jobs import demo

    config = config_files.load("configs/demo.py:tiny")
    config.label_filter_source = "synthetic"
    with pytest.raises(errors.ConfigError, match="config.label_filter_source = 'synthetic'"):
        demo.run(config, str(tmp_path / "demo"))
    assert not (tmp_path / "demo").exists()
