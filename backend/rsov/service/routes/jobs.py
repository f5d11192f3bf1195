"""Jobs: create (a JSON body naming a raster, or a multipart upload of a chip), estimate, status,
result (GeoJSON or GeoPackage) and cancel."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ...errors import InputError
from .. import submission
from ..deps import ServiceDep
from ..errors import ApiError, documented
from ..jobs import DONE, FINAL
from ..schemas import Estimate, JobCreated, JobStatus
from ..security import require_token

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])

JOB_BODY = {"$ref": "#/components/schemas/JobRequest"}
# The job body is parsed by hand (JSON or multipart, each capped while it is read), so it is declared here.
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JOB_BODY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request", "chip"],
                    "properties": {
                        "request": {"type": "string", "description": "JobRequest as JSON, without raster"},
                        "chip": {"type": "string", "format": "binary", "description": "a GeoTIFF"},
                    },
                }
            },
        },
    }
}
ESTIMATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": JOB_BODY}}}}
RESULT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result: GeoJSON (the default) or, with ?format=gpkg, the GeoPackage (layer rsov).",
        "content": {
            "application/geo+json": {"schema": {"$ref": "#/components/schemas/FeatureCollection"}},
            "application/geopackage+sqlite3": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
CHECKS = (
    "bad_path",
    "bad_request",
    "unknown_model",
    "unauthorized",
    "forbidden_path",
    "too_large",
    "invalid_request",
    "weights_missing",
)  # what reading and checking a job body can answer


@router.post(
    "/v1/jobs",
    status_code=202,
    openapi_extra=CREATE_BODY,
    responses=documented(*CHECKS, "bad_multipart", "unsupported_media_type", "queue_full", "insufficient_storage"),
)
async def create_job(request: Request, service: ServiceDep) -> JobCreated:
    """Queue a job on a raster the backend reads by path (JSON), or on an uploaded chip (multipart)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        body, chip = await submission.upload_job(service, request)
        job_id, folder = submission.new_folder(service)
        raster = str(await submission.store_chip(chip, folder))
    elif content_type.startswith("application/json"):
        body, path = await submission.path_job(service, request, "give a raster path, or upload a chip")
        raster = service.policy.check(path)
        job_id, folder = submission.new_folder(service)
    else:
        raise ApiError(415, "unsupported_media_type", "Send the job as application/json or multipart/form-data.")
    job = await submission.enqueue(service, body, raster, job_id, folder)
    return JobCreated(job_id=job.id)


@router.post("/v1/estimate", openapi_extra=ESTIMATE_BODY, responses=documented(*CHECKS))
async def estimate(request: Request, service: ServiceDep) -> Estimate:
    """What a job would cost (the body of a path job): resolution, windows, blocks, seconds."""
    body, path = await submission.path_job(service, request, "an estimate needs a raster path")
    segment_request = await submission.validated(service, body, service.policy.check(path))
    try:
        return Estimate.model_validate(await run_in_threadpool(service.engine().estimate, segment_request))
    except InputError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


@router.get("/v1/jobs/{job_id}", responses=documented("unauthorized", "no_such_job"))
def job_status(job_id: str, service: ServiceDep) -> JobStatus:
    """The job's state, progress, stage, time left and, once finished, its message, error or summary."""
    return JobStatus.model_validate(service.job(job_id).status())


@router.get(
    "/v1/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={**RESULT, **documented("unauthorized", "no_such_job", "not_done", "too_large", "invalid_request")},
)
def job_result(job_id: str, service: ServiceDep, format: Literal["geojson", "gpkg"] = "geojson") -> Response:
    """A done job's polygons in the raster's CRS; over the GeoJSON limit, as GeoPackage only."""
    job = service.job(job_id)
    if job.state != DONE:
        raise ApiError(409, "not_done", f"Job {job_id} is {job.state}, not done; poll GET /v1/jobs/{job_id}.")
    if format == "gpkg":
        return FileResponse(job.gpkg_path, media_type="application/geopackage+sqlite3", filename=f"rsov_{job_id}.gpkg")
    limit = service.config.max_geojson_features
    if job.features > limit or not job.geojson_path.is_file():
        raise ApiError(
            413,
            "too_large",
            f"The result has {job.features} polygons, over the GeoJSON limit of "
            f"{limit}: fetch it as a GeoPackage with ?format=gpkg.",
        )
    return JSONResponse(json.loads(job.geojson_path.read_text(encoding="utf-8")), media_type="application/geo+json")


@router.delete("/v1/jobs/{job_id}", responses=documented("unauthorized", "no_such_job"))
def cancel_job(job_id: str, service: ServiceDep) -> JobStatus:
    """Cancel: a queued job at once, a running one at its next window (until then: running, cancelling)."""
    job = service.job(job_id)
    if job.state not in FINAL:
        service.jobs.cancel(job)
    return JobStatus.model_validate(job.status())
