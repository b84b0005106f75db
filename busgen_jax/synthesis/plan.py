"""What a synthesis job makes: the (pathology, device) of every record, decided up front.

The plan is a pure function of the config (and, in balancing mode, of a real dataset's
manifest), so every process of a multi-host job derives the same plan with no coordinator, and a
resumed job makes exactly the records it would have made.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np


def exact_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Splits `total` by `weights` into integers summing to `total` (largest remainder)."""
    names = list(weights)
    w = np.asarray([weights[n] for n in names], np.float64)
    if total < 0 or not len(names) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"cannot split {total} records by weights {dict(weights)}")
    quotas = w / w.sum() * total
    counts = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def mix_plan(
    class_weights: Mapping[str, float], device_weights: Mapping[str, float], total: int
) -> dict[tuple[str, str], int]:
    """Counts per (pathology, device) for a requested mix, classes and devices independent."""
    plan = {}
    for pathology, count in exact_counts(class_weights, total).items():
        for device, n in exact_counts(device_weights, count).items():
            if n:
                plan[(pathology, device)] = n
    return plan


def balance_plan(
    manifest: Mapping, class_names: Sequence[str], device_names: Sequence[str], split: str = "train"
) -> dict[tuple[str, str], int]:
    """What the minority classes (and devices) of a real dataset lack.

    Every class in `class_names` is topped up to the largest class's count; within a class, the
    new records go to the devices with the fewest records first (water-filling), so device
    counts are evened out too.
    """
    info = manifest["splits"].get(split)
    if info is None:
        raise ValueError(f"manifest of '{manifest.get('name')}' has no '{split}' split")
    pairs = collections.Counter(zip(info["record_pathology"], info["record_device"], strict=True))
    per_class = {c: sum(n for (p, _), n in pairs.items() if p == c) for c in class_names}
    target = max(per_class.values())
    plan = {}
    for pathology in class_names:
        have = {d: pairs.get((pathology, d), 0) for d in device_names}
        for _ in range(target - per_class[pathology]):
            device = min(device_names, key=lambda d: (have[d], device_names.index(d)))
            have[device] += 1
            plan[(pathology, device)] = plan.get((pathology, device), 0) + 1
    return plan


def assignments(plan: Mapping[tuple[str, str], int], seed: int) -> list[tuple[str, str]]:
    """The plan as one (pathology, device) per record index, in a seeded random order.

    Shuffling spreads every class over all shards, so a partial dataset is still balanced.
    """
    items = [pair for pair in sorted(plan) for _ in range(plan[pair])]
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]
