"""Where a train step's time goes, op by op, in JAX and in its PyTorch twin, side by side.

  python -m benchmarks.train_step_profile --models=demo,efficient,busgen_toy --batch_sizes=16,4,1

The same settings as `benchmarks.train_step` (model, batch, step), each framework in a fresh
process, profiled over `--steps` steps after `--warmup`:
- JAX: `jax.profiler.trace` records every thunk the XLA CPU runtime executes; each is named
  after its HLO instruction, whose metadata (the JAX primitive's path: `jvp(...)` in the
  forward pass, `transpose(jvp(...))` in the backward pass) or fused root says what it computes;
  the host's share is the jitted call itself (flattening the state's pytree in, building it out).
- PyTorch: `torch.profiler` self CPU time of each aten op.

Both are grouped into the same categories (convolutions, layout copies and transposes, the rest
of the forward and backward passes, the optimizer update with EMA, the host's call) as
milliseconds of op time per step; profiling slows the JAX step (thousands of trace events), so
the categories, not the wall time, are what compare. Op time sums over threads, so it can
exceed the wall time of a step run on two cores. PyTorch's host time between ops is not an op
and is not counted: its row for the jitted call is 0.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import train_step as bench

CATEGORIES = (
    "convolutions (forward + backward)",
    "layout copies / transposes",
    "other forward (norms, attention, activations, loss)",
    "other backward",
    "optimizer update + EMA",
    "host: the jitted call (state pytree in, out)",
    "unattributed",
)
FORWARD, BACKWARD = CATEGORIES[2], CATEGORIES[3]
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+) = ")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_METADATA = re.compile(r"metadata=\{([^}]*)\}")
_OPCODE = re.compile(r" = [^ ]+ ([\w-]+)\(")
_FIELD = re.compile(r'(\w+)="([^"]*)"')


def hlo_metadata(hlo_text: str) -> dict[str, dict[str, str]]:
    """Instruction name -> its metadata fields (op_name, ...) and `root`, the opcode
    of what it computes. A fusion without metadata of its own (the runtime's convolution
    fusions) takes that of the computation it calls: its root's, else its first instruction's
    that has any."""
    own, calls, inner = {}, {}, {}
    computation = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line:
            computation = header.group(1)
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        name = instruction.group(2)
        metadata = _METADATA.search(line)
        opcode = _OPCODE.search(line)
        fields = dict(_FIELD.findall(metadata.group(1))) if metadata else {}
        fields["root"] = opcode.group(1) if opcode else ""
        if metadata:
            own[name] = fields
        if computation and (instruction.group(1) or computation not in inner):
            inner[computation] = fields
        called = _CALLS.search(line)
        if called:
            calls[name] = called.group(1)
    for name, computation in calls.items():
        if name not in own and computation in inner:
            own[name] = inner[computation]
    return own


def _jax_category(name: str, op_name: str, root: str) -> str:
    """What an XLA thunk computes, from its HLO instruction's name, JAX primitive path and root
    opcode: autodiff puts the forward pass under `jvp(...)` and the backward pass under
    `transpose(jvp(...))`; what is under neither is the update after the gradient."""
    if "transpose" in name or name.startswith("copy"):
        return "layout copies / transposes"
    if "conv_general_dilated" in op_name or root == "convolution":
        return "convolutions (forward + backward)"
    if "transpose(" in op_name:
        return BACKWARD
    if "jvp(" in op_name:
        return FORWARD
    if op_name.startswith("jit("):
        return "optimizer update + EMA"
    return "unattributed"


def _torch_category(name: str) -> str:
    if "conv" in name:
        return "convolutions (forward + backward)"
    if "foreach" in name or "adamw" in name or "lerp" in name or "clip" in name:
        return "optimizer update + EMA"
    if any(k in name for k in ("copy_", "contiguous", "clone", "permute", "transpose")):
        return "layout copies / transposes"
    return BACKWARD if "backward" in name.lower() else FORWARD


def jax_worker(model: str, batch_size: int, steps: int, warmup: int) -> dict:
    import jax

    from busgen_jax.diffusion import train_step
    from busgen_jax.parallel import mesh as mesh_lib
    from busgen_jax.training import train_state

    config = bench.make_config(model, batch_size, "none")
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    init_fn, _, shardings = train_state.abstract_state_and_shardings(
        config, mesh, train_step.unet_fn(config)
    )
    state = jax.jit(init_fn, out_shardings=shardings)()
    batch = mesh_lib.host_batch_to_global(bench.make_batch(config), mesh)
    rng = jax.random.key(0)
    compiled = train_step.make_pretrain_step(config, mesh, shardings).lower(state, batch, rng)
    compiled = compiled.compile()
    metadata = hlo_metadata(compiled.as_text())
    for _ in range(warmup):
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        tick = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, batch, rng)
                jax.block_until_ready(metrics)
        wall = (time.perf_counter() - tick) / steps
        trace_path = next(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))
        trace = json.load(gzip.open(trace_path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times: dict[str, float] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and name.startswith("PjitFunction"):
            times["host: the jitted call (state pytree in, out)"] += event["dur"] / 1e3 / steps
        if event.get("ph") == "X" and name in metadata:
            meta = metadata[name]
            category = _jax_category(name, meta.get("op_name", ""), meta.get("root", ""))
            times[category] += event.get("dur", 0.0) / 1e3 / steps  # us -> ms per step
    return {"wall_ms": wall * 1e3, "ms": dict(times)}


def torch_worker(model: str, batch_size: int, steps: int, warmup: int) -> dict:
    import torch

    step = bench.torch_step(model, batch_size, "none")
    for _ in range(warmup):
        step()
    tick = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - tick) / steps
    times: dict[str, float] = collections.Counter()
    for op in profile.key_averages():
        times[_torch_category(op.key)] += op.self_cpu_time_total / 1e3 / steps
    return {"wall_ms": wall * 1e3, "ms": dict(times)}


def _run(kind: str, model: str, batch_size: int, args) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step_profile",
        f"--worker={kind}",
        f"--models={model}",
        f"--batch_sizes={batch_size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    result = subprocess.run(command, cwd=bench.ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{kind} {model} batch {batch_size} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(kind, model, batch_size, out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo")
    parser.add_argument("--batch_sizes", default="16", help="one per model, in order")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    models, batch_sizes = args.models.split(","), [int(b) for b in args.batch_sizes.split(",")]
    if len(batch_sizes) != len(models):
        parser.error("--batch_sizes: give one batch size per model")
    if args.worker:
        worker = jax_worker if args.worker == "jax" else torch_worker
        print(json.dumps(worker(models[0], batch_sizes[0], args.steps, args.warmup)))
        return
    from benchmarks.common import report

    rows = []
    for model, batch_size in zip(models, batch_sizes, strict=True):
        jax_out, torch_out = (_run(k, model, batch_size, args) for k in ("jax", "torch"))
        for category in CATEGORIES:
            j, t = jax_out["ms"].get(category, 0.0), torch_out["ms"].get(category, 0.0)
            rows.append([model, batch_size, category, j, t, j - t])
        rows.append(
            [
                model,
                batch_size,
                "wall time of a step",
                jax_out["wall_ms"],
                torch_out["wall_ms"],
                jax_out["wall_ms"] - torch_out["wall_ms"],
            ]
        )
    report(
        "Train step profile: op time by category, JAX against PyTorch",
        "models " + ", ".join(f"{m} (configs/pretrain.py:{bench.MODELS[m]})" for m in models),
        ["model", "batch", "category", "JAX ms/step", "PyTorch ms/step", "JAX - PyTorch ms"],
        rows,
        notes=f"{args.steps} profiled steps after {args.warmup} warm-up steps, each framework "
        "in a fresh process; op time summed over threads (jax.profiler thunks, torch.profiler "
        "self CPU time); fp32",
    )


if __name__ == "__main__":
    main()
