"""Per-case probabilities of an exported classifier, written as CSV.

    busgen predict --config=configs/classifier.py:predict --workdir=DIR \
        --config.export_dir=RUN/export [--config.paths="('/data/real',)"] [--config.split=test]

Writes DIR/predictions_<split>.csv with one row per case of the task's classes:
case_id, patient_id, pathology, device, label (1 = the task's positive class), probability.
With no `paths`, the data the classifier was evaluated on is scored.
The classifier and its rows are `busgen_jax.classification.inference`'s.
"""

from __future__ import annotations

import pathlib

import ml_collections

from busgen_jax.classification import inference
from busgen_jax.core import errors
from busgen_jax.data import shards
from busgen_jax.jobs import layout, shell


def run(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    if not config.export_dir:
        raise errors.JobError("config.export_dir: name an exported classifier (RUN/export)")
    try:
        model, trained = inference.load_classifier(config.export_dir)
        paths = list(config.paths) or list(trained.eval.paths) or list(trained.data.paths)
        rows = inference.predict_split(model, trained, paths, config.split, config.batch_size)
    except (FileNotFoundError, shards.DatasetError) as e:
        raise errors.JobError(str(e)) from e
    out = inference.write_csv(rows, pathlib.Path(workdir) / layout.predictions_file(config.split))
    print(f"{len(rows['case_id'])} predictions: {out}")
    return out


main = shell.command(run, "configs/classifier.py:predict", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
