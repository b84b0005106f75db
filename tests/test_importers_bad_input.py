"""Bad source data stops the import with an error naming the file, and writes nothing."""

from __future__ import annotations

import pathlib
import re
import struct
import zlib

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


def _table(tmp_path, cells: list[str]) -> pathlib.Path:
    """A table CSV in tmp_path/src whose rows name `cells`, each a different image."""
    src = tmp_path / "src"
    for k, cell in enumerate(cells):
        path = src / cell
        if not path.resolve().exists():
            fake_trees.write_png(path.resolve(), fake_trees.gray_image(20 + k))
    fake_trees.write_csv(src / "t.csv", ["image_path", "pathology"], [[c, "benign"] for c in cells])
    return src / "t.csv"


@pytest.mark.parametrize("cell", ["../outside/secret.png", "{tmp}/outside/secret.png"])
def test_table_paths_out_of_the_source_folder_are_refused(out, tmp_path, cell):
    cell = cell.format(tmp=tmp_path)
    csv_path = _table(tmp_path, ["a.png", cell])
    _assert_fails(out, "table", csv_path, "t.csv line 3", "outside the source folder")
    # A folder the config names as allowed may hold them.
    manifest = import_dataset(
        "table", csv_path, out, salt=SALT, allowed_roots=(tmp_path / "outside",)
    )
    assert manifest["num_records"] == 2


def test_a_symlink_out_of_the_tree_is_refused(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    fake_trees.write_png(tmp_path / "elsewhere" / "x.png", fake_trees.gray_image(99))
    link = tmp_path / BUSI / "benign" / "benign (9).png"
    link.symlink_to(tmp_path / "elsewhere" / "x.png")
    (tmp_path / BUSI / "benign" / "benign (9)_mask.png").symlink_to(
        tmp_path / BUSI / "benign" / "benign (1)_mask.png"
    )
    _assert_fails(out, "busi", tmp_path, link, "outside the source folder")


def test_busbra_ids_cannot_climb_out_of_the_tree(out, tmp_path):
    rows = fake_trees.make_busbra(tmp_path)
    header = (tmp_path / "bus_data.csv").read_text().splitlines()[0].split(",")
    rows[1][0] = "../../bus_0002-l"
    fake_trees.write_csv(tmp_path / "bus_data.csv", header, rows)
    _assert_fails(out, "busbra", tmp_path, "bus_data.csv line 3", "outside the source folder")


def test_one_image_under_two_names_is_refused_or_kept_once(out, tmp_path):
    csv_path = _table(tmp_path, ["img/0.png", "img/1.png", "img/./0.png"])
    _assert_fails(out, "table", csv_path, "t.csv line 4: the same image as", "t.csv line 2")
    manifest = import_dataset("table", csv_path, out, salt=SALT, duplicates="keep_first")
    assert manifest["num_records"] == 2
    assert manifest["extra"]["importer"]["duplicates"] == "keep_first"
    _assert_fails(tmp_path / "o2", "table", csv_path, "duplicates: 'nope'", duplicates="nope")


def test_a_copied_class_folder_is_caught_by_its_pixels(out, tmp_path):
    fake_trees.make_busi(tmp_path)
    # The same image saved as RGB under another class and name: other bytes, equal pixels.
    image = fake_trees.gray_image(0)
    fake_trees.write_png(tmp_path / BUSI / "malignant" / "malignant (9).png", image)
    fake_trees.write_png(
        tmp_path / BUSI / "malignant" / "malignant (9)_mask.png", fake_trees.rect_mask((1, 1, 4, 4))
    )
    _assert_fails(out, "busi", tmp_path, "malignant (9).png: the same image as", "benign (1).png")


def test_a_csv_that_is_not_utf8_names_the_file_and_line(out, tmp_path):
    csv_path = _table(tmp_path, ["a.png", "b.png"])
    text = csv_path.read_text().replace("b.png,benign", "b.png,b\u00e9nin")
    csv_path.write_bytes(text.encode("latin-1"))
    _assert_fails(out, "table", csv_path, f"{csv_path} line 3: not UTF-8 text (byte 0xe9)")


def _png_header_only(path: pathlib.Path, width: int, height: int) -> None:
    """A PNG that declares width x height 8-bit gray pixels (as a decompression bomb does),
    with an IDAT of a few compressed rows: tiny on disk, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 9000)])
def test_a_decompression_bomb_is_refused_before_decoding(out, tmp_path, size):
    csv_path = _table(tmp_path, ["a.png"])
    _png_header_only(tmp_path / "src" / "a.png", *size)
    _assert_fails(out, "table", csv_path, "a.png: refused as a possible decompression bomb")
