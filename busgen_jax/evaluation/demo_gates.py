"""The demo's quality gates: is the synthetic data good enough to be worth sharing and using?

Each gate is measured from what the demo's stages wrote, on real phantom images none of the
generator, the adapter or the gate's judge trained on:

* conditioning: the phantom oracle (`evaluation.oracle`) calls >= 85% of the synthetic images of
  each requested class, and of each requested device, what was requested;
* failed samples: <= 1% of the candidates are noise-like before they are redrawn, and none is in
  the written dataset;
* Fréchet distance in the oracle's features <= 3x the real-vs-real floor at equal N;
* few-shot regime: the synthetic-only classifier's AUC above the few-shot real one's;
* full regime: synthetic-only >= 0.9x real-only, and mixed >= real-only.

The AUC gates compare the means over the classifier seeds (`classifiers/seeds.json`). A gate
whose inputs a run did not produce is left out; nothing is lowered when a gate fails: the report
shows by how much it missed, beside the ceiling that real images reach where one exists.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from busgen_jax.data import shards
from busgen_jax.jobs import layout

GATES_FILE = "gates.json"
CONDITIONING_MIN = 0.85
FAILED_MAX = 0.01
FRECHET_MAX_RATIO = 3.0
FULL_SYNTHETIC_MIN_RATIO = 0.9


def _json(path: pathlib.Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _gate(name: str, target: str, value: float, passed: bool, **extra: Any) -> dict[str, Any]:
    return {"gate": name, "target": target, "measured": value, "passed": passed, **extra}


def seed_summary(aucs: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and range of per-seed AUCs."""
    values = np.asarray(aucs, np.float64)
    return {
        "aucs": values.tolist(),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def conditioning_gates(oracle: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind in ("class", "device"):
        for label, got in oracle["synthetic"][kind].items():
            ceiling = oracle["real"][kind].get(label, {}).get("accuracy")
            rows.append(
                _gate(
                    f"synthetic images of {kind} {label} that the oracle calls {label}",
                    f">= {CONDITIONING_MIN:.0%}",
                    got["accuracy"],
                    got["accuracy"] >= CONDITIONING_MIN,
                    n=got["n"],
                    real_ceiling=ceiling,
                )
            )
    return rows


def failure_gates(
    manifest: Mapping[str, Any], audit: Mapping[str, Any] | None, in_dataset: int | None
) -> list[dict[str, Any]]:
    failed = manifest.get("extra", {}).get("failed_samples")
    rows = []
    if failed is not None and audit:
        # Candidates include the redrawn ones, and the kept ones of a run that did not redraw.
        rate = (failed["redrawn"] + (in_dataset or 0)) / max(audit["num_candidates"], 1)
        rows.append(
            _gate(
                "noise-like candidates before redraw",
                f"<= {FAILED_MAX:.0%}",
                rate,
                rate <= FAILED_MAX,
                n=audit["num_candidates"],
            )
        )
    if in_dataset is not None:
        rows.append(
            _gate("noise-like images in the written dataset", "0", in_dataset, in_dataset == 0)
        )
    return rows


def frechet_gate(oracle: Mapping[str, Any]) -> dict[str, Any]:
    fd = oracle["frechet"]
    return _gate(
        "Fréchet distance in oracle features, x real-vs-real floor",
        f"<= {FRECHET_MAX_RATIO}x",
        fd["ratio"],
        fd["ratio"] <= FRECHET_MAX_RATIO,
        fd=fd["synthetic"],
        floor=fd["real_floor"],
        n_per_class=fd["n_per_class"],
    )


FEWSHOT_GATE = "few-shot regime: synthetic-only AUC - few-shot real AUC"
FULL_GATE = "full regime: synthetic-only AUC / real-only AUC"
MIXED_GATE = "full regime: mixed AUC - real-only AUC"


def auc_gates(seeds: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    mean = {source: s["mean"] for source, s in seeds.items()}
    # (gate, the two sources compared, by difference or ratio, the bound it must pass).
    comparisons = [
        (FEWSHOT_GATE, "synthetic", "fewshot", "difference", ">", 0.0),
        (FULL_GATE, "synthetic", "real", "ratio", ">=", FULL_SYNTHETIC_MIN_RATIO),
        (MIXED_GATE, "mixed", "real", "difference", ">=", 0.0),
    ]
    rows = []
    for name, first, second, how, sign, bound in comparisons:
        if {first, second} <= set(mean):
            a, b = mean[first], mean[second]
            value = a / b if how == "ratio" else a - b
            passed = value > bound if sign == ">" else value >= bound
            rows.append(_gate(name, f"{sign} {bound:g}", value, passed))
    return rows


def evaluate(paths) -> list[dict[str, Any]]:
    """Every gate this demo workdir has the measurements for; also written to gates.json."""
    gates = []
    oracle = _json(paths.fidelity / layout.ORACLE)
    if oracle:
        gates += conditioning_gates(oracle)
    manifest = _json(paths.synthetic / shards.MANIFEST)
    if manifest:
        recheck = _json(paths.fidelity / layout.FAILED_IN_DATASET) or {}
        gates += failure_gates(
            manifest,
            _json(paths.synthetic / layout.AUDIT / layout.AUDIT_REPORT),
            recheck.get("failed"),
        )
    if oracle and oracle.get("frechet"):
        gates.append(frechet_gate(oracle))
    seeds = _json(paths.classifiers / layout.SEEDS)
    if seeds:
        gates += auc_gates(seeds)
    (paths.root / GATES_FILE).write_text(json.dumps(gates, indent=1))
    return gates


def verdict(gate: Mapping[str, Any]) -> str:
    return "met" if gate["passed"] else "NOT MET"


def describe(gate: Mapping[str, Any]) -> str:
    """One line: the gate, what it measured against its target, and whether it held."""
    value = gate["measured"]
    shown = f"{value:.3f}" if isinstance(value, float) else str(value)
    ceiling = gate.get("real_ceiling")
    extra = f" (real images: {ceiling:.3f})" if ceiling is not None else ""
    return f"{gate['gate']}: {shown}{extra}, target {gate['target']}: {verdict(gate)}"
