"""The phantom oracle that judges the demo's quality gates, and the gates themselves."""

import shutil

import jax
import numpy as np
import pytest

from busgen_jax.classification import inference
from busgen_jax.core import config_files
from busgen_jax.data import builtin, pipeline
from busgen_jax.diffusion import foundation, generator
from busgen_jax.evaluation import demo_gates, oracle, sample_failures
from busgen_jax.jobs import phantom as generate_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small benign/DCIS phantom at the oracle's 32 px, not the oracle's own data."""
    config = config_files.load("configs/phantom.py:benign_dcis")
    config.update(num_images=240, seed=123, name="oracle_test")
    workdir = tmp_path_factory.mktemp("phantom")
    generate_phantom.run(config, str(workdir))
    data = [str(workdir / "data" / "oracle_test")]
    return {split: pipeline.load_split(data, split, 32) for split in ("train", "test")}


def test_shipped_oracle_loads_and_a_changed_file_is_refused(tmp_path):
    assert oracle.shipped_dir() == oracle.SHIPPED
    assert oracle.CARD_TITLE in (oracle.SHIPPED / foundation.CARD).read_text()
    copy = shutil.copytree(oracle.SHIPPED, tmp_path / "oracle")
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(foundation.ChecksumError, match="config.json"):
        foundation.verify_checksums(copy)


def test_real_images_score_their_ceiling_and_noise_fails(phantom):
    train, test = phantom["train"], phantom["test"]
    as_real = oracle.measure(test, train, test, oracle_dir=oracle.SHIPPED, seed=0)
    # Real images judged as "synthetic" score exactly the real ceiling.
    assert as_real["synthetic"] == as_real["real"]
    assert as_real["real"]["class"]["dcis"]["accuracy"] > 0.5
    # Four devices: chance is 0.25, even for a device oracle fit on this small set.
    real_devices = as_real["real"]["device"].values()
    assert len(real_devices) == 4 and np.mean([d["accuracy"] for d in real_devices]) > 0.5
    rng = np.random.default_rng(0)
    noise = dict(test, image=rng.uniform(-1, 1, test["image"].shape).astype(np.float32))
    judged = oracle.measure(noise, train, test, oracle_dir=oracle.SHIPPED, seed=0)
    fd = judged["frechet"]
    assert fd["ratio"] > 3 * as_real["frechet"]["ratio"] and fd["real_floor"] > 0
    devices = judged["synthetic"]["device"]
    assert np.mean([d["accuracy"] for d in devices.values()]) < 0.4


def test_too_few_images_leave_the_frechet_distance_out(phantom):
    test = phantom["test"]
    few = {k: v[:3] if not isinstance(v, list) else v[:3] for k, v in test.items()}
    judged = oracle.measure(few, phantom["train"], test, oracle_dir=oracle.SHIPPED, seed=0)
    assert judged["frechet"] is None and judged["synthetic"]["class"]


def _oracle_result(benign, dcis, ratio):
    cell = lambda a: {"accuracy": a, "n": 10}  # noqa: E731
    return {
        "synthetic": {
            "class": {"benign": cell(benign), "dcis": cell(dcis)},
            "device": {"A": cell(0.9)},
        },
        "real": {"class": {"benign": cell(0.8), "dcis": cell(0.7)}, "device": {"A": cell(0.95)}},
        "frechet": {"synthetic": ratio, "real_floor": 1.0, "ratio": ratio, "n_per_class": 5},
    }


def test_gates_hold_or_fail_at_their_targets():
    rows = demo_gates.conditioning_gates(_oracle_result(0.85, 0.84, 1.0))
    assert [r["passed"] for r in rows] == [True, False, True]
    assert rows[1]["real_ceiling"] == 0.7
    assert demo_gates.frechet_gate(_oracle_result(1, 1, 3.0))["passed"]
    assert not demo_gates.frechet_gate(_oracle_result(1, 1, 3.01))["passed"]
    seeds = {
        "real": demo_gates.seed_summary([0.80, 0.82, 0.84]),
        "fewshot": demo_gates.seed_summary([0.60, 0.70, 0.65]),
        "synthetic": demo_gates.seed_summary([0.70, 0.74, 0.72]),
        "mixed": demo_gates.seed_summary([0.81, 0.82, 0.83]),
    }
    assert seeds["real"]["mean"] == pytest.approx(0.82) and seeds["real"]["sd"] > 0
    few, full_ratio, mixed = demo_gates.auc_gates(seeds)
    assert few["passed"] and few["measured"] == pytest.approx(0.07)
    assert not full_ratio["passed"] and full_ratio["measured"] == pytest.approx(0.72 / 0.82)
    assert mixed["passed"]
    manifest = {"extra": {"failed_samples": {"redrawn": 2, "limit": 1.0}}}
    before, written = demo_gates.failure_gates(manifest, {"num_candidates": 100}, 0)
    assert not before["passed"] and before["measured"] == 0.02 and written["passed"]
    assert "NOT MET" in demo_gates.describe(before)
    # A run that kept its failures (no redraw) counts them before redraw too.
    kept = {"extra": {"failed_samples": {"redrawn": 0, "limit": 1.0}}}
    before, written = demo_gates.failure_gates(kept, {"num_candidates": 100}, 1)
    assert before["measured"] == 0.01 and before["passed"] and not written["passed"]


@pytest.mark.slow
def test_shipped_foundation_samples_are_their_device_and_class(phantom):
    """The shipped generator, sampled as its spec says: no noise-like sample, the device oracle
    calls >= 85% of samples their requested device, and the class oracle calls its malignant
    samples DCIS far more often than its benign ones (DCIS is malignant in its corpus)."""
    model, spec = generator.load_generator(foundation.shipped_dir())
    settings = generator.sampling_settings(spec, {})
    sample_fn = generator.make_sample_fn(
        spec, **{k: v for k, v in settings.items() if k not in ("preset", "box_raster")}
    )
    real = phantom["test"]
    per_device = 6
    devices = [d for d in spec.device_names for _ in range(per_device)]
    masks = np.asarray(real["box_mask"])[: len(devices)][..., None]
    images = {}
    for k, pathology in enumerate(("benign", "malignant")):
        out = sample_fn(
            model,
            jax.random.key(k),
            generator.ids_for([pathology] * len(devices), spec.class_names, "classes"),
            generator.ids_for(devices, spec.device_names, "devices"),
            masks.astype(np.float32),
        )
        images[pathology] = np.asarray(out)[..., 0]
    train = pipeline.load_split([builtin.resolve_path("phantom:benign_dcis")], "train", 32)
    limit = sample_failures.failure_limit(train["image"])
    device_oracle = oracle.fit_pixel_oracle(train["image"], train["device"])
    class_oracle, _ = inference.load_classifier(oracle.shipped_dir())
    dcis_rate = {}
    for pathology, batch in images.items():
        assert not sample_failures.failed(batch, limit).any()
        called = device_oracle.predict(oracle.pixel_features(batch))
        assert np.mean(called == np.asarray(devices)) >= 0.85
        dcis_rate[pathology] = np.mean(inference.probabilities(class_oracle, batch) >= 0.5)
    assert dcis_rate["malignant"] > dcis_rate["benign"] + 0.2, dcis_rate
