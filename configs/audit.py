"""Privacy audit of an existing synthetic dataset against the real data its generator saw.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('RUN/synthesize/synthetic',)" \
        --config.train_paths="('RUN/adapt/fewshot_data',)"

Writes DIR/audit/: audit.json (similarity distributions, threshold, how many synthetic images
exceed it, the data-copying test), the similarity histogram and the closest pairs.
"""

import ml_collections

from busgen_jax import job


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    job.check_preset(preset, ("default",))
    config = ml_collections.ConfigDict()
    config.synthetic_paths = ()
    config.synthetic_split = "train"
    # Real data the generator was trained on (its train split) and held-out real images of other
    # patients (its `heldout_split`), which calibrate the threshold.
    config.train_paths = ()
    config.heldout_split = "test"
    config.image_size = 64
    config.threshold = ml_collections.config_dict.placeholder(float)  # None: calibrated
    config.quantile = 0.999
    config.num_closest = 8
    return config
