"""Copy-protected sampling (CPSample) on the few-shot adaptation: copying and downstream AUC.

  python -m benchmarks.cpsample --workdir=/tmp/cpsample

The few-shot case is where a generator is most likely to copy (8 images per class). This builds
a small generator with the demo's own stages (phantom -> pretraining -> LoRA adaptation to
benign vs DCIS from 8 examples per class, sizes below), then synthesizes the same planned images
(same seed, plan, boxes) without and with CPSample, and reports from each synthesis audit the
nearest-training-neighbour similarities and memorization rates of all candidates, and the test
AUC on real images of a classifier trained on the synthetic set alone. A workdir that already
holds the generator is reused; each synthesis and classifier is redone.
"""

from __future__ import annotations

import argparse
import json
import shutil

import sklearn.metrics

from benchmarks.common import report
from busgen_jax import classify, demo, job, predict, synthesize


def build_generator(config, paths: demo.Paths) -> None:
    for name, stage in demo.STAGES[:3]:  # phantom, pretrain, adapt
        done = paths.root / f".{name}.benchmark-done"
        if not done.exists():
            stage(config, paths)
            done.write_text("")


def synthesize_and_score(config, paths: demo.Paths, scale: float, alpha: float) -> list:
    out = paths.root / f"synthesize_cpsample_{scale:g}"
    shutil.rmtree(out, ignore_errors=True)
    synth = demo._resolved(
        config.synthesize,
        generator=str(paths.generator),
        adapter=str(paths.adapter),
        **{"audit.train_paths": (str(paths.fewshot),), "cpsample.scale": scale},
        **{"cpsample.alpha": alpha},
    )
    synthesize.run(synth, str(out))
    audit = json.loads((out / synthesize.OUTPUT / "audit" / "audit.json").read_text())
    work = paths.root / f"classifier_cpsample_{scale:g}"
    shutil.rmtree(work, ignore_errors=True)
    fields = {"data.paths": (str(out / synthesize.OUTPUT),), "data.mix_weights": ()}
    classify.run(
        demo._resolved(config.classifier, **fields, **{"eval.paths": (str(paths.data),)}),
        str(work),
    )
    model, trained = predict.load_classifier(work / "export")
    rows = predict.predict_split(model, trained, [str(paths.data)], "test")
    auc = sklearn.metrics.roc_auc_score(rows["label"], rows["probability"])
    sims = audit["similarity"]
    rates = " / ".join(f"{100 * r['candidates_flagged']:.1f}%" for r in audit["memorization_rates"])
    return [
        "CPSample" if scale else "plain",
        scale,
        audit["num_candidates"],
        audit["rejected_count"],
        f"{sims['ncc']['candidates']['q50']:.3f} / {sims['ncc']['candidates']['max']:.3f}",
        f"{sims['windowed']['candidates']['q50']:.3f} / {sims['windowed']['candidates']['max']:.3f}",
        rates,
        audit["memorization_test"]["interpretation"].split(":")[0],
        float(auc),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/busgen_cpsample")
    parser.add_argument("--pretrain_steps", type=int, default=150)
    parser.add_argument("--adapt_steps", type=int, default=300)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--scale", type=float, default=200.0)
    parser.add_argument("--alpha", type=float, default=0.2)
    args = parser.parse_args()
    config = job.load_config("configs/demo.py:tiny")
    config.pretrain.train.update(steps=args.pretrain_steps)
    config.pretrain.checkpoint.every_steps = args.pretrain_steps
    config.pretrain.sample.every_steps = args.pretrain_steps
    config.adapt.shots = 8
    config.adapt.train.update(steps=args.adapt_steps)
    config.adapt.checkpoint.every_steps = args.adapt_steps
    config.synthesize.update(num_images=args.num_images, steps=12, sampler="dpm_solver_pp_2m")
    config.synthesize.update(batch_size=16, records_per_shard=args.num_images)
    config.classifier.train.steps = 60
    paths = demo.Paths(args.workdir, config)
    build_generator(config, paths)
    rows = [synthesize_and_score(config, paths, s, args.alpha) for s in (0.0, args.scale)]
    report(
        "Copy-protected sampling on the few-shot adaptation (8 images per class)",
        f"configs/demo.py:tiny with pretraining {args.pretrain_steps} steps, LoRA adaptation "
        f"{args.adapt_steps} steps from 8 benign + 8 DCIS images, {args.num_images} images "
        f"(DPM-Solver++ 2M, 12 steps, w = 1.8), CPSample alpha {args.alpha}; "
        "`python -m benchmarks.cpsample`",
        [
            "sampling",
            "scale",
            "candidates",
            "rejected",
            "NCC NN median / max",
            "windowed NN median / max",
            "flagged at 95th / 99th / 99.9th",
            "copying verdict",
            "test AUC (synthetic-only classifier)",
        ],  # fmt: skip
        rows,
        notes="similarities and flag rates are of every candidate (before rejection) against "
        "the adaptation's training images, thresholds from its held-out images; AUC on the "
        "phantom's real test split",
    )


if __name__ == "__main__":
    main()
