"""Imports a real dataset into the project's schema, de-identified, with patient-level splits.

    BUSGEN_SALT=<secret> busgen import --config=configs/import_data.py:busi --workdir=DIR \
        --config.source=/data/Dataset_BUSI_with_GT

Writes DIR/data/<name>/ (shards + manifest.json). Nothing is written unless every file was read
and checked.
"""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections

from busgen_jax.core import errors
from busgen_jax.data.importers import DatasetImportError, import_dataset
from busgen_jax.data.schema import SchemaError
from busgen_jax.jobs import shell


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    salt = config.salt or os.environ.get("BUSGEN_SALT", "")
    if not config.source:
        raise errors.JobError("config.source: the dataset folder (or CSV) to import is required")
    out_dir = pathlib.Path(workdir) / "data" / config.name
    try:
        manifest = import_dataset(
            config.layout,
            config.source,
            out_dir,
            salt=salt,
            seed=config.seed,
            split_fractions=tuple(config.split_fractions),
            device=config.device or None,
            name=config.name,
            allowed_roots=tuple(config.allowed_roots),
            duplicates=config.duplicates,
            **_table_options(config),
        )
    except (DatasetImportError, SchemaError) as e:
        raise errors.JobError(str(e)) from e
    summary = {k: manifest[k] for k in ("name", "num_records", "pathology", "device")}
    print(f"imported dataset: {out_dir}\n{json.dumps(summary, indent=1)}")
    return manifest


def _table_options(config: ml_collections.ConfigDict) -> dict:
    if config.layout != "table":
        return {}
    return {
        "label_columns": tuple(config.label_columns),
        "deidentified_columns": tuple(config.deidentified_columns),
    }


main = shell.command(run, "configs/import_data.py:busi", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
