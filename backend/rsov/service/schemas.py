"""The HTTP API's bodies (pydantic): what ``docs/api/openapi.json``, the contract, is generated from.

Requests: ``JobRequest`` (with its ``JobOptions``) and ``ImportRequest``. ``JobOptions`` has one field
per row of the options table (``rsov.options``, surface "api"): name, type, default, range and help all
come from there. Answers: one model per route's answer, and ``ErrorBody`` for every error, its ``code``
one of ``ERROR_CODES``. The answer models refuse unknown fields, so an answer that grows a field without
its model fails loudly (HTTP 500 in the tests) instead of losing the field to response filtering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..options import Option, options_for
from ..semantic.vocabulary import MAX_CLASSES


def _annotation(option: Option) -> Any:
    base: Any = {"float": float, "int": int, "bool": bool, "str": str, "ints": list[int], "words": list[str]}[
        option.kind
    ]
    if option.choices:
        base = Literal[option.choices]
    return base | None if option.optional else base


def _field(option: Option) -> Any:
    default = list(option.default) if isinstance(option.default, tuple) else option.default
    bounds: dict[str, Any] = {}
    if option.kind in ("ints", "words"):
        bounds = {"min_length": option.minimum, "max_length": option.maximum}
    elif option.minimum is not None:
        bounds["gt" if option.above else "ge"] = option.minimum
    if option.kind in ("float", "int") and option.maximum is not None:
        bounds["le"] = option.maximum
    kept: dict[str, Any] = {k: int(v) if option.kind != "float" else v for k, v in bounds.items() if v is not None}
    return Field(default, description=option.help, **kept)


_OPTION_FIELDS: dict[str, Any] = {o.name: (_annotation(o), _field(o)) for o in options_for("api")}
if TYPE_CHECKING:  # built at run time from the table; to the type checker, a model like any other

    class JobOptions(BaseModel):
        pass

else:
    JobOptions = create_model(
        "JobOptions",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        __doc__="Method options of a job; every one optional, unknown ones refused (see rsov.options).",
        **_OPTION_FIELDS,
    )


class ImportRequest(BaseModel):
    """A weights file on the backend's machine to verify and copy into its cache."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., max_length=4096, description="absolute path of the file, under the allowed folders")


class DownloadRequest(BaseModel):
    """Optional body of ``POST /v1/models/{name}/download``."""

    model_config = ConfigDict(extra="forbid")
    hub_token: str | None = Field(
        None,
        max_length=512,
        description="Hugging Face read token for a gated model (SAM 3), used for this download only and "
        "never stored; default: the backend's HF_TOKEN / RSOV_HF_TOKEN or saved hub login",
    )


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs`` (for an upload, the ``request`` part, without ``raster``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    raster: str | None = Field(None, description="absolute path of a raster the server can read")
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    classes: list[str] = Field(..., max_length=MAX_CLASSES)
    mode: Literal["semantic", "instance"] = "semantic"
    examples: dict | None = Field(
        None, description="instance mode: GeoJSON FeatureCollection of example polygons with a 'class' property"
    )
    mask: dict | None = Field(
        None,
        description="processing area: GeoJSON FeatureCollection of polygons (CRS in its "
        "'crs' member); pixels outside get no class",
    )
    model: str | None = Field(None, description="must be the loaded model when given")
    options: JobOptions = Field(default_factory=JobOptions)


# --- answers ---------------------------------------------------------------------------------


class Answer(BaseModel):
    """An answer of the backend: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class Health(Answer):
    """``GET /v1/health``: who answers, and whether its model is ready."""

    status: Literal["ok"]
    version: str = Field(description="the backend's package version")
    api_version: int = Field(description="the version of this HTTP contract; the plugin refuses a backend of another")
    model: str = Field(description="the CLIP model this backend runs (the only one it runs)")
    models: list[str] = Field(description="the models jobs may name: the loaded one")
    device: str = Field(description="the torch device type, e.g. cpu or cuda")
    gpu_name: str | None = Field(description="the GPU's name on CUDA, else null")
    model_ready: bool = Field(description="false while the model's weights are missing (jobs get 503 weights_missing)")
    model_error: str | None = Field(description="why the model is not ready, naming the file to fetch; else null")
    fast_precision: str = Field(description="what the job option precision fast means on this machine")
    fast_precision_reason: str = Field(description="why fast_precision was chosen")


class Transfer(Answer):
    """The latest download or import of a model's weights."""

    kind: Literal["download", "import"]
    state: Literal["running", "done", "failed"]
    done_bytes: int = Field(ge=0)
    total_bytes: int | None = Field(description="null while not known")
    path: str | None = Field(description="the weights file in the backend's cache, once done")
    error: str | None = Field(description="why it failed, once failed")


class ModelRow(Answer):
    """One model the backend knows."""

    name: str
    kind: Literal["clip", "sam", "sam3"]
    arch: str
    description: str
    weights_present: bool
    path: str | None = Field(description="the weights file, when present")
    size_bytes: int | None
    sha256: str | None = Field(description="the digest the weights are verified against, when known")
    downloadable: bool
    loaded: bool = Field(description="whether this is the model the backend runs")
    transfer: Transfer | None = Field(description="the latest download or import of its weights, if any")


class ModelList(Answer):
    """``GET /v1/models``."""

    models: list[ModelRow]


class ModelTransfer(Answer):
    """``POST /v1/models/{name}/download`` and ``/import``: the transfer started (or the one running)."""

    name: str
    transfer: Transfer


class JobCreated(Answer):
    """``POST /v1/jobs``: the job is queued; poll ``GET /v1/jobs/{job_id}``."""

    job_id: str


class ProposalSummary(Answer):
    """Where every proposal of an instance job went; the counts add up to ``proposals``."""

    proposals: int
    kept: int
    below_threshold: int
    threshold: float
    background: int
    duplicates: int
    outside_extent: int
    too_small: int
    text: str = Field(description="the same in words (the job's message)")


class JobStatus(Answer):
    """``GET /v1/jobs/{job_id}`` (and ``DELETE``'s answer)."""

    job_id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    stage: str = Field(description='e.g. "segmenting block 3/12: encoding windows 40/120", "cancelling"')
    message: str = Field(description='once done: "N polygons", or the instance summary\'s text')
    error: str | None = Field(description="why the job failed, once failed")
    eta_s: float | None = Field(description="seconds left while running, from the rate so far; null while unknown")
    summary: ProposalSummary | None = Field(description="instance jobs, once done; else null")


class Estimate(Answer):
    """``POST /v1/estimate``: what a job would cost, from the raster's header."""

    resolution_m: float = Field(description="the working ground resolution, metres per pixel")
    rule: Literal["auto", "fixed", "long_side"]
    working_size: tuple[int, int] = Field(description="[height, width] in working pixels")
    output_size: tuple[int, int] = Field(description="[height, width] of the result grid")
    windows: int = Field(ge=0)
    windows_cached: int = Field(ge=0, description="windows whose features are cached already")
    blocks: int = Field(ge=0)
    estimated_s: float = Field(ge=0, description="at the speed measured on this backend")


class NamedCrs(Answer):
    type: Literal["name"]
    properties: dict[str, str] = Field(description='{"name": "EPSG:25832"} (or WKT without an EPSG code)')


class Geometry(Answer):
    type: Literal["Polygon", "MultiPolygon"]
    coordinates: list[Any]


class FeatureProperties(Answer):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="the class's first name")
    class_id: int = Field(description="1-based index of the class in the vocabulary")
    score: float
    area_m2: float
    instance_id: int | None = Field(None, description="instance jobs: one per object")


class Feature(Answer):
    type: Literal["Feature"]
    geometry: Geometry
    properties: FeatureProperties


class FeatureCollection(Answer):
    """``GET /v1/jobs/{job_id}/result``: the polygons in the raster's CRS (named in ``crs``)."""

    type: Literal["FeatureCollection"]
    crs: NamedCrs | None = Field(None, description="absent for rasters without a CRS")
    features: list[Feature]


# --- errors ----------------------------------------------------------------------------------

# Every error code the backend answers: (its HTTP status, None: several; what it means).
ERROR_CODES: dict[str, tuple[int | None, str]] = {
    "bad_request": (
        400,
        "the job cannot run as asked (vocabulary, options, extent, CRS, mask, examples or raster); "
        "the message says why",
    ),
    "bad_path": (400, "the path is not an absolute path to a regular local file (no /vsi..., no control characters)"),
    "unknown_model": (400, "the job names a model other than the loaded one"),
    "bad_multipart": (400, "the multipart body cannot be read"),
    "unauthorized": (401, "missing or wrong token: send Authorization: Bearer <token>, from the backend's token file"),
    "forbidden_path": (
        403,
        "the backend does not read that file (its token file, its results, or outside --allow-dir)",
    ),
    "untrusted_host": (403, "the Host header is not a trusted name (DNS-rebinding defence)"),
    "no_such_job": (404, "no such job, or it finished over --results-ttl seconds ago"),
    "no_such_model": (404, "no such model with a weights file (see GET /v1/models)"),
    "http_error": (None, "no such endpoint (404) or method (405)"),
    "not_done": (409, "the job is not done yet"),
    "too_large": (413, "a body over its cap, or a result over the GeoJSON limit (ask for ?format=gpkg)"),
    "unsupported_media_type": (415, "a job body that is neither application/json nor multipart/form-data"),
    "invalid_request": (422, "the body or a parameter does not follow this schema"),
    "queue_full": (429, "too many jobs are waiting; try again later"),
    "internal_error": (500, "a bug in the backend; the message names the exception"),
    "weights_missing": (503, "the model's weights are not on this machine yet: download or import them"),
    "insufficient_storage": (507, "the backend cannot store the job or its upload"),
}


class ErrorDetail(Answer):
    code: Literal[tuple(ERROR_CODES)]  # type: ignore[valid-type]
    message: str = Field(description="one sentence for the user")


class ErrorBody(Answer):
    """Every error: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


# Models the routes do not declare themselves (bodies parsed by hand, results served as files).
EXTRA_MODELS: tuple[type[BaseModel], ...] = (JobRequest, FeatureCollection)
