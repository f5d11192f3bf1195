"""``rsov serve``: the local HTTP service the QGIS plugin talks to.

Models load once and stay warm; jobs run one at a time (see ``jobs``). Every
endpoint but ``GET /v1/health`` needs ``Authorization: Bearer <token>``, the
token living in a user-only file; requests whose Host header is not a trusted
name are refused (DNS-rebinding defence). The API contract is documented in the
README and served as OpenAPI at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from . import API_VERSION, __version__
from .engine import EngineSlot, SegmentRequest
from .errors import InputError, WeightsMissingError
from .grid import BLOCK_SIDE
from .instances import InstanceOptions, read_examples
from .jobs import DONE, FINAL, GEOJSON_MAX_FEATURES, JobManager, QueueFullError
from .downloads import Transfers
from .models import ModelSpec, list_models, resolve_any
from .predictor import FeatureOptions, ScoreOptions
from .raster_io import check_header, open_raster
from .text import TEMPLATE_SETS
from .tiled import plan
from .vocabulary import DEFAULT_BACKGROUND, MAX_CLASSES, build_vocabulary

log = logging.getLogger(__name__)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class JobOptions(BaseModel):
    """Method options of a job; every one optional, unknown ones refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    threshold: float = Field(0.3, ge=0, le=1)
    resolution: float | None = Field(None, gt=0, description="working ground resolution, metres per pixel "
                                                             "(default: the raster's own x 1024/448)")
    long_side: int | None = Field(None, ge=16, le=4096, description="the paper's per-extent rule instead: "
                                                                    "resize the extent to this long side")
    bands: list[int] | None = Field(None, min_length=1, max_length=3)
    templates: str = Field("openai", description="a template set name (openai, remote-sensing, plain)")
    background: list[str] | None = Field(None, max_length=64)
    simplify: float = Field(1.0, ge=0, le=100)
    min_area: float = Field(0.0, ge=0)
    rotations: list[int] = Field([0], min_length=1, max_length=4)
    cls_lambda: float = Field(0.3, ge=0, le=2)
    dec_keep: float | None = Field(None, gt=0, le=1)
    precision: Literal["fp32", "fast", "bf16", "fp16", "int8"] = Field(
        "fp32", description="fp32 reproduces the paper; fast is what is fast on this backend's hardware (see health)")
    max_side: int | None = Field(None, ge=16, description="explicitly coarser output: long side in pixels")
    block_size: int = Field(BLOCK_SIDE, ge=64, le=8192, description="output pixels per block side")
    refine: Literal["none", "sam"] = Field("none", description="semantic mode: sam averages the class probabilities "
                                                               "inside each of SAM's automatic regions")
    # instance mode
    points_per_side: int = Field(16, ge=0, le=64)
    points_per_batch: int = Field(64, ge=1, le=1024, description="point prompts per batch (bounds memory)")
    pred_iou: float = Field(0.8, ge=-1, le=1)
    stability: float = Field(0.9, ge=-1, le=1)
    class_prompts: bool = True
    tile: int = Field(1024, ge=64, le=4096)
    tile_overlap: int = Field(128, ge=0, le=2047)
    nms_iou: float = Field(0.5, ge=0, le=1)
    object_threshold: float = Field(0.3, ge=0, le=1)
    context_weight: float = Field(0.0, ge=0, le=1)
    context_dilation: int = Field(4, ge=0, le=10)
    crop_weight: float = Field(0.0, ge=0, le=1)
    exemplar_alpha: float = Field(0.5, ge=0, le=10)
    fill_holes: bool = False


class ImportRequest(BaseModel):
    """A weights file on the backend's machine to verify and copy into its cache."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., max_length=4096, description="absolute path of the file, under the allowed folders")


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs`` (for an upload, the ``request`` part, without ``raster``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    raster: str | None = Field(None, description="absolute path of a raster the server can read")
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    classes: list[str] = Field(..., max_length=MAX_CLASSES)
    mode: Literal["semantic", "instance"] = "semantic"
    examples: dict | None = Field(None, description="instance mode: GeoJSON FeatureCollection of example polygons "
                                                     "with a 'class' property")
    mask: dict | None = Field(None, description="processing area: GeoJSON FeatureCollection of polygons (CRS in its "
                                                "'crs' member); pixels outside get no class")
    model: str | None = Field(None, description="must be the loaded model when given")
    options: JobOptions = Field(default_factory=JobOptions)


@dataclass
class ServerConfig:
    token: str
    token_file: Path
    results_dir: Path
    allowed_dirs: tuple[Path, ...] = ()  # empty: any file the user can read (but never the token file)
    allowed_hosts: frozenset[str] = LOCAL_HOSTS
    max_upload_bytes: int = 512 << 20
    max_queued: int = 8
    results_ttl_s: float = 3600.0
    model_name: str = "custom"
    max_geojson_features: int = GEOJSON_MAX_FEATURES  # larger results: GeoPackage only
    max_json_bytes: int = 16 << 20  # a job body (with its mask and examples)
    max_pixels: int = 10_000_000_000  # per raster, checked from its header
    max_bands: int = 64
    validation_timeout_s: float = 10.0


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _describe_validation(exc: ValidationError | RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"Invalid request: {where}: {first.get('msg', 'invalid value')}."


def create_app(engines: EngineSlot, config: ServerConfig) -> FastAPI:
    """The FastAPI application around one engine (loaded when its weights are there) and one job manager."""
    jobs = JobManager(engines, config.results_dir, config.max_queued, config.results_ttl_s, config.max_geojson_features,
                      check_path=lambda path: policy(path))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        jobs.stop()

    # No /docs or /redoc; the schema is served below, behind the token like everything but health.
    app = FastAPI(title="rsov backend", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Open-vocabulary segmentation of remote-sensing rasters (see the README for the contract).")
    app.state.jobs = jobs
    transfers = Transfers(on_done=lambda spec: load_if_ours(spec))
    private = {config.token_file.resolve()}

    @app.middleware("http")
    async def trusted_host_only(request: Request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in config.allowed_hosts:
            return _error(403, "untrusted_host", f"Host '{host}' is not allowed; talk to the backend as 127.0.0.1 or localhost.")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return _error(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception):
        log.exception("unhandled error")
        return _error(500, "internal_error", f"Internal error: {type(exc).__name__}.")

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.token.encode()):
            raise ApiError(401, "unauthorized", f"Missing or wrong token: send 'Authorization: Bearer <token>' "
                                                f"with the token from {config.token_file}.")

    def job_or_404(job_id: str):
        job = jobs.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "no_such_job", f"No job '{job_id}' (finished jobs are forgotten after "
                                               f"{config.results_ttl_s:.0f} s).")
        return job

    def check_path(raw: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise ApiError(400, "bad_path", "The raster path holds control characters (such as NUL): give a plain path.")
        if raw.startswith("/vsi") or not os.path.isabs(raw):
            raise ApiError(400, "bad_path", f"Raster path '{raw}' must be an absolute path to a local file.")
        path = Path(raw).resolve()
        if path in private or path == config.results_dir.resolve() or config.results_dir.resolve() in path.parents:
            raise ApiError(403, "forbidden_path", f"The backend does not read {raw}.")
        if config.allowed_dirs and not any(d == path or d in path.parents for d in config.allowed_dirs):
            allowed = ", ".join(str(d) for d in config.allowed_dirs)
            raise ApiError(403, "forbidden_path", f"{raw} is outside the directories this backend may read ({allowed}).")
        try:
            mode = path.stat().st_mode
        except OSError:
            raise ApiError(400, "bad_path", f"Raster file not found: {raw}.") from None
        if not stat.S_ISREG(mode):  # a FIFO or a device would block the reader
            raise ApiError(400, "bad_path", f"{raw} is not a regular file.")
        return str(path)

    def policy(path: str) -> str:
        """``check_path`` for the worker, whose errors are InputErrors."""
        try:
            return check_path(path)
        except ApiError as exc:
            raise InputError(exc.message) from None

    def engine_or_503():
        try:
            return engines.get()
        except WeightsMissingError as exc:
            raise ApiError(503, "weights_missing", str(exc)) from None

    def load_if_ours(spec: ModelSpec) -> None:
        """After a transfer of this backend's own model: load it now, so health turns ready."""
        if not engines.ready and spec == resolve_any(config.model_name):
            engines.get()

    def build_request(body: JobRequest, raster: str) -> SegmentRequest:
        engine = engine_or_503()
        if body.model is not None and body.model != config.model_name:
            raise ApiError(400, "unknown_model", f"Model '{body.model}' is not loaded; this backend runs '{config.model_name}'.")
        o = body.options
        if o.templates not in TEMPLATE_SETS:  # a file name would make the server read that file
            raise ApiError(400, "bad_request", f"Unknown template set '{o.templates}': use one of "
                                               f"{', '.join(TEMPLATE_SETS)} (template files are for the command line).")
        try:
            request = SegmentRequest(
                raster=raster, classes=tuple(body.classes), bbox=body.bbox, bbox_crs=body.bbox_crs,
                bands=tuple(o.bands) if o.bands else None,
                background=tuple(o.background) if o.background is not None else DEFAULT_BACKGROUND,
                templates=o.templates,
                features=FeatureOptions(long_side=o.long_side, resolution_m=o.resolution, rotations=tuple(o.rotations),
                                        precision=engines.fast.precision if o.precision == "fast" else o.precision),
                scoring=ScoreOptions(threshold=o.threshold, cls_lambda=o.cls_lambda, dec_keep=o.dec_keep),
                max_side=o.max_side, simplify_px=o.simplify, min_area_m2=o.min_area, mode=body.mode,
                block_size=o.block_size, refine=o.refine,
                instance=InstanceOptions(
                    points_per_side=o.points_per_side, points_per_batch=o.points_per_batch, pred_iou_thresh=o.pred_iou,
                    stability_thresh=o.stability,
                    class_prompts=o.class_prompts, tile=o.tile, tile_overlap=o.tile_overlap, nms_iou=o.nms_iou,
                    score_threshold=o.object_threshold, context_weight=o.context_weight,
                    context_dilation=o.context_dilation, crop_weight=o.crop_weight, exemplar_alpha=o.exemplar_alpha,
                    fill_holes=o.fill_holes,
                ),
                examples=read_examples(body.examples) if body.examples else (),
                area=body.mask,
            )
            vocabulary = build_vocabulary(list(request.classes), request.background)
            engine.text_embedder(request.templates)
            names = {n.lower() for n in vocabulary.names}
            for example in request.examples:
                if example.class_name.lower() not in names:
                    raise InputError(f"Example class '{example.class_name}' is not in the vocabulary "
                                     f"({', '.join(vocabulary.names)}).")
            with open_raster(raster) as ds:  # limits from the header, before any pixel is read
                check_header(ds, config.max_pixels, config.max_bands)
            for example in request.examples:  # says "does not overlap" for an example off the raster
                plan(raster, example.geometry.bounds, example.crs, request.bands, request.features, None)
            engine.plan(request)  # extent, area and resolution, from the header
        except InputError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        return request

    def new_folder() -> tuple[str, Path]:
        try:
            return jobs.new_folder()
        except OSError as exc:
            raise ApiError(507, "insufficient_storage", f"The backend cannot store a new job ({exc.strerror}).") from None

    def path_job(raw: bytes, without_raster: str) -> JobRequest:
        """A JSON job body naming a raster path (422 otherwise)."""
        try:
            body = JobRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", _describe_validation(exc)) from None
        if body.raster is None:
            raise ApiError(422, "invalid_request", f"Invalid request: raster: {without_raster}.")
        return body

    async def validated(body: JobRequest, raster: str) -> SegmentRequest:
        """``build_request`` in a worker thread, with a time limit: GDAL never blocks the event loop."""
        try:
            return await asyncio.wait_for(run_in_threadpool(build_request, body, raster), config.validation_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(400, "bad_request", f"Checking the raster took over {config.validation_timeout_s:g} s: "
                                               "is it on a slow or hung file system?") from None

    async def body_of(request: Request, cap: int, what: str):
        """The request body, chunk by chunk, refused (413) as soon as it passes ``cap`` bytes."""
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise ApiError(413, "too_large", f"The {what} is larger than the limit of {cap / 2**20:g} MiB.")
            yield chunk

    async def enqueue(body: JobRequest, raster: str, job_id: str, folder: Path) -> JSONResponse:
        try:
            job = jobs.submit(job_id, folder, await validated(body, raster))
        except QueueFullError as exc:
            raise ApiError(429, "queue_full", str(exc)) from None
        except ApiError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse({"job_id": job.id}, status_code=202)

    @app.get("/v1/health")
    def health() -> dict:
        device = engines.device
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        return {"status": "ok", "version": __version__, "api_version": API_VERSION, "model": config.model_name,
                "models": [config.model_name], "device": device.type, "gpu_name": gpu,
                "model_ready": engines.ready, "model_error": engines.error,
                "fast_precision": engines.fast.precision, "fast_precision_reason": engines.fast.reason}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> dict:
        rows = []
        for row in list_models():
            transfer = transfers.get(row["name"])
            rows.append(dict(row, loaded=row["kind"] == "clip" and row["name"] == config.model_name,
                             transfer=transfer.as_dict() if transfer else None))
        if not any(r["loaded"] for r in rows):
            rows.append({"name": config.model_name, "kind": "clip", "arch": "", "description": "loaded model",
                         "weights_present": True, "loaded": True, "path": None, "size_bytes": None, "sha256": None,
                         "downloadable": False, "transfer": None})
        return {"models": rows}

    def model_or_404(name: str) -> ModelSpec:
        try:
            spec = resolve_any(name)
        except InputError:
            spec = None
        if spec is None or spec.random or "@" in name:
            raise ApiError(404, "no_such_model", f"No model '{name}' with a weights file (see GET /v1/models).")
        return spec

    @app.post("/v1/models/{name}/download", status_code=202, dependencies=[Depends(authorised)])
    def download_model(name: str) -> dict:
        """Download a model's weights into the cache, verified; progress in GET /v1/models."""
        spec = model_or_404(name)
        return {"name": spec.name, "transfer": transfers.download(spec).as_dict()}

    @app.post("/v1/models/{name}/import", status_code=202, dependencies=[Depends(authorised)])
    def import_model(name: str, body: ImportRequest) -> dict:
        """Verify a weights file on this machine against the model's digest and copy it into the cache."""
        spec = model_or_404(name)
        return {"name": spec.name, "transfer": transfers.import_file(spec, check_path(body.path)).as_dict()}

    @app.post("/v1/jobs", status_code=202, dependencies=[Depends(authorised)],
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["request", "chip"], "properties": {
                      "request": {"type": "string", "description": "JobRequest as JSON, without raster"},
                      "chip": {"type": "string", "format": "binary", "description": "a GeoTIFF"}}}},
              }, "required": True}})
    async def create_job(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            return await _create_upload_job(request)
        if not content_type.startswith("application/json"):
            raise ApiError(415, "unsupported_media_type", "Send the job as application/json or multipart/form-data.")
        raw = b"".join([chunk async for chunk in body_of(request, config.max_json_bytes, "request body")])
        body = path_job(raw, "give a raster path, or upload a chip")
        raster = check_path(body.raster)
        job_id, folder = new_folder()
        return await enqueue(body, raster, job_id, folder)

    async def _create_upload_job(request: Request) -> JSONResponse:
        declared = int(request.headers.get("content-length") or 0)
        if declared > config.max_upload_bytes:
            raise ApiError(413, "too_large", f"The upload is larger than the limit of {config.max_upload_bytes >> 20} MiB.")
        # parsed from a capped stream: past the limit, reading stops and the spooled part is dropped
        parser = MultiPartParser(request.headers, body_of(request, config.max_upload_bytes, "upload"),
                                 max_part_size=config.max_upload_bytes)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, "bad_multipart", f"The multipart body cannot be read: {exc.message}.") from None
        chip, raw = form.get("chip"), form.get("request")
        if chip is None or isinstance(chip, str) or not isinstance(raw, str):
            raise ApiError(422, "invalid_request", "Invalid request: a multipart job needs a 'request' JSON part and a 'chip' file.")
        try:
            body = JobRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", _describe_validation(exc)) from None
        if body.raster is not None:
            raise ApiError(422, "invalid_request", "Invalid request: raster: leave it out when uploading a chip.")
        job_id, folder = new_folder()
        target = folder / "chip.tif"
        try:
            with open(target, "wb") as out:
                while block := await chip.read(1 << 20):
                    out.write(block)
        except OSError as exc:  # a full disk, typically: nothing is left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(507, "insufficient_storage", f"The backend cannot store the upload ({exc.strerror}).") from None
        return await enqueue(body, str(target), job_id, folder)

    @app.post("/v1/estimate", dependencies=[Depends(authorised)], openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}}, "required": True}})
    async def estimate(request: Request) -> dict:
        """What a job would cost (the body of a path job): resolution, windows, blocks, seconds."""
        raw = b"".join([chunk async for chunk in body_of(request, config.max_json_bytes, "request body")])
        body = path_job(raw, "an estimate needs a raster path")
        segment_request = await validated(body, check_path(body.raster))
        try:
            return await run_in_threadpool(engine_or_503().estimate, segment_request)
        except InputError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorised)])
    def job_status(job_id: str) -> dict:
        return job_or_404(job_id).status()

    @app.get("/v1/jobs/{job_id}/result", dependencies=[Depends(authorised)])
    def job_result(job_id: str, format: Literal["geojson", "gpkg"] = "geojson"):
        job = job_or_404(job_id)
        if job.state != DONE:
            raise ApiError(409, "not_done", f"Job {job_id} is {job.state}, not done; poll GET /v1/jobs/{job_id}.")
        if format == "gpkg":
            return FileResponse(job.gpkg_path, media_type="application/geopackage+sqlite3", filename=f"rsov_{job_id}.gpkg")
        if job.features > config.max_geojson_features or not job.geojson_path.is_file():
            raise ApiError(413, "too_large", f"The result has {job.features} polygons, over the GeoJSON limit of "
                                             f"{config.max_geojson_features}: fetch it as a GeoPackage with ?format=gpkg.")
        return JSONResponse(json.loads(job.geojson_path.read_text(encoding="utf-8")), media_type="application/geo+json")

    @app.delete("/v1/jobs/{job_id}", dependencies=[Depends(authorised)])
    def cancel_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job.state in FINAL:
            return job.status()
        jobs.cancel(job)  # a running job stops at its next window: until then it says "running", "cancelling"
        return job.status()

    @app.get("/openapi.json", dependencies=[Depends(authorised)], include_in_schema=False)
    def schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    def openapi() -> dict:
        # The job body is parsed by hand (JSON or multipart), so its schemas are registered here.
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            request_schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["JobRequest"] = request_schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def default_token_file() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return config_home / "rsov" / "token"


def load_or_create_token(path: Path) -> str:
    """Read the token file, or create it with a fresh random token, readable by this user only."""
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # never leave a readable token behind
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise InputError(f"The token file {path} holds no usable token (16+ characters); delete it to make a new one.")
        return token
    except OSError as exc:
        raise InputError(f"Cannot create the token file {path}: {exc.strerror}.") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def default_results_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"rsov-jobs-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
