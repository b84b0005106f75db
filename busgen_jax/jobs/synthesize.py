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

Every candidate is compared with the generator's training images (`privacy.audit`: NCC and a
shift/crop/rotation-tolerant windowed NCC); candidates above either threshold (by default a
quantile of held-out-to-training similarity) are rejected, never stored, and drawn again with a
new key and box. The finished directory holds only shards, manifest and `audit/`, which names
training neighbours by case id and holds no training pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from busgen_jax.core import errors
from busgen_jax.data import box_priors, pipeline, schema, shards
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.diffusion import schedules
from busgen_jax.evaluation import sample_failures
from busgen_jax.jobs import layout, shell
from busgen_jax.models import presets
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.privacy import audit, cpsample, membership
from busgen_jax.privacy import report as privacy_report
from busgen_jax.reporting import visualize
from busgen_jax.synthesis import plan as synthesis_plan

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


@dataclasses.dataclass(frozen=True)
class AuditReference:
    """Training and held-out splits, held-out-to-training similarities and the thresholds.

    `thresholds` are the configured quantile of held-out-to-training similarity (or the
    configured overrides); `strict_thresholds` the `strict_quantile` one, used for a shard whose
    own candidates test as copying.
    """

    train: dict[str, Any]
    heldout: dict[str, Any]
    heldout_sims: audit.Sims
    thresholds: dict[str, float]
    strict_thresholds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Context:
    """What every shard needs, built once per job by `_context`."""

    config: ml_collections.ConfigDict
    spec: generator_lib.GeneratorSpec
    model: Any
    plan: list[tuple[str, str]]
    prior: box_priors.BoxPrior
    key: jax.Array
    mesh: jax.sharding.Mesh
    reference: AuditReference
    # High-frequency energy above which a draw is noise, from the real training images.
    failure_limit: float
    sampling: dict[str, Any]
    sample_fn: Callable[..., jax.Array]
    provenance: dict[str, Any]


def audit_reference(config: ml_collections.ConfigDict, spec) -> AuditReference:
    """The audit's splits and thresholds (`AuditReference`)."""
    paths, size, classes = list(config.audit.train_paths), spec.image_size, spec.class_names
    train = pipeline.load_split(paths, "train", size, classes)
    heldout = pipeline.load_split(paths, config.audit.heldout_split, size, classes)
    heldout_sims, _ = audit.search(heldout["image"], train["image"])
    thresholds = audit.configured_thresholds(heldout_sims, config.audit)
    strict = audit.calibrate(heldout_sims, config.audit.strict_quantile)
    return AuditReference(
        train=train,
        heldout=heldout,
        heldout_sims=heldout_sims,
        thresholds=thresholds,
        strict_thresholds={m: min(strict[m], thresholds[m]) for m in audit.MEASURES},
    )


def _shard_name(config, shard: int, num_shards: int) -> str:
    return f"{config.name}-train-{shard:05d}-of-{num_shards:05d}.array_record"


def _boxes_for(prior, pathology: str, seed: int, index: int, attempt: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index, attempt])
    return box_priors.sample_boxes(prior, pathology, 1, rng)[0]


def generate_shard(ctx: Context, shard: int) -> tuple[list[dict], dict]:
    """One shard: accepted records and a sidecar (per-record metadata, every candidate's
    similarities, and the shard's closest candidates as similarities and training case ids).

    Rejected candidates are dropped here: neither they nor any training image reach the disk.
    Noise-like candidates (`sample_failures`) are redrawn like privacy rejections and counted.
    """
    config, plan = ctx.config, ctx.plan
    start = shard * config.records_per_shard
    pending = list(range(start, min(start + config.records_per_shard, len(plan))))
    thresholds = ctx.reference.thresholds
    accepted: dict[int, tuple[np.ndarray, np.ndarray, int, dict[str, float]]] = {}
    candidate_sims: dict[str, list[float]] = {m: [] for m in audit.MEASURES}
    closest: list[dict] = []
    failed_count = 0
    for attempt in range(config.audit.max_rounds):
        if not pending:
            break
        boxes = {i: _boxes_for(ctx.prior, plan[i][0], config.seed, i, attempt) for i in pending}
        images = _sample(ctx, pending, boxes, jax.random.fold_in(ctx.key, shard), attempt)
        sims, nearest = audit.search(images, ctx.reference.train["image"])
        failed = (
            sample_failures.failed(images, ctx.failure_limit)
            if config.redraw_failed
            else np.zeros(len(images), bool)
        )
        failed_count += int(failed.sum())
        still = [i for j, i in enumerate(pending) if failed[j]]
        for j, i in enumerate(pending):
            if failed[j]:
                continue
            sim = {m: float(sims[m][j]) for m in audit.MEASURES}
            neighbour = ctx.reference.train["case_id"][nearest["windowed"][j]]
            closest.append(_closest_entry(i, attempt, sim, neighbour, thresholds))
            if audit.flagged(sim, thresholds):
                still.append(i)
            else:
                accepted[i] = (images[j], boxes[i], attempt, sim)
        for m in audit.MEASURES:
            candidate_sims[m] += sims[m].tolist()
        if thresholds is not ctx.reference.strict_thresholds and _tests_as_copying(
            ctx, candidate_sims
        ):
            # The generator copies: tighten the thresholds and recheck what was accepted.
            thresholds = ctx.reference.strict_thresholds
            logging.warning("shard %d: candidates test as copying; using strict thresholds", shard)
            still += [i for i in accepted if audit.flagged(accepted[i][3], thresholds)]
            accepted = {i: a for i, a in accepted.items() if i not in still}
        pending = sorted(still)
        closest = sorted(closest, key=lambda c: -c["score"])[: config.audit.num_closest]
    if pending:
        raise errors.JobError(
            f"shard {shard}: {len(pending)} candidates stayed above the privacy thresholds "
            f"{thresholds} or noise-like ({failed_count} failed draws) after "
            f"{config.audit.max_rounds} rounds; the generator may be memorizing its training "
            "images (see audit settings) or its sampler may be unstable"
        )
    records, meta = [], []
    for i in sorted(accepted):
        image, boxes, attempt, sim = accepted[i]
        pathology, device = plan[i]
        records.append(
            schema.make_record(
                visualize.to_uint8(image[..., 0]),
                pathology=pathology,
                device=device,
                case_id=f"{config.name}-{i:08d}",
                patient_id=f"{config.name}-{i:08d}",
                split="train",
                boxes=boxes,
                provenance={
                    **ctx.provenance,
                    "index": i,
                    "attempt": attempt,
                    "nn_similarity": sim["ncc"],
                    "windowed_similarity": sim["windowed"],
                },
            )
        )
        meta.append({"pathology": pathology, "device": device})
    for entry in closest:
        kept = entry["index"] in accepted and accepted[entry["index"]][2] == entry["attempt"]
        entry["synthetic_case_id"] = f"{config.name}-{entry['index']:08d}" if kept else None
    sidecar = {
        "records": meta,
        "candidate_sims": candidate_sims,
        "accepted_sims": {m: [accepted[i][3][m] for i in sorted(accepted)] for m in audit.MEASURES},
        "rejected": len(candidate_sims["ncc"]) - len(records),
        "failed": failed_count,
        "closest": closest,
    }
    return records, sidecar


def _closest_entry(index, attempt, sim, neighbour, thresholds) -> dict[str, Any]:
    """A candidate as the audit lists it; `score` ranks by the largest margin over a threshold."""
    return {
        "index": index,
        "attempt": attempt,
        "similarity": sim,
        "train_case_id": neighbour,
        "flagged": bool(audit.flagged(sim, thresholds)),
        "score": float(audit.margin(sim, thresholds)),
    }


def _tests_as_copying(ctx: Context, candidate_sims: dict[str, list[float]]) -> bool:
    sims = {m: np.asarray(v) for m, v in candidate_sims.items()}
    return audit.copying_verdict(sims, ctx.reference.heldout_sims)["copying"]


def _sample(
    ctx: Context, indices: list[int], boxes: dict, shard_key: jax.Array, attempt: int
) -> np.ndarray:
    """Images for `indices`, in fixed-size batches sharded over the local devices."""
    config, spec, plan = ctx.config, ctx.spec, ctx.plan
    size, batch = spec.image_size, config.batch_size
    out = []
    for b, first in enumerate(range(0, len(indices), batch)):
        chunk = indices[first : first + batch]
        padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape
        classes = generator_lib.ids_for([plan[i][0] for i in padded], spec.class_names, "classes")
        devices = generator_lib.ids_for([plan[i][1] for i in padded], spec.device_names, "devices")
        raster = ctx.sampling["box_raster"]
        masks = np.stack([box_priors.box_mask(boxes[i], size, size, raster) for i in padded])
        key = jax.random.fold_in(jax.random.fold_in(shard_key, attempt), b)
        inputs = mesh_lib.host_batch_to_global(
            {"class_id": classes, "device_id": devices, "box_mask": masks}, ctx.mesh
        )
        images = ctx.sample_fn(
            ctx.model, key, inputs["class_id"], inputs["device_id"], inputs["box_mask"]
        )
        out.append(np.asarray(jax.device_get(images))[: len(chunk)])
    return np.concatenate(out)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Writes `workdir/synthetic/`: shards, manifest, audit report; returns the manifest."""
    out_dir = pathlib.Path(workdir) / layout.SYNTHETIC
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / shards.MANIFEST).exists():
        logging.info("%s is complete already", out_dir)
        _remove_scratch(out_dir, "")
        return shards.read_manifest(out_dir)
    ctx = _context(config)
    num_shards = -(-len(ctx.plan) // config.records_per_shard)
    mine = range(jax.process_index(), num_shards, jax.process_count())
    for k in mine:  # what a killed run of this process left half-written
        _remove_scratch(out_dir, _shard_name(config, k, num_shards), sidecars=False)
    todo = [k for k in mine if not _sidecar(out_dir, config, k, num_shards).exists()]
    logging.info(
        "synthesis: %d records in %d shards; %d shards to write here (%d done)",
        len(ctx.plan),
        num_shards,
        len(todo),
        len(mine) - len(todo),
    )
    start, made = time.perf_counter(), 0
    for n, shard in enumerate(todo, 1):
        records, sidecar = generate_shard(ctx, shard)
        name = _shard_name(config, shard, num_shards)
        sidecar["shard"] = shards.write_shard(map(schema.serialize, records), out_dir / name)
        shards.atomic_write_text(_sidecar(out_dir, config, shard, num_shards), json.dumps(sidecar))
        made += len(records)
        rate = made / (time.perf_counter() - start)
        left = sum(
            min(config.records_per_shard, len(ctx.plan) - k * config.records_per_shard)
            for k in todo[n:]
        )
        logging.info(
            "shard %d/%d written (%.2f images/s, %d of %d candidates rejected, %d of them "
            "noise-like, ETA %.0f s)",
            n,
            len(todo),
            rate,
            sidecar["rejected"],
            len(sidecar["candidate_sims"]["ncc"]),
            sidecar["failed"],
            left / max(rate, 1e-9),
        )
    if jax.process_index() != 0:
        return {}
    return finalize(config, out_dir, num_shards, ctx)


def _sidecar(out_dir: pathlib.Path, config, shard: int, num_shards: int) -> pathlib.Path:
    return out_dir / f".{_shard_name(config, shard, num_shards)}.done.json"


def _remove_scratch(out_dir: pathlib.Path, shard_name: str, sidecars: bool = True) -> None:
    """Deletes hidden temporaries (and, once the dataset is complete, sidecars) of a shard name
    ('' for all): a shared dataset directory holds only shards, manifest and audit."""
    for path in out_dir.iterdir():
        if not path.name.startswith(".") or shard_name not in path.name:
            continue
        if ".tmp-" in path.name or (sidecars and path.name.endswith(".done.json")):
            path.unlink(missing_ok=True)


def finalize(config, out_dir: pathlib.Path, num_shards: int, ctx: Context) -> dict:
    """Manifest and audit report, once every process's shards are done."""
    sidecars = [_sidecar(out_dir, config, k, num_shards) for k in range(num_shards)]
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
    report = write_audit(out_dir, ctx, done)
    manifest["extra"]["audit"] = {
        k: report[k] for k in ("thresholds", "num_candidates", "rejected_count", "rejection_rate")
    }
    # Noise-like draws, redrawn before the privacy check: none of them is in the dataset.
    manifest["extra"]["failed_samples"] = {
        "redrawn": sum(d.get("failed", 0) for d in done),
        "limit": ctx.failure_limit,
    }
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


def write_audit(out_dir: pathlib.Path, ctx: Context, done: list[dict]) -> dict:
    """audit/: every candidate's similarities against held-out ones, the closest candidates as
    synthetic image (accepted ones only) beside the training neighbour's case id, membership
    inference, and optionally the operator-only pictures in WORKDIR/private_audit/."""
    config = ctx.config
    sims = {m: np.concatenate([d["candidate_sims"][m] for d in done]) for m in audit.MEASURES}
    closest = sorted((c for d in done for c in d["closest"]), key=lambda c: -c["score"])
    closest = closest[: config.audit.num_closest]
    stored = {
        r["case_id"]: r["image"]
        for k in {c["index"] // config.records_per_shard for c in closest}
        for r in shards.read_shard(out_dir / done[k]["shard"]["file"])
    }
    for entry in closest:
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
            for c in closest
            if c["image"] is not None
        ]
        private = str(
            privacy_report.write_private_pairs(
                out_dir.parent / privacy_report.PRIVATE_DIR / "closest_pairs.png", rows
            )
        )
    return privacy_report.write_audit_report(
        out_dir / "audit",
        candidate_sims=sims,
        heldout_sims=ctx.reference.heldout_sims,
        thresholds=ctx.reference.thresholds,
        rejected_count=sum(d["rejected"] for d in done),
        closest=closest,
        membership=_membership(ctx) if config.audit.membership_draws else None,
        private_pictures=private,
    )


def _membership(ctx: Context) -> dict[str, Any]:
    """Loss-based membership inference: the generator's training split against held-out."""
    return membership.attack(
        ctx.model,
        ctx.spec,
        ctx.reference.train,
        ctx.reference.heldout,
        num_draws=ctx.config.audit.membership_draws,
        seed=ctx.config.seed,
    )


def _context(config: ml_collections.ConfigDict) -> Context:
    if not config.generator:
        raise errors.JobError("config.generator is empty (an exported generator, e.g. RUN/export)")
    try:
        model, spec = generator_lib.load_generator(config.generator, config.adapter or None)
        # Unknown classes or devices fail here, before the audit reference costs its time.
        plan = make_plan(config, spec)
    except ValueError as e:  # an adapter of another generator, a broken export, a bad mix
        raise errors.JobError(str(e)) from e
    if not config.audit.train_paths:
        raise errors.JobError("config.audit.train_paths is empty (the data the generator learned)")
    try:
        sampling = generator_lib.sampling_settings(
            spec, {k: config[k] for k in presets.SAMPLING_FIELDS}
        )
    except ValueError as e:
        raise errors.JobError(f"config: {e}") from e
    reference = audit_reference(config, spec)
    protect_fn, protection = copy_protection(config.cpsample, spec, reference.train["image"])
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    if config.batch_size % mesh_lib.num_batch_shards(mesh):
        raise errors.JobError(
            f"batch_size {config.batch_size} does not divide over {mesh.shape} devices"
        )
    return Context(
        config=config,
        spec=spec,
        model=model,
        plan=plan,
        prior=load_box_prior(config, spec.class_names),
        key=jax.random.key(config.seed),
        mesh=mesh,
        reference=reference,
        failure_limit=sample_failures.failure_limit(reference.train["image"]),
        sampling=sampling,
        sample_fn=generator_lib.make_sample_fn(
            spec,
            eta=config.eta,
            protect_fn=protect_fn,
            **{k: v for k, v in sampling.items() if k not in ("preset", "box_raster")},
        ),
        provenance={
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
        },
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
