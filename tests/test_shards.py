"""The ArrayRecord writer: complete shards or none, a manifest that tells the truth."""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from records import make_records

from busgen_jax.data import schema, shards


def test_round_trip_preserves_every_record_and_order(tmp_path):
    records = make_records(23)
    manifest = shards.write_dataset(records, tmp_path, name="rt", records_per_shard=4)
    read = list(shards.read_records(tmp_path, "train"))
    expected = [r for r in records if r["split"] == "train"]
    assert [r["case_id"] for r in read] == [r["case_id"] for r in expected]
    assert read[0]["image"] == expected[0]["image"]
    assert np.array_equal(
        schema.decode_png(read[3]["image"]), schema.decode_png(expected[3]["image"])
    )
    assert manifest["num_records"] == 23
    assert manifest["splits"]["train"]["num_records"] == len(expected)
    # ceil(18 / 4) shards named with their total count.
    files = [s["file"] for s in manifest["splits"]["train"]["shards"]]
    assert files == [f"rt-train-{i:05d}-of-00005.array_record" for i in range(5)]


def test_manifest_counts_match_records(tmp_path):
    records = make_records(30)
    manifest = shards.write_dataset(records, tmp_path, name="counts")
    for pathology in schema.PATHOLOGIES:
        assert manifest["pathology"][pathology] == sum(r["pathology"] == pathology for r in records)
    assert sum(manifest["device"].values()) == 30
    on_disk = json.loads((tmp_path / shards.MANIFEST).read_text())
    assert on_disk["splits"]["test"]["record_pathology"] == [
        r["pathology"] for r in records if r["split"] == "test"
    ]


def test_same_records_give_same_bytes(tmp_path):
    for name in ("a", "b"):
        shards.write_dataset(make_records(12, seed=3), tmp_path / name, name="same")
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def _leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_duplicate_case_id_leaves_no_output(tmp_path):
    records = make_records(10)
    records[7]["case_id"] = records[2]["case_id"]
    with pytest.raises(schema.SchemaError, match="record 7.*duplicate case_id"):
        shards.write_dataset(records, tmp_path, name="dup")
    assert _leftovers(tmp_path) == []


def test_invalid_record_is_named_and_leaves_no_output(tmp_path):
    records = make_records(10)
    records[5]["boxes"] = [[0.6, 0.1, 0.2, 0.3]]
    with pytest.raises(schema.SchemaError, match="record 5 .*invalid normalized box"):
        shards.write_dataset(records, tmp_path, name="bad", records_per_shard=2)
    assert _leftovers(tmp_path) == []


def test_interrupted_writer_leaves_no_shard(tmp_path):
    def interrupted():
        yield from make_records(9)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shards.write_dataset(interrupted(), tmp_path, name="int", records_per_shard=2)
    assert _leftovers(tmp_path) == []


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(shards.DatasetError, match="empty dataset"):
        shards.write_dataset([], tmp_path, name="empty")
    assert _leftovers(tmp_path) == []


def test_refuses_to_overwrite_an_existing_dataset(tmp_path):
    shards.write_dataset(make_records(4), tmp_path, name="x")
    with pytest.raises(shards.DatasetError, match="already exists"):
        shards.write_dataset(make_records(4), tmp_path, name="x")


def test_verify_detects_a_corrupted_shard(tmp_path):
    manifest = shards.write_dataset(make_records(8), tmp_path, name="v")
    shards.verify_dataset(tmp_path)
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(shards.DatasetError, match="checksum"):
        shards.verify_dataset(tmp_path)


def test_missing_shard_and_missing_manifest_are_named(tmp_path):
    manifest = shards.write_dataset(make_records(8), tmp_path, name="m")
    (tmp_path / manifest["splits"]["test"]["shards"][0]["file"]).unlink()
    with pytest.raises(shards.DatasetError, match="missing"):
        shards.shard_paths(tmp_path, "test")
    with pytest.raises(shards.DatasetError, match="no manifest"):
        shards.read_manifest(tmp_path / "nowhere")


_KILLED_WRITER = """
import pathlib, sys, time
sys.path.insert(0, "tests")
from records import make_records
from busgen_jax.data import shards

def records():
    for i, record in enumerate(make_records(30)):
        if i == 20:  # three shards of train are complete in the staging folder by now
            pathlib.Path(sys.argv[2]).write_text("stuck")
            time.sleep(3600)
        yield record

shards.write_dataset(records(), sys.argv[1], name="k", records_per_shard=4)
"""


def test_a_killed_writer_leaves_nothing_behind_after_the_next_write(tmp_path):
    marker = tmp_path / "stuck"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "ds"), str(marker)],
        cwd=pathlib.Path(__file__).parent.parent,
    )
    try:
        while not marker.exists() and writer.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the writer ended before it could be killed"
    finally:
        writer.kill()
        writer.wait()
    (staged,) = (tmp_path / "ds").glob(".staging-*")
    assert list(staged.iterdir())
    # The killed writer left no shard (nor manifest) in the dataset, only its hidden staging.
    assert [p.name for p in (tmp_path / "ds").iterdir() if p != staged] == []
    shards.write_dataset(make_records(30), tmp_path / "ds", name="k", records_per_shard=4)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if p.name.startswith(".")) == []
    assert shards.verify_dataset(tmp_path / "ds")["num_records"] == 30


_FULL_DISK_WRITER = """
import resource, signal, sys
sys.path.insert(0, "tests")
from records import make_records
from busgen_jax.data import shards

# No file may grow past 16 KiB, as on a full disk: writes fail with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 14, 1 << 14))
shards.write_dataset(make_records(40), sys.argv[1], name="full")
"""


def test_a_full_disk_is_one_error_naming_the_shard(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_WRITER, str(tmp_path / "ds")],
        cwd=pathlib.Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("busgen_jax.data.shards.DatasetError: "), out.stderr[-2000:]
    assert str(tmp_path / "ds") in last and "File too large" in last
    assert list((tmp_path / "ds").iterdir()) == []
