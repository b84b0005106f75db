"""Condition vocabularies and binary tasks: how names become the ids and labels models see.

A `Vocabulary` numbers its names from 1 in order; id 0 is the null condition (unconditional
sampling, classifier-free guidance, a name the vocabulary does not hold). A `Task` splits class
names into a negative and a positive side; over the vocabulary `task.class_names` the label of a
class id is whether it lies on the positive side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

NULL_ID = 0


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Names <-> 1-based ids, 0 = null."""

    names: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    @property
    def index(self) -> dict[str, int]:
        """name -> id, for lookups in loops (`index.get(name, NULL_ID)` for unknown ones)."""
        return {name: k + 1 for k, name in enumerate(self.names)}

    def id_or_null(self, name: str) -> int:
        return self.index.get(name, NULL_ID)

    def ids(
        self, names: Iterable[str], what: str = "names", owner: str = "this vocabulary"
    ) -> np.ndarray:
        """int32 ids of `names`; a ValueError naming the unknown ones and the vocabulary.

        `what` says what the names are ("classes", "devices") and `owner` whose vocabulary it
        is ("this generator") in the message.
        """
        names, index = list(names), self.index
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ValueError(f"{what} {unknown} not known to {owner} (it knows {list(self.names)})")
        return np.asarray([index[n] for n in names], np.int32)


@dataclasses.dataclass(frozen=True)
class Task:
    """A binary task over class names: `negative` classes are label 0, `positive` ones 1."""

    negative: tuple[str, ...]
    positive: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "negative", tuple(self.negative))
        object.__setattr__(self, "positive", tuple(self.positive))

    @classmethod
    def from_config(cls, task: Mapping[str, Any] | Any) -> Task:
        """From a config's `task` (fields `negative` and `positive`)."""
        return cls(tuple(task["negative"]), tuple(task["positive"]))

    @property
    def class_names(self) -> tuple[str, ...]:
        """The vocabulary a task's data is read with: negative classes first, then positive."""
        return (*self.negative, *self.positive)

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.class_names)

    def labels(self, class_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """int32 labels of class ids under `self.vocabulary` (ids past the negatives are 1)."""
        return (np.asarray(class_ids) > len(self.negative)).astype(np.int32)

    def label_names(self, labels: np.ndarray | Sequence[int]) -> np.ndarray:
        """The name a label calls: the first negative class for 0, the first positive for 1."""
        return np.where(np.asarray(labels) > 0, self.positive[0], self.negative[0])
