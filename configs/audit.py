"""Privacy audit of an existing synthetic dataset against the real data its generator saw.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('RUN/synthesize/synthetic',)" \
        --config.train_paths="('RUN/adapt/fewshot_data',)"

Writes DIR/audit/: audit.json (both similarities' distributions, thresholds, how many synthetic
images exceed them, memorization rates at three quantiles, the data-copying verdict, the closest
synthetic images with their training neighbours' case ids, and the membership-inference AUC and
TPR at 1% FPR when `generator` names the generator that made the set), the similarity histograms
and a figure of the closest synthetic images. No training pixels: with `private_pictures`,
pictures of the training neighbours go to DIR/private_audit/ for the operator only.

    busgen audit --config=configs/audit.py:default --workdir=DIR \
        --config.synthetic_paths="('RUN/synthesize/synthetic',)" \
        --config.train_paths="('RUN/adapt/fewshot_data',)" \
        --config.generator=RUN/pretrain/export --config.adapter=RUN/adapt/adapter
"""

import ml_collections

from busgen_jax.core import config_files


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, ("default",))
    config = ml_collections.ConfigDict()
    config.synthetic_paths = ()
    config.synthetic_split = "train"
    # Real data the generator was trained on (its train split) and held-out real images of other
    # patients (its `heldout_split`), which calibrate the threshold.
    config.train_paths = ()
    config.heldout_split = "test"
    config.image_size = 64
    # None: the `quantile` of held-out-to-training similarity, per measure.
    config.threshold = ml_collections.config_dict.placeholder(float)
    config.windowed_threshold = ml_collections.config_dict.placeholder(float)
    config.quantile = 0.999
    config.num_closest = 8
    config.private_pictures = False
    # The generator that made the synthetic set (an exported generator, e.g. RUN/pretrain/export)
    # and its adapter if it was adapted (e.g. RUN/adapt/adapter). Given, the audit also attacks it
    # with loss-based membership inference: training split (members) against `heldout_split`
    # (non-members) of `train_paths`, at the generator's image size and classes; empty: no attack.
    config.generator = ""
    config.adapter = ""
    # Fixed (timestep, noise) draws per image of the attack, and the seed of their noise.
    config.membership_draws = 16
    config.membership_seed = 0
    return config
