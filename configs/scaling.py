"""Data-scaling experiment configs: presets tiny (tests) and default (64 px demo).

  busgen scaling --config=configs/scaling.py:default --workdir=/tmp/scaling \
      --config.real_path=/data/real --config.synthetic_path=/data/synthetic \
      --config.sizes="(50, 100, 200, 400)"

For every n in `sizes` and source in `sources` a classifier (`classifier`, the classifier
job's config) is trained on n real, n synthetic, or n real + n synthetic images (mixed 50/50),
and every one is tested on the test split of `real_path`.
"""

from __future__ import annotations

import ml_collections

from busgen_jax.core import config_files

PRESETS = ("tiny", "default")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the scaling config for `preset` (default 'default')."""
    preset = config_files.check_preset(preset or "default", PRESETS)
    config = ml_collections.ConfigDict()
    config.classifier = config_files.load(f"configs/classifier.py:{preset}")
    config.real_path = ""
    config.synthetic_path = ""
    config.sizes = (50, 100, 200, 400)
    config.sources = ("real", "synthetic", "mixed")
    config.seed = 0  # subsets: nested, class-stratified draws from a permutation of this seed
    if preset == "tiny":
        config.sizes = (8, 16)
        config.classifier.train.steps = 10
        config.classifier.checkpoint.every_steps = 10
    return config
