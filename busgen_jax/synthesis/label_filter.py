"""Over-generation with a label filter: keep the synthetic images that a classifier of the real
data assigns to the label they were drawn for.

A conditional generator adapted from a few examples renders some draws that do not look like
their requested class (the demo's adapted DCIS row still draws the foundation's malignant
masses). Synthetic-data pipelines filter such draws with a classifier trained on the real data
at hand: a draw whose probability of its requested label is below `min_probability` is drawn
again, for a configured number of rounds, after which a record keeps its draw. The judge
is an exported classifier (`busgen train-classifier`'s `export/`) trained on the real data the
user has, never the evaluation's oracle, and it scores the candidate as it will be stored
(quantized to 8 bits, read at the classifier's size like the input pipeline reads it).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from busgen_jax.classification import inference
from busgen_jax.data import pipeline
from busgen_jax.data.vocabulary import Task
from busgen_jax.models import classifier as classifier_lib
from busgen_jax.reporting import visualize


@dataclasses.dataclass(frozen=True)
class LabelCheck:
    """Which candidates a classifier assigns to their requested class.

    Classes outside the classifier's task pass unjudged: it knows nothing of them.
    """

    model: classifier_lib.Classifier
    task: Task
    image_size: int
    min_probability: float

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The classifier's probability of the positive class for images [N, H, W, 1] in [-1, 1],
        read as the pipeline reads a stored record."""
        stored = visualize.to_uint8(np.asarray(images)[..., 0])
        read = np.stack(
            [pipeline.model_pixels(Image.fromarray(x), self.image_size) for x in stored]
        )
        return inference.probabilities(self.model, read)

    def on_label(self, images: np.ndarray, pathologies: Sequence[str]) -> np.ndarray:
        """bool [N]: candidate j is judged to be `pathologies[j]` (or its class is not judged)."""
        p_positive = self.probabilities(images)
        keep = np.ones(len(pathologies), bool)
        for j, pathology in enumerate(pathologies):
            if pathology in self.task.positive:
                keep[j] = p_positive[j] >= self.min_probability
            elif pathology in self.task.negative:
                keep[j] = 1.0 - p_positive[j] >= self.min_probability
        return keep


def load(export_dir: str | pathlib.Path, min_probability: float) -> LabelCheck:
    """The label check of an exported classifier.

    Raises:
      FileNotFoundError naming the export directory, ValueError for a probability outside (0, 1).
    """
    if not 0.0 < min_probability < 1.0:
        raise ValueError(f"label_filter.min_probability must be in (0, 1), got {min_probability}")
    model, config = inference.load_classifier(export_dir)
    return LabelCheck(model, Task.from_config(config.task), config.data.image_size, min_probability)
