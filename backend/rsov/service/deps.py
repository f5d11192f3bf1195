"""The server's shared state (``Service``: config, engine, jobs, transfers, path policy), as the routes
reach it: ``app.state.service``, through the ``ServiceDep`` dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..engine import Engine, EngineSlot
from ..errors import InputError, WeightsMissingError
from ..models import ModelSpec, resolve_any
from .config import ServerConfig
from .downloads import Transfers
from .errors import ApiError
from .jobs import Job, JobManager
from .security import PathPolicy


class Service:
    """One backend: its engine (loaded once its weights are there), job manager, weights transfers and
    path policy; and the lookups whose failures are the contract's errors."""

    def __init__(self, engines: EngineSlot, config: ServerConfig) -> None:
        self.engines, self.config = engines, config
        self.policy = PathPolicy(config)
        self.jobs = JobManager(
            engines,
            config.results_dir,
            config.max_queued,
            config.results_ttl_s,
            config.max_geojson_features,
            check_path=self.policy.for_worker,
        )
        self.transfers = Transfers(on_done=self.load_if_ours)

    def engine(self) -> Engine:
        try:
            return self.engines.get()
        except WeightsMissingError as exc:
            raise ApiError(503, "weights_missing", str(exc)) from None

    def job(self, job_id: str) -> Job:
        job = self.jobs.jobs.get(job_id)
        if job is None:
            raise ApiError(
                404,
                "no_such_job",
                f"No job '{job_id}' (finished jobs are forgotten after {self.config.results_ttl_s:.0f} s).",
            )
        return job

    def model(self, name: str) -> ModelSpec:
        """A model with a weights file to download or import."""
        try:
            spec = resolve_any(name)
        except InputError:
            spec = None
        if spec is None or spec.random or "@" in name:
            raise ApiError(404, "no_such_model", f"No model '{name}' with a weights file (see GET /v1/models).")
        return spec

    def load_if_ours(self, spec: ModelSpec) -> None:
        """After a transfer of this backend's own model: load it now, so health turns ready."""
        if not self.engines.ready and spec == resolve_any(self.config.model_name):
            self.engines.get()


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
