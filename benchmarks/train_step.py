"""Train-step throughput, peak memory and FLOPs of the published `busgen_toy` config on CPU.

  python -m benchmarks.train_step --batch_sizes=1,2,4,8 --steps=1 --warmup=0 --torch

Every setting runs in a fresh subprocess, so its peak RSS (`resource.getrusage`) is its own:
the JAX train step (AdamW + EMA, sharded-state code path on one device) with chunked
(flash-style) and plain attention, and the same step (forward, backward, AdamW) of the published
PyTorch architecture from `tests/torch_reference_unet.py` for the ratio.

Settings that cannot fit are reported, not run into the OOM killer: a plain-attention JAX step
whose XLA buffer plan (`memory_analysis`) exceeds `--memory_limit_gib` is compiled but not
executed, and the PyTorch worker runs under an address-space limit of that size, so an
allocation it cannot make fails inside PyTorch. FLOPs per image come from XLA's cost analysis of
the plain-attention step: the chunked one loops over key chunks, and cost analysis counts a loop
body once. On an accelerator, `--peak_tflops` (the chip's dense peak at the compute dtype)
adds model FLOP utilization: XLA's FLOPs per image times images/s over that peak.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _batch(batch_size: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "image": rng.uniform(-1, 1, (batch_size, size, size, 1)).astype(np.float32),
        "box_mask": (rng.uniform(size=(batch_size, size, size, 1)) < 0.2).astype(np.float32),
        "class_id": rng.integers(1, 3, batch_size).astype(np.int32),
        "device_id": rng.integers(0, 4, batch_size).astype(np.int32),
    }


def _timed(step, steps: int, warmup: int) -> float:
    """Seconds per call of `step()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tick) / steps


def jax_worker(batch_size: int, steps: int, warmup: int, attention: str, limit_gib: float):
    import jax

    from busgen_jax import pretrain
    from busgen_jax.parallel import mesh as mesh_lib
    from configs import pretrain as pretrain_config

    config = pretrain_config.get_config("busgen_toy")
    config.data.update(paths=["unused"], batch_size=batch_size)
    config.model.attention_impl = attention
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    init_fn, _, shardings = pretrain.abstract_state_and_shardings(config, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)()
    train_step = pretrain.make_train_step(config, mesh, shardings)
    batch = mesh_lib.host_batch_to_global(_batch(batch_size, config.data.image_size), mesh)
    rng = jax.random.key(0)
    tick = time.perf_counter()
    compiled = train_step.lower(state, batch, rng).compile()
    out = {"compile_s": time.perf_counter() - tick}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out["gflops_per_image"] = float(cost.get("flops", float("nan"))) / batch_size / 1e9
    memory = compiled.memory_analysis()
    out["xla_buffers_gib"] = (
        memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    ) / 2**30
    if out["xla_buffers_gib"] > limit_gib:
        return out

    def step():
        nonlocal state
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)

    out["step_s"] = _timed(step, steps, warmup)
    out["images_per_s"] = batch_size / out["step_s"]
    return out


def torch_worker(batch_size: int, steps: int, warmup: int, limit_gib: float) -> dict:
    import torch

    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT / "tests"))
    from torch_reference_unet import TorchUNet

    torch.manual_seed(0)
    model = TorchUNet()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6.25e-6, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, 128, 128)
    mask = (torch.rand(batch_size, 1, 128, 128) < 0.2).float()
    t = torch.randint(0, 500, (batch_size,))
    ids = torch.ones(batch_size, dtype=torch.long)

    def step():
        loss = ((model(x, t, ids, ids, mask) - x) ** 2).sum() / batch_size**2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    try:
        seconds = _timed(step, steps, warmup)
    except RuntimeError as e:  # an allocation over the limit
        request = re.search(r"allocate (\d+) bytes", str(e))
        if not request:
            raise
        return {"failed_allocation_gib": int(request.group(1)) / 2**30}
    return {"step_s": seconds, "images_per_s": batch_size / seconds}


def run_setting(kind: str, batch_size: int, args, attention: str = "chunked") -> dict:
    """Runs one setting in a fresh interpreter; returns its timings and peak RSS."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", kind,
               f"--batch_sizes={batch_size}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--attention={attention}", f"--memory_limit_gib={args.memory_limit_gib}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{kind} batch {batch_size} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(kind, attention, batch_size, out, flush=True)
    return out


def _rate(out: dict, limit_gib: float) -> str:
    if "images_per_s" in out:
        return f"{out['images_per_s']:.4g}"
    if "failed_allocation_gib" in out:
        return f"fails: allocating {out['failed_allocation_gib']:.1f} GiB more breaks {limit_gib:g} GiB"
    return f"not run: XLA plans {out['xla_buffers_gib']:.1f} GiB > {limit_gib:g}"


def _rss(out: dict) -> str | float:
    """Peak RSS of a setting that ran (a setting compiled but not run has none worth showing)."""
    return out["peak_rss_gib"] if "images_per_s" in out or "failed_allocation_gib" in out else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="1,2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", default="chunked")
    parser.add_argument("--memory_limit_gib", type=float, default=20.0)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    parser.add_argument(
        "--peak_tflops", type=float, help="the device's peak TFLOP/s: adds model FLOP utilization"
    )
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.worker:
        worker_args = (batch_sizes[0], args.steps, args.warmup)
        out = (
            jax_worker(*worker_args, args.attention, args.memory_limit_gib)
            if args.worker == "jax"
            else torch_worker(*worker_args, args.memory_limit_gib)
        )
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(out))
        return
    from benchmarks.common import report

    rows = []
    for batch_size in batch_sizes:
        chunked = run_setting("jax", batch_size, args, "chunked")
        plain = run_setting("jax", batch_size, args, "plain")
        limit = args.memory_limit_gib
        row = [batch_size, _rate(chunked, limit), _rss(chunked), chunked["xla_buffers_gib"],
               _rate(plain, limit), _rss(plain), plain["xla_buffers_gib"],
               plain["gflops_per_image"]]  # fmt: skip
        if args.peak_tflops:
            achieved = plain["gflops_per_image"] * chunked.get("images_per_s", float("nan"))
            row.append(achieved / (args.peak_tflops * 1e3))
        if args.torch:
            torch_out = run_setting("torch", batch_size, args)
            ratio = (chunked["images_per_s"] / torch_out["images_per_s"]
                     if "images_per_s" in torch_out else "")  # fmt: skip
            row += [_rate(torch_out, limit), _rss(torch_out), ratio]
        rows.append(row)
    header = ["batch", "JAX chunked img/s", "peak RSS GiB", "XLA buffers GiB",
              "JAX plain img/s", "peak RSS GiB", "XLA buffers GiB", "GFLOPs/img (XLA)"]  # fmt: skip
    if args.peak_tflops:
        header.append(f"MFU (chunked, peak {args.peak_tflops:g} TFLOP/s)")
    if args.torch:
        header += ["PyTorch img/s", "peak RSS GiB", "JAX chunked / PyTorch"]
    report(
        "Train step, busgen_toy (128 px, published U-Net, AdamW + EMA)",
        "configs/pretrain.py:busgen_toy, 1 CPU device, fp32",
        header,
        rows,
        notes=f"{args.steps} timed step(s) after {args.warmup} warm-up step(s), compiled ahead "
        f"of time; each setting in a fresh process; memory limit {args.memory_limit_gib:g} GiB "
        "(see the script's docstring); GFLOPs from XLA cost analysis of the plain-attention "
        "step (forward + backward + update).",
    )


if __name__ == "__main__":
    main()
