"""Tests of the breast ultrasound phantom: determinism, labels, physics and class overlap."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from busgen_jax.core import config_files
from busgen_jax.data import phantom, schema
from busgen_jax.data.phantom import lesions as phantom_lesions
from busgen_jax.data.phantom import tissue as phantom_tissue
from busgen_jax.data.phantom.tissue import DEVICE_BY_NAME


@pytest.fixture(scope="module")
def mixed():
    """The default class and device mix at 32 px."""
    return phantom.generate(96, seed=11, image_size=32)


@pytest.fixture(scope="module")
def lesions():
    """Benign and malignant lesions at 64 px, for the overlap and posterior-feature tests."""
    return phantom.generate(
        240, seed=5, image_size=64, class_probs={"benign": 0.5, "malignant": 0.5}
    )


def _fields_equal(a: dict, b: dict) -> None:
    for key in ("image", "mask", "malignancy_score", "patient_index"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["pathology"] == b["pathology"] and a["device"] == b["device"]
    assert a["birads"] == b["birads"]
    assert len(a["boxes"]) == len(b["boxes"])
    for box_a, box_b in zip(a["boxes"], b["boxes"], strict=True):
        np.testing.assert_array_equal(box_a, box_b)


def test_same_seed_same_bytes_and_other_seed_differs():
    first = phantom.generate(10, seed=3, image_size=32)
    _fields_equal(first, phantom.generate(10, seed=3, image_size=32))
    other = phantom.generate(10, seed=4, image_size=32)
    assert not np.array_equal(first["image"], other["image"])


@pytest.mark.parametrize("start, num", [(5, 4), (0, 1), (9, 11), (3, 0)])
def test_sample_does_not_depend_on_how_many_are_generated(start, num):
    everything = phantom.generate(24, seed=2, image_size=32)
    part = phantom.generate(num, seed=2, image_size=32, start_index=start)
    window = {k: v[start : start + num] for k, v in everything.items()}
    _fields_equal(window, part)


def test_shapes_dtypes_and_label_vocabularies(mixed):
    n = 96
    assert mixed["image"].shape == mixed["mask"].shape == (n, 32, 32)
    assert mixed["image"].dtype == mixed["mask"].dtype == np.uint8
    assert set(np.unique(mixed["mask"])) <= {0, 255}
    assert mixed["malignancy_score"].dtype == np.float32
    assert mixed["malignancy_score"].shape == (n,)
    assert ((mixed["malignancy_score"] >= 0) & (mixed["malignancy_score"] <= 1)).all()
    assert len(mixed["boxes"]) == len(mixed["birads"]) == n
    assert set(mixed["pathology"]) == set(schema.PATHOLOGIES)
    assert set(mixed["device"]) == set(phantom.PHANTOM_DEVICES)
    keys = {
        "shape",
        "orientation",
        "margin",
        "echo_pattern",
        "posterior_features",
        "calcifications",
        "size_mm",
    }
    for pathology, birads, boxes in zip(
        mixed["pathology"], mixed["birads"], mixed["boxes"], strict=True
    ):
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert (birads == {}) == (pathology == "normal")
        if birads:
            assert keys <= set(birads)


def _components(mask: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Normalized xyxy boxes of 8-connected components, by breadth-first search."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    boxes = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, ys, xs = collections.deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
        boxes.append((min(xs) / w, min(ys) / h, (max(xs) + 1) / w, (max(ys) + 1) / h))
    return sorted(boxes)


def test_boxes_are_the_bounding_boxes_of_mask_components(mixed):
    for mask, boxes, pathology in zip(
        mixed["mask"], mixed["boxes"], mixed["pathology"], strict=True
    ):
        expected = _components(mask > 0)
        got = sorted(tuple(float(v) for v in box) for box in boxes)
        np.testing.assert_allclose(
            np.array(got).reshape(-1, 4), np.array(expected).reshape(-1, 4), atol=1e-6
        )
        if pathology == "normal":
            assert not mask.any() and len(boxes) == 0
        else:
            assert len(boxes) >= 1


def test_options_restrict_classes_and_devices():
    out = phantom.generate(
        12, seed=1, image_size=32, class_probs={"dcis": 1.0}, devices=("Phantom-C5-2",)
    )
    assert set(out["pathology"]) == {"dcis"} and set(out["device"]) == {"Phantom-C5-2"}
    with pytest.raises(ValueError, match="class_probs"):
        phantom.generate(2, seed=0, image_size=32, class_probs={"cancer": 1.0})
    with pytest.raises(ValueError, match="devices"):
        phantom.generate(2, seed=0, image_size=32, devices=("GE-LOGIQ-E9",))
    with pytest.raises(ValueError, match="image_size"):
        phantom.generate(2, seed=0, image_size=8)


@pytest.mark.parametrize("name", phantom.PHANTOM_DEVICES)
def test_speckle_is_rayleigh(name):
    """Fully developed speckle: envelope mean/std = sqrt(pi / (4 - pi)) = 1.913 and the
    log-compressed speckle has std (20 / ln 10) * pi / sqrt(24) = 5.57 dB (Burckhardt 1978)."""
    device = DEVICE_BY_NAME[name]
    kernel = phantom.psf_kernel(device, device.depth_mm / 128, device.lateral_mm / 64)
    scatterers = np.random.default_rng(0).standard_normal((6, 128, 64)).astype(np.float32)
    env = phantom.envelope(phantom.rf_echo(scatterers, kernel))[:, 16:-16, 12:-12]
    assert env.mean() / env.std() == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), rel=0.04)
    db = 20 * np.log10(env)
    assert db.std() == pytest.approx(20 / np.log(10) * np.pi / np.sqrt(24), rel=0.05)


def _texture_stats(images: np.ndarray) -> np.ndarray:
    """Per image: mean, std, fraction of black pixels, and the lateral and axial lag-1
    correlation of the speckle (image minus its local mean) in the central region."""
    x = images.astype(np.float32)
    s = x.shape[1]
    centre = x[:, s // 4 : 3 * s // 4, 3 * s // 8 : 5 * s // 8]
    detail = centre - ndimage.uniform_filter(centre, (1, 5, 5))

    def corr(a, b):
        a, b = a - a.mean((1, 2), keepdims=True), b - b.mean((1, 2), keepdims=True)
        return (a * b).mean((1, 2)) / np.sqrt((a * a).mean((1, 2)) * (b * b).mean((1, 2)))

    lateral = corr(detail[:, :, 1:], detail[:, :, :-1])
    axial = corr(detail[:, 1:], detail[:, :-1])
    return np.stack([x.mean((1, 2)), x.std((1, 2)), (x == 0).mean((1, 2)), lateral, axial], 1)


def test_devices_differ_measurably():
    stats = {
        name: _texture_stats(
            phantom.generate(
                16, seed=9, image_size=64, class_probs={"normal": 1.0}, devices=(name,)
            )["image"]
        )
        for name in phantom.PHANTOM_DEVICES
    }
    # Coarser resolution cell of the low-frequency convex probe: more correlated speckle.
    speckle_size = {name: (s[:, 3] + s[:, 4]).mean() for name, s in stats.items()}
    assert speckle_size["Phantom-C5-2"] > speckle_size["Phantom-L18-4"] + 0.05
    # The sector field of view leaves black corners; linear probes fill the frame.
    assert stats["Phantom-C5-2"][:, 2].mean() > 0.1 > stats["Phantom-L12-5"][:, 2].mean()
    # Device is recoverable from these five statistics alone (a device shortcut exists).
    features = np.concatenate(list(stats.values()))
    labels = np.repeat(np.arange(len(stats)), 16)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    predicted = cross_val_predict(model, features, labels, cv=4)
    assert (predicted == labels).mean() > 0.8


def _lesion_features(image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> list[float]:
    """Hand-made statistics a reader might use: echogenicity, contrast, posterior ratio, size,
    shape irregularity, orientation."""
    h, w = image.shape
    x = image.astype(np.float32)
    inside = mask > 0
    ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
    x1, y1, x2, y2 = (np.asarray(box) * [w, h, w, h]).astype(int)
    below = x[y2 : min(h, y2 + 10), x1:x2].mean() if y2 < h - 2 else x[inside].mean()
    beside = x[y2 : min(h, y2 + 10)].mean() if y2 < h - 2 else x.mean()
    perimeter = (inside & ~ndimage.binary_erosion(inside)).sum()
    return [
        x[inside].mean(),
        x[ring].mean() - x[inside].mean(),
        below / (beside + 1),
        np.log(inside.sum()),
        perimeter**2 / inside.sum(),
        (y2 - y1) / (x2 - x1),
    ]


def test_benign_and_malignant_overlap_but_are_separable(lesions):
    features, labels = [], []
    for image, mask, boxes, pathology in zip(
        lesions["image"], lesions["mask"], lesions["boxes"], lesions["pathology"], strict=True
    ):
        largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        features.append(_lesion_features(image, mask, largest))
        labels.append(pathology == "malignant")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(model, np.array(features), labels, cv=5, method="predict_proba")
    auc = roc_auc_score(labels, scores[:, 1])
    assert 0.7 < auc < 0.97, auc


def test_malignancy_score_is_informative_not_perfect(mixed, lesions):
    cancer = np.array([p == "malignant" for p in lesions["pathology"]])
    auc = roc_auc_score(cancer, lesions["malignancy_score"])
    assert 0.75 < auc < 0.98, auc
    normal = np.array([p == "normal" for p in mixed["pathology"]])
    assert np.median(mixed["malignancy_score"][normal]) < 0.1


def test_posterior_features_follow_attenuation(lesions):
    ratios = collections.defaultdict(list)
    for image, boxes, birads in zip(
        lesions["image"], lesions["boxes"], lesions["birads"], strict=True
    ):
        x1, y1, x2, y2 = (boxes[0] * 64).astype(int)
        if y2 > 48 or x2 - x1 < 4:
            continue
        below = image[y2 + 1 : y2 + 12, x1:x2].astype(float).mean()
        side = (
            np.concatenate(
                [
                    image[y2 + 1 : y2 + 12, max(0, x1 - 8) : x1],
                    image[y2 + 1 : y2 + 12, x2 : x2 + 8],
                ],
                axis=1,
            )
            .astype(float)
            .mean()
        )
        ratios[birads["posterior_features"]].append(below / (side + 1))
    assert np.mean(ratios["shadowing"]) < 0.8 < np.mean(ratios["no posterior features"])
    assert np.mean(ratios["enhancement"]) > np.mean(ratios["no posterior features"])


def test_records_follow_schema_with_patient_level_splits():
    records = list(phantom.phantom_records(40, seed=6, image_size=32))
    direct = phantom.generate(40, seed=6, image_size=32)
    assert len({r["case_id"] for r in records}) == 40
    split_of = {}
    for record, image in zip(records, direct["image"], strict=True):
        schema.validate(record)
        np.testing.assert_array_equal(schema.decode_png(record["image"]), image)
        assert record["provenance"] == {
            "source": "phantom",
            "seed": 6,
            "generator": "busgen_jax.phantom/1",
        }
        assert split_of.setdefault(record["patient_id"], record["split"]) == record["split"]
    per_patient = collections.Counter(r["patient_id"] for r in records)
    assert max(per_patient.values()) == 2 and 20 < len(per_patient) < 40
    assert {r["split"] for r in records} == set(schema.SPLITS)


def test_satellite_masses_give_a_second_box(monkeypatch):
    monkeypatch.setattr(phantom_lesions, "SATELLITE_PROBABILITY", 1.0)
    out = phantom.generate(16, seed=8, image_size=48, class_probs={"benign": 1.0})
    assert all(b["lesion_count"] == 2 for b in out["birads"])
    assert np.mean([len(boxes) >= 2 for boxes in out["boxes"]]) >= 0.75


@pytest.fixture(scope="module")
def early():
    """Benign and DCIS lesions at 64 px, the early-diagnosis task."""
    return phantom.generate(160, seed=12, image_size=64, class_probs={"benign": 0.5, "dcis": 0.5})


def test_dcis_mostly_forms_masses_and_benign_lesions_are_mostly_solid(early):
    by_class = collections.defaultdict(list)
    for pathology, birads in zip(early["pathology"], early["birads"], strict=True):
        by_class[pathology].append(birads)
    dcis = collections.Counter(b["presentation"] for b in by_class["dcis"])
    # Mass, non-mass area and ductal change all occur; masses are the most common.
    assert set(dcis) == set(phantom_lesions.PRESENTATIONS)
    assert dcis["mass"] > max(dcis["non-mass area"], dcis["ductal"])
    cysts = np.mean([b["echo_pattern"] == "anechoic" for b in by_class["benign"]])
    solid_oval = np.mean(
        [
            b["shape"] == "oval"
            and b["margin"] == "circumscribed"
            and b["echo_pattern"] != "anechoic"
            for b in by_class["benign"]
        ]
    )
    assert 0.1 < cysts < 0.45 and solid_oval > 0.15
    for b in by_class["benign"] + by_class["dcis"]:
        if b["presentation"] != "mass":
            assert b["shape"] == "non-mass" and b["echo_pattern"] != "anechoic"


def test_dcis_lesions_are_hypoechoic_and_calcifications_are_visible(early):
    """Read off the pixels: a DCIS mass is darker than the ring of tissue around it, markedly
    hypoechoic lesions are darker than mildly hypoechoic ones, and echogenic foci make the
    brightest pixels of a lesion brighter than in one without them."""
    contrast, peak, level = [], collections.defaultdict(list), collections.defaultdict(list)
    for image, mask, pathology, birads in zip(
        early["image"], early["mask"], early["pathology"], early["birads"], strict=True
    ):
        inside = mask > 0
        ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
        x = image.astype(np.float32)
        if pathology == "dcis" and birads["presentation"] == "mass" and inside.sum() > 20:
            contrast.append(x[ring].mean() - x[inside].mean())
        if inside.sum() > 20 and birads["echo_pattern"] == "hypoechoic":
            peak[birads["calcifications"] != "none"].append(np.percentile(x[inside], 95))
            level[birads["marked_hypoechogenicity"]].append(np.median(x[inside]))
    assert np.median(contrast) > 10
    assert np.median(level[True]) < np.median(level[False]) - 10
    assert np.median(peak[True]) > np.median(peak[False]) + 10


def test_malignancy_score_ranks_dcis_above_benign_but_not_perfectly(early):
    dcis = np.array([p == "dcis" for p in early["pathology"]])
    auc = roc_auc_score(dcis, early["malignancy_score"])
    assert 0.7 < auc < 0.97, auc


@pytest.mark.parametrize("artifact", ["REVERBERATION_PROBABILITY", "REFRACTION_SHADOW_PROBABILITY"])
def test_artifacts_change_only_what_they_should(monkeypatch, artifact):
    """The same tissue with and without an artifact (the random draws do not depend on its
    probability): reverberation brightens the near field, a refraction shadow darkens a
    narrow column below the fat."""

    def images(probability):
        monkeypatch.setattr(phantom_tissue, artifact, probability)
        out = phantom.generate(
            16, seed=4, image_size=64, class_probs={"normal": 1.0}, devices=("Phantom-L12-5",)
        )
        return out["image"].astype(np.float32)

    without, with_ = images(0.0), images(1.0)
    diff = with_ - without
    if artifact == "REVERBERATION_PROBABILITY":
        # The display is referenced to the mean echo, so the deep field dims a little.
        assert diff[:, :16].mean() > 5.0 and abs(diff[:, 40:].mean()) < 2.0
    else:
        columns = diff[:, 24:].mean(1)  # [images, cols], below the subcutaneous fat
        assert np.median(columns.min(1)) < -10  # each image has a dark column
        assert np.median(np.abs(np.median(columns, 1))) < 2  # most columns are untouched


def test_foundation_preset_labels_dcis_malignant():
    config = config_files.load("configs/phantom.py:foundation")
    assert config.num_images >= 20000 and config.image_size == 64 and not config.devices
    assert config.seed != config_files.load("configs/demo.py:default").seed
    records = list(
        phantom.phantom_records(
            48, config.seed, 32, split_fractions=config.split_fractions, label_map=config.label_map
        )
    )
    truth = phantom.generate(48, config.seed, 32)["pathology"]
    assert "dcis" in truth
    for record, pathology in zip(records, truth, strict=True):
        expected = "malignant" if pathology == "dcis" else pathology
        assert record["pathology"] == expected
    assert {r["pathology"] for r in records} == {"normal", "benign", "malignant"}
    assert all(len(r["boxes"]) > 0 for r in records if r["pathology"] != "normal")
    with pytest.raises(ValueError, match="label_map"):
        next(phantom.phantom_records(2, 0, 32, label_map={"dcis": "cancer"}))
