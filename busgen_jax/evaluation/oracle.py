"""The phantom oracle: does a synthetic image show the class and scanner it was asked for?

Quality gates need a judge that has seen plenty of real images and none of the synthetic ones.
Both oracles learn from the built-in `benign_dcis` phantom (6,000 benign and DCIS images at
32 px, all four devices; its seed is not the demo's, so no demo image is in it):

* class: the CNN shipped in `busgen_jax/assets/phantom_oracle/` (`configs/classifier.py:oracle`,
  trained by `make oracle`), whose benign-vs-DCIS test AUC is recorded in its model card;
* device: a multinomial logistic regression on the pixels and their high-frequency energy, fit
  at run time on the phantom's training split in seconds (the phantom's scanners differ in
  speckle size and noise, which pixels carry).

Each is also scored on real held-out images of that phantom: no synthetic image can be expected
to beat that ceiling. The Fréchet distance uses the class oracle's pooled features, synthetic
against real held-out images, beside the floor real against real, at equal N and class mix.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from busgen_jax.data.vocabulary import Task
from busgen_jax.diffusion import foundation
from busgen_jax.evaluation import generative, sample_failures
from busgen_jax.jobs import layout

SHIPPED = foundation.ASSETS / "phantom_oracle"
CARD_TITLE = "# Phantom oracle (benign vs DCIS)"


def shipped_dir() -> pathlib.Path:
    """The shipped class oracle (an exported classifier), its checksums verified."""
    if not (SHIPPED / foundation.CHECKSUMS).is_file():
        raise FileNotFoundError(
            f"{SHIPPED}: the shipped phantom oracle is missing (reinstall the package, or run "
            "`make oracle` to rebuild it)"
        )
    foundation.verify_checksums(SHIPPED)
    return SHIPPED


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Pixels and high-frequency energy: what tells the phantom's scanners apart."""
    images = np.asarray(images, np.float32)
    flat = images.reshape(len(images), -1)
    return np.concatenate([flat, sample_failures.high_frequency_energy(images)[:, None]], axis=1)


def fit_pixel_oracle(images: np.ndarray, labels: Sequence[str]):
    """A standardized, L2-regularized multinomial logistic regression on `pixel_features`."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    return model.fit(pixel_features(images), np.asarray(labels))


def accuracy_by(called: np.ndarray, requested: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per requested label: the share of images called that label, and how many there were."""
    called, requested = np.asarray(called), np.asarray(requested)
    return {
        str(label): {
            "accuracy": float(np.mean(called[requested == label] == label)),
            "n": int(np.sum(requested == label)),
        }
        for label in np.unique(requested)
    }


def _balanced_draws(
    pathology: Sequence[str], per_class: int, rng: np.random.Generator, draws: int
) -> list[np.ndarray]:
    """`draws` disjoint index sets, each with `per_class` images of every class."""
    pathology = np.asarray(pathology)
    picks = [[] for _ in range(draws)]
    for name in np.unique(pathology):
        members = rng.permutation(np.flatnonzero(pathology == name))
        for d in range(draws):
            picks[d].append(members[d * per_class : (d + 1) * per_class])
    return [np.sort(np.concatenate(p)) for p in picks]


def measure(
    synthetic: Mapping[str, Any],
    real_train: Mapping[str, Any],
    real_test: Mapping[str, Any],
    *,
    oracle_dir: str | pathlib.Path,
    seed: int,
    max_per_class: int = 128,
) -> dict[str, Any]:
    """Conditioning accuracy of both oracles on the synthetic set and on real held-out images,
    and the Fréchet distance in the class oracle's features against the real-vs-real floor.

    Args:
      synthetic, real_train, real_test: `pipeline.load_split` dicts at the oracle's image size;
        real_train fits the device oracle, real_test is the real reference (the ceiling of the
        accuracies and both sides of the floor).
      oracle_dir: an exported classifier (the class oracle).
      max_per_class: the most images of each class in each Fréchet set.

    `frechet` is None when a class has too few images for sets of 2 or more.
    """
    from busgen_jax.classification import inference  # the classifier stack only when it is used

    model, config = inference.load_classifier(oracle_dir)
    task = Task.from_config(config.task)
    device_oracle = fit_pixel_oracle(real_train["image"], real_train["device"])

    def judged(split: Mapping[str, Any]) -> dict[str, Any]:
        pathology = np.asarray(split["pathology"])
        keep = np.isin(pathology, task.class_names)
        probabilities = inference.probabilities(model, np.asarray(split["image"])[keep])
        called = task.label_names(probabilities >= 0.5)
        devices = device_oracle.predict(pixel_features(split["image"]))
        return {
            "class": accuracy_by(called, pathology[keep]),
            "device": accuracy_by(devices, split["device"]),
        }

    classes = [c for c in task.class_names if c in set(synthetic["pathology"])]
    in_task = {
        name: np.isin(np.asarray(split["pathology"]), classes)
        for name, split in (("synthetic", synthetic), ("real", real_test))
    }
    counts = [np.sum(np.asarray(synthetic["pathology"]) == c) for c in classes]
    counts += [np.sum(np.asarray(real_test["pathology"]) == c) // 2 for c in classes]
    per_class = int(min(max_per_class, *counts))
    frechet = None
    if per_class >= 2:  # else too few images of a class for two real sets and a synthetic one
        rng = np.random.default_rng(seed)
        (fake,) = _balanced_draws(
            np.asarray(synthetic["pathology"])[in_task["synthetic"]], per_class, rng, 1
        )
        real_a, real_b = _balanced_draws(
            np.asarray(real_test["pathology"])[in_task["real"]], per_class, rng, 2
        )

        def features(split, name, index):
            images = np.asarray(split["image"])[in_task[name]][index]
            return inference.extract_features(oracle_dir, images)

        reference = features(real_test, "real", real_a)
        fd = generative.frechet_distance(reference, features(synthetic, "synthetic", fake))
        floor = generative.frechet_distance(reference, features(real_test, "real", real_b))
        frechet = {
            "synthetic": float(fd),
            "real_floor": float(floor),
            "ratio": float(fd / floor) if floor > 0 else float("inf"),
            "n_per_class": per_class,
            "classes": classes,
        }
    return {
        "oracle": str(oracle_dir),
        "task": {"negative": list(task.negative), "positive": list(task.positive)},
        "synthetic": judged(synthetic),
        "real": judged(real_test),
        "frechet": frechet,
    }


def write(result: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def record_test_auc(export_dir: str | pathlib.Path, data_paths: Sequence[str]) -> dict[str, Any]:
    """The class oracle's AUC (DeLong 95% CI) on its phantom's test split, for the card: the
    split is scored once, after training, and chooses nothing."""
    from busgen_jax.classification import inference
    from busgen_jax.evaluation import statistics

    model, config = inference.load_classifier(export_dir)
    rows = inference.predict_split(model, config, list(data_paths), "test")
    result = statistics.roc_auc_ci(rows["label"], rows["probability"])
    return {
        "auc": result.auc,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n": len(rows["label"]),
        "n_positive": int(np.sum(rows["label"])),
    }


def ship(
    classifier_workdir: str | pathlib.Path,
    facts: Mapping[str, Any],
    destination: str | pathlib.Path = SHIPPED,
) -> pathlib.Path:
    """Copies the classifier's export to `destination` with a model card and checksums."""
    export = pathlib.Path(classifier_workdir) / layout.EXPORT
    destination = pathlib.Path(destination)
    staging = destination.with_name(f".{destination.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(export, staging)
    lines = [
        CARD_TITLE,
        "",
        "The judge of the quality gates (`busgen_jax.evaluation.oracle`): a CNN trained on plenty",
        "of real phantom images, none of them the demo's. **Phantom only; not a medical device.**",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        "",
        f"Files are checked against `{foundation.CHECKSUMS}` whenever the oracle is loaded.",
        "",
    ]
    (staging / foundation.CARD).write_text("\n".join(lines))
    foundation.write_checksums(staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination
