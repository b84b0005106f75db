"""Fidelity of a synthetic dataset: generative quality, device shortcut, conditioning and boxes.

* Generative quality: FD, KID, precision/recall and density/coverage of the synthetic images
  against the real test images, in the feature space of a classifier trained on real data (the
  pooled penultimate features, `inference.extract_features`), beside a real-vs-real baseline.
  Features of a classifier trained on the domain say more about BUS images than ImageNet
  Inception features, but depend on that classifier: compare numbers within one feature space.
* Device shortcut: how well a classifier's features predict the scanner (cross-validated
  logistic regression), for classifiers trained on real and on synthetic data. A high AUC means
  the features carry the device, which a classifier can use as a shortcut.
* Conditioning fidelity: the real-data classifier's accuracy on synthetic images per requested
  class and per requested device.
* Box fidelity: a small segmenter (`models.segmenter`) trained on real lesion masks must find
  the generated lesion inside the requested box: the IoU between the predicted lesion (as the
  bounding boxes of its connected components) and the requested box region, and the fraction
  above 0.5; also the pixel IoU of the predicted lesion with the box region, and the share of
  predicted lesion pixels inside it.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn import linear_model, metrics, model_selection, pipeline, preprocessing

from busgen_jax.data import schema, shards
from busgen_jax.evaluation import generative
from busgen_jax.models import segmenter

IOU_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def device_shortcut(
    features: Any, devices: Sequence[str], *, seed: int, folds: int = 5
) -> dict[str, Any]:
    """Cross-validated AUC of a logistic regression predicting the device from features.

    Standardized features, L2-regularized logistic regression, stratified k-fold out-of-fold
    probabilities; the AUC is binary for two devices and the macro one-vs-rest AUC for more
    (0.5 = no device information).
    """
    features = generative.check_features(features, "features")
    devices = np.asarray(devices)
    if devices.shape != (features.shape[0],):
        raise ValueError(f"'devices' has {devices.size} entries for {features.shape[0]} features")
    names, counts = np.unique(devices, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"device shortcut needs at least 2 devices, got {names.tolist()}")
    if counts.min() < 2:
        raise ValueError(
            f"device {str(names[counts.argmin()])!r} has {counts.min()} image; need >= 2"
        )
    folds = int(min(folds, counts.min()))
    probe = pipeline.make_pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(max_iter=2000)
    )
    split = model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = model_selection.cross_val_predict(
        probe, features, devices, cv=split, method="predict_proba"
    )
    if len(names) == 2:
        auc = metrics.roc_auc_score(devices == names[1], proba[:, 1])
    else:
        auc = metrics.roc_auc_score(devices, proba, multi_class="ovr", labels=names)
    return {
        "auc": float(auc),
        "balanced_accuracy": float(
            metrics.balanced_accuracy_score(devices, names[proba.argmax(1)])
        ),
        "chance_accuracy": 1.0 / len(names),
        "folds": folds,
        "devices": dict(zip(names.tolist(), counts.tolist(), strict=True)),
    }


def conditioning_accuracy(
    probabilities: Any,
    pathology: Sequence[str],
    device: Sequence[str],
    *,
    negative: Sequence[str],
    positive: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Accuracy of a binary classifier's calls (probability >= threshold is positive) against
    the requested class of each synthetic image, overall, per class and per device. Images of
    classes outside the task (neither negative nor positive) are left out."""
    probabilities = np.asarray(probabilities, np.float64)
    pathology, device = np.asarray(pathology), np.asarray(device)
    if not probabilities.shape == pathology.shape == device.shape:
        raise ValueError("probabilities, pathology and device must have one entry per image")
    in_task = np.isin(pathology, [*negative, *positive])
    if not in_task.any():
        raise ValueError(f"no image of the task's classes {[*negative, *positive]}")
    correct = (probabilities >= threshold) == np.isin(pathology, positive)

    def by(groups: np.ndarray) -> dict[str, dict[str, float]]:
        return {
            str(g): {
                "accuracy": float(correct[in_task & (groups == g)].mean()),
                "n": int(np.sum(in_task & (groups == g))),
            }
            for g in np.unique(groups[in_task])
        }

    return {
        "accuracy": float(correct[in_task].mean()),
        "n": int(in_task.sum()),
        "n_left_out": int((~in_task).sum()),
        "threshold": threshold,
        "per_class": by(pathology),
        "per_device": by(device),
    }


def component_boxes(mask: np.ndarray, min_pixels: int = 4) -> np.ndarray:
    """Boolean mask of the union of the bounding boxes of `mask`'s 8-connected components of at
    least `min_pixels` pixels (smaller specks are segmentation noise)."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    out = np.zeros(mask.shape, bool)
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is not None and np.sum(labels[region] == k) >= min_pixels:
            out[region] = True
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image IoU of boolean masks [N, H, W]; 0 where the union is empty."""
    inter = np.sum(a & b, axis=(1, 2))
    union = np.sum(a | b, axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def box_fidelity(
    predicted: Any, box_masks: Any, *, iou_threshold: float = 0.5, min_pixels: int = 4
) -> dict[str, Any]:
    """Agreement of predicted lesion masks [N, H, W] with requested box regions [N, H, W].

    Images without a requested box are left out. Per image: `box_iou` between the predicted
    lesion's component bounding boxes and the box region (1 for a lesion filling its box
    exactly), `mask_iou` between the predicted pixels and the box region (about pi/4 for an
    ellipse inscribed in its box), and `inside`, the share of predicted pixels in the box.
    """
    predicted, boxes = np.asarray(predicted, bool), np.asarray(box_masks) > 0.5
    if predicted.shape != boxes.shape or predicted.ndim != 3:
        raise ValueError(
            f"predicted {predicted.shape} and box masks {boxes.shape} must be the "
            "same [N, H, W] shape"
        )
    has_box = boxes.any(axis=(1, 2))
    predicted, boxes = predicted[has_box], boxes[has_box]
    pred_boxes = (
        np.stack([component_boxes(m, min_pixels) for m in predicted])
        if len(predicted)
        else predicted
    )
    box_iou = _iou(pred_boxes, boxes)
    area = predicted.sum(axis=(1, 2))
    inside = np.where(area > 0, np.sum(predicted & boxes, axis=(1, 2)) / np.maximum(area, 1), 0.0)
    return {
        "n": int(has_box.sum()),
        "n_without_box": int((~has_box).sum()),
        "detected": float(np.mean(pred_boxes.any(axis=(1, 2)))) if len(predicted) else float("nan"),
        "box_iou": _summary(box_iou),
        "fraction_box_iou_above": float(np.mean(box_iou > iou_threshold))
        if len(predicted)
        else float("nan"),
        "iou_threshold": iou_threshold,
        "mask_iou": _summary(_iou(predicted, boxes)),
        "inside_box": _summary(inside),
        "box_iou_histogram": np.histogram(box_iou, bins=10, range=(0, 1))[0].tolist(),
    }


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": float("nan")}
    quantiles = np.quantile(values, IOU_QUANTILES)
    return {"mean": float(values.mean())} | {
        f"q{int(q * 100):02d}": float(v) for q, v in zip(IOU_QUANTILES, quantiles, strict=True)
    }


def lesion_masks(dataset_dirs: Sequence[str], split: str, image_size: int) -> dict[str, np.ndarray]:
    """case_id -> {0, 1} lesion mask [image_size, image_size] of every record that has a mask,
    resized as `pipeline.load_split` resizes its image (whole frame, no crop)."""
    out = {}
    for directory in dataset_dirs:
        for record in shards.read_records(directory, split):
            if record.get("mask") is None:
                continue
            mask = Image.fromarray(schema.decode_png(record["mask"]))
            mask = mask.resize((image_size, image_size), Image.Resampling.NEAREST)
            out[record["case_id"]] = (np.asarray(mask) > 127).astype(np.float32)
    return out


def segmenter_on_real(
    train: Mapping[str, Any],
    masks: Mapping[str, np.ndarray],
    *,
    seed: int,
    steps: int,
    channels: Sequence[int],
) -> segmenter.Segmenter:
    """Trains the segmenter on the real images (a `load_split` dict) that have lesion masks."""
    keep = [i for i, case in enumerate(train["case_id"]) if case in masks]
    if not keep:
        raise ValueError("no real training image has a lesion mask to train the segmenter on")
    images = np.asarray(train["image"])[keep]
    targets = np.stack([masks[train["case_id"][i]] for i in keep])
    model, _ = segmenter.train_segmenter(images, targets, seed=seed, steps=steps, channels=channels)
    return model


def evaluate_fidelity(
    real: Mapping[str, Any],
    synthetic: Mapping[str, Any],
    *,
    features: Mapping[str, Any],
    probabilities: Any,
    negative: Sequence[str],
    positive: Sequence[str],
    seg_model: segmenter.Segmenter,
    seed: int,
    real_masks: Mapping[str, np.ndarray] | None = None,
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """All fidelity numbers (see the module docstring).

    Args:
      real, synthetic: `pipeline.load_split` dicts (real test set, synthetic set).
      features: classifier name -> (images [N, H, W] -> features [N, D]); the first is the
        classifier trained on real data, whose space the generative metrics use.
      probabilities: images -> positive-class probabilities of the real-data classifier.
      negative, positive: the classes of that classifier's task.
      seg_model: the segmenter trained on real lesion masks.
      real_masks: case_id -> lesion mask of real test images, to report the segmenter's own
        Dice there (how far its box numbers can be trusted).
      metric_kwargs: passed to `generative.compare_feature_sets` (k_pr, k_dc, kid_subsets ...).
    """
    names = list(features)
    reference = features[names[0]]
    predicted = segmenter.predict_masks(seg_model, synthetic["image"])
    out = {
        "feature_space": f"pooled penultimate features of classifier {names[0]!r}",
        "generative": generative.compare_feature_sets(
            reference(real["image"]), reference(synthetic["image"]), seed=seed, **metric_kwargs
        ),
        "device_shortcut": {
            name: device_shortcut(fn(real["image"]), real["device"], seed=seed)
            for name, fn in features.items()
        },
        "conditioning": conditioning_accuracy(
            probabilities(synthetic["image"]),
            synthetic["pathology"],
            synthetic["device"],
            negative=negative,
            positive=positive,
        ),
        "boxes": box_fidelity(predicted, synthetic["box_mask"]),
        "segmenter_real_dice": None,
    }
    if real_masks:
        keep = [i for i, case in enumerate(real["case_id"]) if case in real_masks]
        truth = np.stack([real_masks[real["case_id"][i]] for i in keep]) > 0.5
        pred = segmenter.predict_masks(seg_model, np.asarray(real["image"])[keep])
        out["segmenter_real_dice"] = _summary(_dice(pred, truth))
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Dice of boolean masks; 1 where both are empty."""
    total = a.sum(axis=(1, 2)) + b.sum(axis=(1, 2))
    return np.where(total > 0, 2 * np.sum(a & b, axis=(1, 2)) / np.maximum(total, 1), 1.0)


def fidelity_from_exports(
    real_paths: Sequence[str],
    synthetic_paths: Sequence[str],
    classifiers: Mapping[str, str],
    *,
    seed: int = 0,
    real_split: str = "test",
    synthetic_split: str = "train",
    segmenter_steps: int = 300,
    segmenter_channels: Sequence[int] = (8, 16, 32),
    out_path: str | os.PathLike | None = None,
    **metric_kwargs: Any,
) -> dict[str, Any]:
    """`evaluate_fidelity` from dataset directories and exported classifiers (name -> export
    dir, the real-data classifier first); the segmenter trains on the real 'train' split.
    Writes the results as JSON to `out_path` when given."""
    from busgen_jax.classification import inference  # the classifier stack only when it is used
    from busgen_jax.data import pipeline

    if not classifiers:
        raise ValueError("'classifiers' is empty: name the classifier trained on real data")
    first = next(iter(classifiers.values()))
    model, config = inference.load_classifier(first)
    size = config.data.image_size
    real = pipeline.load_split(real_paths, real_split, size)
    synthetic = pipeline.load_split(synthetic_paths, synthetic_split, size)
    train = pipeline.load_split(real_paths, "train", size)
    train_masks = lesion_masks(real_paths, "train", size)
    seg_model = segmenter_on_real(
        train, train_masks, seed=seed, steps=segmenter_steps, channels=segmenter_channels
    )
    results = evaluate_fidelity(
        real,
        synthetic,
        features={name: _features_fn(inference, path) for name, path in classifiers.items()},
        probabilities=lambda images: inference.probabilities(model, images),
        negative=config.task.negative,
        positive=config.task.positive,
        seg_model=seg_model,
        seed=seed,
        real_masks=lesion_masks(real_paths, real_split, size),
        **metric_kwargs,
    )
    results["classifiers"] = dict(classifiers)
    if out_path is not None:
        pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(out_path).write_text(json.dumps(results, indent=2))
    return results


def _features_fn(inference: Any, export_dir: str):
    """Features of one classifier; the module is passed in because it is imported lazily."""
    return lambda images: inference.extract_features(export_dir, images)
