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

from busgen_jax.data import phantom, phantom_lesions, schema
from busgen_jax.data.phantom_tissue import DEVICE_BY_NAME


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
