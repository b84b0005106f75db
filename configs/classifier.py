"""Classifier configs: presets tiny, default, resnet18, each optionally with a task; and predict.

  busgen train-classifier --config=configs/classifier.py:default --workdir=/tmp/cls \
      --config.data.paths="('/data/real',)" --config.eval.paths="('/data/real',)"
  busgen train-classifier --config=configs/classifier.py:default,normal_vs_abnormal ...
  busgen train-classifier --config=configs/classifier.py:default --workdir=/tmp/mixed \
      --config.data.paths="('/data/real', '/data/synthetic')" \
      --config.data.mix_weights="(0.5, 0.5)" --config.eval.paths="('/data/real',)"
  busgen predict --config=configs/classifier.py:predict --workdir=/tmp/cls \
      --config.export_dir=/tmp/cls/export --config.split=test

`tiny` trains in seconds (tests); `default` is a 64 px demo (a few minutes on 2 CPU cores);
`resnet18` is a ResNet-18-like network (4 levels of 2 blocks, 64-512 channels, stride-2 stem)
for real data at 128 px. `oracle` is the shipped phantom oracle (`busgen_jax.evaluation.oracle`):
the default network at 32 px trained on the built-in `benign_dcis` phantom (6,000 images). A task after the comma is one of TASKS (default benign_vs_malignant);
other tasks are overrides: `--config.task.negative="('benign',)"
--config.task.positive="('dcis',)"`, or a label column with `--config.task.label_field=recurrence
--config.task.negative="('0',)" --config.task.positive="('1',)"`.
`--config.model.init_from_unet=GENERATOR_DIR` starts the encoder from a pretrained U-Net.
"""

from __future__ import annotations

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import builtin, pipeline

SIZES = ("tiny", "default", "resnet18", "oracle")
TASKS = {
    "benign_vs_malignant": (("benign",), ("malignant",)),
    "benign_vs_dcis": (("benign",), ("dcis",)),
    "normal_vs_abnormal": (("normal",), ("benign", "malignant", "dcis")),
}


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        {
            "encoder": "resnet",
            "image_size": 64,
            "base_channels": 16,
            "channel_mults": (1, 2, 4),
            "num_res_blocks": 1,
            "norm_groups": 8,
            "stem_stride": 1,
            "dropout": 0.1,
            "num_outputs": 1,
            # A generator directory: the encoder becomes its U-Net's down path, weights copied.
            "init_from_unet": "",
            "unet": None,  # set from the generator's model config by the job
        }
    )
    negative, positive = TASKS["benign_vs_malignant"]
    config.task = ml_collections.ConfigDict(
        {"negative": negative, "positive": positive, "label_field": ""}
    )
    config.data = pipeline.default_data_config(image_size=64)
    config.data.update(batch_size=32, balance_classes=True, crop_min_scale=0.85)
    config.eval = ml_collections.ConfigDict(
        # Empty paths: evaluate on data.paths (keep real test data here when training on
        # synthetic data).
        {"paths": (), "split": "test", "batch_size": 64}
    )
    config.train = ml_collections.ConfigDict(
        {
            "seed": 0,
            "steps": 600,
            "learning_rate": 1e-3,
            "warmup_multiplier": 1.0,
            "warmup_steps": 30,
            "weight_decay": 0.05,
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": 1e-8,
            "grad_clip": 1.0,
            "ema_decay": 0.99,
            "trainable": "params",
            # Per-image gain and contrast jitter (scanner settings), on top of crop and flip.
            "brightness": 0.1,
            "contrast": 0.1,
        }
    )
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.partition = ml_collections.ConfigDict(
        {"rules": ((r"kernel$", "fsdp"), (r".*", "replicated")), "min_size": 2**14}
    )
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 200, "max_to_keep": 2, "async_save": True}
    )
    config.log_every_steps = 50
    return config


def _predict() -> ml_collections.ConfigDict:
    """`busgen predict`: an exported classifier, the data to score (default: its eval data)."""
    return ml_collections.ConfigDict(
        {"export_dir": "", "paths": (), "split": "test", "batch_size": 64}
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config for `arg` = 'size[,task]' (default 'default'), or 'predict'."""
    size, _, task = (arg or "default").partition(",")
    if size == "predict":
        return _predict()
    config_files.check_preset(size, SIZES)
    if task and task not in TASKS:
        raise ValueError(f"unknown classifier task {task!r}; expected one of {tuple(TASKS)}")
    config = _base()
    if task:
        config.task.negative, config.task.positive = TASKS[task]
    if size == "tiny":
        config.model.update(image_size=32, base_channels=8, channel_mults=(1, 2), norm_groups=4)
        config.data.update(image_size=32, batch_size=16)
        config.eval.batch_size = 32
        config.train.update(steps=40, learning_rate=3e-3, warmup_steps=4, ema_decay=0.8)
        config.checkpoint.every_steps = 20
        config.log_every_steps = 10
        config.partition.min_size = 256
    elif size == "oracle":
        # The data and length of the recorded phantom difficulty run (BENCHMARKS.md, "Phantom
        # difficulty"); the val split picks nothing, the test split stays for the record.
        config.task.negative, config.task.positive = TASKS["benign_vs_dcis"]
        config.model.image_size = 32
        config.data.update(image_size=32, paths=(builtin.phantom_path("benign_dcis"),))
        config.eval.split = "val"
        config.train.steps = 1200
    elif size == "resnet18":
        config.model.update(
            image_size=128,
            base_channels=64,
            channel_mults=(1, 2, 4, 8),
            num_res_blocks=2,
            norm_groups=32,
            stem_stride=2,
            dropout=0.2,
        )
        config.data.update(image_size=128, batch_size=64)
        config.train.update(steps=5000, learning_rate=5e-4, warmup_steps=250, ema_decay=0.999)
        config.checkpoint.every_steps = 500
    return config
