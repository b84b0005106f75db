"""Distillation configs: presets `default` (the shipped foundation) and `tiny` (tests).

  busgen distill --config=configs/distill.py:default --workdir=/tmp/distill
  busgen distill --config=configs/distill.py:tiny --workdir=/tmp/d \
      --config.teacher=PRETRAIN_WORKDIR/export --config.data.paths="('/data/phantom',)"

Rounds: guidance distillation at `start_steps` DDIM steps, then progressive halving down to
`final_steps` (`busgen_jax.diffusion.distillation`). `start_steps` 16 for the foundation: its
guided DDIM at 16 steps is closer to the real images than its default sampler (Fréchet distance
1.61x the real-vs-real floor against 3.05x), and students distilled from it beat those from 8
steps at every step count (BENCHMARKS.md, "Distillation: student vs teacher", both tables of
2026-12-03). The five rounds took 28 minutes on 2 CPU cores.
`teacher` "" is the shipped foundation; `adapter` merges an adaptation job's adapter into it.
`data` defaults to the teacher's corpus; its class and device names are the teacher's.
"""

from __future__ import annotations

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import builtin, pipeline

PRESETS = ("default", "tiny")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the distillation config for `preset` (default 'default')."""
    preset = config_files.check_preset(preset or "default", PRESETS)
    config = ml_collections.ConfigDict()
    config.teacher = ""  # exported generator; "" = the shipped phantom foundation
    config.adapter = ""  # optional adaptation-job adapter merged into the teacher
    config.distill = ml_collections.ConfigDict(
        {
            "start_steps": 16,  # the teacher's DDIM step count the first student matches
            "final_steps": 1,  # halve down to this (a power of two below start_steps)
            # Steps per round: the guidance round first, then one entry per halving.
            "round_steps": (2000, 1500, 1200, 1200, 1200),
            # w ~ U(range) in training; the student is sampled at the teacher's own w.
            "guidance_range": (0.0, 3.0),
        }
    )
    config.data = pipeline.default_data_config(image_size=0)
    config.data.paths = (builtin.phantom_path("foundation"),)
    config.data.update(batch_size=16, balance_classes=True)
    config.train = ml_collections.ConfigDict(
        {
            "seed": 0,
            "steps": 0,  # set per round from distill.round_steps
            "learning_rate": 2e-4,
            "warmup_multiplier": 1.0,
            "warmup_steps": 20,
            "weight_decay": 0.0,  # decay would pull the student away from its teacher's weights
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": 1e-8,
            "grad_clip": 1.0,
            "ema_decay": 0.99,  # short rounds: a short EMA horizon
            "trainable": "params",
        }
    )
    # Checkpoints every 100 steps: a round of a few hundred steps loses at most a minute.
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 100, "max_to_keep": 2, "async_save": True}
    )
    config.log_every_steps = 50
    # Pretraining's mesh and partition rules (the student is the teacher's U-Net).
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.partition = ml_collections.ConfigDict(
        {"rules": ((r"kernel$", "fsdp"), (r".*", "replicated")), "min_size": 2**14}
    )
    if preset == "tiny":
        config.teacher = ""  # tests pass a tiny generator
        config.distill.update(start_steps=4, final_steps=2, round_steps=(16, 16))
        config.data.paths = (builtin.phantom_path("tiny"),)
        config.data.batch_size = 8
        config.train.update(learning_rate=1e-3, warmup_steps=0, ema_decay=0.5)
        config.checkpoint.update(every_steps=8, async_save=False)
        config.partition.min_size = 256
        config.log_every_steps = 4
    return config
