"""Trains the downstream classifier on real, synthetic or mixed data, and evaluates it.

    busgen train-classifier --config=configs/classifier.py:default --workdir=DIR \
        --config.data.paths="('/data/real',)"

`classification.train.train_and_evaluate` is the pretraining job's structure with a classification loss: mesh,
sharded state (or the newest readable checkpoint with the input iterator), the jitted
`train_step` (sigmoid cross-entropy of the task's positive class, AdamW with warm-up and
cosine decay, EMA), clu metrics and progress, periodic checkpoints, a stop on a non-finite
loss. At the end the EMA model scores `eval.split` of `eval.paths` (default `data.paths`):
DIR/predictions_<split>.csv and DIR/eval_<split>.json (ROC AUC with its DeLong interval), and
is exported to DIR/export/ (see `busgen_jax.classification.inference`).

The task (`config.task`) is binary: records whose class (pathology, or `labels[label_field]`)
is in `task.negative` are 0, in `task.positive` 1, others are not read. Classes are balanced
so that each side of the task is drawn half the time, each class equally within its side.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections

from busgen_jax.classification import train
from busgen_jax.jobs import layout, shell


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    result = train.train_and_evaluate(config, workdir)["eval"]
    print(
        f"{result['split']} AUC {result['auc']:.3f} "
        f"({result['ci_low']:.3f}-{result['ci_high']:.3f}) on {result['num_cases']} cases; "
        f"export: {pathlib.Path(workdir) / layout.EXPORT}"
    )
    return result


main = shell.command(run, "configs/classifier.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
