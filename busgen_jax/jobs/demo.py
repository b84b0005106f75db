"""The main job: the whole BUSGen pipeline on the built-in phantom, ending in an HTML report.

    busgen demo --config=configs/demo.py:default --workdir=workdir/demo

Stages: phantom dataset -> diffusion pretraining -> few-shot LoRA adaptation (benign vs DCIS) ->
guidance weight chosen by validation AUC (when configured) -> audited synthesis (optionally with
a label filter) -> classifiers on real, synthetic and mixed data -> evaluation against a
simulated reader study -> generative fidelity -> data scaling -> report. Every stage works in its
own folder of the workdir and is marked done when it finishes, so a stopped demo started again
resumes at the stage it was in (and that stage resumes from its checkpoints). The numbers in the
report are whatever this run measured.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from busgen_jax.core import config_files, errors
from busgen_jax.diffusion import foundation
from busgen_jax.evaluation import demo_gates
from busgen_jax.jobs import layout, shell


def stage_config(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
    """A copy of a stage config with `fields` (dotted names allowed) set."""
    config = config.copy_and_resolve_references()
    config.unlock()
    for name, value in fields.items():
        target = config
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def stage_phantom(config, paths: layout.Paths) -> None:
    from busgen_jax.jobs import phantom as generate_phantom

    generate_phantom.run(stage_config(config.phantom, seed=config.seed), str(paths.phantom))


def stage_pretrain(config, paths: layout.Paths) -> None:
    if not config.pretrain_from_scratch:
        print(f"   adapting the shipped foundation model {foundation.shipped_dir()}")
        return
    from busgen_jax.jobs import pretrain

    pretrain.run(
        stage_config(config.pretrain, **{"data.paths": (str(paths.data),)}), str(paths.pretrain)
    )


def stage_adapt(config, paths: layout.Paths) -> None:
    from busgen_jax.jobs import adapt

    adapt_config = stage_config(
        config.adapt, generator=str(paths.generator), **{"data.paths": (str(paths.data),)}
    )
    adapt.run(adapt_config, str(paths.adapt))


def synthesis_config(config, paths: layout.Paths, **fields: Any) -> ml_collections.ConfigDict:
    """The synthesis stage's config: the adapted generator, audited against its few-shot images,
    judged by the label filter's classifier when one is configured (trained here if needed)."""
    source = config.label_filter_source
    if source:
        export = paths.classifier(source) / layout.EXPORT
        if not export.exists():  # the classifiers stage trains and scores it again anyway
            train_source_classifier(config, paths, source, seed=0)
        fields["label_filter.classifier"] = str(export)
    return stage_config(
        config.synthesize,
        generator=str(paths.generator),
        adapter=str(paths.adapter),
        **{"audit.train_paths": (str(paths.fewshot),)},
        **fields,
    )


def stage_guidance(config, paths: layout.Paths) -> None:
    """Guidance chosen by validation AUC: a small synthetic set per candidate weight, a
    classifier trained on each, scored on the real validation split; the best weight is the one
    the synthesis stage uses. A weight whose synthesis fails (the privacy audit refusing its set)
    is out of the running. The test split is never looked at."""
    search = config.guidance_search
    if not search.weights:
        print("   guidance weight: the generator spec's (no search configured)")
        return
    from busgen_jax.jobs import synthesize, train_classifier

    paths.guidance.mkdir(parents=True, exist_ok=True)
    val_auc, refused = {}, {}
    for weight in search.weights:
        workdir = paths.guidance / f"w{weight:g}"
        try:
            synthesize.run(
                synthesis_config(
                    config,
                    paths,
                    guidance_weight=float(weight),
                    num_images=search.num_images,
                    **{"audit.membership_draws": 0},
                ),
                str(workdir / "synthesize"),
            )
        except errors.JobError as e:
            refused[f"{weight:g}"] = str(e)
            print(f"   guidance {weight:g}: no synthetic set ({e})")
            continue
        result = train_classifier.run(
            stage_config(
                config.classifier,
                **{
                    "data.paths": (str(workdir / "synthesize" / layout.SYNTHETIC),),
                    "data.mix_weights": (),
                    "eval.paths": (str(paths.data),),
                    "eval.split": "val",
                    "train.seed": config.seed,
                },
            ),
            str(workdir / "classifier"),
        )
        val_auc[float(weight)] = result["auc"]
        print(f"   guidance {weight:g}: validation AUC {result['auc']:.3f}")
    if not val_auc:
        raise errors.JobError(f"guidance search: no weight gave a synthetic set: {refused}")
    chosen = max(val_auc, key=val_auc.get)
    (paths.guidance / layout.GUIDANCE_CHOICE).write_text(
        json.dumps(
            {
                "val_auc": {f"{w:g}": a for w, a in val_auc.items()},
                "refused": refused,
                "chosen": chosen,
            }
        )
    )
    print(f"   guidance weight {chosen:g} chosen by validation AUC")


def chosen_guidance(paths: layout.Paths) -> dict[str, float]:
    """The guidance search's choice as a synthesis config field; none if it did not run."""
    path = paths.guidance / layout.GUIDANCE_CHOICE
    return {"guidance_weight": json.loads(path.read_text())["chosen"]} if path.exists() else {}


def stage_synthesize(config, paths: layout.Paths) -> None:
    from busgen_jax.jobs import synthesize

    synthesize.run(synthesis_config(config, paths, **chosen_guidance(paths)), str(paths.synthesize))


# The classifier sources trained on real images only: what a label filter may be.
REAL_SOURCES = ("real", "fewshot")


def classifier_sources(config, paths: layout.Paths) -> dict[str, dict[str, Any]]:
    """Training data of each demo classifier; all are evaluated on the real test split."""
    real, synthetic = str(paths.data), str(paths.synthetic)
    sources = {
        "real": {"data.paths": (real,), "data.mix_weights": ()},
        "fewshot": {"data.paths": (str(paths.fewshot),), "data.mix_weights": ()},
        "synthetic": {"data.paths": (synthetic,), "data.mix_weights": ()},
        "mixed": {"data.paths": (real, synthetic), "data.mix_weights": tuple(config.mixed_weights)},
    }
    return {name: sources[name] for name in config.classifier_sources}


def train_source_classifier(config, paths: layout.Paths, source: str, seed: int) -> dict:
    """Trains (or, trained already, re-scores) one demo classifier in
    `paths.classifier(source, seed)`; returns its evaluation on the real test split, whose
    predictions_test.csv is what the evaluation stage reads."""
    from busgen_jax.jobs import train_classifier

    return train_classifier.run(
        stage_config(
            config.classifier,
            **classifier_sources(config, paths)[source],
            **{"eval.paths": (str(paths.data),), "eval.split": "test", "train.seed": seed},
        ),
        str(paths.classifier(source, seed)),
    )


def stage_classifiers(config, paths: layout.Paths) -> None:
    """Each source's classifiers over the seeds; seed 0's export then scores the validation
    split, on which the evaluation chooses its thresholds."""
    from busgen_jax.classification import inference

    aucs: dict[str, list[float]] = {}
    for source in config.classifier_sources:
        for seed in config.classifier_seeds:
            print(f"   classifier trained on {source} data, seed {seed}")
            result = train_source_classifier(config, paths, source, seed)
            aucs.setdefault(source, []).append(result["auc"])
        model, trained = inference.load_classifier(paths.classifier(source) / layout.EXPORT)
        rows = inference.predict_split(model, trained, [str(paths.data)], "val")
        inference.write_csv(rows, paths.predictions(source, "val"))
    summary = {source: demo_gates.seed_summary(values) for source, values in aucs.items()}
    (paths.classifiers / layout.SEEDS).write_text(json.dumps(summary, indent=1))


def stage_evaluate(config, paths: layout.Paths) -> None:
    from busgen_jax.jobs import evaluate

    sources = list(config.classifier_sources)
    eval_config = stage_config(
        config.evaluate,
        predictions=tuple(f"{s}={paths.predictions(s, 'test')}" for s in sources),
        validation=tuple(f"{s}={paths.predictions(s, 'val')}" for s in sources),
        **{"reader_study.data_paths": (str(paths.data),)},
    )
    evaluate.run(eval_config, str(paths.root))


def stage_fidelity(config, paths: layout.Paths) -> None:
    from busgen_jax.evaluation import fidelity

    sources = [s for s in ("real", "synthetic") if s in config.classifier_sources]
    fidelity.fidelity_from_exports(
        [str(paths.data)],
        [str(paths.synthetic)],
        {s: str(paths.classifier(s) / layout.EXPORT) for s in sources},
        seed=config.seed,
        segmenter_steps=config.fidelity_segmenter_steps,
        out_path=paths.fidelity / layout.FIDELITY,
    )
    stage_oracle(config, paths)


def stage_oracle(config, paths: layout.Paths) -> None:
    """The quality gates' measurements: the phantom oracle's verdict on the synthetic set, and
    a recount of noise-like images in the written dataset."""
    from busgen_jax.classification import inference
    from busgen_jax.data import pipeline, shards
    from busgen_jax.diffusion import generator
    from busgen_jax.evaluation import oracle, sample_failures

    oracle_dir = config.oracle.classifier or oracle.shipped_dir()
    oracle_config = json.loads((pathlib.Path(oracle_dir) / inference.CONFIG_FILE).read_text())
    size = oracle_config["data"]["image_size"]
    reference = [config.oracle.reference or str(paths.data)]
    synthetic = pipeline.load_split([str(paths.synthetic)], "train", size)
    result = oracle.measure(
        synthetic,
        pipeline.load_split(reference, "train", size),
        pipeline.load_split(reference, "test", size),
        oracle_dir=oracle_dir,
        seed=config.seed,
        max_per_class=config.oracle.max_per_class,
    )
    oracle.write(result, paths.fidelity / layout.ORACLE)
    failed = shards.read_manifest(paths.synthetic)["extra"]["failed_samples"]
    # At the generator's own size, where synthesis measured the limit.
    native = json.loads((paths.generator / generator.SPEC_FILE).read_text())["image_size"]
    generated = pipeline.load_split([str(paths.synthetic)], "train", native)
    count = int(sample_failures.failed(generated["image"], failed["limit"]).sum())
    (paths.fidelity / layout.FAILED_IN_DATASET).write_text(json.dumps({"failed": count}))


def stage_scaling(config, paths: layout.Paths) -> None:
    from busgen_jax.jobs import scaling

    scaling_config = stage_config(
        config.scaling, real_path=str(paths.data), synthetic_path=str(paths.synthetic)
    )
    scaling.run(scaling_config, str(paths.scaling))


def stage_report(config, paths: layout.Paths) -> None:
    from busgen_jax.reporting import demo_report

    demo_report.write(paths, config)


STAGES: tuple[tuple[str, Callable[[ml_collections.ConfigDict, layout.Paths], None]], ...] = (
    ("phantom", stage_phantom),
    ("pretrain", stage_pretrain),
    ("adapt", stage_adapt),
    ("guidance", stage_guidance),
    ("synthesize", stage_synthesize),
    ("classifiers", stage_classifiers),
    ("evaluate", stage_evaluate),
    ("fidelity", stage_fidelity),
    ("scaling", stage_scaling),
    ("report", stage_report),
)


def run(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    config_files.check_fields(
        config,
        [
            config_files.one_of(
                "label_filter_source",
                config.label_filter_source,
                ("", *(s for s in config.classifier_sources if s in REAL_SOURCES)),
            )
        ],
    )
    paths = layout.Paths(workdir, config)
    paths.root.mkdir(parents=True, exist_ok=True)
    timings_path = paths.root / layout.TIMINGS
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    start = time.perf_counter()
    for index, (name, stage) in enumerate(STAGES, 1):
        marker = paths.root / f".{name}.done"
        if marker.exists() and name != "report":
            print(f"[{index}/{len(STAGES)}] {name}: done already ({timings.get(name, 0):.0f} s)")
            continue
        print(f"[{index}/{len(STAGES)}] {name} ...", flush=True)
        logging.info("demo stage %s", name)
        tick = time.perf_counter()
        stage(config, paths)
        timings[name] = time.perf_counter() - tick
        timings_path.write_text(json.dumps(timings, indent=1))
        marker.touch()
        print(f"[{index}/{len(STAGES)}] {name}: {timings[name]:.0f} s", flush=True)
    print("quality gates (gates.json):")
    for gate in demo_gates.evaluate(paths):
        print(f"   {demo_gates.describe(gate)}")
    total = sum(timings.values())
    print(f"demo finished: {total:.0f} s of stages ({time.perf_counter() - start:.0f} s this run)")
    print(f"report: {paths.report}")
    return paths.report


main = shell.command(run, "configs/demo.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
