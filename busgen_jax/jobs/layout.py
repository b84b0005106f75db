"""Where jobs put what they write: the names of shared outputs and the demo workdir's layout.

A job's outputs that other jobs, the demo or the report read are named here, once.
"""

from __future__ import annotations

import pathlib

import ml_collections

from busgen_jax.diffusion import foundation

# A trained model's export (pretraining, a classifier), under its workdir.
EXPORT = "export"
# Training jobs' sample grids, under their workdir; adaptation's grid of the saved adapter.
SAMPLES = "samples"
ADAPTED_SAMPLES = "adapted.png"
# Adaptation: the k-shot dataset it trained on and the saved adapter, under its workdir.
FEWSHOT = "fewshot_data"
ADAPTER = "adapter"
# Synthesis: the audited synthetic dataset, under its workdir; the privacy audit's report,
# similarity histogram, closest candidates and closest written images, under the dataset
# (synthesis) or the workdir (`busgen audit`).
SYNTHETIC = "synthetic"
AUDIT = "audit"
AUDIT_REPORT = "audit.json"
AUDIT_HISTOGRAM = "audit_similarity_hist.png"
AUDIT_CLOSEST_PAIRS = "audit_closest_pairs.png"
AUDIT_CLOSEST_WRITTEN = "audit_closest_written.png"
# Clinical evaluation (`busgen evaluate`), under DIR/evaluation: the results (the data), the
# ROC figure and the results' tables in Markdown.
EVALUATION = "evaluation"
EVALUATION_RESULTS = "results.json"
ROC_FIGURE = "roc.png"
EVALUATION_MARKDOWN = "evaluation.md"
# The demo: how long each stage took; the classifiers' test AUC over seeds; the generative
# fidelity and the oracle's measurements, and the recount of noise-like images in the dataset.
TIMINGS = "timings.json"
# The demo's guidance search: validation AUC per weight and the chosen weight.
GUIDANCE_CHOICE = "guidance.json"
SEEDS = "seeds.json"
FIDELITY = "fidelity.json"
ORACLE = "oracle.json"
FAILED_IN_DATASET = "failed_in_dataset.json"


def predictions_file(split: str) -> str:
    """Per-case probabilities of a split (`classification.inference.write_csv`), written by the
    classifier's training job (its eval split) and by `busgen predict`."""
    return f"predictions_{split}.csv"


def eval_file(split: str) -> str:
    """The classifier's training job's ROC AUC on its eval split (`classification.train`)."""
    return f"eval_{split}.json"


class Paths:
    """Where each stage of a demo workdir puts its outputs."""

    def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict):
        self.root = pathlib.Path(workdir).absolute()
        self.phantom = self.root / "phantom"
        self.data = self.phantom / "data" / config.phantom.name
        self.pretrain = self.root / "pretrain"
        self.generator = (
            self.pretrain / EXPORT if config.pretrain_from_scratch else foundation.SHIPPED
        )
        self.adapt = self.root / "adapt"
        self.guidance = self.root / "guidance"
        self.synthesize = self.root / "synthesize"
        self.classifiers = self.root / "classifiers"
        self.evaluation = self.root / EVALUATION
        self.fidelity = self.root / "fidelity"
        self.scaling = self.root / "scaling"
        self.report = self.root / "report.html"

    @property
    def adapter(self) -> pathlib.Path:
        return self.adapt / ADAPTER

    @property
    def fewshot(self) -> pathlib.Path:
        return self.adapt / FEWSHOT

    @property
    def synthetic(self) -> pathlib.Path:
        return self.synthesize / SYNTHETIC

    def classifier(self, source: str, seed: int = 0) -> pathlib.Path:
        """Seed 0's classifier is the one evaluated in full (readers, fidelity); the others
        give the spread over seeds."""
        return self.classifiers / (source if seed == 0 else f"{source}_seed{seed}")

    def predictions(self, source: str, split: str) -> pathlib.Path:
        return self.classifier(source) / predictions_file(split)
