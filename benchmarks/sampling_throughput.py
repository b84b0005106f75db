"""Sampling throughput of the published toy generator, per sampler and step count.

  python -m benchmarks.sampling_throughput --steps=1,3 --batch_size=1

The U-Net is `configs/pretrain.py:busgen_toy` (the published toy architecture, 128 px) with
random weights, which cost the same as trained ones. Classifier-free guidance at the published
weight 1.8 runs the conditional and unconditional halves in one forward pass on a doubled batch.

The step count is a traced argument (one compilation per sampler) and every step runs the same
loop body, so wall time is a + b * NFE. Each sampler is timed at the requested step counts; the
table gives those measured rates, the per-evaluation cost b and the start-up cost a from a
least-squares line through them, and, marked as projected, images/s at the step counts people
run (the published 50-step DPM-Solver, 1000-step DDPM), which on a CPU would take hours to time.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import report
from busgen_jax.diffusion import generator, samplers
from busgen_jax.jobs import pretrain
from configs import pretrain as pretrain_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECTED_STEPS = (10, 25, 50, 100, 1000)


def build(preset: str, attention: str):
    sys.path.insert(0, str(ROOT / "tests"))
    from generator_fixtures import random_unet

    config = pretrain_config.get_config(preset)
    config.model.attention_impl = attention
    return random_unet(config.model), pretrain.generator_spec(config)


def time_sampler(model, spec, sampler: str, steps_list, batch_size: int, guidance: float):
    sample_fn, state = generator.make_traced_steps_sample_fn(
        model, spec, sampler=sampler, guidance_weight=guidance
    )
    size = spec.image_size
    rng = jax.random.key(0)
    class_ids = jnp.ones((batch_size,), jnp.int32)
    device_ids = jnp.ones((batch_size,), jnp.int32)
    box_mask = jnp.zeros((batch_size, size, size, 1), jnp.float32)
    args = (state, rng, class_ids, device_ids, box_mask)
    tick = time.perf_counter()
    compiled = sample_fn.lower(*args, jnp.int32(steps_list[0])).compile()
    compile_s = time.perf_counter() - tick
    seconds = []
    for steps in steps_list:
        tick = time.perf_counter()
        images = jax.block_until_ready(compiled(*args, jnp.int32(steps)))
        seconds.append(time.perf_counter() - tick)
        if not np.isfinite(np.asarray(images)).all():
            raise FloatingPointError(f"{sampler} at {steps} steps produced non-finite samples")
    return compile_s, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="busgen_toy")
    parser.add_argument("--samplers", default=",".join(samplers.SAMPLERS))
    parser.add_argument("--steps", default="1,3", help="step counts timed (at least two)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=1.8)
    parser.add_argument("--attention", default="chunked")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    if len(set(steps_list)) < 2:
        parser.error("--steps needs two or more distinct step counts to fit the cost line")
    model, spec = build(args.preset, args.attention)

    rows = []
    for sampler in args.samplers.split(","):
        compile_s, seconds = time_sampler(
            model, spec, sampler, steps_list, args.batch_size, args.guidance
        )
        per_nfe, start_up = np.polyfit(steps_list, seconds, 1)
        measured = [
            f"{args.batch_size / s:.3g} @{n}" for n, s in zip(steps_list, seconds, strict=True)
        ]
        projected = [args.batch_size / (start_up + per_nfe * n) for n in PROJECTED_STEPS]
        rows.append([sampler, " ".join(measured), per_nfe, start_up, compile_s, *projected])
        print(rows[-1], flush=True)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    header = ["sampler", "measured img/s @steps", "s per NFE", "start-up s", "compile s"]
    header += [f"projected img/s @{n}" for n in PROJECTED_STEPS]
    report(
        f"Sampling throughput, {args.preset} ({spec.image_size} px)",
        f"configs/pretrain.py:{args.preset} U-Net, {args.attention} attention, random weights, "
        f"batch {args.batch_size}, guidance {args.guidance} (doubled batch), fp32, 1 device",
        header,
        rows,
        notes=f"one NFE = one guided network call on 2 x {args.batch_size} images; projected "
        f"columns = batch / (start-up + NFE x s per NFE) from the measured points, not timed; "
        f"peak RSS of the process {peak_gib:.1f} GiB.",
    )


if __name__ == "__main__":
    main()
