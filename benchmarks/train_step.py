"""Train-step speed of the diffusion U-Net against a PyTorch twin of the same architecture.

  python -m benchmarks.train_step --models=busgen_toy,demo,efficient --batch_sizes=1,4 \
      --ablations=none,dilated_upsample,no_attention,no_groupnorm,plain_resample,no_ema,forward_only
  python -m benchmarks.train_step --models=demo --batch_sizes=16 --steps=20 --warmup=3 \
      --xla_flag_sets="--xla_cpu_use_onednn=true;--xla_cpu_use_xnnpack=true"

Models: `busgen_toy` (the published 128 px U-Net, chunked attention), `demo` (the shipped phantom
foundation model's 32 px U-Net, `configs/pretrain.py:phantom_foundation`) and `efficient` (the
128 px `efficient` preset). For each, in one run: the JAX train step (diffusion loss, AdamW, EMA;
the pretraining job's sharded step on one device) and the same step of the PyTorch twin
(`tests/torch_reference_unet.twin`: forward, backward, clipping, AdamW, EMA), each in a fresh
subprocess so its peak RSS is its own, reported as the ratio of images/s. GFLOPs per image are
XLA's cost analysis of the step lowered with plain attention (the chunked loop's body would be
counted once). On an accelerator, `--peak_tflops` (the chip's dense peak at the compute dtype)
adds model FLOP utilization. Settings that cannot fit are reported, not run into the OOM killer:
a JAX step whose XLA buffer plan exceeds `--memory_limit_gib` is compiled but not run, and the
PyTorch worker runs under an address-space limit of that size.

Ablations (`--ablations`, each applied to both frameworks alike) find where the time goes:
  dilated_upsample  JAX only: the up-sampler's transposed conv as `lax.conv_transpose` (a conv
                    over the dilated input), as it was before the sub-pixel form;
  no_attention      no attention blocks;
  no_groupnorm      every GroupNorm replaced by the identity;
  plain_resample    down-sampler one 3x3 stride-2 conv, up-sampler nearest x2 then its 3x3 conv;
  no_ema            no EMA update of the weights;
  forward_only      one forward pass, no gradient.

What was found (BENCHMARKS.md, "Train step ... against PyTorch"): XLA on CPU has no fast kernel
for a convolution over a dilated input, which is what the gradient of a transposed conv is; the
published up-sampler's backward pass ran 50-70x slower than PyTorch's and took about 80% of the
published toy's step. Computed as four ordinary convolutions of the undilated input
(`models.unet.subpixel_conv_transpose`), same parameters and numbers, the published toy's step
at batch 1 is 1.25x PyTorch's speed. Not yet at parity: the `efficient` preset (0.74x at batch 1,
0.49x at batch 4; its multi-head attention at 32 px, which PyTorch runs as one fused kernel, is
the suspect, not yet isolated) and the 32 px demo model (0.70x; its forward pass is at parity, so
the difference is in the backward pass and the update; the ablations differ by less than the
+-20% spread between fresh processes at 0.1 s per step, and an earlier profile put the time in
~460 convolution fusions and ~900 small per-parameter update kernels). The op-by-op profile
(`benchmarks.train_step_profile`, BENCHMARKS.md "Train step profile") names the costs: in the
demo model the convolutions are at parity with PyTorch's and the difference is layout copies
and transposes around them (12 against 1.3 ms a step), the backward pass's elementwise ops and
reductions (15 against 4 ms) and the host's jitted call, which flattens the state's ~875 leaves
and rebuilds its ~870 NNX Variable objects on every step (20 ms; a jitted call over this state
took 15.8 ms with NNX Variables and 8.1 ms with the same arrays as plain dicts); in `efficient`
at batch 1, XLA's convolutions themselves take twice PyTorch's time. A training loop that
carried the state between steps as the list of its arrays was then timed beside the call on the
state (BENCHMARKS.md, the 16:17 UTC table of 2026-12-03): no faster (148.7 against 151.8
img/s), so the host's handling of the state is not what the demo model's step waits on, and the
remaining difference is XLA:CPU's code around its convolutions (layout copies, backward
elementwise ops), which the model cannot change. Nor do XLA:CPU's library flags
(`--xla_flag_sets`, BENCHMARKS.md "Train step under XLA:CPU flags"): oneDNN and XNNPACK moved the
demo model's step by +5% and +7%, inside the spread between runs of one setting.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = {"busgen_toy": "busgen_toy", "demo": "phantom_foundation", "efficient": "efficient"}
ABLATIONS = (
    "none",
    "dilated_upsample",
    "no_attention",
    "no_groupnorm",
    "plain_resample",
    "no_ema",
    "forward_only",
)
EMA_DECAY = 0.999


def make_config(model: str, batch_size: int, ablation: str):
    from configs import pretrain as pretrain_config

    config = pretrain_config.get_config(MODELS[model])
    config.data.update(paths=["unused"], batch_size=batch_size)
    if ablation == "no_attention":
        config.model.update(attention_levels=(), middle_attention=False)
    return config


def make_batch(config):
    import numpy as np

    rng = np.random.default_rng(0)
    b, size = config.data.batch_size, config.data.image_size
    return {
        "image": rng.uniform(-1, 1, (b, size, size, 1)).astype(np.float32),
        "box_mask": (rng.uniform(size=(b, size, size, 1)) < 0.2).astype(np.float32),
        "class_id": rng.integers(1, config.model.num_classes + 1, b).astype(np.int32),
        "device_id": rng.integers(1, config.model.num_devices + 1, b).astype(np.int32),
    }


def _timed(step, steps: int, warmup: int) -> float:
    """Seconds per call of `step()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tick) / steps


def _ablate_jax(ablation: str) -> None:
    """Patches the JAX model for `ablation` (this worker process only)."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from busgen_jax.models import attention, unet

    class Identity(nnx.Module):
        def __call__(self, x):
            return x

    if ablation == "dilated_upsample":
        unet.SubpixelConvTranspose.__call__ = nnx.ConvTranspose.__call__
    elif ablation == "no_groupnorm":
        attention.group_norm = unet.group_norm = lambda *args, **kwargs: Identity()
    elif ablation == "plain_resample":
        unet.Downsample.__call__ = lambda self, x: self.conv3(x)
        unet.Upsample.__call__ = lambda self, x: self.conv(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2))
    elif ablation == "no_ema":
        optax.incremental_update = lambda new, old, step_size: old


def jax_worker(
    model: str,
    batch_size: int,
    steps: int,
    warmup: int,
    ablation: str,
    attention: str | None,
    limit_gib: float,
) -> dict:
    import jax
    from flax import nnx

    from busgen_jax.diffusion import train_step
    from busgen_jax.parallel import mesh as mesh_lib
    from busgen_jax.training import train_state

    _ablate_jax(ablation)
    config = make_config(model, batch_size, ablation)
    if attention:
        config.model.attention_impl = attention
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    init_fn, _, shardings = train_state.abstract_state_and_shardings(
        config, mesh, train_step.unet_fn(config)
    )
    state = jax.jit(init_fn, out_shardings=shardings)()
    batch = mesh_lib.host_batch_to_global(make_batch(config), mesh)
    rng = jax.random.key(0)
    out = {}
    if ablation == "forward_only":
        model_ = nnx.merge(state.graphdef, state.params, state.rest)
        x = batch["image"].repeat(config.model.image_channels, -1)
        t = jax.numpy.full((batch_size,), 250.0)
        args = (x, t, batch["class_id"], batch["device_id"], batch["box_mask"])
        forward = nnx.jit(lambda m, *a: m(*a))
        jax.block_until_ready(forward(model_, *args))  # compiles
        out["step_s"] = _timed(lambda: jax.block_until_ready(forward(model_, *args)), steps, warmup)
        out["images_per_s"] = batch_size / out["step_s"]
        return out
    jitted_step = train_step.make_pretrain_step(config, mesh, shardings)
    tick = time.perf_counter()
    compiled = jitted_step.lower(state, batch, rng).compile()
    out["compile_s"] = time.perf_counter() - tick
    memory = compiled.memory_analysis()
    out["xla_buffers_gib"] = (
        memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    ) / 2**30
    if ablation == "none":
        config.model.attention_impl = "plain"  # the chunked loop's body is counted once
        plain_step = train_step.make_pretrain_step(config, mesh, shardings)
        flops = plain_step.lower(state, batch, rng).cost_analysis()["flops"]
        out["gflops_per_image"] = float(flops) / batch_size / 1e9
    if out["xla_buffers_gib"] > limit_gib:
        return out

    def step():
        nonlocal state
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)

    out["step_s"] = _timed(step, steps, warmup)
    out["images_per_s"] = batch_size / out["step_s"]
    return out


def _ablate_torch(ablation: str) -> None:
    import torch
    import torch_reference_unet as reference
    from torch import nn

    if ablation == "no_groupnorm":
        nn.GroupNorm = lambda *args: nn.Identity()
    elif ablation == "plain_resample":
        reference.DownSample.forward = lambda self, x, temb, cemb: self.c1(x)
        upsample = lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        reference.UpSample.forward = lambda self, x, temb, cemb: self.c(upsample(x))


def torch_step(model: str, batch_size: int, ablation: str):
    """One train step of the PyTorch twin (forward, backward, clipping, AdamW, EMA), as a
    closure over its state: what `torch_worker` times and the profile records."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_reference_unet import twin

    _ablate_torch(ablation)
    config = make_config(model, batch_size, ablation)
    batch = {k: torch.as_tensor(v) for k, v in make_batch(config).items()}
    torch.manual_seed(0)
    net = twin(config.model)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    x = batch["image"].permute(0, 3, 1, 2).repeat(1, config.model.image_channels, 1, 1)
    mask = batch["box_mask"].permute(0, 3, 1, 2)
    t = torch.randint(0, config.model.num_timesteps, (batch_size,))
    classes, devices = batch["class_id"].long(), batch["device_id"].long()

    def step():
        if ablation == "forward_only":
            with torch.no_grad():
                net(x, t, classes, devices, mask)
            return
        loss = ((net(x, t, classes, devices, mask) - x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ablation != "no_ema":
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)

    return step


def torch_worker(
    model: str, batch_size: int, steps: int, warmup: int, ablation: str, limit_gib: float
) -> dict:
    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        seconds = _timed(torch_step(model, batch_size, ablation), steps, warmup)
    except RuntimeError as e:  # an allocation over the limit
        request = re.search(r"allocate (\d+) bytes", str(e))
        if not request:
            raise
        return {"failed_allocation_gib": int(request.group(1)) / 2**30}
    return {"step_s": seconds, "images_per_s": batch_size / seconds}


def run_setting(
    kind: str, model: str, batch_size: int, ablation: str, args, xla_flags: str | None = None
) -> dict:
    """Runs one setting in a fresh interpreter (under `xla_flags` as XLA_FLAGS, if given);
    returns its timings and peak RSS."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--worker",
        kind,
        f"--models={model}",
        f"--batch_sizes={batch_size}",
        f"--ablations={ablation}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--memory_limit_gib={args.memory_limit_gib}",
    ]
    if args.attention:
        command.append(f"--attention={args.attention}")
    env = None if xla_flags is None else {**os.environ, "XLA_FLAGS": xla_flags}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{kind} {model} batch {batch_size} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(kind, model, batch_size, ablation, out, flush=True)
    return out


def _rate(out: dict, limit_gib: float) -> str:
    if "images_per_s" in out:
        return f"{out['images_per_s']:.4g}"
    if "failed_allocation_gib" in out:
        return f"fails: allocating {out['failed_allocation_gib']:.1f} GiB more breaks {limit_gib:g} GiB"
    return f"not run: XLA plans {out['xla_buffers_gib']:.1f} GiB > {limit_gib:g}"


def _ratio(jax_out: dict, torch_out: dict) -> float | str:
    if "images_per_s" in jax_out and "images_per_s" in torch_out:
        return jax_out["images_per_s"] / torch_out["images_per_s"]
    return ""


def compare_xla_flags(models, batch_sizes, args, report) -> None:
    """The JAX step under each XLA_FLAGS set beside the default flags and PyTorch: every
    setting runs `--repeats` times, interleaved so that load on the machine falls on all alike,
    and the median step time is reported."""
    flag_sets = ["", *(f.strip() for f in args.xla_flag_sets.split(";") if f.strip())]
    rows = []
    for model in models:
        for batch_size in batch_sizes:
            times = {flags: [] for flags in flag_sets}
            torch_times = []
            for _ in range(args.repeats):
                for flags in flag_sets:
                    out = run_setting("jax", model, batch_size, "none", args, xla_flags=flags)
                    times[flags].append(out["step_s"])
                if not args.no_torch:
                    torch_times.append(
                        run_setting("torch", model, batch_size, "none", args)["step_s"]
                    )
            default = statistics.median(times[""])
            torch_s = statistics.median(torch_times) if torch_times else float("nan")
            for flags in flag_sets:
                step_s = statistics.median(times[flags])
                rows.append(
                    [
                        model,
                        batch_size,
                        flags or "(default)",
                        batch_size / step_s,
                        default / step_s,
                        torch_s / step_s,
                        " / ".join(f"{t:.3g}" for t in times[flags]),
                    ]
                )
    report(
        "Train step under XLA:CPU flags (JAX, beside the default flags and PyTorch)",
        "models " + ", ".join(f"{m} (configs/pretrain.py:{MODELS[m]})" for m in models),
        [
            "model",
            "batch",
            "XLA_FLAGS",
            "JAX img/s (median)",
            "speed / default flags",
            "JAX / PyTorch",
            "s/step of each run",
        ],
        rows,
        notes=f"{args.steps} timed step(s) after {args.warmup} warm-up step(s), each run in a "
        f"fresh process, {args.repeats} interleaved runs per setting; fp32",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="busgen_toy,demo,efficient")
    parser.add_argument("--batch_sizes", default="1,4")
    parser.add_argument("--ablations", default="none")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", help="override the presets' attention_impl")
    parser.add_argument("--memory_limit_gib", type=float, default=20.0)
    parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument(
        "--peak_tflops", type=float, help="the device's peak TFLOP/s: adds model FLOP utilization"
    )
    parser.add_argument(
        "--xla_flag_sets",
        help="';'-separated XLA_FLAGS values: the JAX step under each, beside the default flags "
        "and PyTorch, instead of the speed table",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs per setting (--xla_flag_sets)"
    )
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    ablations = args.ablations.split(",")
    for name, allowed in (("models", MODELS), ("ablations", ABLATIONS)):
        unknown = set(locals()[name]) - set(allowed)
        if unknown:
            parser.error(f"--{name}: unknown {sorted(unknown)}; choose from {list(allowed)}")
    if args.worker:
        common = (models[0], batch_sizes[0], args.steps, args.warmup, ablations[0])
        out = (
            jax_worker(*common, args.attention, args.memory_limit_gib)
            if args.worker == "jax"
            else torch_worker(*common, args.memory_limit_gib)
        )
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(out))
        return
    from benchmarks.common import report

    if args.xla_flag_sets:
        compare_xla_flags(models, batch_sizes, args, report)
        return
    limit = args.memory_limit_gib
    speed_rows, ablation_rows = [], []
    for model in models:
        for batch_size in batch_sizes:
            base = {}
            for ablation in ablations:
                jax_out = run_setting("jax", model, batch_size, ablation, args)
                torch_out = (
                    {} if args.no_torch else run_setting("torch", model, batch_size, ablation, args)
                )
                if ablation == "none":
                    base = {"jax": jax_out, "torch": torch_out}
                    flops = jax_out["gflops_per_image"]
                    row = [
                        model,
                        batch_size,
                        _rate(jax_out, limit),
                        jax_out["peak_rss_gib"],
                        _rate(torch_out, limit) if torch_out else "-",
                        torch_out.get("peak_rss_gib", "-"),
                        _ratio(jax_out, torch_out),
                        flops,
                        flops * jax_out.get("images_per_s", float("nan")),
                    ]
                    if args.peak_tflops:
                        row.append(row[-1] / (args.peak_tflops * 1e3))
                    speed_rows.append(row)
                    continue
                saved = {
                    kind: base[kind]["step_s"] - out["step_s"]
                    for kind, out in (("jax", jax_out), ("torch", torch_out))
                    if "step_s" in base.get(kind, {}) and "step_s" in out
                }
                ablation_rows.append(
                    [
                        model,
                        batch_size,
                        ablation,
                        jax_out.get("step_s", "-"),
                        torch_out.get("step_s", "-"),
                        _ratio(jax_out, torch_out),
                        saved.get("jax", "-"),
                        saved.get("torch", "-"),
                    ]
                )
    header = [
        "model",
        "batch",
        "JAX img/s",
        "JAX peak RSS GiB",
        "PyTorch img/s",
        "PyTorch peak RSS GiB",
        "JAX / PyTorch",
        "GFLOPs/img (XLA)",
        "JAX GFLOP/s",
    ]
    if args.peak_tflops:
        header.append(f"MFU (peak {args.peak_tflops:g} TFLOP/s)")
    settings = (
        f"{args.steps} timed step(s) after {args.warmup} warm-up step(s), compiled ahead of time;"
        f" each setting in a fresh process; memory limit {limit:g} GiB; fp32"
    )
    report(
        "Train step against PyTorch (JAX and a PyTorch twin of the same U-Net)",
        "models " + ", ".join(f"{m} (configs/pretrain.py:{MODELS[m]})" for m in models),
        header,
        speed_rows,
        notes=settings + "; GFLOPs from XLA cost analysis of the step with plain attention "
        "(forward + backward + update).",
    )
    if ablation_rows:
        report(
            "Train step ablations against PyTorch (where the time goes)",
            "models " + ", ".join(models) + "; ablations as in the script's docstring",
            [
                "model",
                "batch",
                "ablation",
                "JAX s/step",
                "PyTorch s/step",
                "JAX / PyTorch speed",
                "JAX s saved",
                "PyTorch s saved",
            ],
            ablation_rows,
            notes=settings + "; 's saved' = the full step's seconds minus the ablated step's: "
            "what the removed part costs in each framework.",
        )


if __name__ == "__main__":
    main()
