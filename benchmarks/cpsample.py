"""Copy-protected sampling (CPSample) on the few-shot adaptation: copying and downstream AUC.

  python -m benchmarks.cpsample --workdir=/tmp/cpsample                      (memorizing adapter)
  python -m benchmarks.cpsample --workdir=/tmp/cpsample_tiny --pretrain_steps=150 \
      --phantom_images=160 --adapt_steps=300 --lora_rank=2 --adapt_lr=1e-3 \
      --classifier_steps=60 --max_rounds=5 --scales 200       (about the 2026-12-02 12:22 run)

The few-shot case is where a generator is most likely to copy (8 images per class). By default
this adapts the shipped phantom foundation model to benign vs DCIS from 8 examples per class,
with settings chosen to make it memorize (high LoRA rank, high learning rate, many steps over
the same 16 images); with `--pretrain_steps=N` it first pretrains `configs/demo.py:tiny`'s small
model from scratch instead (the demo's own stages: phantom -> pretraining -> LoRA adaptation).
It then synthesizes the same planned images (same seed, plan, boxes) without CPSample and with
it at each of `--scales`, and reports from each synthesis audit the nearest-training-neighbour
similarities and memorization rates of all candidates and the generator's membership inference,
and the test AUC on real images of a classifier trained on the synthetic set alone (and, for
reference, on the 16 real training images). A workdir that already holds the generator is
reused; each synthesis and classifier is redone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import sklearn.metrics

from benchmarks.common import report
from busgen_jax.classification import inference
from busgen_jax.core import config_files, errors
from busgen_jax.jobs import demo, layout, synthesize, train_classifier


def build_generator(config, paths: layout.Paths) -> None:
    for name, stage in demo.STAGES[:3]:  # phantom, pretrain, adapt
        done = paths.root / f".{name}.benchmark-done"
        if not done.exists():
            stage(config, paths)
            done.write_text("")


def synthesize_and_score(config, paths: layout.Paths, scale: float, alpha: float) -> list:
    out = paths.root / f"synthesize_cpsample_{scale:g}"
    shutil.rmtree(out, ignore_errors=True)
    synth = demo.stage_config(
        config.synthesize,
        generator=str(paths.generator),
        adapter=str(paths.adapter),
        **{"audit.train_paths": (str(paths.fewshot),), "cpsample.scale": scale},
        **{"cpsample.alpha": alpha},
    )
    tick = time.perf_counter()
    try:
        manifest = synthesize.run(synth, str(out))
        redrawn, refused = manifest["extra"]["failed_samples"]["redrawn"], ""
    except errors.JobError as e:  # rejection could not clear the set: the audit may still be there
        redrawn, refused = "-", str(e)
        print(f"synthesis with CPSample scale {scale:g} refused: {e}")
    seconds = time.perf_counter() - tick
    name = "CPSample" if scale else "plain"
    audit_path = out / layout.SYNTHETIC / "audit" / "audit.json"
    if not audit_path.exists():
        return [name, scale] + [f"(no audit: {refused})"] * 8
    audit = json.loads(audit_path.read_text())
    auc = "refused" if refused else classifier_auc(config, paths, out / layout.SYNTHETIC, out.name)
    sims = audit["similarity"]
    rates = " / ".join(f"{100 * r['candidates_flagged']:.1f}%" for r in audit["memorization_rates"])
    mia = audit["membership_inference"]
    return [
        name,
        scale,
        f"{audit['num_candidates']} / {audit['rejected_count']} / {redrawn}",
        f"{sims['ncc']['candidates']['q50']:.3f} / {sims['ncc']['candidates']['max']:.3f}",
        f"{sims['windowed']['candidates']['q50']:.3f} / {sims['windowed']['candidates']['max']:.3f}",
        rates,
        audit["memorization_test"]["interpretation"].split(":")[0],
        f"{mia['auc']:.3f} / {mia['tpr_at_1pct_fpr']:.3f}" if mia else "-",
        auc,
        f"{seconds:.0f}",
    ]


def classifier_auc(config, paths: layout.Paths, data, name: str) -> float:
    """Test AUC on the phantom's real test split of the demo classifier trained on `data`."""
    work = paths.root / f"classifier_{name}"
    shutil.rmtree(work, ignore_errors=True)
    fields = {"data.paths": (str(data),), "data.mix_weights": ()}
    train_classifier.run(
        demo.stage_config(config.classifier, **fields, **{"eval.paths": (str(paths.data),)}),
        str(work),
    )
    model, trained = inference.load_classifier(work / "export")
    rows = inference.predict_split(model, trained, [str(paths.data)], "test")
    return float(sklearn.metrics.roc_auc_score(rows["label"], rows["probability"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/busgen_cpsample")
    parser.add_argument(
        "--pretrain_steps",
        type=int,
        default=0,
        help="0: adapt the shipped foundation model; N: pretrain the tiny demo model N steps",
    )
    parser.add_argument("--phantom_images", type=int, default=1200)
    parser.add_argument("--adapt_steps", type=int, default=2000)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--adapt_lr", type=float, default=3e-3)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--max_rounds", type=int, default=8)
    parser.add_argument("--classifier_steps", type=int, default=100)
    parser.add_argument("--scales", type=float, nargs="+", default=[25.0, 50.0, 100.0, 200.0])
    parser.add_argument("--alpha", type=float, default=0.2)
    args = parser.parse_args()
    scratch = args.pretrain_steps > 0
    config = config_files.load("configs/demo.py:tiny" if scratch else "configs/demo.py:default")
    config.phantom.num_images = args.phantom_images
    if scratch:
        config.pretrain.train.update(steps=args.pretrain_steps)
        config.pretrain.checkpoint.every_steps = args.pretrain_steps
        config.pretrain.sample.every_steps = args.pretrain_steps
    else:
        config.phantom.image_size = 32  # the foundation's size: no resizing on every read
    config.adapt.shots = 8
    config.adapt.lora.update(rank=args.lora_rank, alpha=float(args.lora_rank))
    config.adapt.train.update(
        steps=args.adapt_steps, learning_rate=args.adapt_lr, warmup_steps=min(10, args.adapt_steps)
    )
    config.adapt.checkpoint.every_steps = args.adapt_steps
    config.adapt.log_every_steps = 50
    config.adapt.sample.per_class = 4
    if scratch:  # the earlier run's sampler; the foundation is sampled as its spec says
        config.synthesize.update(steps=12, sampler="dpm_solver_pp_2m")
    config.synthesize.update(num_images=args.num_images, batch_size=16)
    config.synthesize.records_per_shard = args.num_images
    config.synthesize.audit.max_rounds = args.max_rounds
    config.classifier.train.steps = args.classifier_steps
    config.classifier.train.warmup_steps = min(config.classifier.train.warmup_steps, 10)
    config.classifier.checkpoint.every_steps = args.classifier_steps
    paths = layout.Paths(args.workdir, config)
    tick = time.perf_counter()
    build_generator(config, paths)
    print(f"generator ready in {time.perf_counter() - tick:.0f} s")
    rows = [synthesize_and_score(config, paths, s, args.alpha) for s in (0.0, *args.scales)]
    # Reference: the same classifier trained on the 16 real images the generator was adapted on.
    fewshot_auc = classifier_auc(config, paths, paths.fewshot, "fewshot")
    rows.append(
        ["(the 16 real training images)", "-", "-", "-", "-", "-", "-", "-", fewshot_auc, "-"]
    )
    base = (
        f"configs/demo.py:tiny pretrained {args.pretrain_steps} steps from scratch"
        if scratch
        else "the shipped phantom foundation model (32 px)"
    )
    sampler = (
        "DPM-Solver++ 2M, 12 steps"
        if scratch
        else "the foundation's default sampling, DDPM 25 steps, w = 1.8"
    )
    report(
        "Copy-protected sampling on the few-shot adaptation (8 images per class)"
        if scratch
        else "Copy-protected sampling on a memorizing few-shot adaptation (8 images per class)",
        f"{base}, LoRA-adapted (rank {args.lora_rank}, learning rate {args.adapt_lr:g}, "
        f"{args.adapt_steps} steps at batch {config.adapt.data.batch_size}) to 8 benign + 8 DCIS "
        f"images of a {args.phantom_images}-image phantom; {args.num_images} images ({sampler}, "
        f"up to {args.max_rounds} rejection rounds), CPSample alpha {args.alpha} "
        f"(classifier {config.synthesize.cpsample.steps} steps); "
        f"synthetic-only classifier {args.classifier_steps} steps; "
        f"`python -m benchmarks.cpsample {' '.join(sys.argv[1:])}`",
        [
            "sampling",
            "scale",
            "candidates / rejected / noise-like redrawn",
            "NCC NN median / max",
            "windowed NN median / max",
            "flagged at 95th / 99th / 99.9th",
            "copying verdict",
            "MIA AUC / TPR at 1% FPR",
            "test AUC (synthetic-only classifier)",
            "synthesis s",
        ],
        rows,
        notes="similarities and flag rates are of every candidate (before rejection, redraws "
        "included) against the adaptation's 16 training images, thresholds from its held-out "
        "images; membership inference: the 16 training images against the held-out ones "
        "(the same generator in every row); AUC on the phantom's real test split, of the "
        "classifier trained on the accepted synthetic set ('refused': synthesis wrote no set)",
    )


if __name__ == "__main__":
    main()
