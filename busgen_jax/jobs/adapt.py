"""Few-shot LoRA adaptation of an exported generator to a new labelled task.

    busgen adapt --config=configs/adapt.py:default --workdir=DIR \
        --config.generator=PRETRAIN_WORKDIR/export --config.data.paths="('/data/busi',)"

From the train split of `data.paths`, `shots` examples per task class are drawn with `seed`; only
the LoRA adapters and the embedding rows of new classes/devices train, with the base's diffusion
loss. Writes

  DIR/fewshot_data/   the k-shot examples (train split) and held-out real images of the task's
                      classes from other patients (test split): what the synthesis audit
                      compares against and calibrates on
  DIR/checkpoints/    the trained state (adapters, new rows, EMA, optimizer) with the grain
                      iterator; a restarted run resumes from the newest readable step
  DIR/adapter/        the adapter (`models.lora.save_adapter`), for
                      `generator.load_generator(base, adapter=DIR/adapter)`
  DIR/samples/adapted.png  samples per task class from the saved adapter
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from busgen_jax.core import config_files, errors
from busgen_jax.data import pipeline, shards
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.diffusion import preview, schedules, train_step
from busgen_jax.jobs import layout, shell
from busgen_jax.models import lora
from busgen_jax.parallel import partition
from busgen_jax.training import checkpoints, train_loop, train_state

TRAINED = ("step", "params", "ema_params", "opt_state")  # what checkpoints hold


def validate_config(config: ml_collections.ConfigDict) -> lora.LoRAConfig:
    """Raises ConfigError with one line naming the first bad field; returns the LoRA config."""
    names = list(config.data.class_names)
    checks = [
        ("generator", bool(config.generator), "must name an exported generator directory"),
        ("data.paths", len(config.data.paths) > 0, "must name at least one dataset directory"),
        (
            "data.class_names",
            len(names) > 0 and len(set(names)) == len(names),
            "must list distinct task classes",
        ),
        ("shots", config.shots >= 1, "must be >= 1"),
        ("heldout_per_class", config.heldout_per_class >= 0, "must be >= 0 (0 keeps all)"),
        ("data.batch_size", config.data.batch_size >= 1, "must be >= 1"),
        ("train.steps", config.train.steps >= 1, "must be >= 1"),
        (
            "train.warmup_steps",
            0 <= config.train.warmup_steps <= config.train.steps,
            "must be in [0, steps]",
        ),
        ("train.ema_decay", 0.0 <= config.train.ema_decay < 1.0, "must be in [0, 1)"),
        ("checkpoint.every_steps", config.checkpoint.every_steps >= 1, "must be >= 1"),
    ]
    config_files.check_fields(config, checks)
    try:
        return lora.LoRAConfig.from_mapping(config.lora)
    except ValueError as e:
        raise errors.JobError(str(e)) from e


def _split_pathologies(paths: Sequence[str], split: str) -> list[tuple[str, int, str]]:
    """(dataset, position in its split, pathology) of every record of `split`, in reading order."""
    out = []
    for path in paths:
        info = shards.read_manifest(path)["splits"].get(split, {"record_pathology": []})
        out += [(path, i, p) for i, p in enumerate(info["record_pathology"])]
    return out


def select_shots(
    pathologies: Sequence[str], class_names: Sequence[str], shots: int, seed: int, where: str
) -> list[int]:
    """Positions of `shots` records per class, drawn without replacement with `seed`, sorted."""
    pathologies = np.asarray(pathologies)
    chosen = []
    for k, name in enumerate(class_names):
        positions = np.flatnonzero(pathologies == name)
        if len(positions) < shots:
            raise errors.JobError(
                f"{where}: class '{name}' has {len(positions)} train records, fewer than "
                f"shots={shots}"
            )
        chosen += list(np.random.default_rng([seed, k]).choice(positions, shots, replace=False))
    return sorted(int(i) for i in chosen)


def _read_positions(entries: Sequence[tuple[str, int, str]], split: str, keep: set[int]):
    """Yields the records at positions `keep` of the concatenated `split` of the datasets."""
    offset = 0
    for path in dict.fromkeys(e[0] for e in entries):
        for index, record in enumerate(shards.read_records(path, split)):
            if offset + index in keep:
                yield record
        offset += shards.read_manifest(path)["splits"][split]["num_records"]


def heldout_records(config, class_names: Sequence[str], shot_records: list[dict]) -> list[dict]:
    """Up to `heldout_per_class` records per class from `heldout_split`, of unseen patients."""
    seen_patients = {r["patient_id"] for r in shot_records}
    seen_cases = {r["case_id"] for r in shot_records}
    by_class: dict[str, list[dict]] = {name: [] for name in class_names}
    for path in config.data.paths:
        if config.heldout_split not in shards.read_manifest(path)["splits"]:
            continue
        for record in shards.read_records(path, config.heldout_split):
            unseen = (
                record["patient_id"] not in seen_patients and record["case_id"] not in seen_cases
            )
            if record["pathology"] in by_class and unseen:
                by_class[record["pathology"]].append(record)
    out = []
    for k, name in enumerate(class_names):
        records = by_class[name]
        if not records:
            raise errors.JobError(
                f"{list(config.data.paths)}: no '{config.heldout_split}' records "
                f"of class '{name}' from patients outside the k-shot set"
            )
        order = np.random.default_rng([config.seed, k, 1]).permutation(len(records))
        limit = config.heldout_per_class or len(records)
        out += [records[i] for i in sorted(order[:limit])]
    return out


def write_fewshot_dataset(config: ml_collections.ConfigDict, out_dir: pathlib.Path) -> list[dict]:
    """Writes (or, on a restart, checks) the k-shot dataset; returns the k-shot train records."""
    class_names = list(config.data.class_names)
    entries = _split_pathologies(config.data.paths, "train")
    where = f"{list(config.data.paths)}"
    keep = select_shots([e[2] for e in entries], class_names, config.shots, config.seed, where)
    shot_records = list(_read_positions(entries, "train", set(keep)))
    if jax.process_index() == 0 and not (out_dir / shards.MANIFEST).exists():
        _write_fewshot(config, out_dir, shot_records)
    multihost_utils.sync_global_devices("fewshot_data")  # other processes read what 0 wrote
    existing = [r["case_id"] for r in shards.read_records(out_dir, "train")]
    if existing != [r["case_id"] for r in shot_records]:
        raise errors.JobError(
            f"{out_dir}: holds a k-shot set drawn with another config "
            "(data, classes, shots or seed); use a new workdir"
        )
    return shot_records


def _write_fewshot(config, out_dir: pathlib.Path, shot_records: list[dict]) -> None:
    """Writes the k-shot records (train) and held-out records of unseen patients (test)."""
    class_names = list(config.data.class_names)
    heldout = heldout_records(config, class_names, shot_records)
    for record in heldout:
        record["split"] = "test"
    extra = {
        "sources": list(config.data.paths),
        "shots": config.shots,
        "seed": config.seed,
        "class_names": class_names,
        "heldout_split": config.heldout_split,
    }
    shards.write_dataset(shot_records + heldout, out_dir, name="fewshot", extra=extra)
    logging.info(
        "k-shot dataset %s: %d train, %d held-out", out_dir, len(shot_records), len(heldout)
    )


def task_devices(config, base_devices: Sequence[str], shot_records: list[dict]) -> list[str]:
    """`data.device_names`, or the base's devices plus new devices of the k-shot records."""
    if config.data.device_names:
        return list(config.data.device_names)
    new = sorted({r["device"] for r in shot_records} - set(base_devices) - {"unknown"})
    return list(base_devices) + new


def make_train_step(config, spec, mesh, shardings):
    """The diffusion train step on the generator's own schedule and prediction target, with
    this job's loss weighting (`config.diffusion`) and training settings."""
    diffusion = {**spec.schedule, "prediction": spec.prediction, **config.diffusion.to_dict()}
    cfg = train_step.step_config(config.train, diffusion, spec.image_channels)
    schedule = schedules.make_schedule(ml_collections.ConfigDict(diffusion))
    return train_step.make_train_step(cfg, schedule, mesh, shardings)


def _trained(state: Any) -> dict[str, Any]:
    return {name: getattr(state, name) for name in TRAINED}


def train(config, spec, data_config, model: nnx.Module, workdir: pathlib.Path) -> dict[str, Any]:
    """Trains the model's `nnx.LoRAParam`s to `train.steps`, resuming from checkpoints.

    The step, checkpoints, non-finite stop and progress reports are pretraining's; checkpoints
    hold only the trained part of the state, since the frozen base comes from the generator.
    """
    mesh = train_loop.make_mesh(config)
    tx = train_state.make_optimizer(config.train)
    state = train_state.init_train_state(lambda: model, tx, train_state.trainable_filter("lora"))
    rules = [tuple(rule) for rule in config.partition.rules]
    shardings = partition.state_shardings(state, rules, mesh, min_size=config.partition.min_size)
    state = jax.device_put(state, shardings)
    data_iter = iter(pipeline.make_dataset(data_config, split="train", seed=config.train.seed))
    manager = train_loop.make_manager(workdir, config)
    target = checkpoints.abstract_like(_trained(state), _trained(shardings))
    restored = checkpoints.restore_latest(manager, target, data_iter)
    if restored:
        state = state.replace(**restored[0])
    state, history = train_loop.run(
        state,
        make_train_step(config, spec, mesh, shardings),
        data_iter,
        config=config,
        mesh=mesh,
        manager=manager,
        writer=train_loop.make_writer(workdir),
        rng=jax.random.key(config.train.seed),
        saved=_trained,
    )
    return {"state": state, "history": history}


def export_adapter(state, info: dict[str, Any], directory: pathlib.Path) -> dict[str, Any]:
    """Saves the EMA adapters; written aside and renamed, so a reader never sees a partial one."""
    staging = directory.with_name(f".{directory.name}.tmp")
    primary = jax.process_index() == 0  # file moves on one host; the orbax save is collective
    if primary:
        shutil.rmtree(staging, ignore_errors=True)
    multihost_utils.sync_global_devices("export_adapter:staging")
    info = lora.save_adapter(staging, state.model(state.ema_params), info)
    if primary:
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    multihost_utils.sync_global_devices("export_adapter:done")
    return info


def sample_grid(config, adapter_dir: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """Samples `sample.per_class` images per task class from the saved adapter, as a grid."""
    model, spec = generator_lib.load_generator(config.generator, adapter=adapter_dir)
    per_class = config.sample.per_class
    cond = preview.grid_conditions(spec.class_names, spec.image_size, per_class)
    sample_fn = generator_lib.make_sample_fn(spec, **preview.sampler_settings(spec, config.sample))
    images = sample_fn(
        model,
        jax.random.key(config.sample.seed),
        *(cond[k] for k in ("class_id", "device_id", "box_mask")),
    )
    return preview.save_sample_grid(images, spec.class_names, per_class, path, column="adapted")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Adapts `config.generator` to the task; returns the state, history and adapter info."""
    lora_config = validate_config(config)
    workdir = pathlib.Path(workdir).absolute()
    try:
        base, spec = generator_lib.load_generator(config.generator)
    except FileNotFoundError as e:
        raise errors.JobError(f"config.generator: {e}") from e
    if spec.student is not None:
        raise errors.ConfigError(
            f"config.generator: {config.generator} is a distilled student (of "
            f"{spec.student.get('teacher')}); adapt its teacher, then distil the adapted teacher "
            "(busgen distill --config.adapter=ADAPTER)"
        )
    if config.data.image_size not in (0, spec.image_size):
        raise errors.JobError(
            f"config.data.image_size = {config.data.image_size} differs from "
            f"the generator's image size {spec.image_size}"
        )
    shot_records = write_fewshot_dataset(config, workdir / layout.FEWSHOT)
    data_config = config.data.copy_and_resolve_references()
    data_config.unlock()
    data_config.update(
        image_size=spec.image_size,
        paths=[str(workdir / layout.FEWSHOT)],
        device_names=task_devices(config, spec.device_names, shot_records),
    )
    try:
        class_starts = lora.start_rows(
            data_config.class_names, spec.class_names, lora_config.new_row_from
        )
    except ValueError as e:
        raise errors.JobError(str(e)) from e
    info = {
        "lora": dataclasses.asdict(lora_config),
        "base_generator": str(pathlib.Path(config.generator).absolute()),
        "base_fingerprint": lora.params_fingerprint(base),
        "class_names": list(data_config.class_names),
        "device_names": list(data_config.device_names),
        "class_rows": lora.vocabulary_rows(data_config.class_names, spec.class_names),
        "device_rows": lora.vocabulary_rows(data_config.device_names, spec.device_names),
        "class_starts": class_starts,
        "full_params": lora.count_params(base, nnx.Param),
        "full_bytes": lora.directory_bytes(pathlib.Path(config.generator) / "params"),
        "shots": config.shots,
        "steps": config.train.steps,
    }
    model = lora.adapted_model(base, info)
    logging.info(
        "adapting %s: %d adapter params vs %d in the base",
        lora.adapted_paths(model),
        lora.count_params(model),
        info["full_params"],
    )
    try:
        result = train(config, spec, data_config, model, workdir)
    except (ValueError, checkpoints.CheckpointError, FloatingPointError) as e:
        raise errors.JobError(str(e)) from e
    info = export_adapter(result["state"], info, workdir / layout.ADAPTER)
    logging.info(
        "adapter %s: %d params, %d bytes (full model: %d params, %d bytes, %.2f%%)",
        workdir / layout.ADAPTER,
        info["adapter_params"],
        info["adapter_bytes"],
        info["full_params"],
        info["full_bytes"],
        100 * info["adapter_bytes"] / info["full_bytes"],
    )
    grid = None
    if config.sample.per_class:
        grid = sample_grid(
            config, workdir / layout.ADAPTER, workdir / layout.SAMPLES / layout.ADAPTED_SAMPLES
        )
    print(
        f"adapter: {workdir / layout.ADAPTER} ({info['adapter_params']:,} params, "
        f"{info['adapter_bytes']:,} bytes); k-shot data: {workdir / layout.FEWSHOT}; grid: {grid}"
    )
    return {**result, "info": info, "grid": grid}


main = shell.command(run, "configs/adapt.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
