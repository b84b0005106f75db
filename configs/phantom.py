"""Phantom dataset generation.

    busgen phantom --config=configs/phantom.py:tiny --workdir=/tmp/phantom
    python -m busgen_jax.jobs.phantom --config=configs/phantom.py:demo --workdir=workdir/demo
    busgen phantom --config=configs/phantom.py:foundation --workdir=workdir/foundation
    busgen phantom --config=configs/phantom.py:benign_dcis --workdir=workdir/benign_dcis

Presets: `tiny` (tests: 48 images, 32 px), `demo` (the demo's dataset), `default` (4,000 images,
128 px, the published toy resolution), `foundation` (the pretraining corpus of the phantom
foundation model: 20,000 images, 64 px, every device, DCIS labelled malignant, another seed than
the demo's so that no demo image is in it), `benign_dcis` (6,000 benign and DCIS images at 32 px,
the data of the phantom's recorded benign-vs-DCIS difficulty, see `busgen_jax.data.phantom`).
"""

import ml_collections

from busgen_jax.core import config_files


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, ("benign_dcis", "default", "demo", "foundation", "tiny"))
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_images = 4000
    config.image_size = 128
    # Class mix of the phantom (normal, benign, malignant, DCIS); None uses the phantom default.
    config.class_probs = ml_collections.config_dict.placeholder(dict)
    # Devices to simulate; empty uses every phantom device.
    config.devices = ()
    config.split_fractions = (0.7, 0.15, 0.15)
    # Pathology relabelling of the written records, e.g. {"dcis": "malignant"}; None keeps all.
    config.label_map = ml_collections.config_dict.placeholder(dict)
    config.records_per_shard = 1024
    config.name = "phantom"
    if preset == "tiny":
        config.num_images = 48
        config.image_size = 32
    elif preset == "demo":
        config.num_images = 1200
        config.image_size = 64
    elif preset == "foundation":
        # A foundation corpus carries the coarse clinical label: DCIS is a cancer, and adapting
        # to benign vs DCIS stays a few-shot task the pretrained model never saw as a label.
        config.seed = 1000
        config.num_images = 20000
        config.image_size = 64
        config.label_map = {"dcis": "malignant"}
        config.split_fractions = (0.9, 0.05, 0.05)
        config.name = "phantom_foundation"
    elif preset == "benign_dcis":
        config.seed = 7
        config.num_images = 6000
        config.image_size = 32
        config.class_probs = {"benign": 0.5, "dcis": 0.5}
        config.split_fractions = (0.7, 0.1, 0.2)
        config.name = "phantom_benign_dcis"
    return config
