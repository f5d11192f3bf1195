"""A job queue with one worker, so two clients never run the models (and fill the GPU) at once.

Jobs move queued -> running -> done | failed | cancelled. Results are written to
disk (atomically) before a job is marked done, kept for ``ttl_s`` seconds, then
deleted with the job. Each job's record lives beside its results (``job.json``, written
atomically at every change of state), so a restarted backend still serves finished
results and reports interrupted jobs as failed; folders without a record are leftovers
of a crash and are removed at start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..engine import EngineSlot, SegmentRequest
from ..errors import CancelledError, InputError, RsovError
from ..geo.vectorize import features_to_geojson, read_vector, write_vector
from ..instance.types import InstanceSummary
from ..progress import ProgressClock
from ..streaming import Outputs, in_process, segment_streamed
from ..tiled import WindowStats

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
RECORD = "job.json"
RESTARTED = "The backend restarted while this job was queued or running; submit it again."
FINAL = (DONE, FAILED, CANCELLED)
# Larger results are served as GeoPackage only: a GeoJSON of millions of polygons helps no client.
GEOJSON_MAX_FEATURES = 100_000


class QueueFullError(RsovError):
    """Too many jobs are waiting."""


@dataclass
class Job:
    """One segmentation job and what a client may see of it."""

    id: str
    request: SegmentRequest | None  # None for jobs restored from their record (never run again)
    folder: Path  # results (and an uploaded chip) live here
    state: str = QUEUED
    progress: float = 0.0
    stage: str = "queued"
    message: str = ""
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    features: int = 0  # polygons in the result, once done
    eta_s: float | None = None  # seconds left, while running and known
    summary: dict | None = None  # instance mode, once done: where every proposal went (InstanceSummary.to_json)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def geojson_path(self) -> Path:
        return self.folder / "result.geojson"

    @property
    def gpkg_path(self) -> Path:
        return self.folder / "result.gpkg"

    def status(self) -> dict:
        eta = round(self.eta_s, 1) if self.eta_s is not None and self.state == RUNNING else None
        return {
            "job_id": self.id,
            "state": self.state,
            "progress": round(self.progress, 4),
            "stage": self.stage,
            "message": self.message,
            "error": self.error,
            "eta_s": eta,
            "summary": self.summary,
        }

    def save(self) -> None:
        """Write the job's record beside its results (atomically)."""
        record = {**self.status(), "created": self.created, "finished": self.finished, "features": self.features}
        with atomic_output(self.folder / RECORD) as tmp:
            tmp.write_text(json.dumps(record), encoding="utf-8")

    @classmethod
    def restore(cls, folder: Path) -> Job | None:
        """The job recorded in ``folder``; a job that was queued or running is now failed. None: no record."""
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            job = cls(
                record["job_id"],
                None,
                folder,
                record["state"],
                record["progress"],
                record["stage"],
                record["message"],
                record["error"],
                record["created"],
                record["finished"],
                features=record["features"],
                summary=record.get("summary"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if job.state not in FINAL:
            job.state, job.stage, job.error, job.finished = FAILED, "failed", RESTARTED, time.time()
            job.save()
        return job


class JobManager:
    """Owns the jobs, the queue and the single worker thread."""

    def __init__(
        self,
        engines: EngineSlot,
        results_dir: Path,
        max_queued: int = 8,
        ttl_s: float = 3600.0,
        max_geojson_features: int = GEOJSON_MAX_FEATURES,
        check_path: Callable[[str], str] = lambda path: path,
    ) -> None:
        self.engines = engines  # loaded by the time a job is accepted
        self.check_path = check_path  # the path policy, applied again to the file a job opens
        self.max_geojson_features = max_geojson_features
        self.results_dir = results_dir
        self.max_queued = max_queued
        self.ttl_s = ttl_s
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restore()
        self._worker = threading.Thread(target=self._work, name="rsov-worker", daemon=True)
        self._worker.start()

    def _restore(self) -> None:
        """Load the recorded jobs; remove what a crash left: folders without a record, temporary files."""
        for entry in self.results_dir.iterdir():
            job = Job.restore(entry) if entry.is_dir() and not entry.is_symlink() else None
            if job is None or (job.state == DONE and not job.gpkg_path.is_file()):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink(
                    missing_ok=True
                )
                continue
            for leftover in entry.glob(".*"):  # atomic_output's temporary folders
                shutil.rmtree(leftover, ignore_errors=True)
            self.jobs[job.id] = job
        self.cleanup()

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its private results folder."""
        job_id = uuid.uuid4().hex
        folder = self.results_dir / job_id
        folder.mkdir(parents=True, mode=0o700)
        return job_id, folder

    def submit(self, job_id: str, folder: Path, request: SegmentRequest) -> Job:
        self.cleanup()
        with self._lock:
            waiting = sum(1 for j in self.jobs.values() if j.state == QUEUED)
            if waiting >= self.max_queued:
                shutil.rmtree(folder, ignore_errors=True)
                raise QueueFullError(
                    f"{waiting} jobs are already waiting (the limit is {self.max_queued}); try again later."
                )
            job = Job(job_id, request, folder)
            job.save()
            self.jobs[job_id] = job
        self._queue.put(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancel.set()
        with self._lock:
            if job.state == QUEUED:
                self._finish(job, CANCELLED, "cancelled before it started")
            elif job.state == RUNNING:
                job.stage = "cancelling"  # the worker stops at its next window

    def cleanup(self) -> None:
        """Forget finished jobs older than the TTL and delete their files."""
        cutoff = time.time() - self.ttl_s
        with self._lock:
            old = [j for j in self.jobs.values() if j.finished is not None and j.finished < cutoff]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)  # type: ignore[arg-type]  # wakes the worker
        self._worker.join(timeout=10)

    # ---- worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=min(60.0, self.ttl_s))
            except queue.Empty:
                self.cleanup()  # expire old results even when no new job comes
                continue
            if job is None or job.state != QUEUED:
                continue
            with self._lock:
                job.state, job.stage = RUNNING, "starting"
                job.save()
            try:
                count, summary = self._run(job)
                if job.cancel.is_set():  # cancelled after the last window: honour it anyway
                    raise CancelledError("The job was cancelled.")
                with self._lock:
                    job.features = count
                    job.summary = summary.to_json() if summary is not None else None
                    job.message = summary.text if summary is not None else f"{count} polygons"
                    job.progress = 1.0
                    self._finish(job, DONE, "done")
            except CancelledError:
                with self._lock:
                    self._finish(job, CANCELLED, "cancelled")
            except RsovError as exc:
                with self._lock:
                    job.error = str(exc)
                    self._finish(job, FAILED, "failed")
            except Exception as exc:  # a bug or a crash in a model: report it, keep serving
                log.exception("job %s failed", job.id)
                with self._lock:
                    job.error = f"Internal error: {type(exc).__name__}: {exc}"
                    self._finish(job, FAILED, "failed")
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # a cancelled or failed job must not keep GPU memory

    def _run(self, job: Job) -> tuple[int, InstanceSummary | None]:
        """Run the job, writing its GeoPackage (and the GeoJSON of a small result); the polygon count and,
        in instance mode, the summary."""
        clock = ProgressClock()

        def stage(name: str, fraction: float) -> None:
            job.stage, job.progress = name, max(job.progress, min(fraction, 0.99))
            job.eta_s = clock.remaining(job.progress)

        with self._pinned(job) as request:
            return self._run_pinned(job, request, stage)

    @contextmanager
    def _pinned(self, job: Job):
        """The request reading one open file: opened once, its real path checked against the policy again
        (a folder swapped for a link since the job was accepted is caught), then read through its
        descriptor, so no later swap can redirect the job. An uploaded chip is the job's own file."""
        request = job.request
        if request is None:  # restored from its record: never run again
            raise RuntimeError(f"Job {job.id} was restored from its record: it has no request to run.")
        try:
            fd = os.open(request.raster, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise InputError(f"The raster {request.raster} cannot be opened any more ({exc.strerror}).") from None
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
            own = Path(opened).parent == job.folder.resolve()
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not (own or self.check_path(opened) == opened):
                raise InputError(f"The raster {request.raster} now leads to another file ({opened}): it is not read.")
            yield dataclasses.replace(request, raster=f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    def _run_pinned(self, job: Job, request: SegmentRequest, stage) -> tuple[int, InstanceSummary | None]:
        try:
            count, summary = self._segment(request, job, stage)
        except torch.cuda.OutOfMemoryError:
            # One retry, one window at a time, before giving up.
            torch.cuda.empty_cache()
            job.message = "GPU out of memory: retrying one window at a time"
            features = dataclasses.replace(request.features, batch_size=1)
            count, summary = self._segment(dataclasses.replace(request, features=features), job, stage)
        job.stage = "writing results"
        if count <= self.max_geojson_features:
            crs, vectors = read_vector(job.gpkg_path)
            with atomic_output(job.geojson_path) as tmp:
                tmp.write_text(json.dumps(features_to_geojson(vectors, crs)), encoding="utf-8")
        return count, summary

    def _segment(self, request: SegmentRequest, job: Job, stage) -> tuple[int, InstanceSummary | None]:
        engine = self.engines.get()
        if request.mode == "instance" or request.engine == "sam3":  # one extent in memory
            result = engine.segment(request, stage, job.cancel.is_set)
            write_vector(result.features, job.gpkg_path, result.crs, instances=request.mode == "instance")
            return len(result.features), result.summary if request.mode == "instance" else None
        # semantic jobs stream block by block: any raster size, progress per block
        streamed = segment_streamed(
            request,
            engine.plan(request),
            Outputs(vector=job.gpkg_path),
            in_process(engine, WindowStats(), stage),
            stage=stage,
            cancelled=job.cancel.is_set,
        )
        return streamed.polygons, None

    def _finish(self, job: Job, state: str, stage: str) -> None:
        if job.state in FINAL:
            return
        job.state, job.stage, job.finished = state, stage, time.time()
        try:
            job.save()
        except RsovError:  # the folder is gone or full: the state in memory still says what happened
            log.warning("cannot record job %s", job.id)
