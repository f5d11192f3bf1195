"""From an HTTP job body to a queued job: capped reading (JSON or a multipart upload), validation of
the body, and its mapping onto a checked ``SegmentRequest`` (off the event loop, with a time limit)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncGenerator
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..engine import SegmentRequest, request_from_options
from ..errors import InputError
from ..geo.instance_io import read_examples
from ..geo.raster_io import check_header, open_raster
from ..instance.concepts import check_prompt_lengths, concept_prompts
from ..instance.sam3_build import SAM3_FULL
from ..semantic.text import TEMPLATE_SETS
from ..semantic.vocabulary import build_vocabulary
from ..tiled import plan
from .deps import Service
from .errors import ApiError, describe_validation
from .jobs import Job, QueueFullError
from .schemas import JobRequest


async def capped(request: Request, cap: int, what: str) -> AsyncGenerator[bytes, None]:
    """The request body, chunk by chunk, refused (413) as soon as it passes ``cap`` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise ApiError(413, "too_large", f"The {what} is larger than the limit of {cap / 2**20:g} MiB.")
        yield chunk


async def path_job(service: Service, request: Request, without_raster: str) -> tuple[JobRequest, str]:
    """A JSON job body naming a raster path (422 otherwise), read up to the JSON cap, and that path."""
    raw = b"".join([chunk async for chunk in capped(request, service.config.max_json_bytes, "request body")])
    try:
        body = JobRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc)) from None
    if body.raster is None:
        raise ApiError(422, "invalid_request", f"Invalid request: raster: {without_raster}.")
    return body, body.raster


async def upload_job(service: Service, request: Request) -> tuple[JobRequest, UploadFile]:
    """A multipart job: its ``request`` part (without raster) and its ``chip`` file, parsed from a capped
    stream: past the limit, reading stops and the spooled part is dropped."""
    cap = service.config.max_upload_bytes
    if int(request.headers.get("content-length") or 0) > cap:
        raise ApiError(413, "too_large", f"The upload is larger than the limit of {cap >> 20} MiB.")
    parser = MultiPartParser(request.headers, capped(request, cap, "upload"), max_part_size=cap)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"The multipart body cannot be read: {exc.message}.") from None
    chip, raw = form.get("chip"), form.get("request")
    if chip is None or isinstance(chip, str) or not isinstance(raw, str):
        raise ApiError(
            422, "invalid_request", "Invalid request: a multipart job needs a 'request' JSON part and a 'chip' file."
        )
    try:
        body = JobRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc)) from None
    if body.raster is not None:
        raise ApiError(422, "invalid_request", "Invalid request: raster: leave it out when uploading a chip.")
    return body, chip


def new_folder(service: Service) -> tuple[str, Path]:
    try:
        return service.jobs.new_folder()
    except OSError as exc:
        raise ApiError(507, "insufficient_storage", f"The backend cannot store a new job ({exc.strerror}).") from None


async def store_chip(chip: UploadFile, folder: Path) -> Path:
    """The uploaded chip, written into the job's folder (nothing is left behind when that fails)."""
    target = folder / "chip.tif"
    try:
        with open(target, "wb") as out:
            while block := await chip.read(1 << 20):
                out.write(block)
    except OSError as exc:  # a full disk, typically
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError(507, "insufficient_storage", f"The backend cannot store the upload ({exc.strerror}).") from None
    return target


def build_request(service: Service, body: JobRequest, raster: str) -> SegmentRequest:
    """The job body as a request the engine can run, every check that reads the raster's header done."""
    engine = service.engine()
    config = service.config
    if body.model is not None and body.model != config.model_name:
        raise ApiError(
            400, "unknown_model", f"Model '{body.model}' is not loaded; this backend runs '{config.model_name}'."
        )
    values = body.options.model_dump()
    if values["templates"] not in TEMPLATE_SETS:  # a file name would make the server read that file
        raise ApiError(
            400,
            "bad_request",
            f"Unknown template set '{values['templates']}': use one of "
            f"{', '.join(TEMPLATE_SETS)} (template files are for the command line).",
        )
    try:
        if values["precision"] == "fast":
            values["precision"] = service.engines.fast.precision
        request = request_from_options(
            values,
            raster=raster,
            classes=tuple(body.classes),
            bbox=body.bbox,
            bbox_crs=body.bbox_crs,
            mode=body.mode,
            examples=read_examples(body.examples) if body.examples else (),
            area=body.mask,
        )
        vocabulary = build_vocabulary(list(request.classes), request.background)
        engine.text_embedder(request.templates)
        if request.engine == "sam3":  # refused now, with SAM 3's limit, not after the CLIP pass
            check_prompt_lengths(concept_prompts(vocabulary), SAM3_FULL)
        names = {n.lower() for n in vocabulary.names}
        for example in request.examples:
            if example.class_name.lower() not in names:
                raise InputError(
                    f"Example class '{example.class_name}' is not in the vocabulary ({', '.join(vocabulary.names)})."
                )
        with open_raster(raster) as ds:  # limits from the header, before any pixel is read
            check_header(ds, config.max_pixels, config.max_bands)
        for example in request.examples:  # says "does not overlap" for an example off the raster
            plan(raster, example.geometry.bounds, example.crs, request.bands, request.features, None)
        engine.plan(request)  # extent, area and resolution, from the header
    except InputError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return request


async def validated(service: Service, body: JobRequest, raster: str) -> SegmentRequest:
    """``build_request`` in a worker thread, with a time limit: GDAL never blocks the event loop."""
    limit = service.config.validation_timeout_s
    try:
        return await asyncio.wait_for(run_in_threadpool(build_request, service, body, raster), limit)
    except asyncio.TimeoutError:
        raise ApiError(
            400, "bad_request", f"Checking the raster took over {limit:g} s: is it on a slow or hung file system?"
        ) from None


async def enqueue(service: Service, body: JobRequest, raster: str, job_id: str, folder: Path) -> Job:
    """The checked job, queued (its folder removed when it is refused)."""
    try:
        return service.jobs.submit(job_id, folder, await validated(service, body, raster))
    except QueueFullError as exc:
        raise ApiError(429, "queue_full", str(exc)) from None
    except ApiError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
