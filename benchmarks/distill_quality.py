"""A distilled student against its teacher: quality, speed and the cost of a million images.

  python -m benchmarks.distill_quality --distill_workdir=WORKDIR      # `busgen distill` output

The teacher (default: the shipped foundation) samples at its default (its spec's sampler, steps
and guidance); the students of every round of WORKDIR at 4, 2 and 1 steps sample as their specs
say (DDIM, one pass per step). All draw one image per image of a real reference set A (the
corpus' test split: its classes, devices and lesion boxes) from the same starting noise, and are
scored as `benchmarks.foundation_quality` scores samplers:
  * failures: the share of noise-like samples (`evaluation.sample_failures`);
  * conditioning: the accuracy with which pixel oracles fit on the corpus' training split call
    each sample's requested class and device (`evaluation.oracle.fit_pixel_oracle`);
  * Fréchet distance in the shipped phantom oracle CNN's features (`evaluation.oracle`) against
    the real set B, over the real-vs-real floor FD(A, B);
  * downstream: a synthetic-only benign-vs-malignant classifier (logistic regression on the
    oracle CNN's features of `--downstream_images` synthetic images conditioned like as many
    training images) scored by ROC AUC with its DeLong 95% CI on every real benign and malignant
    image of the test split; the same probe fit on those real training images is the reference;
  * images/s on this machine, all in one run, and network FLOPs per image counted by XLA
    (`cost_analysis` of one forward pass, times the passes a sampler makes), from which the cost
    of 1M images is projected for this CPU (measured rate) and an H100 (989 TFLOP/s dense bf16
    at 45% utilization, the assumption of issue 18's cost estimate: a FLOP bound, not a
    measurement; a 32 px network would not reach that utilization).
Targets (issue 18), at 4 steps: FD ratio <= 1.2x the teacher's; oracle accuracies within 0.03;
downstream AUC within the teacher's 95% CI.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.common import markdown_table, report
from benchmarks.foundation_quality import CONDITION_KEYS, reference_sets, sample_like
from busgen_jax.classification import inference
from busgen_jax.data import builtin
from busgen_jax.diffusion import distillation, foundation, generator
from busgen_jax.evaluation import generative, oracle, sample_failures, statistics
from busgen_jax.models import params_io, unet

H100_FLOPS = 989e12 * 0.45  # dense bf16 peak at 45% utilization
DOWNSTREAM = ("benign", "malignant")  # negative, positive


def downstream_auc(features, train_images, train_classes, test_images, test_classes):
    """ROC AUC (DeLong 95% CI) on real test images of a probe fit on `train_images`."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    probe.fit(features(train_images), np.asarray(train_classes) == DOWNSTREAM[1])
    scores = probe.predict_proba(features(test_images))[:, 1]
    return statistics.roc_auc_ci(np.asarray(test_classes) == DOWNSTREAM[1], scores)


def passes_per_image(spec, steps: int) -> int:
    """Network passes per image: steps, doubled by classifier-free guidance unless distilled."""
    how = generator.sampling_settings(spec, {})
    guided = how["guidance_weight"] != 0 and not spec.student
    return steps * (2 if guided else 1)


def students(workdir: pathlib.Path) -> dict[int, pathlib.Path]:
    """Steps -> student directory, for every finished round of a distillation workdir."""
    found = {}
    for directory in sorted((workdir / "rounds").glob("*/student")):
        spec = generator.load_generator(directory)[1]
        found[spec.student["steps"]] = directory
    if not found:
        raise SystemExit(f"error: {workdir}/rounds holds no finished student")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--distill_workdir", required=True)
    parser.add_argument("--teacher", default=str(foundation.SHIPPED))
    parser.add_argument("--data", default=builtin.phantom_path("foundation"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--oracle_images", type=int, default=6000)
    parser.add_argument("--downstream_images", type=int, default=512)
    parser.add_argument("--steps", default="4,2,1", help="student step counts to measure")
    parser.add_argument(
        "--teacher_ddim_steps",
        default="8,4",
        help="the teacher's guided DDIM at these step counts (the first round's "
        "target, and what DDIM alone gives at the students' budget)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry_run", action="store_true", help="print, append nothing")
    args = parser.parse_args()

    data = builtin.resolve_path(args.data)
    teacher, teacher_spec = generator.load_generator(args.teacher)
    ref = reference_sets(data, teacher_spec, args.samples, args.oracle_images, args.seed)
    train, test, a, rng = ref["train"], ref["test"], ref["a"], ref["rng"]
    judges, limit, half = ref["oracles"], ref["failure_limit"], len(a["image"])
    real_b = ref["b"]["image"]
    cnn = oracle.shipped_dir()
    features = lambda images: inference.extract_features(cnn, images[..., None])
    reference = features(a["image"])
    floor = generative.frechet_distance(reference, features(real_b))
    # The downstream task's conditions: training images of its two classes; its test set: all
    # real test images of them.
    pool = np.flatnonzero(np.isin(train["pathology"], DOWNSTREAM))
    pick = rng.permutation(pool)[: args.downstream_images]
    task = {k: np.asarray(train[k])[pick] for k in CONDITION_KEYS}
    tested = np.isin(test["pathology"], DOWNSTREAM)
    test_images, test_classes = (
        np.asarray(test["image"])[tested],
        np.asarray(test["pathology"])[tested],
    )
    real_auc = downstream_auc(features, task["image"], task["pathology"], test_images, test_classes)

    teacher_how = generator.sampling_settings(teacher_spec, {})
    runs = [("teacher (default)", args.teacher, teacher, teacher_spec, teacher_how)]
    for steps in (int(s) for s in args.teacher_ddim_steps.split(",") if s):
        ddim = {
            **teacher_how,
            "sampler": distillation.STUDENT_SAMPLER,
            "steps": steps,
            "skip": distillation.STUDENT_SKIP,
        }
        runs.append((f"teacher DDIM {steps}", args.teacher, teacher, teacher_spec, ddim))
    found = students(pathlib.Path(args.distill_workdir))
    for steps in (int(s) for s in args.steps.split(",")):
        if steps in found:
            model, spec = generator.load_generator(found[steps])
            how = generator.sampling_settings(spec, {})
            runs.append((f"student {steps}", found[steps], model, spec, how))

    rows, results = [], {}
    for name, directory, model, spec, how in runs:
        images, rate = sample_like(
            model, spec, a, how["sampler"], how["steps"], how["skip"], args.batch_size, args.seed
        )
        calls = {k: judge.predict(oracle.pixel_features(images)) for k, judge in judges.items()}
        fd = generative.frechet_distance(reference, features(images))
        synthetic, _ = sample_like(
            model,
            spec,
            task,
            how["sampler"],
            how["steps"],
            how["skip"],
            args.batch_size,
            args.seed + 1,
        )
        auc = downstream_auc(features, synthetic, task["pathology"], test_images, test_classes)
        network = unet.forward_flops(params_io.load_model_config(directory))
        flops = network * passes_per_image(spec, how["steps"])
        results[name] = r = {
            "failed": float(sample_failures.failed(images, limit).mean()),
            "class": float(np.mean(calls["pathology"] == a["pathology"])),
            "device": float(np.mean(calls["device"] == a["device"])),
            "fd_ratio": fd / floor,
            "rate": rate,
            "flops": flops,
            "auc": auc,
        }
        rows.append(
            [
                f"{name}: {how['sampler']} {how['steps']}",
                passes_per_image(spec, how["steps"]),
                f"{r['failed']:.1%}",
                f"{r['class']:.3f}",
                f"{r['device']:.3f}",
                f"{fd:.2f} ({r['fd_ratio']:.2f}x floor)",
                f"{auc.auc:.3f} ({auc.ci_low:.3f}-{auc.ci_high:.3f})",
                f"{rate:.1f}",
                f"{flops / 1e6:.0f}",
                f"{1e6 / rate / 3600:.1f}",
                f"{1e6 * flops / H100_FLOPS:.2f}",
            ]
        )
        print(rows[-1], flush=True)

    header = [
        "sampler",
        "passes/image",
        "failed",
        "oracle class acc.",
        "oracle device acc.",
        "FD (x floor)",
        "downstream AUC (95% CI)",
        "images/s (this CPU)",
        "MFLOP/image (XLA)",
        "1M images, this CPU (h)",
        "1M images, H100 (s)",
    ]
    base = results["teacher (default)"]
    verdicts = []
    for name, r in results.items():
        if name.startswith("student"):
            fd_x = r["fd_ratio"] / base["fd_ratio"]
            verdicts.append(
                f"{name}: FD {fd_x:.2f}x the teacher's (target <= 1.2: "
                f"{'met' if fd_x <= 1.2 else f'missed by {fd_x - 1.2:.2f}'}), class accuracy "
                f"{r['class'] - base['class']:+.3f}, device {r['device'] - base['device']:+.3f} "
                f"(target within 0.03), downstream AUC {r['auc'].auc:.3f} "
                f"{'inside' if base['auc'].ci_low <= r['auc'].auc <= base['auc'].ci_high else 'outside'}"
                " the teacher's 95% CI, "
                f"{base['rate'] and r['rate'] / base['rate']:.1f}x the "
                "teacher's images/s"
            )
    if args.dry_run:
        print(markdown_table(header, rows), "\n", "; ".join(verdicts))
        return
    report(
        "Distillation: student vs teacher",
        config=f"teacher {args.teacher}; students {args.distill_workdir}; reference {data} test "
        f"split, {half} + {half} images; class/device oracles: logistic regression on "
        f"{len(ref['fit'])} training images; FD in the shipped oracle CNN's features",
        header=header,
        rows=rows,
        notes=f"floor FD(A, B) = {floor:.2f}; failure limit {limit:.3f}; downstream "
        f"{DOWNSTREAM[0]} vs {DOWNSTREAM[1]}: {len(pick)} synthetic training images, "
        f"{len(test_images)} real test images, the probe fit on the real training images scores "
        f"AUC {real_auc.auc:.3f} ({real_auc.ci_low:.3f}-{real_auc.ci_high:.3f}). "
        + "; ".join(verdicts),
    )


if __name__ == "__main__":
    main()
