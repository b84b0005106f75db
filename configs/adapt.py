"""Few-shot LoRA adaptation configs: presets `default` (benign vs DCIS, 8 shots) and `tiny`.

  python -m busgen_jax.jobs.adapt --config=configs/adapt.py:default --workdir=/tmp/adapt \
      --config.generator=PRETRAIN_WORKDIR/export --config.data.paths="('/data/busi',)" \
      --config.shots=4 --config.lora.rank=8

`tiny` runs in seconds on a CPU (tests). The task's classes are `data.class_names`; classes the
base generator does not know get new embedding rows. `data.device_names` empty means the base's
devices plus any new device found in the k-shot examples. `data.image_size` 0 means the
generator's size.
"""

from __future__ import annotations

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import pipeline
from busgen_jax.models import lora

PRESETS = ("default", "tiny")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the adaptation config for `preset` (default 'default')."""
    preset = config_files.check_preset(preset or "default", PRESETS)
    config = ml_collections.ConfigDict()
    config.generator = ""  # exported base generator directory (pretrain's `export/`)
    config.shots = 8  # k labelled training examples per class
    config.seed = 0  # k-shot draw
    # Held-out real images of the task's classes (other patients), for the synthesis audit.
    config.heldout_split = "test"
    config.heldout_per_class = 64  # 0 keeps all

    config.data = pipeline.default_data_config(image_size=0)
    config.data.class_names = ["benign", "dcis"]
    config.data.update(batch_size=8, balance_classes=True)
    config.lora = ml_collections.ConfigDict(
        {
            "rank": 8,
            "alpha": 8.0,
            "target": lora.DEFAULT_TARGET,
            "new_row_init": "mean",
            # DCIS is a kind of malignancy: its new row starts from the base's malignant row.
            "new_row_from": {"dcis": "malignant"},
        }
    )
    config.diffusion = ml_collections.ConfigDict({"weighting": "uniform", "reduction": "mean"})
    config.train = ml_collections.ConfigDict(
        {
            "seed": 0,
            "steps": 1500,
            "learning_rate": 1e-4,
            "warmup_multiplier": 1.0,
            "warmup_steps": 100,
            "weight_decay": 0.0,  # decay would pull the adapters (and new rows) to zero
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": 1e-8,
            "grad_clip": 1.0,
            # Few steps: a short EMA horizon, or the exported adapter lags far behind training.
            "ema_decay": 0.99,
            "cond_drop_prob": 0.1,
            "cond_drop_mode": "batch",
            "drop_box_mask": False,
            "compute_dtype": "float32",
        }
    )
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.partition = ml_collections.ConfigDict(
        {"rules": ((r".*", "replicated"),), "min_size": 2**14}
    )
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 250, "max_to_keep": 2, "async_save": True}
    )
    config.log_every_steps = 50
    # Samples per task class drawn from the saved adapter after training (0: no grid); a cheap
    # sampler, at the guidance weight of the generator's spec unless set.
    config.sample = ml_collections.ConfigDict(
        {
            "per_class": 4,
            "sampler": "ddim",
            "steps": 25,
            "guidance_weight": ml_collections.config_dict.placeholder(float),
            "seed": 0,
        }
    )
    if preset == "tiny":
        config.shots = 4
        config.heldout_per_class = 4
        config.data.batch_size = 4
        config.lora.update(rank=2, alpha=2.0)
        config.train.update(steps=6, learning_rate=1e-3, warmup_steps=0, ema_decay=0.5)
        config.checkpoint.update(every_steps=3, async_save=False)
        config.log_every_steps = 2
        config.sample.update(per_class=2, steps=3)
    return config
