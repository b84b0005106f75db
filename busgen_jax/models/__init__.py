"""Models: the conditional diffusion U-Net, its presets and the published-weights importer."""

from busgen_jax.models.presets import model_config
from busgen_jax.models.unet import UNet, count_params

__all__ = ["UNet", "count_params", "model_config"]
