"""Labelled image grids (PNG) for datasets and samples."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from busgen_jax.data import schema, shards


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps model-space images in [-1, 1] to uint8."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile_grid(images: np.ndarray, ncols: int, padding: int = 2) -> np.ndarray:
    """Tiles [N, H, W, C] images in [-1, 1] row-major into one uint8 grayscale grid.

    Channels are averaged; padding and unused cells are black. (For TensorBoard; PNGs for people
    use `labelled_grid`.)
    """
    tiles = to_uint8(np.asarray(images, np.float32).mean(axis=-1))
    n, h, w = tiles.shape
    nrows = -(-n // ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = tile
    return grid


def labelled_grid(
    cells: Mapping[tuple[str, str], Sequence[np.ndarray]],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    per_cell: int,
    path: str | pathlib.Path,
    title: str | None = None,
    boxes: Mapping[tuple[str, str], Sequence[np.ndarray]] | None = None,
) -> pathlib.Path:
    """Saves a grid: one row per row label, `per_cell` uint8 images per (row, column) cell.

    Missing cells stay blank. `boxes`, when given, outlines normalized xyxy boxes per image.
    """
    rows, cols = len(row_labels), len(col_labels) * per_cell
    # A Figure without pyplot: writes files without touching the global backend.
    fig = Figure(figsize=(1.3 * cols, 1.4 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(row_labels):
        for c, col in enumerate(col_labels):
            images = cells.get((row, col), [])
            cell_boxes = (boxes or {}).get((row, col), [])
            for k in range(per_cell):
                ax = axes[r, c * per_cell + k]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if k < len(images):
                    image = images[k]
                    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                    height, width = image.shape[:2]
                    for x1, y1, x2, y2 in cell_boxes[k] if k < len(cell_boxes) else []:
                        ax.add_patch(
                            Rectangle(
                                (x1 * width - 0.5, y1 * height - 0.5),
                                (x2 - x1) * width,
                                (y2 - y1) * height,
                                fill=False,
                                edgecolor="yellow",
                                linewidth=0.8,
                            )
                        )
                if r == 0 and k == 0:
                    ax.set_title(col, fontsize=7, loc="left")
                if c == 0 and k == 0:
                    ax.set_ylabel(row, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def dataset_grid(
    dataset_dir: str | pathlib.Path,
    path: str | pathlib.Path,
    per_cell: int = 2,
    title: str | None = None,
):
    """Saves a grid of stored images, one row per pathology and a column block per device."""
    manifest = shards.read_manifest(dataset_dir)
    devices = sorted(manifest["device"])
    pathologies = [p for p in schema.PATHOLOGIES if p in manifest["pathology"]]
    cells: dict[tuple[str, str], list[np.ndarray]] = {}
    for record in shards.read_records(dataset_dir):
        cell = cells.setdefault((record["pathology"], record["device"]), [])
        if len(cell) < per_cell:
            cell.append(schema.decode_png(record["image"]))
        if len(cells) == len(devices) * len(pathologies) and all(
            len(c) == per_cell for c in cells.values()
        ):
            break
    return labelled_grid(
        cells,
        row_labels=pathologies,
        col_labels=devices,
        per_cell=per_cell,
        path=path,
        title=title,
    )
