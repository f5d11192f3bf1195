"""Models loaded once, and the whole job: raster extent + vocabulary -> polygons.

``load_engine`` builds the CLIP encoder, the upsampler and text embedders once;
``Engine.segment`` then runs one request (read the extent, encode it or reuse
its cached features, score the vocabulary, vectorize). The CLI and the HTTP
service both go through here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from torch import nn

from .errors import CancelledError, InputError, WeightsMissingError
from .fusion import fuse_with_stuff, paint_instances
from .geo.instance_io import build_example_bank, example_boxes, instance_features
from .geo.raster_io import RasterChip, bounded_gdal_cache, open_raster, read_chip, window_bounds
from .geo.vectorize import VectorFeature, polygonize
from .grid import BLOCK_SIDE, tile_slide
from .instance.classify import classify
from .instance.concepts import ConceptDetector, Sam3Detector, detect_concepts
from .instance.prompts import prompt_points, propose
from .instance.sam import SamProposer
from .instance.types import Example, Instance, InstanceOptions, InstanceSummary, Proposer
from .models import (
    DEFAULT_MODEL,
    DEFAULT_SAM,
    DEFAULT_SAM3,
    TINY_MODEL,
    cache_dir,
    load_model,
    load_sam,
    load_sam3,
    resolve_sam3_spec,
    resolve_sam_spec,
)
from .options import REFINE_MODES, by_stage
from .precision import resolve_precision
from .refine import SamRefiner
from .semantic.encoder import DenseEncoder, SegEarthCLIP
from .semantic.predictor import FeatureOptions, Prediction, Predictor, ScoreOptions, sliding_windows
from .semantic.text import ClipTextEmbedder, TextEmbedder, embed_in_steps, resolve_templates
from .semantic.upsample import build_upsampler
from .semantic.vocabulary import DEFAULT_BACKGROUND, DEFAULT_STUFF, Vocabulary, build_vocabulary
from .tiled import DEFAULT_WINDOWS_PER_S, BlockResult, GridPredictor, Plan, WindowStats, estimate, plan, rasterize_area

log = logging.getLogger(__name__)
StageFn = Callable[[str, float], None]  # (stage name, fraction of the whole job done)
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class SegmentRequest:
    """One segmentation job (plain data: the CLI and the HTTP API both build it)."""

    raster: str
    classes: tuple[str, ...]  # class lines, synonyms comma-separated inside each
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    bands: tuple[int, ...] | None = None
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    templates: str = "openai"
    features: FeatureOptions = FeatureOptions()
    scoring: ScoreOptions = ScoreOptions()
    max_side: int | None = None  # explicit only: output pixels on the long side (coarser output)
    simplify_px: float = 1.0
    min_area_m2: float = 0.0
    mode: str = "semantic"  # or "instance"
    engine: str = "clip"  # or "sam3": SAM 3 text prompts find the objects (see ``_segment_concepts``)
    stuff: tuple[str, ...] = DEFAULT_STUFF  # sam3 semantic mode: classes with these words come from CLIP
    instance: InstanceOptions = InstanceOptions()
    examples: tuple[Example, ...] = ()  # instance mode: objects the analyst pointed at
    vectorize: bool = True  # False: class map / instances only (evaluation needs no polygons)
    area: dict | str | None = None  # processing area: GeoJSON polygons (dict or file); pixels outside get no class
    block_size: int = BLOCK_SIDE  # output pixels per block side (memory per block; the unit of resume and Dask)
    refine: str = "none"  # semantic mode: "sam" cleans the map with SAM's regions (see ``refine``)


@dataclass
class SegmentResult:
    vocabulary: Vocabulary
    prediction: Prediction
    features: list[VectorFeature]
    transform: Affine  # output pixel -> raster CRS
    crs: CRS | None
    bounds: tuple[float, float, float, float]
    plan: Plan | None = None  # semantic mode
    timings: dict[str, float] = field(default_factory=dict)
    windows_encoded: int = 0
    windows_cached: int = 0
    chip: RasterChip | None = None  # instance mode: the pixels SAM saw
    instances: list[Instance] = field(default_factory=list)  # instance mode
    summary: InstanceSummary | None = None  # instance mode: where every proposal went

    @property
    def features_cached(self) -> bool:
        """Every window's features came from the cache (nothing was encoded)."""
        return self.windows_encoded == 0 and self.windows_cached > 0


def request_from_options(values: Mapping[str, Any], **fields: Any) -> SegmentRequest:
    """A request from option values by name (rows of ``rsov.options``; those not given keep their
    defaults) and the job's own fields (raster, classes, bbox, mode, examples, area...)."""
    staged = by_stage(values)
    return SegmentRequest(
        **fields,
        **staged["request"],
        features=FeatureOptions(**staged["features"]),
        scoring=ScoreOptions(**staged["scoring"]),
        instance=InstanceOptions(**staged["instance"]),
    )


def plan_request(request: SegmentRequest) -> Plan:
    """The request's grids, blocks and area, from the raster header (no model needed)."""
    if request.refine not in REFINE_MODES:
        raise InputError(f"Unknown refinement '{request.refine}': use one of {', '.join(REFINE_MODES)}.")
    job_plan = plan(
        request.raster,
        request.bbox,
        request.bbox_crs,
        request.bands,
        request.features,
        request.max_side,
        request.area,
        request.block_size,
    )
    if request.refine == "sam" and request.mode == "semantic" and (job_plan.out.step_x, job_plan.out.step_y) != (1, 1):
        raise InputError(
            f"Refining with SAM works on the raster's own pixels, and this output is decimated to "
            f"{job_plan.out.width}x{job_plan.out.height} px by max_side: drop max_side, or do not refine."
        )
    return job_plan


def sam_tile_key(job_plan: Plan) -> str:
    """What names a raster's pixels as SAM sees them (with a tile's place, the key of its cached embedding):
    instance mode and the SAM refinement share the tiles of one raster."""
    return repr((job_plan.raster_id, job_plan.indexes, job_plan.area))


def chip_tiles(
    work: Plan, tiles: list[tuple[int, int, int, int]] | None
) -> tuple[tuple[int, int], list[tuple[int, int, int, int]] | None, str]:
    """The work chip's place on the raster, the raster's tiles in chip pixels (None: the output is decimated,
    tiles slide over the chip) and the cache key naming the chip's pixels."""
    origin = (work.out.row0, work.out.col0)
    if tiles is None:
        return origin, None, repr((sam_tile_key(work), work.out))
    local = [(y0 - origin[0], x0 - origin[1], y1 - origin[0], x1 - origin[1]) for y0, x0, y1, x1 in tiles]
    return origin, local, sam_tile_key(work)


# In-memory results (``Engine.segment``) hold whole maps; larger extents stream (see ``streaming``).
IN_MEMORY_MAX_PX = 64_000_000


INSTANCE_MAX_SIDE = 2048  # instance mode holds its chip in memory: longer extents are read decimated
# Seconds per SAM tile (encoder and decoding) before this engine has measured any: the share of an
# instance job's progress bar that proposals take, until measured.
DEFAULT_SAM_TILE_S = {"cpu": 60.0, "cuda": 1.5}


class FeatureCache:
    """Features of grid windows (anything with ``nbytes``), least recently used dropped first,
    bounded in bytes."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` (anything with ``nbytes``)."""
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._bytes -= self._items.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes


class Engine:
    """A dense encoder, an optional upsampler and text embedders, loaded once and reused."""

    def __init__(
        self,
        encoder: DenseEncoder,
        text_factory: Callable[[tuple[str, ...]], TextEmbedder],
        upsampler: nn.Module | None = None,
        device: str | torch.device = "cpu",
        name: str = "custom",
        cache: FeatureCache | None = None,
        proposer_factory: Callable[[], Proposer] | None = None,
        detector_factory: Callable[[], ConceptDetector] | None = None,
    ) -> None:
        self.encoder = encoder
        self.upsampler = upsampler
        self.device = torch.device(device)
        self.name = name
        self.cache = cache if cache is not None else FeatureCache()
        self._text_factory = text_factory
        self._predictors: dict[tuple[str, ...], Predictor] = {}
        self._proposer_factory = proposer_factory
        self._detector_factory = detector_factory
        self.windows_per_s = DEFAULT_WINDOWS_PER_S.get(self.device.type, 4.0)  # updated as windows are encoded
        self.sam_tile_s = DEFAULT_SAM_TILE_S.get(self.device.type, 60.0)  # updated after each instance job

    @cached_property
    def proposer(self) -> Proposer:
        """The instance-mode mask proposer (SAM), built on first use."""
        return _build(self._proposer_factory, "Instance mode needs a Segment Anything model")

    @cached_property
    def detector(self) -> ConceptDetector:
        """The SAM 3 concept detector (``engine`` sam3), built on first use."""
        return _build(self._detector_factory, "The sam3 engine needs a SAM 3 model")

    def predictor(self, templates: str = "openai") -> Predictor:
        """The predictor for a template set name or file, kept with its text cache and cast models.

        One job at a time per engine: a predictor holds the features of its last image.
        """
        key = resolve_templates(templates)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self.encoder, self._text_factory(key), self.upsampler, self.device)
        return self._predictors[key]

    def text_embedder(self, templates: str) -> TextEmbedder:
        return self.predictor(templates).text

    def plan(self, request: SegmentRequest) -> Plan:
        return plan_request(request)

    def estimate(self, request: SegmentRequest) -> dict:
        """What the request would cost (windows, blocks, seconds), before any pixel is read."""
        job_plan = self.plan(request)
        return estimate(job_plan, self._cached_windows(request, job_plan), self.windows_per_s)

    def _cached_windows(self, request: SegmentRequest, job_plan: Plan) -> int:
        """How many of the plan's windows have their features in the cache already."""
        grid = self.grid_predictor(request.templates)
        grid.set_raster(None, job_plan, request.features)
        return sum(1 for box in job_plan.windows() if self.cache.get(grid.key(box)) is not None)

    def grid_predictor(self, templates: str = "openai") -> GridPredictor:
        return GridPredictor(self.predictor(templates), self.cache, self.name)

    def blocks(
        self,
        request: SegmentRequest,
        job_plan: Plan,
        blocks: list[tuple[int, int, int, int]] | None = None,
        stage: StageFn | None = None,
        cancelled: CancelFn | None = None,
        stats: WindowStats | None = None,
    ) -> Iterator[BlockResult]:
        """Segment the plan's blocks (default: all) one at a time, in order."""
        vocabulary = build_vocabulary(list(request.classes), request.background)
        blocks = job_plan.out.blocks if blocks is None else blocks
        grid = self.grid_predictor(request.templates)
        if stats is not None:
            grid.stats = stats
        # each block's share of the bar: encoding windows, then scoring, then (with a refinement) SAM's tiles
        encoding, scoring = (0.4, 0.5) if request.refine == "sam" else (0.8, 1.0)
        if stage is not None:  # a cold vocabulary of hundreds of classes takes seconds: say so
            embed_in_steps(
                grid.predictor.text,
                vocabulary.queries()[0],
                lambda n, total: stage(f"embedding the vocabulary: {n}/{total} queries", 0.0),
            )
        with bounded_gdal_cache(), open_raster(request.raster) as ds:
            grid.set_raster(ds, job_plan, request.features)
            refiner = (
                SamRefiner(
                    self.proposer,
                    grid,
                    ds,
                    job_plan,
                    vocabulary,
                    request.scoring,
                    request.instance,
                    request.features.precision,
                    sam_tile_key(job_plan),
                )
                if request.refine == "sam"
                else None
            )
            for done, block in enumerate(blocks):
                if cancelled is not None and cancelled():
                    raise CancelledError("The job was cancelled.")
                name = f"segmenting block {done + 1}/{len(blocks)}"

                def report(text: str, part: float, name=name, done=done) -> None:
                    if stage is not None:
                        stage(f"{name}: {text}" if text else name, (done + part) / len(blocks))

                report("", 0.0)
                t, encoded = time.perf_counter(), grid.stats.encoded
                result = grid.predict_block(
                    vocabulary,
                    request.scoring,
                    block,
                    cancelled,
                    lambda n, total: report(f"encoding windows {n}/{total}", encoding * n / total),
                    lambda n, total: report(
                        f"scoring {len(vocabulary.classes)} classes: rows {n}/{total}",
                        encoding + (scoring - encoding) * n / total,
                    ),
                )
                if grid.stats.encoded > encoded:  # keep the measured speed for estimates
                    self.windows_per_s = (grid.stats.encoded - encoded) / max(time.perf_counter() - t, 1e-6)
                if refiner is not None:
                    result = refiner.refine(
                        result,
                        cancelled,
                        lambda n, total: report(
                            f"refining with SAM, tile {n}/{total}", scoring + (1 - scoring) * n / total
                        ),
                    )
                yield result

    def segment(
        self, request: SegmentRequest, stage: StageFn | None = None, cancelled: CancelFn | None = None
    ) -> SegmentResult:
        """Run one request end to end, in memory; vocabulary errors surface before any pixel is read."""
        if request.engine == "sam3":
            return self._segment_concepts(request, stage, cancelled)
        if request.engine != "clip":
            raise InputError(f"Unknown engine '{request.engine}': use clip or sam3.")
        if request.mode == "instance":
            return self._segment_instances(request, stage, cancelled)
        report = stage or (lambda name, fraction: None)
        vocabulary = build_vocabulary(list(request.classes), request.background)
        self.text_embedder(request.templates)
        job_plan = self.plan(request)
        height, width = job_plan.out.height, job_plan.out.width
        if height * width > IN_MEMORY_MAX_PX:
            raise InputError(
                f"The extent is {width}x{height} px, too large to hold in memory: "
                "segment it with `rsov segment` or `rsov batch`, which stream it block by block."
            )
        t = time.perf_counter()
        stats = WindowStats()
        class_map, score_map, valid = self._in_memory(
            request, job_plan, lambda name, f: report(name, 0.9 * f), cancelled, stats
        )
        if not valid.any():
            raise InputError("The requested extent contains only nodata pixels.")
        timings = {"segment_s": time.perf_counter() - t}
        prediction = Prediction(class_map, score_map, vocabulary.names)
        return self._semantic_result(
            request, vocabulary, prediction, valid, job_plan.transform, job_plan, timings, stats, report
        )

    def _semantic_result(
        self,
        request: SegmentRequest,
        vocabulary: Vocabulary,
        prediction: Prediction,
        valid: np.ndarray,
        transform: Affine,
        job_plan: Plan,
        timings: dict,
        stats: WindowStats,
        report: StageFn,
    ) -> SegmentResult:
        """A class map's result: its polygons per class (``transform``: its pixel -> the raster's CRS)."""
        t = time.perf_counter()
        report("vectorizing", 0.95)
        features = (
            polygonize(
                prediction.class_map,
                prediction.score_map,
                valid,
                transform,
                job_plan.crs,
                vocabulary.names,
                request.simplify_px,
                request.min_area_m2,
            )
            if request.vectorize
            else []
        )
        timings["vectorize_s"] = time.perf_counter() - t
        report("done", 1.0)
        return SegmentResult(
            vocabulary,
            prediction,
            features,
            transform,
            job_plan.crs,
            job_plan.bounds,
            job_plan,
            timings,
            stats.encoded,
            stats.cached,
        )

    def _in_memory(
        self,
        request: SegmentRequest,
        job_plan: Plan,
        stage: StageFn | None,
        cancelled: CancelFn | None,
        stats: WindowStats,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every block of the plan into whole (H, W) class, score and validity maps."""
        shape = (job_plan.out.height, job_plan.out.width)
        class_map, score_map = np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.float32)
        valid = np.zeros(shape, dtype=bool)
        for block in self.blocks(request, job_plan, stage=stage, cancelled=cancelled, stats=stats):
            r0, c0, r1, c1 = block.block
            class_map[r0:r1, c0:c1], score_map[r0:r1, c0:c1], valid[r0:r1, c0:c1] = (
                block.class_map,
                block.score_map,
                block.valid,
            )
        return class_map, score_map, valid

    def _segment_instances(
        self, request: SegmentRequest, stage: StageFn | None = None, cancelled: CancelFn | None = None
    ) -> SegmentResult:
        """Instance mode on the raster's grids: SAM tiles on one tile grid per raster, CLIP features
        and the semantic pass (prompts) on its window grid, so an object's answer does not depend on
        the extent. The chip in memory covers the whole tiles that touch the extent; objects that
        touch the extent are kept whole."""
        report = stage or (lambda name, fraction: None)
        timings: dict[str, float] = {}
        vocabulary = build_vocabulary(list(request.classes), request.background)
        self.text_embedder(request.templates)
        asked = self.plan(replace(request, max_side=request.max_side or INSTANCE_MAX_SIDE))
        tiles, work = self._sam_tiles(request, asked)

        chip = self._read_chip(request, asked, work, tiles, timings, report)

        t = time.perf_counter()
        stats = WindowStats()
        semantic = self._semantic_share(request, work, len(tiles) if tiles is not None else 1)
        class_map, score_map, _ = self._in_memory(
            request, work, lambda name, f: report(name, semantic * f), cancelled, stats
        )
        class_map[~chip.valid], score_map[~chip.valid] = 0, 0.0
        prediction = Prediction(class_map, score_map, vocabulary.names)
        predictor = self.predictor(request.templates)
        grid = self.grid_predictor(request.templates)
        grid.stats = stats
        with bounded_gdal_cache(), open_raster(request.raster) as ds:
            grid.set_raster(ds, work, request.features)
            predictor.set_features(grid.image_features(cancelled))  # from the cache: nothing is encoded again
        timings["semantic_s"] = time.perf_counter() - t
        instances, summary = self._instances(
            request,
            chip,
            predictor,
            prediction,
            vocabulary,
            work,
            tiles,
            timings,
            lambda name, f: report(name, semantic + (0.93 - semantic) * f),
            cancelled,
        )
        return self._instance_result(
            request, vocabulary, asked, work, chip, prediction, instances, summary, timings, stats, report
        )

    def _read_chip(
        self, request: SegmentRequest, asked: Plan, work: Plan, tiles: list | None, timings: dict, report: StageFn
    ) -> RasterChip:
        """The pixels of the work area (native, or decimated when there are no tiles), cut to the processing area."""
        t = time.perf_counter()
        report("reading raster", 0.0)
        decimate = None if tiles is not None else request.max_side or INSTANCE_MAX_SIDE
        chip = read_chip(request.raster, work.bounds, None, request.bands, decimate)
        if asked.area is not None:
            chip.valid &= rasterize_area(asked.area, chip.transform, chip.valid.shape)
            chip.image[~chip.valid] = 0
        timings["read_s"] = time.perf_counter() - t
        return chip

    def _instance_result(
        self,
        request: SegmentRequest,
        vocabulary: Vocabulary,
        asked: Plan,
        work: Plan,
        chip: RasterChip,
        prediction: Prediction,
        instances: list[Instance],
        summary: InstanceSummary,
        timings: dict,
        stats: WindowStats,
        report: StageFn,
    ) -> SegmentResult:
        """Back from the work area to the extent asked for (its pixels, and the objects that touch it),
        then the objects' polygons."""
        oy, ox = asked.out.row0 - work.out.row0, asked.out.col0 - work.out.col0
        h, w = asked.out.height, asked.out.width
        if (oy, ox, h, w) != (0, 0, *prediction.class_map.shape):
            chip = RasterChip(
                chip.image[oy : oy + h, ox : ox + w],
                chip.valid[oy : oy + h, ox : ox + w],
                chip.transform @ Affine.translation(ox, oy),
                chip.crs,
                asked.bounds,
                chip.pixel_size_m,
                chip.source,
            )
            prediction = Prediction(
                prediction.class_map[oy : oy + h, ox : ox + w],
                prediction.score_map[oy : oy + h, ox : ox + w],
                vocabulary.names,
            )
            instances = [
                replace(i, mask=replace(i.mask, y0=i.mask.y0 - oy, x0=i.mask.x0 - ox), shape=(h, w)) for i in instances
            ]
            inside = [i for i in instances if i.full_mask.any()]
            summary = replace(summary, outside_extent=len(instances) - len(inside))
            instances = inside
        t = time.perf_counter()
        report("vectorizing", 0.95)
        features = (
            instance_features(instances, chip, request.simplify_px, request.instance, request.min_area_m2)
            if request.vectorize
            else []
        )
        timings["vectorize_s"] = time.perf_counter() - t
        if request.vectorize:
            summary = replace(summary, kept=len(features), too_small=summary.too_small + len(instances) - len(features))
        report(f"done: {summary.text}", 1.0)
        return SegmentResult(
            vocabulary,
            prediction,
            features,
            chip.transform,
            chip.crs,
            chip.bounds,
            asked,
            timings,
            stats.encoded,
            stats.cached,
            chip=chip,
            instances=instances,
            summary=summary,
        )

    def _segment_concepts(
        self, request: SegmentRequest, stage: StageFn | None = None, cancelled: CancelFn | None = None
    ) -> SegmentResult:
        """The sam3 engine: every class line's synonyms are SAM 3 text prompts on the raster's tile grid.

        Instance mode returns SAM 3's objects. Semantic mode paints the objects of the thing classes and
        takes stuff classes (``request.stuff``) from CLIP's dense map over the same area; each pixel takes
        the more confident of the two (``fusion.fuse_with_stuff``), then polygons per class.
        """
        report = stage or (lambda name, fraction: None)
        timings: dict[str, float] = {}
        vocabulary = build_vocabulary(list(request.classes), request.background)
        semantic = request.mode == "semantic"
        stuff = vocabulary.stuff_ids(request.stuff) if semantic else []
        things = [k for k in range(1, len(vocabulary.classes) + 1) if k not in stuff]
        asked = self.plan(replace(request, max_side=request.max_side or INSTANCE_MAX_SIDE))
        tiles, work = self._sam_tiles(request, asked)
        chip = self._read_chip(request, asked, work, tiles, timings, report)
        shape = height, width = chip.valid.shape
        origin, local, key = chip_tiles(work, tiles)
        if local is None:
            local = sliding_windows(
                height, width, request.instance.tile, request.instance.tile - request.instance.tile_overlap
            )
        t = time.perf_counter()
        stats = WindowStats()
        share = 0.0
        clip_classes, clip_scores = np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.float32)
        if stuff:  # CLIP over the same pixels, knowing only the stuff classes (and the background words)
            share = self._semantic_share(request, work, len(local))
            lines = [",".join(vocabulary.classes[k - 1].synonyms) for k in stuff]
            stuff_map, clip_scores, _ = self._in_memory(
                replace(request, classes=tuple(lines)), work, lambda n, f: report(n, share * f), cancelled, stats
            )
            clip_classes = np.array([0, *stuff], dtype=np.int16)[stuff_map]
        timings["semantic_s"] = time.perf_counter() - t
        t = time.perf_counter()
        instances, summary = detect_concepts(
            self.detector,
            chip.image,
            chip.valid,
            key,
            local,
            origin,
            vocabulary,
            request.instance,
            things,
            example_boxes(request.examples, vocabulary, chip) if request.examples else None,
            request.features.precision,
            cancelled,
            lambda f, text: report(f"finding objects with SAM 3: {text}", share + (0.93 - share) * f),
        )
        timings["concepts_s"] = time.perf_counter() - t
        self.sam_tile_s = timings["concepts_s"] / max(len(local), 1)
        class_map, score_map = paint_instances(instances, shape)
        if semantic:
            class_map, score_map = fuse_with_stuff(class_map, score_map, clip_classes, clip_scores)
        class_map[~chip.valid], score_map[~chip.valid] = 0, 0.0
        prediction = Prediction(class_map, score_map, vocabulary.names)
        if not semantic:
            return self._instance_result(
                request, vocabulary, asked, work, chip, prediction, instances, summary, timings, stats, report
            )
        return self._fused_result(request, vocabulary, asked, work, chip, prediction, timings, stats, report)

    def _fused_result(
        self,
        request: SegmentRequest,
        vocabulary: Vocabulary,
        asked: Plan,
        work: Plan,
        chip: RasterChip,
        prediction: Prediction,
        timings: dict,
        stats: WindowStats,
        report: StageFn,
    ) -> SegmentResult:
        """A fused class map cut to the extent asked for, and its polygons per class."""
        oy, ox = asked.out.row0 - work.out.row0, asked.out.col0 - work.out.col0
        rows, cols = slice(oy, oy + asked.out.height), slice(ox, ox + asked.out.width)
        valid = chip.valid[rows, cols]
        if not valid.any():
            raise InputError("The requested extent contains only nodata pixels.")
        cut = Prediction(prediction.class_map[rows, cols], prediction.score_map[rows, cols], prediction.class_names)
        transform = chip.transform @ Affine.translation(ox, oy)
        return self._semantic_result(request, vocabulary, cut, valid, transform, asked, timings, stats, report)

    def _semantic_share(self, request: SegmentRequest, work: Plan, tiles: int) -> float:
        """The fraction of an instance job's time the semantic pass is expected to take (windows to encode
        at the measured rate, against SAM tiles at theirs), so its progress bar moves with time."""
        to_encode = len(work.windows()) - self._cached_windows(request, work)
        semantic_s = to_encode / self.windows_per_s
        return 0.9 * semantic_s / (semantic_s + tiles * self.sam_tile_s)

    def _sam_tiles(self, request: SegmentRequest, asked: Plan) -> tuple[list[tuple[int, int, int, int]] | None, Plan]:
        """SAM's tiles (native raster pixels) that touch the extent, on one slide over the whole raster,
        and the plan of the area they cover; (None, ``asked``) when the output is decimated (tiles
        then slide over the chip)."""
        if asked.out.step_x != 1.0 or asked.out.step_y != 1.0:
            return None, asked
        options = request.instance
        slide = tile_slide(asked.raster_size, options.tile, options.tile_overlap, asked.pixel_size_m)
        e = asked.extent
        tiles = slide.windows_touching(
            (int(e.row_off), int(e.row_off + e.height)), (int(e.col_off), int(e.col_off + e.width))
        )
        y0, x0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
        y1, x1 = max(t[2] for t in tiles), max(t[3] for t in tiles)
        bounds = window_bounds(Window(x0, y0, x1 - x0, y1 - y0), asked.raster_transform)
        work = plan(request.raster, bounds, None, request.bands, request.features, None, None, request.block_size)
        return tiles, work

    def _instances(
        self,
        request: SegmentRequest,
        chip: RasterChip,
        predictor: Predictor,
        prediction: Prediction,
        vocabulary: Vocabulary,
        work: Plan,
        tiles: list | None,
        timings: dict,
        report: StageFn,
        cancelled: CancelFn | None,
    ) -> tuple[list[Instance], InstanceSummary]:
        """Instance mode after the semantic pass: proposals, examples, classification; ``report`` from 0 to 1."""
        options = request.instance
        report("proposing objects", 0.0)
        t = time.perf_counter()
        points = (
            prompt_points(prediction.class_map, prediction.score_map, options)
            if options.class_prompts
            else np.zeros((0, 3))
        )
        origin, local, key = chip_tiles(work, tiles)
        proposals = propose(
            self.proposer,
            chip.image,
            key,
            points,
            options,
            cancelled,
            local,
            origin,
            request.features.precision,
            lambda f, text: report(f"proposing objects: {text}", 0.95 * f),
        )
        masks = []
        for mask in proposals:
            y0, x0, y1, x1 = mask.box
            mask.crop = mask.crop & chip.valid[y0:y1, x0:x1]  # nodata is never an object
            if mask.area >= options.min_area_px:
                masks.append(mask)
        timings["proposals_s"] = time.perf_counter() - t
        self.sam_tile_s = timings["proposals_s"] / max(len(local or ()), 1)
        report(f"classifying {len(masks)} objects", 0.95)
        t = time.perf_counter()
        bank = None
        if request.examples:
            helper = Predictor(self.encoder, predictor.text, self.upsampler, self.device)  # keeps ours intact
            bank = build_example_bank(
                helper,
                request.raster,
                request.examples,
                vocabulary,
                request.bands,
                request.features,
                work.grid.resolution_m,
            )
        instances, summary = classify(predictor, chip.image, masks, vocabulary, request.scoring, options, bank)
        timings["classify_s"] = time.perf_counter() - t
        return instances, replace(summary, proposals=len(proposals), too_small=len(proposals) - len(masks))


def _build(factory: Callable[[], Any] | None, needs: str) -> Any:
    if factory is None:
        raise InputError(f"{needs}, and this engine has none.")
    return factory()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the GPU when torch sees one; asking for cuda without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for, but torch sees no CUDA GPU (is a CUDA build of torch installed?)."
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"Unknown device '{device}': use auto, cpu or cuda.")
    return torch.device(device)


class EngineSlot:
    """The server's engine, or why it is not loaded: a backend whose weights are missing still
    starts (so that its weights can be downloaded or imported through it), and loads the engine
    once they are there. Loading never downloads: only an explicit download does."""

    def __init__(self, load: Callable[[], Engine], device: torch.device, error: str | None = None) -> None:
        self._load = load
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.device = device
        self.fast = resolve_precision("fast", device, cache_dir())  # what --precision fast means here
        self.error = error  # why the engine is not loaded

    @classmethod
    def loaded(cls, engine: Engine) -> EngineSlot:
        slot = cls(lambda: engine, engine.device)
        slot._engine = engine
        return slot

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def get(self) -> Engine:
        """The engine, loaded now if its weights have arrived; WeightsMissingError while they have not."""
        with self._lock:
            if self._engine is None:
                try:
                    self._engine = self._load()
                except WeightsMissingError as exc:
                    self.error = str(exc)
                    raise
                self.error = None
            return self._engine


def load_engine(
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    upsampler: str = "bilinear",
    upsampler_checkpoint: str | None = None,
    cache: FeatureCache | None = None,
    sam: str | None = None,
    download: bool = True,
    sam3_model: str | None = None,
) -> Engine:
    """Build the real engine: CLIP by name (see ``models``), SegEarth-OV encoder, upsampler, text embedders.

    ``sam`` names the Segment Anything model for instance mode (loaded on first use; default: the tiny
    one with the tiny CLIP, else ``sam-vit-b``), ``sam3_model`` the SAM 3 model of the sam3 engine (the same way:
    ``sam3``). ``download=False``: missing CLIP weights raise WeightsMissingError instead of being downloaded.
    """
    dev = resolve_device(device)
    loaded = load_model(model, dev, download)
    encoder = SegEarthCLIP(loaded.model, loaded.mean, loaded.std).to(dev)
    up = build_upsampler(upsampler, upsampler_checkpoint)
    up = up.to(dev) if up is not None else None
    name = f"{loaded.weights_id}|{upsampler}|{upsampler_checkpoint}"
    sam = sam or (TINY_MODEL if model == TINY_MODEL else DEFAULT_SAM)
    sam3_model = sam3_model or (TINY_MODEL if model == TINY_MODEL else DEFAULT_SAM3)
    resolve_sam_spec(sam)  # a wrong name fails now, not at the first instance job
    resolve_sam3_spec(sam3_model)
    return Engine(
        encoder,
        lambda templates: ClipTextEmbedder(loaded, templates),
        up,
        dev,
        name,
        cache,
        proposer_factory=lambda: SamProposer(*load_sam(sam, dev), calibration_dir=cache_dir()),
        detector_factory=lambda: Sam3Detector(*load_sam3(sam3_model, dev), dev),
    )
