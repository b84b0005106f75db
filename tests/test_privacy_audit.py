"""Privacy audit: NCC nearest neighbours, threshold calibration, copy rejection, report."""

import json

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from PIL import Image

from busgen_jax.privacy import audit, report


def _textures(num: int, seed: int, size: int = 48) -> np.ndarray:
    """Smooth random textures: independent images with realistic NN similarities (~0.4)."""
    rng = np.random.default_rng(seed)
    x = scipy.ndimage.gaussian_filter(rng.normal(size=(num, size, size)), sigma=(0, 3, 3))
    return (x / x.std()).astype(np.float32)


def _brute_force_nn(candidates, reference, size):
    """Pearson correlation of PIL-resized channel means, every pair, reference and mirrors."""

    def vector(image):
        gray = image.mean(-1) if image.ndim == 3 else image
        small = Image.fromarray(gray.astype(np.float32), mode="F").resize(
            (size, size), Image.BILINEAR
        )
        return np.asarray(small, np.float64).ravel()

    refs = [vector(r) for r in reference] + [vector(r[:, ::-1]) for r in reference]
    sims = np.array([[np.corrcoef(vector(c), r)[0, 1] for r in refs] for c in candidates])
    return sims.max(1), sims.argmax(1) % len(reference)


@pytest.fixture(scope="module")
def train():
    return _textures(60, seed=0)


def _ncc_thresholds(train_images, heldout_images, quantile=0.999):
    """NCC alone: the quantile of held-out-to-training nearest-neighbour similarity."""
    heldout_sims, _ = audit.nearest_neighbours(heldout_images, train_images)
    return audit.calibrate({"ncc": heldout_sims}, quantile)


def _ncc_flagged(candidates, train_images, thresholds):
    sims, idx = audit.nearest_neighbours(candidates, train_images)
    return audit.flagged({"ncc": sims}, thresholds), sims, idx


@pytest.fixture(scope="module")
def thresholds(train):
    return _ncc_thresholds(train, _textures(60, seed=1))


@pytest.mark.parametrize("chunk", [4, 1024])
def test_ncc_matches_brute_force(chunk):
    rng = np.random.default_rng(0)
    candidates = rng.uniform(0, 255, size=(9, 40, 30, 3)).astype(np.float32)
    reference = rng.uniform(0, 255, size=(7, 40, 30, 3)).astype(np.float32)
    candidates[:3] = reference[[4, 0, 6]] * 0.5 + 10  # affine copies
    candidates[3] = reference[2, :, ::-1]  # a mirrored copy
    sims, idx = audit.nearest_neighbours(candidates, reference, size=16, chunk=chunk)
    expected_sims, expected_idx = _brute_force_nn(candidates, reference, 16)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_array_equal(idx[:4], [4, 0, 6, 2])


def test_flat_image_has_zero_similarity(train):
    sims, _ = audit.nearest_neighbours(np.full((2, 48, 48), 7.0), train)
    np.testing.assert_array_equal(sims, 0.0)


def test_threshold_is_numpy_quantile_of_heldout_nn(train):
    heldout = _textures(12, seed=1, size=48)
    brute, _ = _brute_force_nn(heldout, train[:10], 32)
    for q in (0.5, 0.9):
        threshold = _ncc_thresholds(train[:10], heldout, quantile=q)["ncc"]
        assert threshold == pytest.approx(np.quantile(brute, q), abs=1e-5)


def test_calibrate_overrides_a_measure_and_flags_on_either_margin():
    rng = np.random.default_rng(0)
    heldout = {m: rng.uniform(0.2, 0.6, 500) for m in audit.MEASURES}
    thresholds = audit.calibrate(heldout, 0.99, overrides={"ncc": 0.5, "windowed": None})
    assert thresholds == {"ncc": 0.5, "windowed": np.quantile(heldout["windowed"], 0.99)}
    # As the synthesis and audit configs set them.
    settings = {"quantile": 0.99, "threshold": 0.5, "windowed_threshold": None}
    assert audit.configured_thresholds(heldout, settings) == thresholds
    sims = {"ncc": np.array([0.4, 0.7, 0.4, 0.5]), "windowed": np.array([0.1, 0.1, 0.9, 0.1])}
    expected = np.maximum(sims["ncc"] - 0.5, sims["windowed"] - thresholds["windowed"])
    np.testing.assert_allclose(audit.margin(sims, thresholds), expected)
    # Equal to a threshold is not above it.
    assert audit.flagged(sims, thresholds).tolist() == [False, True, True, False]


def test_tiny_heldout_set_warns_and_gives_near_maximum(caplog):
    sims = np.linspace(0.1, 0.5, 20)
    with caplog.at_level("WARNING"):
        threshold = audit.calibrate({"ncc": sims}, 0.999)["ncc"]
    assert "Only 20 held-out" in caplog.text
    assert threshold == pytest.approx(np.quantile(sims, 0.999)) and 0.499 < threshold <= 0.5
    with pytest.raises(ValueError, match="heldout_sims"):
        audit.calibrate({"ncc": np.array([])})


def test_planted_copies_are_rejected_and_new_images_pass(train, thresholds):
    rng = np.random.default_rng(5)
    source = train[:10]
    copies = {
        "verbatim": source,
        "contrast": 0.3 * source - 2.0,
        "noise": source + 0.3 * rng.normal(size=source.shape),
        "mirror": source[:, :, ::-1],
        "shift": np.roll(source, 1, axis=2),
        "blur": scipy.ndimage.gaussian_filter(source, sigma=(0, 1.5, 1.5)),
    }
    for name, planted in copies.items():
        flagged, sims, idx = _ncc_flagged(planted, train, thresholds)
        assert flagged.all(), (name, sims)
        np.testing.assert_array_equal(idx, np.arange(10), err_msg=name)
    flagged, _, _ = _ncc_flagged(_textures(100, seed=2), train, thresholds)
    assert (~flagged).mean() >= 0.95


def test_feature_fn_catches_rotated_copies_that_ncc_misses(train, thresholds):
    def rotation_invariant(images):  # sum of the four 90-degree rotations, centred
        summed = sum(np.rot90(images, k, axes=(1, 2)) for k in range(4))
        flat = summed.reshape(len(images), -1)
        return flat - flat.mean(1, keepdims=True)

    rotated = np.rot90(train[:10], 1, axes=(1, 2))
    ncc_sims, _ = audit.nearest_neighbours(rotated, train)
    assert not audit.flagged({"ncc": ncc_sims}, thresholds).any()
    feature_sims, idx = audit.nearest_neighbours(rotated, train, feature_fn=rotation_invariant)
    np.testing.assert_allclose(feature_sims, 1.0, atol=1e-5)
    np.testing.assert_array_equal(idx, np.arange(10))


def test_memorization_test_direction_and_u_statistic():
    rng = np.random.default_rng(0)
    heldout = rng.normal(0.4, 0.05, 300)
    copying = audit.memorization_test(rng.normal(0.6, 0.05, 200), heldout)
    assert copying["z_u"] < -5 and copying["p_copying"] < 1e-6
    assert copying["interpretation"].startswith("copying")
    underfit = audit.memorization_test(rng.normal(0.3, 0.05, 200), heldout)
    assert underfit["z_u"] > 5 and underfit["interpretation"].startswith("under-fitting")
    same = audit.memorization_test(rng.normal(0.4, 0.05, 200), heldout)
    assert same["interpretation"] == "no evidence of data copying"
    # U against its definition on distances 1 - sim, with ties counted 1/2.
    gen, held = np.array([0.9, 0.5, 0.5, 0.2]), np.array([0.5, 0.3, 0.1])
    d_gen, d_held = 1 - gen[:, None], 1 - held[None, :]
    expected_u = (d_gen > d_held).sum() + 0.5 * (d_gen == d_held).sum()
    result = audit.memorization_test(gen, held)
    assert result["u"] == expected_u
    assert result["z_u"] == pytest.approx((expected_u - 6) / np.sqrt(12 * 8 / 12))


def test_report_names_training_neighbours_by_id_and_holds_no_training_pixels(tmp_path, train):
    heldout_sims, _ = audit.search(_textures(40, seed=4), train)
    thresholds = audit.calibrate(heldout_sims)
    candidates = np.concatenate([_textures(30, seed=3), train[:8]])
    sims, index = audit.search(candidates, train)
    flags = audit.flagged(sims, thresholds)
    closest = [
        {
            "synthetic_case_id": None if flags[k] else f"synthetic-{k}",
            "train_case_id": f"train-{index['windowed'][k]}",
            "similarity": {m: float(sims[m][k]) for m in audit.MEASURES},
            "flagged": bool(flags[k]),
            "image": None if flags[k] else candidates[k],
        }
        for k in (37, 30, 0, 1)
    ]
    membership = {"auc": 0.5, "tpr_at_1pct_fpr": 0.0}

    def write(out_dir, closest_pairs, closest_written=None):
        return report.write_audit_report(
            out_dir,
            candidate_sims=sims,
            heldout_sims=heldout_sims,
            thresholds=thresholds,
            rejected_count=int(flags.sum()),
            closest=closest_pairs,
            closest_written=closest_written,
            membership=membership,
        )

    written = write(tmp_path, closest)
    on_disk = json.loads((tmp_path / "audit.json").read_text())
    assert on_disk == written
    assert on_disk["thresholds"] == pytest.approx(thresholds)
    assert on_disk["num_candidates"] == 38 and on_disk["rejected_count"] == flags.sum() >= 8
    ncc = on_disk["similarity"]["ncc"]["candidates"]
    assert ncc["q99"] == pytest.approx(np.quantile(sims["ncc"], 0.99))
    windowed = on_disk["similarity"]["windowed"]["heldout"]
    assert windowed["mean"] == pytest.approx(heldout_sims["windowed"].mean())
    expected_u = scipy.stats.mannwhitneyu(1 - sims["ncc"], 1 - heldout_sims["ncc"]).statistic
    assert on_disk["memorization_test"]["meehan"]["ncc"]["u"] == pytest.approx(expected_u)
    assert on_disk["memorization_test"]["copying"]  # 8 verbatim copies in 38
    assert on_disk["membership_inference"] == membership
    assert on_disk["closest_pairs"][0]["train_case_id"] == "train-7"
    assert all("image" not in pair for pair in on_disk["closest_pairs"])
    for name, min_height in [("audit_similarity_hist.png", 300), ("audit_closest_pairs.png", 200)]:
        with Image.open(tmp_path / name) as image:
            assert image.height >= min_height
            assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas
    # When every closest candidate was rejected, the picture still lists them, one row each.
    rejected = [dict(pair, image=None, synthetic_case_id=None, flagged=True) for pair in closest]
    # The closest written images then get their own picture and list.
    kept = [pair for pair in closest if pair["image"] is not None]
    assert len(kept) == 2
    on_disk = write(tmp_path / "all_rejected", rejected, kept)
    assert on_disk["closest_written"] == [
        {k: v for k, v in pair.items() if k != "image"} for pair in kept
    ]
    for name, pairs in [("audit_closest_pairs.png", rejected), ("audit_closest_written.png", kept)]:
        with Image.open(tmp_path / "all_rejected" / name) as image:
            assert image.height >= 100 * len(pairs)
            assert np.asarray(image.convert("L")).std() > 10
    assert written["closest_written"] is None
    assert not (tmp_path / "audit_closest_written.png").exists()
