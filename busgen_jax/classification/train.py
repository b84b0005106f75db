"""Training the downstream classifier: its config resolution, step, evaluation and export.

See `busgen_jax.jobs.train_classifier` for the job; `train_and_evaluate` is also the unit the
scaling experiment and the demo run per data source.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from busgen_jax.classification import inference
from busgen_jax.core import config_files, errors
from busgen_jax.data import schema
from busgen_jax.data.vocabulary import Task
from busgen_jax.evaluation import statistics
from busgen_jax.jobs import layout
from busgen_jax.models import classifier, params_io
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.parallel import partition
from busgen_jax.training import checkpoints, train_loop, train_state

BATCH_NDIMS = {"image": 4, "label": 1}
# Keys of the RBG generator: faster random bits on TPU, and initialisation and the step compile
# several times faster than with threefry on CPU (40 s vs 7 s for the tiny model's init).
PRNG_IMPL = "rbg"


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An unlocked copy with what the task and the U-Net init imply filled in, validated.

    data.class_names / label_field / class_weights come from the task (each side of the task
    weighs one half); with `model.init_from_unet` the encoder is that generator's U-Net.
    Raises ConfigError (or a model config's ValueError) naming the first bad field.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    task = config.task
    config.data.class_names = Task.from_config(task).class_names
    config.data.label_field = task.label_field
    config.data.class_weights = tuple(
        [0.5 / max(len(task.negative), 1)] * len(task.negative)
        + [0.5 / max(len(task.positive), 1)] * len(task.positive)
    )
    config.eval.paths = tuple(config.eval.paths) or tuple(config.data.paths)
    if config.model.init_from_unet:
        config.model.encoder = "unet"
        config.model.unet = params_io.load_model_config(config.model.init_from_unet)
    validate_config(config)
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError with one line naming the first bad field of a resolved config."""
    model, data, task, train = config.model, config.data, config.task, config.train
    overlap = set(task.negative) & set(task.positive)
    unknown = set(task.negative) | set(task.positive)
    unknown = sorted(unknown - set(schema.PATHOLOGIES)) if not task.label_field else []
    checks = [
        ("task.negative", len(task.negative) > 0, "must name at least one class"),
        ("task.positive", len(task.positive) > 0, "must name at least one class"),
        ("task.positive", not overlap, f"shares {sorted(overlap)} with task.negative"),
        (
            "task.negative",
            not unknown,
            f"has {unknown}, not pathologies {schema.PATHOLOGIES} "
            "(set task.label_field for other labels)",
        ),
        ("data.paths", len(data.paths) > 0, "must name at least one dataset directory"),
        (
            "data.image_size",
            data.image_size == model.image_size,
            f"must equal model.image_size={model.image_size}",
        ),
        ("data.batch_size", data.batch_size >= 1, "must be >= 1"),
        ("model.num_outputs", model.num_outputs == 1, "must be 1 (one logit for a binary task)"),
        config_files.one_of("eval.split", config.eval.split, schema.SPLITS),
        ("eval.batch_size", config.eval.batch_size >= 1, "must be >= 1"),
        ("train.steps", train.steps >= 1, "must be >= 1"),
        ("train.learning_rate", train.learning_rate > 0, "must be > 0"),
        ("train.warmup_steps", 0 <= train.warmup_steps <= train.steps, "must be in [0, steps]"),
        ("train.ema_decay", 0.0 <= train.ema_decay < 1.0, "must be in [0, 1)"),
        ("train.brightness", 0.0 <= train.brightness < 1.0, "must be in [0, 1)"),
        ("train.contrast", 0.0 <= train.contrast < 1.0, "must be in [0, 1)"),
        ("checkpoint.every_steps", config.checkpoint.every_steps >= 1, "must be >= 1"),
        ("checkpoint.max_to_keep", config.checkpoint.max_to_keep >= 1, "must be >= 1"),
    ]
    config_files.check_fields(config, checks)
    classifier.validate_config(model)
    partition.validate_rules(config.partition.rules)
    train_state.trainable_filter(train.trainable)


def augment(images: jax.Array, rng: jax.Array, brightness: float, contrast: float) -> jax.Array:
    """Per-image gain and contrast jitter: clip(c x + b, -1, 1), c ~ U(1 +- contrast),
    b ~ U(+- brightness); the scanner-setting variation crop and flip do not cover."""
    shape = (images.shape[0], 1, 1, 1)
    c_rng, b_rng = jax.random.split(rng)
    c = jax.random.uniform(c_rng, shape, minval=1.0 - contrast, maxval=1.0 + contrast)
    b = jax.random.uniform(b_rng, shape, minval=-brightness, maxval=brightness)
    return jnp.clip(c * images + b, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    learning_rate: optax.Schedule
    ema_decay: float
    brightness: float
    contrast: float


def train_step(
    state: train_state.TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, cfg: StepConfig
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """One AdamW step on the mean sigmoid cross-entropy; randomness is `fold_in(rng, step)`."""
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    images = augment(batch["image"], aug_rng, cfg.brightness, cfg.contrast)
    labels = batch["label"].astype(jnp.float32)

    def loss_fn(params: nnx.State) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(state.graphdef, params, state.rest)
        logits = model(images, dropout_rng=dropout_rng)[:, 0]
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, metrics = train_state.apply_gradients(
        state, loss, grads, cfg.ema_decay, cfg.learning_rate
    )
    metrics["accuracy"] = jnp.mean((logits > 0) == (labels > 0.5))
    return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, shardings: Any):
    """`train_step` jitted with explicit shardings; the state argument is donated."""
    cfg = StepConfig(
        learning_rate=train_state.learning_rate_schedule(config.train),
        ema_decay=config.train.ema_decay,
        brightness=config.train.brightness,
        contrast=config.train.contrast,
    )
    batch_shardings = {k: mesh_lib.batch_sharding(mesh, n) for k, n in BATCH_NDIMS.items()}
    return jax.jit(
        functools.partial(train_step, cfg=cfg),
        in_shardings=(shardings, batch_shardings, mesh_lib.replicated(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


@functools.lru_cache(maxsize=4)
def _compiled(signature: str, mesh: jax.sharding.Mesh) -> tuple[Any, Any, Any, Any]:
    """(jitted init, abstract state, shardings, jitted step) of one model/training setting.

    Cached so that runs in one process that differ only in their data (the scaling grid, a
    resumed run) trace and compile once; the jitted functions and the optimizer (a static
    field of the state) are then the same objects.
    """
    config = ml_collections.ConfigDict(json.loads(signature))
    init_fn, abstract, shardings = train_state.abstract_state_and_shardings(
        config, mesh, model_fn(config)
    )
    init = jax.jit(init_fn, out_shardings=shardings)
    return init, abstract, shardings, make_train_step(config, mesh, shardings)


def compiled(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Any, ...]:
    """`_compiled` for the sections of `config` that define the state and the step."""
    sections = {k: config[k].to_dict() for k in ("model", "train", "partition")}
    return _compiled(json.dumps(sections, sort_keys=True), mesh)


def model_batch(batch: dict[str, np.ndarray], task: Task) -> dict[str, np.ndarray]:
    """The classifier's inputs: images, and the task's label of each class id."""
    return {"image": batch["image"], "label": task.labels(batch["class_id"])}


def model_fn(config: ml_collections.ConfigDict) -> Callable[[], classifier.Classifier]:
    key = lambda: jax.random.key(config.train.seed, impl=PRNG_IMPL)
    return lambda: classifier.Classifier(config.model, rngs=nnx.Rngs(key()))


def with_unet_encoder(state: train_state.TrainState, generator_dir: str, wrt: Any):
    """The state with the encoder (params and EMA) copied from an exported generator's U-Net."""
    from busgen_jax.diffusion import generator  # the diffusion stack only for this initialisation

    unet, _ = generator.load_generator(generator_dir)
    model = classifier.copy_unet_weights(state.model(), unet)
    _, params, rest = nnx.split(model, wrt, ...)
    return state.replace(params=params, rest=rest, ema_params=jax.tree.map(jnp.copy, params))


def evaluate(state: train_state.TrainState, config: ml_collections.ConfigDict, workdir) -> dict:
    """Scores the eval split with the EMA model; writes the CSV and the AUC JSON (process 0)."""
    model = state.model(state.ema_params)
    split = config.eval.split
    rows = inference.predict_split(
        model, config, list(config.eval.paths), split, config.eval.batch_size
    )
    auc = statistics.roc_auc_ci(rows["label"], rows["probability"])
    result = {"split": split, "num_cases": len(rows["label"]), **auc.to_dict()}
    if jax.process_index() == 0:
        inference.write_csv(rows, pathlib.Path(workdir) / layout.predictions_file(split))
        (pathlib.Path(workdir) / layout.eval_file(split)).write_text(json.dumps(result, indent=1))
    return result


def export(state: train_state.TrainState, config: ml_collections.ConfigDict, directory) -> None:
    """EMA params and model config (`params_io.save_params` format) plus the job config."""
    directory = pathlib.Path(directory)
    if jax.process_index() == 0 and directory.exists():
        shutil.rmtree(directory)
    multihost_utils.sync_global_devices("export_classifier")
    model = state.model(state.ema_params)
    params_io.save_params(nnx.state(model, nnx.Param), directory, config=config.model)
    if jax.process_index() == 0:
        (pathlib.Path(directory) / inference.CONFIG_FILE).write_text(config.to_json(indent=1))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to `config.train.steps` (resuming from `workdir`), evaluates, exports.

    The config is resolved here, once; a bad field or dataset is a JobError naming it.

    Returns:
      {'state': the final TrainState, 'history': [(step, metrics), ...] of this run,
       'eval': the evaluation dict (AUC, DeLong CI, number of cases)}.
    """
    from busgen_jax.data import pipeline  # the input stack (grain, PIL) only when training

    try:
        config = resolve_config(config)
        check_inputs(config)
    except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError
        raise errors.JobError(str(e)) from e
    workdir = pathlib.Path(workdir)
    mesh = train_loop.make_mesh(config)
    init, abstract, shardings, train_step_fn = compiled(config, mesh)
    data_iter = iter(pipeline.make_dataset(config.data, split="train", seed=config.train.seed))
    manager = train_loop.make_manager(workdir, config)
    restored = checkpoints.restore_latest(
        manager, checkpoints.abstract_like(abstract, shardings), data_iter
    )
    if restored:
        state = restored[0]
    else:
        state = init()
        if config.model.init_from_unet:
            wrt = train_state.trainable_filter(config.train.trainable)
            state = with_unet_encoder(state, config.model.init_from_unet, wrt)
            state = jax.device_put(state, shardings)
    writer = train_loop.make_writer(workdir)
    task = Task.from_config(config.task)
    state, history = train_loop.run(
        state,
        train_step_fn,
        data_iter,
        config=config,
        mesh=mesh,
        manager=manager,
        writer=writer,
        rng=jax.random.key(config.train.seed, impl=PRNG_IMPL),
        prepare=lambda batch: model_batch(batch, task),
    )
    step = int(state.step)
    result = evaluate(state, config, workdir)
    writer.write_scalars(step, {f"{config.eval.split}_auc": result["auc"]})
    writer.flush()
    export(state, config, workdir / layout.EXPORT)
    logging.info(
        "%s AUC %.3f (95%% CI %.3f-%.3f) on %d cases",
        config.eval.split,
        result["auc"],
        result["ci_low"],
        result["ci_high"],
        result["num_cases"],
    )
    return {"state": state, "history": history, "eval": result}


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Checks that the datasets of a resolved config hold the task's classes (DatasetError or
    FileNotFoundError naming the dataset otherwise)."""
    from busgen_jax.data import pipeline

    data = config.data
    pipeline.check_weights(data)
    for path, weight in zip(data.paths, data.mix_weights or [1.0] * len(data.paths), strict=True):
        if weight > 0:
            pipeline.make_source([path], "train", data.class_names, data.label_field)
    pipeline.make_source(config.eval.paths, config.eval.split, data.class_names, data.label_field)
