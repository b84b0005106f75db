"""Fréchet distance of synthetic images to real ones versus sampler and step count.

  make demo   # or: busgen demo --config=configs/demo.py:default --workdir=workdir/demo
  python -m benchmarks.sampler_fidelity --demo_workdir=workdir/demo

Uses what the demo trained: its adapted generator (pretrained on the phantom, LoRA-adapted to
benign vs DCIS) and, as the feature space, the penultimate features of its classifier trained on
real images. The real images of the generator's classes are split at random into halves A and B.
Every setting generates one image per image of A with A's own class, device and lesion box, and
is scored against B; the real-vs-real distance FD(A, B), at the same sample sizes, is the floor
a perfect generator would reach. KID (unbiased, so ~0 for equal distributions) is given beside
FD, which is biased upwards at these sample sizes. Every setting starts from the same noise.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import report
from busgen_jax.classification import inference
from busgen_jax.core import config_files
from busgen_jax.data import pipeline, shards
from busgen_jax.diffusion import generator
from busgen_jax.evaluation import generative
from busgen_jax.jobs import layout

RUNS = (
    ("ddim", "time_uniform"),
    ("ddpm", "time_uniform"),
    ("dpm_solver_3s", "time_uniform"),
    ("dpm_solver_3s", "logsnr"),
    ("dpm_solver_pp_2m", "logsnr"),
)
FIGURE = pathlib.Path(__file__).resolve().parent / "figures" / "sampler_fd_vs_steps.png"


def real_halves(data_dir: pathlib.Path, spec, max_images: int, seed: int):
    """Real images of the generator's classes from every split, shuffled and halved."""
    splits = list(shards.read_manifest(data_dir)["splits"])
    loaded = [
        pipeline.load_split([str(data_dir)], s, spec.image_size, spec.class_names) for s in splits
    ]
    real = {
        k: np.concatenate([np.asarray(d[k]) for d in loaded])
        for k in ("image", "box_mask", "pathology", "device")
    }
    order = np.random.default_rng(seed).permutation(len(real["image"]))[:max_images]
    half = len(order) // 2
    return (
        {k: v[order[:half]] for k, v in real.items()},
        {k: v[order[half : 2 * half]] for k, v in real.items()},
    )


def synthesize_like(sample_fn, state, spec, conditions, steps: int, batch_size: int, seed: int):
    """One image per conditioning image, in fixed-size batches (one compiled shape)."""
    count = len(conditions["image"])
    classes = generator.ids_for(list(conditions["pathology"]), spec.class_names, "classes")
    devices = generator.ids_for(list(conditions["device"]), spec.device_names, "devices")
    masks = conditions["box_mask"][..., None].astype(np.float32)
    out = []
    for b, first in enumerate(range(0, count, batch_size)):
        index = np.arange(first, first + batch_size) % count
        key = jax.random.fold_in(jax.random.key(seed), b)
        images = sample_fn(state, key, classes[index], devices[index], masks[index], steps)
        out.append(np.asarray(images)[: count - first, ..., 0])
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo_workdir", default="workdir/demo")
    parser.add_argument("--config", default="configs/demo.py:default")
    parser.add_argument("--steps", default="5,10,20,50")
    parser.add_argument("--max_images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=1.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    paths = layout.Paths(args.demo_workdir, config_files.load(args.config))
    features_dir = paths.classifier("real") / "export"
    for needed in (paths.generator, paths.adapter, features_dir, paths.data):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `make demo` (or the demo command) first")
    model, spec = generator.load_generator(paths.generator, adapter=paths.adapter)
    half_a, half_b = real_halves(paths.data, spec, args.max_images, args.seed)
    features_b = inference.extract_features(features_dir, half_b["image"])

    def scores(images: np.ndarray) -> tuple[float, float]:
        features = inference.extract_features(features_dir, images)
        kid = generative.kernel_distance(features_b, features, seed=args.seed).kid
        return generative.frechet_distance(features_b, features), kid

    floor = scores(half_a["image"])
    results = {}
    for sampler, skip in RUNS:
        sample_fn, state = generator.make_traced_steps_sample_fn(
            model, spec, sampler=sampler, skip=skip, guidance_weight=args.guidance
        )
        for steps in steps_list:
            images = synthesize_like(
                sample_fn, state, spec, half_a, steps, args.batch_size, args.seed
            )
            results[sampler, skip, steps] = scores(images)
            print(sampler, skip, steps, results[sampler, skip, steps], flush=True)

    header = ["sampler", "grid", "metric"] + [f"{n} steps" for n in steps_list]
    rows = []
    for sampler, skip in RUNS:
        for metric, which in (("FD", 0), ("KID", 1)):
            rows.append(
                [sampler, skip, metric] + [results[sampler, skip, n][which] for n in steps_list]
            )
    report(
        "Sampler Fréchet distance vs steps (demo generator, classifier features)",
        f"{paths.root} ({args.config}): adapted generator {spec.class_names}, "
        f"{spec.image_size} px, guidance {args.guidance}; features of the real-data "
        f"classifier; {len(half_a['image'])} synthetic vs {len(half_b['image'])} real images",
        header,
        rows,
        notes=f"real-vs-real floor at the same sizes: FD {floor[0]:.4g}, KID {floor[1]:.3g}; "
        f"one image per real conditioning image (class, device, box), seed {args.seed}. "
        f"Figure: {FIGURE.name}",
    )
    plot(results, steps_list, floor)


def plot(results: dict, steps_list: list[int], floor: tuple[float, float]) -> None:
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for which, (ax, name) in enumerate(zip(axes, ("FD", "KID"), strict=True)):
        for sampler, skip in RUNS:
            ax.plot(
                steps_list,
                [results[sampler, skip, n][which] for n in steps_list],
                "-" if skip == "logsnr" else "--",
                marker="o",
                label=f"{sampler} ({skip})",
            )
        ax.axhline(floor[which], color="gray", lw=0.8, label="real vs real")
        ax.set(
            xscale="log",
            xlabel="sampler steps (NFE)",
            ylabel=name,
            title=f"{name} to real images, classifier features",
        )
        ax.set_xticks(steps_list, [str(n) for n in steps_list])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Demo generator (phantom, benign vs DCIS): sample quality vs steps")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


if __name__ == "__main__":
    main()
