"""The data-scaling experiment: test AUC of classifiers trained on n real, n synthetic, or
n real + n synthetic images, over a grid of n.

    busgen scaling --config=configs/scaling.py:default --workdir=DIR \
        --config.real_path=/data/real --config.synthetic_path=/data/synthetic

Training subsets are drawn from each dataset's train split, class-stratified and nested (the
n = 100 images contain the n = 50 ones), from `config.seed` alone. Every classifier is tested on
the same real test split. Writes DIR/scaling.json (every point: n, source, AUC, DeLong 95% CI,
test cases) and DIR/scaling.png (AUC against n, one line per source); each run lives in
DIR/runs/<source>_<n>/ and a rerun skips the runs already evaluated.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from busgen_jax.classification import train
from busgen_jax.core import config_files, errors
from busgen_jax.data import pipeline, shards
from busgen_jax.data.vocabulary import Task
from busgen_jax.jobs import layout, shell

SOURCES = ("real", "synthetic", "mixed")


def stratified_order(classes: list[str], seed: int) -> np.ndarray:
    """A permutation of record indices whose every prefix keeps the class proportions.

    Each class is permuted on its own; records are then ranked by their fractional position
    within their class, so the first n hold about n * (share of the class) of each class.
    """
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    rank = np.empty(len(classes))
    for name in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == name))
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((np.arange(len(classes)), rank))


def write_subset(
    dataset_dir: str, n: int, seed: int, out_dir: pathlib.Path, class_names, label_field: str = ""
) -> pathlib.Path:
    """Writes the first n train records of the task's classes in `stratified_order`."""
    if (out_dir / shards.MANIFEST).exists():
        return out_dir
    records = [
        r
        for r in shards.read_records(dataset_dir, "train")
        if pipeline.record_class(r, label_field) in class_names
    ]
    if len(records) < n:
        raise ValueError(
            f"{dataset_dir}: {len(records)} train records of classes "
            f"{list(class_names)}, fewer than n = {n}"
        )
    order = stratified_order([pipeline.record_class(r, label_field) for r in records], seed)
    chosen = [records[i] for i in sorted(order[:n])]
    shards.write_dataset(chosen, out_dir, name=f"{out_dir.name}")
    return out_dir


def run_config(config, source: str, paths: dict[str, str]) -> ml_collections.ConfigDict:
    """The classifier config of one run: its training data, the real test split."""
    run = ml_collections.ConfigDict(config.classifier.to_dict())
    run.data.paths = (paths["real"], paths["synthetic"]) if source == "mixed" else (paths[source],)
    run.data.mix_weights = (0.5, 0.5) if source == "mixed" else ()
    run.eval.paths = (config.real_path,)
    run.eval.split = "test"
    return run


def run_point(config, source: str, n: int, workdir: pathlib.Path) -> dict[str, Any]:
    """Trains and evaluates one (source, n) classifier, or reads its finished evaluation."""
    run_dir = workdir / "runs" / f"{source}_{n}"
    done = run_dir / layout.eval_file("test")
    if not done.exists():
        names = Task.from_config(config.classifier.task).class_names
        field = config.classifier.task.label_field
        paths = {
            name: str(
                write_subset(
                    path, n, config.seed, workdir / "subsets" / f"{name}_{n}", names, field
                )
            )
            for name, path in (("real", config.real_path), ("synthetic", config.synthetic_path))
            if name == source or source == "mixed"
        }
        train.train_and_evaluate(run_config(config, source, paths), str(run_dir))
    result = json.loads(done.read_text())
    return {
        "n": n,
        "source": source,
        **{
            k: result[k]
            for k in ("auc", "ci_low", "ci_high", "num_cases", "n_positive", "n_negative")
        },
    }


def plot(points: list[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Test AUC with its 95% DeLong interval against n (log scale), one line per source."""
    fig = Figure(figsize=(5.5, 4))  # no pyplot: the global backend stays as it is
    ax = fig.subplots()
    for index, source in enumerate(SOURCES):
        rows = sorted((p for p in points if p["source"] == source), key=lambda p: p["n"])
        if not rows:
            continue
        n = np.array([p["n"] for p in rows])
        auc = np.array([p["auc"] for p in rows])
        err = np.array(
            [[p["auc"] - p["ci_low"] for p in rows], [p["ci_high"] - p["auc"] for p in rows]]
        )
        label = "real + synthetic" if source == "mixed" else source
        # A small sideways shift per source keeps equal points and their intervals visible.
        dodge = 1.0 + 0.03 * (index - 1)
        ax.errorbar(n * dodge, auc, yerr=err, marker="o", capsize=3, label=label)
    ax.set(
        xscale="log",
        xlabel="training images per source (n)",
        ylabel="test AUC (95% CI)",
        ylim=(0.0, 1.02),
        title="Classifier AUC on the real test split",
    )
    sizes = sorted({p["n"] for p in points})
    ax.set_xticks(sizes, labels=[str(n) for n in sizes])
    ax.minorticks_off()
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError with one line naming the first bad field."""
    unknown = sorted(set(config.sources) - set(SOURCES))
    checks = [
        ("real_path", bool(config.real_path), "must name the real dataset"),
        (
            "synthetic_path",
            bool(config.synthetic_path) or config.sources == ("real",),
            "must name the synthetic dataset",
        ),
        ("sizes", len(config.sizes) > 0 and min(config.sizes) >= 1, "must be sizes >= 1"),
        ("sources", len(config.sources) > 0 and not unknown, f"must be among {SOURCES}"),
    ]
    config_files.check_fields(config, checks)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    try:
        validate_config(config)
        check = ml_collections.ConfigDict(config.classifier.to_dict())
        check.data.paths, check.eval.paths = (config.real_path,), (config.real_path,)
        train.check_inputs(train.resolve_config(check))
    except (ValueError, FileNotFoundError) as e:
        raise errors.JobError(str(e)) from e
    workdir = pathlib.Path(workdir)
    points = [run_point(config, s, int(n), workdir) for n in config.sizes for s in config.sources]
    summary = {"points": points, "config": json.loads(config.to_json())}
    (workdir / "scaling.json").write_text(json.dumps(summary, indent=1))
    figure = plot(points, workdir / "scaling.png")
    print(f"{len(points)} runs; {workdir / 'scaling.json'}, {figure}")
    return summary


main = shell.command(run, "configs/scaling.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
