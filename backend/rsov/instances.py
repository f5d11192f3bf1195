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

import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol

from pathlib import Path

import numpy as np
import rasterio.features
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.warp import transform_geom
from scipy import ndimage
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

    def propose(self, tile: np.ndarray, key: str, points: np.ndarray, options: InstanceOptions) -> list[Mask]:
        """tile (h, w, 3) uint8, ``key`` identifying its pixels (for caches), points (P, 3) x, y, class hint
        -> masks in tile pixels (grid masks have hint 0)."""
        ...


@dataclass
class InstanceTimings:
    """Seconds spent by a SamProposer since it was built."""

    sam_encode_s: float = 0.0
    proposals_s: float = 0.0


class SamProposer:
    """Segment Anything as a proposer, keeping each tile's image embedding and grid masks."""

    def __init__(self, sam: torch.nn.Module, weights_id: str, cache_size: int = 32) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.weights_id = weights_id
        self.cache_size = cache_size
        self._embeddings: OrderedDict[str, tuple] = OrderedDict()
        self._grid: OrderedDict[tuple, list[Mask]] = OrderedDict()
        self.timings = InstanceTimings()
        self.encoded_tiles = 0

    @torch.inference_mode()
    def propose(self, tile: np.ndarray, key: str, points: np.ndarray, options: InstanceOptions) -> list[Mask]:
        self._set_tile(tile, key)
        t = time.perf_counter()
        grid_key = (key, options.points_per_side, options.pred_iou_thresh, options.stability_thresh)
        if grid_key not in self._grid:
            self._remember(self._grid, grid_key, self._grid_masks(tile.shape[:2], options))
        masks = list(self._grid[grid_key])
        if len(points):
            masks += self._prompted_masks(points, tile.shape[:2])
        self.timings.proposals_s += time.perf_counter() - t
        return masks

    def _set_tile(self, tile: np.ndarray, key: str) -> None:
        p = self.predictor
        if key in self._embeddings:
            p.features, p.original_size, p.input_size = self._embeddings[key]
            p.is_image_set = True
            self._embeddings.move_to_end(key)
            return
        t = time.perf_counter()
        p.set_image(tile)
        self.timings.sam_encode_s += time.perf_counter() - t
        self.encoded_tiles += 1
        self._remember(self._embeddings, key, (p.features, p.original_size, p.input_size))

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _decode(self, xy: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points (P, 2) -> masks (P, 3, h, w) bool, predicted IoU (P, 3), stability (P, 3)."""
        from segment_anything.utils.amg import calculate_stability_score

        p = self.predictor
        coords = p.transform.apply_coords_torch(torch.as_tensor(xy, dtype=torch.float32, device=p.device), size)
        labels = torch.ones(coords.shape[0], dtype=torch.int64, device=p.device)
        logits, iou, _ = p.predict_torch(coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True)
        stability = calculate_stability_score(logits, p.model.mask_threshold, 1.0)
        return logits > p.model.mask_threshold, iou, stability

    def _grid_masks(self, size: tuple[int, int], options: InstanceOptions) -> list[Mask]:
        from segment_anything.utils.amg import batched_mask_to_box, build_point_grid
        from torchvision.ops import batched_nms

        if options.points_per_side <= 0:
            return []
        xy = build_point_grid(options.points_per_side) * np.array(size[::-1])
        kept_masks, kept_scores = [], []
        for start in range(0, len(xy), 32):
            masks, iou, stability = self._decode(xy[start:start + 32], size)
            masks, iou, stability = masks.flatten(0, 1), iou.flatten(), stability.flatten()
            keep = (iou > options.pred_iou_thresh) & (stability > options.stability_thresh) & masks.flatten(1).any(1)
            kept_masks.append(masks[keep].cpu())
            kept_scores.append((iou * stability)[keep].cpu())
        masks, scores = torch.cat(kept_masks), torch.cat(kept_scores)
        if not len(masks):
            return []
        boxes = batched_mask_to_box(masks).float()
        keep = batched_nms(boxes, scores, torch.zeros(len(boxes)), iou_threshold=0.7)  # SAM's own dedupe
        return [_crop(masks[i].numpy(), float(scores[i])) for i in keep.tolist()]

    def _prompted_masks(self, points: np.ndarray, size: tuple[int, int]) -> list[Mask]:
        out = []
        for start in range(0, len(points), 32):
            batch = points[start:start + 32]
            masks, iou, stability = self._decode(batch[:, :2], size)
            best = iou.argmax(dim=1)
            for i, j in enumerate(best.tolist()):
                if masks[i, j].any():
                    out.append(_crop(masks[i, j].cpu().numpy(), float(iou[i, j] * stability[i, j]), hint=int(batch[i, 2])))
        return out


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


def mask_iou(a: Mask, b: Mask) -> float:
    """Intersection over union of two cropped masks."""
    ay0, ax0, ay1, ax1 = a.box
    by0, bx0, by1, bx1 = b.box
    y0, x0, y1, x1 = max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1)
    if y0 >= y1 or x0 >= x1:
        return 0.0
    inter = int((a.crop[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0] & b.crop[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]).sum())
    return inter / max(a.area + b.area - inter, 1)


def _union(a: Mask, b: Mask) -> Mask:
    y0, x0 = min(a.y0, b.y0), min(a.x0, b.x0)
    y1, x1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for m in (a, b):
        crop[m.y0 - y0:m.box[2] - y0, m.x0 - x0:m.box[3] - x0] |= m.crop
    return Mask(crop, y0, x0, max(a.quality, b.quality), -1, a.hint or b.hint)


def _clip_to(mask: Mask, box: tuple[int, int, int, int]) -> Mask | None:
    """The part of ``mask`` inside ``box`` (y0, x0, y1, x1), or None."""
    y0, x0 = max(mask.y0, box[0]), max(mask.x0, box[1])
    y1, x1 = min(mask.box[2], box[2]), min(mask.box[3], box[3])
    if y0 >= y1 or x0 >= x1:
        return None
    part = mask.crop[y0 - mask.y0:y1 - mask.y0, x0 - mask.x0:x1 - mask.x0]
    return Mask(part, y0, x0) if part.any() else None


def merge_across_seams(masks: list[Mask], tiles: list[tuple[int, int, int, int]], iou: float = 0.5) -> list[Mask]:
    """Union masks of different tiles that are the same object cut by a seam.

    Two masks from tiles A and B are one object when, inside the overlap of A and B, they
    overlap with IoU > ``iou``; chains (objects over several seams) are merged transitively.
    """
    parent = list(range(len(masks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(masks):
        for j in range(i + 1, len(masks)):
            b = masks[j]
            if a.tile == b.tile or a.tile < 0 or b.tile < 0:
                continue
            ta, tb = tiles[a.tile], tiles[b.tile]
            overlap = (max(ta[0], tb[0]), max(ta[1], tb[1]), min(ta[2], tb[2]), min(ta[3], tb[3]))
            pa, pb = _clip_to(a, overlap), _clip_to(b, overlap)
            if pa is not None and pb is not None and mask_iou(pa, pb) > iou:
                parent[root(j)] = root(i)
    groups: dict[int, Mask] = {}
    for i, m in enumerate(masks):
        r = root(i)
        groups[r] = m if r not in groups else _union(groups[r], m)
    return list(groups.values())


def mask_nms(masks: list[Mask], scores: list[float], iou: float) -> list[int]:
    """Greedy NMS on masks: indexes kept, best score first."""
    kept: list[int] = []
    for i in sorted(range(len(masks)), key=lambda k: -scores[k]):
        if all(mask_iou(masks[i], masks[k]) <= iou for k in kept):
            kept.append(i)
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
            origin: tuple[int, int] = (0, 0)) -> list[Mask]:
    """Tile the chip, propose masks per tile (prompts go to the tile whose centre they are nearest), merge seams.

    ``tiles`` (y0, x0, y1, x1) in chip pixels default to a slide over the chip; ``origin`` is the
    chip's place on the raster, so a tile's cache key names the same pixels whatever the chip.
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
        where = f"{y0 + origin[0]},{x0 + origin[1]},{y1 + origin[0]},{x1 + origin[1]}"
        for m in proposer.propose(image[y0:y1, x0:x1], f"{key}|{where}", mine, options):
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
             options: InstanceOptions, bank: ExampleBank | None = None) -> list[Instance]:
    """Give each mask a class and a score; drop background and unsure masks; mask NMS across classes."""
    if not masks:
        return []
    shape = image.shape[:2]
    feats = pooled_features(predictor, masks, shape, options)
    crops = crop_features(predictor.encoder, image, masks, predictor.device) if options.crop_weight > 0 else None
    probs = class_probabilities(feats, predictor, vocabulary, scoring, options, bank, crops)
    score, label = probs.max(dim=1)
    keep = [i for i in range(len(masks)) if label[i] > 0 and score[i] >= options.score_threshold]
    order = mask_nms([masks[i] for i in keep], [float(score[i]) for i in keep], options.nms_iou)
    names = vocabulary.names
    return [Instance(masks[keep[k]], shape, int(label[keep[k]]), names[int(label[keep[k]]) - 1], float(score[keep[k]]))
            for k in order]


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
