"""Distils a generator into a few-step, single-pass student (`diffusion.distillation`).

    busgen distill --config=configs/distill.py:default --workdir=DIR

From the teacher (`config.teacher`, default the shipped foundation; `config.adapter` merged in if
given), a guidance round at `distill.start_steps`, then progressive rounds halving the steps to
`distill.final_steps`. Each round is a sharded training run over the teacher's corpus with
pretraining's state, mesh, partition rules and step loop. Writes

  DIR/rounds/<r>_<kind>_<steps>/checkpoints/  the round's state with the grain iterator; a
                                              restarted job resumes the first unfinished round
  DIR/rounds/<r>_<kind>_<steps>/student/      the round's student (an exported generator)
  DIR/export/                                 the final student: `generator.load_generator`
                                              reads it, `sample_images` samples it in its steps
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from busgen_jax.core import config_files, errors
from busgen_jax.data import pipeline
from busgen_jax.diffusion import distillation, foundation, generator, schedules, train_step
from busgen_jax.jobs import layout, shell
from busgen_jax.models import lora, params_io, unet
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.parallel import partition
from busgen_jax.training import checkpoints, train_loop, train_state


def plan_rounds(config: ml_collections.ConfigDict) -> list[tuple[str, int, int]]:
    """(kind, student steps, training steps) of every round; raises ConfigError with one line
    naming the first bad field."""
    d = config.distill
    halvings = 0
    while d.final_steps >= 1 and (d.final_steps << halvings) < d.start_steps:
        halvings += 1
    lo, hi = d.guidance_range
    checks = [
        ("distill.start_steps", d.start_steps >= 1, "must be >= 1"),
        (
            "distill.final_steps",
            d.final_steps >= 1 and d.final_steps << halvings == d.start_steps,
            f"must be start_steps={d.start_steps} halved 0 or more times",
        ),
        (
            "distill.round_steps",
            len(d.round_steps) == 1 + halvings and min(d.round_steps) >= 1,
            f"must list {1 + halvings} positive step counts (the guidance round, then one per "
            "halving)",
        ),
        ("distill.guidance_range", 0.0 <= lo <= hi, "must be (low, high) with 0 <= low <= high"),
        ("data.batch_size", config.data.batch_size >= 1, "must be >= 1"),
        ("train.learning_rate", config.train.learning_rate > 0, "must be > 0"),
        ("train.ema_decay", 0.0 <= config.train.ema_decay < 1.0, "must be in [0, 1)"),
        ("checkpoint.every_steps", config.checkpoint.every_steps >= 1, "must be >= 1"),
    ]
    config_files.check_fields(config, checks)
    kinds = ["guidance"] + ["progressive"] * halvings
    steps = [d.start_steps >> k for k in [0, *range(1, halvings + 1)]]
    return list(zip(kinds, steps, d.round_steps, strict=True))


def load_teacher(config: ml_collections.ConfigDict):
    """(teacher model, spec, its sampling settings, the student's model config)."""
    directory = config.teacher or str(foundation.SHIPPED)
    try:
        teacher, spec = generator.load_generator(directory, adapter=config.adapter or None)
        model_config = params_io.load_model_config(directory)
    except FileNotFoundError as e:
        raise errors.JobError(f"config.teacher: {e}") from e
    if config.adapter:
        lora.merge_lora(teacher)  # a plain U-Net again, with the task's vocabulary
    if spec.prediction == "eps":
        # x0 = (x_t - sigma eps) / alpha amplifies a student's eps error 1/alpha-fold (30x at
        # the sampling start here) where few-step sampling needs x0 most (Salimans & Ho 2022,
        # sec. 4): the papers distil v- or x-predicting teachers.
        raise errors.JobError(
            f"config.teacher = {directory!r} predicts eps; distillation needs a "
            "v- or x0-predicting teacher"
        )
    if spec.student:
        raise errors.JobError(
            f"config.teacher = {directory!r} is itself a distilled student; "
            "distil its teacher with more rounds instead"
        )
    settings = generator.sampling_settings(spec, {})
    if settings["time_input"] != "interpolate":
        raise errors.JobError(
            f"config.teacher = {directory!r} samples with time_input="
            f"{settings['time_input']!r}; distillation needs 'interpolate'"
        )
    model_config = model_config.copy_and_resolve_references()
    with model_config.unlocked():
        model_config.update(
            guidance_input=True,
            num_classes=len(spec.class_names),
            num_devices=len(spec.device_names),
        )
    return teacher, spec, settings, model_config


def round_view(config, spec, train_steps: int) -> ml_collections.ConfigDict:
    """The job config with one round's step count and the teacher's vocabulary and size, as the
    pretraining helpers and the step loop read it."""
    view = config.copy_and_resolve_references()
    with view.unlocked():
        view.train.steps = train_steps
        view.data.update(
            image_size=spec.image_size,
            class_names=tuple(spec.class_names),
            device_names=tuple(spec.device_names),
        )
    return view


def student_spec(spec, settings, config, steps: int, done: list) -> generator.GeneratorSpec:
    """The teacher's spec, sampled by DDIM in `steps` single passes at the teacher's own w."""
    sampling = {k: v for k, v in settings.items() if k != "preset"}
    sampling.update(
        sampler=distillation.STUDENT_SAMPLER,
        skip=distillation.STUDENT_SKIP,
        steps=steps,
        clip_x0=False,
    )
    teacher = config.teacher or str(foundation.SHIPPED)
    student = {
        "teacher": str(pathlib.Path(teacher).absolute()),
        "adapter": config.adapter,
        "steps": steps,
        "guidance_input": True,
        "guidance_range": list(config.distill.guidance_range),
        "rounds": done,
    }
    return dataclasses.replace(spec, source="distill", sampling=sampling, student=student)


def train_round(view, cfg: distillation.RoundConfig, schedule, student_fn, teacher, directory):
    """Trains one round's student to `view.train.steps`, resuming from its checkpoints; returns
    (state, history) as `train_loop.run` does."""
    mesh = train_loop.make_mesh(view)
    init_fn, abstract, shardings = train_state.abstract_state_and_shardings(view, mesh, student_fn)
    teacher_state = nnx.state(teacher)
    rules = [tuple(rule) for rule in view.partition.rules]
    teacher_shardings = partition.state_shardings(
        teacher_state, rules, mesh, min_size=view.partition.min_size
    )
    manager = train_loop.make_manager(directory, view)
    data_iter = iter(pipeline.make_dataset(view.data, split="train", seed=view.train.seed))
    restored = checkpoints.restore_latest(
        manager, checkpoints.abstract_like(abstract, shardings), data_iter
    )
    state = restored[0] if restored else jax.jit(init_fn, out_shardings=shardings)()
    batch_shardings = {
        k: mesh_lib.batch_sharding(mesh, n) for k, n in train_step.BATCH_NDIMS.items()
    }
    step = jax.jit(
        lambda s, b, r, t: distillation.distill_step(s, b, r, t, cfg=cfg, schedule=schedule),
        in_shardings=(shardings, batch_shardings, mesh_lib.replicated(mesh), teacher_shardings),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )
    teacher_state = jax.device_put(teacher_state, teacher_shardings)
    return train_loop.run(
        state,
        lambda s, b, r: step(s, b, r, teacher_state),
        data_iter,
        config=view,
        mesh=mesh,
        manager=manager,
        writer=train_loop.make_writer(directory),
        rng=jax.random.key(view.train.seed),
    )


def export_student(model, model_config, spec, directory: pathlib.Path) -> None:
    """Writes the student aside and renames it, so a finished round is never half written."""
    staging = directory.with_name(f".{directory.name}.tmp")
    if jax.process_index() == 0:
        shutil.rmtree(staging, ignore_errors=True)
    multihost_utils.sync_global_devices("export_student:staging")
    generator.export_generator(staging, model, model_config, spec)
    if jax.process_index() == 0:
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    multihost_utils.sync_global_devices("export_student:done")


def distill(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """Runs every round not finished yet; returns the final student directory and histories."""
    rounds = plan_rounds(config)
    teacher, spec, settings, model_config = load_teacher(config)
    schedule = schedules.make_schedule(ml_collections.ConfigDict(spec.schedule))
    done, histories = [], {}
    for index, (kind, steps, train_steps) in enumerate(rounds):
        directory = workdir / "rounds" / f"{index}_{kind}_{steps}"
        if not (directory / "student" / generator.SPEC_FILE).is_file():
            view = round_view(config, spec, train_steps)
            cfg = distillation.RoundConfig(
                kind=kind,
                steps=steps,
                teacher_graphdef=nnx.graphdef(teacher),
                learning_rate=train_state.learning_rate_schedule(view.train),
                guidance_range=tuple(config.distill.guidance_range),
                prediction=spec.prediction,
                # The original teacher's sampler clips its x0; the students' samplers do not.
                clip_x0=kind == "guidance" and settings["clip_x0"],
                drop_box_mask=settings["drop_box_mask"],
                ema_decay=config.train.ema_decay,
                image_channels=model_config.image_channels,
            )
            start = nnx.state(teacher, nnx.Param)
            student_fn = lambda start=start: build_student(model_config, start, config.train.seed)
            state, history = train_round(view, cfg, schedule, student_fn, teacher, directory)
            histories[directory.name] = history
            record = {
                "kind": kind,
                "steps": steps,
                "train_steps": train_steps,
                "final_loss": history[-1][1]["loss"] if history else None,
            }
            export_student(
                state.model(state.ema_params),
                model_config,
                student_spec(spec, settings, config, steps, [*done, record]),
                directory / "student",
            )
        # The round's student, as exported, teaches the next round.
        teacher, student = generator.load_generator(directory / "student")
        done = student.student["rounds"]
    final = workdir / layout.EXPORT
    if jax.process_index() == 0:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(directory / "student", final)
    multihost_utils.sync_global_devices("distill:export")
    return {"export": final, "spec": student, "history": histories}


def build_student(model_config, start: nnx.State, seed: int) -> unet.UNet:
    """A guidance-input U-Net holding `start`'s params (the teacher's, or the last student's);
    a first student's w-embedding keeps its fresh init, its last layer zero."""
    model = unet.UNet(model_config, rngs=nnx.Rngs(seed))
    nnx.update(model, start)
    return model


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils `config.teacher` in `workdir`; returns the export, its spec and the histories."""
    try:
        result = distill(config, pathlib.Path(workdir).absolute())
    except ValueError as e:  # checkpoint and non-finite errors are JobErrors already
        raise errors.JobError(str(e)) from e
    student = result["spec"].student
    steps = "1 step" if student["steps"] == 1 else f"{student['steps']} steps"
    print(f"student: {result['export']} ({steps}, one pass each; teacher {student['teacher']})")
    return result


main = shell.command(run, "configs/distill.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
