"""The grain input pipeline: correct tensors, balancing, per-process slices, exact resume."""

import numpy as np
import pytest
from records import make_records

from busgen_jax.data import pipeline, schema, shards


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipeline")
    records = make_records(60)
    # One skewed class: 'dcis' is rare, which balancing must correct.
    records = [r for i, r in enumerate(records) if r["pathology"] != "dcis" or i % 3 == 0]
    shards.write_dataset(records, directory, name="pipe", records_per_shard=7)
    return str(directory)


def _config(dataset_dir, **overrides):
    config = pipeline.default_data_config([dataset_dir], image_size=32)
    config.batch_size = 8
    config.device_names = ["device-0", "device-1"]
    config.update(overrides)
    return config


def test_batch_shapes_ranges_and_ids(dataset_dir):
    batch = next(iter(pipeline.make_dataset(_config(dataset_dir), split="train", seed=0)))
    assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["box_mask"].shape == (8, 32, 32, 1)
    assert set(np.unique(batch["box_mask"])) <= {0.0, 1.0}
    assert set(batch["class_id"]) <= {1, 2, 3, 4}
    # device-2 is not in device_names, so it maps to the null device 0.
    assert set(batch["device_id"]) <= {0, 1, 2}


def test_eval_stream_matches_stored_records_exactly(dataset_dir):
    config = _config(dataset_dir, batch_size=4)
    batches = list(pipeline.make_dataset(config, split="test", seed=0, train=False))
    images = np.concatenate([b["image"] for b in batches])
    records = list(shards.read_records(dataset_dir, "test"))
    assert len(images) == len(records)
    expected = np.asarray(
        pipeline.Image.fromarray(schema.decode_png(records[0]["image"])).resize(
            (32, 32), pipeline.Image.Resampling.BILINEAR
        ),
        np.float32,
    )
    np.testing.assert_allclose(images[0, ..., 0], expected / 127.5 - 1.0, atol=1e-6)
    # Normal cases have no box; lesion cases have a rendered box.
    classes = np.concatenate([b["class_id"] for b in batches])
    masks = np.concatenate([b["box_mask"] for b in batches])
    assert (masks[classes == 1].sum(axis=(1, 2, 3)) == 0).all()
    assert (masks[classes != 1].sum(axis=(1, 2, 3)) > 0).all()


def test_box_mask_follows_the_box_through_crop_and_flip(dataset_dir):
    # The fake images hold a box at x in [0.25, 0.5); a flip must move it to [0.5, 0.75).
    config = _config(dataset_dir, random_crop=False, batch_size=16)
    batch = next(iter(pipeline.make_dataset(config, split="train", seed=5)))
    lesion = batch["class_id"] != 1
    cols = batch["box_mask"][lesion].max(axis=(1, 3))
    centres = np.array([np.flatnonzero(c).mean() / 32 for c in cols])
    assert np.all(np.isclose(centres, 0.375, atol=0.04) | np.isclose(centres, 0.625, atol=0.04))
    assert (
        np.isclose(centres, 0.625, atol=0.04).any() and np.isclose(centres, 0.375, atol=0.04).any()
    )


def test_crop_keeps_lesions_whole():
    rng = np.random.default_rng(0)
    boxes = np.array([[0.1, 0.2, 0.3, 0.4], [0.6, 0.5, 0.9, 0.7]])
    for _ in range(200):
        x0, y0, w, h = pipeline.lesion_preserving_crop(boxes, 0.5, rng)
        assert 0 <= x0 and x0 + w <= 1 + 1e-6 and 0 <= y0 and y0 + h <= 1 + 1e-6
        assert (
            x0 <= 0.1 + 1e-9 and x0 + w >= 0.9 - 1e-9 and y0 <= 0.2 + 1e-9 and y0 + h >= 0.7 - 1e-9
        )


def test_class_balancing_equalizes_classes(dataset_dir):
    config = _config(dataset_dir, balance_classes=True)
    stream = iter(pipeline.make_dataset(config, split="train", seed=0))
    classes = np.concatenate([next(stream)["class_id"] for _ in range(10)])
    counts = np.bincount(classes, minlength=5)[1:]
    assert counts.min() == counts.max() == 20
    unbalanced = iter(pipeline.make_dataset(_config(dataset_dir), split="train", seed=0))
    skewed = np.bincount(
        np.concatenate([next(unbalanced)["class_id"] for _ in range(10)]), minlength=5
    )
    assert skewed[4] < skewed[2]


def test_class_subset_reads_only_named_classes(dataset_dir):
    config = _config(dataset_dir, class_names=["benign", "dcis"])
    classes = np.concatenate(
        [b["class_id"] for b in pipeline.make_dataset(config, split="test", seed=0, train=False)]
    )
    manifest = shards.read_manifest(dataset_dir)["splits"]["test"]["pathology"]
    assert len(classes) == manifest["benign"] + manifest["dcis"]
    assert set(classes) == {1, 2}


def test_process_batches_concatenate_to_the_single_process_batch(dataset_dir):
    config = _config(dataset_dir, balance_classes=True)
    single = iter(pipeline.make_dataset(config, split="train", seed=4))
    parts = [
        iter(pipeline.make_dataset(config, split="train", seed=4, process_index=p, process_count=2))
        for p in range(2)
    ]
    for _ in range(3):
        want = next(single)
        halves = [next(it) for it in parts]
        for key in want:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), want[key])


def test_processes_read_disjoint_slices_that_cover_the_data(dataset_dir):
    config = _config(dataset_dir, batch_size=2)

    def case_images(index):
        ds = pipeline.make_dataset(
            config, split="test", seed=0, train=False, process_index=index, process_count=2
        )
        return [img.tobytes() for b in ds for img in b["image"]]

    first, second = case_images(0), case_images(1)
    full = [
        img.tobytes()
        for b in pipeline.make_dataset(config, split="test", seed=0, train=False)
        for img in b["image"]
    ]
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(full)


def test_iterator_state_resumes_the_exact_stream(dataset_dir):
    config = _config(dataset_dir, balance_classes=True)
    dataset = pipeline.make_dataset(config, split="train", seed=3)
    reference = iter(dataset)
    for _ in range(3):
        next(reference)
    state = reference.get_state()
    expected = [next(reference) for _ in range(4)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_same_seed_same_stream_and_different_seed_differs(dataset_dir):
    config = _config(dataset_dir)
    a = next(iter(pipeline.make_dataset(config, split="train", seed=1)))["image"]
    b = next(iter(pipeline.make_dataset(config, split="train", seed=1)))["image"]
    c = next(iter(pipeline.make_dataset(config, split="train", seed=2)))["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_size_must_divide_over_processes(dataset_dir):
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by 3"):
        pipeline.make_dataset(
            _config(dataset_dir), split="train", seed=0, process_index=0, process_count=3
        )


def test_missing_split_and_missing_classes_are_errors(dataset_dir):
    with pytest.raises(shards.DatasetError, match="no 'val' records"):
        pipeline.make_dataset(_config(dataset_dir), split="val", seed=0)
    with pytest.raises(shards.DatasetError, match="of classes"):
        pipeline.make_dataset(_config(dataset_dir, class_names=["lymphoma"]), split="train", seed=0)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """Dataset A holds only benign records, B only malignant: a batch's classes tell sources."""
    records = make_records(80)
    dirs = []
    for name, pathology in (("a", "benign"), ("b", "malignant")):
        directory = tmp_path_factory.mktemp(f"source_{name}")
        shards.write_dataset(
            [r for r in records if r["pathology"] == pathology], directory, name=name
        )
        dirs.append(str(directory))
    return dirs


@pytest.mark.parametrize("weights", [(0.25, 0.75), (0.5, 0.5), (1.0, 0.0)])
def test_mix_weights_set_the_share_of_each_source(two_sources, weights):
    config = _config(
        two_sources[0],
        paths=tuple(two_sources),
        mix_weights=weights,
        class_names=("benign", "malignant"),
    )
    stream = iter(pipeline.make_dataset(config, split="train", seed=0))
    classes = np.concatenate([next(stream)["class_id"] for _ in range(10)])
    share_a = np.mean(classes == 1)
    assert abs(share_a - weights[0] / sum(weights)) <= 1 / 80


def test_bad_mix_weights_are_errors(two_sources):
    config = _config(two_sources[0], paths=tuple(two_sources), mix_weights=(1.0,))
    with pytest.raises(ValueError, match=r"config.data.mix_weights = \[1.0\] needs one"):
        pipeline.make_dataset(config, split="train", seed=0)


def test_label_field_reads_classes_from_the_labels_dict(tmp_path):
    records = make_records(30)
    for i, record in enumerate(records):
        if i % 3:  # every third record has no label and is left out
            record["labels"] = {"recurrence": i % 2}
    shards.write_dataset(records, tmp_path, name="labelled")
    config = _config(str(tmp_path), label_field="recurrence", class_names=("0", "1"))
    batches = pipeline.make_dataset(config, split="train", seed=0, train=False)
    classes = np.concatenate([b["class_id"] for b in batches])
    train = [r for r in records if r["split"] == "train" and r["labels"]]
    np.testing.assert_array_equal(classes, [1 + r["labels"]["recurrence"] for r in train])
    loaded = pipeline.load_split(str(tmp_path), "train", 32, ("0", "1"), "recurrence")
    np.testing.assert_array_equal(loaded["class_id"], classes)
    assert loaded["case_id"] == [r["case_id"] for r in train]
