"""Where jobs put what they write: the names of shared outputs and the demo workdir's layout.

A job's outputs that other jobs, the demo or the report read are named here, once.
"""

from __future__ import annotations

import pathlib

import ml_collections

from busgen_jax.diffusion import foundation

# Adaptation: the k-shot dataset it trained on and the saved adapter, under its workdir.
FEWSHOT = "fewshot_data"
ADAPTER = "adapter"
# Synthesis: the audited synthetic dataset, under its workdir.
SYNTHETIC = "synthetic"
# Clinical evaluation (`busgen evaluate`), under DIR/evaluation: the results (the data), the
# ROC figure and the results' tables in Markdown.
EVALUATION = "evaluation"
EVALUATION_RESULTS = "results.json"
ROC_FIGURE = "roc.png"
EVALUATION_MARKDOWN = "evaluation.md"
# The demo: how long each stage took.
TIMINGS = "timings.json"


class Paths:
    """Where each stage of a demo workdir puts its outputs."""

    def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict):
        self.root = pathlib.Path(workdir).absolute()
        self.phantom = self.root / "phantom"
        self.data = self.phantom / "data" / config.phantom.name
        self.pretrain = self.root / "pretrain"
        self.generator = (
            self.pretrain / "export" if config.pretrain_from_scratch else foundation.SHIPPED
        )
        self.adapt = self.root / "adapt"
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
        return self.classifiers / source / f"predictions_{split}.csv"
