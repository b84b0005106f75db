"""The shipped foundation model, generator checksums, and the built-in phantom datasets."""

import json
import pathlib

import ml_collections
import pytest
from generator_fixtures import tiny_generator

from busgen_jax.data import builtin, shards
from busgen_jax.diffusion import foundation, generator


@pytest.fixture
def shipped_copy(tmp_path):
    """A tiny generator shipped the way `python -m busgen_jax.diffusion.foundation` ships one."""
    export = tiny_generator(tmp_path / "export")
    facts = {"training": {"steps": 3}, "quality": {"fd_ratio": 1.5}}
    return foundation.ship(export, facts, tmp_path / "shipped")


def test_shipped_copy_loads_and_has_card(shipped_copy):
    model, spec = generator.load_generator(shipped_copy)
    assert spec.image_size > 0
    card = (shipped_copy / foundation.CARD).read_text()
    assert "steps: 3" in card and "fd_ratio: 1.5" in card
    listed = (shipped_copy / foundation.CHECKSUMS).read_text().split("\n")
    assert any(line.endswith("  generator.json") for line in listed)


def test_changed_byte_is_refused_naming_the_file(shipped_copy):
    params = sorted(p for p in (shipped_copy / "params").rglob("*") if p.is_file())
    victim = max(params, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, still decodable by most readers
    victim.write_bytes(bytes(data))
    with pytest.raises(foundation.ChecksumError, match=str(victim.name)):
        generator.load_generator(shipped_copy)


def test_missing_and_extra_files_are_refused(shipped_copy):
    (shipped_copy / "stray.bin").write_bytes(b"x")
    with pytest.raises(foundation.ChecksumError, match="stray.bin: not listed"):
        foundation.verify_checksums(shipped_copy)
    (shipped_copy / "stray.bin").unlink()
    (shipped_copy / "model_config.json").unlink()
    with pytest.raises(foundation.ChecksumError, match="model_config.json: missing"):
        foundation.verify_checksums(shipped_copy)


def test_shipped_foundation_loads_and_its_checksums_hold():
    directory = foundation.shipped_dir()
    foundation.verify_checksums(directory)
    model, spec = generator.load_generator(directory)
    # DCIS is not a pretraining label: adapting to it is the few-shot task.
    assert spec.class_names == ("normal", "benign", "malignant")
    assert spec.prediction == "v"
    card = (directory / foundation.CARD).read_text()
    assert "How it was made" in card and "What it measured" in card


def test_phantom_paths_resolve_once_to_a_cached_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path / "cache"))
    config = ml_collections.ConfigDict(
        {"data": {"paths": (builtin.phantom_path("tiny"), "/elsewhere")}, "name": "x"}
    )
    resolved = builtin.resolve_config(config)
    path = pathlib.Path(resolved.data.paths[0])
    assert resolved.data.paths[1] == "/elsewhere" and config.data.paths[0] == "phantom:tiny"
    manifest = shards.read_manifest(path)
    assert manifest["num_records"] == builtin.phantom_config("tiny").num_images
    stamp = (path / "manifest.json").stat().st_mtime_ns
    again = builtin.resolve_config(config)
    assert again.data.paths[0] == str(path)
    assert (path / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert not [p for p in path.parent.parent.parent.iterdir() if p.name.startswith(".")]


def test_card_reports_the_generator_vocabulary(shipped_copy):
    spec = json.loads((shipped_copy / "generator.json").read_text())
    card = (shipped_copy / foundation.CARD).read_text()
    assert all(name in card for name in spec["class_names"])
