"""The distillation job on a tiny generator: end to end, student vs teacher, sampling, resume."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from busgen_jax.core import config_files
from busgen_jax.data import shards
from busgen_jax.diffusion import distillation, generator, losses, schedules
from busgen_jax.jobs import adapt, distill, layout, synthesize
from busgen_jax.models import lora, params_io
from busgen_jax.training import checkpoints
from tests.generator_fixtures import phantom_dataset, tiny_generator

BATCH = 8


def _config(teacher: pathlib.Path, data: pathlib.Path):
    config = config_files.load("configs/distill.py:tiny")
    config.teacher = str(teacher)
    config.data.paths = (str(data),)
    return config


def _v_teacher(directory: pathlib.Path) -> pathlib.Path:
    """The tiny generator read as a v-predicting one (its random net is no more eps than v):
    distillation refuses eps teachers."""
    teacher = tiny_generator(directory)
    spec = generator.load_generator(teacher)[1]
    spec = dataclasses.replace(spec, prediction="v")
    (teacher / generator.SPEC_FILE).write_text(spec.to_json())
    return teacher


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return _v_teacher(root / "teacher"), phantom_dataset(root / "data")


@pytest.fixture(scope="module")
def distilled(inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distill_run")
    return distill.run(_config(*inputs), str(workdir)), workdir


def _conditions(spec):
    rng = np.random.default_rng(1)
    classes = jnp.asarray(rng.integers(1, len(spec.class_names) + 1, BATCH), jnp.int32)
    devices = jnp.asarray(rng.integers(1, len(spec.device_names) + 1, BATCH), jnp.int32)
    masks = np.zeros((BATCH, spec.image_size, spec.image_size, 1), np.float32)
    masks[:, 8:20, 10:24] = 1.0
    return classes, devices, jnp.asarray(masks)


def _sample(model, spec, **overrides):
    """Samples as `busgen synthesize` does: the spec's settings, overridden where asked."""
    how = generator.sampling_settings(spec, overrides)
    sample_fn = generator.make_sample_fn(
        spec,
        sampler=how["sampler"],
        steps=how["steps"],
        skip=how["skip"],
        guidance_weight=how["guidance_weight"],
    )
    return np.asarray(sample_fn(model, jax.random.key(7), *_conditions(spec)))


@pytest.mark.slow  # the module's tiny job takes ~90 s on 2 cores
def test_student_is_a_generator_sampled_in_its_steps_one_pass_each(distilled):
    result, _ = distilled
    student, spec = generator.load_generator(result["export"])
    assert spec.source == "distill"
    assert spec.student["steps"] == 2 and spec.student["guidance_input"]
    assert [r["kind"] for r in spec.student["rounds"]] == ["guidance", "progressive"]
    assert spec.sampling["steps"] == 2
    images = _sample(student, spec)
    assert images.shape == (BATCH, 32, 32, 1) and np.isfinite(images).all()

    # Independently: N single-pass DDIM steps of the student at the spec's w, by hand.
    schedule = schedules.make_schedule(spec.schedule)
    rng_init, _ = jax.random.split(jax.random.key(7))
    x = jax.random.normal(rng_init, (BATCH, 32, 32, 1), jnp.float32)
    classes, devices, masks = _conditions(spec)
    w = jnp.full((BATCH,), spec.sampling["guidance_weight"])
    steps = spec.sampling["steps"]
    for k in range(steps):
        t, s = (jnp.full((BATCH,), distillation.grid_time(schedule, f / steps)) for f in (k, k + 1))
        a_t, s_t = schedules.alpha(schedule, t), schedules.sigma(schedule, t)
        out = student(x, t, classes, devices, masks, guidance_weight=w)
        x0 = losses.to_x0(out, x, a_t, s_t, spec.prediction)
        x = distillation.ddim_step(
            x, x0, a_t, s_t, schedules.alpha(schedule, s), schedules.sigma(schedule, s)
        )
    np.testing.assert_allclose(images, np.clip(np.asarray(x), -1, 1), atol=2e-4)


def _gaps_to_teacher(student, spec, teacher, teacher_spec, export):
    """RMS distance to the teacher's guided DDIM samples at the distillation's starting step count
    of (the trained student, the untrained one: the teacher's weights, zero w-embedding)."""
    start = spec.student["rounds"][0]["steps"]
    reference = _sample(
        teacher,
        teacher_spec,
        sampler=distillation.STUDENT_SAMPLER,
        steps=start,
        skip=distillation.STUDENT_SKIP,
    )
    untrained = distill.build_student(
        params_io.load_model_config(export), nnx.state(teacher, nnx.Param), 0
    )
    trained_gap = np.sqrt(np.mean(np.square(_sample(student, spec) - reference)))
    untrained_gap = np.sqrt(np.mean(np.square(_sample(untrained, spec) - reference)))
    return trained_gap, untrained_gap


@pytest.mark.slow
def test_student_is_closer_to_the_teacher_than_the_untrained_student(inputs, distilled):
    result, _ = distilled
    teacher, teacher_spec = generator.load_generator(inputs[0])
    student, spec = generator.load_generator(result["export"])
    trained_gap, untrained_gap = _gaps_to_teacher(
        student, spec, teacher, teacher_spec, result["export"]
    )
    assert trained_gap < 0.8 * untrained_gap, (trained_gap, untrained_gap)


@pytest.mark.slow
def test_student_synthesizes_an_audited_dataset_in_its_steps(inputs, distilled, tmp_path):
    """`busgen synthesize` takes a student like any generator: sampled as its spec says, and
    audited (the membership attack scores the student's own losses)."""
    result, _ = distilled
    config = config_files.load("configs/synthesize.py:tiny")
    config.generator, config.audit.train_paths = str(result["export"]), [str(inputs[1])]
    manifest = synthesize.run(config, str(tmp_path))
    records = list(shards.read_records(tmp_path / layout.SYNTHETIC, "train"))
    assert manifest["num_records"] == len(records) == config.num_images
    assert {r["provenance"]["steps"] for r in records} == {result["spec"].student["steps"]}
    audit = json.loads((tmp_path / layout.SYNTHETIC / "audit" / "audit.json").read_text())
    assert 0.0 <= audit["membership_inference"]["auc"] <= 1.0


@pytest.mark.slow
def test_adapted_teacher_distils_into_a_student_of_the_task(inputs, tmp_path):
    """An adaptation job's adapter, merged into the teacher, is what the student learns: the
    task's vocabulary (its new class included) and the adapted teacher's samples."""
    teacher_dir, data = inputs
    config = config_files.load("configs/adapt.py:tiny")
    config.generator, config.data.paths = str(teacher_dir), [str(data)]
    adapter = adapt.run(config, str(tmp_path / "adapt"))
    adapter_dir = tmp_path / "adapt" / layout.ADAPTER
    teacher, teacher_spec = generator.load_generator(teacher_dir, adapter=adapter_dir)
    lora.merge_lora(teacher)
    config = _config(teacher_dir, data)
    config.adapter = str(adapter_dir)
    result = distill.run(config, str(tmp_path / "distill"))
    student, spec = generator.load_generator(result["export"])
    assert spec.class_names == teacher_spec.class_names and "dcis" in spec.class_names, adapter
    assert spec.student["adapter"] == str(adapter_dir)
    trained_gap, untrained_gap = _gaps_to_teacher(
        student, spec, teacher, teacher_spec, result["export"]
    )
    assert trained_gap < 0.8 * untrained_gap, (trained_gap, untrained_gap)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_student(inputs, distilled, tmp_path, monkeypatch):
    result, _ = distilled
    save = checkpoints.save

    def save_then_stop(manager, step, state, data_iter):
        save(manager, step, state, data_iter)
        if "progressive" in str(manager.directory) and step == 8:
            raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distill.run(_config(*inputs), str(tmp_path))
    assert not (tmp_path / "export").exists()
    monkeypatch.setattr(checkpoints, "save", save)
    resumed = distill.run(_config(*inputs), str(tmp_path))
    assert resumed["history"].keys() == {"1_progressive_2"}  # only the unfinished round ran
    assert resumed["history"]["1_progressive_2"][0][0] > 8  # from its step-8 checkpoint
    a, b = (
        nnx.state(generator.load_generator(d)[0], nnx.Param)
        for d in (result["export"], resumed["export"])
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.distill.final_steps=3", "config.distill.final_steps = 3 must be start_steps=4"),
        ("--config.distill.round_steps=(5,)", "config.distill.round_steps = (5,) must list 2"),
        ("--config.teacher=/nonexistent", "config.teacher: /nonexistent/generator.json"),
        ("--config.teacher=EPS", "predicts eps; distillation needs a v- or x0-predicting"),
    ],
)
def test_bad_config_is_one_error_line(inputs, tmp_path, capsys, override, message):
    eps_teacher = tiny_generator(tmp_path / "eps") if "EPS" in override else None
    override = override.replace("EPS", str(eps_teacher))
    args = [
        "busgen distill",
        "--config=configs/distill.py:tiny",
        f"--workdir={tmp_path / 'w'}",
        f"--config.teacher={inputs[0]}",
        f"--config.data.paths=('{inputs[1]}',)",
        override,
    ]
    with pytest.raises(SystemExit) as exit_info:
        distill.main(args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
