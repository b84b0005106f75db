"""Copy detection: the planted-copy battery, windowed NCC against brute force, the verdict."""

import io

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from busgen_jax.data import phantom, schema
from busgen_jax.privacy import audit, copy_detection


def _phantom(num: int, seed: int) -> np.ndarray:
    records = phantom.phantom_records(num, seed, 64)
    return np.stack([schema.decode_png(r["image"]) for r in records]).astype(np.float32)


def _shift(x, rng, most=8.0):  # 1 to `most` px in any direction
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, most)
    offset = (radius * np.sin(angle), radius * np.cos(angle))
    return scipy.ndimage.shift(x, offset, order=1, mode="reflect")


def _crop(x, rng):  # an 80-95% crop anywhere in the image, resized back
    f = rng.uniform(0.8, 0.95)
    h, w = x.shape
    ch, cw = round(h * f), round(w * f)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(x[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32), "F")
    return np.asarray(crop.resize((w, h), Image.BILINEAR))


def _rotate(x, rng):
    return scipy.ndimage.rotate(x, rng.uniform(-10, 10), reshape=False, order=1, mode="reflect")


def _jpeg(x, rng):
    buffer = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=int(rng.integers(30, 75))
    )
    return np.asarray(Image.open(buffer), np.float32)


def _noise(x, rng):
    return x + rng.normal(0, 12, x.shape)


def _blur(x, rng):
    return scipy.ndimage.gaussian_filter(x, rng.uniform(0.5, 1.5))


def _contrast(x, rng):  # gamma, gain and offset
    gamma = rng.uniform(0.6, 1.6)
    return 255 * (np.clip(x, 0, 255) / 255) ** gamma * rng.uniform(0.7, 1.0) + rng.uniform(0, 30)


def _flip(x, rng):
    return x[:, ::-1]


BATTERY = {
    "exact": [],
    "noise": [_noise],
    "flip": [_flip],
    "blur": [_blur],
    "jpeg": [_jpeg],
    "shift": [_shift],
    "crop": [_crop],
    "rotation": [_rotate],
    "contrast": [_contrast],
    "shift+rotation": [_shift, _rotate],
    "crop+rotation+noise": [_crop, _rotate, _noise],
    "flip+shift+contrast+jpeg": [_flip, _shift, _contrast, _jpeg],
    "crop+shift+blur": [_crop, lambda x, rng: _shift(x, rng, 4.0), _blur],
}


def _planted(train: np.ndarray, name: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for image in train:
        x = image.astype(np.float64)
        for transform in BATTERY[name]:
            x = transform(x, rng)
        out.append(x)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def calibrated():
    train = _phantom(40, seed=0)
    heldout_sims, _ = audit.search(_phantom(150, seed=1), train)
    return train, heldout_sims, audit.calibrate(heldout_sims, 0.999)


def test_planted_copy_battery_is_flagged_and_new_images_are_not(calibrated):
    """64-px phantom images compared at 32 px; thresholds at the held-out 99.9th percentile."""
    train, heldout_sims, thresholds = calibrated
    copies = np.concatenate([_planted(train[:20], name, k) for k, name in enumerate(BATTERY)])
    sims, index = audit.search(copies, train)
    flagged = audit.flagged(sims, thresholds)
    per_kind = flagged.reshape(len(BATTERY), 20).mean(axis=1)
    assert flagged.mean() >= 0.99, dict(zip(BATTERY, per_kind, strict=True))
    # The copy is matched to its own source (or that source's mirror) by the windowed measure.
    source = np.tile(np.arange(20), len(BATTERY))
    assert (index["windowed"] == source).mean() >= 0.99
    fresh_sims, _ = audit.search(_phantom(150, seed=2), train)
    other_heldout, _ = audit.search(_phantom(150, seed=3), train)
    assert audit.flagged(fresh_sims, thresholds).mean() <= 0.05
    assert audit.flagged(other_heldout, thresholds).mean() <= 0.05


def test_plain_ncc_misses_what_the_windowed_measure_catches(calibrated):
    train, _, thresholds = calibrated
    moved = np.stack([_shift(x, np.random.default_rng(k), 8.0) for k, x in enumerate(train[:10])])
    cropped = _planted(train[:10], "crop", 1)
    for copies in (moved, cropped):
        sims, _ = audit.search(copies, train)
        assert (sims["ncc"] <= thresholds["ncc"]).mean() >= 0.5
        assert (sims["windowed"] > thresholds["windowed"]).all()


def _brute_force_windowed(candidates, reference, size, shift):
    """Pearson correlation of each candidate's centre with every reference window, in numpy."""

    def small(image):
        return np.asarray(copy_detection.gray_resize(image[None], size))[0].astype(np.float64)

    t = size - 2 * shift
    best = np.full((len(candidates), len(reference)), -np.inf)
    for i, c in enumerate(candidates):
        centre = small(c)[shift : shift + t, shift : shift + t].ravel()
        for j, r in enumerate(reference):
            r = small(r)
            for dy in range(2 * shift + 1):
                for dx in range(2 * shift + 1):
                    window = r[dy : dy + t, dx : dx + t].ravel()
                    best[i, j] = max(best[i, j], np.corrcoef(centre, window)[0, 1])
    return best.max(1), best.argmax(1)


def test_windowed_ncc_matches_brute_force():
    rng = np.random.default_rng(0)
    reference = scipy.ndimage.gaussian_filter(rng.normal(size=(5, 16, 16)), (0, 1.5, 1.5))
    candidates = scipy.ndimage.gaussian_filter(rng.normal(size=(4, 16, 16)), (0, 1.5, 1.5))
    candidates[0] = np.roll(reference[3], (2, -1), axis=(0, 1)) * 3 + 1
    kw = {"size": 16, "max_shift_fraction": 0.125, "scales": (1.0,), "angles": (0.0,)}
    sims, idx = copy_detection.windowed_nearest_neighbours(
        candidates, reference, band=None, include_flips=False, chunk=3, reference_chunk=2, **kw
    )
    expected, expected_idx = _brute_force_windowed(candidates, reference, 16, 2)
    np.testing.assert_allclose(sims, expected, atol=1e-4)
    np.testing.assert_array_equal(idx, expected_idx)
    assert idx[0] == 3 and sims[0] > 0.99


def test_copying_verdict_catches_a_third_planted_copies(calibrated):
    train, heldout_sims, _ = calibrated
    fresh = _phantom(30, seed=4)
    new_only, _ = audit.search(fresh, train)
    assert not audit.copying_verdict(new_only, heldout_sims)["copying"]
    mixed = np.concatenate([fresh[:20], train[:10]])
    sims, _ = audit.search(mixed, train)
    verdict = audit.copying_verdict(sims, heldout_sims)
    assert verdict["copying"] and verdict["interpretation"].startswith("copying")
    assert verdict["excess"]["flagged"] >= 10


def test_memorization_rates_are_flag_fractions_at_each_quantile(calibrated):
    train, heldout_sims, _ = calibrated
    sims, _ = audit.search(np.concatenate([_phantom(30, seed=5), train[:10]]), train)
    rates = audit.memorization_rates(sims, heldout_sims)
    assert [r["quantile"] for r in rates] == [0.95, 0.99, 0.999]
    for rate in rates:
        expected = {m: np.quantile(heldout_sims[m], rate["quantile"]) for m in audit.MEASURES}
        assert rate["thresholds"] == pytest.approx(expected)
        either = (sims["ncc"] > expected["ncc"]) | (sims["windowed"] > expected["windowed"])
        assert rate["candidates_flagged"] == pytest.approx(either.mean())
    assert rates[0]["candidates_flagged"] >= rates[-1]["candidates_flagged"] >= 10 / 40
