"""Diffusion core: noise schedules, training losses, samplers and classifier-free guidance."""

from busgen_jax.diffusion.guidance import guided_denoise_fn
from busgen_jax.diffusion.losses import diffusion_loss
from busgen_jax.diffusion.samplers import SAMPLERS, sample
from busgen_jax.diffusion.schedules import Schedule, make_schedule

__all__ = ["SAMPLERS", "Schedule", "diffusion_loss", "guided_denoise_fn", "make_schedule", "sample"]
