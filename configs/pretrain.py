"""Diffusion pretraining configs: presets tiny, small, phantom_foundation, efficient, busgen_toy
(published), busgen (published).

  python -m busgen_jax.jobs.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain \
      --config.data.paths="('/data/phantom',)" --config.train.steps=20

`tiny` runs in seconds on a CPU (tests); `small` is a 64 px demo (minutes on 2 cores);
`phantom_foundation` is the shipped phantom foundation model (`make foundation` reproduces it:
the corpus, this preset, then `busgen_jax.diffusion.foundation` writes it into the package);
`efficient` trains the 128 px `efficient` U-Net (39% of the published forward FLOPs: attention
only at 32 and 16 px, 4 heads, grayscale) on the 128 px phantom with the published recipe;
`busgen_toy` and `busgen` are the published architecture and training defaults at 128 and 160 px
(AdamW 6.25e-6 raised 2.5x over the first tenth of training then cosine, weight decay 1e-4,
clip 1.0, dropout 0.15, loss summed over pixels / B^2, all conditions dropped together with
probability 0.1, batch 1 per device).
"""

from __future__ import annotations

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import builtin, phantom, pipeline, schema
from busgen_jax.models import presets

PRESETS = ("tiny", "small", "phantom_foundation", "efficient", "busgen_toy", "busgen")
# The phantom foundation model's pretraining corpus (`configs/phantom.py:foundation`): DCIS is
# not among its labels, so adapting to benign vs DCIS is a real few-shot task.
FOUNDATION_CLASSES = ("normal", "benign", "malignant")


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
    # How the exported generator is meant to be sampled (models/presets.py SAMPLING_PRESETS).
    config.sampling_preset = "project"
    config.sample = ml_collections.ConfigDict(
        {
            "every_steps": 5000,
            "per_class": 4,
            "sampler": "ddim",
            "steps": 25,
            # Unset: the guidance weight of the sampling preset the export names.
            "guidance_weight": ml_collections.config_dict.placeholder(float),
            "seed": 0,
        }
    )
    return config


def _phantom_foundation(config: ml_collections.ConfigDict) -> None:
    """The shipped phantom foundation model: 32 px, grayscale, attention at 8 px only.

    v-prediction with a continuous (sinusoidal) time input: an eps-predicting network with a
    learned per-timestep table leaves residual noise in deterministic (probability-flow) samples
    when under-trained, because at low noise it must reproduce eps exactly and the table rows
    between integer steps are interpolated, not learned; v is x0-like at high noise and eps-like
    at low noise, so its errors do not blow up through (x_t - sigma eps) / alpha.
    """
    config.model.update(
        image_size=32,
        base_channels=16,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        attention_in_up_path=True,
        num_heads=4,
        norm_groups=8,
        dropout=0.0,
        num_classes=len(FOUNDATION_CLASSES),
        num_devices=len(phantom.PHANTOM_DEVICES),
        time_embedding="sinusoidal",
    )
    config.data.update(
        image_size=32,
        class_names=list(FOUNDATION_CLASSES),
        device_names=list(phantom.PHANTOM_DEVICES),
        batch_size=16,
        balance_classes=True,
    )
    config.diffusion.prediction = "v"
    config.data.paths = (builtin.phantom_path("foundation"),)
    config.sampling_preset = "phantom_foundation"
    config.train.update(steps=3000, learning_rate=1e-3, warmup_steps=100, ema_decay=0.995)
    config.checkpoint.update(every_steps=200, max_to_keep=2)
    config.log_every_steps = 50
    config.sample.update(every_steps=1500, per_class=4, sampler="ddpm", steps=50)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the pretraining config for `preset` (default 'tiny')."""
    preset = config_files.check_preset(preset or "tiny", PRESETS)
    # The foundation's U-Net is the small preset's family, resized in _phantom_foundation.
    config = _base("small" if preset == "phantom_foundation" else preset)
    config.data.paths = (builtin.phantom_path("demo"),)
    if preset in ("tiny", "small"):
        config.data.class_names = list(schema.PATHOLOGIES)
        config.data.device_names = [f"device-{i}" for i in range(config.model.num_devices)]
    if preset == "phantom_foundation":
        _phantom_foundation(config)
        return config
    if preset == "tiny":
        # One level, no down-path attention: XLA compiles the step in seconds on a CPU.
        config.model.update(channel_mults=(1,), attention_levels=())
        config.data.batch_size = 8
        config.train.steps = 20
        config.checkpoint.every_steps = 10
        config.log_every_steps = 5
        config.sample.update(every_steps=20, per_class=2, steps=4)
        config.partition.min_size = 256
        config.data.paths = (builtin.phantom_path("tiny"),)
    elif preset == "small":
        config.data.batch_size = 16
        config.train.update(steps=2000, learning_rate=2e-4, warmup_steps=100)
        config.checkpoint.every_steps = 250
        config.sample.update(every_steps=500, steps=20)
    else:  # published BUSGen training defaults
        published = preset != "efficient"  # the efficient net has the phantom's vocabulary
        classes, devices = schema.PATHOLOGIES, phantom.PHANTOM_DEVICES
        config.data.class_names = list(config.model.class_names if published else classes)
        config.data.device_names = list(config.model.device_names if published else devices)
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
        config.sample.update(sampler="dpm_solver_3s", steps=50)
        config.data.paths = (builtin.phantom_path("default"),)
    return config
