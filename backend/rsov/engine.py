"""Models loaded once, and the whole job: raster extent + vocabulary -> polygons.

``load_engine`` builds the CLIP encoder, the upsampler and text embedders once;
``Engine.segment`` then runs one request (read the extent, encode it or reuse
its cached features, score the vocabulary, vectorize). The CLI and the HTTP
service both go through here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .dense_clip import DenseEncoder, SegEarthCLIP
from .errors import InputError
from .instances import (Example, Instance, InstanceOptions, Proposer, SamProposer, build_example_bank, classify,
                        instance_features, prompt_points, propose)
from .models import DEFAULT_MODEL, DEFAULT_SAM, TINY_MODEL, load_model, load_sam, resolve_sam_spec
from .predictor import FeatureOptions, ImageFeatures, Prediction, Predictor, ScoreOptions
from .raster_io import RasterChip, read_chip
from .text import ClipTextEmbedder, TextEmbedder, resolve_templates
from .upsample import build_upsampler
from .vectorize import VectorFeature, polygonize
from .vocabulary import DEFAULT_BACKGROUND, Vocabulary, build_vocabulary

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
    max_side: int = 2048  # output pixels on the long side; larger extents are read decimated
    simplify_px: float = 1.0
    min_area_m2: float = 0.0
    mode: str = "semantic"  # or "instance"
    instance: InstanceOptions = InstanceOptions()
    examples: tuple[Example, ...] = ()  # instance mode: objects the analyst pointed at
    vectorize: bool = True  # False: class map / instances only (evaluation needs no polygons)


@dataclass
class SegmentResult:
    chip: RasterChip
    vocabulary: Vocabulary
    prediction: Prediction
    features: list[VectorFeature]
    image_features: ImageFeatures
    timings: dict[str, float] = field(default_factory=dict)
    features_cached: bool = False
    instances: list[Instance] = field(default_factory=list)  # instance mode
    proposals: int = 0  # instance mode: masks that were classified


class FeatureCache:
    """Image features of recent extents, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> ImageFeatures | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: str, value: ImageFeatures) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while sum(v.nbytes for v in self._items.values()) > self.max_bytes and len(self._items) > 1:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Engine:
    """A dense encoder, an optional upsampler and text embedders, loaded once and reused."""

    def __init__(self, encoder: DenseEncoder, text_factory: Callable[[tuple[str, ...]], TextEmbedder],
                 upsampler: nn.Module | None = None, device: str | torch.device = "cpu", name: str = "custom",
                 cache: FeatureCache | None = None, proposer_factory: Callable[[], Proposer] | None = None) -> None:
        self.encoder = encoder
        self.upsampler = upsampler
        self.device = torch.device(device)
        self.name = name
        self.cache = cache if cache is not None else FeatureCache()
        self._text_factory = text_factory
        self._predictors: dict[tuple[str, ...], Predictor] = {}
        self._proposer_factory = proposer_factory
        self._proposer: Proposer | None = None

    @property
    def proposer(self) -> Proposer:
        """The instance-mode mask proposer (SAM), built on first use."""
        if self._proposer is None:
            if self._proposer_factory is None:
                raise InputError("Instance mode needs a Segment Anything model, and this engine has none.")
            self._proposer = self._proposer_factory()
        return self._proposer

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

    def segment(self, request: SegmentRequest, stage: StageFn | None = None, cancelled: CancelFn | None = None) -> SegmentResult:
        """Run one request end to end; vocabulary errors surface before any pixel is read."""
        report = stage or (lambda name, fraction: None)
        timings: dict[str, float] = {}
        vocabulary = build_vocabulary(list(request.classes), request.background)
        predictor = self.predictor(request.templates)

        t = time.perf_counter()
        report("reading raster", 0.0)
        chip = read_chip(request.raster, request.bbox, request.bbox_crs, request.bands, request.max_side)
        timings["read_s"] = time.perf_counter() - t

        t = time.perf_counter()
        key = self._cache_key(request, chip)
        cached = self.cache.get(key)
        if cached is not None:
            predictor.set_features(cached)
        else:
            predictor.set_image(
                chip.image, request.features, chip.pixel_size_m,
                progress=lambda done, total: report("encoding image", 0.05 + 0.85 * done / total),
                cancelled=cancelled,
            )
            self.cache.put(key, predictor.features)
        timings["encode_s"] = time.perf_counter() - t

        t = time.perf_counter()
        report("scoring vocabulary", 0.9)
        prediction = predictor.predict(vocabulary, request.scoring, valid=chip.valid)
        timings["score_s"] = time.perf_counter() - t

        instances: list[Instance] = []
        proposals = 0
        if request.mode == "instance":
            instances, proposals = self._instances(request, chip, predictor, prediction, vocabulary, timings, report,
                                                   cancelled)

        t = time.perf_counter()
        report("vectorizing", 0.95)
        if not request.vectorize:
            features = []
        elif request.mode == "instance":
            features = instance_features(instances, chip, request.simplify_px, request.instance, request.min_area_m2)
        else:
            features = polygonize(prediction.class_map, prediction.score_map, chip.valid, chip.transform, chip.crs,
                                  vocabulary.names, request.simplify_px, request.min_area_m2)
        timings["vectorize_s"] = time.perf_counter() - t
        report("done", 1.0)
        return SegmentResult(chip, vocabulary, prediction, features, predictor.features, timings,
                             features_cached=cached is not None, instances=instances, proposals=proposals)

    def _instances(self, request: SegmentRequest, chip: RasterChip, predictor: Predictor, prediction: Prediction,
                   vocabulary: Vocabulary, timings: dict, report: StageFn,
                   cancelled: CancelFn | None) -> tuple[list[Instance], int]:
        """Instance mode after the semantic pass: proposals, examples, classification (and the mask count)."""
        options = request.instance
        report("proposing objects", 0.9)
        t = time.perf_counter()
        points = prompt_points(prediction.class_map, prediction.score_map, options) if options.class_prompts \
            else np.zeros((0, 3))
        key = self._cache_key(request, chip, image_only=True)
        masks = []
        for mask in propose(self.proposer, chip.image, key, points, options, cancelled):
            y0, x0, y1, x1 = mask.box
            mask.crop = mask.crop & chip.valid[y0:y1, x0:x1]  # nodata is never an object
            if mask.area >= options.min_area_px:
                masks.append(mask)
        timings["proposals_s"] = time.perf_counter() - t
        report("classifying objects", 0.93)
        t = time.perf_counter()
        bank = None
        if request.examples:
            scale = chip.image.shape[0] / predictor.features.working_size[0]
            helper = Predictor(self.encoder, predictor.text, self.upsampler, self.device)  # keeps ours intact
            bank = build_example_bank(helper, request.raster, request.examples, vocabulary, request.bands,
                                      request.features, chip.pixel_size_m * scale)
        instances = classify(predictor, chip.image, masks, vocabulary, request.scoring, options, bank)
        timings["classify_s"] = time.perf_counter() - t
        return instances, len(masks)

    def _cache_key(self, request: SegmentRequest, chip: RasterChip, image_only: bool = False) -> str:
        """Identifies the chip's pixels (and, unless ``image_only``, the options that shape its features)."""
        stat = os.stat(request.raster)
        parts = (os.path.abspath(request.raster), stat.st_size, stat.st_mtime_ns, chip.bounds, chip.image.shape,
                 request.bands)
        if not image_only:
            parts += (self.name, request.features, id(self.upsampler))
        return hashlib.sha256(repr(parts).encode()).hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the GPU when torch sees one; asking for cuda without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA GPU (is a CUDA build of torch installed?).")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"Unknown device '{device}': use auto, cpu or cuda.")
    return torch.device(device)


def load_engine(model: str = DEFAULT_MODEL, device: str = "auto", upsampler: str = "bilinear",
                upsampler_checkpoint: str | None = None, cache: FeatureCache | None = None,
                sam: str | None = None) -> Engine:
    """Build the real engine: CLIP by name (see ``models``), SegEarth-OV encoder, upsampler, text embedders.

    ``sam`` names the Segment Anything model for instance mode (loaded on first use; default: the tiny
    one with the tiny CLIP, else ``sam-vit-b``).
    """
    dev = resolve_device(device)
    loaded = load_model(model, dev)
    encoder = SegEarthCLIP(loaded.model, loaded.mean, loaded.std).to(dev)
    up = build_upsampler(upsampler, upsampler_checkpoint)
    up = up.to(dev) if up is not None else None
    name = f"{loaded.weights_id}|{upsampler}|{upsampler_checkpoint}"
    sam = sam or (TINY_MODEL if model == TINY_MODEL else DEFAULT_SAM)
    resolve_sam_spec(sam)  # a wrong name fails now, not at the first instance job
    return Engine(encoder, lambda templates: ClipTextEmbedder(loaded, templates), up, dev, name, cache,
                  proposer_factory=lambda: SamProposer(*load_sam(sam, dev)))
