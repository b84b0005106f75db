"""Launchers that run busgen_jax jobs on Cloud TPU slices (see launch/README.md)."""
