"""Model presets: `model_config(name)` for 'tiny', 'small', 'efficient', 'busgen_toy' and 'busgen',
and the sampling presets `sampling_preset(name)` for 'published', 'project' and 'phantom_foundation'.

'busgen_toy' and 'busgen' are the published architectures exactly (so the released PyTorch
weights import one to one); 'tiny' and 'small' are this project's own choices for tests and demos;
'efficient' is the published 128 px layout made cheaper (39% of its forward FLOPs).

A sampling preset is how a generator is meant to be sampled; an exported generator's spec
records one (`generator.GeneratorSpec.sampling`). 'published' is what the official BUSGen code
does (its DPMSolver.py and Eval.py): singlestep DPM-Solver++ of order 3 in data form, 50 steps on
a time-uniform grid, guidance 1.8, the box channel zeroed in the unconditional half, the timestep
floored to an integer before the time table, no clipping of the predicted clean image, and box
masks rasterized with int() truncation of the pixel edges. 'project' is this project's
pretraining's: singlestep DPM-Solver-3 in noise form, the box kept in the unconditional half (as
its training drops only class and device), the time table interpolated between rows (the
network stays continuous in t, as the solvers assume), x0 clipped to the pixel range [-1, 1]
(no sample leaves it), and box edges rounded outward (every box covers at least one pixel).
"""

from __future__ import annotations

import ml_collections

from busgen_jax.data.schema import PATHOLOGIES

# Published device tables (index 0 is the null device, so it is not listed).
BUSGEN_TOY_DEVICES = ("GE-LOGIQ-E9", "Mindray-M9", "Siemens-ACUSON-NX3-Elite")
BUSGEN_DEVICES = (
    "Siemens-ACUSON-Oxana",
    "GE-LOGIQ-E9",
    "Esaote-MyLab90",
    "Esaote-MyLabClassC",
    "Philips-EPIQ7",
    "Sonoscape-S60",
    "GE-EDVoluson-E8-Expert",
    "Samsung-RS80A",
    "Sonoscape-Clinic",
    "TOSHIBA-Aplio-i700",
    "Mindray-M9",
    "Canon-Aplio-i800",
    "Siemens-ACUSON-NX3-Elite",
    "VINNO-G86",
    "Mindray-Resona-R9",
    "SonoScape-Clinic",
    "Mindray-NuewaI9",
    "Mindray-Resona7",
    "Samsung-Heraw10",
)
PRESETS = ("tiny", "small", "efficient", "busgen_toy", "busgen")
# Each setting is one field of a sampling preset (and of configs/synthesize.py).
SAMPLING_PRESETS = {
    "published": {
        "sampler": "dpm_solver_pp_3s",
        "steps": 50,
        "guidance_weight": 1.8,
        "skip": "time_uniform",
        "drop_box_mask": True,
        "time_input": "floor",
        "clip_x0": False,
        "box_raster": "truncate",
    },
    "project": {
        "sampler": "dpm_solver_3s",
        "steps": 50,
        "guidance_weight": 1.8,
        "skip": "time_uniform",
        "drop_box_mask": False,
        "time_input": "interpolate",
        "clip_x0": True,
        "box_raster": "outward",
    },
}
# The shipped phantom foundation model's (configs/pretrain.py:phantom_foundation): the project's
# network calling with the sampler measured best for it per CPU-second (BENCHMARKS.md, "Phantom
# foundation model: samplers": no failed samples with any sampler; DDPM at 25 steps within 1% of
# the lowest Fréchet distance, at twice the speed of DDPM at 50).
SAMPLING_PRESETS["phantom_foundation"] = {
    **SAMPLING_PRESETS["project"],
    "sampler": "ddpm",
    "steps": 25,
}
SAMPLING_FIELDS = tuple(SAMPLING_PRESETS["published"])


def _busgen_toy() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "image_size": 128,
            "image_channels": 3,  # grayscale repeated to RGB, as published
            "base_channels": 128,
            "channel_mults": (1, 2, 2, 2),
            "num_res_blocks": 2,
            "attention_levels": (0, 1, 2, 3),  # every down block, full resolution included
            "attention_in_up_path": False,
            "middle_attention": True,
            "num_heads": 1,
            "attention_impl": "chunked",  # same numbers as 'plain' without the 16384^2 matrix
            "attention_chunk": 1024,
            "dropout": 0.15,
            "norm_groups": 32,
            "class_names": ("benign", "malignant"),
            "num_classes": 2,
            "device_names": BUSGEN_TOY_DEVICES,
            "num_devices": len(BUSGEN_TOY_DEVICES),
            "num_timesteps": 500,
            "time_embedding": "table",
        }
    )


def _busgen() -> ml_collections.ConfigDict:
    config = _busgen_toy()
    config.image_size = 160
    config.device_names = BUSGEN_DEVICES
    config.num_devices = len(BUSGEN_DEVICES)
    return config


def _small() -> ml_collections.ConfigDict:
    config = _busgen_toy()
    del config["class_names"], config["device_names"]
    config.update(
        image_size=64,
        image_channels=1,  # ultrasound is grayscale: three identical channels add nothing
        base_channels=64,
        channel_mults=(1, 2, 2),
        # Attention at 16 px only, on both paths: full-resolution attention costs (HW)^2 and
        # mostly mixes speckle; global context is cheap and useful at low resolution.
        attention_levels=(2,),
        attention_in_up_path=True,
        num_heads=4,
        attention_impl="xla",
        dropout=0.1,
        num_classes=len(PATHOLOGIES),
        num_devices=4,
        # Fixed sinusoids are exact at any fractional t, which continuous-time samplers use.
        time_embedding="sinusoidal",
    )
    return config


def _efficient() -> ml_collections.ConfigDict:
    """The published 128 px U-Net (channels, levels, blocks, samplers) at 39% of its forward
    FLOPs (208 vs 529 GFLOP per image, XLA cost analysis; `benchmarks/train_step.py`).

    Almost all of the saving is attention: the published model attends over every pixel at
    128 and 64 px, (HW)^2 = 2.7e8 and 1.7e7 scores per head, about 60% of its FLOPs; here it
    attends only at 32 and 16 px, with 4 heads (64 channels each) instead of one, where a
    position's neighbourhood is the whole lesion. Grayscale input, as ultrasound is.
    """
    config = _busgen_toy()
    del config["class_names"], config["device_names"]
    config.update(
        image_channels=1,
        attention_levels=(2, 3),
        num_heads=4,
        attention_impl="xla",
        num_classes=len(PATHOLOGIES),
        num_devices=4,
        time_embedding="sinusoidal",
    )
    return config


def _tiny() -> ml_collections.ConfigDict:
    config = _small()
    config.update(
        image_size=32,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        attention_in_up_path=False,
        num_heads=2,
        attention_impl="plain",
        norm_groups=8,
        dropout=0.0,
        num_devices=2,
        time_embedding="table",
    )
    return config


def model_config(name: str) -> ml_collections.ConfigDict:
    """Returns a fresh model ConfigDict for preset `name` (one of PRESETS)."""
    builders = {
        "tiny": _tiny,
        "small": _small,
        "efficient": _efficient,
        "busgen_toy": _busgen_toy,
        "busgen": _busgen,
    }
    if name not in builders:
        raise ValueError(f"unknown model preset {name!r}; expected one of {PRESETS}")
    return builders[name]()


def sampling_preset(name: str) -> dict:
    """A fresh copy of sampling preset `name` (one of SAMPLING_PRESETS), its name included."""
    if name not in SAMPLING_PRESETS:
        raise ValueError(
            f"unknown sampling preset {name!r}; expected one of {tuple(SAMPLING_PRESETS)}"
        )
    return {"preset": name, **SAMPLING_PRESETS[name]}
