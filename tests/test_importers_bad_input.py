"""Bad source data stops the import with an error naming the file, and writes nothing."""

from __future__ import annotations

import pathlib
import re

import fake_trees
import numpy as np
import pytest
from fake_trees import SALT

from busgen_jax.data.importers import DatasetImportError, import_dataset

BUSI = pathlib.Path("Dataset_BUSI_with_GT")


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def _assert_fails(out, layout, source, *fragments, **kwargs):
    """Runs an import that must fail; checks the message and that no output exists."""
    with pytest.raises(DatasetImportError) as info:
        import_dataset(layout, source, out, salt=SALT, **kwargs)
    for fragment in fragments:
        assert re.search(re.escape(str(fragment)), str(info.value)), (fragment, str(info.value))
    assert not out.exists()


def test_truncated_image(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    path = tmp_path / BUSI / "benign" / "benign (3).png"
    path.write_bytes(path.read_bytes()[:-40])
    _assert_fails(out, "busi", tmp_path, path, "cannot decode")


def test_non_image_file_with_png_name(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    path = tmp_path / BUSI / "malignant" / "malignant (1)_mask.png"
    path.write_text("not an image")
    _assert_fails(out, "busi", tmp_path, path, "not a readable image")


def test_non_png_file_in_class_folder(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    path = tmp_path / BUSI / "normal" / "notes.txt"
    path.write_text("x")
    _assert_fails(out, "busi", tmp_path, path, "unexpected entry")


def test_mask_image_size_mismatch(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    path = tmp_path / BUSI / "benign" / "benign (2)_mask_1.png"
    fake_trees.write_png(path, np.zeros((10, 10), np.uint8))
    _assert_fails(out, "busi", tmp_path, path, "benign (2).png", "does not match")


def test_unknown_class_folder(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    fake_trees.write_png(tmp_path / BUSI / "suspicious" / "x.png", fake_trees.gray_image(0))
    _assert_fails(out, "busi", tmp_path, tmp_path / BUSI / "suspicious", "unknown class folder")


def test_image_without_mask_and_mask_without_image(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    (tmp_path / BUSI / "benign" / "benign (1)_mask.png").unlink()
    _assert_fails(out, "busi", tmp_path, "benign (1).png", "no mask")
    (tmp_path / BUSI / "benign" / "benign (1).png").unlink()
    fake_trees.write_png(tmp_path / BUSI / "benign" / "benign (9)_mask.png", fake_trees.rect_mask())
    _assert_fails(out, "busi", tmp_path, "benign (9)_mask.png", "without an image")


@pytest.mark.parametrize("layout", ["busi", "udiat"])
def test_empty_dataset(out, tmp_path, layout):
    if layout == "busi":
        for name in ("benign", "malignant", "normal"):
            (tmp_path / BUSI / name).mkdir(parents=True)
    else:
        fake_trees.write_csv(tmp_path / "labels.csv", ["Image", "Type"], [])
    _assert_fails(out, layout, tmp_path, tmp_path, "empty dataset")


def test_duplicate_id_in_busbra_csv(out, tmp_path):
    rows = fake_trees.make_busbra(tmp_path)
    header = (tmp_path / "bus_data.csv").read_text().splitlines()[0].split(",")
    fake_trees.write_csv(tmp_path / "bus_data.csv", header, [*rows, rows[0]])
    _assert_fails(out, "busbra", tmp_path, "bus_data.csv line 6", "duplicate case id", "bus_0001-l")


def test_duplicate_case_id_in_table(out, tmp_path):
    fake_trees.write_png(tmp_path / "a.png", fake_trees.gray_image(0))
    fake_trees.write_png(tmp_path / "b.png", fake_trees.gray_image(1))
    rows = [["a.png", "benign", "c1"], ["b.png", "malignant", "c1"]]
    fake_trees.write_csv(tmp_path / "t.csv", ["image_path", "pathology", "case_id"], rows)
    _assert_fails(out, "table", tmp_path / "t.csv", "t.csv line 3", "duplicate case id")


@pytest.mark.parametrize("layout", ["busbra", "udiat", "table"])
def test_label_row_names_missing_file(out, tmp_path, layout):
    if layout == "busbra":
        fake_trees.make_busbra(tmp_path)
        missing = tmp_path / "Masks" / "mask_0002-l.png"
        missing.unlink()
        source, line = tmp_path, "bus_data.csv line 4"
    elif layout == "udiat":
        fake_trees.make_udiat(tmp_path)
        missing = tmp_path / "original" / "000003.png"
        missing.unlink()
        source, line = tmp_path, "DatasetB.csv line 4"
    else:
        fake_trees.write_png(tmp_path / "a.png", fake_trees.gray_image(0))
        missing = tmp_path / "gone.png"
        rows = [["a.png", "benign"], ["gone.png", "benign"]]
        fake_trees.write_csv(tmp_path / "t.csv", ["image_path", "pathology"], rows)
        source, line = tmp_path / "t.csv", "t.csv line 3"
    _assert_fails(out, layout, source, line, missing, "missing file")


def test_bad_pathology_value(out, tmp_path):
    fake_trees.make_udiat(tmp_path)
    text = (tmp_path / "DatasetB.csv").read_text().replace("Malignant", "Unsure")
    (tmp_path / "DatasetB.csv").write_text(text)
    _assert_fails(out, "udiat", tmp_path, "DatasetB.csv line 3", "'Unsure'")


def test_missing_required_column(out, tmp_path):
    fake_trees.make_busbra(tmp_path)
    text = (tmp_path / "bus_data.csv").read_text().replace("Pathology", "Diagnosis")
    (tmp_path / "bus_data.csv").write_text(text)
    _assert_fails(out, "busbra", tmp_path, "bus_data.csv", "missing column", "pathology")


@pytest.mark.parametrize("problem", ["not_dicom", "cine"])
def test_bad_dicom(out, tmp_path, problem):
    path = tmp_path / "x.dcm"
    if problem == "not_dicom":
        path.write_bytes(b"\x00" * 10)
        fragment = "not a readable DICOM"
    else:
        fake_trees.write_dicom(path, fake_trees.gray_image(0), frames=3)
        fragment = "multi-frame"
    fake_trees.write_csv(tmp_path / "t.csv", ["image_path", "pathology"], [["x.dcm", "benign"]])
    _assert_fails(out, "table", tmp_path / "t.csv", path, fragment)


def test_patient_in_two_given_splits(out, tmp_path):
    for name in ("a", "b"):
        fake_trees.write_png(tmp_path / f"{name}.png", fake_trees.gray_image(0))
    rows = [["a.png", "benign", "p1", "train"], ["b.png", "benign", "p1", "test"]]
    header = ["image_path", "pathology", "patient_id", "split"]
    fake_trees.write_csv(tmp_path / "t.csv", header, rows)
    _assert_fails(out, "table", tmp_path / "t.csv", "t.csv line 3", "must not span splits")
    rows[1][3] = ""
    fake_trees.write_csv(tmp_path / "t.csv", header, rows)
    _assert_fails(out, "table", tmp_path / "t.csv", "t.csv line 3", "for every case or for none")


def test_bad_arguments(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    _assert_fails(out, "busi", tmp_path, "split_fractions", split_fractions=(0.5, 0.5, 0.5))
    _assert_fails(out, "nope", tmp_path, "unknown layout")
    _assert_fails(out, "busi", tmp_path / "absent", tmp_path / "absent", "not found")
    with pytest.raises(DatasetImportError, match="salt"):
        import_dataset("busi", tmp_path, out, salt="")
    assert not out.exists()
