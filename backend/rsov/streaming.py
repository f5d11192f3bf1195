"""A whole job streamed block by block: bounded memory at any raster size, outputs written atomically.

Blocks come from the engine in this process, from Dask workers (``batch``) or from a block store
left by an interrupted run, in any order; each is written into the tiled class GeoTIFF and fed to
the seam-aware polygonizer, then dropped. Outputs appear only when every block is done.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .engine import CancelFn, Engine, SegmentRequest, StageFn
from .errors import InputError
from .geo.raster_io import bounded_gdal_cache
from .geo.vectorize import ClassRasterWriter, SeamPolygonizer, VectorWriter
from .semantic.vocabulary import build_vocabulary
from .tiled import BlockResult, Plan, WindowStats

# (request, plan, blocks, cancelled) -> block results, in any order
BlockRunner = Callable[[SegmentRequest, Plan, list, CancelFn | None], Iterator[BlockResult]]


@dataclass
class Outputs:
    """Where a streamed job writes (each optional)."""

    vector: Path | None = None  # .gpkg or .geojson
    class_raster: Path | None = None  # .tif
    layer_per_class: bool = False


@dataclass
class StreamSummary:
    plan: Plan
    class_names: list[str]
    features: Counter = field(default_factory=Counter)  # class name -> polygons
    blocks: int = 0
    blocks_resumed: int = 0
    windows_encoded: int = 0
    windows_cached: int = 0
    seconds: float = 0.0

    @property
    def polygons(self) -> int:
        return sum(self.features.values())


class BlockStore:
    """Finished blocks of one job on disk (``.npz``, written atomically), so a rerun resumes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def for_job(root: Path, engine_name: str, request: SegmentRequest, job_plan: Plan) -> BlockStore:
        """The store of this exact job (raster version, options, model) under ``root``."""
        key = hashlib.sha256(
            repr(
                (
                    engine_name,
                    job_plan.raster_id,
                    request.classes,
                    request.background,
                    request.templates,
                    request.features,
                    request.scoring,
                    request.area,
                    job_plan.grid.key(),
                    job_plan.out,
                )
            ).encode()
        ).hexdigest()[:16]
        return BlockStore(root / f"{Path(request.raster).stem}-{key}")

    def _path(self, block: tuple[int, int, int, int]) -> Path:
        return self.folder / f"block_{block[0]}_{block[1]}.npz"

    def has(self, block: tuple[int, int, int, int]) -> bool:
        return self._path(block).is_file()

    def load(self, block: tuple[int, int, int, int]) -> BlockResult | None:
        try:
            with np.load(self._path(block)) as data:
                return BlockResult(block, data["class_map"], data["score_map"], data["valid"])
        except (OSError, ValueError, KeyError):
            return None

    def save(self, result: BlockResult) -> None:
        with atomic_output(self._path(result.block)) as partial:
            np.savez_compressed(partial, class_map=result.class_map, score_map=result.score_map, valid=result.valid)

    def remove(self) -> None:
        shutil.rmtree(self.folder)  # the blocks, and any private folder a killed save left behind


def in_process(engine: Engine, stats: WindowStats, stage: StageFn | None = None) -> BlockRunner:
    """Blocks computed by ``engine`` here, in order."""

    def run(request: SegmentRequest, job_plan: Plan, blocks: list, cancelled: CancelFn | None) -> Iterator[BlockResult]:
        return engine.blocks(request, job_plan, blocks, stage, cancelled, stats)

    return run


def segment_streamed(
    request: SegmentRequest,
    job_plan: Plan,
    outputs: Outputs,
    runner: BlockRunner,
    store: BlockStore | None = None,
    stage: StageFn | None = None,
    cancelled: CancelFn | None = None,
    stats: WindowStats | None = None,
) -> StreamSummary:
    """Segment every block of ``job_plan`` and write the outputs; nothing is written unless all succeed."""
    started = time.perf_counter()
    report = stage or (lambda name, fraction: None)
    vocabulary = build_vocabulary(list(request.classes), request.background)
    summary = StreamSummary(job_plan, vocabulary.names)
    blocks = job_plan.out.blocks
    stored = [b for b in blocks if store is not None and store.has(b)]
    summary.blocks, summary.blocks_resumed = len(blocks), len(stored)

    def results() -> Iterable[BlockResult]:
        done = set(stored)
        missing = [b for b in blocks if b not in done]
        for block in stored:  # one at a time: memory stays bounded when resuming too
            result = store.load(block) if store is not None else None  # stored is empty without a store
            if result is None:  # unreadable after all: compute it again
                missing.append(block)
            else:
                yield result
        for result in runner(request, job_plan, missing, cancelled):
            if store is not None:
                store.save(result)
            yield result

    size = (job_plan.out.height, job_plan.out.width)
    names = vocabulary.names
    with ExitStack() as stack:
        stack.enter_context(bounded_gdal_cache())
        raster = (
            stack.enter_context(ClassRasterWriter(outputs.class_raster, size, job_plan.transform, job_plan.crs, names))
            if outputs.class_raster
            else None
        )
        vector = None
        if outputs.vector:
            layers = names if outputs.layer_per_class and names else ["rsov"]
            vector = stack.enter_context(VectorWriter(outputs.vector, job_plan.crs, layers, class_names=names))
        polygons = SeamPolygonizer(
            job_plan.transform, job_plan.crs, names, size, request.simplify_px, request.min_area_m2
        )
        any_valid = False
        for done, result in enumerate(results(), start=1):
            any_valid |= bool(result.valid.any())
            if raster is not None:
                raster.write(result.block[0], result.block[1], result.class_map)
            if vector is not None:
                _add(
                    vector,
                    polygons.add(result.block, result.class_map, result.score_map, result.valid),
                    outputs.layer_per_class,
                    summary,
                )
            report(f"segmented block {done}/{len(blocks)}", done / len(blocks))
        if not any_valid:
            raise InputError("The requested extent contains only nodata pixels.")
        if vector is not None:
            report("vectorizing across block seams", 0.96)
            _add(vector, polygons.finish(), outputs.layer_per_class, summary)
        report("writing results", 0.99)
    report("done", 1.0)
    if stats is not None:
        summary.windows_encoded, summary.windows_cached = stats.encoded, stats.cached
    summary.seconds = time.perf_counter() - started
    return summary


def _add(writer: VectorWriter, features: list, per_class: bool, summary: StreamSummary) -> None:
    if per_class:
        for name in dict.fromkeys(f.class_name for f in features):
            writer.add([f for f in features if f.class_name == name], name)
    else:
        writer.add(features)
    summary.features.update(f.class_name for f in features)
