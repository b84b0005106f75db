"""Diffusion pretraining configs: presets tiny, small, busgen_toy (published), busgen (published).

  python -m busgen_jax.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain \
      --config.data.paths="('/data/phantom',)" --config.train.steps=20

`tiny` runs in seconds on a CPU (tests); `small` is a 64 px demo (minutes on 2 cores);
`busgen_toy` and `busgen` are the published architecture and training defaults at 128 and 160 px
(AdamW 6.25e-6 raised 2.5x over the first tenth of training then cosine, weight decay 1e-4,
clip 1.0, dropout 0.15, loss summed over pixels / B^2, all conditions dropped together with
probability 0.1, batch 1 per device).
"""

from __future__ import annotations

import ml_collections

from busgen_jax import job
from busgen_jax.data import pipeline, schema
from busgen_jax.models import presets

PRESETS = ("tiny", "small", "busgen_toy", "busgen")


def _base(preset: str) -> ml_collections.ConfigDict:
    model = presets.model_config(preset)
    config = ml_collections.ConfigDict()
    config.model = model
    config.data = pipeline.default_data_config(image_size=model.image_size)
    config.diffusion = ml_collections.ConfigDict(
        {
            "schedule": "linear",
            "num_timesteps": model.num_timesteps,
            "beta_start": 1e-4,
            "beta_end": 0.028,
            "prediction": "eps",
            "weighting": "uniform",
            "reduction": "mean",
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            "seed": 0,
            "steps": 20,
            "learning_rate": 1e-3,
            "warmup_multiplier": 1.0,
            "warmup_steps": 0,
            "weight_decay": 1e-4,
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": 1e-8,
            "grad_clip": 1.0,
            "ema_decay": 0.999,
            "cond_drop_prob": 0.1,
            "cond_drop_mode": "batch",
            # The box mask is an input channel, not an embedded condition: kept when the
            # class/device are dropped, as guidance.guided_denoise_fn keeps it by default.
            "drop_box_mask": False,
            "compute_dtype": "float32",
            "trainable": "params",
        }
    )
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.partition = ml_collections.ConfigDict(
        {
            # Conv and dense kernels (and their Adam moments / EMA) FSDP-sharded; rest replicated.
            "rules": ((r"kernel$", "fsdp"), (r".*", "replicated")),
            "min_size": 2**14,
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 1000, "max_to_keep": 3, "async_save": True}
    )
    config.log_every_steps = 50
    config.sample = ml_collections.ConfigDict(
        {
            "every_steps": 5000,
            "per_class": 4,
            "sampler": "ddim",
            "steps": 25,
            "guidance_weight": 1.8,
            "seed": 0,
        }
    )
    return config


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the pretraining config for `preset` (default 'tiny')."""
    preset = job.check_preset(preset or "tiny", PRESETS)
    config = _base(preset)
    if preset in ("tiny", "small"):
        config.data.class_names = list(schema.PATHOLOGIES)
        config.data.device_names = [f"device-{i}" for i in range(config.model.num_devices)]
    if preset == "tiny":
        # One level, no down-path attention: XLA compiles the step in seconds on a CPU.
        config.model.update(channel_mults=(1,), attention_levels=())
        config.data.batch_size = 8
        config.train.steps = 20
        config.checkpoint.every_steps = 10
        config.log_every_steps = 5
        config.sample.update(every_steps=20, per_class=2, steps=4)
        config.partition.min_size = 256
    elif preset == "small":
        config.data.batch_size = 16
        config.train.update(steps=2000, learning_rate=2e-4, warmup_steps=100)
        config.checkpoint.every_steps = 250
        config.sample.update(every_steps=500, steps=20)
    else:  # published BUSGen training defaults
        config.data.class_names = list(config.model.class_names)
        config.data.device_names = list(config.model.device_names)
        config.data.update(batch_size=1, balance_classes=True, random_flip=True, random_crop=True)
        config.diffusion.reduction = "published"
        config.train.update(
            steps=55_000,  # ~70 epochs of BUSI-sized data at batch 1
            learning_rate=6.25e-6,
            warmup_multiplier=2.5,
            warmup_steps=5_500,  # first tenth of training
            weight_decay=1e-4,
            grad_clip=1.0,
            ema_decay=0.9999,
            cond_drop_prob=0.1,
            cond_drop_mode="batch",
        )
        config.sample.update(sampler="dpm_solver_3s", steps=50, guidance_weight=1.8)
    return config
