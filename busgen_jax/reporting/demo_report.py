"""The demo's HTML report, built from the results each stage left in a demo workdir.

Each section reads its stage's results (JSON, CSV, pictures) as data and lays them out as
`reporting.html` sections; `write(paths, config)` writes `report.html`. `busgen report`
(`busgen_jax.jobs.report`) rebuilds it from a finished or partial workdir.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from busgen_jax.data import shards
from busgen_jax.evaluation import demo_gates
from busgen_jax.jobs import layout
from busgen_jax.models import lora
from busgen_jax.reporting import clinical, visualize
from busgen_jax.reporting import html as report

SIMULATED = (
    "All data here are SIMULATED: phantom images, and readers simulated from the phantom's latent "
    "malignancy score. The numbers show what this run of the pipeline measured, not clinical "
    "performance."
)


def _json(path: pathlib.Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(d: dict[str, Any], key: str = "auc") -> str:
    return f"{d[key]:.3f} ({d['ci_low']:.3f}-{d['ci_high']:.3f})"


def overview(paths, config) -> report.Section:
    timings = _json(paths.root / layout.TIMINGS) or {}
    rows = [[name, f"{seconds:.0f}"] for name, seconds in timings.items()]
    rows.append(["total", f"{sum(timings.values()):.0f}"])
    return report.Section(
        "Run",
        paragraphs=[
            f"Workdir {paths.root}. Task of the adaptation and the classifiers: "
            f"{', '.join(config.classifier.task.negative)} (negative) vs "
            f"{', '.join(config.classifier.task.positive)} (positive).",
        ],
        tables=[report.Table("Stage times (seconds, this machine)", ["stage", "seconds"], rows)],
    )


def data_section(paths, config) -> report.Section:
    manifest = shards.read_manifest(paths.data)
    rows = [
        [split, info["num_records"], *(info["pathology"].get(p, 0) for p in manifest["pathology"])]
        for split, info in manifest["splits"].items()
    ]
    return report.Section(
        "Phantom data",
        paragraphs=[
            "B-mode phantom: layered breast tissue, speckle from random scatterers, "
            "BI-RADS lesion descriptors per pathology, four simulated devices."
        ],
        tables=[
            report.Table(
                "Images per split and pathology", ["split", "images", *manifest["pathology"]], rows
            )
        ],
        figures=[
            report.Figure(
                paths.phantom / "data" / f"{config.phantom.name}_grid.png",
                "Real (phantom) images per pathology (rows) and device (columns)",
            )
        ],
    )


def generation_section(paths) -> report.Section:
    figures = []
    samples = sorted((paths.pretrain / layout.SAMPLES).glob("*.png"))
    if samples:
        figures.append(
            report.Figure(
                samples[-1], f"Pretrained model samples ({samples[-1].stem}), one row per pathology"
            )
        )
    adapted = paths.adapt / layout.SAMPLES / layout.ADAPTED_SAMPLES
    figures.append(report.Figure(adapted, "Adapted model samples per task class"))
    tables = []
    info = _json(paths.adapter / lora.ADAPTER_FILE)
    if info:
        tables.append(
            report.Table(
                "Adapter against the full model",
                ["", "parameters", "bytes on disk"],
                [
                    ["adapter", info["adapter_params"], info["adapter_bytes"]],
                    ["full model", info["full_params"], info["full_bytes"]],
                ],
            )
        )
    return report.Section(
        "Pretraining and few-shot adaptation",
        tables=tables,
        figures=figures,
        paragraphs=[
            "A conditional diffusion U-Net pretrained on all phantom classes, then "
            "adapted with LoRA from k examples per class of the task."
        ],
    )


def synthesis_section(paths) -> report.Section:
    grid = visualize.dataset_grid(
        paths.synthetic,
        paths.root / "synthetic_grid.png",
        title="Synthetic images per requested class and device",
    )
    audit_dir = paths.synthetic / layout.AUDIT
    audit = _json(audit_dir / layout.AUDIT_REPORT) or {}
    tables = []
    if audit:
        test = audit["memorization_test"]
        tables.append(
            report.Table(
                "Privacy audit (nearest training neighbour, normalized cross-correlation)",
                [
                    "threshold",
                    "candidates",
                    "rejected",
                    "candidate NN similarity (median / max)",
                    "held-out NN similarity (median / max)",
                    "copying test z_U",
                    "p (copying)",
                    "verdict",
                    "flagged at held-out 95th / 99th / 99.9th pct",
                    "membership inference AUC / TPR at 1% FPR",
                ],
                [
                    [
                        audit["threshold"],
                        audit["num_candidates"],
                        audit["rejected_count"],
                        f"{audit['candidate_similarity']['q50']:.3f} / {audit['candidate_similarity']['max']:.3f}",
                        f"{audit['heldout_similarity']['q50']:.3f} / {audit['heldout_similarity']['max']:.3f}",
                        test["z_u"],
                        test["p_copying"],
                        test["interpretation"],
                        " / ".join(
                            f"{r['candidates_flagged']:.1%}"
                            for r in audit.get("memorization_rates", [])
                        ),
                        _membership_cell(audit.get("membership_inference")),
                    ]
                ],
            )
        )
    tables += _selection_tables(paths)
    # Training images never enter the report: the audit names neighbours by case id only.
    private = audit.get("private_pictures")
    where = (
        f"The operator's pictures of them are in {private}."
        if private
        else "Pictures of them are off (synthesize config audit.private_pictures)."
    )
    return report.Section(
        "Synthesis and privacy audit",
        paragraphs=[
            "Similarity is NCC and a shift/crop/rotation-tolerant windowed NCC; a candidate is "
            "rejected when either exceeds its held-out-calibrated threshold. Training neighbours "
            f"are listed by pseudonymous case id in {audit_dir / layout.AUDIT_REPORT}. {where}"
        ],
        tables=tables,
        figures=[
            report.Figure(grid, "Synthetic dataset: rows are requested pathologies"),
            report.Figure(
                audit_dir / layout.AUDIT_HISTOGRAM,
                "Nearest-training-neighbour similarity: candidates vs held-out real",
            ),
            report.Figure(
                audit_dir / layout.AUDIT_CLOSEST_WRITTEN,
                "The written images most similar to a training image, beside that training "
                "case's id (no training pixels)",
            ),
        ],
    )


def _selection_tables(paths) -> list[report.Table]:
    """How the synthetic set was selected: the guidance search's validation AUCs and the label
    filter's redraws (each only when configured)."""
    tables = []
    choice = _json(paths.guidance / layout.GUIDANCE_CHOICE)
    if choice:
        tables.append(
            report.Table(
                "Guidance weight chosen by validation AUC (classifier trained on a small synthetic "
                "set per weight, scored on the real validation split)",
                ["guidance weight", "validation AUC", "chosen"],
                [
                    [weight, f"{auc:.3f}", "yes" if float(weight) == choice["chosen"] else ""]
                    for weight, auc in choice["val_auc"].items()
                ]
                + [
                    [weight, "no synthetic set (see guidance.json)", ""]
                    for weight in choice.get("refused", {})
                ],
            )
        )
    written = (paths.synthetic / shards.MANIFEST).exists()
    extra = shards.read_manifest(paths.synthetic)["extra"] if written else {}
    settings = extra.get("provenance", {}).get("label_filter")
    if settings:
        tables.append(
            report.Table(
                "Label filter (over-generation: candidates the classifier does not assign to "
                "their requested class are redrawn)",
                ["classifier", "min probability", "rounds", "off-label candidates redrawn"],
                [
                    [
                        settings["classifier"],
                        settings["min_probability"],
                        settings["rounds"],
                        extra.get("off_label_redrawn", 0),
                    ]
                ],
            )
        )
    return tables


def _membership_cell(result) -> str:
    if not result:
        return "not run"
    return f"{result['auc']:.3f} / {result['tpr_at_1pct_fpr']:.3f}"


def evaluation_sections(paths) -> list[report.Section]:
    """The clinical evaluation's tables, built from its results; the ROC figure with the
    reader study."""
    results = _json(paths.evaluation / layout.EVALUATION_RESULTS)
    if not results:
        return []
    roc = report.Figure(
        paths.evaluation / layout.ROC_FIGURE,
        "ROC curves of the classifiers; each simulated reader is a point at its BI-RADS 4A "
        "operating point, the cross the reader mean",
    )
    sections = clinical.sections(results, roc)
    sections[0].note = SIMULATED
    return sections


def fidelity_section(paths) -> report.Section | None:
    results = _json(paths.fidelity / layout.FIDELITY)
    if not results:
        return None
    metrics = ("fd", "kid", "precision", "recall", "density", "coverage")
    gen = [
        [name, *(values.get(k) for k in metrics)]
        for name, values in results["generative"].items()
        if isinstance(values, dict)
    ]
    shortcut = [
        [name, v["auc"], v["balanced_accuracy"], v["chance_accuracy"]]
        for name, v in results["device_shortcut"].items()
    ]
    cond = results["conditioning"]
    conditioning = [
        [f"class {name}", v["accuracy"], v["n"]] for name, v in cond["per_class"].items()
    ]
    conditioning += [
        [f"device {name}", v["accuracy"], v["n"]] for name, v in cond["per_device"].items()
    ]
    boxes = results["boxes"]
    summaries = {
        "box IoU": boxes["box_iou"],
        "lesion mask IoU with the box": boxes["mask_iou"],
        "share of lesion inside the box": boxes["inside_box"],
    }
    if results.get("segmenter_real_dice"):
        summaries["segmenter Dice on real test masks"] = results["segmenter_real_dice"]
    quantiles = ("mean", "q10", "q50", "q90")
    return report.Section(
        "Generative fidelity",
        paragraphs=[
            f"Feature space: {results['feature_space']}. Real-vs-real rows give the "
            "scale of each metric between two halves of the real test set."
        ],
        tables=[
            report.Table("Generative quality", ["comparison", *metrics], gen),
            report.Table(
                "Device shortcut: predicting the device from classifier features (cross-validated)",
                ["features of", "AUC", "balanced accuracy", "chance"],
                shortcut,
            ),
            report.Table(
                f"Conditioning: the real-data classifier's accuracy on synthetic "
                f"images by requested label (overall {cond['accuracy']:.3f})",
                ["requested", "accuracy", "images"],
                conditioning,
            ),
            report.Table(
                f"Box fidelity: {boxes['detected']:.0%} of synthetic images have a "
                f"lesion found by a segmenter trained on real masks; "
                f"{boxes['fraction_box_iou_above']:.0%} with box IoU > "
                f"{boxes['iou_threshold']}",
                ["", *quantiles],
                [[name, *(v[q] for q in quantiles)] for name, v in summaries.items()],
            ),
        ],
    )


def gates_section(paths) -> report.Section | None:
    gates = demo_gates.evaluate(paths)
    if not gates:
        return None

    def shown(value):
        return f"{value:.3f}" if isinstance(value, float) else value

    rows = [
        [
            g["gate"],
            g["target"],
            shown(g["measured"]),
            shown(g.get("real_ceiling")) or "",
            demo_gates.verdict(g),
        ]
        for g in gates
    ]
    missed = [g["gate"] for g in gates if not g["passed"]]
    oracle = _json(paths.fidelity / layout.ORACLE) or {}
    return report.Section(
        "Quality gates",
        paragraphs=[
            "Measured on real phantom images that neither the generator, the adapter nor the "
            f"judge trained on. The judge is the phantom oracle ({oracle.get('oracle', 'n/a')}); "
            "'real images' is the same oracle's accuracy on real held-out images of the "
            "requested label, the most a synthetic image can be expected to reach. The AUC gates "
            "compare means over the classifier seeds.",
            f"{len(gates) - len(missed)} of {len(gates)} gates met"
            + (f"; not met: {'; '.join(missed)}." if missed else "."),
        ],
        tables=[
            report.Table(
                "Quality gates", ["gate", "target", "measured", "real images", "verdict"], rows
            )
        ],
    )


def seeds_section(paths) -> report.Section | None:
    seeds = _json(paths.classifiers / layout.SEEDS)
    if not seeds:
        return None
    rows = [
        [
            source,
            len(s["aucs"]),
            f"{s['mean']:.3f}",
            f"{s['sd']:.3f}",
            f"{s['min']:.3f}-{s['max']:.3f}",
            ", ".join(f"{a:.3f}" for a in s["aucs"]),
        ]
        for source, s in seeds.items()
    ]
    return report.Section(
        "Classifiers over seeds",
        paragraphs=[
            "Test AUC of each training source over the classifier seeds (initialization, data "
            "order, augmentation); the evaluation below is of seed 0's classifiers."
        ],
        tables=[
            report.Table(
                "Test AUC over seeds",
                ["trained on", "seeds", "mean", "sd", "range", "per seed"],
                rows,
            )
        ],
    )


def scaling_section(paths) -> report.Section | None:
    figures = sorted(paths.scaling.glob("*.png"))
    if not figures:
        return None
    return report.Section(
        "Data scaling",
        paragraphs=[
            "Test AUC (DeLong 95% CI) of classifiers trained on n real, n synthetic and "
            "n real + n synthetic images."
        ],
        figures=[report.Figure(f, "Test AUC against training-set size") for f in figures],
    )


def write(paths, config) -> pathlib.Path:
    sections = [overview(paths, config)]
    sections += [s for s in (gates_section(paths),) if s]
    sections += [
        data_section(paths, config),
        generation_section(paths),
        synthesis_section(paths),
    ]
    sections += [s for s in (seeds_section(paths),) if s]
    sections += evaluation_sections(paths)
    sections += [s for s in (fidelity_section(paths), scaling_section(paths)) if s]
    return report.write_report(paths.report, "busgen_jax demo report", sections, SIMULATED)
