"""Blocks on Dask: a LocalCluster on this machine, or an existing cluster by its scheduler address.

Each worker loads the models once (a WorkerPlugin) and keeps its own window-feature cache; blocks
are the tasks. Results come back as they finish and are written by the caller (``streaming``),
so the output equals the single-process one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from distributed import WorkerPlugin

from .engine import CancelFn, Engine, SegmentRequest
from .errors import CancelledError, InputError
from .streaming import BlockRunner
from .tiled import BlockResult, Plan

PLUGIN_NAME = "rsov-engine"


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build the same engine as the client (see ``engine.load_engine``)."""

    model: str
    device: str = "auto"
    upsampler: str = "bilinear"
    upsampler_checkpoint: str | None = None
    cache_mb: int = 256
    sam: str | None = None  # Segment Anything, for --refine sam (None: load_engine's default)
    sam3_model: str | None = None  # SAM 3 (None: load_engine's default; streamed blocks use CLIP only)


class EnginePlugin(WorkerPlugin):
    """Loads the engine once per worker."""

    name = PLUGIN_NAME

    def __init__(self, spec: EngineSpec, threads: int | None) -> None:
        self.spec = spec
        self.threads = threads
        self.engine: Engine | None = None

    def setup(self, worker) -> None:
        import torch

        from .engine import FeatureCache, load_engine

        if self.threads:
            torch.set_num_threads(self.threads)  # workers on one machine share its cores
        s = self.spec
        self.engine = load_engine(
            s.model,
            s.device,
            s.upsampler,
            s.upsampler_checkpoint,
            cache=FeatureCache(s.cache_mb << 20),
            sam=s.sam,
            sam3_model=s.sam3_model,
        )

    def teardown(self, worker) -> None:
        self.engine = None


def _segment_block(request: SegmentRequest, job_plan: Plan, block: tuple[int, int, int, int]) -> BlockResult:
    """A Dask task: one block on this worker's engine."""
    from distributed import get_worker

    engine = cast(EnginePlugin, get_worker().plugins[PLUGIN_NAME]).engine
    if engine is None:
        raise RuntimeError("The rsov engine plugin is not set up on this worker.")
    return next(engine.blocks(request, job_plan, [block]))


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, timeout_s: float = 5.0):
    """A Dask client on a new LocalCluster of ``workers`` processes, or on the cluster at ``scheduler``."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines would bury the progress bar
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise InputError(
                f"The Dask scheduler at {scheduler} does not answer ({type(exc).__name__}): "
                "check the address (tcp://HOST:8786) and that the scheduler is running."
            ) from None
        with client:
            yield client
        return
    if not workers or workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def dask_runner(client, spec: EngineSpec, threads: int | None = None) -> BlockRunner:
    """Blocks as Dask tasks on ``client``'s workers, each worker loading ``spec`` once with ``threads``
    torch threads (None: torch's default, for workers on other machines)."""
    from distributed import as_completed

    try:
        client.register_plugin(EnginePlugin(spec, threads), name=PLUGIN_NAME)
    except Exception as exc:  # a worker that cannot load the model says why
        raise InputError(f"The Dask workers could not load the model {spec.model}: {exc}") from None

    def run(request: SegmentRequest, job_plan: Plan, blocks: list, cancelled: CancelFn | None) -> Iterator[BlockResult]:
        futures = [client.submit(_segment_block, request, job_plan, block, pure=False) for block in blocks]
        try:
            for future in as_completed(futures):
                if cancelled is not None and cancelled():
                    raise CancelledError("The job was cancelled.")
                yield future.result()
        finally:
            client.cancel(futures)

    return run
