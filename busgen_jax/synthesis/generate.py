"""The one audited-generation loop: draw, drop near-copies of training images, redraw.

    records, sidecar = generate.generate_shard(context, shard)

Record i is fixed by the `Context` alone: its (pathology, device) comes from the plan, its boxes
from `(seed, i, attempt)`, its key from `(seed, shard, attempt)` (the sampler folds in its batch
index), so a shard drawn again gives the same bytes. Every candidate is compared with the
generator's training images (`privacy.audit.search`: NCC and a shift/crop/rotation-tolerant
windowed NCC); one above either threshold is rejected and drawn again with a new key and boxes,
as is a noise-like one (`evaluation.sample_failures`) when the context says so, and, in the
first `label_rounds` rounds, one that the context's label check (`synthesis.label_filter`) does
not assign to its requested class. If a shard's own candidates test as copying
(`audit.copying_verdict`), its thresholds tighten to the strict ones and what it had accepted
is checked again. Rejected candidates never leave this module.

Who draws is injected (`sampler.Sampler`): `busgen synthesize` passes a `GeneratorSampler`,
tests pass toy samplers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from busgen_jax.core import errors
from busgen_jax.data import box_priors, schema
from busgen_jax.evaluation import sample_failures
from busgen_jax.privacy import audit
from busgen_jax.reporting import visualize
from busgen_jax.synthesis.sampler import Draw, Sampler


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


def audit_reference(
    train: dict[str, Any], heldout: dict[str, Any], settings: Mapping[str, Any]
) -> AuditReference:
    """The reference of splits as `pipeline.load_split` gives them and an audit config section
    (`quantile`, `threshold`, `windowed_threshold`, `strict_quantile`)."""
    heldout_sims, _ = audit.search(heldout["image"], train["image"])
    thresholds = audit.configured_thresholds(heldout_sims, settings)
    strict = audit.calibrate(heldout_sims, settings["strict_quantile"])
    return AuditReference(
        train=train,
        heldout=heldout,
        heldout_sims=heldout_sims,
        thresholds=thresholds,
        strict_thresholds={m: min(strict[m], thresholds[m]) for m in audit.MEASURES},
    )


@dataclasses.dataclass(frozen=True)
class Context:
    """What every shard of one dataset needs, built once per job."""

    name: str  # record i is the case `case_id(i)`, f"{name}-{i:08d}"
    seed: int  # boxes and keys are folded from it
    plan: Sequence[tuple[str, str]]  # (pathology, device) of every record
    prior: box_priors.BoxPrior
    sampler: Sampler
    reference: AuditReference
    records_per_shard: int
    max_rounds: int
    # Closest candidates a shard keeps for the audit (synthetic image beside the training id).
    num_closest: int
    # High-frequency energy above which a draw is noise, and whether such draws are redrawn.
    failure_limit: float
    redraw_failed: bool
    # Every record's provenance, before its own index, attempt and similarities.
    provenance: Mapping[str, Any]
    # (images, requested pathologies) -> bool, True where a candidate shows its class; in the
    # first `label_rounds` rounds the others are redrawn (over-generation), later ones are kept.
    label_check: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None
    label_rounds: int = 0

    @property
    def num_shards(self) -> int:
        return -(-len(self.plan) // self.records_per_shard)

    def records_of(self, shard: int) -> range:
        start = shard * self.records_per_shard
        return range(start, min(start + self.records_per_shard, len(self.plan)))

    def case_id(self, index: int) -> str:
        return f"{self.name}-{index:08d}"


class _Accepted(NamedTuple):
    image: np.ndarray
    boxes: np.ndarray
    attempt: int
    sim: dict[str, float]
    neighbour: str  # the nearest training case's id


@dataclasses.dataclass
class _Progress:
    """A shard between rounds: what is still to draw, what passed, what the audit will list."""

    pending: list[int]
    thresholds: dict[str, float]
    strict: bool = False
    accepted: dict[int, _Accepted] = dataclasses.field(default_factory=dict)
    candidate_sims: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {m: [] for m in audit.MEASURES}
    )
    closest: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: int = 0
    off_label: int = 0


def generate_shard(ctx: Context, shard: int) -> tuple[list[dict], dict]:
    """One shard: accepted records and a sidecar (per-record metadata, every candidate's
    similarities, and the shard's closest candidates as similarities and training case ids).

    Rejected candidates are dropped here: neither they nor any training image reach the disk.
    Noise-like candidates (`sample_failures`) are redrawn like privacy rejections and counted.

    Raises:
      JobError: candidates still rejected after `ctx.max_rounds` rounds.
    """
    progress = _Progress(list(ctx.records_of(shard)), ctx.reference.thresholds)
    for attempt in range(ctx.max_rounds):
        if not progress.pending:
            break
        _draw_round(ctx, shard, attempt, progress)
    if progress.pending:
        raise errors.JobError(
            f"shard {shard}: {len(progress.pending)} candidates stayed above the privacy "
            f"thresholds {progress.thresholds}, noise-like ({progress.failed} failed draws) or "
            f"off-label ({progress.off_label} draws) "
            f"after {ctx.max_rounds} rounds; the generator may be memorizing its training "
            "images (see audit settings) or its sampler may be unstable"
        )
    return _records(ctx, progress.accepted), _sidecar(ctx, progress)


def _draw_round(ctx: Context, shard: int, attempt: int, progress: _Progress) -> None:
    """Draws every pending record once and sorts the candidates into accepted and pending."""
    draws = [Draw(i, *ctx.plan[i], _boxes_for(ctx, i, attempt)) for i in progress.pending]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(ctx.seed), shard), attempt)
    images = np.asarray(ctx.sampler(draws, key))
    if len(images) != len(draws):
        raise ValueError(f"the sampler returned {len(images)} images for {len(draws)} draws")
    train = ctx.reference.train
    sims, nearest = audit.search(images, train["image"])
    failed = (
        sample_failures.failed(images, ctx.failure_limit)
        if ctx.redraw_failed
        else np.zeros(len(images), bool)
    )
    progress.failed += int(failed.sum())
    redraw = failed.copy()
    if ctx.label_check is not None and attempt < ctx.label_rounds:
        on_label = np.asarray(ctx.label_check(images, [d.pathology for d in draws]), bool)
        progress.off_label += int((~on_label & ~failed).sum())
        redraw |= ~on_label
    still = [d.index for d, r in zip(draws, redraw, strict=True) if r]
    for j, draw in enumerate(draws):
        if redraw[j]:
            continue
        sim = {m: float(sims[m][j]) for m in audit.MEASURES}
        neighbour = train["case_id"][nearest["windowed"][j]]
        progress.closest.append(
            _closest_entry(draw.index, attempt, sim, neighbour, progress.thresholds)
        )
        if audit.flagged(sim, progress.thresholds):
            still.append(draw.index)
        else:
            progress.accepted[draw.index] = _Accepted(
                images[j], draw.boxes, attempt, sim, neighbour
            )
    for m in audit.MEASURES:
        progress.candidate_sims[m] += sims[m].tolist()
    if not progress.strict and _tests_as_copying(progress.candidate_sims, ctx.reference):
        # The generator copies: tighten the thresholds and recheck what was accepted.
        progress.strict, progress.thresholds = True, ctx.reference.strict_thresholds
        logging.warning("shard %d: candidates test as copying; using strict thresholds", shard)
        accepted = progress.accepted
        still += [i for i in accepted if audit.flagged(accepted[i].sim, progress.thresholds)]
        progress.accepted = {i: a for i, a in accepted.items() if i not in still}
    progress.pending = sorted(still)
    progress.closest = sorted(progress.closest, key=lambda c: -c["score"])[: ctx.num_closest]


def _boxes_for(ctx: Context, index: int, attempt: int) -> np.ndarray:
    rng = np.random.default_rng([ctx.seed, index, attempt])
    return box_priors.sample_boxes(ctx.prior, ctx.plan[index][0], 1, rng)[0]


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


def _tests_as_copying(candidate_sims: dict[str, list[float]], reference: AuditReference) -> bool:
    sims = {m: np.asarray(v) for m, v in candidate_sims.items()}
    return audit.copying_verdict(sims, reference.heldout_sims)["copying"]


def _records(ctx: Context, accepted: dict[int, _Accepted]) -> list[dict]:
    """The accepted candidates as dataset records, in index order, with their provenance."""
    records = []
    for i in sorted(accepted):
        image, boxes, attempt, sim, _ = accepted[i]
        pathology, device = ctx.plan[i]
        records.append(
            schema.make_record(
                visualize.to_uint8(image[..., 0]),
                pathology=pathology,
                device=device,
                case_id=ctx.case_id(i),
                patient_id=ctx.case_id(i),
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
    return records


def _sidecar(ctx: Context, progress: _Progress) -> dict[str, Any]:
    """The shard's audit numbers; its closest candidates name their record only if it was kept.

    `closest` ranks every candidate, so rejected ones usually fill it; `closest_written` ranks
    the kept records alone, the images that leave the job and most resemble a training image.
    """
    accepted = progress.accepted
    for entry in progress.closest:
        kept = entry["index"] in accepted and accepted[entry["index"]].attempt == entry["attempt"]
        entry["synthetic_case_id"] = ctx.case_id(entry["index"]) if kept else None
    written = [
        dict(
            _closest_entry(i, a.attempt, a.sim, a.neighbour, progress.thresholds),
            synthetic_case_id=ctx.case_id(i),
        )
        for i, a in accepted.items()
    ]
    return {
        "records": [
            {"pathology": ctx.plan[i][0], "device": ctx.plan[i][1]} for i in sorted(accepted)
        ],
        "candidate_sims": progress.candidate_sims,
        "accepted_sims": {
            m: [accepted[i].sim[m] for i in sorted(accepted)] for m in audit.MEASURES
        },
        # Privacy rejections: candidates neither kept nor redrawn as noise-like or off-label.
        "rejected": len(progress.candidate_sims["ncc"])
        - len(accepted)
        - progress.failed
        - progress.off_label,
        "failed": progress.failed,
        "off_label": progress.off_label,
        "closest": progress.closest,
        "closest_written": sorted(written, key=lambda c: -c["score"])[: ctx.num_closest],
    }
