"""Sampling an exported generator with the step count traced (what the sampler benchmarks sweep)."""

import jax
import numpy as np
from generator_fixtures import tiny_generator

from busgen_jax.diffusion import generator


def test_traced_step_count_matches_fixed_sampler_with_one_compilation(tmp_path):
    model, spec = generator.load_generator(tiny_generator(tmp_path / "gen"))
    size = spec.image_size
    rng = jax.random.key(3)
    classes, devices = np.array([1, 2], np.int32), np.array([1, 2], np.int32)
    masks = np.zeros((2, size, size, 1), np.float32)
    masks[:, 8:20, 10:24] = 1.0
    kw = dict(sampler="dpm_solver_3s", guidance_weight=1.8)

    fixed = generator.make_sample_fn(spec, steps=5, **kw)(model, rng, classes, devices, masks)
    sample_fn, state = generator.make_traced_steps_sample_fn(model, spec, **kw)
    traced = {n: sample_fn(state, rng, classes, devices, masks, n) for n in (5, 8)}

    np.testing.assert_allclose(np.asarray(traced[5]), np.asarray(fixed), atol=1e-5)
    assert not np.allclose(np.asarray(traced[8]), np.asarray(traced[5]), atol=1e-3)
    assert sample_fn._cache_size() == 1  # the second step count reused the compilation
