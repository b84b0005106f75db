"""How many steps the demo's classifiers need: validation AUC against training length.

    python -m benchmarks.classifier_convergence --demo=workdir/demo
    python -m benchmarks.classifier_convergence --demo=workdir/demo --steps=100,200,400,800 \
        --sources=real,synthetic

Trains the demo's classifier config (`configs/demo.py:default`) on the finished demo's real
training split and on its synthetic set, once per step count (each its own cosine schedule, as
the demo would run it), and scores the real *validation* split: the demo's test split stays
untouched. Reports val AUC with its DeLong interval and the wall time of each run.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from benchmarks.common import report
from busgen_jax.classification import train
from busgen_jax.core import config_files
from busgen_jax.jobs import demo, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="workdir/demo", help="a finished demo workdir")
    parser.add_argument("--steps", default="100,200,400,800")
    parser.add_argument("--sources", default="real,synthetic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = config_files.load("configs/demo.py:default")
    paths = layout.Paths(args.demo, config)
    sources = demo.classifier_sources(config, paths)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convergence_") as scratch:
        for source in args.sources.split(","):
            for steps in (int(s) for s in args.steps.split(",")):
                run_config = demo.stage_config(
                    config.classifier,
                    **sources[source],
                    **{
                        "eval.paths": (str(paths.data),),
                        "eval.split": "val",
                        "train.steps": steps,
                        "train.seed": args.seed,
                    },
                )
                start = time.perf_counter()
                result = train.train_and_evaluate(
                    run_config, str(pathlib.Path(scratch) / f"{source}_{steps}")
                )["eval"]
                seconds = time.perf_counter() - start
                rows.append(
                    [
                        source,
                        steps,
                        f"{result['auc']:.3f}",
                        f"{result['ci_low']:.3f}-{result['ci_high']:.3f}",
                        result["num_cases"],
                        f"{seconds:.0f}",
                    ]
                )
                print(rows[-1], flush=True)
    report(
        "Demo classifiers: validation AUC against training steps",
        f"configs/demo.py:default classifier, trained on {args.demo}'s data; seed {args.seed}",
        ["trained on", "steps", "val AUC", "DeLong 95% CI", "val cases", "seconds"],
        rows,
        notes="each step count is its own run with its own cosine schedule; val split only",
    )


if __name__ == "__main__":
    main()
