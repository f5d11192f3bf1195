"""A small stand-in for ``rsov serve`` that follows the HTTP contract, for client and GUI tests.

Jobs go queued -> running ("segmenting block k/n", or "proposing objects: tile k/n, prompts
p/q" in instance mode, with a decreasing ``eta_s``) -> done over a few polls (or stay running
with ``hold``, or fail with ``fail_with``); the result is one rectangle per class inside the
requested bbox (the mask's bounds when bbox is null), cut to the ``mask`` when one is sent,
written with GDAL in the raster's CRS. In instance mode each rectangle is an object proposal
(with an ``instance_id``) kept when its score reaches ``object_threshold``, besides one
background proposal; a done instance job tells them in its ``summary`` (and message). The GeoJSON
result is refused as ``too_large`` (413) past ``geojson_limit`` features; ``?format=gpkg`` always
answers. ``POST /v1/estimate`` answers figures derived from the raster's resolution (or the fixed
one) and the bbox. Job bodies are recorded in ``requests``, estimate bodies in ``estimates``, weights
imports in ``imports`` and download bodies in ``downloads`` (downloads and imports of the fake model
stay running). The model list also has the gated ``sam3`` (SAM 3): its download runs only with the
``hub_token`` of an account that accepted its licence, and fails otherwise, naming the licence step.

It answers only what ``rsov serve`` answers (docs/api/openapi.json, the contract; the plugin's
test_plugin_contract.py checks every answer against it): bodies that are not a JobRequest or an
ImportRequest of the contract get 422 ``invalid_request``; then, in the backend's order, a path the
backend would not read gets 400 ``bad_path``, a processing area without polygons, an empty vocabulary
and examples of a class outside the vocabulary 400 ``bad_request``, each with the backend's message.
Run as a script (``python fake_backend.py PORT TOKEN_FILE``) to serve from another process.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
from osgeo import gdal, ogr, osr

gdal.UseExceptions()

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"  # what the backend serves
COMPONENTS = json.loads(CONTRACT.read_text(encoding="utf-8"))["components"]
FAST_REASON = "this stand-in runs nothing: fp32"
SAM3 = "sam3"  # the gated model
SAM3_HUB = "https://huggingface.co/facebook/sam3"
SAM3_LICENCE_STEP = (  # as the backend words it (rsov.models)
    f"They are gated: sign in at {SAM3_HUB}, accept the licence there, then make a read token available "
    "(HF_TOKEN or RSOV_HF_TOKEN, `hf auth login`, or the Hub token field in the plugin's Backend tab) and run "
    "`rsov models --download sam3`; or download sam3.pt there and run `rsov models --import sam3.pt --name sam3`."
)
# (method, path pattern) of every route of the backend; the other paths answer 404, other methods 405
ROUTES = (
    ("GET", "v1/health"),
    ("GET", "v1/models"),
    ("POST", "v1/models/*/download"),
    ("POST", "v1/models/*/import"),
    ("POST", "v1/jobs"),
    ("POST", "v1/estimate"),
    ("GET", "v1/jobs/*"),
    ("DELETE", "v1/jobs/*"),
    ("GET", "v1/jobs/*/result"),
)


def _route(method: str, parts: list[str]) -> int:
    """200 for a route the backend has, 405 for a path it serves with other methods, else 404."""

    def matches(pattern: str) -> bool:
        words = pattern.split("/")
        return len(words) == len(parts) and all(w in ("*", p) for w, p in zip(words, parts))

    methods = {m for m, pattern in ROUTES if matches(pattern)}
    return 200 if method in methods else 405 if methods else 404


def _schema_error(body, name: str) -> str | None:
    """The backend's 422 message for a body that is not a ``name`` of the contract, else None."""
    validator = jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": COMPONENTS})
    errors = sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    where = ".".join(str(p) for p in errors[0].absolute_path) or "body"
    return f"Invalid request: {where}: {errors[0].message}."


def _path_error(raw: str) -> tuple[int, str, str] | None:
    """The backend's refusal of a path it cannot read (its path policy, without --allow-dir), else None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        return 400, "bad_path", "The raster path holds control characters (such as NUL): give a plain path."
    if raw.startswith("/vsi") or not Path(raw).is_absolute():
        return 400, "bad_path", f"Raster path '{raw}' must be an absolute path to a local file."
    if not Path(raw).exists():
        return 400, "bad_path", f"Raster file not found: {raw}."
    if not Path(raw).is_file():
        return 400, "bad_path", f"{raw} is not a regular file."
    return None


@dataclass
class FakeJob:
    job_id: str
    request: dict
    chip: bytes | None
    polls: int = 0
    state: str = "queued"


@dataclass
class FakeBackend:
    token: str = "secret-token"
    polls_until_done: int = 2
    hold: bool = False  # jobs stay "running" until cancelled
    fail_with: str | None = None  # jobs fail with this error
    model: str = "fake-model"
    api_version: int = 1  # of health (the handshake); 0 plays a backend from before it
    blocks: int = 3  # of a job's "segmenting block k/n" stages
    seconds_per_poll: float = 40.0  # what eta_s counts per poll still to come
    geojson_limit: int = 1  # GeoJSON results with more features answer 413 too_large
    estimate_delay_s: float = 0.0  # how long /v1/estimate takes
    max_resolution_m: float = 1e5  # coarser resolutions are refused as absurd
    jobs: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    estimates: list = field(default_factory=list)
    results: list = field(default_factory=list)  # the query string of each result download
    imports: list = field(default_factory=list)  # the body of each weights import
    downloads: list = field(default_factory=list)  # the body of each weights download (None: none sent)
    hub_token: str = "hf_licence_accepted"  # the Hugging Face token whose account accepted SAM 3's licence
    transfers: dict = field(default_factory=dict)  # the latest transfer of a model's weights, by name
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, port: int = 0) -> FakeBackend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802
                backend.handle(self, "GET")

            def do_POST(self):  # noqa: N802
                backend.handle(self, "POST")

            def do_DELETE(self):  # noqa: N802
                backend.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- HTTP -------------------------------------------------------------------------------
    def handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        path, _, query = http.path.partition("?")
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["v1", "health"]:
            return self._send(
                http,
                200,
                {
                    "status": "ok",
                    "version": "0.1.0",
                    "api_version": self.api_version,
                    "model": self.model,
                    "models": [self.model],
                    "device": "cpu",
                    "gpu_name": None,
                    "model_ready": True,
                    "model_error": None,
                    "fast_precision": "fp32",
                    "fast_precision_reason": FAST_REASON,
                },
            )
        route = _route(method, parts)
        if route != 200:
            return self._error(http, route, "http_error", "Not Found" if route == 404 else "Method Not Allowed")
        if http.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(
                http,
                401,
                "unauthorized",
                "Missing or wrong token: send 'Authorization: Bearer "
                "<token>' with the token from the backend's token file.",
            )
        if method == "GET" and parts == ["v1", "models"]:
            return self._send(
                http,
                200,
                {
                    "models": [
                        {
                            "name": self.model,
                            "kind": "clip",
                            "arch": "fake",
                            "description": "test",
                            "weights_present": True,
                            "path": None,
                            "size_bytes": None,
                            "sha256": None,
                            "downloadable": False,
                            "loaded": True,
                            "transfer": self.transfers.get(self.model),
                        },
                        {
                            "name": SAM3,
                            "kind": "sam3",
                            "arch": "sam3",
                            "description": "Meta Segment Anything 3 (840M parameters; gated: accept its licence "
                            "on the hub first)",
                            "weights_present": False,
                            "path": None,
                            "size_bytes": None,
                            "sha256": None,
                            "downloadable": True,
                            "loaded": False,
                            "transfer": self.transfers.get(SAM3),
                        },
                    ]
                },
            )
        if parts[:2] == ["v1", "models"]:
            return self._transfer(http, parts[2], parts[3])
        if method == "POST" and parts == ["v1", "jobs"]:
            return self._submit(http)
        if method == "POST" and parts == ["v1", "estimate"]:
            return self._estimate(http)
        job = self.jobs.get(parts[2])
        if job is None:
            return self._error(
                http, 404, "no_such_job", f"No job '{parts[2]}' (finished jobs are forgotten after 3600 s)."
            )
        if method == "DELETE":
            if job.state not in ("done", "failed", "cancelled"):  # a finished job stays as it is
                job.state = "cancelled"
            return self._send(http, 200, self._status(job))
        if len(parts) == 3:
            return self._send(http, 200, self._poll(job))
        if job.state != "done":
            return self._error(
                http, 409, "not_done", f"Job {job.job_id} is {job.state}, not done; poll GET /v1/jobs/{job.job_id}."
            )
        self.results.append(query)
        if query == "format=gpkg":
            return self._send(http, 200, self._gpkg(job), "application/geopackage+sqlite3")
        if len(job.request["classes"]) > self.geojson_limit:
            return self._error(
                http,
                413,
                "too_large",
                f"The result has {len(job.request['classes'])} polygons, over the "
                f"GeoJSON limit of {self.geojson_limit}: fetch it as a "
                "GeoPackage with ?format=gpkg.",
            )
        return self._send(http, 200, {"type": "FeatureCollection", "features": []}, "application/geo+json")

    def _send(self, http, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        http.send_response(status)
        http.send_header("Content-Type", content_type)
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def _error(self, http, status: int, code: str, message: str) -> None:
        self._send(http, status, {"error": {"code": code, "message": message}})

    def _transfer(self, http, name: str, kind: str) -> None:
        """A download or import of the fake model's or SAM 3's weights: recorded, and running (but a
        download of SAM 3 without the accepted ``hub_token`` fails once it has started)."""
        body = None
        if kind == "import":
            try:
                body = json.loads(http.rfile.read(int(http.headers.get("Content-Length", 0))) or b"null")
            except ValueError:
                return self._error(http, 422, "invalid_request", "Invalid request: body: JSON decode error.")
            self.imports.append(body)
            error = _schema_error(body, "ImportRequest")
            if error:
                return self._error(http, 422, "invalid_request", error)
        else:  # the optional DownloadRequest, recorded as sent (the tests check it against the contract)
            raw = http.rfile.read(int(http.headers.get("Content-Length", 0)))
            try:
                self.downloads.append(json.loads(raw) if raw else None)
            except ValueError:
                self.downloads.append(raw)  # no DownloadRequest: the tests' contract check says so
        if name not in (self.model, SAM3):
            return self._error(
                http, 404, "no_such_model", f"No model '{name}' with a weights file (see GET /v1/models)."
            )
        if body is not None:
            error = _path_error(body["path"])
            if error:
                return self._error(http, *error)
        transfer = {"kind": kind, "state": "running", "done_bytes": 0, "total_bytes": None, "path": None, "error": None}
        self.transfers[name] = transfer
        self._send(http, 202, {"name": name, "transfer": transfer})
        if name == SAM3 and kind == "download":
            sent = self.downloads[-1]
            token = sent.get("hub_token") if isinstance(sent, dict) else None
            if token != self.hub_token:  # the hub refuses the download; the next model list tells why
                why = (
                    f"Downloading '{SAM3}' needs a Hugging Face token."
                    if not token
                    else f"{SAM3_HUB}/resolve/main/sam3.pt refused the download (HTTP 403)."
                )
                self.transfers[name] = dict(transfer, state="failed", error=f"{why} {SAM3_LICENCE_STEP}")

    def _read_job(
        self, http, multipart: bool, without_raster: str, estimate: bool = False
    ) -> tuple[dict, bytes | None] | tuple[int, str, str]:
        """The job body (and the uploaded chip), recorded, or the (status, code, message) the backend refuses
        it with."""
        body = http.rfile.read(int(http.headers.get("Content-Length", 0)))
        content_type = http.headers.get("Content-Type", "")
        chip = None
        try:
            if multipart:
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {content_type}\r\n\r\n".encode() + body
                )
                parts = {
                    p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                    for p in message.iter_parts()
                }
                if "request" not in parts or not parts.get("chip"):
                    return (
                        422,
                        "invalid_request",
                        ("Invalid request: a multipart job needs a 'request' JSON part and a 'chip' file."),
                    )
                request, chip = json.loads(parts["request"]), parts["chip"]
            else:
                request = json.loads(body)
        except ValueError:
            return 422, "invalid_request", "Invalid request: body: JSON decode error."
        if estimate:
            self.estimates.append(request)
        else:
            self.requests.append({"json": request, "chip": chip})
        error = _schema_error(request, "JobRequest")
        if error:
            return 422, "invalid_request", error
        if multipart and request.get("raster") is not None:
            return 422, "invalid_request", "Invalid request: raster: leave it out when uploading a chip."
        if not multipart and request.get("raster") is None:
            return 422, "invalid_request", f"Invalid request: raster: {without_raster}."
        return request, chip

    def _submit(self, http) -> None:
        content_type = http.headers.get("Content-Type", "")
        if not content_type.startswith(("multipart/form-data", "application/json")):
            return self._error(
                http, 415, "unsupported_media_type", "Send the job as application/json or multipart/form-data."
            )
        read = self._read_job(
            http, content_type.startswith("multipart/form-data"), "give a raster path, or upload a chip"
        )
        if isinstance(read[0], int):
            return self._error(http, *read)
        request, chip = read
        error = self._invalid(request, chip)
        if error:
            return self._error(http, *error)
        job = FakeJob(uuid.uuid4().hex[:12], request, chip)
        self.jobs[job.job_id] = job
        self._send(http, 202, {"job_id": job.job_id})

    @staticmethod
    def _invalid(request: dict, chip: bytes | None) -> tuple[int, str, str] | None:
        """(status, code, message) of a schema-valid request the backend refuses, else None; in the
        backend's order: the raster path, the processing area, the vocabulary, the examples."""
        if chip is None:
            error = _path_error(request["raster"])
            if error:
                return error
        mask = request.get("mask")
        if mask is not None:
            items = mask.get("features") if mask.get("type") == "FeatureCollection" else [mask]
            kinds = [(f.get("geometry", f) or {}).get("type") if isinstance(f, dict) else None for f in items or []]
            if not set(kinds) <= {"Polygon", "MultiPolygon"}:
                return 400, "bad_request", "The processing area must be valid Polygon or MultiPolygon features."
            if not kinds:
                return 400, "bad_request", "The processing area holds no polygon: select at least one polygon."
        names = [query.split(",")[0].strip() for query in request["classes"] if query.split(",")[0].strip()]
        if not names:
            return 400, "bad_request", "The vocabulary is empty: type at least one class, e.g. 'building,roof; tree'."
        examples = (request.get("examples") or {}).get("features") or []
        if not all(isinstance((e.get("properties") or {}).get("class"), str) for e in examples):
            return 400, "bad_request", "Every example must be a Polygon feature with a 'class' property naming a class."
        for example in examples:
            if example["properties"]["class"].lower() not in {name.lower() for name in names}:
                return (
                    400,
                    "bad_request",
                    (
                        f"Example class '{example['properties']['class']}' is not in the "
                        f"vocabulary ({', '.join(names)})."
                    ),
                )
        return None

    @staticmethod
    def _mask_geometry(request: dict):
        """The union of the mask's polygons (an OGR geometry), or None without a mask."""
        mask = request.get("mask")
        if mask is None:
            return None
        union = ogr.Geometry(ogr.wkbMultiPolygon)
        for feature in mask["features"]:
            union = union.Union(ogr.CreateGeometryFromJson(json.dumps(feature["geometry"])))
        return union

    def _bbox(self, request: dict) -> list[float]:
        if request.get("bbox") is not None:
            return list(request["bbox"])
        mask = self._mask_geometry(request)
        if mask is not None:
            minx, maxx, miny, maxy = mask.GetEnvelope()
            return [minx, miny, maxx, maxy]
        ds = gdal.Open(request["raster"])
        x0, dx, _, y0, _, dy = ds.GetGeoTransform()
        return [x0, y0 + dy * ds.RasterYSize, x0 + dx * ds.RasterXSize, y0]

    def _estimate(self, http) -> None:
        read = self._read_job(http, False, "an estimate needs a raster path", estimate=True)
        if self.estimate_delay_s:
            threading.Event().wait(self.estimate_delay_s)
        if isinstance(read[0], int):
            return self._error(http, *read)
        request = read[0]
        error = self._invalid(request, None)
        if error:
            return self._error(http, *error)
        options = request.get("options") or {}
        native = abs(gdal.Open(request["raster"]).GetGeoTransform()[1])
        resolution = options.get("resolution") or native * 1024 / 448
        if resolution > self.max_resolution_m:
            return self._error(
                http,
                400,
                "bad_request",
                (
                    f"A resolution of {resolution:g} m per pixel is coarser than the raster itself "
                    f"({2 * self.max_resolution_m:.4g} m on its long side): "
                    f"choose at most {self.max_resolution_m:.4g} m, "
                    "or leave the resolution on auto."
                ),
            )
        minx, miny, maxx, maxy = self._bbox(request)
        width, height = max(1, round((maxx - minx) / resolution)), max(1, round((maxy - miny) / resolution))

        def steps(side):  # 224 px windows every 112 px
            return 1 + max(0, -(-(side - 224) // 112))

        windows = steps(width) * steps(height)
        self._send(
            http,
            200,
            {
                "resolution_m": resolution,
                "rule": "fixed" if options.get("resolution") else "auto",
                "working_size": [height, width],
                "output_size": [max(1, round((maxy - miny) / native)), max(1, round((maxx - minx) / native))],
                "windows": windows,
                "windows_cached": 0,
                "blocks": -(-width // 1024) * -(-height // 1024),
                "estimated_s": 0.25 * windows,
            },
        )

    def _poll(self, job: FakeJob) -> dict:
        if job.state not in ("done", "failed", "cancelled"):
            job.polls += 1
            if self.fail_with:
                job.state = "failed"
            elif self.hold or job.polls < self.polls_until_done:
                job.state = "running"
            else:
                job.state = "done"
        return self._status(job)

    def _status(self, job: FakeJob) -> dict:
        """The job's status, as ``GET /v1/jobs/{id}`` (and ``DELETE``) answer it."""
        instance = job.request.get("mode") == "instance"
        running = job.state == "running"
        progress = 1.0 if job.state == "done" else min(0.9, job.polls / max(1, self.polls_until_done))
        summary = self._summary(job) if instance and job.state == "done" else None
        message = summary["text"] if summary else f"{len(self._objects(job))} polygons" if job.state == "done" else ""
        return {
            "job_id": job.job_id,
            "state": job.state,
            "progress": progress,
            "stage": self._stage(job, instance) if running else job.state,
            "message": message,
            "error": self.fail_with if job.state == "failed" else None,
            "eta_s": self.seconds_per_poll * max(1, self.polls_until_done - job.polls) if running else None,
            "summary": summary,
        }

    def _stage(self, job: FakeJob, instance: bool) -> str:
        block = min(job.polls, self.blocks)
        if instance:
            return f"proposing objects: tile {block}/{self.blocks}, prompts {64 * block}/{64 * self.blocks}"
        return f"segmenting block {block}/{self.blocks}"

    # --- result -----------------------------------------------------------------------------
    @staticmethod
    def _score(index: int, classes: list) -> float:
        return round(0.3 + 0.6 * index / max(1, len(classes) - 1), 3)

    def _proposals(self, job: FakeJob) -> list[tuple[int, str, ogr.Geometry | None]]:
        """(index, class name, geometry) per class: vertical strips of the bbox, inset by 10 %, cut
        to the mask (None: nothing of it inside)."""
        minx, miny, maxx, maxy = self._bbox(job.request)
        mask = self._mask_geometry(job.request)
        classes = job.request["classes"]
        width = (maxx - minx) / len(classes)
        proposals = []
        for i, query in enumerate(classes):
            x0, x1 = minx + width * (i + 0.1), minx + width * (i + 0.9)
            y0, y1 = miny + (maxy - miny) * 0.1, maxy - (maxy - miny) * 0.1
            geometry = ogr.CreateGeometryFromWkt(f"MULTIPOLYGON((({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0})))")
            if mask is not None:
                geometry = ogr.ForceToMultiPolygon(geometry.Intersection(mask))
            proposals.append((i, query.split(",")[0].strip(), None if geometry.IsEmpty() else geometry))
        return proposals

    def _object_threshold(self, job: FakeJob) -> float:
        """The minimum score of what the result keeps (every polygon of a semantic job)."""
        if job.request.get("mode") != "instance":
            return 0.0
        return float((job.request.get("options") or {}).get("object_threshold", 0.3))

    def _objects(self, job: FakeJob) -> list[tuple[int, str, ogr.Geometry]]:
        """The proposals the result keeps."""
        classes = job.request["classes"]
        return [
            (i, name, geometry)
            for i, name, geometry in self._proposals(job)
            if geometry is not None and self._score(i, classes) >= self._object_threshold(job)
        ]

    def _summary(self, job: FakeJob) -> dict:
        """What happened to the proposals, as the backend tells it (one background proposal besides)."""
        proposals, threshold = self._proposals(job), self._object_threshold(job)
        outside = sum(geometry is None for _, _, geometry in proposals)
        kept = len(self._objects(job))
        counts = {
            "proposals": len(proposals) + 1,
            "kept": kept,
            "below_threshold": len(proposals) - outside - kept,
            "threshold": threshold,
            "background": 1,
            "duplicates": 0,
            "outside_extent": outside,
            "too_small": 0,
        }
        text = ", ".join(
            [
                f"{counts['proposals']} proposals",
                f"{kept} kept",
                f"{counts['below_threshold']} below the object threshold {threshold:.2f}",
                f"{counts['background']} background",
                *(
                    f"{counts[key]} {words}"
                    for words, key in (
                        ("duplicates", "duplicates"),
                        ("outside the extent", "outside_extent"),
                        ("too small", "too_small"),
                    )
                    if counts[key]
                ),
            ]
        )
        return {**counts, "text": text}

    def _raster_wkt(self, job: FakeJob) -> str:
        if job.chip is None:
            return gdal.Open(job.request["raster"]).GetProjection()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "chip.tif"
            path.write_bytes(job.chip)
            return gdal.Open(str(path)).GetProjection()

    def _gpkg(self, job: FakeJob) -> bytes:
        """The kept proposals."""
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self._raster_wkt(job))
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "result.gpkg")
            ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
            layer = ds.CreateLayer("rsov", srs, ogr.wkbMultiPolygon)
            instance = job.request.get("mode") == "instance"
            for name, kind in (
                ("class", ogr.OFTString),
                ("class_id", ogr.OFTInteger),
                ("score", ogr.OFTReal),
                ("area_m2", ogr.OFTReal),
                *([("instance_id", ogr.OFTInteger)] if instance else []),
            ):
                layer.CreateField(ogr.FieldDefn(name, kind))
            for number, (i, name, geometry) in enumerate(self._objects(job), start=1):
                feature = ogr.Feature(layer.GetLayerDefn())
                feature.SetField("class", name)
                feature.SetField("class_id", i + 1)
                feature.SetField("score", self._score(i, job.request["classes"]))
                feature.SetField("area_m2", geometry.GetArea())
                if instance:
                    feature.SetField("instance_id", number)
                feature.SetGeometry(geometry)
                layer.CreateFeature(feature)
            ds = None  # noqa: F841 (closes the file)
            return Path(path).read_bytes()


if __name__ == "__main__":
    port, token_file = int(sys.argv[1]), Path(sys.argv[2])
    if not token_file.exists():  # like `rsov serve`, write a token when there is none
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(uuid.uuid4().hex)
    fake = FakeBackend(token=token_file.read_text().strip()).start(port)
    print(f"fake rsov backend on {fake.url}", flush=True)
    threading.Event().wait()
