"""Quality per CPU-second of a generator's samplers: failures, conditioning, Fréchet distance.

  python -m benchmarks.foundation_quality                      # the shipped foundation model
  python -m benchmarks.foundation_quality --generator=RUN/export --samples=256 \
      --facts=workdir/foundation/facts.json --grid=workdir/foundation/samples.png

Measured on the generator's own corpus (default: the built-in phantom `foundation` preset, the
shipped model's pretraining data): the test split is the real reference, halved into A and B.
Every sampler draws one image per image of A, with A's class, device and lesion box, from the
same starting noise, and is scored on
  * failures: the share of noise-like samples (`evaluation.sample_failures`, limit calibrated on
    the corpus' training images);
  * conditioning: the accuracy with which an oracle trained on plentiful real images (the
    corpus' training split, disjoint from A and B) assigns each sample its requested class and
    device. The oracles are multinomial logistic regressions on the pixels and their
    high-frequency energy: cheap, deterministic, and on real held-out images they reach the
    accuracies printed beside them, which bound what a sample can score;
  * Fréchet distance in a 64-component PCA of real training pixels, against the real-vs-real
    floor FD(A, B) at the same sample size;
  * images/s of guided sampling on this machine.
`--facts` writes the numbers for the model card; `--grid` a class x device sample grid of the
chosen sampler.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np
from sklearn.decomposition import PCA

from benchmarks.common import git_revision, machine_description, report
from busgen_jax.data import builtin, pipeline
from busgen_jax.diffusion import foundation, generator
from busgen_jax.evaluation import generative, oracle, sample_failures
from busgen_jax.reporting import visualize

# (sampler, steps, time grid): ancestral DDPM, deterministic DDIM, and the DPM-Solvers.
RUNS = (
    ("ddpm", 50, "time_uniform"),
    ("ddpm", 25, "time_uniform"),
    ("ddim", 50, "time_uniform"),
    ("dpm_solver_pp_2m", 20, "logsnr"),
    ("dpm_solver_pp_3s", 20, "time_uniform"),
)


CONDITION_KEYS = ("image", "box_mask", "pathology", "device")


def sample_like(model, spec, conditions, sampler, steps, skip, batch_size, seed):
    """One image per conditioning image, fixed-size batches (one compiled shape), timed."""
    sample_fn = generator.make_sample_fn(
        spec,
        sampler=sampler,
        steps=steps,
        skip=skip,
        guidance_weight=spec.sampling.get("guidance_weight", 1.8),
    )
    count = len(conditions["image"])
    classes = generator.ids_for(list(conditions["pathology"]), spec.class_names, "classes")
    devices = generator.ids_for(list(conditions["device"]), spec.device_names, "devices")
    masks = conditions["box_mask"][..., None].astype(np.float32)
    out, start = [], None
    for b, first in enumerate(range(0, count, batch_size)):
        index = np.arange(first, first + batch_size) % count
        key = jax.random.fold_in(jax.random.key(seed), b)
        images = sample_fn(model, key, classes[index], devices[index], masks[index])
        images = np.asarray(jax.device_get(images))
        if start is None:  # the first batch pays for compilation
            start, timed_from = time.perf_counter(), first + batch_size
        out.append(images)
    elapsed = time.perf_counter() - start
    rate = (count - min(timed_from, count)) / elapsed if elapsed > 0 else float("nan")
    return np.concatenate(out)[:count, ..., 0], rate


def reference_sets(data, spec, samples: int, oracle_images: int, seed: int) -> dict:
    """What every sampler is scored against, from the corpus `data` at `spec`'s size and classes:
    its `train` and `test` splits; `a` (`samples` test images: the conditions each sampler draws
    by) and `b` (as many other test images: the real-vs-real floor); the class and device
    `oracles` fit on `oracle_images` training images (their indices `fit`); the noise-like
    samples' `failure_limit`; and the `rng` that drew them, for further seeded draws."""
    train = pipeline.load_split([data], "train", spec.image_size, spec.class_names)
    test = pipeline.load_split([data], "test", spec.image_size, spec.class_names)
    rng = np.random.default_rng(seed)
    fit = rng.permutation(len(train["image"]))[:oracle_images]
    oracles = {
        key: oracle.fit_pixel_oracle(train["image"][fit], [train[key][i] for i in fit])
        for key in ("pathology", "device")
    }
    order = rng.permutation(len(test["image"]))
    half = min(samples, len(order) // 2)
    a = {k: np.asarray(test[k])[order[:half]] for k in CONDITION_KEYS}
    b = {k: np.asarray(test[k])[order[half : 2 * half]] for k in CONDITION_KEYS}
    limit = sample_failures.failure_limit(train["image"])
    return {
        "train": train,
        "test": test,
        "a": a,
        "b": b,
        "oracles": oracles,
        "fit": fit,
        "failure_limit": limit,
        "rng": rng,
    }


def choose(results: dict) -> str:
    """Quality per second: among samplers with <= 1% failed samples, the fastest whose FD is
    within 5% of the lowest (FD differences below that are within a run's noise at N = 256)."""
    sound = {k: v for k, v in results.items() if v["failed"] <= 0.01} or results
    best_fd = min(v["fd_ratio"] for v in sound.values())
    close = [k for k, v in sound.items() if v["fd_ratio"] <= 1.05 * best_fd]
    return max(close, key=lambda k: sound[k]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default=str(foundation.SHIPPED))
    parser.add_argument("--data", default=builtin.phantom_path("foundation"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--oracle_images", type=int, default=6000)
    parser.add_argument("--runs", default="", help="comma-separated indices into RUNS")
    parser.add_argument("--facts", default="")
    parser.add_argument("--grid", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = builtin.resolve_path(args.data)
    model, spec = generator.load_generator(args.generator)
    ref = reference_sets(data, spec, args.samples, args.oracle_images, args.seed)
    a, b, limit, pick = ref["a"], ref["b"], ref["failure_limit"], ref["fit"]
    class_oracle, device_oracle = ref["oracles"]["pathology"], ref["oracles"]["device"]
    half, classes = len(a["image"]), spec.class_names
    train_images = ref["train"]["image"][pick]
    pca = PCA(64, random_state=args.seed).fit(train_images.reshape(len(pick), -1))
    feats = lambda x: pca.transform(x.reshape(len(x), -1))
    floor = generative.frechet_distance(feats(a["image"]), feats(b["image"]))
    real_class_acc = float(
        np.mean(class_oracle.predict(oracle.pixel_features(b["image"])) == b["pathology"])
    )
    real_device_acc = float(
        np.mean(device_oracle.predict(oracle.pixel_features(b["image"])) == b["device"])
    )

    runs = [RUNS[int(i)] for i in args.runs.split(",")] if args.runs else list(RUNS)
    rows, results = [], {}
    for sampler, steps, skip in runs:
        images, rate = sample_like(model, spec, a, sampler, steps, skip, args.batch_size, args.seed)
        failed = sample_failures.failed(images, limit)
        class_acc = class_oracle.predict(oracle.pixel_features(images)) == a["pathology"]
        device_acc = device_oracle.predict(oracle.pixel_features(images)) == a["device"]
        per_class = {c: float(np.mean(class_acc[a["pathology"] == c])) for c in classes}
        fd = generative.frechet_distance(feats(images), feats(b["image"]))
        name = f"{sampler} {steps} {skip}"
        results[name] = {
            "failed": float(failed.mean()),
            "class_accuracy": per_class,
            "device_accuracy": float(device_acc.mean()),
            "fd": fd,
            "fd_ratio": fd / floor,
            "images_per_s": rate,
            "images": images,
        }
        rows.append(
            [
                name,
                f"{failed.mean():.1%}",
                " / ".join(f"{c} {v:.2f}" for c, v in per_class.items()),
                f"{device_acc.mean():.2f}",
                f"{fd:.1f} ({fd / floor:.2f}x)",
                f"{rate:.2f}",
            ]
        )
        print(rows[-1], flush=True)
    report(
        "Phantom foundation model: samplers",
        config=f"generator {args.generator}; reference {data} test split, {half} + {half} "
        f"images; oracle: logistic regression on {len(pick)} training images; guided, "
        f"w = {spec.sampling.get('guidance_weight', 1.8)}",
        header=[
            "sampler",
            "failed",
            "oracle class accuracy",
            "oracle device accuracy",
            "FD (x floor)",
            "images/s",
        ],
        rows=rows,
        notes=f"floor FD(A, B) = {floor:.1f}; oracle accuracy on real held-out images: class "
        f"{real_class_acc:.2f}, device {real_device_acc:.2f}; failure limit {limit:.3f}",
    )
    if args.facts:
        best = choose(results)
        facts = {
            "quality": {
                "chosen sampler (the fastest with <= 1% failures and FD within 5% of the best)": best,
                "failed samples": f"{results[best]['failed']:.1%}",
                "oracle class accuracy": results[best]["class_accuracy"],
                "oracle device accuracy": round(results[best]["device_accuracy"], 3),
                "oracle accuracy on real held-out images": {
                    "class": round(real_class_acc, 3),
                    "device": round(real_device_acc, 3),
                },
                "Frechet distance / real-vs-real floor": round(results[best]["fd_ratio"], 2),
                "images/s (2-core CPU)": round(results[best]["images_per_s"], 2),
                "measured by": f"python -m benchmarks.foundation_quality at {git_revision()} on "
                f"{machine_description()}",
            }
        }
        pathlib.Path(args.facts).write_text(json.dumps(facts, indent=1))
    if args.grid:
        best = choose(results)
        images = results[best]["images"]
        cells: dict[tuple[str, str], list[np.ndarray]] = {}
        for k in range(len(images)):
            cell = cells.setdefault((a["pathology"][k], a["device"][k]), [])
            if len(cell) < 2:
                cell.append(visualize.to_uint8(images[k]))
        visualize.labelled_grid(
            cells,
            row_labels=classes,
            col_labels=spec.device_names,
            per_cell=2,
            path=args.grid,
            title=f"{best}: class x device",
        )


if __name__ == "__main__":
    main()
