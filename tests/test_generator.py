"""Sampling an exported generator with the step count traced (what the sampler benchmarks sweep)."""

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
from generator_fixtures import tiny_generator

from busgen_jax.diffusion import generator

# What jax.monitoring reports each time a jitted function is lowered to an MLIR module, before
# it is compiled or looked up in the compilation caches.
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def _lowerings() -> Iterator[list[str]]:
    """The names of the functions jax lowers inside the block, as it lowers them."""
    names: list[str] = []

    def listener(event: str, duration_secs: float, **kwargs) -> None:
        if event == LOWERING_EVENT:
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


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
    with _lowerings() as lowered:
        traced = {n: sample_fn(state, rng, classes, devices, masks, n) for n in (5, 8)}

    np.testing.assert_allclose(np.asarray(traced[5]), np.asarray(fixed), atol=1e-5)
    assert not np.allclose(np.asarray(traced[8]), np.asarray(traced[5]), atol=1e-3)
    # Lowered (and so compiled) for the first step count only: the second reused it.
    assert len([name for name in lowered if "sample_fn" in name]) == 1, lowered
