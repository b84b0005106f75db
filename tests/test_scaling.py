"""The data-scaling experiment: nested stratified subsets, one evaluated run per (n, source)."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image
from test_classify_job import bright_dark_records

from busgen_jax.core import config_files
from busgen_jax.data import shards
from busgen_jax.jobs import scaling


def test_stratified_order_is_seeded_and_keeps_class_shares_in_every_prefix():
    classes = ["a"] * 30 + ["b"] * 10
    order = scaling.stratified_order(classes, seed=3)
    assert sorted(order) == list(range(40))
    np.testing.assert_array_equal(order, scaling.stratified_order(classes, seed=3))
    assert not np.array_equal(order, scaling.stratified_order(classes, seed=4))
    for n in (4, 8, 20):
        counts = collections.Counter(classes[i] for i in order[:n])
        assert abs(counts["b"] - n / 4) <= 1


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    real = tmp_path_factory.mktemp("real")
    shards.write_dataset(bright_dark_records(60), real, name="real")
    synthetic = tmp_path_factory.mktemp("synthetic")
    records = bright_dark_records(60, seed=1)
    for record in records:
        record["provenance"] = {"source": "synthetic", "seed": 1}
    shards.write_dataset(records, synthetic, name="synthetic")
    return str(real), str(synthetic)


def test_subsets_are_nested_and_hold_only_task_classes(datasets, tmp_path):
    names = ("benign", "malignant")
    small = scaling.write_subset(datasets[0], 8, 0, tmp_path / "s8", names)
    large = scaling.write_subset(datasets[0], 16, 0, tmp_path / "s16", names)
    ids = lambda d: [r["case_id"] for r in shards.read_records(d)]
    assert len(ids(small)) == 8 and len(ids(large)) == 16
    assert set(ids(small)) < set(ids(large))
    pathologies = collections.Counter(r["pathology"] for r in shards.read_records(large))
    assert pathologies == {"benign": 8, "malignant": 8}
    with pytest.raises(ValueError, match="fewer than n = 500"):
        scaling.write_subset(datasets[0], 500, 0, tmp_path / "s500", names)


@pytest.mark.slow  # six tiny training runs: about a minute on 2 busy cores
def test_scaling_job_writes_one_point_per_size_and_source_and_a_plot(datasets, tmp_path):
    config = config_files.load("configs/scaling.py:tiny")
    config.real_path, config.synthetic_path = datasets
    summary = scaling.run(config, str(tmp_path))
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["points"] == summary["points"]
    keys = sorted((p["n"], p["source"]) for p in saved["points"])
    assert keys == sorted((n, s) for n in (8, 16) for s in scaling.SOURCES)
    real_test = [r for r in bright_dark_records(60) if r["split"] == "test"]
    for point in saved["points"]:
        assert 0.0 <= point["ci_low"] <= point["auc"] <= point["ci_high"] <= 1.0
        assert point["num_cases"] == sum(r["pathology"] != "normal" for r in real_test)
    mixed = shards.read_manifest(tmp_path / "subsets" / "synthetic_16")["splits"]["train"]
    assert mixed["num_records"] == 16
    with Image.open(tmp_path / "scaling.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    # A rerun reads the finished evaluations instead of training again.
    for run_dir in (tmp_path / "runs").iterdir():
        (run_dir / "checkpoints").rename(run_dir / "moved")
    assert scaling.run(config, str(tmp_path))["points"] == summary["points"]
    assert not any((d / "checkpoints").exists() for d in (tmp_path / "runs").iterdir())
