"""`busgen serve`: a local page to draw a lesion box, pick pathology and device, and sample.

    busgen serve --config=configs/serve.py:default --workdir=DIR
    busgen serve --config=configs/serve.py:default --workdir=DIR \
        --config.generator=PRETRAIN_WORKDIR/export --config.adapter=ADAPT_WORKDIR/adapter

Presets: `default` (the shipped phantom foundation model, sampled as its generator.json says),
`tiny` (tests: 4 steps, small limits). The page is served on
127.0.0.1 only; `--config.host=0.0.0.0` serves it to the network, with a warning.
"""

import ml_collections

from busgen_jax.core import config_files
from busgen_jax.diffusion import foundation


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    config_files.check_preset(preset, ("default", "tiny"))
    config = ml_collections.ConfigDict()
    # Exported generator (pretrain's `export/`) and optional adapter (adapt's `adapter/`).
    config.generator = str(foundation.SHIPPED)
    config.adapter = ""
    config.host = "127.0.0.1"
    config.port = 8765
    # Lesion boxes for "random box": a saved prior (.npz), else one fitted to the train split of
    # these datasets, else to the lesions of `phantom_prior_images` images drawn as the phantom
    # preset `phantom_prior` (configs/phantom.py) draws them: the foundation model's corpus.
    config.box_prior = ""
    config.box_prior_from = ()
    config.box_bandwidth = ml_collections.config_dict.placeholder(float)
    config.phantom_prior = "foundation"
    config.phantom_prior_images = 256
    # Sampling the page starts with (--config.sampling.steps=20); an unset field keeps the
    # generator's own sampling preset, from its generator.json.
    unset = ml_collections.config_dict.placeholder
    config.sampling = ml_collections.ConfigDict(
        {
            "sampler": unset(str),
            "steps": unset(int),
            "guidance_weight": unset(float),
            "skip": unset(str),
        }
    )
    config.seed = 0
    config.num_images = 1
    config.limits = ml_collections.ConfigDict()
    config.limits.max_steps = 200
    config.limits.max_guidance = 10.0
    config.limits.max_images = 8
    config.max_queued = 16
    # Finished jobs whose images the page can still fetch (each image is also in workdir).
    config.keep_jobs = 64
    config.save_images = True
    if preset == "tiny":
        config.phantom_prior = "tiny"  # the full phantom vocabulary, as the tests' generator
        config.phantom_prior_images = 128
        config.sampling.steps = 4
        config.limits.max_steps = 50
        config.limits.max_images = 4
        config.max_queued = 4
    return config
