"""BUSI (Al-Dhabyani et al., Data in Brief 2020): class folders of PNG images and masks.

Layout (`source` is `Dataset_BUSI_with_GT/` or the folder that contains it):

    benign/benign (1).png            image
    benign/benign (1)_mask.png       lesion mask
    benign/benign (1)_mask_1.png     further lesion masks of the same image (unioned)
    malignant/...                    same naming
    normal/normal (1)_mask.png       empty masks

BUSI publishes no patient ids, so every image is treated as its own patient: patient-level splits
cannot keep two images of one woman together, and the public release is known to contain
near-duplicate images. All images come from GE LOGIQ E9 / E9 Agile scanners, hence the default
device name (the one the published BUSGen annotations use).
"""

from __future__ import annotations

import os
import pathlib
import re

from busgen_jax.data.importers.common import (
    DatasetImportError,
    RawCase,
    check_inside,
    load_image,
    load_mask,
    source_roots,
)
from busgen_jax.data.importers.records import reader

BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_DEVICE = "GE-LOGIQ-E9"
BUSI_FOLDER = "Dataset_BUSI_with_GT"
_MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?\.png$", re.IGNORECASE)


def busi_root(source: str | os.PathLike) -> pathlib.Path:
    """The directory holding the class folders: `source` or its `Dataset_BUSI_with_GT/`."""
    source = pathlib.Path(source)
    if not source.is_dir():
        raise DatasetImportError(f"{source}: BUSI source directory not found")
    nested = source / BUSI_FOLDER
    return nested if nested.is_dir() else source


def _class_folder_files(
    folder: pathlib.Path, roots: tuple
) -> tuple[dict[str, pathlib.Path], dict[str, list[pathlib.Path]]]:
    """Splits one class folder into images (stem -> path) and masks (stem -> paths)."""
    images: dict[str, pathlib.Path] = {}
    masks: dict[str, list[pathlib.Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # OS metadata such as .DS_Store
        check_inside(path, roots, str(path))
        if path.is_dir() or path.suffix.lower() != ".png":
            raise DatasetImportError(f"{path}: unexpected entry in a BUSI class folder (want .png)")
        match = _MASK_NAME.match(path.name)
        if match:
            masks.setdefault(match["stem"], []).append(path)
        else:
            images[path.stem] = path
    for stem, paths in masks.items():
        if stem not in images:
            raise DatasetImportError(f"{paths[0]}: mask without an image {stem}.png")
    return images, masks


def scan_busi(
    source: str | os.PathLike, device: str | None = None, allowed_roots=()
) -> list[RawCase]:
    """Reads and checks every BUSI image and mask, without pseudonymising.

    `source` is `Dataset_BUSI_with_GT/` or its parent; `device` defaults to BUSI_DEVICE. BUSI has
    no patient ids, so each image is its own patient. Files (or symlinks) leading out of `source`
    and `allowed_roots` are refused.
    """
    root = busi_root(source)
    roots = source_roots(root, allowed_roots)
    cases = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):
            continue
        if not folder.is_dir() or folder.name.lower() not in BUSI_CLASSES:
            raise DatasetImportError(
                f"{folder}: unknown class folder (BUSI has {', '.join(BUSI_CLASSES)})"
            )
        images, masks = _class_folder_files(check_inside(folder, roots, str(folder)), roots)
        for stem, image_path in images.items():
            if stem not in masks:
                raise DatasetImportError(f"{image_path}: no mask {stem}_mask.png beside it")
            image = load_image(image_path)
            key = f"{folder.name}/{image_path.name}"
            cases.append(
                RawCase(
                    image=image,
                    mask=load_mask(masks[stem], image.shape, str(image_path)),
                    pathology=folder.name.lower(),
                    device=device or BUSI_DEVICE,
                    case_key=key,
                    patient_key=key,
                    origin=str(image_path),
                )
            )
    return cases


read_busi = reader(scan_busi, "busi")
