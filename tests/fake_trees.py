"""Tiny fake source trees (BUSI, BUS-BRA, UDIAT, CSV table, DICOM) for the importer tests.

Images are non-square (H=24, W=32) so that swapped x/y would show. Lesions are axis-aligned
rectangles, so each expected box is known in closed form: (x0/W, y0/H, x1/W, y1/H) for a
rectangle covering columns x0..x1-1 and rows y0..y1-1.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pydicom
import pydicom.uid
from PIL import Image

H, W = 24, 32
SALT = "test-salt"

# Patient-identifying DICOM values that must never reach a record, manifest or shard.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-4471",
    "PatientBirthDate": "19700101",
    "PatientAddress": "12 Elm Street Springfield",
    "AccessionNumber": "ACC99887",
    "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "1 Hospital Road",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20240102",
    "SeriesDate": "20240103",
    "ContentDate": "20240104",
    "StudyTime": "101112",
    "OtherPatientIDs": "OTHER-556",
}


def gray_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W), dtype=np.uint8)


def rect_mask(*rects: tuple[int, int, int, int]) -> np.ndarray:
    """{0, 255} mask with rectangles (x0, y0, x1, y1), end-exclusive pixel indices."""
    mask = np.zeros((H, W), np.uint8)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = 255
    return mask


def rect_box(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0 / W, y0 / H, x1 / W, y1 / H]


def write_png(path: pathlib.Path, array: np.ndarray, *, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode="L")
    (image.convert("RGB") if rgb else image).save(path)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_busi(root: pathlib.Path) -> dict[str, dict]:
    """A BUSI tree under root/Dataset_BUSI_with_GT; returns file key -> expected content.

    Images are RGB (as BUSI ships them). "benign (2)" has its two lesions in two mask files,
    "malignant (2)" has two lesions in one mask file, and normal masks are empty.
    """
    base = root / "Dataset_BUSI_with_GT"
    # pathology -> one entry per image -> one entry per mask file -> rectangles in that file.
    mask_files = {
        "benign": [[[(2, 3, 10, 9)]], [[(1, 1, 5, 4)], [(20, 12, 30, 22)]], [[(4, 5, 12, 20)]]],
        "malignant": [[[(8, 2, 28, 18)]], [[(0, 0, 6, 6), (10, 10, 32, 24)]], [[(3, 3, 9, 9)]]],
        "normal": [[[]], [[]]],
    }
    expected = {}
    for pathology, cases in mask_files.items():
        for i, files in enumerate(cases, start=1):
            stem = f"{pathology} ({i})"
            image = gray_image(len(expected))
            write_png(base / pathology / f"{stem}.png", image, rgb=True)
            for j, rects in enumerate(files):
                suffix = "_mask" if j == 0 else f"_mask_{j}"
                write_png(base / pathology / f"{stem}{suffix}.png", rect_mask(*rects))
            rects = [r for file_rects in files for r in file_rects]
            expected[f"{pathology}/{stem}.png"] = {
                "image": image,
                "mask": rect_mask(*rects),
                "boxes": sorted(rect_box(*r) for r in rects),
                "pathology": pathology,
            }
    return expected


def make_busbra(root: pathlib.Path) -> list[list]:
    """A BUS-BRA folder: patient 1 has two images (left, right); returns the CSV rows."""
    header = [
        "ID",
        "Case",
        "Histology",
        "Pathology",
        "BIRADS",
        "Device",
        "Width",
        "Height",
        "Side",
        "BBOX",
    ]
    rows = [
        ["bus_0001-l", 1, "Fibroadenoma", "benign", 3, "Toshiba Aplio", W, H, "left", "[1 2 3 4]"],
        ["bus_0001-r", 1, "Cyst", "benign", 2, "Toshiba Aplio", W, H, "right", "[1 2 3 4]"],
        ["bus_0002-l", 2, "IDC", "malignant", 5, "GE Logiq 7", W, H, "left", "[1 2 3 4]"],
        ["bus_0003-r", 3, "Fibroadenoma", "benign", 4, "GE Logiq 7", W, H, "right", "[1 2 3 4]"],
    ]
    for i, row in enumerate(rows):
        write_png(root / "Images" / f"{row[0]}.png", gray_image(100 + i))
        mask_id = row[0].replace("bus_", "mask_")
        write_png(root / "Masks" / f"{mask_id}.png", rect_mask((3 + i, 2, 15 + i, 11)))
    write_csv(root / "bus_data.csv", header, rows)
    return rows


def make_udiat(root: pathlib.Path) -> list[list]:
    """A UDIAT dataset B folder with a CSV export of its label sheet; returns the CSV rows."""
    rows = [["1", "Benign", "FA"], ["000002", "Malignant", "IDC"], ["3", "benign", "CYST"]]
    for i, row in enumerate(rows):
        stem = row[0].zfill(6)
        write_png(root / "original" / f"{stem}.png", gray_image(200 + i))
        write_png(root / "GT" / f"{stem}.png", rect_mask((5, 5 + i, 20, 15 + i)))
    write_csv(root / "DatasetB.csv", ["Image", "Type", "Tumor"], rows)
    return rows


def write_dicom(
    path: pathlib.Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    **tags: str,
) -> str:
    """Writes an ultrasound DICOM with PHI tags set; returns its SOPInstanceUID."""
    uid = pydicom.uid.generate_uid(entropy_srcs=[str(path.name)])
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.UltrasoundImageStorage
    ds.SOPInstanceUID = uid
    ds.Modality = "US"
    ds.Manufacturer = "GE Healthcare"
    ds.ManufacturerModelName = "LOGIQ E9"
    for keyword, value in {**PHI, **tags}.items():
        setattr(ds, keyword, value)
    if frames > 1:
        pixels = np.stack([pixels] * frames)
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.set_pixel_data(
        pixels,
        photometric_interpretation=photometric,
        bits_stored=bits,
        generate_instance_uid=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid
