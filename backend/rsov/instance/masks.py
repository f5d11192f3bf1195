"""Mask operations on cropped masks: cropping, cleaning, merging across tile seams, mask NMS.

Pairwise overlaps are counted with sparse pixel matrices (their Gram matrix), not pair by pair.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from .types import Mask


def crop_mask(mask: np.ndarray, quality: float, hint: int = 0) -> Mask:
    """A non-empty (H, W) bool mask -> a Mask of its bounding-box crop (tile -1)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return Mask(mask[y0:y1, x0:x1].copy(), int(y0), int(x0), quality, hint=hint)


def clean_mask(mask: Mask, min_area: int) -> Mask | None:
    """Drop islands and fill holes smaller than ``min_area`` pixels (SAM's own post-processing idea)."""
    islands, count = ndimage.label(mask.crop)
    sizes = np.bincount(islands.ravel(), minlength=count + 1)
    keep = (sizes >= min_area)[islands] & mask.crop
    holes, count = ndimage.label(~keep)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    # holes touching the crop border are outside, not holes
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = sizes < min_area
    small[border] = False
    small[0] = False
    keep |= small[holes]
    if not keep.any():
        return None
    cleaned = crop_mask(keep, mask.quality, mask.hint)
    return Mask(cleaned.crop, cleaned.y0 + mask.y0, cleaned.x0 + mask.x0, mask.quality, mask.tile, mask.hint)


def _pixel_matrix(masks: list[Mask], shape: tuple[int, int], where: np.ndarray | None = None) -> sparse.csr_matrix:
    """(M, H * W) sparse 0/1 matrix: row m holds the chip pixels (row-major) of mask m, only those
    ``where`` (H, W) is true if given. Its Gram matrix counts the pixels every pair shares."""
    width = shape[1]
    columns = []
    for m in masks:
        crop = m.crop if where is None else m.crop & where[m.y0 : m.box[2], m.x0 : m.box[3]]
        rows, cols = np.nonzero(crop)  # row-major, so each row's columns come out sorted
        columns.append((rows + m.y0) * width + cols + m.x0)
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in columns])])
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    return sparse.csr_matrix(
        (np.ones(len(indices), dtype=np.int32), indices, indptr), shape=(len(masks), shape[0] * width)
    )


def _shared_pixels(pixels: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pixels (M, N) -> (i, j, count) for every pair i < j of rows with at least one pixel in common."""
    gram = sparse.triu(pixels @ pixels.T, k=1).tocoo()
    return gram.row, gram.col, gram.data.astype(np.int64)


def _canvas_shape(masks: list[Mask]) -> tuple[int, int]:
    """(H, W) of the smallest chip (from the origin) holding every mask."""
    return max(m.box[2] for m in masks), max(m.box[3] for m in masks)


def merge_across_seams(masks: list[Mask], tiles: list[tuple[int, int, int, int]], iou: float = 0.5) -> list[Mask]:
    """Union masks of different tiles that are the same object cut by a seam.

    Two masks from tiles A and B are one object when, inside the overlap of A and B, they
    overlap with IoU > ``iou`` (>= 0); chains (objects over several seams) are merged transitively.
    Each mask lies in its own tile (tile -1: merged already, left as it is).
    Only pixels seen by two tiles can join masks, so only those enter the pairwise counts.
    """
    if len(masks) < 2:  # nothing to merge (and a single tile-sized mask would still cost a Gram product)
        return list(masks)
    height, width = np.maximum(_canvas_shape(masks), np.max(np.array(tiles)[:, 2:], axis=0))
    seen = np.zeros((height, width), dtype=np.int32)
    for y0, x0, y1, x1 in tiles:
        seen[y0:y1, x0:x1] += 1
    tile = np.array([m.tile for m in masks])
    shared = seen > 1
    pixels = _pixel_matrix(masks, (height, width), shared)
    i, j, inter = _shared_pixels(pixels)
    cross = (tile[i] != tile[j]) & (tile[i] >= 0) & (tile[j] >= 0)
    i, j, inter = i[cross], j[cross], inter[cross]
    # inside the overlap of tiles A and B, a mask of A is its part in B
    in_tile = (pixels @ _tile_matrix(tiles, shared)).toarray()  # (M, T) shared pixels of each mask in each tile
    union = in_tile[i, tile[j]] + in_tile[j, tile[i]] - inter
    same = inter / np.maximum(union, 1) > iou
    graph = sparse.coo_matrix((np.ones(int(same.sum())), (i[same], j[same])), shape=(len(masks),) * 2)
    _, group = connected_components(graph, directed=False)
    members: dict[int, list[Mask]] = {}
    for g, m in zip(group.tolist(), masks, strict=False):  # groups in the order of their first mask
        members.setdefault(g, []).append(m)
    return [ms[0] if len(ms) == 1 else _union(ms) for ms in members.values()]


def _tile_matrix(tiles: list[tuple[int, int, int, int]], where: np.ndarray) -> sparse.csr_matrix:
    """(H * W, T) sparse 0/1 matrix: the chip pixels (row-major) of each tile where ``where`` (H, W) is true."""
    grid = np.arange(where.size).reshape(where.shape)
    columns = [grid[y0:y1, x0:x1][where[y0:y1, x0:x1]] for y0, x0, y1, x1 in tiles]
    rows = np.concatenate(columns)
    owners = np.repeat(np.arange(len(tiles)), [len(c) for c in columns])
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, owners)), shape=(grid.size, len(tiles)))


def _union(masks: list[Mask]) -> Mask:
    """One merged mask (tile -1): best quality, the first non-zero class hint."""
    y0, x0 = min(m.y0 for m in masks), min(m.x0 for m in masks)
    y1, x1 = max(m.box[2] for m in masks), max(m.box[3] for m in masks)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for m in masks:
        crop[m.y0 - y0 : m.box[2] - y0, m.x0 - x0 : m.box[3] - x0] |= m.crop
    hint = next((m.hint for m in masks if m.hint), 0)
    return Mask(crop, y0, x0, max(m.quality for m in masks), -1, hint)


def _box_candidates(masks: list[Mask], iou: float, chunk: int = 1024) -> np.ndarray:
    """Indexes of masks that may overlap another with IoU > ``iou``: the bound min(a, b, box overlap) /
    (a + b - that), from boxes and areas only, rules the others out. (M, M) work in ``chunk`` rows."""
    boxes = torch.tensor([m.box for m in masks], dtype=torch.float64)  # (M, 4) y0, x0, y1, x1
    areas = torch.tensor([m.area for m in masks], dtype=torch.float64)
    hit = torch.zeros(len(masks), dtype=torch.bool)
    for start in range(0, len(masks), chunk):
        b, a = boxes[start : start + chunk, None], areas[start : start + chunk, None]
        high = (torch.minimum(b[..., 2:], boxes[None, :, 2:]) - torch.maximum(b[..., :2], boxes[None, :, :2])).clamp(
            min=0
        )
        inter = torch.minimum(torch.minimum(a, areas[None]), high.prod(-1))
        bound = inter / (a + areas[None] - inter).clamp(min=1)
        bound[torch.arange(len(b)), torch.arange(start, start + len(b))] = 0  # not with itself
        hit[start : start + chunk] = (bound > iou).any(1)
    return torch.nonzero(hit).flatten().numpy()


def mask_nms(masks: list[Mask], scores: list[float], iou: float) -> list[int]:
    """Greedy NMS on masks (IoU threshold >= 0): indexes kept, best score first (ties: lower index first)."""
    if not masks:
        return []
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    near = _box_candidates(masks, iou)
    subset = [masks[k] for k in near]
    i, j, inter = _shared_pixels(_pixel_matrix(subset, _canvas_shape(subset))) if subset else (np.zeros(0, int),) * 3
    areas = np.array([m.area for m in subset], dtype=np.int64)
    over = inter / np.maximum(areas[i] + areas[j] - inter, 1) > iou
    a, b = near[i[over]], near[j[over]]
    conflicts = sparse.csr_matrix(
        (np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(len(masks),) * 2
    )
    kept, suppressed = [], np.zeros(len(masks), dtype=bool)
    for k in order.tolist():  # one pass over masks, not over pairs
        if not suppressed[k]:
            kept.append(k)
            suppressed[conflicts.indices[conflicts.indptr[k] : conflicts.indptr[k + 1]]] = True
    return kept
