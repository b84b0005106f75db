"""The TFDS BUSI builder yields the same content as `read_busi`, read back as a data source."""

from __future__ import annotations

import fake_trees
import numpy as np
import pytest
import tensorflow_datasets as tfds
from fake_trees import SALT

from busgen_jax.data import schema
from busgen_jax.data.importers import read_busi
from busgen_jax.data.tfds_busi import BusgenBusi


def test_tfds_data_source_matches_read_busi(tmp_path):
    fake_trees.make_busi(tmp_path / "manual")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    sources = tfds.data_source(
        "busgen_busi",
        data_dir=str(tmp_path / "tfds"),
        builder_kwargs={"file_format": "array_record", "salt": SALT, "seed": 1},
        download_and_prepare_kwargs={"download_config": config},
    )
    expected = read_busi(tmp_path / "manual", salt=SALT, seed=1)
    assert set(sources) == {r["split"] for r in expected}
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    names = schema.PATHOLOGIES
    got = {}
    for split, source in sources.items():
        for i in range(len(source)):
            example = source[i]
            got[example["case_id"].decode()] = (split, example)
    assert set(got) == {r["case_id"] for r in expected}
    for record in expected:
        split, example = got[record["case_id"]]
        assert split == record["split"] == example["split"].decode()
        np.testing.assert_array_equal(example["image"][..., 0], schema.decode_png(record["image"]))
        np.testing.assert_array_equal(example["mask"][..., 0], schema.decode_png(record["mask"]))
        np.testing.assert_allclose(
            np.reshape(example["boxes"], (-1, 4)), np.reshape(record["boxes"], (-1, 4)), rtol=1e-6
        )
        assert names[example["pathology"]] == record["pathology"]
        assert example["device"].decode() == record["device"]
        assert example["patient_id"].decode() == record["patient_id"]


def test_generation_requires_salt(tmp_path):
    fake_trees.make_busi(tmp_path / "manual")
    builder = BusgenBusi(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    with pytest.raises(ValueError, match="salt"):
        builder.download_and_prepare(download_config=config)
