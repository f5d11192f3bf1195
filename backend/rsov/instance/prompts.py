"""Instance mode's proposals: Segment Anything masks per tile, from an automatic point grid and from
class-aware point prompts seeded in the confident regions of the semantic map (so small objects the grid
misses still get masks). Tiles overlap; masks cut by a tile seam are merged across it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ..errors import CancelledError
from ..semantic.predictor import sliding_windows
from .masks import clean_mask, merge_across_seams
from .types import InstanceOptions, Mask, Proposer


def prompt_points(class_map: np.ndarray, score_map: np.ndarray, options: InstanceOptions) -> np.ndarray:
    """Class-aware prompts: for each confident connected region of a class, its innermost pixel.

    ``class_map`` (H, W) class ids (0: background), ``score_map`` (H, W) their probabilities.
    Returns (P, 3) rows of x, y, class id, largest regions first, at most ``max_prompts``.
    """
    rows = []
    confident = score_map >= options.prompt_confidence
    for class_id in np.unique(class_map[(class_map > 0) & confident]):
        regions, _ = ndimage.label((class_map == class_id) & confident)
        for label, where in enumerate(ndimage.find_objects(regions), start=1):
            region = regions[where] == label
            area = int(region.sum())
            if area < options.min_area_px:
                continue
            depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # the edge counts as outside
            y, x = np.unravel_index(depth.argmax(), depth.shape)
            rows.append((area, x + where[1].start + 0.5, y + where[0].start + 0.5, class_id))
    rows.sort(key=lambda r: -r[0])
    return np.array([r[1:] for r in rows[: options.max_prompts]], dtype=np.float64).reshape(-1, 3)


def propose(
    proposer: Proposer,
    image: np.ndarray,
    key: str,
    points: np.ndarray,
    options: InstanceOptions,
    cancelled: Callable[[], bool] | None = None,
    tiles: list[tuple[int, int, int, int]] | None = None,
    origin: tuple[int, int] = (0, 0),
    precision: str = "fp32",
    progress: Callable[[float, str], None] | None = None,
) -> list[Mask]:
    """Tile the chip, propose masks per tile (prompts go to the tile whose centre they are nearest), merge seams.

    ``image`` (H, W, 3) uint8, ``points`` (P, 3) prompts x, y, class id in chip pixels; masks come back
    in chip pixels, cleaned of specks under ``min_area_px``. ``tiles`` (y0, x0, y1, x1) in chip pixels default
    to a slide over the chip; ``origin`` is the
    chip's place on the raster, so a tile's cache key names the same pixels whatever the chip.
    ``progress(fraction of all tiles, text)`` follows every prompt batch.
    """
    height, width = image.shape[:2]
    if tiles is None:
        tiles = sliding_windows(height, width, options.tile, options.tile - options.tile_overlap)
    masks: list[Mask] = []
    centres = np.array([((y0 + y1) / 2, (x0 + x1) / 2) for y0, x0, y1, x1 in tiles])
    owner = (
        (np.abs(points[:, None, 1] - centres[None, :, 0]) + np.abs(points[:, None, 0] - centres[None, :, 1])).argmin(1)
        if len(points)
        else np.zeros(0, dtype=int)
    )
    for index, (y0, x0, y1, x1) in enumerate(tiles):
        if cancelled is not None and cancelled():
            raise CancelledError("The job was cancelled.")
        mine = points[owner == index] - np.array([x0, y0, 0]) if len(points) else points

        def tile_progress(fraction: float, text: str, index: int = index) -> None:
            if progress is not None:
                progress(
                    (index + fraction) / len(tiles), f"tile {index + 1}/{len(tiles)}" + (f", {text}" if text else "")
                )

        tile_progress(0.0, "")
        where = f"{y0 + origin[0]},{x0 + origin[1]},{y1 + origin[0]},{x1 + origin[1]}"
        for m in proposer.propose(image[y0:y1, x0:x1], f"{key}|{where}", mine, options, precision, tile_progress):
            masks.append(Mask(m.crop, m.y0 + y0, m.x0 + x0, m.quality, index, m.hint))
    masks = [c for c in (clean_mask(m, options.min_area_px) for m in masks) if c is not None]
    return merge_across_seams(masks, tiles) if len(tiles) > 1 else masks
