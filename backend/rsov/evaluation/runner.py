"""The evaluation loop: every image through every variant, scored, with per-image results on disk.

The engine is called in one place, ``EngineSegmenter`` (tests swap in anything with the same two
methods). Images are the outer loop and variants the inner one, so the engine's feature cache
serves every variant that changes only scoring options (threshold, cls_lambda, dec, ...): one
encoding per image. Each (image, variant) result is cached under the output folder, keyed by the
image and label files and every option, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_output
from ..engine import Engine, SegmentResult, load_engine
from ..errors import InputError
from ..geo.raster_io import describe_raster
from .datasets import CocoDataset, LabelSpec, read_label
from .metrics import MAX_DETECTIONS, InstanceScores, SemanticScores, confusion_matrix, instance_scores, semantic_scores
from .options import EngineSpec, Variant

CACHE_VERSION = 1


@dataclass
class InstancePrediction:
    """One predicted object."""

    mask: np.ndarray  # (H, W) bool at the image's resolution
    class_index: int  # 0-based index into the classes file
    score: float


class Segmenter(Protocol):
    """What the runner needs from a model: a class map, or instances, for one image."""

    def semantic(self, variant: Variant, image: Path) -> np.ndarray:
        """(H, W) class map of the whole image: 0 = none of the classes, k = k-th class."""

    def instances(self, variant: Variant, image: Path) -> list[InstancePrediction]:
        """Objects found in the whole image."""


class EngineSegmenter:
    """The real engine: one loaded engine per EngineSpec, one request per image at full resolution."""

    def __init__(self, device: str = "auto", load: Callable[[EngineSpec], Engine] | None = None) -> None:
        self._load = load or (
            lambda spec: load_engine(
                spec.model, device, spec.upsampler, spec.upsampler_checkpoint, sam=spec.sam, sam3_model=spec.sam3_model
            )
        )
        self._engines: dict[EngineSpec, Engine] = {}

    def _segment(self, variant: Variant, image: Path, mode: str) -> SegmentResult:
        if variant.engine not in self._engines:
            self._engines[variant.engine] = self._load(variant.engine)
        info = describe_raster(image)
        # max_side = the image's own long side: predictions come at the labels' resolution, never decimated
        request = replace(
            variant.request, raster=str(image), max_side=max(info.width, info.height), mode=mode, vectorize=False
        )
        return self._engines[variant.engine].segment(request)

    def semantic(self, variant: Variant, image: Path) -> np.ndarray:
        return self._segment(variant, image, "semantic").prediction.class_map

    def instances(self, variant: Variant, image: Path) -> list[InstancePrediction]:
        result = self._segment(variant, image, "instance")
        # the engine's Instance keeps its mask as a box crop; full_mask pastes it into the (H, W) chip
        return [InstancePrediction(i.full_mask, i.class_id - 1, float(i.score)) for i in result.instances]


class ResultCache:
    """Per-image results as small JSON files under ``folder`` (None: no cache)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = 0

    @staticmethod
    def key(task: str, variant: Variant, files: Sequence[Path], dataset: str) -> str:
        """Identifies a result: the files (path, size, modification time), every option and the label spec."""
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        text = json.dumps([CACHE_VERSION, task, variant.fingerprint(), stats, dataset])
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        if self.folder is None:  # load and save return before asking a folder-less cache
            raise ValueError("a ResultCache without a folder has no files")
        return self.folder / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict | None:
        if self.folder is None or not self._path(key).is_file():
            return None
        try:
            payload = json.loads(self._path(key).read_text(encoding="utf-8"))
        except ValueError:  # writes are atomic, so only a hand-edited file gets here: recompute it
            return None
        self.hits += 1
        return payload

    def save(self, key: str, payload: dict) -> None:
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(payload), encoding="utf-8")


def _progress(total: int, show: bool) -> tqdm:
    """A bar on stderr counting (image, variant) results."""
    return tqdm(total=total, disable=not show, file=sys.stderr, unit="img", desc="evaluating", dynamic_ncols=True)


@dataclass
class SemanticRun:
    variant: Variant
    confusion: np.ndarray  # (K, K + 1) summed over images; last column = no class
    scores: SemanticScores
    per_image: list[tuple[str, float | None, float | None]]  # (image, mIoU, pixel accuracy) of each image


def evaluate_semantic(
    pairs: Sequence[tuple[Path, Path]],
    labels: LabelSpec,
    variants: Sequence[Variant],
    segmenter: Segmenter,
    cache: ResultCache,
    unseen: Sequence[int] = (),
    show_progress: bool = True,
) -> list[SemanticRun]:
    """Confusion matrices of every variant over ``pairs`` of (image, label) files."""
    n = len(labels.class_names)
    totals = [np.zeros((n, n + 1), dtype=np.int64) for _ in variants]
    per_image: list[list[tuple[str, float | None, float | None]]] = [[] for _ in variants]
    with _progress(len(pairs) * len(variants), show_progress) as bar:
        for image, label_path in pairs:
            label = None  # read only when some variant is not cached
            for i, variant in enumerate(variants):
                key = cache.key("semantic", variant, (image, label_path), repr(labels))
                payload = cache.load(key)
                if payload is None:
                    if label is None:
                        label = labels.label_indexes(read_label(label_path), str(label_path))
                    class_map = segmenter.semantic(variant, image)
                    if class_map.shape != label.shape:
                        raise InputError(
                            f"Image {image} is {class_map.shape[1]}x{class_map.shape[0]} px but its label "
                            f"{label_path} is {label.shape[1]}x{label.shape[0]} px."
                        )
                    matrix = confusion_matrix(label, labels.prediction_indexes(class_map), n)
                    payload = {"confusion": matrix.tolist()}
                    cache.save(key, payload)
                matrix = np.asarray(payload["confusion"], dtype=np.int64)
                totals[i] += matrix
                own = semantic_scores(matrix)
                per_image[i].append((image.name, own.miou, own.pixel_accuracy))
                bar.update()
    return [
        SemanticRun(v, t, semantic_scores(t, unseen), p) for v, t, p in zip(variants, totals, per_image, strict=True)
    ]


@dataclass
class InstanceRun:
    variant: Variant
    scores: InstanceScores
    per_image: list[tuple[str, int]]  # (image, detections kept)


def _encode(prediction: InstancePrediction) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(prediction.mask.astype(np.uint8)))
    return {
        "class_index": prediction.class_index,
        "score": prediction.score,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


def evaluate_instances(
    dataset: CocoDataset,
    n_classes: int,
    variants: Sequence[Variant],
    segmenter: Segmenter,
    cache: ResultCache,
    unseen: Sequence[int] = (),
    show_progress: bool = True,
) -> list[InstanceRun]:
    """Mask AP and recall of every variant over the dataset's images found on disk."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in dataset.ground_truth["images"]}
    detections: list[list[dict]] = [[] for _ in variants]
    per_image: list[list[tuple[str, int]]] = [[] for _ in variants]
    with _progress(len(dataset.images) * len(variants), show_progress) as bar:
        for image_id, image in dataset.images:
            for i, variant in enumerate(variants):
                key = cache.key("instance", variant, (image,), repr((n_classes, sizes[image_id])))
                payload = cache.load(key)
                if payload is None:
                    found = segmenter.instances(variant, image)
                    wrong = [p.mask.shape for p in found if p.mask.shape != sizes[image_id]]
                    if wrong:
                        raise InputError(
                            f"Image {image} gives {wrong[0][1]}x{wrong[0][0]} px masks but its annotations "
                            f"say {sizes[image_id][1]}x{sizes[image_id][0]} px."
                        )
                    # Recall@100 and AP count the 100 best objects of an image, whatever their classes
                    best = sorted(found, key=lambda p: -p.score)[:MAX_DETECTIONS]
                    payload = {"instances": [_encode(p) for p in best]}
                    cache.save(key, payload)
                detections[i] += [
                    {
                        "image_id": image_id,
                        "category_id": d["class_index"] + 1,
                        "score": d["score"],
                        "segmentation": d["segmentation"],
                    }
                    for d in payload["instances"]
                ]
                per_image[i].append((image.name, len(payload["instances"])))
                bar.update()
    image_ids = [image_id for image_id, _ in dataset.images]
    return [
        InstanceRun(v, instance_scores(dataset.ground_truth, d, image_ids, n_classes, unseen), p)
        for v, d, p in zip(variants, detections, per_image, strict=True)
    ]


def output_folder(path: Path) -> Path:
    """Create the output folder (and its cache) or say why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the output folder {path}: {error.strerror}.") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"The output folder {path} is not writable.")
    return path
