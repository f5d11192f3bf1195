"""`rsov serve` as a real process on 127.0.0.1, spoken to over real HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.transform
from shapely.geometry import box, shape

from rsov.service.client import Client, ClientError

BIN = Path(sys.executable).parent
OEM_BOUNDS = (346000.0, 5647500.0, 346500.0, 5648000.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `rsov serve --model tiny-random`, stopped on close."""

    def __init__(self, folder: Path, *extra: str, model: str = "tiny-random") -> None:
        self.port = free_port()
        self.token_file = folder / "token"
        self.results = folder / "results"
        self.log = open(folder / "server.log", "w")
        env = {**os.environ, "RSOV_CACHE_DIR": str(folder / "cache")}
        self.proc = subprocess.Popen(
            [
                BIN / "rsov",
                "serve",
                "--model",
                model,
                "--port",
                str(self.port),
                "--token-file",
                self.token_file,
                "--results-dir",
                self.results,
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        self.token = self.token_file.read_text().strip()
        self.client = Client(self.url, self.token, timeout=60)

    def http(self, method: str, path: str, token: str | None = "default", timeout: float = 60, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=timeout, **kw)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a stuck server must not outlive its test (and eat the CPU)
            self.proc.kill()
            raise
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def oem(shared_data) -> str:
    return str(shared_data / "openearthmap" / "oem_koeln_50.tif")


def slow_options() -> dict:
    # ~1000 windows of the tiny model: long enough to cancel or to occupy the worker
    return {"long_side": 3600, "max_side": 4096}


def test_docs_are_off_and_the_schema_needs_the_token(server):
    assert server.http("GET", "/openapi.json", token=None).status_code == 401
    assert server.http("GET", "/openapi.json").json()["info"]["title"] == "rsov backend"
    for path in ("/docs", "/redoc"):
        assert server.http("GET", path).status_code == 404


def test_health_needs_no_token(server):
    body = server.http("GET", "/v1/health", token=None).json()
    assert body["status"] == "ok" and body["model"] == "tiny-random" and body["device"] == "cpu"
    assert body["gpu_name"] is None and body["version"] and body["api_version"] == 1
    assert body["fast_precision"] in ("bf16", "fp32", "int8") and body["fast_precision_reason"]


def test_token_file_is_private_and_required(server, oem):
    assert stat.S_IMODE(server.token_file.stat().st_mode) == 0o600
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/models/sam-vit-b/download"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("DELETE", "/v1/jobs/x"),
        ("GET", "/v1/jobs/x/result"),
        ("POST", "/v1/estimate"),
    ]:
        for token in (None, "wrong-token"):
            response = server.http(method, path, token=token, json={"raster": oem, "classes": ["a"]})
            assert response.status_code == 401, (method, path)
            assert "token" in response.json()["error"]["message"]


def test_foreign_host_header_is_refused(server):
    response = server.http("GET", "/v1/health", headers={"Host": "evil.example.com"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "untrusted_host"


def test_models_lists_the_loaded_one(server):
    rows = server.http("GET", "/v1/models").json()["models"]
    loaded = [r for r in rows if r["loaded"]]
    assert [r["name"] for r in loaded] == ["tiny-random"]
    assert any(r["name"] == "ViT-B-16-openai" and not r["weights_present"] for r in rows)


def _transfer_when_finished(server, name: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        row = {r["name"]: r for r in server.http("GET", "/v1/models").json()["models"]}[name]
        if row["transfer"]["state"] != "running" or time.monotonic() > deadline:
            return row["transfer"]
        time.sleep(0.2)


def test_weights_import_is_verified_and_downloads_say_why_they_fail(server, tmp_path):
    wrong = tmp_path / "sam_vit_b_01ec64.pth"
    wrong.write_bytes(b"not the real SAM" * 1000)
    response = server.http("POST", "/v1/models/sam-vit-b/import", json={"path": str(wrong)})
    assert response.status_code == 202 and response.json()["transfer"]["kind"] == "import"
    transfer = _transfer_when_finished(server, "sam-vit-b")
    assert transfer["state"] == "failed" and "ec2df62732614e57" in transfer["error"]
    assert transfer["done_bytes"] == transfer["total_bytes"] == 16000  # hashed with progress
    assert server.http("POST", "/v1/models/sam-vit-b/import", json={"path": "relative.pth"}).status_code == 400
    assert server.http("POST", "/v1/models/no-such-model/download").json()["error"]["code"] == "no_such_model"
    assert server.http("POST", "/v1/models/tiny-random/download").status_code == 404
    assert server.http("POST", "/v1/models/sam-vit-l/download").status_code == 202  # no internet here
    transfer = _transfer_when_finished(server, "sam-vit-l")
    assert transfer["state"] == "failed" and "sam_vit_l_0b3195.pth" in transfer["error"]


def test_a_backend_without_weights_starts_and_loads_them_once_imported(tmp_path, oem):
    """No weights: the backend still serves health and models (so the dock can fetch them), refuses
    jobs with 503 weights_missing, and loads the model once its weights are imported."""
    import open_clip
    import torch

    torch.manual_seed(0)
    weights = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), weights)  # random weights, the real architecture
    srv = Server(tmp_path, model="RemoteCLIP-ViT-B-32")
    try:
        health = srv.http("GET", "/v1/health", token=None).json()
        assert health["model_ready"] is False and "RemoteCLIP-ViT-B-32.pt" in health["model_error"]
        job = {"raster": oem, "classes": ["building", "tree"]}
        for path in ("/v1/jobs", "/v1/estimate"):
            response = srv.http("POST", path, json=job)
            assert response.status_code == 503 and response.json()["error"]["code"] == "weights_missing"
        assert srv.http("POST", "/v1/models/RemoteCLIP-ViT-B-32/import", json={"path": str(weights)}).status_code == 202
        transfer = _transfer_when_finished(srv, "RemoteCLIP-ViT-B-32")
        assert transfer["state"] == "done", transfer
        health = srv.http("GET", "/v1/health", token=None).json()
        assert health["model_ready"] is True and health["model_error"] is None
        assert srv.http("POST", "/v1/estimate", json=job).status_code == 200
    finally:
        srv.close()


def test_job_runs_to_done_with_growing_progress(server, oem):
    job = server.client.submit(
        oem,
        ["building,roof", "tree", "road"],
        bbox=(346100, 5647600, 346400, 5647900),
        bbox_crs="EPSG:25832",
        long_side=1024,
    )
    seen = []
    final = server.client.wait(job, poll_s=0.02, on_status=seen.append)
    assert final["state"] == "done" and final["progress"] == 1.0 and final["error"] is None
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress) and len(set(progress)) >= 2
    geojson = server.client.result(job)
    assert geojson["type"] == "FeatureCollection"
    assert geojson["crs"]["properties"]["name"] == "EPSG:25832"
    extent = box(346100, 5647600, 346400, 5647900).buffer(0.01)
    for feature in geojson["features"]:
        assert set(feature["properties"]) >= {"class", "class_id", "score", "area_m2"}
        assert feature["properties"]["class"] in {"building", "tree", "road"}
        assert extent.contains(shape(feature["geometry"]))
    gpkg = server.client.result(job, format="gpkg")
    path = server.results.parent / "dl.gpkg"
    path.write_bytes(gpkg)
    info = pyogrio.read_info(path)
    assert info["crs"] == "EPSG:25832" and info["features"] == len(geojson["features"])


def test_cancel_mid_job(server, oem):
    job = server.client.submit(oem, ["building"], **slow_options())
    deadline = time.monotonic() + 120
    while (status := server.client.status(job))["progress"] < 0.1 or status["eta_s"] is None:
        assert time.monotonic() < deadline, status  # the time left is known once 2 % and half a second are done
        time.sleep(0.05)
    elapsed = time.monotonic() - deadline + 120
    assert 0 < status["eta_s"] < elapsed * (1 - status["progress"]) / status["progress"] + 1, status  # the rate so far
    answer = server.client.cancel(job)  # the truth: running until its next window, then cancelled
    assert (answer["state"], answer["stage"]) == ("running", "cancelling") or answer["state"] == "cancelled"
    started = time.monotonic()
    final = server.client.wait(job, timeout=60, poll_s=0.02)
    assert final["state"] == "cancelled" and final["progress"] < 0.9
    assert time.monotonic() - started < 5  # it stopped at its next window, not at the end
    with pytest.raises(ClientError) as err:
        server.client.result(job)
    assert err.value.status == 409


def test_two_concurrent_jobs_both_finish(server, oem):
    def run(classes):
        job = server.client.submit(oem, classes, long_side=672)
        features = server.client.result(job)["features"] if server.client.wait(job)["state"] == "done" else None
        return sorted((f["properties"]["class"], round(f["properties"]["area_m2"], 3)) for f in features or [])

    vocabularies = [["building", "tree"], ["water", "road", "grass"]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, vocabularies))
    alone = [run(classes) for classes in vocabularies]
    assert together == alone and together[1]  # each job answers as if it ran alone, and polygons came back


def test_upload_a_chip(server, oem):
    with open(oem, "rb") as chip:
        response = server.http(
            "POST",
            "/v1/jobs",
            files={"chip": ("chip.tif", chip, "image/tiff")},
            data={"request": '{"classes": ["building", "tree"], "bbox": [346000, 5647500, 346200, 5647700]}'},
        )
    assert response.status_code == 202, response.text
    job = response.json()["job_id"]
    assert server.client.wait(job)["state"] == "done"
    assert server.client.result(job)["crs"]["properties"]["name"] == "EPSG:25832"


def bad_requests(oem, tmp: Path, token_file: Path):
    text = tmp / "notes.tif"
    text.write_text("not a raster")
    return [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid json"),
        ({"json": {"raster": oem, "classes": ["a"], "colour": "red"}}, 422, "colour"),
        ({"json": {"raster": "/nowhere/x.tif", "classes": ["a"]}}, 400, "not found"),
        ({"json": {"raster": "relative/x.tif", "classes": ["a"]}}, 400, "absolute"),
        ({"json": {"raster": "/vsicurl/http://example.com/x.tif", "classes": ["a"]}}, 400, "local file"),
        ({"json": {"raster": str(text), "classes": ["a"]}}, 400, "reads GeoTIFF"),
        ({"json": {"raster": oem + "\x00.tif", "classes": ["a"]}}, 400, "control characters"),
        ({"json": {"raster": oem, "classes": ["a"], "bbox": [1e300, 1e300, 1e308, 1e308]}}, 400, "does not overlap"),
        (
            {
                "content": b'{"raster": "%s", "classes": ["a"], "bbox": [0, 0, Infinity, 1]}' % oem.encode(),
                "headers": {"content-type": "application/json"},
            },
            422,
            "bbox",
        ),
        (
            {
                "json": {
                    "raster": oem,
                    "classes": ["a"],
                    "bbox": [1, 2, 3, 4],
                    "bbox_crs": "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad",
                }
            },
            400,
            "not recognised",
        ),
        ({"json": {"raster": oem, "classes": ["a"], "options": {"resolution": 1e-9}}}, 400, "finer"),
        ({"json": {"raster": str(token_file), "classes": ["a"]}}, 403, "does not read"),
        ({"json": {"raster": oem, "classes": ["a"], "bbox": [0, 0, 1, 1]}}, 400, "does not overlap"),
        ({"json": {"raster": oem, "classes": [" , "]}}, 400, "is empty"),
        ({"json": {"raster": oem, "classes": []}}, 400, "vocabulary is empty"),
        ({"json": {"raster": oem, "classes": [f"c{i}" for i in range(1000)]}}, 422, "classes"),
        ({"json": {"raster": oem, "classes": ["a"], "model": "ViT-H-14"}}, 400, "not loaded"),
        ({"json": {"raster": oem, "classes": ["a"], "bbox_crs": "EPSG:0", "bbox": [1, 2, 3, 4]}}, 400, "EPSG:0"),
        ({"json": {"raster": oem, "classes": ["a"], "options": {"threshold": 3}}}, 422, "threshold"),
        ({"json": {"raster": oem, "classes": ["a"], "options": {"bands": [7, 8, 9]}}}, 400, "band"),
        ({"content": b"raster=x", "headers": {"content-type": "text/plain"}}, 415, "json"),
    ]


def test_every_bad_request_gets_a_4xx_sentence(server, oem, tmp_path):
    for kwargs, status, needle in bad_requests(oem, tmp_path, server.token_file):
        response = server.http("POST", "/v1/jobs", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        message = response.json()["error"]["message"]
        assert needle.lower() in message.lower(), (needle, message)
    assert server.http("GET", "/v1/jobs/nope").status_code == 404
    assert server.http("GET", "/v1/health").status_code == 200  # still serving


def test_failing_job_is_reported_and_server_keeps_serving(server, oem, tmp_path):
    copy = tmp_path / "soon_broken.tif"
    shutil.copy(oem, copy)
    blocker = server.client.submit(oem, ["building"], **slow_options())  # keeps the worker busy
    victim = server.client.submit(str(copy), ["building"])
    copy.write_bytes(b"garbage" * 100)  # the file breaks while the job waits
    server.client.cancel(blocker)
    final = server.client.wait(victim, timeout=120)
    assert final["state"] == "failed" and "not a raster this backend reads" in final["error"]
    after = server.client.submit(oem, ["tree"])
    assert server.client.wait(after)["state"] == "done"


def test_allow_list_queue_limit_and_upload_limit(tmp_path, oem):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    inside = allowed / "oem.tif"
    shutil.copy(oem, inside)
    srv = Server(tmp_path, "--allow-dir", str(allowed), "--max-queue", "1", "--max-upload-mb", "1")
    try:
        response = srv.http("POST", "/v1/jobs", json={"raster": oem, "classes": ["a"]})
        assert response.status_code == 403 and "outside the directories" in response.json()["error"]["message"]
        first = srv.client.submit(str(inside), ["a"], **slow_options())
        deadline = time.monotonic() + 60
        while srv.client.status(first)["state"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        srv.client.submit(str(inside), ["b"])  # waits in the queue
        with pytest.raises(ClientError) as err:
            srv.client.submit(str(inside), ["c"])
        assert err.value.status == 429
        srv.client.cancel(first)
        big = b"\0" * (2 << 20)
        response = srv.http("POST", "/v1/jobs", files={"chip": ("c.tif", big)}, data={"request": '{"classes": ["a"]}'})
        assert response.status_code == 413
    finally:
        srv.close()


def test_refuses_non_loopback_without_flag(tmp_path):
    proc = subprocess.run(
        [BIN / "rsov", "serve", "--model", "tiny-random", "--host", "0.0.0.0", "--token-file", tmp_path / "t"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr


def test_openapi_fuzz_finds_no_server_errors(server):
    proc = subprocess.run(
        [
            BIN / "st",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--header",
            f"Authorization: Bearer {server.token}",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_instance_job_with_examples(server, oem):
    examples = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [
            {
                "type": "Feature",
                "properties": {"class": "building"},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[346100, 5647700], [346120, 5647700], [346120, 5647720], [346100, 5647700]]],
                },
            }
        ],
    }
    body = {
        "raster": oem,
        "classes": ["building", "car"],
        "mode": "instance",
        "examples": examples,
        "options": {
            "points_per_side": 3,
            "pred_iou": -1,
            "stability": -1,
            "object_threshold": 0,
            "class_prompts": False,
            "background": [],
        },
    }
    response = server.http("POST", "/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()["job_id"]
    status = server.client.wait(job, timeout=300)
    assert status["state"] == "done" and status["eta_s"] is None
    features = server.client.result(job)["features"]
    assert features and all("instance_id" in f["properties"] for f in features)
    summary = status["summary"]  # where every proposal went, and the same words as the message
    assert summary["kept"] == len(features) and status["message"] == summary["text"]
    assert summary["proposals"] == sum(
        summary[k] for k in ("kept", "below_threshold", "background", "duplicates", "outside_extent", "too_small")
    )
    bad = dict(
        body,
        examples={"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": None}]},
    )
    response = server.http("POST", "/v1/jobs", json=bad)
    assert response.status_code == 400 and "class" in response.json()["error"]["message"]


def test_finished_results_expire(tmp_path, oem):
    srv = Server(tmp_path, "--results-ttl", "1")
    try:
        job = srv.client.submit(oem, ["tree"])
        assert srv.client.wait(job)["state"] == "done"
        assert (srv.results / job / "result.gpkg").is_file()
        deadline = time.monotonic() + 30
        while (srv.results / job).exists():  # the worker expires it without any new request
            assert time.monotonic() < deadline, "results were not cleaned up"
            time.sleep(0.2)
        assert srv.http("GET", f"/v1/jobs/{job}").status_code == 404
    finally:
        srv.close()


def test_examples_are_checked_before_the_job_is_queued(server, oem):
    def example(cls, x0, y0):
        return {
            "type": "Feature",
            "properties": {"class": cls},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + 10, y0], [x0 + 10, y0 + 10], [x0, y0]]]},
        }

    crs = {"type": "name", "properties": {"name": "EPSG:25832"}}
    for feature, needle in [
        (example("car", 346100, 5647700), "not in the vocabulary"),
        (example("building", 0, 0), "does not overlap"),
    ]:
        body = {
            "raster": oem,
            "classes": ["building"],
            "mode": "instance",
            "examples": {"type": "FeatureCollection", "crs": crs, "features": [feature]},
        }
        response = server.http("POST", "/v1/jobs", json=body)
        assert response.status_code == 400 and needle in response.json()["error"]["message"], response.text


def left_half_mask() -> dict:
    x0, y0, x1, y1 = OEM_BOUNDS
    xm = (x0 + x1) / 2
    ring = [[x0, y0], [xm, y0], [xm, y1], [x0, y1], [x0, y0]]
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }


def test_estimate_says_what_a_job_costs(server, oem):
    whole = server.client.estimate(oem, ["building", "tree"])
    assert whole["rule"] == "auto" and abs(whole["resolution_m"] - 0.5 * 1024 / 448) < 1e-9
    assert whole["output_size"] == [1000, 1000] and whole["blocks"] == 1 and whole["windows"] == 9
    assert 0 <= whole["windows_cached"] <= whole["windows"] and whole["estimated_s"] >= 0
    fixed = server.client.estimate(oem, ["tree"], mask=left_half_mask(), resolution=0.5, block_size=256)
    assert fixed["rule"] == "fixed" and fixed["output_size"] == [1000, 500] and fixed["blocks"] == 8
    assert fixed["windows_cached"] == 0 and fixed["estimated_s"] > 0  # nothing at 0.5 m was encoded yet
    with pytest.raises(ClientError) as error:
        server.client.estimate(oem, ["tree"], resolution=1e-9)
    assert error.value.status == 400 and "finer" in str(error.value)


def test_a_masked_whole_raster_job_streams_block_by_block(server, oem):
    job = server.client.submit(oem, ["building,roof", "tree", "road"], mask=left_half_mask(), block_size=256)
    seen = []
    final = server.client.wait(job, poll_s=0.01, on_status=seen.append)
    assert final["state"] == "done", final
    assert any("block" in s["stage"] and "/8" in s["stage"] for s in seen)  # progress per block
    geojson = server.client.result(job)
    half = box(OEM_BOUNDS[0], OEM_BOUNDS[1], (OEM_BOUNDS[0] + OEM_BOUNDS[2]) / 2, OEM_BOUNDS[3]).buffer(0.01)
    assert geojson["features"] and all(half.contains(shape(f["geometry"])) for f in geojson["features"])


def test_large_results_are_served_as_geopackage_only(tmp_path, oem):
    srv = Server(tmp_path, "--max-geojson-features", "0")
    try:
        job = srv.client.submit(oem, ["building", "tree", "road"])
        assert srv.client.wait(job)["state"] == "done"
        response = srv.http("GET", f"/v1/jobs/{job}/result")
        assert response.status_code == 413 and "?format=gpkg" in response.json()["error"]["message"]
        gpkg = srv.http("GET", f"/v1/jobs/{job}/result?format=gpkg")
        assert gpkg.status_code == 200 and gpkg.content[:16] == b"SQLite format 3\x00"
    finally:
        srv.close()


def test_a_vrt_is_refused_wherever_it_points(server, oem, tmp_path):
    """A VRT can name any file, archive or URL as its source: the backend reads no VRT, by path or upload."""
    vrt = tmp_path / "inside.tif"  # a VRT under a GeoTIFF's name
    with rasterio.open(oem) as src:
        vrt.write_text(f"""<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">
  <VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename>{oem}</SourceFilename>
  <SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>""")
    with rasterio.open(vrt) as ds:  # GDAL itself reads it, whatever its name
        assert ds.driver == "VRT"
    response = server.http("POST", "/v1/jobs", json={"raster": str(vrt), "classes": ["a"]})
    assert response.status_code == 400 and "no VRT" in response.json()["error"]["message"]
    upload = server.http(
        "POST",
        "/v1/jobs",
        files={"request": (None, '{"classes": ["a"]}'), "chip": ("chip.tif", vrt.read_bytes(), "image/tiff")},
    )
    assert upload.status_code == 400 and "no VRT" in upload.json()["error"]["message"]


def test_a_vrt_over_a_fifo_is_refused_and_the_server_keeps_answering(server, tmp_path):
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    vrt = tmp_path / "pipe_source.tif"
    vrt.write_text(f"""<VRTDataset rasterXSize="10" rasterYSize="10"><VRTRasterBand dataType="Byte" band="1">
  <SimpleSource><SourceFilename>{fifo}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand></VRTDataset>""")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        attempt = pool.submit(server.http, "POST", "/v1/jobs", json={"raster": str(vrt), "classes": ["a"]})
        started = time.monotonic()
        assert server.http("GET", "/v1/health", token=None, timeout=1).status_code == 200
        assert time.monotonic() - started < 1
        response = attempt.result(timeout=10)
    assert response.status_code == 400 and "no VRT" in response.json()["error"]["message"]


def test_a_fifo_is_refused_before_anything_reads_it(server, tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    started = time.monotonic()
    response = server.http("POST", "/v1/jobs", json={"raster": str(fifo), "classes": ["a"]})
    assert response.status_code == 400 and "not a regular file" in response.json()["error"]["message"]
    assert time.monotonic() - started < 2 and server.http("GET", "/v1/health", token=None).status_code == 200


def test_a_huge_header_is_refused_from_the_header(server, tmp_path):
    huge = tmp_path / "huge.tif"  # 200000 x 200000 px declared, a few kB on disk
    with rasterio.open(
        huge,
        "w",
        driver="GTiff",
        width=200_000,
        height=200_000,
        count=3,
        dtype="uint8",
        tiled=True,
        sparse_ok=True,
        crs="EPSG:25832",
        transform=rasterio.transform.from_origin(346000, 5648000, 0.5, 0.5),
    ):
        pass  # nothing written: the tiles stay sparse
    assert huge.stat().st_size < 10 << 20
    started = time.monotonic()
    response = server.http("POST", "/v1/jobs", json={"raster": str(huge), "classes": ["a"]})
    assert time.monotonic() - started < 2
    assert response.status_code == 400 and "over this backend's limits" in response.json()["error"]["message"]


def test_complex_data_is_a_client_error(server, tmp_path):
    path = tmp_path / "complex.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="complex64",
        crs="EPSG:25832",
        transform=rasterio.transform.from_origin(346000, 5648000, 0.5, 0.5),
    ) as ds:
        ds.write(np.ones((1, 64, 64), dtype=np.complex64))
    response = server.http("POST", "/v1/jobs", json={"raster": str(path), "classes": ["a"]})
    assert response.status_code == 400 and "complex" in response.json()["error"]["message"]


def test_bodies_are_capped_while_they_are_read(tmp_path, oem):
    srv = Server(tmp_path, "--max-upload-mb", "1", "--max-json-mb", "0.01")
    try:
        big_json = {
            "raster": oem,
            "classes": ["a"],
            "mask": {"type": "FeatureCollection", "features": [], "padding": "x" * 20_000},
        }
        response = srv.http("POST", "/v1/jobs", json=big_json)
        assert response.status_code == 413 and "request body" in response.json()["error"]["message"]

        def chunks():  # chunked: no Content-Length to refuse it by
            yield b'--B\r\nContent-Disposition: form-data; name="chip"; filename="c.tif"\r\n\r\n'
            for _ in range(300):
                yield b"\0" * (1 << 20)

        response = srv.http(
            "POST", "/v1/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=B"}
        )
        assert response.status_code == 413 and "upload" in response.json()["error"]["message"]
        assert srv.http("GET", "/v1/health", token=None).status_code == 200
        leftovers = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in leftovers) <= 2 << 20  # nothing above the cap reached disk
    finally:
        srv.close()


def test_a_restarted_backend_serves_finished_results_and_forgets_nothing_else(tmp_path, oem):
    srv = Server(tmp_path)
    done = srv.client.submit(oem, ["building", "tree"])
    assert srv.client.wait(done)["state"] == "done"
    running = srv.client.submit(oem, ["building"], **slow_options())
    while srv.client.status(running)["state"] != "running":
        time.sleep(0.05)
    orphan = srv.results / "0123abcd"  # a job folder without a record: an upload that crashed
    orphan.mkdir()
    (orphan / "chip.tif").write_bytes(b"partial")
    (srv.results / done / ".result.gpkg.tmp").mkdir()  # an atomic write cut short
    srv.proc.kill()  # no clean shutdown
    srv.proc.wait(timeout=30)
    srv.log.close()
    again = Server(tmp_path)
    try:
        assert again.client.status(done)["state"] == "done"
        assert again.client.result(done)["type"] == "FeatureCollection"
        assert again.http("GET", f"/v1/jobs/{done}/result?format=gpkg").status_code == 200
        failed = again.client.status(running)
        assert failed["state"] == "failed" and "restarted" in failed["error"]
        assert not orphan.exists() and not (again.results / done / ".result.gpkg.tmp").exists()
    finally:
        again.close()


def test_a_world_writable_results_folder_is_refused(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o777)
    proc = subprocess.run(
        [
            BIN / "rsov",
            "serve",
            "--model",
            "tiny-random",
            "--port",
            str(free_port()),
            "--token-file",
            tmp_path / "token",
            "--results-dir",
            results,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "writable by everyone" in proc.stderr


def test_a_folder_swapped_for_a_link_after_submit_is_not_read(tmp_path, oem):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "dir").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(oem, allowed / "dir" / "x.tif")
    shutil.copy(oem, outside / "x.tif")
    srv = Server(tmp_path, "--allow-dir", str(allowed))
    try:
        blocker = srv.client.submit(str(allowed / "dir" / "x.tif"), ["building"], **slow_options())
        job = srv.client.submit(str(allowed / "dir" / "x.tif"), ["tree"])  # accepted: the path is allowed now
        shutil.rmtree(allowed / "dir")
        (allowed / "dir").symlink_to(outside)  # ...and then it leads elsewhere
        srv.client.cancel(blocker)
        final = srv.client.wait(job)
        assert final["state"] == "failed" and "outside the directories" in final["error"], final
    finally:
        srv.close()


def hostile_jobs(oem: str, token_file: Path, seed: int = 0, count: int = 60) -> list[dict]:
    """Job bodies on a real, allowed raster, past the path checks, with hostile numbers, CRSs and options."""
    import random

    rng = random.Random(seed)
    numbers = [0, -0.0, 1e-300, 1e300, -1e300, 1.7e308, 346250.0, 5647750.0, 2**63, -(2**63), 1e-9, 1e9]
    crss = [
        None,
        "EPSG:25832",
        "EPSG:4326",
        "EPSG:999999",
        "+proj=pipeline +step +proj=axisswap +order=2,1",
        "+proj=longlat +datum=WGS84",
        "GEOGCS[",
        "urn:ogc:def:crs:EPSG::3857",
        "",
        "\x00",
        "EPSG:4326" * 500,
    ]
    options = [
        {"resolution": rng.choice([1e-12, 1e12, 0.5, 3.3])},
        {"long_side": 16},
        {"max_side": 16},
        {"block_size": 64},
        {"bands": [1, 1, 1]},
        {"bands": [0]},
        {"templates": str(token_file)},
        {"templates": "/dev/zero"},
        {"rotations": [90, 270]},
        {"dec_keep": 1e-9},
        {"threshold": 1.0},
        {"simplify": 100},
        {"min_area": 1e300},
        {"tile": 64, "tile_overlap": 31},
    ]
    masks = [
        None,
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
        {"type": "FeatureCollection", "features": []},
        {"type": "Point", "coordinates": [0, 0]},
        {
            "type": "Polygon",
            "coordinates": [[[346100, 5647600], [346300, 5647600], [346300, 5647900], [346100, 5647600]]],
            "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        },
        {
            "crs": {"type": "name", "properties": {"name": "+proj=pipeline"}},
            "type": "Polygon",
            "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]],
        },
    ]
    jobs = []
    for _ in range(count):
        body = {"raster": oem, "classes": ["building", "tree"], "options": rng.choice(options)}
        if rng.random() < 0.7:
            body["bbox"] = sorted(rng.choice(numbers) for _ in range(2)) + sorted(rng.choice(numbers) for _ in range(2))
            body["bbox"] = [body["bbox"][0], body["bbox"][2], body["bbox"][1], body["bbox"][3]]
            body["bbox_crs"] = rng.choice(crss)
        if rng.random() < 0.4:
            body["mask"] = rng.choice(masks)
        if rng.random() < 0.2:
            body["mode"] = "instance"
        jobs.append(body)
    return jobs


def test_hostile_options_on_a_real_raster_never_get_a_server_error(tmp_path, oem):
    srv = Server(tmp_path, "--max-queue", "64")
    try:
        statuses = []
        for body in hostile_jobs(oem, srv.token_file):
            for path in ("/v1/estimate", "/v1/jobs"):
                response = srv.http("POST", path, json=body)
                assert response.status_code < 500, (path, body, response.text)
                if response.status_code >= 400:
                    assert response.json()["error"]["message"].endswith((".", ")")), response.text
                elif path == "/v1/jobs":
                    srv.client.cancel(response.json()["job_id"])
                statuses.append(response.status_code)
        assert {400, 422} & set(statuses) and {200, 202} & set(statuses)  # some refused, some accepted
        assert srv.http("GET", "/v1/health", token=None).status_code == 200
    finally:
        srv.close()


def test_a_semantic_job_refined_with_sam_regions(server, oem):
    body = {"raster": oem, "classes": ["building", "tree"], "options": {"refine": "sam", "points_per_side": 4}}
    response = server.http("POST", "/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    status = server.client.wait(response.json()["job_id"], timeout=300)
    assert status["state"] == "done", status
    assert status["summary"] is None and status["message"].endswith("polygons")
    decimated = dict(body, options={"refine": "sam", "max_side": 256})
    response = server.http("POST", "/v1/jobs", json=decimated)
    assert response.status_code == 400 and "raster's own pixels" in response.json()["error"]["message"]
    response = server.http("POST", "/v1/jobs", json=dict(body, options={"refine": "crf"}))
    assert response.status_code == 422


def test_sam3_jobs_in_both_modes_and_their_bad_input(server, oem):
    """The sam3 engine through HTTP (the tiny random SAM 3 the tiny backend defaults to)."""
    bbox = (346100.0, 5647600.0, 346300.0, 5647800.0)
    base = {"raster": oem, "bbox": bbox, "bbox_crs": "EPSG:25832", "classes": ["building,roof", "grass"]}
    options = {"engine": "sam3", "object_threshold": 0.1, "tile": 512, "tile_overlap": 64}
    for mode in ("instance", "semantic"):
        response = server.http("POST", "/v1/jobs", json={**base, "mode": mode, "options": options})
        assert response.status_code == 202, response.text
        status = server.client.wait(response.json()["job_id"], timeout=300)
        assert status["state"] == "done", status
        features = server.client.result(response.json()["job_id"])["features"]
        assert features  # threshold 0.1 keeps the random model's detections; semantic adds grass from CLIP
        if mode == "instance":
            assert status["summary"]["kept"] == len(features)
            assert all("instance_id" in f["properties"] for f in features)
            assert {f["properties"]["class"] for f in features} <= {"building", "grass"}
        else:
            assert status["summary"] is None
    long = {**base, "classes": [" ".join(["roof"] * 40)], "options": options}
    response = server.http("POST", "/v1/jobs", json=long)
    assert response.status_code == 400 and "SAM 3 reads at most 30" in response.json()["error"]["message"]
    unknown = {**base, "options": {"engine": "sam4"}}
    response = server.http("POST", "/v1/jobs", json=unknown)
    assert response.status_code == 422 and "sam3" in response.text
