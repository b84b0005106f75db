"""Synthesizes a labelled, privacy-audited dataset from a (possibly adapted) generator.

    busgen synthesize --config=configs/synthesize.py:tiny --workdir=DIR \
        --config.generator=RUN/export --config.audit.train_paths=DATA_DIR

Record i of the dataset is fixed by the config alone: its (pathology, device) comes from the
plan, its box and noise from keys folded from the seed, its shard from i. Shard k holds records
[k * S, (k + 1) * S); process p of P writes the shards with k % P == p, each complete or absent
(write then rename; a JSON sidecar written after the shard marks it done). A restarted job skips
done shards and redoes the rest, so it finishes with exactly N records, no duplicates, no gaps,
and the same bytes as an uninterrupted run. Process 0 writes the manifest and the audit report
once every shard is done.

Each shard is drawn by the audited-generation loop (`synthesis.generate`): every candidate is
compared with the generator's training images (`privacy.audit`: NCC and a shift/crop/rotation-
tolerant windowed NCC); candidates above either threshold (by default a quantile of
held-out-to-training similarity) are rejected, never stored, and drawn again with a new key and
box. This command resolves the config into the loop's context once and writes what the loop
returns. The finished directory holds only shards, manifest and `audit/`, which names training
neighbours by case id and holds no training pixels.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from busgen_jax.core import config_files, errors, test_hooks
from busgen_jax.data import box_priors, pipeline, schema, shards
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.diffusion import schedules
from busgen_jax.evaluation import sample_failures
from busgen_jax.jobs import layout, shell
from busgen_jax.models import presets
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.privacy import audit, cpsample, membership
from busgen_jax.privacy import report as privacy_report
from busgen_jax.synthesis import generate, label_filter
from busgen_jax.synthesis import plan as synthesis_plan
from busgen_jax.synthesis import sampler as sampler_lib

# Kernel width (in box-feature units: centre, log aspect, log area) when a class has too few
# boxes for Scott's rule; wide enough to move boxes, narrow enough to keep them plausible.
FEW_BOXES_BANDWIDTH = 0.05
# Significance at which an accepted set that tests as copying fails the job. Strict: a generator
# as good as real data would otherwise fail one run in twenty; one that slips near-copies just
# under the thresholds gives p-values far below it.
FAIL_ALPHA = 1e-3


def make_plan(config: ml_collections.ConfigDict, spec: generator_lib.GeneratorSpec):
    """(pathology, device) per record: balancing a real dataset, or the configured mix."""
    if config.balance_dataset:
        manifest = shards.read_manifest(config.balance_dataset)
        plan = synthesis_plan.balance_plan(
            manifest, list(spec.class_names), list(spec.device_names)
        )
    else:
        classes = dict(config.classes) or {c: 1.0 for c in spec.class_names}
        devices = dict(config.devices) or {d: 1.0 for d in spec.device_names}
        generator_lib.ids_for(list(classes), spec.class_names, "classes")
        generator_lib.ids_for(list(devices), spec.device_names, "devices")
        plan = synthesis_plan.mix_plan(classes, devices, config.num_images)
    return synthesis_plan.assignments(plan, config.seed)


def load_box_prior(config: ml_collections.ConfigDict, class_names) -> box_priors.BoxPrior:
    if config.box_prior:
        return box_priors.load_box_prior(config.box_prior)
    records = [
        r
        for r in _train_records(config.box_prior_from or config.audit.train_paths)
        if r["pathology"] in class_names
    ]
    try:
        return box_priors.fit_box_prior(records, bandwidth=config.box_bandwidth)
    except ValueError as e:
        if config.box_bandwidth is not None:
            raise errors.JobError(f"box prior: {e}") from e
        # A few-shot training set has too few boxes per class for a bandwidth rule.
        logging.warning("box prior: %s; using bandwidth %g", e, FEW_BOXES_BANDWIDTH)
        return box_priors.fit_box_prior(records, bandwidth=FEW_BOXES_BANDWIDTH)


def _train_records(paths):
    for path in paths:
        yield from shards.read_records(path, "train")


def load_generator(config: ml_collections.ConfigDict) -> tuple[Any, generator_lib.GeneratorSpec]:
    """(model, spec) of the configured generator, its adapter merged."""
    if not config.generator:
        raise errors.JobError("config.generator is empty (an exported generator, e.g. RUN/export)")
    try:
        return generator_lib.load_generator(config.generator, config.adapter or None)
    except ValueError as e:  # an adapter of another generator, a broken export
        raise errors.JobError(str(e)) from e


def make_context(
    config: ml_collections.ConfigDict, model: Any, spec: generator_lib.GeneratorSpec
) -> generate.Context:
    """The config resolved, once, into what the loop needs: plan, box prior, audit reference,
    the generator's (optionally copy-protected) sampler and the records' provenance."""
    try:
        # Unknown classes or devices fail here, before the audit reference costs its time.
        plan = make_plan(config, spec)
    except ValueError as e:  # a bad mix
        raise errors.JobError(str(e)) from e
    if not config.audit.train_paths:
        raise errors.JobError("config.audit.train_paths is empty (the data the generator learned)")
    try:
        sampling = generator_lib.sampling_settings(
            spec, {k: config[k] for k in presets.SAMPLING_FIELDS}
        )
    except ValueError as e:
        raise errors.JobError(f"config: {e}") from e
    label_check = load_label_check(config)
    reference = _audit_reference(config, spec)
    protect_fn, protection = copy_protection(config.cpsample, spec, reference.train["image"])
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    if config.batch_size % mesh_lib.num_batch_shards(mesh):
        raise errors.JobError(
            f"batch_size {config.batch_size} does not divide over {mesh.shape} devices"
        )
    prior = load_box_prior(config, spec.class_names)
    failure_limit = sample_failures.failure_limit(reference.train["image"])
    sample_fn = generator_lib.make_sample_fn(
        spec,
        eta=config.eta,
        protect_fn=protect_fn,
        **{k: v for k, v in sampling.items() if k not in ("preset", "box_raster")},
    )
    return generate.Context(
        name=config.name,
        seed=config.seed,
        plan=plan,
        prior=prior,
        sampler=sampler_lib.GeneratorSampler(
            model, spec, sample_fn, mesh, config.batch_size, sampling["box_raster"]
        ),
        reference=reference,
        records_per_shard=config.records_per_shard,
        max_rounds=config.audit.max_rounds,
        num_closest=config.audit.num_closest,
        failure_limit=failure_limit,
        redraw_failed=config.redraw_failed,
        provenance=_provenance(config, sampling, protection),
        label_check=label_check.on_label if label_check else None,
        label_rounds=config.label_filter.rounds if label_check else 0,
    )


def load_label_check(config: ml_collections.ConfigDict) -> label_filter.LabelCheck | None:
    """The configured label filter's check, or None when it is off."""
    settings = config.label_filter
    if not settings.classifier:
        return None
    config_files.check_fields(
        config,
        [
            (
                "label_filter.rounds",
                0 < settings.rounds < config.audit.max_rounds,
                f"must be in [1, audit.max_rounds = {config.audit.max_rounds}): the rounds after "
                "it keep what the filter would redraw",
            )
        ],
    )
    try:
        return label_filter.load(settings.classifier, settings.min_probability)
    except (FileNotFoundError, ValueError) as e:
        raise errors.JobError(f"label_filter.classifier: {e}") from e


def _provenance(config, sampling: dict[str, Any], protection: dict | None) -> dict[str, Any]:
    """What every record (and the manifest) says about how it was made."""
    return {
        "source": "synthetic",
        "checkpoint": str(config.generator),
        "adapter": str(config.adapter) if config.adapter else None,
        "seed": config.seed,
        "sampler": sampling["sampler"],
        "steps": sampling["steps"],
        "guidance": sampling["guidance_weight"],
        "skip": sampling["skip"],
        "sampling": sampling,
        "cpsample": protection,
        "label_filter": config.label_filter.to_dict() if config.label_filter.classifier else None,
    }


def _audit_reference(config: ml_collections.ConfigDict, spec) -> generate.AuditReference:
    """The audit's splits, at the generator's size and classes, and its thresholds."""
    paths, size, classes = list(config.audit.train_paths), spec.image_size, spec.class_names
    train = pipeline.load_split(paths, "train", size, classes)
    heldout = pipeline.load_split(paths, config.audit.heldout_split, size, classes)
    return generate.audit_reference(train, heldout, config.audit)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Writes `workdir/synthetic/`: shards, manifest, audit report; returns the manifest."""
    out_dir = pathlib.Path(workdir) / layout.SYNTHETIC
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / shards.MANIFEST).exists():
        logging.info("%s is complete already", out_dir)
        _remove_scratch(out_dir, "")
        return shards.read_manifest(out_dir)
    model, spec = load_generator(config)
    return write_dataset(config, out_dir, make_context(config, model, spec), (model, spec))


def write_dataset(
    config: ml_collections.ConfigDict,
    out_dir: pathlib.Path,
    ctx: generate.Context,
    generator: tuple[Any, generator_lib.GeneratorSpec],
) -> dict[str, Any]:
    """This process's shards not done yet, each drawn by `ctx.sampler` through the loop; then,
    on process 0, the manifest and audit (`generator` is what the membership attack scores)."""
    mine = range(jax.process_index(), ctx.num_shards, jax.process_count())
    for k in mine:  # what a killed run of this process left half-written
        _remove_scratch(out_dir, _shard_name(ctx, k), sidecars=False)
    todo = [k for k in mine if not _sidecar(out_dir, ctx, k).exists()]
    logging.info(
        "synthesis: %d records in %d shards; %d shards to write here (%d done)",
        len(ctx.plan),
        ctx.num_shards,
        len(todo),
        len(mine) - len(todo),
    )
    start, made = time.perf_counter(), 0
    for n, shard in enumerate(todo, 1):
        records, sidecar = generate.generate_shard(ctx, shard)
        path = out_dir / _shard_name(ctx, shard)
        sidecar["shard"] = shards.write_shard(map(schema.serialize, records), path)
        shards.atomic_write_text(_sidecar(out_dir, ctx, shard), json.dumps(sidecar))
        test_hooks.pause_point("synthesis_shard_done")
        made += len(records)
        rate = made / (time.perf_counter() - start)
        left = sum(len(ctx.records_of(k)) for k in todo[n:])
        logging.info(
            "shard %d/%d written (%.2f images/s; of %d candidates, %d rejected by the audit, "
            "%d noise-like and %d off-label redrawn; ETA %.0f s)",
            n,
            len(todo),
            rate,
            len(sidecar["candidate_sims"]["ncc"]),
            sidecar["rejected"],
            sidecar["failed"],
            sidecar["off_label"],
            left / max(rate, 1e-9),
        )
    if jax.process_index() != 0:
        return {}
    return finalize(config, out_dir, ctx, generator)


def _shard_name(ctx: generate.Context, shard: int) -> str:
    return f"{ctx.name}-train-{shard:05d}-of-{ctx.num_shards:05d}.array_record"


def _sidecar(out_dir: pathlib.Path, ctx: generate.Context, shard: int) -> pathlib.Path:
    return out_dir / f".{_shard_name(ctx, shard)}.done.json"


def _remove_scratch(out_dir: pathlib.Path, shard_name: str, sidecars: bool = True) -> None:
    """Deletes hidden temporaries (and, once the dataset is complete, sidecars) of a shard name
    ('' for all): a shared dataset directory holds only shards, manifest and audit."""
    for path in out_dir.iterdir():
        if not path.name.startswith(".") or shard_name not in path.name:
            continue
        if ".tmp-" in path.name or (sidecars and path.name.endswith(".done.json")):
            path.unlink(missing_ok=True)


def finalize(
    config: ml_collections.ConfigDict,
    out_dir: pathlib.Path,
    ctx: generate.Context,
    generator: tuple[Any, generator_lib.GeneratorSpec],
) -> dict:
    """Manifest and audit report, once every process's shards are done."""
    sidecars = [_sidecar(out_dir, ctx, k) for k in range(ctx.num_shards)]
    deadline = time.monotonic() + config.finalize_timeout_s
    while not all(p.exists() for p in sidecars):
        if time.monotonic() > deadline:
            missing = [p.name for p in sidecars if not p.exists()]
            raise errors.JobError(f"{out_dir}: shards of other processes never finished: {missing}")
        time.sleep(2.0)
    done = [json.loads(p.read_text()) for p in sidecars]
    meta = [m for d in done for m in d["records"]]
    manifest = shards.build_manifest(
        config.name, {"train": [d["shard"] for d in done]}, {"train": meta}
    )
    manifest["extra"] = {"provenance": ctx.provenance, "config": config.to_dict()}
    report = write_audit(config, out_dir, ctx, done, generator)
    manifest["extra"]["audit"] = {
        k: report[k] for k in ("thresholds", "num_candidates", "rejected_count", "rejection_rate")
    }
    # Noise-like draws, redrawn before the privacy check: none of them is in the dataset.
    manifest["extra"]["failed_samples"] = {
        "redrawn": sum(d.get("failed", 0) for d in done),
        "limit": ctx.failure_limit,
    }
    # Candidates the label filter judged off-label and redrew: none of them is in the dataset.
    manifest["extra"]["off_label_redrawn"] = sum(d.get("off_label", 0) for d in done)
    accepted = {m: np.concatenate([d["accepted_sims"][m] for d in done]) for m in audit.MEASURES}
    verdict = audit.copying_verdict(accepted, ctx.reference.heldout_sims, alpha=FAIL_ALPHA)
    if verdict["copying"]:
        raise errors.JobError(
            f"{out_dir}: the accepted images test as copying their training images "
            f"({verdict['interpretation']}); no manifest written; see {out_dir / 'audit'}"
        )
    shards.atomic_write_text(
        out_dir / shards.MANIFEST, json.dumps(manifest, indent=1, sort_keys=True)
    )
    _remove_scratch(out_dir, "")
    print(
        f"synthetic dataset: {out_dir} ({manifest['num_records']} images); "
        f"audit: {out_dir / 'audit'}"
    )
    return manifest


def write_audit(
    config: ml_collections.ConfigDict,
    out_dir: pathlib.Path,
    ctx: generate.Context,
    done: list[dict],
    generator: tuple[Any, generator_lib.GeneratorSpec],
) -> dict:
    """audit/: every candidate's similarities against held-out ones, the closest candidates and
    the closest written images, each as synthetic image (written ones only) beside the training
    neighbour's case id, membership inference, and optionally the operator-only pictures of
    the closest written images' training neighbours in WORKDIR/private_audit/."""
    sims = {m: np.concatenate([d["candidate_sims"][m] for d in done]) for m in audit.MEASURES}

    def ranked(key: str) -> list[dict]:
        entries = sorted((c for d in done for c in d[key]), key=lambda c: -c["score"])
        return entries[: config.audit.num_closest]

    closest, closest_written = ranked("closest"), ranked("closest_written")
    stored = {
        r["case_id"]: r["image"]
        for k in {c["index"] // ctx.records_per_shard for c in closest + closest_written}
        for r in shards.read_shard(out_dir / done[k]["shard"]["file"])
    }
    for entry in closest + closest_written:
        png = stored.get(entry["synthetic_case_id"])
        entry["image"] = None if png is None else schema.decode_png(png)
    private = None
    if config.audit.private_pictures:
        train = ctx.reference.train
        rows = [
            (
                c["image"],
                train["image"][train["case_id"].index(c["train_case_id"])],
                c["synthetic_case_id"],
            )
            for c in closest_written
        ]
        private = str(
            privacy_report.write_private_pairs(
                out_dir.parent / privacy_report.PRIVATE_DIR / "closest_pairs.png", rows
            )
        )
    return privacy_report.write_audit_report(
        out_dir / layout.AUDIT,
        candidate_sims=sims,
        heldout_sims=ctx.reference.heldout_sims,
        thresholds=ctx.reference.thresholds,
        rejected_count=sum(d["rejected"] for d in done),
        closest=closest,
        closest_written=closest_written,
        membership=(
            _membership(config, generator, ctx.reference) if config.audit.membership_draws else None
        ),
        private_pictures=private,
    )


def _membership(config, generator, reference: generate.AuditReference) -> dict[str, Any]:
    """Loss-based membership inference: the generator's training split against held-out."""
    model, spec = generator
    return membership.attack(
        model,
        spec,
        reference.train,
        reference.heldout,
        num_draws=config.audit.membership_draws,
        seed=config.seed,
    )


def copy_protection(cp: ml_collections.ConfigDict, spec, train_images: np.ndarray):
    """(protect_fn for the sampler, provenance) of copy-protected sampling; (None, None) if off.

    The random-label classifier is trained here on the audit's training images (the images to
    protect) at the generator's resolution and noise schedule.
    """
    if not cp.scale:
        return None, None
    schedule = schedules.make_schedule(ml_collections.ConfigDict(spec.schedule))
    classifier, info = cpsample.train_classifier(
        train_images, schedule, steps=cp.steps, channels=cp.channels, seed=cp.seed
    )
    logging.info(
        "CPSample classifier: %.0f%% of training labels memorized", 100 * info["train_accuracy"]
    )
    protect_fn = functools.partial(
        cpsample.protect,
        classifier=classifier,
        schedule=schedule,
        prediction=spec.prediction,
        scale=cp.scale,
        alpha=cp.alpha,
    )
    return protect_fn, {**cp.to_dict(), "train_accuracy": info["train_accuracy"]}


main = shell.command(run, "configs/synthesize.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
