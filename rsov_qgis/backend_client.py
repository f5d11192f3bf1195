# SPDX-License-Identifier: GPL-2.0-or-later
"""HTTP client of the rsov backend (``rsov serve``), over QGIS's network stack.

Every call raises :class:`BackendError` with a one-sentence message meant for the user; the
``code`` tells the failure kind (``unreachable``, ``unauthorized``, ``token_missing``, the
server's own codes, ...). Calls block the calling thread, the main one or a worker's.

Only the transport (:func:`_exchange`) needs QGIS: the data classes are also imported without it,
by the backend's contract test.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import RsovPluginError

if TYPE_CHECKING:  # Qt itself is imported where it is used, see _exchange
    from qgis.PyQt.QtCore import QFile
    from qgis.PyQt.QtNetwork import QHttpMultiPart

DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_MODEL = "ViT-B-16-openai"  # what the backend loads when it is given no --model
API_VERSION = 1  # the version of the backend's HTTP API this plugin speaks (health's api_version)
# Where `rsov serve` keeps its token by default.
DEFAULT_TOKEN_FILE = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "rsov" / "token"
FINISHED_STATES = ("done", "failed", "cancelled")
REFINE_SAM = "sam"  # the semantic option refine: SAM's automatic regions clean the class map
# the option engine: training-free CLIP (the backend's default), or SAM 3 finding every object of each class
ENGINE_CLIP, ENGINE_SAM3 = "clip", "sam3"


class BackendError(RsovPluginError):
    """A failed backend call; ``str(error)`` is the message for the user."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class JobCancelled(RsovPluginError):
    """The job was cancelled (by the user or on the backend)."""


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``."""

    version: str
    model: str
    models: list[str]
    device: str
    gpu_name: str | None
    api_version: int = 0  # backends before the handshake do not report it
    model_ready: bool = True  # False: the backend runs, but its model's weights are missing
    model_error: str | None = None  # then why, naming the file to fetch

    def describe(self) -> str:
        """E.g. ``"rsov 0.1.0, model ViT-B-16-openai on CUDA (NVIDIA H100)"``."""
        device = self.device.upper() + (f" ({self.gpu_name})" if self.gpu_name else "")
        return f"rsov {self.version}, model {self.model} on {device}"

    def incompatibility(self) -> str:
        """Why the plugin cannot work with this backend (a sentence without its full stop); "" when it can."""
        if self.api_version == API_VERSION:
            return ""
        return f"This backend speaks API v{self.api_version}, the plugin needs v{API_VERSION}: reinstall the backend"


def first_sentence(text: str) -> str:
    """The first sentence of a backend message (the rest is often advice for the command line)."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", text.strip(), maxsplit=1)[0]


def megabytes(size: int | None) -> str:
    """``"605 MB"``; ``"size unknown"`` when the size is not known."""
    return "size unknown" if size is None else f"{size / 1e6:.0f} MB"


@dataclass(frozen=True)
class Transfer:
    """The latest download or import of a model's weights (``transfer`` in ``GET /v1/models``)."""

    kind: str  # "download" or "import"
    state: str  # "running", "done" or "failed"
    done_bytes: int = 0
    total_bytes: int | None = None
    path: str | None = None  # where the weights are once done
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transfer:
        """From the backend's JSON object."""
        return cls(
            str(data["kind"]),
            str(data["state"]),
            int(data.get("done_bytes") or 0),
            data.get("total_bytes"),
            data.get("path"),
            data.get("error"),
        )

    @property
    def finished(self) -> bool:
        """Whether the transfer will not change any more."""
        return self.state in ("done", "failed")

    def amount(self) -> str:
        """``"120 of 351 MB"``, or ``"120 MB"`` while the total is not known."""
        if self.total_bytes is None:
            return megabytes(self.done_bytes)
        return f"{self.done_bytes / 1e6:.0f} of {megabytes(self.total_bytes)}"


@dataclass(frozen=True)
class ModelInfo:
    """One model of ``GET /v1/models``."""

    name: str
    kind: str  # "clip", "sam" or "sam3"
    description: str = ""
    weights_present: bool = False
    size_bytes: int | None = None
    downloadable: bool = False
    sha256: str | None = None
    loaded: bool = False
    transfer: Transfer | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        """From the backend's JSON object."""
        transfer = data.get("transfer")
        return cls(
            str(data["name"]),
            str(data.get("kind") or "clip"),
            str(data.get("description") or ""),
            bool(data.get("weights_present")),
            data.get("size_bytes"),
            bool(data.get("downloadable")),
            data.get("sha256"),
            bool(data.get("loaded")),
            Transfer.from_json(transfer) if transfer else None,
        )

    @property
    def gated(self) -> bool:
        """Whether its download needs a Hugging Face token of someone who accepted its licence (SAM 3)."""
        return self.kind == "sam3" or "gated" in self.description.lower()

    @property
    def takes_weights(self) -> bool:
        """Whether the model has a weights file to download or import (random test models have none)."""
        return self.downloadable or self.sha256 is not None

    def label(self) -> str:
        """E.g. ``"RemoteCLIP-ViT-B-32 — missing, 605 MB"`` (for the model list)."""
        if not self.takes_weights:
            return f"{self.name} — no weights needed"
        return f"{self.name} — {'present' if self.weights_present else 'missing'}, {megabytes(self.size_bytes)}"


def rough_duration(seconds: float) -> str:
    """``"under 1 s"``, ``"about 40 s"``, ``"about 3 min"`` or ``"about 2 h 5 min"`` (estimates, time left)."""
    whole = int(seconds + 0.5)
    if whole < 1:
        return "under 1 s"
    if whole < 60:
        return f"about {whole} s"
    minutes = int(seconds / 60 + 0.5)
    if minutes < 60:
        return f"about {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min"


# What to change when an instance job kept no object, by the reason its proposals were dropped
NO_OBJECT_CURES = (("below_threshold", "lower the object threshold"), ("background", "check the vocabulary"))


@dataclass(frozen=True)
class JobStatus:
    """``GET /v1/jobs/{id}``."""

    job_id: str
    state: str
    progress: float = 0.0
    stage: str = ""
    message: str = ""
    error: str | None = None
    eta_s: float | None = None  # seconds left in the whole job; None while unknown (and once finished)
    summary: dict[str, Any] | None = None  # an instance job's account of its proposals, once done

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        """From the backend's JSON object (backends before ``eta_s`` and ``summary`` send neither)."""
        eta_s, summary = data.get("eta_s"), data.get("summary")
        return cls(
            str(data["job_id"]),
            str(data["state"]),
            float(data.get("progress") or 0.0),
            str(data.get("stage") or ""),
            str(data.get("message") or ""),
            data.get("error"),
            None if eta_s is None else float(eta_s),
            summary if isinstance(summary, dict) else None,
        )

    @property
    def finished(self) -> bool:
        """Whether the job will not change any more."""
        return self.state in FINISHED_STATES

    def progress_text(self) -> str:
        """The stage with the time left, e.g. ``"proposing objects: tile 2/4 — about 40 s left"``."""
        text = self.stage or self.state
        if self.eta_s is None or self.finished:
            return text
        return f"{text} — {rough_duration(self.eta_s)} left"

    @property
    def summary_text(self) -> str:
        """E.g. ``"57 proposals, 3 kept, 40 below the object threshold 0.30, …"``; "" without a summary."""
        return str((self.summary or {}).get("text") or "")

    def no_objects_text(self) -> str:
        """Why an instance job kept no object, and what to change."""
        summary = self.summary or {}
        cures = " or ".join(cure for reason, cure in NO_OBJECT_CURES if summary.get(reason))
        advice = f" {cures[0].upper()}{cures[1:]}." if cures else ""
        return f"No objects: {self.summary_text}.{advice}"


@dataclass
class SegmentOptions:
    """The ``options`` of a job; ``None`` leaves the backend's default."""

    threshold: float = 0.3
    resolution: float | None = None  # metres per pixel; None: auto (from the raster's own resolution)
    bands: list[int] | None = None
    templates: str | None = None
    background: list[str] | None = None
    refine: str | None = None  # semantic mode: REFINE_SAM cleans the map with SAM's regions; None: "none"
    engine: str | None = None  # ENGINE_SAM3: SAM 3 finds the objects; None: ENGINE_CLIP (older backends know no other)

    def to_json(self) -> dict[str, Any]:
        """The options that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class InstanceOptions:
    """The instance-mode ``options`` the plugin exposes (the backend's defaults)."""

    object_threshold: float = 0.3  # minimum class probability of an object ("none of these" below)
    points_per_side: int = 16  # Segment Anything's point grid per tile
    pred_iou: float = 0.8  # minimum predicted mask quality (-1: keep all)
    stability: float = 0.9  # minimum mask stability (-1: keep all)
    class_prompts: bool = True  # extra point prompts where the semantic map is confident
    points_per_batch: int = 64  # point prompts per mask-decoder call (fewer: less GPU memory)

    def to_json(self) -> dict[str, Any]:
        """All of them (the plugin always says what it asks for)."""
        return asdict(self)


@dataclass
class JobRequest:
    """The body of ``POST /v1/jobs`` (and ``/v1/estimate``); ``raster`` is None when a chip file
    is sent instead.

    With ``instance`` set the job is an instance job (one polygon per object); ``examples`` is
    then an optional GeoJSON FeatureCollection of example polygons with a ``class`` property.
    ``mask`` is an optional GeoJSON FeatureCollection of polygons (with a ``crs`` member): pixels
    outside it get no class.
    """

    classes: list[str]
    bbox: tuple[float, float, float, float] | None
    bbox_crs: str | None
    raster: str | None = None
    options: SegmentOptions = field(default_factory=SegmentOptions)
    instance: InstanceOptions | None = None
    examples: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None

    @property
    def mode(self) -> str:
        """``"instance"`` or ``"semantic"``."""
        return "semantic" if self.instance is None else "instance"

    def to_json(self) -> dict[str, Any]:
        """The JSON object the contract describes."""
        options = self.options.to_json()
        if self.instance is not None:
            options.pop("refine", None)  # semantic mode's alone
            options.update(self.instance.to_json())
        body = {
            "bbox": list(self.bbox) if self.bbox else None,
            "bbox_crs": self.bbox_crs,
            "classes": list(self.classes),
            "mode": self.mode,
            "options": options,
        }
        if self.raster is not None:
            body["raster"] = self.raster
        if self.instance is not None and self.examples:
            body["examples"] = self.examples
        if self.mask is not None:
            body["mask"] = self.mask
        return body


RULES = {"auto": "auto", "fixed": "fixed", "long_side": "long side"}


def describe_estimate(estimate: dict[str, Any]) -> str:
    """One line for the user, e.g. ``"1.14 m/px (auto), 448 × 448 px, 16 windows (4 cached), about 3 s"``."""
    height, width = (estimate.get("working_size") or (0, 0))[:2]
    windows, cached = int(estimate.get("windows") or 0), int(estimate.get("windows_cached") or 0)
    seconds = float(estimate.get("estimated_s") or 0.0)
    rule = RULES.get(str(estimate.get("rule")), str(estimate.get("rule") or "?"))
    return (
        f"{float(estimate['resolution_m']):.3g} m/px ({rule}), {width} × {height} px, "
        f"{windows} window{'' if windows == 1 else 's'}"
        + (f" ({cached} cached)" if cached else "")
        + f", {rough_duration(seconds)}"
    )


def read_token(path: str | Path) -> str:
    """The stripped content of the token file; BackendError ``token_missing`` if unreadable."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError:
        raise BackendError(
            "token_missing",
            f"The token file {path} cannot be read: start the backend (it writes the token) "
            "or set the token file in the rsov settings.",
        ) from None
    if not token:
        raise BackendError("token_missing", f"The token file {path} is empty.")
    return token


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (so the backend can read local files by path)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _ChipUpload:
    """A job body sent as multipart/form-data: the request JSON and the chip GeoTIFF, streamed from disk."""

    request: bytes
    chip: Path


class _Answer(NamedTuple):
    """What one exchange gave: the HTTP status, reason phrase and body, or (status None) why no
    HTTP answer came (``failure``, e.g. "Connection refused" or "timed out")."""

    status: int | None
    reason: str = ""
    data: bytes = b""
    failure: str = ""


def _exchange(
    method: str, url: str, headers: dict[str, str], body: bytes | _ChipUpload | None, timeout: float
) -> _Answer:
    """One HTTP exchange, blocking the calling thread (main or worker) until it ends; aborted
    once no byte moved for ``timeout`` seconds.

    Not QgsBlockingNetworkRequest: in QGIS 3.22 it posts bytes or a QIODevice but no QHttpMultiPart,
    always uses the thread's shared manager (so a loopback call could not skip the proxy) and has
    no per-call timeout. So the reply runs on a manager of this thread while this thread processes
    its events, as QgsBlockingNetworkRequest does (QgsNetworkAccessManager.instance() is per thread).
    """
    # Qt is imported here, not with the module: the data classes above must import without QGIS.
    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtCore import QCoreApplication, QEventLoop, QThread, QUrl
    from qgis.PyQt.QtNetwork import QNetworkAccessManager, QNetworkProxy, QNetworkReply, QNetworkRequest

    if is_loopback_url(url) and QThread.currentThread() == QCoreApplication.instance().thread():
        # The main thread waits for a local backend without processing its events, as it did over
        # urllib: a timer or a deferred deletion run inside the call (a dock deleted under its own
        # call) is worse than a short block. Remote calls must process them: QGIS shows its SSL and
        # authentication prompts there.
        return _in_worker_thread(_exchange, method, url, headers, body, timeout)
    request = QNetworkRequest(QUrl(url))
    for name, value in headers.items():
        request.setRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    request.setTransferTimeout(max(1, round(timeout * 1000)))  # like a socket timeout: idle time, not total
    # Job states and results are the backend's answers of the moment: never from or into QGIS's disk cache.
    request.setAttribute(
        QNetworkRequest.Attribute.CacheLoadControlAttribute, QNetworkRequest.CacheLoadControl.AlwaysNetwork
    )
    request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
    if is_loopback_url(url):
        # Never through a proxy, which cannot reach this machine's backend. Qt 5 has no per-request
        # proxy and QGIS's manager asks its proxy factory for every request, so a manager of our own
        # (QGIS's SSL and authentication settings do not concern a local backend either).
        manager = QNetworkAccessManager()
        manager.setProxy(QNetworkProxy(QNetworkProxy.ProxyType.NoProxy))
    else:
        manager = QgsNetworkAccessManager.instance()  # this thread's, with QGIS's proxy, SSL and authentication
    verb, chip = method.encode("ascii"), None
    if isinstance(body, _ChipUpload):
        multipart, chip = _multipart(body)
        reply = manager.sendCustomRequest(request, verb, multipart)
        multipart.setParent(reply)  # deleted with the reply, which reads it until it finishes
    elif body is not None:
        reply = manager.sendCustomRequest(request, verb, body)
    else:  # a custom verb: Qt adds no form content type to a bodiless POST
        reply = manager.sendCustomRequest(request, verb)
    # This thread's events drive the reply (the loop also gives a plain Python thread its event
    # dispatcher). User input waits, so no click starts a second call meanwhile.
    loop = QEventLoop()
    reply.finished.connect(loop.quit)
    if not reply.isFinished():
        loop.exec(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    if chip is not None:
        chip.close()  # now, not once the reply is deleted: the caller removes the chip's folder
    status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
    error = reply.error()
    if error in (QNetworkReply.NetworkError.OperationCanceledError, QNetworkReply.NetworkError.TimeoutError):
        answer = _Answer(None, failure="timed out")  # by the transfer timeout (or QGIS's own network timeout)
    elif status is None or (error != QNetworkReply.NetworkError.NoError and int(status) < 400):
        answer = _Answer(None, failure=reply.errorString())
    else:
        reason = str(reply.attribute(QNetworkRequest.Attribute.HttpReasonPhraseAttribute) or "")
        answer = _Answer(int(status), reason, bytes(reply.readAll()))
    # Deleted by Qt after this wrapper is gone (by the next event loop of this thread, or with the
    # loopback manager): sip.delete here could leave the dead wrapper mapped to the address, and
    # the next reply allocated there would be handed it.
    reply.deleteLater()
    del reply
    return answer


def _in_worker_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new thread, this one blocked until it returns (or raises)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="rsov-http", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _multipart(upload: _ChipUpload) -> tuple[QHttpMultiPart, QFile]:
    """The QHttpMultiPart of ``upload`` and its chip, an open QFile (a child of it) read as it is sent."""
    from qgis.PyQt.QtCore import QFile, QIODevice
    from qgis.PyQt.QtNetwork import QHttpMultiPart, QHttpPart, QNetworkRequest

    def part(disposition: str, content_type: str) -> QHttpPart:
        made = QHttpPart()
        made.setHeader(QNetworkRequest.KnownHeaders.ContentDispositionHeader, disposition)
        made.setHeader(QNetworkRequest.KnownHeaders.ContentTypeHeader, content_type)
        return made

    multipart = QHttpMultiPart(QHttpMultiPart.ContentType.FormDataType)
    chip = QFile(str(upload.chip), multipart)
    if not chip.open(QIODevice.OpenModeFlag.ReadOnly):
        raise BackendError("chip_unreadable", f"The image chip {upload.chip} cannot be read ({chip.errorString()}).")
    request_part = part('form-data; name="request"', "application/json")
    request_part.setBody(upload.request)
    chip_part = part(f'form-data; name="chip"; filename="{upload.chip.name}"', "image/tiff")
    chip_part.setBodyDevice(chip)
    multipart.append(request_part)
    multipart.append(chip_part)
    return multipart, chip


class BackendClient:
    """One backend: its base URL and the token file for authenticated calls."""

    def __init__(
        self, url: str = DEFAULT_URL, token_file: str | Path | None = DEFAULT_TOKEN_FILE, timeout: float = 30.0
    ):
        url = url.strip().rstrip("/")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise BackendError("bad_url", f"The backend URL '{url}' must start with http:// or https://.")
        self.url = url
        self.token_file = token_file
        self.timeout = timeout

    @property
    def is_local(self) -> bool:
        """Whether the backend runs on this machine and can read rasters by path."""
        return is_loopback_url(self.url)

    # --- transport -------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: bytes | _ChipUpload | None = None,
        content_type: str | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> bytes:
        headers = {"Accept": "application/json"}
        if auth:
            try:
                token = read_token(self.token_file or DEFAULT_TOKEN_FILE)
            except BackendError:
                self.health()  # a backend that is down explains a missing token better
                raise
            headers["Authorization"] = "Bearer " + token
        if content_type:
            headers["Content-Type"] = content_type
        answer = _exchange(method, self.url + path, headers, body, timeout or self.timeout)
        if answer.status is None:
            raise BackendError(
                "unreachable",
                f"No rsov backend answers at {self.url} ({answer.failure}): start it with Start backend "
                "or `rsov serve`, or check the backend URL.",
            )
        if answer.status >= 400:
            raise self._http_error(answer)
        return answer.data

    def _http_error(self, answer: _Answer) -> BackendError:
        try:
            error = json.loads(answer.data.decode("utf-8"))["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"http_{answer.status}", f"The backend answered HTTP {answer.status} ({answer.reason})."
        if answer.status == 401:
            return BackendError(
                "unauthorized",
                f"The backend refused the token from {self.token_file}: use the token file that "
                f"`rsov serve` printed when it started ({message})",
                401,
            )
        return BackendError(code, message, answer.status)

    def _json(
        self, method: str, path: str, payload: Any = None, auth: bool = True, timeout: float | None = None
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        return self._decode(self._call(method, path, body, "application/json" if body else None, auth, timeout))

    def _decode(self, raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise BackendError("bad_response", f"The backend at {self.url} did not answer JSON: is it rsov?") from None

    # --- endpoints -------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> Health:
        """``GET /v1/health`` (no token needed)."""
        data = self._json("GET", "/v1/health", auth=False, timeout=timeout)
        try:
            return Health(
                str(data["version"]),
                str(data["model"]),
                list(data.get("models") or []),
                str(data["device"]),
                data.get("gpu_name"),
                int(data.get("api_version") or 0),
                bool(data.get("model_ready", True)),
                data.get("model_error"),
            )
        except (KeyError, TypeError, ValueError):
            raise BackendError("bad_response", f"The server at {self.url} is not an rsov backend.") from None

    def compatible_health(self, timeout: float | None = None) -> Health:
        """``GET /v1/health``, refusing (BackendError ``incompatible``) a backend of another API version."""
        health = self.health(timeout)
        if health.incompatibility():
            raise BackendError("incompatible", health.incompatibility() + ".")
        return health

    def models(self) -> list[ModelInfo]:
        """``GET /v1/models``: also proves that the token is accepted."""
        try:
            return [ModelInfo.from_json(row) for row in self._json("GET", "/v1/models")["models"]]
        except (KeyError, TypeError, ValueError):
            raise BackendError(
                "bad_response", f"The backend at {self.url} answered the model list malformed."
            ) from None

    def download_model(self, name: str, hub_token: str | None = None) -> Transfer:
        """``POST /v1/models/{name}/download``: the backend downloads the weights in the background
        (poll :meth:`models` for the bytes). ``hub_token``: a Hugging Face read token for a gated
        model, sent for this download only (None or "": the backend's own, if it has one)."""
        payload = {"hub_token": hub_token} if hub_token else None
        return self._transfer(f"/v1/models/{urllib.parse.quote(name)}/download", payload)

    def import_model(self, name: str, path: str) -> Transfer:
        """``POST /v1/models/{name}/import``: the backend verifies the file at ``path`` (on its own
        machine) and copies it into its cache, in the background."""
        return self._transfer(f"/v1/models/{urllib.parse.quote(name)}/import", {"path": path})

    def _transfer(self, path: str, payload: dict[str, Any] | None) -> Transfer:
        data = self._json("POST", path, payload)
        try:
            return Transfer.from_json(data["transfer"])
        except (KeyError, TypeError, ValueError):
            raise BackendError("bad_response", f"The backend at {self.url} did not describe the transfer.") from None

    def submit(self, request: JobRequest, chip: Path | None = None) -> str:
        """``POST /v1/jobs`` (multipart with the chip GeoTIFF when given); returns the job id."""
        if chip is None:
            data = self._json("POST", "/v1/jobs", request.to_json())
        else:  # Qt writes the multipart content type, with its boundary
            upload = _ChipUpload(json.dumps(request.to_json()).encode("utf-8"), chip)
            data = self._decode(self._call("POST", "/v1/jobs", upload))
        return str(data["job_id"])

    def estimate(self, request: JobRequest) -> dict[str, Any]:
        """``POST /v1/estimate`` for a raster the backend reads by path: the working resolution, the
        sizes, the number of windows (and how many are cached), blocks and an estimated time."""
        if request.raster is None:
            raise BackendError("no_estimate", "No estimate is available for a raster sent as an image chip.")
        data = self._json("POST", "/v1/estimate", request.to_json())
        if not isinstance(data, dict) or "resolution_m" not in data or "windows" not in data:
            raise BackendError("bad_response", f"The backend at {self.url} answered the estimate without its figures.")
        return data

    def status(self, job_id: str) -> JobStatus:
        """``GET /v1/jobs/{id}``."""
        data = self._json("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}")
        try:
            return JobStatus.from_json(data)
        except (KeyError, TypeError, ValueError):
            raise BackendError("bad_response", f"The backend at {self.url} answered a malformed job status.") from None

    def result_geojson(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/result``: a GeoJSON FeatureCollection in the raster CRS (the backend
        refuses large results with 413 ``too_large``: the plugin always uses :meth:`result_gpkg`)."""
        return self._json("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/result")

    def result_gpkg(self, job_id: str) -> bytes:
        """``GET /v1/jobs/{id}/result?format=gpkg``: the GeoPackage bytes (layer ``rsov``)."""
        return self._call("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/result?format=gpkg")

    def cancel(self, job_id: str) -> None:
        """``DELETE /v1/jobs/{id}``."""
        self._json("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    # --- a whole job -----------------------------------------------------------------
    def run_job(
        self,
        request: JobRequest,
        chip: Path | None = None,
        on_status: Callable[[JobStatus], None] = lambda status: None,
        is_canceled: Callable[[], bool] = lambda: False,
        poll_s: float = 0.5,
    ) -> str:
        """Submit and poll until done; returns the job id. Cancels the backend job when
        ``is_canceled()`` turns true (raising JobCancelled); a failed job raises BackendError, and so
        does a backend of another API version (before anything is sent)."""
        self.compatible_health()
        job_id = self.submit(request, chip)
        while True:
            if is_canceled():
                self._cancel_quietly(job_id)
                raise JobCancelled(job_id)
            status = self.status(job_id)
            on_status(status)
            if status.state == "done":
                return job_id
            if status.state == "failed":
                raise BackendError("job_failed", status.error or status.message or "The backend job failed.")
            if status.state == "cancelled":
                raise JobCancelled(job_id)
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline and not is_canceled():
                time.sleep(0.05)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except BackendError:
            pass  # the job ends on the backend anyway; the user asked to stop waiting
