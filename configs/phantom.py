"""Phantom dataset generation.

    busgen phantom --config=configs/phantom.py:tiny --workdir=/tmp/phantom
    python -m busgen_jax.generate_phantom --config=configs/phantom.py:demo --workdir=workdir/demo

Presets: `tiny` (tests: 48 images, 32 px), `demo` (the demo's dataset), `default` (4,000 images,
128 px, the published toy resolution).
"""

import ml_collections

from busgen_jax import job


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    job.check_preset(preset, ("default", "demo", "tiny"))
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_images = 4000
    config.image_size = 128
    # Class mix of the phantom (normal, benign, malignant, DCIS); None uses the phantom default.
    config.class_probs = ml_collections.config_dict.placeholder(dict)
    # Devices to simulate; empty uses every phantom device.
    config.devices = ()
    config.split_fractions = (0.7, 0.15, 0.15)
    config.records_per_shard = 1024
    config.name = "phantom"
    if preset == "tiny":
        config.num_images = 48
        config.image_size = 32
    elif preset == "demo":
        config.num_images = 1200
        config.image_size = 64
    return config
