"""Lesion-box priors: fit to real BUSI boxes, sample, save/load, render masks."""

import json
import pathlib

import numpy as np
import pytest
import scipy.stats

from busgen_jax.data import box_priors

BUSI_BOXES = pathlib.Path(__file__).parent / "data" / "busi_boxes.json"


def _busi_records() -> list[dict]:
    """BUSI annotations as schema-style records (pathology + normalized xyxy boxes)."""
    entries = json.loads(BUSI_BOXES.read_text())
    return [{"pathology": e["pathology"], "boxes": list(e["lesion_box"].values())} for e in entries]


def _real_boxes(records: list[dict], pathology: str) -> np.ndarray:
    return np.array([b for r in records if r["pathology"] == pathology for b in r["boxes"]])


def _box_stats(boxes: np.ndarray) -> dict[str, np.ndarray]:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return {"area": w * h, "aspect": w / h, "cx": cx, "cy": cy}


@pytest.fixture(scope="module")
def busi_records():
    return _busi_records()


def test_busi_file_matches_documented_counts(busi_records):
    counts = [len(r["boxes"]) for r in busi_records]
    assert len(busi_records) == 780
    assert np.bincount(counts).tolist() == [133, 630, 17]


@pytest.mark.parametrize("bandwidth", [None, "cv", 0.001])
@pytest.mark.parametrize("pathology", ["benign", "malignant"])
def test_sampled_boxes_reproduce_busi_statistics(busi_records, bandwidth, pathology):
    prior = box_priors.fit_box_prior(busi_records, bandwidth=bandwidth)
    sampled = box_priors.sample_boxes(prior, pathology, 3000, np.random.default_rng(0))
    real_stats = _box_stats(_real_boxes(busi_records, pathology))
    sampled_stats = _box_stats(np.concatenate(sampled))
    for key, real in real_stats.items():
        result = scipy.stats.ks_2samp(real, sampled_stats[key])
        assert result.pvalue > 1e-3, (key, result)
    # Count per image: the two-lesion frequency within 4 binomial standard errors.
    real_counts = [len(r["boxes"]) for r in busi_records if r["pathology"] == pathology]
    p_two = np.mean(np.array(real_counts) == 2)
    sampled_two = np.mean([len(b) == 2 for b in sampled])
    assert abs(sampled_two - p_two) <= 4 * np.sqrt(p_two * (1 - p_two) / 3000) + 1e-9
    assert {len(b) for b in sampled} <= {1, 2}


def test_oversmoothed_prior_fails_the_ks_check(busi_records):
    """The KS check above discriminates: a far too wide kernel distorts the areas."""
    prior = box_priors.fit_box_prior(busi_records, bandwidth=0.8)
    sampled = np.concatenate(
        box_priors.sample_boxes(prior, "benign", 3000, np.random.default_rng(0))
    )
    real = _box_stats(_real_boxes(busi_records, "benign"))["area"]
    assert scipy.stats.ks_2samp(real, _box_stats(sampled)["area"]).pvalue < 1e-3


def test_samples_are_valid_and_normal_has_no_boxes(busi_records):
    prior = box_priors.fit_box_prior(busi_records, bandwidth=0.3)  # wide: forces clamping
    rng = np.random.default_rng(1)
    boxes = np.concatenate(box_priors.sample_boxes(prior, "malignant", 2000, rng))
    assert boxes.dtype == np.float32
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    normal = box_priors.sample_boxes(prior, "normal", 50, rng)
    assert len(normal) == 50 and all(b.shape == (0, 4) for b in normal)
    with pytest.raises(KeyError, match="dcis"):
        box_priors.sample_boxes(prior, "dcis", 1, rng)


def test_sampling_is_deterministic_per_seed(busi_records):
    prior = box_priors.fit_box_prior(busi_records)
    a = box_priors.sample_boxes(prior, "benign", 200, np.random.default_rng(7))
    b = box_priors.sample_boxes(prior, "benign", 200, np.random.default_rng(7))
    c = box_priors.sample_boxes(prior, "benign", 200, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


def test_save_load_round_trip(busi_records, tmp_path):
    prior = box_priors.fit_box_prior(busi_records, bandwidth=0.001)
    path = tmp_path / "prior.npz"
    box_priors.save_box_prior(prior, path)
    loaded = box_priors.load_box_prior(path)
    assert loaded.class_names == prior.class_names == ("benign", "malignant", "normal")
    assert loaded.bandwidth == 0.001
    for name in prior.class_names:
        np.testing.assert_array_equal(loaded.points[name], prior.points[name])
        np.testing.assert_array_equal(loaded.kernel_cov[name], prior.kernel_cov[name])
        np.testing.assert_array_equal(loaded.count_probs[name], prior.count_probs[name])
    a = box_priors.sample_boxes(prior, "benign", 100, np.random.default_rng(3))
    b = box_priors.sample_boxes(loaded, "benign", 100, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_load_rejects_incomplete_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, format_version=np.array(1), class_names=np.array(["benign"]))
    with pytest.raises(ValueError, match="bad.npz.*missing field"):
        box_priors.load_box_prior(path)


@pytest.mark.parametrize("bandwidth", ["scott", 0.05])
def test_sample_covariance_matches_kde_closed_form(bandwidth):
    """A Gaussian KDE sample has covariance Cov_emp(points, ddof=0) + H."""
    rng = np.random.default_rng(0)
    centres = rng.normal([0.5, 0.5], 0.03, size=(60, 2))
    sizes = rng.normal([0.1, 0.08], 0.01, size=(60, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    prior = box_priors.fit_box_prior({"benign": list(boxes[:, None, :])}, bandwidth=bandwidth)
    feats = box_priors.sample_box_features(prior, "benign", 200_000, rng)
    points = box_priors.boxes_to_features(boxes)
    if bandwidth == "scott":  # Scott's factor n^(-1/(d+4)) times the ddof=1 data covariance
        expected_h = 60 ** (-2 / 8) * np.cov(points, rowvar=False)
    else:
        expected_h = 0.05**2 * np.eye(4)
    np.testing.assert_allclose(prior.kernel_cov["benign"], expected_h, rtol=1e-10)
    expected = np.cov(points, rowvar=False, ddof=0) + expected_h
    np.testing.assert_allclose(np.cov(feats, rowvar=False), expected, atol=0.03 * expected.max())


def test_features_round_trip_and_bad_boxes_are_named():
    boxes = np.array([[0.1, 0.2, 0.4, 0.3], [0.5, 0.5, 0.9, 0.95]])
    back = box_priors.features_to_boxes(box_priors.boxes_to_features(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-12)
    with pytest.raises(ValueError, match="case c7.*boxes"):
        box_priors.fit_box_prior(
            [{"pathology": "benign", "boxes": [[0.5, 0.1, 0.4, 0.2]], "case_id": "c7"}]
        )
    with pytest.raises(ValueError, match="too few"):
        box_priors.fit_box_prior({"benign": [boxes]})


def test_box_mask_matches_brute_force_overlap():
    rng = np.random.default_rng(0)
    height, width = 37, 50
    xy = np.sort(rng.uniform(size=(6, 2, 2)), axis=1)  # [box, (min, max), (x, y)]
    boxes = np.concatenate([xy[:, 0], xy[:, 1]], axis=1)
    boxes = np.concatenate([boxes, [[0.5, 0.5, 0.5001, 0.5002]]])  # tiny box still drawn
    mask = box_priors.box_mask(boxes, height, width)
    assert mask.shape == (height, width, 1) and mask.dtype == np.float32
    expected = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in boxes:
        for i in range(height):
            for j in range(width):
                overlap_x = min(x2, (j + 1) / width) - max(x1, j / width)
                overlap_y = min(y2, (i + 1) / height) - max(y1, i / height)
                expected[i, j] |= overlap_x > 0 and overlap_y > 0
    np.testing.assert_array_equal(mask[..., 0], expected.astype(np.float32))
    aligned = box_priors.box_mask([[0.25, 0.5, 0.75, 1.0]], 4, 4)[..., 0]
    np.testing.assert_array_equal(aligned, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]])
    assert box_priors.box_mask(np.zeros((0, 4)), 8, 8).sum() == 0
