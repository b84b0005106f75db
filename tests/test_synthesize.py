"""Synthesis: planned labels, the audited-generation loop with toy samplers, exact counts,
audited output, kill-and-resume."""

import base64
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import types

import numpy as np
import pause_points
import pytest
import scipy.ndimage
from generator_fixtures import phantom_dataset, tiny_generator

from busgen_jax.classification import inference
from busgen_jax.core import config_files, errors
from busgen_jax.data import box_priors, pipeline, schema, shards
from busgen_jax.evaluation import oracle
from busgen_jax.jobs import layout, synthesize
from busgen_jax.reporting import demo_report, visualize
from busgen_jax.reporting import html as html_report
from busgen_jax.synthesis import generate, label_filter
from busgen_jax.synthesis import plan as synthesis_plan


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return {
        "generator": str(tiny_generator(root / "generator")),
        "data": str(phantom_dataset(root / "data")),
    }


def _config(inputs, **overrides):
    config = config_files.load("configs/synthesize.py:tiny")
    config.generator = inputs["generator"]
    config.audit.train_paths = [inputs["data"]]
    config.update(overrides)
    return config


def test_exact_counts_split_by_weights_like_largest_remainder():
    assert synthesis_plan.exact_counts({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert synthesis_plan.exact_counts({"a": 3, "b": 1}, 7) == {"a": 5, "b": 2}
    with pytest.raises(ValueError, match="cannot split"):
        synthesis_plan.exact_counts({"a": 0}, 3)


def test_balance_plan_fills_minority_classes_and_devices():
    manifest = {
        "splits": {
            "train": {
                "record_pathology": ["benign"] * 6 + ["dcis"] * 2,
                "record_device": ["A"] * 4 + ["B"] * 2 + ["A", "A"],
            }
        }
    }
    plan = synthesis_plan.balance_plan(manifest, ["benign", "dcis"], ["A", "B"])
    # dcis lacks 4; device B has none of them, so it gets filled first: B B A B? -> water-filling
    assert sum(plan.values()) == 4 and all(p == "dcis" for p, _ in plan)
    assert plan == {("dcis", "B"): 3, ("dcis", "A"): 1}


def test_assignments_are_a_seeded_shuffle_of_the_plan():
    plan = {("benign", "A"): 3, ("dcis", "B"): 2}
    a = synthesis_plan.assignments(plan, seed=1)
    assert sorted(a) == [("benign", "A")] * 3 + [("dcis", "B")] * 2
    assert a == synthesis_plan.assignments(plan, seed=1)


def _textures(num: int, seed: int, size: int = 32) -> np.ndarray:
    """Smooth random textures in [-1, 1]: independent images, [num, size, size, 1]."""
    rng = np.random.default_rng(seed)
    x = scipy.ndimage.gaussian_filter(rng.normal(size=(num, size, size)), sigma=(0, 3, 3))
    return np.clip(x / (3 * x.std()), -1, 1)[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def toy_reference():
    """60 training and 60 held-out textures, thresholds at the configs' default quantiles."""
    train = {"image": _textures(60, seed=0)[..., 0], "case_id": [f"train-{k}" for k in range(60)]}
    heldout = {"image": _textures(60, seed=1)[..., 0]}
    settings = {"quantile": 0.999, "threshold": None, "windowed_threshold": None}
    return generate.audit_reference(train, heldout, {**settings, "strict_quantile": 0.95})


def _toy_context(sampler, reference, **overrides) -> generate.Context:
    """The loop's context around a toy sampler: one shard of 12 benign records."""
    boxes = np.array([[0.3, 0.3, 0.6, 0.6], [0.2, 0.4, 0.5, 0.8]])
    prior = box_priors.BoxPrior(
        ("benign",),
        {"benign": box_priors.boxes_to_features(boxes)},
        {"benign": np.zeros((4, 4))},
        {"benign": np.array([0.0, 1.0])},
        0.0,
    )
    fields = {
        "name": "toy",
        "seed": 0,
        "plan": [("benign", "A")] * 12,
        "prior": prior,
        "sampler": sampler,
        "reference": reference,
        "records_per_shard": 12,
        "max_rounds": 5,
        "num_closest": 4,
        "failure_limit": 1.0,
        "redraw_failed": False,
        "provenance": {"source": "synthetic"},
    }
    return generate.Context(**{**fields, **overrides})


def test_the_loop_redraws_planted_copies_and_keeps_none(toy_reference):
    train = toy_reference.train["image"]
    calls = []

    def sampler(draws, key):
        calls.append([d.index for d in draws])
        images = _textures(len(draws), seed=100 + len(calls))
        if len(calls) == 1:  # the first round memorizes three training images
            images[[1, 4, 7]] = train[[3, 5, 8], ..., None]
        return images

    records, sidecar = generate.generate_shard(_toy_context(sampler, toy_reference), 0)
    assert calls[0] == list(range(12)) and {1, 4, 7} <= set(calls[1])
    assert [r["provenance"]["index"] for r in records] == list(range(12))
    assert all(records[i]["provenance"]["attempt"] >= 1 for i in (1, 4, 7))
    thresholds = toy_reference.thresholds
    assert all(r["provenance"]["nn_similarity"] <= thresholds["ncc"] for r in records)
    assert all(r["provenance"]["windowed_similarity"] <= thresholds["windowed"] for r in records)
    drawn = sum(map(len, calls))
    assert len(sidecar["candidate_sims"]["ncc"]) == drawn
    assert sidecar["rejected"] == drawn - 12 >= 3
    copies = sidecar["closest"][:3]
    assert [c["similarity"]["ncc"] for c in copies] == pytest.approx([1.0] * 3, abs=1e-5)
    assert {c["train_case_id"] for c in copies} == {"train-3", "train-5", "train-8"}
    assert all(c["flagged"] and c["synthetic_case_id"] is None for c in copies)
    stored = {schema.decode_png(r["image"]).tobytes() for r in records}
    assert not stored & {visualize.to_uint8(image).tobytes() for image in train}


def test_the_loop_fails_clearly_on_a_sampler_that_always_copies(toy_reference):
    calls = []

    def copier(draws, key):
        calls.append(len(draws))
        return toy_reference.train["image"][: len(draws), ..., None]

    ctx = _toy_context(copier, toy_reference, max_rounds=3)
    with pytest.raises(errors.JobError, match="12 candidates stayed above the privacy thresholds"):
        generate.generate_shard(ctx, 0)
    assert calls == [12, 12, 12]


def test_the_loop_redraws_off_label_draws_for_its_label_rounds_then_keeps_them(toy_reference):
    """Over-generation: a draw the label check calls off-label is redrawn in the first
    `label_rounds` rounds; afterwards a record keeps its draw. Judged draws are counted apart from
    privacy rejections."""
    judged, called_off = [], []

    def bright_is_benign(images, pathologies):
        judged.append(len(images))
        assert list(pathologies) == ["benign"] * len(images)
        on = images.mean(axis=(1, 2, 3)) > 0
        called_off.append(int((~on).sum()))
        return on

    calls = []

    def sampler(draws, key):
        calls.append(len(draws))
        return _textures(len(draws), seed=200 + len(calls))

    ctx = _toy_context(sampler, toy_reference, label_check=bright_is_benign, label_rounds=2)
    records, sidecar = generate.generate_shard(ctx, 0)
    assert len(records) == 12 and judged == calls[:2]
    assert sidecar["off_label"] == sum(called_off) > 0
    # Every draw is kept, redrawn as off-label or rejected by the audit, counted once.
    assert sum(calls) == 12 + sidecar["off_label"] + sidecar["rejected"]
    for record in records:
        image = schema.decode_png(record["image"]).astype(np.float32) / 127.5 - 1.0
        if record["provenance"]["attempt"] < 2:
            assert image.mean() > 0
    # Without a check nothing is judged, whatever the rounds say.
    plain, plain_sidecar = generate.generate_shard(_toy_context(sampler, toy_reference), 0)
    assert len(plain) == 12 and plain_sidecar["off_label"] == 0


def test_the_label_filter_judges_a_candidate_as_the_pipeline_reads_it():
    """The shipped oracle as the filter's classifier: benign and DCIS verdicts are complementary,
    classes outside its task pass, other sizes are read at its own, and bad settings are named."""
    check = label_filter.load(oracle.SHIPPED, min_probability=0.5)
    assert check.task.class_names == ("benign", "dcis") and check.image_size == 32
    images = _textures(16, seed=3)
    p = check.probabilities(images)
    quantized = visualize.to_uint8(images[..., 0]).astype(np.float32) / 127.5 - 1.0
    model, _ = inference.load_classifier(oracle.SHIPPED)
    assert p == pytest.approx(inference.probabilities(model, quantized), abs=1e-6)
    as_benign = check.on_label(images, ["benign"] * 16)
    as_dcis = check.on_label(images, ["dcis"] * 16)
    assert (as_benign == (p <= 0.5)).all() and (as_dcis == (p >= 0.5)).all()
    assert check.on_label(images, ["normal"] * 16).all()
    larger = check.probabilities(_textures(4, seed=3, size=64))
    assert larger.shape == (4,) and np.isfinite(larger).all()
    with pytest.raises(ValueError, match="min_probability"):
        label_filter.load(oracle.SHIPPED, min_probability=1.0)


def test_label_filter_settings_are_checked_before_any_work(inputs, tmp_path):
    config = _config(inputs)
    config.label_filter.update(classifier=str(oracle.SHIPPED), rounds=config.audit.max_rounds)
    with pytest.raises(errors.JobError, match=r"config.label_filter.rounds = 5 must be in \[1, "):
        synthesize.run(config, str(tmp_path))
    config.label_filter.update(classifier=str(tmp_path / "nowhere"), rounds=2)
    with pytest.raises(errors.JobError, match="label_filter.classifier: .*nowhere"):
        synthesize.run(config, str(tmp_path))


def test_synthesis_writes_exactly_the_planned_audited_dataset(inputs, tmp_path):
    config = _config(inputs, classes={"benign": 1.0, "dcis": 1.0})
    manifest = synthesize.run(config, str(tmp_path))
    out = tmp_path / layout.SYNTHETIC
    assert manifest["num_records"] == config.num_images
    assert manifest["pathology"] == {"benign": 12, "dcis": 12}
    records = list(shards.read_records(out, "train"))
    assert [r["provenance"]["index"] for r in records] == list(range(config.num_images))
    first = records[0]
    assert first["provenance"]["source"] == "synthetic"
    # Unset in the config, the sampler is the one the generator's spec names.
    assert first["provenance"]["sampler"] == first["provenance"]["sampling"]["sampler"]
    assert first["provenance"]["steps"] == 6  # as the tiny generator's spec says
    assert len(first["boxes"]) >= 1  # benign and DCIS lesions get boxes from the prior
    report = json.loads((out / "audit" / "audit.json").read_text())
    assert report["num_candidates"] >= config.num_images
    thresholds = report["thresholds"]
    assert all(r["provenance"]["nn_similarity"] <= thresholds["ncc"] for r in records)
    assert all(r["provenance"]["windowed_similarity"] <= thresholds["windowed"] for r in records)
    assert [r["quantile"] for r in report["memorization_rates"]] == [0.95, 0.99, 0.999]
    assert 0.0 <= report["membership_inference"]["auc"] <= 1.0
    assert (out / "audit" / "audit_closest_pairs.png").stat().st_size > 0
    shards.verify_dataset(out)


def _run_copying_on_first_try(config, workdir):
    """`synthesize.run` with a sampler that returns training images verbatim on a record's first
    try and samples the generator on later ones: the loop's sampler is injected in its context."""
    model, spec = synthesize.load_generator(config)
    ctx = synthesize.make_context(config, model, spec)
    train, sample, tried = ctx.reference.train["image"], ctx.sampler, set()

    def copying(draws, key):
        first = {d.index for d in draws} - tried
        tried.update(first)
        return train[: len(draws), ..., None] if first else sample(draws, key)

    out = pathlib.Path(workdir) / layout.SYNTHETIC
    out.mkdir(parents=True, exist_ok=True)
    copying_ctx = dataclasses.replace(ctx, sampler=copying)
    return synthesize.write_dataset(config, out, copying_ctx, (model, spec))


def test_planted_copies_are_rejected_and_resampled(inputs, tmp_path):
    """A generator that returns training images verbatim on its first try gets none through."""
    config = _config(inputs, num_images=8)
    _run_copying_on_first_try(config, str(tmp_path))
    records = list(shards.read_records(tmp_path / layout.SYNTHETIC, "train"))
    assert len(records) == 8 and all(r["provenance"]["attempt"] == 1 for r in records)
    report = json.loads((tmp_path / layout.SYNTHETIC / "audit" / "audit.json").read_text())
    assert report["rejected_count"] == 8
    # The closest candidates are the rejected copies; the closest written images are apart,
    # each a stored record, ranked by the audit's margin.
    assert all(c["synthetic_case_id"] is None for c in report["closest_pairs"])
    written = report["closest_written"]
    assert len(written) == 8 and not any(c["flagged"] for c in written)
    assert {c["synthetic_case_id"] for c in written} <= {r["case_id"] for r in records}
    assert [c["score"] for c in written] == sorted((c["score"] for c in written), reverse=True)


def test_unknown_class_is_a_clear_error(inputs, tmp_path):
    with pytest.raises(errors.JobError, match=r"classes \['lymphoma'\] not known"):
        synthesize.run(_config(inputs, classes={"lymphoma": 1.0}), str(tmp_path))


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_bytes(inputs, tmp_path):
    args = [
        sys.executable,
        "-m",
        "busgen_jax.jobs.synthesize",
        "--config=configs/synthesize.py:tiny",
        f"--config.generator={inputs['generator']}",
        f"--config.audit.train_paths=('{inputs['data']}',)",
        "--config.records_per_shard=4",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([*args, f"--workdir={tmp_path / 'whole'}"], check=True, env=env)

    # Killed once its first shard is done: the second is not begun, the rest not written.
    killed, marker = tmp_path / "killed", tmp_path / "paused"
    out = killed / layout.SYNTHETIC
    paused = pause_points.env("synthesis_shard_done", marker, env)
    process = subprocess.Popen([*args, f"--workdir={killed}"], env=paused)
    try:
        pause_points.wait_until_paused(process, marker)
    finally:
        process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    done_before = len(list(out.glob(".*.done.json")))
    assert done_before == 1 and not (out / shards.MANIFEST).exists()
    subprocess.run([*args, f"--workdir={killed}"], check=True, env=env)

    whole = list(shards.read_records(tmp_path / "whole" / layout.SYNTHETIC, "train"))
    resumed = list(shards.read_records(out, "train"))
    assert [r["case_id"] for r in resumed] == [r["case_id"] for r in whole]
    assert len({r["case_id"] for r in resumed}) == 24
    assert all(a["image"] == b["image"] for a, b in zip(whole, resumed, strict=True))
    assert not np.any([p.name.startswith(".") and ".tmp-" in p.name for p in out.iterdir()])


def _training_byte_patterns(data_dir, image_size):
    """Every form a training image could be written in: its PNG, its pixels as stored, and the
    audit's resized copy as float32 and as uint8."""
    records = list(shards.read_records(data_dir, "train"))
    resized = pipeline.load_split([str(data_dir)], "train", image_size)["image"]
    patterns = [r["image"] for r in records]
    patterns += [schema.decode_png(r["image"]).tobytes() for r in records]
    patterns += [image.astype(np.float32).tobytes() for image in resized]
    patterns += [visualize.to_uint8(image).tobytes() for image in resized]
    return patterns


def test_nothing_written_holds_training_pixels(inputs, tmp_path):
    """A generator that copies on its first try: its candidates are rejected and never stored,
    the dataset directory holds only shards, manifest and audit, and no file anywhere holds a
    training image's PNG or pixel bytes; pictures of neighbours go to private_audit/ only."""
    config = _config(inputs, num_images=8)
    config.audit.private_pictures = True
    out = tmp_path / layout.SYNTHETIC
    out.mkdir()
    (out / ".synthetic-train-00000-of-00001.array_record.tmp-0123").write_bytes(b"killed run")
    _run_copying_on_first_try(config, str(tmp_path))
    manifest = shards.read_manifest(out)
    expected = {s["file"] for s in manifest["splits"]["train"]["shards"]} | {"manifest.json"}
    assert {p.name for p in out.iterdir()} == expected | {"audit"}
    assert {p.name for p in (out / "audit").iterdir()} == {
        "audit.json",
        "audit_similarity_hist.png",
        "audit_closest_pairs.png",
        "audit_closest_written.png",
    }
    report = json.loads((out / "audit" / "audit.json").read_text())
    private = tmp_path / "private_audit" / "closest_pairs.png"
    assert report["private_pictures"] == str(private) and private.stat().st_size > 0
    train_ids = set(pipeline.load_split([inputs["data"]], "train", 32)["case_id"])
    assert {c["train_case_id"] for c in report["closest_pairs"]} <= train_ids
    assert all(c["synthetic_case_id"] is None for c in report["closest_pairs"] if c["flagged"])

    # The demo report's synthesis section, rendered with its figures embedded as base64.
    paths = types.SimpleNamespace(
        synthetic=out, root=tmp_path / "demo", guidance=tmp_path / "demo" / "guidance"
    )
    html = html_report.write_report(
        tmp_path / "demo" / "report.html", "demo", [demo_report.synthesis_section(paths)]
    )
    assert str(private) in html.read_text()
    embedded = [
        base64.b64decode(b) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", html.read_text())
    ]
    assert len(embedded) == 3  # the synthetic grid, the similarity histograms, the closest written

    patterns = _training_byte_patterns(inputs["data"], 32)
    assert len(patterns) >= 4 * 40
    contents = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != private}
    contents.update({f"report image {k}": data for k, data in enumerate(embedded)})
    for where, content in contents.items():
        assert not any(p in content for p in patterns), where


def test_copy_protected_sampling_changes_the_samples_and_is_recorded(inputs, tmp_path):
    plain = _config(inputs, num_images=8)
    protected = _config(inputs, num_images=8)
    protected.cpsample.update(scale=50.0, alpha=0.5, steps=30)
    synthesize.run(plain, str(tmp_path / "plain"))
    synthesize.run(protected, str(tmp_path / "protected"))
    read = {
        name: list(shards.read_records(tmp_path / name / layout.SYNTHETIC, "train"))
        for name in ("plain", "protected")
    }
    cp = read["protected"][0]["provenance"]["cpsample"]
    assert cp["scale"] == 50.0 and 0.0 <= cp["train_accuracy"] <= 1.0
    assert read["plain"][0]["provenance"]["cpsample"] is None
    # alpha = 0.5 guides every step, so every image differs from its unprotected twin.
    for a, b in zip(read["plain"], read["protected"], strict=True):
        assert a["case_id"] == b["case_id"] and a["image"] != b["image"]
