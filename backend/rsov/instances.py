"""Instance mode: every object its own polygon, class and score, for any class name (training-free).

1. Proposals: Segment Anything masks per tile, from an automatic point grid and from class-aware
   point prompts seeded in the confident regions of the semantic map (so small objects the grid
   misses still get masks). Tiles overlap; masks cut by a tile seam are merged across it.
2. Classification of each mask (ZoRI, SCORE): dense CLIP features pooled in the mask, optionally
   fused with its dilated surroundings (SCORE's regional context), scored against the text
   classifier (optionally on ZoRI's DEC channels), plus the exemplar cache bank (ZoRI's PIP)
   ``logits + alpha * softmax(s f F^T) L``, optionally ensembled geometrically with a CLIP embedding
   of the object cut out on its own. Masks whose best class is background or under a threshold
   are dropped ("none of these").
3. Mask NMS across classes, minimum area; polygons come from ``vectorize``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Protocol

from pathlib import Path

import numpy as np
import rasterio.features
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.warp import transform_geom
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from .errors import CancelledError, InputError
from .predictor import FeatureOptions, Predictor, ScoreOptions, dec_channels, sliding_windows
from .raster_io import RasterChip, read_chip, read_geojson
from .vectorize import VectorFeature, feature_area_m2, mask_geometry
from .vocabulary import Vocabulary

LOGIT_SCALE = 50.0  # CLIP's temperature, used for every softmax over cosines here


@dataclass(frozen=True)
class InstanceOptions:
    """Instance-mode settings; the defaults keep every optional idea off until measured."""

    points_per_side: int = 16  # automatic grid density per tile (0: prompts only)
    pred_iou_thresh: float = 0.8  # SAM's predicted mask quality, grid masks
    stability_thresh: float = 0.9
    class_prompts: bool = True  # extra point prompts from confident semantic regions
    prompt_confidence: float = 0.6
    max_prompts: int = 256
    points_per_batch: int = 64  # point prompts per mask-decoder call (bounds memory)
    tile: int = 1024  # SAM's input size; larger extents are tiled...
    tile_overlap: int = 128  # ...with this overlap, and seam-cut masks merged
    nms_iou: float = 0.5  # mask NMS across classes
    min_area_px: int = 16
    score_threshold: float = 0.3  # "none of these" below this class probability
    context_dilation: int = 4  # SCORE: kernel 3 + this, on the working grid
    context_weight: float = 0.0  # 0 = no regional context
    crop_weight: float = 0.0  # weight of the cut-out CLIP score in the geometric ensemble (0 = off)
    exemplar_alpha: float = 0.5  # ZoRI PIP alpha
    fill_holes: bool = False
    oriented_boxes: bool = False

    def __post_init__(self) -> None:
        if self.tile < 64 or not 0 <= self.tile_overlap < self.tile // 2:
            raise InputError(f"Tile {self.tile} px with overlap {self.tile_overlap} px: need tile >= 64, overlap < tile/2.")
        if not 0 <= self.context_weight <= 1 or not 0 <= self.crop_weight <= 1:
            raise InputError("Context and crop weights must be between 0 and 1.")
        if self.points_per_batch < 1:
            raise InputError("points_per_batch must be at least 1.")


@dataclass
class Mask:
    """A binary mask kept as its bounding-box crop in chip pixels."""

    crop: np.ndarray  # (h, w) bool
    y0: int
    x0: int
    quality: float = 1.0  # proposal quality (SAM predicted IoU x stability)
    tile: int = -1  # index of the tile it came from (-1: merged)
    hint: int = 0  # class id of the prompt that produced it (0: grid)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y0, self.x0, self.y0 + self.crop.shape[0], self.x0 + self.crop.shape[1]

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def paste(self, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The bool mask on a canvas of ``shape`` whose top-left pixel is ``origin`` (clipped to it)."""
        out = np.zeros(shape, dtype=bool)
        part = _clip_to(self, (origin[0], origin[1], origin[0] + shape[0], origin[1] + shape[1]))
        if part is not None:
            y0, x0, y1, x1 = part.box
            out[y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1]] = part.crop
        return out


@dataclass
class Instance:
    """A classified object (what instance mode returns, before vectorization)."""

    mask: Mask
    shape: tuple[int, int]  # (H, W) of the chip
    class_id: int
    class_name: str
    score: float

    @property
    def full_mask(self) -> np.ndarray:
        return self.mask.paste(self.shape)


@dataclass
class ExampleBank:
    """ZoRI's cache bank: keys (K, C) unit-norm features of example objects, labels (K,) class ids."""

    keys: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


class Proposer(Protocol):
    """Class-agnostic mask proposals for one tile (SAM, or a test oracle)."""

    def propose(self, tile: np.ndarray, key: str, points: np.ndarray, options: InstanceOptions,
                precision: str = "fp32", progress: Callable[[float, str], None] | None = None) -> list[Mask]:
        """tile (h, w, 3) uint8, ``key`` identifying its pixels (for caches), points (P, 3) x, y, class hint
        -> masks in tile pixels (grid masks have hint 0). ``progress(fraction of the tile, text)``."""
        ...


@dataclass(frozen=True)
class InstanceSummary:
    """Where every proposal went: the counts add up to ``proposals``."""

    proposals: int  # masks after seam merging
    kept: int  # objects returned
    below_threshold: int  # best class under the object threshold
    threshold: float
    background: int  # best class was a background word
    duplicates: int = 0  # suppressed by mask NMS
    outside_extent: int = 0  # touch no pixel of the extent asked for
    too_small: int = 0  # under the minimum area (after nodata and the processing area were cut away)

    @property
    def text(self) -> str:
        parts = [f"{self.proposals} proposals", f"{self.kept} kept",
                 f"{self.below_threshold} below the object threshold {self.threshold:.2f}", f"{self.background} background"]
        parts += [f"{n} {what}" for n, what in ((self.duplicates, "duplicates"), (self.outside_extent, "outside the extent"),
                                                  (self.too_small, "too small")) if n]
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {**asdict(self), "text": self.text}


def _crop(mask: np.ndarray, quality: float, hint: int = 0) -> Mask:
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
    cleaned = _crop(keep, mask.quality, mask.hint)
    return Mask(cleaned.crop, cleaned.y0 + mask.y0, cleaned.x0 + mask.x0, mask.quality, mask.tile, mask.hint)


def _clip_to(mask: Mask, box: tuple[int, int, int, int]) -> Mask | None:
    """The part of ``mask`` inside ``box`` (y0, x0, y1, x1), or None."""
    y0, x0 = max(mask.y0, box[0]), max(mask.x0, box[1])
    y1, x1 = min(mask.box[2], box[2]), min(mask.box[3], box[3])
    if y0 >= y1 or x0 >= x1:
        return None
    part = mask.crop[y0 - mask.y0:y1 - mask.y0, x0 - mask.x0:x1 - mask.x0]
    return Mask(part, y0, x0) if part.any() else None


def _pixel_matrix(masks: list[Mask], shape: tuple[int, int], where: np.ndarray | None = None) -> sparse.csr_matrix:
    """(M, H * W) sparse 0/1 matrix: row m holds the chip pixels (row-major) of mask m, only those
    ``where`` (H, W) is true if given. Its Gram matrix counts the pixels every pair shares."""
    width = shape[1]
    columns = []
    for m in masks:
        crop = m.crop if where is None else m.crop & where[m.y0:m.box[2], m.x0:m.box[3]]
        rows, cols = np.nonzero(crop)  # row-major, so each row's columns come out sorted
        columns.append((rows + m.y0) * width + cols + m.x0)
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in columns])])
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    return sparse.csr_matrix((np.ones(len(indices), dtype=np.int32), indices, indptr), shape=(len(masks), shape[0] * width))


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
    for g, m in zip(group.tolist(), masks):  # groups in the order of their first mask
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
        crop[m.y0 - y0:m.box[2] - y0, m.x0 - x0:m.box[3] - x0] |= m.crop
    hint = next((m.hint for m in masks if m.hint), 0)
    return Mask(crop, y0, x0, max(m.quality for m in masks), -1, hint)


def _box_candidates(masks: list[Mask], iou: float, chunk: int = 1024) -> np.ndarray:
    """Indexes of masks that may overlap another with IoU > ``iou``: the bound min(a, b, box overlap) /
    (a + b - that), from boxes and areas only, rules the others out. (M, M) work in ``chunk`` rows."""
    boxes = torch.tensor([m.box for m in masks], dtype=torch.float64)  # (M, 4) y0, x0, y1, x1
    areas = torch.tensor([m.area for m in masks], dtype=torch.float64)
    hit = torch.zeros(len(masks), dtype=torch.bool)
    for start in range(0, len(masks), chunk):
        b, a = boxes[start:start + chunk, None], areas[start:start + chunk, None]
        high = (torch.minimum(b[..., 2:], boxes[None, :, 2:]) - torch.maximum(b[..., :2], boxes[None, :, :2])).clamp(min=0)
        inter = torch.minimum(torch.minimum(a, areas[None]), high.prod(-1))
        bound = inter / (a + areas[None] - inter).clamp(min=1)
        bound[torch.arange(len(b)), torch.arange(start, start + len(b))] = 0  # not with itself
        hit[start:start + chunk] = (bound > iou).any(1)
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
    conflicts = sparse.csr_matrix((np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))),
                                  shape=(len(masks),) * 2)
    kept, suppressed = [], np.zeros(len(masks), dtype=bool)
    for k in order.tolist():  # one pass over masks, not over pairs
        if not suppressed[k]:
            kept.append(k)
            suppressed[conflicts.indices[conflicts.indptr[k]:conflicts.indptr[k + 1]]] = True
    return kept


def prompt_points(class_map: np.ndarray, score_map: np.ndarray, options: InstanceOptions) -> np.ndarray:
    """Class-aware prompts: for each confident connected region of a class, its innermost pixel.

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
    return np.array([r[1:] for r in rows[:options.max_prompts]], dtype=np.float64).reshape(-1, 3)


def propose(proposer: Proposer, image: np.ndarray, key: str, points: np.ndarray, options: InstanceOptions,
            cancelled=None, tiles: list[tuple[int, int, int, int]] | None = None,
            origin: tuple[int, int] = (0, 0), precision: str = "fp32",
            progress: Callable[[float, str], None] | None = None) -> list[Mask]:
    """Tile the chip, propose masks per tile (prompts go to the tile whose centre they are nearest), merge seams.

    ``tiles`` (y0, x0, y1, x1) in chip pixels default to a slide over the chip; ``origin`` is the
    chip's place on the raster, so a tile's cache key names the same pixels whatever the chip.
    ``progress(fraction of all tiles, text)`` follows every prompt batch.
    """
    height, width = image.shape[:2]
    if tiles is None:
        tiles = sliding_windows(height, width, options.tile, options.tile - options.tile_overlap)
    masks: list[Mask] = []
    centres = np.array([((y0 + y1) / 2, (x0 + x1) / 2) for y0, x0, y1, x1 in tiles])
    owner = (np.abs(points[:, None, 1] - centres[None, :, 0]) + np.abs(points[:, None, 0] - centres[None, :, 1])).argmin(1) \
        if len(points) else np.zeros(0, dtype=int)
    for index, (y0, x0, y1, x1) in enumerate(tiles):
        if cancelled is not None and cancelled():
            raise CancelledError("The job was cancelled.")
        mine = points[owner == index] - np.array([x0, y0, 0]) if len(points) else points

        def tile_progress(fraction: float, text: str, index: int = index) -> None:
            if progress is not None:
                progress((index + fraction) / len(tiles), f"tile {index + 1}/{len(tiles)}" + (f", {text}" if text else ""))

        tile_progress(0.0, "")
        where = f"{y0 + origin[0]},{x0 + origin[1]},{y1 + origin[0]},{x1 + origin[1]}"
        for m in proposer.propose(image[y0:y1, x0:x1], f"{key}|{where}", mine, options, precision, tile_progress):
            masks.append(Mask(m.crop, m.y0 + y0, m.x0 + x0, m.quality, index, m.hint))
    masks = [c for c in (clean_mask(m, options.min_area_px) for m in masks) if c is not None]
    return merge_across_seams(masks, tiles) if len(tiles) > 1 else masks


def _working_masks(masks: list[Mask], shape: tuple[int, int], working: tuple[int, int],
                   box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """(M, Hw, Ww) float cover of each mask on the working grid (area-averaged); ``box`` is where the
    image lies on it (default: it spans the grid), placed to the nearest working pixel."""
    full = torch.from_numpy(np.stack([m.paste(shape) for m in masks])).float()[None]
    y0, x0, y1, x1 = (round(v) for v in box) if box is not None else (0, 0, *working)
    size = (max(1, y1 - y0), max(1, x1 - x0))
    if full.shape[-2:] != size:
        full = F.interpolate(full, size=size, mode="bilinear", antialias=True, align_corners=False)
    if (y0, x0, *size) == (0, 0, *working):
        return full[0]
    out = torch.zeros(len(masks), *working)
    ty0, tx0, ty1, tx1 = max(y0, 0), max(x0, 0), min(y0 + size[0], working[0]), min(x0 + size[1], working[1])
    out[:, ty0:ty1, tx0:tx1] = full[0, :, ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]
    return out


def pooled_features(predictor: Predictor, masks: list[Mask], shape: tuple[int, int], options: InstanceOptions,
                    batch: int = 8) -> torch.Tensor:
    """Mask-pooled dense features (M, C), fused with the regional context when asked (SCORE)."""
    features = predictor._require_features()
    working = features.working_size
    out = []
    for start in range(0, len(masks), batch):
        cover = _working_masks(masks[start:start + batch], shape, working, features.input_box)
        f = predictor.pool(cover)
        if options.context_weight > 0:
            k = 3 + options.context_dilation
            dilated = F.max_pool2d(cover[None], k, stride=1, padding=k // 2)[0][:, :working[0], :working[1]]
            f = F.normalize((1 - options.context_weight) * f + options.context_weight * predictor.pool(dilated), dim=-1)
        out.append(f)
    return torch.cat(out)


def class_probabilities(features: torch.Tensor, predictor: Predictor, vocabulary: Vocabulary, scoring: ScoreOptions,
                        options: InstanceOptions, bank: ExampleBank | None = None,
                        crop_features: torch.Tensor | None = None) -> torch.Tensor:
    """features (M, C) -> (M, N + 1) class probabilities (column 0: background)."""
    queries, owners = vocabulary.queries()
    text = full_text = predictor.text.embed(queries).to(features.device)
    keys = bank.keys.to(features.device) if bank is not None and len(bank) else None
    if scoring.dec_keep is not None:
        keep = dec_channels(text, scoring.dec_keep)
        text, features = F.normalize(text[:, keep], dim=-1), F.normalize(features[:, keep], dim=-1)
        keys = F.normalize(keys[:, keep], dim=-1) if keys is not None else None
    n_classes = len(vocabulary.classes) + 1
    owner = torch.tensor(owners, device=features.device)

    def per_class(cosines: torch.Tensor) -> torch.Tensor:  # (M, Q) -> (M, N + 1), max over synonyms
        out = torch.full((cosines.shape[0], n_classes), -1.0, device=cosines.device)
        return out.scatter_reduce(1, owner.expand_as(cosines), cosines, "amax")

    logits = per_class(features @ text.T)
    if keys is not None:  # ZoRI PIP: affinity to the examples, as a class vote
        affinity = torch.softmax(LOGIT_SCALE * features @ keys.T, dim=1)
        logits = logits + options.exemplar_alpha * affinity @ F.one_hot(bank.labels.to(features.device), n_classes).float()
    probs = torch.softmax(LOGIT_SCALE * logits, dim=1)
    if crop_features is not None and options.crop_weight > 0:
        out = torch.softmax(LOGIT_SCALE * per_class(crop_features @ full_text.T), dim=1)
        probs = probs.pow(1 - options.crop_weight) * out.pow(options.crop_weight)
        probs = probs / probs.sum(dim=1, keepdim=True)
    return probs


def crop_features(encoder, image: np.ndarray, masks: list[Mask], device: torch.device, size: int = 224,
                  context: float = 0.2) -> torch.Tensor:
    """CLIP embeddings (M, C) of each object cut out on its own (outside the mask: the mean colour)."""
    mean = torch.tensor(encoder.mean).view(3, 1, 1) * 255
    std = torch.tensor(encoder.std).view(3, 1, 1) * 255
    height, width = image.shape[:2]
    crops = []
    for m in masks:
        y0, x0, y1, x1 = m.box
        side = int(max(y1 - y0, x1 - x0) * (1 + context)) + 1
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        ys, xs = max(cy - side // 2, 0), max(cx - side // 2, 0)
        ye, xe = min(ys + side, height), min(xs + side, width)
        pixels = torch.from_numpy(image[ys:ye, xs:xe]).permute(2, 0, 1).float()
        inside = torch.from_numpy(m.paste((ye - ys, xe - xs), (ys, xs)))  # only the crop window
        pixels = torch.where(inside, (pixels - mean) / std, torch.zeros(()))
        crops.append(F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    with torch.inference_mode():
        out = [encoder.embed_image(torch.stack(crops[i:i + 16]).to(device)) for i in range(0, len(crops), 16)]
    return F.normalize(torch.cat(out).float(), dim=-1)


def classify(predictor: Predictor, image: np.ndarray, masks: list[Mask], vocabulary: Vocabulary, scoring: ScoreOptions,
             options: InstanceOptions, bank: ExampleBank | None = None) -> tuple[list[Instance], InstanceSummary]:
    """Give each mask a class and a score; drop background and unsure masks; mask NMS across classes.
    Returns the objects, best first, and where every mask went."""
    if not masks:
        return [], InstanceSummary(0, 0, 0, options.score_threshold, 0)
    shape = image.shape[:2]
    feats = pooled_features(predictor, masks, shape, options)
    crops = crop_features(predictor.encoder, image, masks, predictor.device) if options.crop_weight > 0 else None
    probs = class_probabilities(feats, predictor, vocabulary, scoring, options, bank, crops)
    score, label = probs.max(dim=1)
    keep = [i for i in range(len(masks)) if label[i] > 0 and score[i] >= options.score_threshold]
    order = mask_nms([masks[i] for i in keep], [float(score[i]) for i in keep], options.nms_iou)
    names = vocabulary.names
    background = int((label == 0).sum())
    summary = InstanceSummary(len(masks), len(order), len(masks) - len(keep) - background, options.score_threshold,
                              background, duplicates=len(keep) - len(order))
    return [Instance(masks[keep[k]], shape, int(label[keep[k]]), names[int(label[keep[k]]) - 1], float(score[keep[k]]))
            for k in order], summary


@dataclass(frozen=True)
class Example:
    """An example object the analyst pointed at: a polygon of one class."""

    geometry: BaseGeometry
    crs: str | None  # of the geometry; None = the raster's
    class_name: str


def read_examples(source: str | Path | dict) -> tuple[Example, ...]:
    """Examples from a GeoJSON FeatureCollection (file or dict) whose features carry a ``class`` property.

    The CRS comes from a ``crs`` member (``{"type": "name", "properties": {"name": "EPSG:..."}}``),
    else EPSG:4326 as RFC 7946 says.
    """
    source, crs = read_geojson(source, "examples")
    examples = []
    for feature in source.get("features", []):
        name = (feature.get("properties") or {}).get("class")
        try:
            geometry = shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError):
            geometry = None
        if not name or geometry is None or geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError("Every example must be a Polygon feature with a 'class' property naming a class.")
        examples.append(Example(geometry, crs, str(name)))
    return tuple(examples)


def build_example_bank(predictor: Predictor, raster: str, examples: tuple[Example, ...], vocabulary: Vocabulary,
                       bands, features: FeatureOptions, resolution_m: float) -> ExampleBank:
    """Encode each example where it lies (at the job's ground resolution) and pool its features."""
    names = [n.lower() for n in vocabulary.names]
    keys, labels = [], []
    for example in examples:
        if example.class_name.lower() not in names:
            raise InputError(f"Example class '{example.class_name}' is not in the vocabulary ({', '.join(vocabulary.names)}).")
        minx, miny, maxx, maxy = example.geometry.bounds
        pad = max(maxx - minx, maxy - miny) * 0.5  # some surroundings, as the object is seen in a window
        chip = read_chip(raster, (minx - pad, miny - pad, maxx + pad, maxy + pad), example.crs, bands)
        predictor.set_image(chip.image, replace(features, resolution_m=resolution_m), chip.pixel_size_m)
        mask = _rasterize(example, chip)
        if mask is None:
            raise InputError(f"An example of '{example.class_name}' covers no pixel of the raster.")
        keys.append(pooled_features(predictor, [mask], chip.image.shape[:2], InstanceOptions())[0])
        labels.append(names.index(example.class_name.lower()) + 1)
    return ExampleBank(torch.stack(keys), torch.tensor(labels))


def _rasterize(example: Example, chip: RasterChip) -> Mask | None:
    geometry = mapping(example.geometry)
    if example.crs is not None and chip.crs is not None:
        geometry = transform_geom(example.crs, chip.crs, geometry)
    burnt = rasterio.features.rasterize([(geometry, 1)], out_shape=chip.image.shape[:2], transform=chip.transform,
                                        dtype="uint8").astype(bool) & chip.valid
    return _crop(burnt, 1.0) if burnt.any() else None


def instance_features(instances: list[Instance], chip: RasterChip, simplify_px: float, options: InstanceOptions,
                      min_area_m2: float = 0.0) -> list[VectorFeature]:
    """One (Multi)Polygon feature per instance, numbered from 1."""
    out = []
    for number, inst in enumerate(instances, start=1):
        transform = chip.transform @ Affine.translation(inst.mask.x0, inst.mask.y0)
        geometry = mask_geometry(inst.mask.crop, transform, simplify_px, options.fill_holes)
        if geometry is None:
            continue
        area = feature_area_m2(geometry, chip.crs)
        if area >= min_area_m2:
            out.append(VectorFeature(geometry, inst.class_name, inst.class_id, inst.score, area, instance_id=number))
    return out


def oriented_boxes(features: list[VectorFeature]) -> list[VectorFeature]:
    """The minimum rotated rectangle of each instance, same attributes."""
    return [VectorFeature(f.geometry.minimum_rotated_rectangle, f.class_name, f.class_id, f.score, f.area_m2,
                          f.instance_id) for f in features]
