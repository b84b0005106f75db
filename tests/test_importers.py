"""Importers: records of fake BUSI / BUS-BRA / UDIAT / CSV+DICOM trees, boxes, pseudonyms, splits."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json

import fake_trees
import numpy as np
import pytest
from fake_trees import PHI, SALT
from PIL import Image

from busgen_jax.data import schema, shards
from busgen_jax.data.importers import (
    DatasetImportError,
    assign_splits,
    boxes_from_mask,
    import_dataset,
    pseudonym,
    read_busbra,
    read_busi,
    read_table,
    read_udiat,
)
from busgen_jax.data.importers.splits import split_counts
from busgen_jax.jobs import import_data


def _hmac(value: str, namespace: str, salt: str = SALT) -> str:
    """Independent HMAC-SHA256 pseudonym, truncated to 16 hex characters."""
    digest = hmac.new(salt.encode(), f"{namespace}:{value}".encode(), hashlib.sha256)
    return digest.hexdigest()[:16]


def _brute_force_boxes(mask: np.ndarray) -> list[list[float]]:
    """8-connected components by flood fill, boxes as pixel-edge normalized xyxy."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or seen[y, x]:
                continue
            stack, pixels = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        inside = 0 <= ny < height and 0 <= nx < width
                        if inside and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            ys, xs = zip(*pixels, strict=True)
            boxes.append(
                [min(xs) / width, min(ys) / height, (max(xs) + 1) / width, (max(ys) + 1) / height]
            )
    return sorted(boxes)


@pytest.mark.parametrize("seed", range(5))
def test_boxes_from_mask_match_brute_force_components(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 31)) < 0.08  # scattered specks, many diagonal-only contacts
    mask[3:9, 4:12] = True
    got = sorted(boxes_from_mask(mask.astype(np.uint8) * 255).tolist())
    np.testing.assert_allclose(got, _brute_force_boxes(mask))


def test_boxes_from_empty_mask_is_empty():
    assert boxes_from_mask(np.zeros((5, 7), np.uint8)).shape == (0, 4)


def test_pseudonym_is_truncated_salted_hmac():
    assert pseudonym("MRN-1", salt=SALT, namespace="x") == _hmac("MRN-1", "x")
    assert pseudonym("MRN-1", salt="other", namespace="x") != pseudonym(
        "MRN-1", salt=SALT, namespace="x"
    )
    with pytest.raises(DatasetImportError, match="salt"):
        pseudonym("MRN-1", salt="", namespace="x")


def test_split_counts_are_largest_remainder_rounding():
    for n in range(0, 40):
        counts = split_counts(n, (0.7, 0.15, 0.15))
        assert sum(counts) == n
        assert all(abs(c - n * f) < 1 for c, f in zip(counts, (0.7, 0.15, 0.15), strict=True))


def test_assign_splits_patient_level_stratified_and_seeded():
    rng = np.random.default_rng(0)
    strata = {f"p{i}": str(rng.choice(["benign", "malignant", "normal"])) for i in range(157)}
    fractions = (0.6, 0.25, 0.15)
    a = assign_splits(strata, fractions, seed=3)
    assert set(a) == set(strata) and set(a.values()) == set(schema.SPLITS)
    # Independent of input order, reproducible per seed, different across seeds.
    assert assign_splits(dict(reversed(list(strata.items()))), fractions, seed=3) == a
    assert assign_splits(strata, fractions, seed=4) != a
    per_stratum = collections.Counter((strata[p], s) for p, s in a.items())
    for stratum, n in collections.Counter(strata.values()).items():
        for split, fraction in zip(schema.SPLITS, fractions, strict=True):
            assert abs(per_stratum[stratum, split] - n * fraction) < 1


def _by_key(records, cases_keys, namespace):
    ids = {_hmac(key, f"{namespace}/case"): key for key in cases_keys}
    return {ids[r["case_id"]]: r for r in records}


def test_read_busi_records(tmp_path):
    expected = fake_trees.make_busi(tmp_path)
    records = read_busi(tmp_path, salt=SALT, seed=0)
    assert len(records) == len(expected)
    by_key = _by_key(records, expected, "busi")
    for key, want in expected.items():
        record = by_key[key]
        np.testing.assert_array_equal(schema.decode_png(record["image"]), want["image"])
        np.testing.assert_array_equal(schema.decode_png(record["mask"]), want["mask"])
        np.testing.assert_allclose(sorted(record["boxes"]), want["boxes"])
        assert record["pathology"] == want["pathology"]
        assert record["device"] == "GE-LOGIQ-E9"
        # No patient ids in BUSI: each image is its own patient.
        assert record["patient_id"] == _hmac(key, "busi/patient")
        assert record["provenance"] == {"source": "real", "dataset": "busi"}
    assert len(by_key["benign/benign (2).png"]["boxes"]) == 2  # two mask files, unioned
    assert len(by_key["malignant/malignant (2).png"]["boxes"]) == 2  # two lesions, one file
    assert by_key["normal/normal (1).png"]["boxes"] == []
    # Deterministic output; the source folder itself is accepted too; device override.
    assert read_busi(tmp_path / "Dataset_BUSI_with_GT", salt=SALT, seed=0) == records
    assert {r["device"] for r in read_busi(tmp_path, salt=SALT, device="X")} == {"X"}


def test_busi_splits_follow_seed_and_fractions(tmp_path):
    fake_trees.make_busi(tmp_path)
    splits = {
        seed: [r["split"] for r in read_busi(tmp_path, salt=SALT, seed=seed)] for seed in range(4)
    }
    assert len({tuple(s) for s in splits.values()}) > 1
    everything_test = read_busi(tmp_path, salt=SALT, split_fractions=(0, 0, 1))
    assert {r["split"] for r in everything_test} == {"test"}


def test_read_busbra_groups_patients(tmp_path):
    rows = fake_trees.make_busbra(tmp_path)
    records = read_busbra(tmp_path, salt=SALT, seed=1)
    by_key = _by_key(records, [row[0] for row in rows], "busbra")
    left, right = by_key["bus_0001-l"], by_key["bus_0001-r"]
    assert left["patient_id"] == right["patient_id"] == _hmac("1", "busbra/patient")
    assert left["split"] == right["split"]
    assert left["birads"] == {"category": 3}
    assert left["labels"] == {"histology": "Fibroadenoma", "side": "left"}
    assert left["device"] == "Toshiba-Aplio"
    assert by_key["bus_0002-l"]["pathology"] == "malignant"
    np.testing.assert_allclose(left["boxes"], [fake_trees.rect_box(3, 2, 15, 11)])
    # Patient-level over many seeds: the two images of patient 1 never separate.
    for seed in range(10):
        recs = _by_key(read_busbra(tmp_path, salt=SALT, seed=seed), [r[0] for r in rows], "busbra")
        assert recs["bus_0001-l"]["split"] == recs["bus_0001-r"]["split"]


def test_read_udiat(tmp_path):
    fake_trees.make_udiat(tmp_path)
    records = read_udiat(tmp_path, salt=SALT)
    by_key = _by_key(records, ["000001", "000002", "000003"], "udiat")
    assert by_key["000001"]["pathology"] == "benign"
    assert by_key["000002"]["pathology"] == "malignant"
    assert by_key["000003"]["labels"] == {"tumor": "CYST"}
    assert {r["device"] for r in records} == {"Siemens-ACUSON-Sequoia-C512"}
    np.testing.assert_allclose(by_key["000002"]["boxes"], [fake_trees.rect_box(5, 6, 20, 16)])


def _dicom_table(tmp_path):
    """A CSV table of a PNG and DICOMs of each photometric kind; returns expected pixels by
    case key (a DICOM's case key is its SOPInstanceUID)."""
    gray = fake_trees.gray_image(7)
    rgb = np.random.default_rng(8).integers(
        0, 256, size=(fake_trees.H, fake_trees.W, 3), dtype=np.uint8
    )
    wide = np.random.default_rng(9).integers(0, 4096, size=gray.shape).astype(np.uint16)
    dcm = tmp_path / "dcm"
    uids = {
        "mono2": fake_trees.write_dicom(dcm / "mono2.dcm", gray),
        "mono1": fake_trees.write_dicom(dcm / "mono1.dcm", gray, photometric="MONOCHROME1"),
        "color": fake_trees.write_dicom(dcm / "color.dcm", rgb, photometric="RGB"),
        "wide": fake_trees.write_dicom(dcm / "wide.dcm", wide, PatientID="MRN-2"),
    }
    other = fake_trees.gray_image(11)  # not mono2's pixels: that would be a duplicate image
    fake_trees.write_png(tmp_path / "img" / "a b (1).png", other)
    fake_trees.write_png(tmp_path / "img" / "a b (1)_mask.png", fake_trees.rect_mask((1, 2, 3, 4)))
    fake_trees.write_csv(
        tmp_path / "table.csv",
        ["image_path", "mask_path", "pathology", "birads", "birads_shape", "age", "split"],
        [
            ["dcm/mono2.dcm", "", "Malignant", "5", "irregular", "61", "test"],
            ["dcm/mono1.dcm", "", "malignant", "", "", "", "test"],
            ["dcm/color.dcm", "", "benign", "", "", "", "test"],
            ["dcm/wide.dcm", "", "dcis", "", "", "", "train"],
            ["img/a b (1).png", "img/a b (1)_mask.png", "benign", "3", "", "45.5", "val"],
        ],
    )
    return {
        uids["mono2"]: gray,
        uids["mono1"]: 255 - gray,  # MONOCHROME1: low values are bright
        uids["color"]: np.asarray(Image.fromarray(rgb).convert("L")),
        uids["wide"]: np.round((wide - wide.min()) * 255.0 / (wide.max() - wide.min())),
        "img/a b (1).png": other,
        "mono2": uids["mono2"],
    }


def test_table_with_dicom_reads_pixels_and_header_fields(tmp_path):
    want = _dicom_table(tmp_path)
    mono2_uid = want.pop("mono2")
    records = read_table(tmp_path / "table.csv", salt=SALT, label_columns=("age",))
    by_key = _by_key(records, want, "table")
    for key, pixels in want.items():
        got = schema.decode_png(by_key[key]["image"]).astype(int)
        # PIL's integer luma may round differently from the float BT.601 weights by one level.
        np.testing.assert_allclose(got, pixels, atol=1)
    mono2 = by_key[mono2_uid]
    np.testing.assert_array_equal(schema.decode_png(mono2["image"]), want[mono2_uid])
    assert mono2["patient_id"] == _hmac(PHI["PatientID"], "table/patient")
    assert mono2["device"] == "GE-Healthcare-LOGIQ-E9"
    assert mono2["birads"] == {"category": 5, "shape": "irregular"}
    assert mono2["labels"] == {"age": 61} and mono2["mask"] is None and mono2["boxes"] == []
    assert mono2["pathology"] == "malignant" and mono2["split"] == "test"
    png = by_key["img/a b (1).png"]
    assert png["device"] == "unknown" and png["split"] == "val"
    assert png["labels"] == {"age": 45.5} and png["birads"] == {"category": 3}
    assert png["patient_id"] == _hmac("case:img/a b (1).png", "table/patient")
    np.testing.assert_allclose(png["boxes"], [fake_trees.rect_box(1, 2, 3, 4)])


def test_no_identifying_dicom_value_reaches_the_output(tmp_path):
    _dicom_table(tmp_path)
    out = tmp_path / "out"
    import_dataset("table", tmp_path / "table.csv", out, salt=SALT, label_columns=("age",))
    written = b"".join(path.read_bytes() for path in sorted(out.iterdir()))
    assert written  # manifest and shards
    for value in [*PHI.values(), "MRN-2", "mono2", SALT]:
        assert value.encode() not in written, value
        assert value.replace("^", " ").encode() not in written, value
    for record in shards.read_records(out):
        flat = json.dumps({k: v for k, v in record.items() if k not in ("image", "mask")})
        assert not any(value in flat for value in PHI.values())


def test_import_dataset_shards_round_trip(tmp_path):
    fake_trees.make_busi(tmp_path / "src")
    manifest = import_dataset("busi", tmp_path / "src", tmp_path / "out", salt=SALT, seed=2)
    expected = read_busi(tmp_path / "src", salt=SALT, seed=2)
    assert manifest["num_records"] == len(expected)
    assert manifest["pathology"] == dict(collections.Counter(r["pathology"] for r in expected))
    assert manifest["extra"]["importer"]["layout"] == "busi"
    got = sorted(shards.read_records(tmp_path / "out"), key=lambda r: r["case_id"])
    assert got == sorted(expected, key=lambda r: r["case_id"])
    assert SALT not in (tmp_path / "out" / "manifest.json").read_text()


def test_cli_imports_udiat(tmp_path, capsys, monkeypatch):
    fake_trees.make_udiat(tmp_path / "src")
    argv = [
        "busgen import",
        "--config=configs/import_data.py:udiat",
        f"--config.source={tmp_path / 'src'}",
        "--config.seed=1",
    ]
    monkeypatch.setenv("BUSGEN_SALT", SALT)
    import_data.main([*argv, f"--workdir={tmp_path / 'out'}"])
    assert '"num_records": 3' in capsys.readouterr().out
    monkeypatch.setenv("BUSGEN_SALT", "")
    with pytest.raises(SystemExit) as exit_info:
        import_data.main([*argv, f"--workdir={tmp_path / 'out2'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "salt" in err and not (tmp_path / "out2" / "data").exists()
