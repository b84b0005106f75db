"""Per-class lesion-box priors for synthesis, and rendering boxes into the mask channel.

The generator is conditioned on a lesion-box mask, so synthesis needs plausible boxes per
pathology. A prior holds, per class:

* a Gaussian kernel density estimate (KDE) of box features
  ``f = (cx, cy, log(w / h), log(w * h))`` in normalized image coordinates: centre, log aspect
  ratio and log area. The KDE is joint over the four features, so that size and position stay
  correlated (a large box is never centred at an image edge); the published BUSGen code sampled
  centre, aspect and area independently. Logs keep sampled widths and areas positive.
* the distribution of the number of boxes per image (empirical frequencies), so multi-lesion
  images are reproduced and classes without lesions ("normal") yield no boxes. An image of a
  lesion class without boxes counts as 0 boxes; drop such records first when their boxes were
  merely not annotated.

Sampling a Gaussian KDE is sampling a mixture: pick a training box uniformly, add kernel noise
``N(0, H)``. Hence the sample covariance is ``Cov_emp(f) + H`` (biased empirical covariance),
which the tests check. The kernel covariance ``H`` is chosen by ``bandwidth``:

* ``None``/``"scott"``/``"silverman"``: ``H = factor^2 * Cov(f)`` with Scott's factor
  ``n^(-1/(d+4))`` or Silverman's ``(n (d+2) / 4)^(-1/(d+4))`` (scipy.stats.gaussian_kde).
* ``"cv"``: the factor maximizing 5-fold held-out log-likelihood (scikit-learn KernelDensity on
  whitened features, so its isotropic bandwidth is the same factor).
* a float ``h``: isotropic ``H = h^2 I`` in feature units. The published BUSGen bandwidth 0.001
  nearly resamples the training boxes.

Boxes in records (``boxes`` field of busgen_jax.data.schema) are normalized ``[x1, y1, x2, y2]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

NUM_FEATURES = 4
# Smallest sampled box side (normalized); keeps x1 < x2 and y1 < y2 strict after clamping.
MIN_BOX_SIZE = 1e-3
_FORMAT_VERSION = 1
_CV_FACTORS = np.logspace(-2, 0, 25)


@dataclasses.dataclass(frozen=True)
class BoxPrior:
    """Fitted box prior.

    Attributes:
      class_names: classes in the prior, in a fixed order.
      points: class -> [n, 4] training box features (the KDE centres).
      kernel_cov: class -> [4, 4] kernel covariance H (zeros for a class without boxes).
      count_probs: class -> [K + 1] probabilities of 0..K boxes per image.
      bandwidth: the bandwidth setting used to fit (rule name or float).
    """

    class_names: tuple[str, ...]
    points: dict[str, np.ndarray]
    kernel_cov: dict[str, np.ndarray]
    count_probs: dict[str, np.ndarray]
    bandwidth: str | float


def boxes_to_features(boxes: np.ndarray) -> np.ndarray:
    """Maps [n, 4] xyxy boxes to [n, 4] features (cx, cy, log aspect w/h, log area w*h)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx, cy, np.log(w / h), np.log(w * h)], axis=1)


def features_to_boxes(features: np.ndarray, min_size: float = MIN_BOX_SIZE) -> np.ndarray:
    """Maps [n, 4] features back to xyxy boxes clamped to [0, 1] with x1 < x2, y1 < y2.

    Sides are clipped to [min_size, 1] and centres to [min_size / 2, 1 - min_size / 2], so each
    clamped side keeps at least min_size: a box crossing an edge is cut at the edge.
    """
    features = np.asarray(features, np.float64).reshape(-1, NUM_FEATURES)
    cx, cy, log_aspect, log_area = features.T
    w = np.clip(np.exp((log_area + log_aspect) / 2), min_size, 1.0)
    h = np.clip(np.exp((log_area - log_aspect) / 2), min_size, 1.0)
    cx = np.clip(cx, min_size / 2, 1 - min_size / 2)
    cy = np.clip(cy, min_size / 2, 1 - min_size / 2)
    x1, x2 = np.maximum(cx - w / 2, 0.0), np.minimum(cx + w / 2, 1.0)
    y1, y2 = np.maximum(cy - h / 2, 0.0), np.minimum(cy + h / 2, 1.0)
    return np.stack([x1, y1, x2, y2], axis=1)


def _check_boxes(boxes: Any, where: str) -> np.ndarray:
    array = np.asarray(boxes if boxes is not None else [], np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{where}: field 'boxes' must be [k, 4] xyxy, got shape {array.shape}")
    x1, y1, x2, y2 = array.T
    valid = (0 <= x1) & (x1 < x2) & (x2 <= 1) & (0 <= y1) & (y1 < y2) & (y2 <= 1)
    if not valid.all():
        raise ValueError(f"{where}: field 'boxes' has an invalid normalized box {array[~valid][0]}")
    return array


def group_boxes(
    records_or_boxes_by_class: Iterable[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
) -> dict[str, list[np.ndarray]]:
    """Groups per-image [k, 4] box arrays by class.

    Accepts records of the project schema (``pathology`` and ``boxes`` fields) or a mapping
    class -> list of per-image boxes (each [k, 4], k >= 0).
    """
    source = records_or_boxes_by_class
    if isinstance(source, Mapping) and "pathology" not in source:
        return {
            str(name): [_check_boxes(b, f"class {name!r} image {i}") for i, b in enumerate(images)]
            for name, images in source.items()
        }
    if isinstance(source, Mapping):
        raise TypeError("fit_box_prior takes a list of records, not a single record")
    grouped: dict[str, list[np.ndarray]] = {}
    for i, record in enumerate(source):
        where = f"record {i} (case {record.get('case_id', '?')})"
        if not record.get("pathology"):
            raise ValueError(f"{where}: missing field 'pathology'")
        boxes = _check_boxes(record.get("boxes"), where)
        grouped.setdefault(str(record["pathology"]), []).append(boxes)
    return grouped


def _kernel_cov(points: np.ndarray, bandwidth: str | float | None, name: str) -> np.ndarray:
    """Kernel covariance H for one class (see the module docstring)."""
    if isinstance(bandwidth, int | float) and not isinstance(bandwidth, bool):
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        return np.eye(NUM_FEATURES) * float(bandwidth) ** 2
    rule = bandwidth or "scott"
    if rule not in ("scott", "silverman", "cv"):
        raise ValueError(f"bandwidth must be a float, 'scott', 'silverman' or 'cv', got {rule!r}")
    data_cov = np.cov(points, rowvar=False)
    if len(points) <= NUM_FEATURES or np.linalg.matrix_rank(data_cov) < NUM_FEATURES:
        raise ValueError(
            f"class {name!r}: {len(points)} boxes are too few or degenerate for a rule-based "
            "bandwidth; pass a float bandwidth instead"
        )
    if rule != "cv":
        return scipy.stats.gaussian_kde(points.T, bw_method=rule).covariance
    # Whitening makes an isotropic sklearn bandwidth equal to the gaussian_kde factor.
    chol = np.linalg.cholesky(data_cov)
    whitened = np.linalg.solve(chol, (points - points.mean(0)).T).T
    search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": _CV_FACTORS}, cv=5)
    factor = search.fit(whitened).best_params_["bandwidth"]
    return factor**2 * data_cov


def fit_box_prior(
    records_or_boxes_by_class: Iterable[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    *,
    bandwidth: str | float | None = None,
) -> BoxPrior:
    """Fits per-class box KDEs and box-count distributions.

    Args:
      records_or_boxes_by_class: records (``pathology``, ``boxes``) or class -> per-image boxes.
      bandwidth: None/"scott", "silverman", "cv" or a float (0.001 as published); see module doc.

    Returns:
      The fitted BoxPrior; classes without any box get an empty KDE and count_probs [1.0].
    """
    grouped = group_boxes(records_or_boxes_by_class)
    if not grouped:
        raise ValueError("fit_box_prior: no records or classes given")
    points, kernel_cov, count_probs = {}, {}, {}
    for name in sorted(grouped):
        images = grouped[name]
        counts = np.bincount([len(b) for b in images], minlength=1)
        count_probs[name] = counts / counts.sum()
        points[name] = boxes_to_features(np.concatenate(images, axis=0))
        kernel_cov[name] = (
            _kernel_cov(points[name], bandwidth, name)
            if len(points[name])
            else np.zeros((NUM_FEATURES, NUM_FEATURES))
        )
    setting = "scott" if bandwidth is None else bandwidth
    return BoxPrior(tuple(sorted(grouped)), points, kernel_cov, count_probs, setting)


def sample_box_features(
    prior: BoxPrior, pathology: str, num: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws [num, 4] features from a class KDE: a random training box plus N(0, H) noise."""
    points = _class_field(prior, pathology, prior.points)
    if num and not len(points):
        raise ValueError(f"class {pathology!r} has no boxes to sample from")
    centres = points[rng.integers(len(points), size=num)] if num else np.zeros((0, NUM_FEATURES))
    noise = rng.multivariate_normal(np.zeros(NUM_FEATURES), prior.kernel_cov[pathology], size=num)
    return centres + noise


def sample_boxes(
    prior: BoxPrior,
    pathology: str,
    num: int,
    rng: np.random.Generator,
    *,
    min_size: float = MIN_BOX_SIZE,
) -> list[np.ndarray]:
    """Samples boxes for `num` images of one class.

    The box count per image follows the class's count distribution; boxes of one image are drawn
    independently (overlaps are allowed, as in multi-focal real annotations).

    Returns:
      `num` float32 arrays, each [k, 4] xyxy in [0, 1] with x1 < x2 and y1 < y2 (k may be 0).
    """
    probs = _class_field(prior, pathology, prior.count_probs)
    counts = rng.choice(len(probs), size=num, p=probs)
    boxes = features_to_boxes(
        sample_box_features(prior, pathology, int(counts.sum()), rng), min_size
    )
    return [b.astype(np.float32) for b in np.split(boxes, np.cumsum(counts)[:-1])]


def _class_field(prior: BoxPrior, pathology: str, field: dict[str, np.ndarray]) -> np.ndarray:
    if pathology not in field:
        raise KeyError(f"class {pathology!r} not in box prior (classes: {prior.class_names})")
    return field[pathology]


def save_box_prior(prior: BoxPrior, path: str | os.PathLike) -> None:
    """Saves a prior as a portable .npz (no pickled objects)."""
    arrays = {
        "format_version": np.array(_FORMAT_VERSION),
        "class_names": np.array(prior.class_names, dtype=np.str_),
        "bandwidth": np.array(json.dumps(prior.bandwidth)),
    }
    for i, name in enumerate(prior.class_names):
        arrays[f"points_{i}"] = prior.points[name]
        arrays[f"kernel_cov_{i}"] = prior.kernel_cov[name]
        arrays[f"count_probs_{i}"] = prior.count_probs[name]
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_box_prior(path: str | os.PathLike) -> BoxPrior:
    """Loads a prior written by save_box_prior; raises ValueError naming the file and field."""
    with np.load(path, allow_pickle=False) as data:

        def field(key: str) -> np.ndarray:
            if key not in data:
                raise ValueError(f"{path}: box prior is missing field '{key}'")
            return data[key]

        if int(field("format_version")) != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported box prior format {int(data['format_version'])}")
        names = tuple(str(n) for n in field("class_names"))
        points = {n: field(f"points_{i}").reshape(-1, NUM_FEATURES) for i, n in enumerate(names)}
        cov = {n: field(f"kernel_cov_{i}") for i, n in enumerate(names)}
        probs = {n: field(f"count_probs_{i}") for i, n in enumerate(names)}
        bandwidth = json.loads(str(field("bandwidth")))
    for name in names:
        if cov[name].shape != (NUM_FEATURES, NUM_FEATURES) or not np.isclose(probs[name].sum(), 1):
            raise ValueError(f"{path}: class {name!r} has a malformed kernel_cov or count_probs")
    return BoxPrior(names, points, cov, probs, bandwidth)


BOX_RASTERS = ("outward", "truncate")


def box_mask(
    boxes: np.ndarray | Sequence[Sequence[float]], height: int, width: int, raster: str = "outward"
) -> np.ndarray:
    """Renders normalized xyxy boxes into a float32 [height, width, 1] {0, 1} mask.

    raster='outward' (this project's): a pixel is 1 when the box overlaps it with positive area
    (edges rounded outward), so every valid box covers at least one pixel however small; a 1e-6
    tolerance keeps pixel-aligned edges from spilling into the next pixel through float rounding.
    raster='truncate' (the published code's): every pixel edge is int() of the scaled coordinate,
    so right and bottom edges move inward and a box thinner than a pixel may cover none.
    """
    if raster not in BOX_RASTERS:
        raise ValueError(f"box_mask: raster is {raster!r}, not one of {BOX_RASTERS}")
    array = np.asarray(boxes, np.float64)
    if array.size == 0:
        array = np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"box_mask: boxes must be [k, 4] xyxy, got shape {array.shape}")
    if raster == "truncate":
        scale = np.array([width, height, width, height])
        c0, r0, c1, r1 = np.clip(np.trunc(array * scale), 0, scale).T
    else:
        c0 = np.clip(np.floor(array[:, 0] * width + 1e-6), 0, width - 1)
        r0 = np.clip(np.floor(array[:, 1] * height + 1e-6), 0, height - 1)
        c1 = np.maximum(np.ceil(array[:, 2] * width - 1e-6), c0 + 1)
        r1 = np.maximum(np.ceil(array[:, 3] * height - 1e-6), r0 + 1)
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    in_rows = (rows >= r0[:, None]) & (rows < r1[:, None])
    in_cols = (cols >= c0[:, None]) & (cols < c1[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).any(axis=0)
    return mask.astype(np.float32)[..., None]
