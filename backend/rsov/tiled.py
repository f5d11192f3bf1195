"""The engine on the raster's working grid: plan a request, encode its windows once, score blocks.

``plan`` turns a request into a ``Plan`` (the working grid, the output grid and its blocks, the
processing area) from the raster's header alone, so it also gives estimates before any work.
``GridPredictor`` is shaped like ``SamPredictor``: ``set_raster`` once, then ``predict_block``
for any vocabulary; window features are kept in the engine's cache, keyed by the raster's
identity, the grid, the window and the feature options, so panning re-encodes only new
windows and a vocabulary edit re-scores only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import numpy as np
import rasterio.features
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.windows import Window

from .errors import CancelledError, InputError
from .geo.raster_io import (
    area_in_raster_crs,
    check_real,
    extent_window,
    open_raster,
    raster_pixel_size_m,
    read_area,
    read_rgb,
    read_valid,
    select_bands,
    window_bounds,
)
from .grid import BLOCK_SIDE, OutputGrid, WorkingGrid, interpolation, output_grid, working_grid, working_positions
from .semantic.predictor import (
    FeatureOptions,
    ImageFeatures,
    Predictor,
    ScoreOptions,
    best_class,
    class_probabilities,
    scoring_vectors,
    window_logits,
)
from .semantic.vocabulary import Vocabulary

CancelFn = Callable[[], bool]
# Rough encoder speeds (windows per second, ViT-B/16 fp32) for estimates before anything ran.
DEFAULT_WINDOWS_PER_S = {"cpu": 4.0, "cuda": 120.0}


@dataclass(frozen=True)
class Plan:
    """Everything a request will do, known from the raster header: grids, blocks, area, counts."""

    raster: str
    raster_id: tuple  # (device, inode, size, mtime): the file, whatever path names it; a changed file is new
    crs: CRS | None
    raster_transform: Affine
    raster_size: tuple[int, int]  # (H, W) native pixels
    indexes: tuple[int, ...]
    extent: Window  # native pixels requested (bbox and area, snapped, clipped)
    grid: WorkingGrid
    out: OutputGrid
    area: tuple[dict, ...] | None  # processing-area polygons (GeoJSON) in the raster CRS
    pixel_size_m: float | None  # the raster's own

    @property
    def transform(self) -> Affine:
        """Output pixel -> raster CRS."""
        return self.out.transform(self.raster_transform)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return window_bounds(Window(0, 0, self.out.width, self.out.height), self.transform)

    def working_span(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[tuple, tuple]:
        """For output rows/cols: the bilinear interpolation (matrix, lo, hi) from working pixels, per axis."""
        ry = interpolation(working_positions(self.grid, self.out, 0, *rows), self.grid.height)
        rx = interpolation(working_positions(self.grid, self.out, 1, *cols), self.grid.width)
        return ry, rx

    def windows(self, block: tuple[int, int, int, int] | None = None) -> list[tuple[int, int, int, int]]:
        """The grid windows a block (r0, c0, r1, c1) needs (default: the whole extent)."""
        r0, c0, r1, c1 = block or (0, 0, self.out.height, self.out.width)
        # positions grow with the index: the first and last output pixels bound the span
        ends = [
            interpolation(working_positions(self.grid, self.out, axis, i, i + 1), n)[1:]
            for axis, n, (lo, hi) in ((0, self.grid.height, (r0, r1)), (1, self.grid.width, (c0, c1)))
            for i in (lo, hi - 1)
        ]
        return self.grid.windows_touching((ends[0][0], ends[1][1]), (ends[2][0], ends[3][1]))

    def summary(self) -> str:
        rule = {
            "auto": "auto (the raster's own resolution x 1024/448)",
            "fixed": "fixed",
            "long_side": "resized to the long side (per-extent rule)",
        }[self.grid.rule]
        text = f"working resolution {self.grid.resolution_m:.3g} m/px, {rule}"
        if self.out.step_x != 1.0 or self.out.step_y != 1.0:
            text += f"; output decimated to {self.out.width}x{self.out.height} px by --max-side"
        return text


def plan(
    raster: str,
    bbox,
    bbox_crs: str | None,
    bands,
    features: FeatureOptions,
    max_side: int | None,
    area: dict | str | None = None,
    block: int = BLOCK_SIDE,
) -> Plan:
    """Plan a request from the raster header (no pixel is read). Bad input raises InputError."""
    with open_raster(raster) as ds:
        check_real(ds)
        indexes = tuple(select_bands(bands, ds.count, raster))
        extent = extent_window(ds, bbox, bbox_crs)
        shapes = None
        if area is not None:
            geometries, area_crs = read_area(area)
            shapes = tuple(area_in_raster_crs(ds, geometries, area_crs))
            extent = _intersect(extent, _shapes_window(ds, shapes), ds.name)
        pixel = raster_pixel_size_m(ds)
        grid = working_grid(
            (ds.height, ds.width),
            extent,
            pixel,
            features.resolution_m,
            features.long_side,
            features.window,
            features.stride,
        )
        if block < 64:
            raise InputError(f"A block must be at least 64 px on a side, got {block}.")
        out = output_grid(extent, max_side, block)
        stat = os.stat(raster)
        return Plan(
            raster,
            (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns),
            ds.crs,
            ds.transform,
            (ds.height, ds.width),
            indexes,
            extent,
            grid,
            out,
            shapes,
            pixel,
        )


def _shapes_window(ds: DatasetReader, shapes: tuple[dict, ...]) -> Window:
    minx, miny, maxx, maxy = rasterio.features.bounds({"type": "GeometryCollection", "geometries": list(shapes)})
    return extent_window(ds, (minx, miny, maxx, maxy), None)


def _intersect(a: Window, b: Window, name: str) -> Window:
    col0, row0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    col1, row1 = min(a.col_off + a.width, b.col_off + b.width), min(a.row_off + a.height, b.row_off + b.height)
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"The processing area does not overlap the requested extent of {name}.")
    return Window(col0, row0, col1 - col0, row1 - row0)


@dataclass
class BlockResult:
    """One block of the answer, in output pixels."""

    block: tuple[int, int, int, int]  # (r0, c0, r1, c1)
    class_map: np.ndarray  # (h, w) int16, 0 = background
    score_map: np.ndarray  # (h, w) float32, winning probability
    valid: np.ndarray  # (h, w) bool: data inside the processing area

    @property
    def nbytes(self) -> int:
        return self.class_map.nbytes + self.score_map.nbytes + self.valid.nbytes


@dataclass(frozen=True)
class WindowFeatures:
    patches: torch.Tensor  # (C, h', w') unit norm (patch grid, or the window size when upsampled)
    cls: torch.Tensor  # (C,) unit norm

    @property
    def nbytes(self) -> int:
        return self.patches.numel() * self.patches.element_size() + self.cls.numel() * self.cls.element_size()


class Cache(Protocol):
    def get(self, key: str): ...

    def put(self, key: str, value) -> None: ...


@dataclass
class WindowStats:
    encoded: int = 0
    cached: int = 0


class GridPredictor:
    """Window features of one raster's working grid (cached), scored block by block."""

    def __init__(self, predictor: Predictor, cache: Cache, model_id: str) -> None:
        self.predictor = predictor
        self.cache = cache
        self.model_id = model_id
        self.stats = WindowStats()
        self._ds: DatasetReader | None = None
        self._plan: Plan | None = None
        self._options = FeatureOptions()

    def set_raster(self, ds: DatasetReader | None, plan: Plan, options: FeatureOptions) -> None:
        """The raster and plan to work on; without ``ds``, only cache keys can be asked for."""
        self._ds, self._plan, self._options = ds, plan, options

    def _require_plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError("Call set_raster before reading or scoring windows.")
        return self._plan

    def key(self, box: tuple[int, int, int, int]) -> str:
        plan = self._require_plan()
        options = asdict(replace(self._options, batch_size=0))
        return repr((plan.raster_id, plan.indexes, plan.grid.key(), box, options, self.model_id))

    @torch.inference_mode()
    def features(
        self,
        boxes: list[tuple[int, int, int, int]],
        cancelled: CancelFn | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[WindowFeatures]:
        """Features of grid windows, from the cache or encoded in batches of one shape
        (``progress(encoded, to encode)`` after each batch)."""
        found = {box: self.cache.get(self.key(box)) for box in boxes}
        missing = [box for box in boxes if found[box] is None]
        self.stats.cached += len(boxes) - len(missing)
        encoder, device = self.predictor.encoder, self.predictor.device
        mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1) * 255
        size = self._options.batch_size
        for start in range(0, len(missing), size):
            if cancelled is not None and cancelled():
                raise CancelledError("The job was cancelled.")
            batch = missing[start : start + size]
            plan = self._require_plan()
            crops = []
            for box in batch:
                image, _ = read_rgb(
                    self._ds, plan.indexes, plan.grid.native_window(box), (box[2] - box[0], box[3] - box[1])
                )
                crops.append(torch.from_numpy(image).to(device, torch.float32).permute(2, 0, 1))
            feats, tokens = self.predictor.encode((torch.stack(crops) - mean) / std, self._options)
            for box, f, t in zip(batch, feats, tokens, strict=True):
                found[box] = WindowFeatures(f, t)
                self.cache.put(self.key(box), found[box])
            self.stats.encoded += len(batch)
            if progress is not None:
                progress(start + len(batch), len(missing))
        return [found[box] for box in boxes]

    @torch.inference_mode()
    def predict_block(
        self,
        vocabulary: Vocabulary,
        options: ScoreOptions,
        block: tuple[int, int, int, int],
        cancelled: CancelFn | None = None,
        progress: Callable[[int, int], None] | None = None,
        scored: Callable[[int, int], None] | None = None,
    ) -> BlockResult:
        """Class and score maps of output block (r0, c0, r1, c1); ``progress(windows encoded, to encode)``,
        then ``scored(rows done, rows)``.

        Each working pixel averages the logits of every grid window over it, and output pixels
        interpolate working pixels bilinearly by their global position: the same numbers
        whichever block, extent or process computes them.
        """
        r0, c0, r1, c1 = block
        class_map = np.zeros((r1 - r0, c1 - c0), dtype=np.int16)
        score_map = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
        for start, probs in self.class_probabilities(vocabulary, options, block, cancelled, progress):
            label, best = best_class(probs, options)
            class_map[start : start + probs.shape[1]] = label.cpu().numpy()
            score_map[start : start + probs.shape[1]] = best.cpu().numpy()
            if scored is not None:
                scored(start + probs.shape[1], r1 - r0)
        valid = self.valid(block)
        class_map[~valid] = 0
        score_map[~valid] = 0.0
        return BlockResult(block, class_map, score_map, valid)

    @torch.inference_mode()
    def class_probabilities(
        self,
        vocabulary: Vocabulary,
        options: ScoreOptions,
        block: tuple[int, int, int, int],
        cancelled: CancelFn | None = None,
        progress: Callable[[int, int], None] | None = None,
        rows_per_chunk: int = 256,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (N + 1, rows, c1 - c0) class probabilities) of output pixels (r0, c0, r1, c1), a chunk of
        rows at a time (memory stays bounded at any vocabulary size). The box may reach outside the
        planned extent, as long as it stays on the raster."""
        device = self.predictor.device
        r0, c0, r1, c1 = block
        (ry, y0, y1), (rx, x0, x1) = self._require_plan().working_span((r0, r1), (c0, c1))
        queries, owners = vocabulary.queries()
        logits = self.working_logits(queries, options, (y0, y1), (x0, x1), cancelled, progress)
        owner = torch.tensor(owners, device=device)
        cols = torch.einsum("qhw,xw->qhx", logits, rx.to(device))
        ry = ry.to(device)
        for start in range(0, r1 - r0, rows_per_chunk):
            rows = torch.einsum("yh,qhx->qyx", ry[start : start + rows_per_chunk], cols)
            yield start, class_probabilities(rows, owner, len(vocabulary.classes) + 1, options)

    @torch.inference_mode()
    def working_logits(
        self,
        queries: list[str],
        options: ScoreOptions,
        rows: tuple[int, int],
        cols: tuple[int, int],
        cancelled: CancelFn | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """(Q, r1 - r0, c1 - c0) logits of working rows/cols, each pixel the mean over all grid windows on it."""
        device = self.predictor.device
        (y0, y1), (x0, x1) = rows, cols
        boxes = self._require_plan().grid.windows_touching(rows, cols)
        feats = self.features(boxes, cancelled, progress)
        text = self.predictor.text.embed(queries).to(device)
        text, cls, keep = scoring_vectors(text, torch.stack([f.cls for f in feats]).to(device), options)
        bias = options.cls_lambda * (cls @ text.T)  # (N, Q)
        total = torch.zeros(len(queries), y1 - y0, x1 - x0, device=device)
        count = torch.zeros(1, y1 - y0, x1 - x0, device=device)
        for (wy0, wx0, wy1, wx1), f, b in zip(boxes, feats, bias, strict=True):
            logits = window_logits(
                f.patches.to(device), text, b, (wy1 - wy0, wx1 - wx0), self.predictor.encoder.patch_size, keep
            )
            ty0, tx0, ty1, tx1 = max(wy0, y0), max(wx0, x0), min(wy1, y1), min(wx1, x1)
            total[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += logits[
                :, ty0 - wy0 : ty1 - wy0, tx0 - wx0 : tx1 - wx0
            ]
            count[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += 1
        return total / count

    def valid(self, block: tuple[int, int, int, int]) -> np.ndarray:
        """(h, w) bool: the block's pixels that hold data and lie in the processing area."""
        plan = self._require_plan()
        r0, c0, r1, c1 = block
        shape = (r1 - r0, c1 - c0)
        valid = read_valid(self._ds, plan.indexes, plan.out.native_window((r0, r1), (c0, c1)), shape)
        if plan.area is not None:
            valid &= rasterize_area(plan.area, plan.transform @ Affine.translation(c0, r0), shape)
        return valid

    def image_features(self, cancelled: CancelFn | None = None) -> ImageFeatures:
        """The grid windows over the planned extent as ``ImageFeatures`` of its output image, for mask
        pooling (instance mode): the windows' box on the working grid, and where the image lies in it."""
        plan = self._require_plan()
        boxes = plan.windows()
        feats = self.features(boxes, cancelled)
        y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        y1, x1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        top = (plan.out.row0 - plan.grid.row0) * plan.grid.sy - y0  # the image's edges, in working pixels
        left = (plan.out.col0 - plan.grid.col0) * plan.grid.sx - x0
        box = (
            top,
            left,
            top + plan.out.height * plan.out.step_y * plan.grid.sy,
            left + plan.out.width * plan.out.step_x * plan.grid.sx,
        )
        return ImageFeatures(
            input_size=(plan.out.height, plan.out.width),
            working_size=(y1 - y0, x1 - x0),
            windows=[(b[0] - y0, b[1] - x0, b[2] - y0, b[3] - x0) for b in boxes],
            patches=[f.patches for f in feats],
            cls=torch.stack([f.cls for f in feats]),
            patch_size=self.predictor.encoder.patch_size,
            options=self._options,
            input_box=box,
        )


def rasterize_area(shapes: tuple[dict, ...], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels of a grid (``transform``, ``shape``) inside the area polygons."""
    return rasterio.features.rasterize(
        [(g, 1) for g in shapes], out_shape=shape, transform=transform, dtype="uint8"
    ).astype(bool)


def estimate(plan: Plan, cached: int, windows_per_s: float) -> dict:
    """What a planned job will cost: the JSON of ``POST /v1/estimate`` and the CLI's check."""
    windows = len(plan.windows())
    return {
        "resolution_m": plan.grid.resolution_m,
        "rule": plan.grid.rule,
        "working_size": [plan.grid.height, plan.grid.width]
        if plan.grid.rule == "long_side"
        else [math.ceil(plan.extent.height * plan.grid.sy), math.ceil(plan.extent.width * plan.grid.sx)],
        "output_size": [plan.out.height, plan.out.width],
        "windows": windows,
        "windows_cached": min(cached, windows),
        "blocks": len(plan.out.blocks),
        "estimated_s": round((windows - min(cached, windows)) / windows_per_s, 1),
    }
