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
one) and the bbox. Job bodies are recorded in ``requests``, estimate bodies in ``estimates``;
examples of a class outside the vocabulary are refused, as the backend does.
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

from osgeo import gdal, ogr, osr

gdal.UseExceptions()


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
            return self._send(http, 200, {"status": "ok", "version": "0.1.0", "api_version": self.api_version,
                                          "model": self.model, "models": [self.model], "device": "cpu",
                                          "gpu_name": None, "model_ready": True, "model_error": None})
        if http.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(http, 401, "unauthorized", "Missing or wrong bearer token.")
        if method == "GET" and parts == ["v1", "models"]:
            return self._send(http, 200, {"models": [{
                "name": self.model, "kind": "clip", "arch": "fake", "description": "test", "weights_present": True,
                "path": None, "size_bytes": None, "sha256": None, "downloadable": False, "loaded": True,
                "transfer": None}]})
        if method == "POST" and parts == ["v1", "jobs"]:
            return self._submit(http)
        if method == "POST" and parts == ["v1", "estimate"]:
            return self._estimate(http)
        if len(parts) >= 3 and parts[:2] == ["v1", "jobs"] and parts[2] in self.jobs:
            job = self.jobs[parts[2]]
            if method == "DELETE" and len(parts) == 3:
                job.state = "cancelled"
                return self._send(http, 200, {"job_id": job.job_id, "state": "cancelled"})
            if method == "GET" and len(parts) == 3:
                return self._send(http, 200, self._poll(job))
            if method == "GET" and parts[3:] == ["result"]:
                if job.state != "done":
                    return self._error(http, 409, "not_done", "The job is not done.")
                self.results.append(query)
                if query == "format=gpkg":
                    return self._send(http, 200, self._gpkg(job), "application/geopackage+sqlite3")
                if len(job.request["classes"]) > self.geojson_limit:
                    return self._error(http, 413, "too_large", "The result is too large for GeoJSON: "
                                                               "ask for ?format=gpkg.")
                return self._send(http, 200, {"type": "FeatureCollection", "features": []})
        return self._error(http, 404, "not_found", f"No such endpoint {method} {path}.")

    def _send(self, http, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        http.send_response(status)
        http.send_header("Content-Type", content_type)
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def _error(self, http, status: int, code: str, message: str) -> None:
        self._send(http, status, {"error": {"code": code, "message": message}})

    def _submit(self, http) -> None:
        body = http.rfile.read(int(http.headers.get("Content-Length", 0)))
        content_type = http.headers.get("Content-Type", "")
        chip = None
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + body)
            parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                     for p in message.iter_parts()}
            request, chip = json.loads(parts["request"]), parts.get("chip")
        else:
            request = json.loads(body)
        self.requests.append({"json": request, "chip": chip})
        error = self._invalid(request, chip)
        if error:
            return self._error(http, *error)
        names = [query.split(",")[0].strip().lower() for query in request["classes"]]
        for example in (request.get("examples") or {}).get("features", []):
            if example["properties"]["class"].lower() not in names:
                return self._error(http, 400, "bad_request", f"Example class '{example['properties']['class']}' "
                                                             "is not in the vocabulary.")
        job = FakeJob(uuid.uuid4().hex[:12], request, chip)
        self.jobs[job.job_id] = job
        self._send(http, 202, {"job_id": job.job_id})

    @staticmethod
    def _invalid(request: dict, chip: bytes | None) -> tuple[int, str, str] | None:
        """(status, code, message) of a request the backend refuses, else None."""
        if not request.get("classes"):
            return 422, "empty_vocabulary", "The vocabulary is empty."
        if chip is None and not Path(request.get("raster") or "").is_file():
            return 400, "missing_file", f"The raster {request.get('raster')} does not exist."
        mask = request.get("mask")
        if mask is not None:
            name = ((mask.get("crs") or {}).get("properties") or {}).get("name")
            kinds = {(f.get("geometry") or {}).get("type") for f in mask.get("features", [])}
            if not name or not kinds or not kinds <= {"Polygon", "MultiPolygon"}:
                return 400, "bad_mask", "The mask must be polygons with a crs member."
        options = request.get("options") or {}
        if options.get("refine", "none") not in ("none", "sam"):
            return 400, "bad_request", "refine must be 'none' or 'sam'."
        if not 1 <= options.get("points_per_batch", 64) <= 1024:
            return 400, "bad_request", "points_per_batch must be within 1..1024."
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
        request = json.loads(http.rfile.read(int(http.headers.get("Content-Length", 0))))
        self.estimates.append(request)
        if self.estimate_delay_s:
            threading.Event().wait(self.estimate_delay_s)
        error = self._invalid(request, None)
        if error:
            return self._error(http, *error)
        options = request.get("options") or {}
        native = abs(gdal.Open(request["raster"]).GetGeoTransform()[1])
        resolution = options.get("resolution") or native * 1024 / 448
        if resolution <= 0 or resolution > self.max_resolution_m:
            return self._error(http, 400, "bad_resolution", f"The resolution {resolution} m is absurd.")
        minx, miny, maxx, maxy = self._bbox(request)
        width, height = max(1, round((maxx - minx) / resolution)), max(1, round((maxy - miny) / resolution))

        def steps(side):  # 224 px windows every 112 px
            return 1 + max(0, -(-(side - 224) // 112))

        windows = steps(width) * steps(height)
        self._send(http, 200, {
            "resolution_m": resolution, "rule": "fixed" if options.get("resolution") else "auto",
            "working_size": [height, width],
            "output_size": [max(1, round((maxy - miny) / native)), max(1, round((maxx - minx) / native))],
            "windows": windows, "windows_cached": 0, "blocks": -(-width // 1024) * -(-height // 1024),
            "estimated_s": 0.25 * windows})

    def _poll(self, job: FakeJob) -> dict:
        if job.state not in ("done", "failed", "cancelled"):
            job.polls += 1
            if self.fail_with:
                job.state = "failed"
            elif self.hold or job.polls < self.polls_until_done:
                job.state = "running"
            else:
                job.state = "done"
        instance = job.request.get("mode") == "instance"
        running = job.state == "running"
        progress = 1.0 if job.state == "done" else min(0.9, job.polls / max(1, self.polls_until_done))
        summary = self._summary(job) if instance and job.state == "done" else None
        message = summary["text"] if summary else f"{len(self._objects(job))} polygons" if job.state == "done" else ""
        return {"job_id": job.job_id, "state": job.state, "progress": progress,
                "stage": self._stage(job, instance) if running else job.state, "message": message,
                "error": self.fail_with if job.state == "failed" else None,
                "eta_s": self.seconds_per_poll * max(1, self.polls_until_done - job.polls) if running else None,
                "summary": summary}

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
        return [(i, name, geometry) for i, name, geometry in self._proposals(job)
                if geometry is not None and self._score(i, classes) >= self._object_threshold(job)]

    def _summary(self, job: FakeJob) -> dict:
        """What happened to the proposals, as the backend tells it (one background proposal besides)."""
        proposals, threshold = self._proposals(job), self._object_threshold(job)
        outside = sum(geometry is None for _, _, geometry in proposals)
        kept = len(self._objects(job))
        counts = {"proposals": len(proposals) + 1, "kept": kept,
                  "below_threshold": len(proposals) - outside - kept, "threshold": threshold, "background": 1,
                  "duplicates": 0, "outside_extent": outside, "too_small": 0}
        text = ", ".join([f"{counts['proposals']} proposals", f"{kept} kept",
                          f"{counts['below_threshold']} below the object threshold {threshold:.2f}",
                          f"{counts['background']} background",
                          *(f"{counts[key]} {words}" for words, key in (
                              ("duplicates", "duplicates"), ("outside the extent", "outside_extent"),
                              ("too small", "too_small")) if counts[key])])
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
            for name, kind in (("class", ogr.OFTString), ("class_id", ogr.OFTInteger), ("score", ogr.OFTReal),
                               ("area_m2", ogr.OFTReal), *([("instance_id", ogr.OFTInteger)] if instance else [])):
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
