"""Fidelity checks: the segmenter, box IoU on constructed masks, device shortcut, conditioning."""

import numpy as np
import pytest
from scipy import special

from busgen_jax.evaluation import fidelity, generative
from busgen_jax.models import segmenter

SIZE = 32


def _blobs(seed, n):
    """Dark speckled images with one bright disc each, the disc's mask, and its box mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.clip(rng.normal(-0.5, 0.25, (n, SIZE, SIZE)), -1, 1).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.float32)
    boxes = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx, r = rng.integers(8, SIZE - 8), rng.integers(8, SIZE - 8), rng.integers(3, 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks[i], images[i][disc] = disc, 0.7
        boxes[i, cy - r : cy + r + 1, cx - r : cx + r + 1] = 1.0
    return images, masks, boxes


@pytest.fixture(scope="module")
def trained():
    images, masks, _ = _blobs(0, 48)
    model, losses = segmenter.train_segmenter(
        images, masks, seed=0, steps=120, batch_size=8, learning_rate=1e-2, channels=(4, 8)
    )
    return model, losses


def test_segmenter_learns_a_visible_blob(trained):
    model, losses = trained
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    images, masks, boxes = _blobs(1, 16)
    predicted = segmenter.predict_masks(model, images)
    truth = masks > 0.5
    iou = (predicted & truth).sum((1, 2)) / (predicted | truth).sum((1, 2))
    assert iou.mean() > 0.7
    # The discs sit inside their boxes: the box IoU of a found disc is its bounding box's.
    result = fidelity.box_fidelity(predicted, boxes)
    assert result["fraction_box_iou_above"] > 0.8 and result["inside_box"]["q50"] > 0.9


def test_segmenter_rejects_bad_masks():
    with pytest.raises(ValueError, match="must be 0/1"):
        segmenter.train_segmenter(np.zeros((2, 8, 8)), np.full((2, 8, 8), 0.5), seed=0, steps=1)


def test_losses_match_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    masks = (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)
    p = special.expit(logits.astype(np.float64))
    bce = -np.mean(masks * np.log(p) + (1 - masks) * np.log(1 - p))
    dice = np.mean(
        [
            1 - (2 * np.sum(p[i] * masks[i]) + 1) / (p[i].sum() + masks[i].sum() + 1)
            for i in range(3)
        ]
    )
    assert float(segmenter.soft_dice_loss(logits, masks)) == pytest.approx(dice, rel=1e-5)
    assert float(segmenter.segmentation_loss(logits, masks)) == pytest.approx(bce + dice, rel=1e-5)


def _rect(y0, y1, x0, x1, size=20):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_box_fidelity_on_constructed_masks():
    box = _rect(4, 12, 4, 12)  # 8 x 8
    shifted = _rect(4, 12, 8, 16)  # overlaps half of the box: IoU 32 / 96
    inner = _rect(6, 10, 6, 10) | _rect(4, 5, 4, 12)  # a square and a bar on the box's top edge
    empty = np.zeros_like(box)
    predicted = np.stack([box, shifted, inner, empty, box])
    boxes = np.stack([box, box, box, box, empty])  # the last image requested no box
    result = fidelity.box_fidelity(predicted, boxes, min_pixels=4)
    assert result["n"] == 4 and result["n_without_box"] == 1
    # inner: component boxes are the 4x4 square and the 1x8 bar: (16 + 8) / 64.
    box_iou = np.array([1.0, 32 / 96, 24 / 64, 0.0])
    assert result["box_iou"]["mean"] == pytest.approx(box_iou.mean())
    assert result["box_iou"]["q50"] == pytest.approx(np.median(box_iou))
    assert result["fraction_box_iou_above"] == 0.25
    assert result["detected"] == 0.75
    assert result["mask_iou"]["mean"] == pytest.approx(np.mean([1.0, 32 / 96, 24 / 64, 0.0]))
    assert result["inside_box"]["mean"] == pytest.approx(np.mean([1.0, 0.5, 1.0, 0.0]))
    assert sum(result["box_iou_histogram"]) == 4


def test_component_boxes_drop_specks():
    mask = np.zeros((16, 16), bool)
    mask[2:5, 2:4] = True  # 6 pixels
    mask[9, 9:12] = mask[10:13, 11] = True  # an L of 6 pixels, bounding box 4 x 3
    mask[14, 1] = True  # a speck
    expected = _rect(2, 5, 2, 4, 16) | _rect(9, 13, 9, 12, 16)
    assert np.array_equal(fidelity.component_boxes(mask, min_pixels=4), expected)


def test_device_shortcut_finds_device_information():
    rng = np.random.default_rng(3)
    devices = np.repeat(["a", "b", "c"], 40)
    noise = rng.standard_normal((120, 6))
    shifted = noise + 3.0 * (devices[:, None] == np.array(["a", "b", "c", "a", "b", "c"]))
    carried = fidelity.device_shortcut(shifted, devices, seed=0)
    blind = fidelity.device_shortcut(noise, devices, seed=0)
    assert carried["auc"] > 0.95 and carried["balanced_accuracy"] > 0.85
    assert abs(blind["auc"] - 0.5) < 0.15
    assert carried["devices"] == {"a": 40, "b": 40, "c": 40} and carried["chance_accuracy"] == 1 / 3
    two = fidelity.device_shortcut(shifted[:80], devices[:80], seed=0)
    assert two["auc"] > 0.95
    with pytest.raises(ValueError, match="device 'c' has 1 image"):
        fidelity.device_shortcut(noise[:81], devices[:81], seed=0)


def test_conditioning_accuracy_by_hand():
    pathology = ["benign", "benign", "malignant", "malignant", "malignant", "normal"]
    device = ["x", "y", "x", "y", "y", "x"]
    probabilities = [0.2, 0.7, 0.9, 0.4, 0.6, 0.99]
    result = fidelity.conditioning_accuracy(
        probabilities, pathology, device, negative=("benign",), positive=("malignant",)
    )
    # Correct calls: benign 0.2 yes, 0.7 no; malignant 0.9 yes, 0.4 no, 0.6 yes; normal left out.
    assert result["accuracy"] == pytest.approx(3 / 5) and result["n_left_out"] == 1
    assert result["per_class"] == {
        "benign": {"accuracy": 0.5, "n": 2},
        "malignant": {"accuracy": 2 / 3, "n": 3},
    }
    assert result["per_device"] == {
        "x": {"accuracy": 1.0, "n": 2},
        "y": {"accuracy": 1 / 3, "n": 3},
    }


def test_evaluate_fidelity_composes_the_parts(trained):
    model, _ = trained
    images, masks, boxes = _blobs(4, 40)
    devices = np.array(["a", "b"] * 20)
    pathology = np.array(["benign"] * 20 + ["malignant"] * 20)
    real = {
        "image": images,
        "box_mask": boxes,
        "device": devices,
        "pathology": pathology,
        "case_id": [f"r{i}" for i in range(40)],
    }
    syn_images, _, syn_boxes = _blobs(5, 30)
    synthetic = {
        "image": syn_images,
        "box_mask": syn_boxes,
        "device": devices[:30],
        "pathology": pathology[5:35],
        "case_id": [f"s{i}" for i in range(30)],
    }
    # Simple feature maps: pooled intensity statistics, and a device-revealing variant.
    pooled = lambda x: np.stack([x.mean((1, 2)), x.std((1, 2)), (x > 0).mean((1, 2))], axis=1)
    leaky = lambda x: np.concatenate([pooled(x), (np.arange(len(x)) % 2)[:, None] * 1.0], axis=1)
    results = fidelity.evaluate_fidelity(
        real,
        synthetic,
        features={"real": pooled, "leaky": leaky},
        probabilities=lambda x: (x > 0).mean((1, 2)) * 10,
        negative=("benign",),
        positive=("malignant",),
        seg_model=model,
        seed=0,
        real_masks={f"r{i}": masks[i] for i in range(40)},
        kid_subsets=5,
        kid_subset_size=10,
    )
    direct = generative.compare_feature_sets(
        pooled(images), pooled(syn_images), seed=0, kid_subsets=5, kid_subset_size=10
    )
    assert results["generative"] == direct
    assert results["device_shortcut"]["leaky"]["auc"] == 1.0
    assert results["device_shortcut"]["real"] == fidelity.device_shortcut(
        pooled(images), devices, seed=0
    )
    assert results["conditioning"]["n"] == 30
    assert results["boxes"]["n"] == 30
    assert results["segmenter_real_dice"]["mean"] > 0.7
