"""The name -> id rule (0 = null) and the binary task's label rule, used wherever a label is made."""

import numpy as np
import pytest

from busgen_jax.data.vocabulary import NULL_ID, Task, Vocabulary


def test_ids_start_at_one_and_unknown_names_are_null_only_when_asked():
    vocabulary = Vocabulary(("normal", "benign", "malignant"))
    assert vocabulary.ids(["malignant", "normal"]).tolist() == [3, 1]
    assert vocabulary.id_or_null("dcis") == NULL_ID == 0
    with pytest.raises(ValueError, match=r"classes \['dcis'\] not known to this generator"):
        vocabulary.ids(["benign", "dcis"], "classes", owner="this generator")


def test_task_labels_follow_the_side_of_each_class():
    task = Task.from_config({"negative": ["normal", "benign"], "positive": ["dcis"]})
    ids = task.vocabulary.ids(["dcis", "benign", "normal", "dcis"])
    assert task.class_names == ("normal", "benign", "dcis")
    assert task.labels(ids).tolist() == [1, 0, 0, 1]
    assert task.label_names(np.array([True, False])).tolist() == ["dcis", "normal"]
