"""Synthesis of an audited, labelled dataset from a (possibly adapted) generator.

    busgen synthesize --config=configs/synthesize.py:default --workdir=DIR \
        --config.generator=PRETRAIN_WORKDIR/export --config.adapter=ADAPT_WORKDIR/adapter \
        --config.audit.train_paths=ADAPTATION_DATA_DIR

Presets: `published` (the official BUSGen sampling, `presets.SAMPLING_PRESETS['published']`:
singlestep DPM-Solver++ of order 3, 50 steps, w = 1.8, box zeroed in the unconditional half,
integer timesteps, no x0 clipping, truncated box edges; what a converted generator's spec names),
`default` (the sampler, steps, guidance and network calling that the generator's spec names:
for the shipped phantom foundation model, the setting measured best for it), `tiny` (tests:
24 images in small shards, sampled as the spec says), `fast` (DPM-Solver++ 2M, 20 steps on a log-SNR grid). With only
--config and --workdir, synthesis samples the shipped foundation model and audits against its
corpus.
"""

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.data import builtin
from busgen_jax.diffusion import foundation
from busgen_jax.models import presets


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, ("default", "fast", "tiny", "published"))
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.name = "synthetic"
    # Exported generator (pretrain's `export/`; default the shipped phantom foundation model)
    # and optional adapter (adapt's `adapter/`).
    config.generator = str(foundation.SHIPPED)
    config.adapter = ""
    config.num_images = 512
    # Mix of classes and devices as name -> weight; empty means uniform over the generator's.
    config.classes = {}
    config.devices = {}
    # A real dataset directory: synthesize exactly what its minority classes and devices lack
    # (overrides num_images, classes and devices).
    config.balance_dataset = ""
    # Sampler, steps, guidance weight and time grid; unset, each follows the generator's spec (the
    # sampling its maker measured best for it). Time grids: 'time_uniform' is the published
    # (official DPM-Solver) default; 'logsnr' is markedly more accurate at 10-50 steps
    # (BENCHMARKS.md, sampler error vs steps).
    config.sampler = ml_collections.config_dict.placeholder(str)
    config.steps = ml_collections.config_dict.placeholder(int)
    config.guidance_weight = ml_collections.config_dict.placeholder(float)
    config.eta = 0.0
    config.skip = ml_collections.config_dict.placeholder(str)
    # How the network is called and the boxes drawn; unset, each follows the generator's spec
    # (its sampling preset, see busgen_jax/models/presets.py): zero the box mask in the
    # unconditional half, 'floor' or 'interpolate' the timestep, clip x0 predictions to [-1, 1],
    # 'truncate' or round 'outward' the box edges.
    config.drop_box_mask = ml_collections.config_dict.placeholder(bool)
    config.time_input = ml_collections.config_dict.placeholder(str)
    config.clip_x0 = ml_collections.config_dict.placeholder(bool)
    config.box_raster = ml_collections.config_dict.placeholder(str)
    # Redraw noise-like samples (high-frequency energy far above real images'; see
    # busgen_jax/evaluation/sample_failures.py) like privacy rejections, and count them.
    config.redraw_failed = True
    # Over-generation with a label filter (busgen_jax/synthesis/label_filter.py): an exported
    # classifier trained on the real data at hand (`busgen train-classifier`'s export/; empty:
    # off) judges each candidate; one whose probability of its requested class is below
    # `min_probability` is redrawn, in the first `rounds` rounds (fewer than audit.max_rounds).
    config.label_filter = ml_collections.ConfigDict()
    config.label_filter.classifier = ""
    config.label_filter.min_probability = 0.5
    config.label_filter.rounds = 3
    config.batch_size = 16
    config.records_per_shard = 256
    # Lesion boxes: a saved prior (.npz), else fitted to the train split of these datasets
    # (default: the audit's training data).
    config.box_prior = ""
    config.box_prior_from = ()
    config.box_bandwidth = ml_collections.config_dict.placeholder(float)
    config.mesh = {"data": -1}
    config.finalize_timeout_s = 3600.0

    config.audit = ml_collections.ConfigDict()
    # The data the generator was trained or adapted on: candidates are audited against its train
    # split, and the rejection threshold is calibrated on its held-out split. Default: the shipped
    # foundation model's pretraining corpus (the built-in phantom, generated once into a cache).
    config.audit.train_paths = (builtin.phantom_path("foundation"),)
    config.audit.heldout_split = "test"
    # Thresholds of the two similarities (NCC, shift/crop/rotation-tolerant windowed NCC);
    # unset, each is the `quantile` of held-out-to-training similarity.
    config.audit.threshold = ml_collections.config_dict.placeholder(float)
    config.audit.windowed_threshold = ml_collections.config_dict.placeholder(float)
    config.audit.quantile = 0.999
    # A shard whose own candidates test as copying is refiltered at this stricter quantile.
    config.audit.strict_quantile = 0.95
    config.audit.max_rounds = 5
    # Closest candidates listed in the audit (synthetic image beside the training case id).
    config.audit.num_closest = 8
    # Pictures of the closest training neighbours for the operator, in WORKDIR/private_audit/
    # (never inside the dataset): off, since they are training images.
    config.audit.private_pictures = False
    # Noise draws per image of the loss-based membership-inference test (0: no test).
    config.audit.membership_draws = 16

    # Copy-protected sampling (CPSample, Kazdan et al. 2024): a classifier overfit to random
    # labels of the training images guides samples away from where it is confident (|p - 1/2| >
    # 1/2 - alpha), with guidance scale `scale`; 0 turns it off. Rejection still applies.
    config.cpsample = ml_collections.ConfigDict()
    config.cpsample.scale = 0.0
    config.cpsample.alpha = 0.2
    config.cpsample.steps = 600
    config.cpsample.channels = 16
    config.cpsample.seed = 0

    if preset == "tiny":
        # Sampled as the generator's spec says: few steps would leave the shipped model's samples
        # half-denoised, and the audit rightly calls such smooth images closer to its corpus
        # than real held-out images are (copying), and refuses them.
        config.num_images = 24
        config.batch_size = 8
        config.records_per_shard = 8
        # Tests sample random-weight generators, whose every draw is noise by construction.
        config.redraw_failed = False
    elif preset == "published":
        config.update(presets.SAMPLING_PRESETS["published"])
    elif preset == "fast":
        config.sampler = "dpm_solver_pp_2m"
        config.steps = 20
        config.skip = "logsnr"
    return config
