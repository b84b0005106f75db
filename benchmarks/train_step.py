"""Train-step throughput, peak memory and FLOPs of the published `busgen_toy` config on CPU.

  python -m benchmarks.train_step --batch_sizes=1,2 --steps=2 --torch

Every setting runs in a fresh subprocess, so its peak RSS (`resource.getrusage`) is its own:
JAX train step (AdamW + EMA, sharded-state code path on one device) with chunked and plain
attention, FLOPs per image from XLA's cost analysis of the compiled step, and the same step
(forward, backward, AdamW) of the published PyTorch architecture from
`tests/torch_reference_unet.py` for the ratio.
"""

from __future__ import annotations

import argparse
import json
import pathlib
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


def jax_worker(batch_size: int, steps: int, attention: str) -> dict:
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
    step = pretrain.make_train_step(config, mesh, shardings)
    batch = mesh_lib.host_batch_to_global(_batch(batch_size, config.data.image_size), mesh)
    rng = jax.random.key(0)
    tick = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - tick
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    state, metrics = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    tick = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - tick) / steps
    return {
        "compile_s": compile_s,
        "step_s": seconds,
        "images_per_s": batch_size / seconds,
        "gflops_per_image": float(cost.get("flops", float("nan"))) / batch_size / 1e9,
    }


def torch_worker(batch_size: int, steps: int) -> dict:
    import torch

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

    def one_step():
        loss = ((model(x, t, ids, ids, mask) - x) ** 2).sum() / batch_size**2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    one_step()  # warm-up
    tick = time.perf_counter()
    for _ in range(steps):
        one_step()
    seconds = (time.perf_counter() - tick) / steps
    return {"step_s": seconds, "images_per_s": batch_size / seconds}


def run_setting(kind: str, batch_size: int, steps: int, attention: str) -> dict:
    """Runs one setting in a fresh interpreter; returns its timings and peak RSS."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--worker", kind,
               f"--batch_sizes={batch_size}", f"--steps={steps}", f"--attention={attention}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{kind} batch {batch_size} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="1,2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--attention", default="chunked")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.worker:
        out = (jax_worker(batch_sizes[0], args.steps, args.attention) if args.worker == "jax"
               else torch_worker(batch_sizes[0], args.steps))  # fmt: skip
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(out))
        return
    from benchmarks.common import report

    rows = []
    for batch_size in batch_sizes:
        chunked = run_setting("jax", batch_size, args.steps, "chunked")
        plain = run_setting("jax", batch_size, args.steps, "plain")
        row = [batch_size, chunked["images_per_s"], chunked["peak_rss_gib"],
               plain["peak_rss_gib"], chunked["gflops_per_image"], chunked["compile_s"]]  # fmt: skip
        if args.torch:
            torch_out = run_setting("torch", batch_size, args.steps, "chunked")
            row += [torch_out["images_per_s"], chunked["images_per_s"] / torch_out["images_per_s"]]
        rows.append(row)
    header = ["batch", "JAX img/s (chunked)", "peak RSS GiB chunked", "peak RSS GiB plain",
              "GFLOPs/img (XLA)", "compile s"]  # fmt: skip
    if args.torch:
        header += ["PyTorch img/s", "JAX/PyTorch"]
    report(
        "Train step, busgen_toy (128 px, published U-Net, AdamW + EMA)",
        "configs/pretrain.py:busgen_toy, 1 CPU device, fp32",
        header,
        rows,
        notes=f"{args.steps} timed steps after one warm-up; each setting in a fresh process; "
        "GFLOPs from XLA cost analysis of the compiled step (forward + backward + update).",
    )


if __name__ == "__main__":
    main()
