"""Image grids as PNG: tile a batch of [-1, 1] images into rows (e.g. one row per class)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats [N, H, W, C] -> grayscale uint8 [N, H, W] (channels averaged)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    gray = images.mean(axis=-1)
    return np.clip(np.round((gray + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int, padding: int = 2) -> np.ndarray:
    """Tiles [N, H, W, C] images row-major into a uint8 [rows*(H+p)+p, ncols*(W+p)+p] grid.

    Padding and unused cells are black.
    """
    tiles = to_uint8(images)
    n, h, w = tiles.shape
    nrows = -(-n // ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = tile
    return grid


def save_grid(
    images: np.ndarray, path: str | os.PathLike, ncols: int, padding: int = 2
) -> pathlib.Path:
    """Writes `make_grid(images, ncols, padding)` as a grayscale PNG; returns its path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, ncols, padding), mode="L").save(path)
    return path
