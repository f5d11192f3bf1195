"""The client, over QGIS's network stack, against a fake server that follows the backend's HTTP
contract, and against tiny servers of its own: a proxy, a backend that never answers, a recorder."""

import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import free_port
from qgis.core import QgsApplication, QgsNetworkAccessManager, QgsSettings, QgsTask
from qgis.PyQt.QtCore import QTimer

from rsov_qgis.backend_client import (
    BackendClient,
    BackendError,
    InstanceOptions,
    JobCancelled,
    JobRequest,
    JobStatus,
    ModelInfo,
    SegmentOptions,
    Transfer,
    first_sentence,
    is_loopback_url,
    rough_duration,
)


@pytest.fixture
def client(fake_backend):
    return BackendClient(fake_backend.url, fake_backend.token_file, timeout=5)


def _request(raster) -> JobRequest:
    return JobRequest(
        classes=["building,roof", "tree"],
        bbox=(1.0, 2.0, 3.0, 4.0),
        bbox_crs="EPSG:25832",
        raster=str(raster),
        options=SegmentOptions(threshold=0.4),
    )


def test_health_and_models(client, fake_backend):
    health = client.health()
    assert health.model == "fake-model" and health.device == "cpu" and health.gpu_name is None
    assert health.describe() == "rsov 0.1.0, model fake-model on CPU"
    assert client.models()[0].name == "fake-model"


def test_model_entries_transfers_and_first_sentences():
    row = {
        "name": "RemoteCLIP-ViT-B-32",
        "kind": "clip",
        "arch": "ViT-B-32",
        "description": "RemoteCLIP",
        "weights_present": False,
        "path": None,
        "size_bytes": None,
        "sha256": None,
        "downloadable": True,
        "loaded": False,
        "transfer": {
            "kind": "download",
            "state": "running",
            "done_bytes": 120_400_000,
            "total_bytes": 351_000_000,
            "path": None,
            "error": None,
        },
    }
    info = ModelInfo.from_json(row)
    assert info.label() == "RemoteCLIP-ViT-B-32 — missing, size unknown" and info.takes_weights
    assert info.transfer.amount() == "120 of 351 MB" and not info.transfer.finished
    present = ModelInfo.from_json(dict(row, weights_present=True, size_bytes=605_000_000, transfer=None))
    assert present.label() == "RemoteCLIP-ViT-B-32 — present, 605 MB" and present.transfer is None
    tiny = ModelInfo.from_json(dict(row, name="tiny-random", weights_present=True, downloadable=False, transfer=None))
    assert tiny.label() == "tiny-random — no weights needed" and not tiny.takes_weights
    assert Transfer("import", "running", 5_000_000).amount() == "5 MB"
    assert (
        first_sentence("Weights for 'x' (from https://h/x.pt) are missing. Run `rsov models`.")
        == "Weights for 'x' (from https://h/x.pt) are missing."
    )


def test_request_json_follows_the_contract(oem_raster):
    body = _request(oem_raster).to_json()
    assert body == {
        "raster": str(oem_raster),
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "bbox_crs": "EPSG:25832",
        "classes": ["building,roof", "tree"],
        "mode": "semantic",
        "options": {"threshold": 0.4},
    }
    chip_body = JobRequest(["a"], None, None).to_json()
    assert "raster" not in chip_body and chip_body["bbox"] is None
    examples = {"type": "FeatureCollection", "features": []}
    assert "examples" not in JobRequest(["a"], None, None, examples=examples).to_json()  # semantic jobs take none
    instance = _request(oem_raster)
    instance.instance, instance.examples = InstanceOptions(points_per_side=4), examples
    body = instance.to_json()
    assert body["mode"] == "instance" and body["examples"] == examples
    assert body["options"] == {
        "threshold": 0.4,
        "object_threshold": 0.3,
        "points_per_side": 4,
        "pred_iou": 0.8,
        "stability": 0.9,
        "class_prompts": True,
        "points_per_batch": 64,
    }


def test_refine_goes_with_semantic_jobs_only_and_points_per_batch_with_instance_jobs(oem_raster):
    request = _request(oem_raster)
    request.options.refine = "sam"
    assert request.to_json()["options"] == {"threshold": 0.4, "refine": "sam"}
    request.instance = InstanceOptions(points_per_batch=16)
    options = request.to_json()["options"]
    assert "refine" not in options and options["points_per_batch"] == 16  # instance mode has no refine
    assert request.options.refine == "sam"  # the request itself keeps it, for a semantic job again


def test_rough_durations():
    known = {
        0: "under 1 s",
        0.4: "under 1 s",
        0.6: "about 1 s",
        40: "about 40 s",
        59.4: "about 59 s",
        59.6: "about 1 min",
        89: "about 1 min",
        90: "about 2 min",
        150: "about 3 min",
        3569: "about 59 min",
        3570: "about 1 h 0 min",
        3910: "about 1 h 5 min",
        26 * 3600: "about 26 h 0 min",
    }
    assert {seconds: rough_duration(seconds) for seconds in known} == known


SUMMARY = {
    "proposals": 57,
    "kept": 0,
    "below_threshold": 50,
    "threshold": 0.3,
    "background": 7,
    "duplicates": 0,
    "outside_extent": 0,
    "too_small": 0,
    "text": "57 proposals, 0 kept, 50 below the object threshold 0.30, 7 background",
}


def test_job_status_with_and_without_eta_and_summary():
    running = JobStatus.from_json(
        {
            "job_id": "j",
            "state": "running",
            "progress": 0.4,
            "eta_s": 40,
            "stage": "proposing objects: tile 2/4, prompts 128/320",
            "summary": None,
        }
    )
    assert running.eta_s == 40.0 and running.summary is None and running.summary_text == ""
    assert running.progress_text() == "proposing objects: tile 2/4, prompts 128/320 — about 40 s left"
    older = JobStatus.from_json({"job_id": "j", "state": "running", "stage": "segmenting block 1/3"})
    assert (older.eta_s, older.summary) == (None, None) and older.progress_text() == "segmenting block 1/3"
    assert JobStatus.from_json({"job_id": "j", "state": "queued", "eta_s": None}).progress_text() == "queued"
    done = JobStatus.from_json(
        {
            "job_id": "j",
            "state": "done",
            "progress": 1.0,
            "stage": "done",
            "eta_s": 0,
            "message": SUMMARY["text"],
            "summary": SUMMARY,
        }
    )
    assert done.progress_text() == "done" and done.summary == SUMMARY and done.summary_text == SUMMARY["text"]
    assert done.no_objects_text() == (
        "No objects: 57 proposals, 0 kept, 50 below the object threshold 0.30, "
        "7 background. Lower the object threshold or check the vocabulary."
    )
    text = "57 proposals, 0 kept, 0 below the object threshold 0.30, 57 background"
    only_background = JobStatus("j", "done", summary={**SUMMARY, "below_threshold": 0, "background": 57, "text": text})
    assert only_background.no_objects_text() == f"No objects: {text}. Check the vocabulary."
    text = "0 proposals, 0 kept, 0 below the object threshold 0.30, 0 background"
    nothing = JobStatus(
        "j", "done", summary={**SUMMARY, "proposals": 0, "below_threshold": 0, "background": 0, "text": text}
    )
    assert nothing.no_objects_text() == f"No objects: {text}."  # nothing to lower or check


def test_whole_job_by_path_reports_progress(client, fake_backend, oem_raster):
    seen = []
    job_id = client.run_job(_request(oem_raster), on_status=seen.append, poll_s=0.01)
    assert [s.state for s in seen] == ["running", "done"]
    assert seen[-1].progress == 1.0 and seen[0].stage == "segmenting block 1/3"
    assert seen[0].eta_s == 40.0 and seen[-1].eta_s is None and seen[-1].message == "2 polygons"
    assert fake_backend.requests[0]["json"]["raster"] == str(oem_raster)
    assert client.result_gpkg(job_id)[:16] == b"SQLite format 3\x00"


def test_multipart_chip_upload(client, fake_backend, oem_raster):
    request = _request(oem_raster)
    request.raster = None
    client.submit(request, chip=oem_raster)
    sent = fake_backend.requests[0]
    assert "raster" not in sent["json"] and sent["json"]["classes"] == ["building,roof", "tree"]
    assert sent["chip"] == oem_raster.read_bytes()


def test_cancel_deletes_the_backend_job(client, fake_backend, oem_raster):
    fake_backend.hold = True
    polls = []
    with pytest.raises(JobCancelled):
        client.run_job(_request(oem_raster), on_status=polls.append, is_canceled=lambda: len(polls) >= 2, poll_s=0.01)
    assert [job.state for job in fake_backend.jobs.values()] == ["cancelled"]


def test_failed_job_raises_its_error(client, fake_backend, oem_raster):
    fake_backend.fail_with = "The model ran out of memory."
    with pytest.raises(BackendError, match="ran out of memory") as info:
        client.run_job(_request(oem_raster), poll_s=0.01)
    assert info.value.code == "job_failed"


def test_server_errors_keep_code_and_message(client, oem_raster, tmp_path):
    request = _request(oem_raster)
    request.raster = str(tmp_path / "missing.tif")
    with pytest.raises(BackendError, match="not found") as info:
        client.submit(request)
    assert (info.value.code, info.value.status) == ("bad_path", 400)
    request.raster, request.classes = str(oem_raster), []
    with pytest.raises(BackendError, match="vocabulary is empty") as info:
        client.submit(request)
    assert (info.value.code, info.value.status) == ("bad_request", 400)


def test_wrong_token_is_reported_as_such(fake_backend, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    client = BackendClient(fake_backend.url, wrong)
    client.health()  # no token needed
    with pytest.raises(BackendError, match="refused the token from") as info:
        client.models()
    assert info.value.code == "unauthorized" and info.value.status == 401


def test_missing_token_file(fake_backend, tmp_path):
    with pytest.raises(BackendError, match="cannot be read") as info:
        BackendClient(fake_backend.url, tmp_path / "none").models()
    assert info.value.code == "token_missing"


def test_unreachable_backend():
    client = BackendClient(f"http://127.0.0.1:{free_port()}", None, timeout=2)
    with pytest.raises(BackendError, match="No rsov backend answers") as info:
        client.health()
    assert info.value.code == "unreachable"


def test_not_an_rsov_server(fake_backend):
    fake_backend.server.RequestHandlerClass.do_GET = lambda self: (
        self.send_response(200),
        self.send_header("Content-Length", "2"),
        self.end_headers(),
        self.wfile.write(b"{}"),
    )
    with pytest.raises(BackendError, match="not an rsov backend"):
        BackendClient(fake_backend.url).health()


def test_urls():
    with pytest.raises(BackendError) as info:
        BackendClient("file:///etc/passwd")
    assert info.value.code == "bad_url"
    assert is_loopback_url("http://127.0.0.1:8765") and is_loopback_url("http://localhost:1")
    assert is_loopback_url("http://[::1]:8765") and not is_loopback_url("http://10.0.0.2:8765")
    assert BackendClient("http://127.0.0.1:8765/ ").url == "http://127.0.0.1:8765"
    assert json.loads(json.dumps(SegmentOptions(resolution=0.5).to_json())) == {"threshold": 0.3, "resolution": 0.5}


def test_estimate_and_its_errors(client, fake_backend, oem_raster, tmp_path):
    from rsov_qgis.backend_client import describe_estimate

    request = _request(oem_raster)
    request.bbox = (346000.0, 5647500.0, 346500.0, 5648000.0)
    estimate = client.estimate(request)
    assert estimate["rule"] == "auto" and estimate["resolution_m"] == pytest.approx(0.5 * 1024 / 448)
    assert fake_backend.estimates == [request.to_json()] and fake_backend.requests == []  # the job's body, no job
    assert describe_estimate(estimate) == "1.14 m/px (auto), 438 × 438 px, 9 windows, about 2 s"
    assert describe_estimate(
        {
            "resolution_m": 0.3,
            "rule": "long_side",
            "working_size": [448, 300],
            "windows": 1,
            "windows_cached": 1,
            "estimated_s": 600,
        }
    ) == ("0.3 m/px (long side), 300 × 448 px, 1 window (1 cached), about 10 min")
    assert describe_estimate({**estimate, "estimated_s": 0.2}).endswith("9 windows, under 1 s")
    request.raster = str(tmp_path / "missing.tif")
    with pytest.raises(BackendError, match="not found") as info:
        client.estimate(request)
    assert (info.value.code, info.value.status) == ("bad_path", 400)
    request.raster = None
    with pytest.raises(BackendError, match="image chip") as info:
        client.estimate(request)
    assert info.value.code == "no_estimate"


def test_mask_goes_with_the_job_and_large_geojson_results_are_refused(client, fake_backend, oem_raster):
    mask = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [[[1.0, 2.0], [3.0, 2.0], [3.0, 4.0], [1.0, 2.0]]]},
            }
        ],
    }
    request = _request(oem_raster)
    assert "mask" not in request.to_json()
    request.mask, request.bbox = mask, None
    assert (
        request.to_json()["mask"] == mask and request.to_json()["bbox"] is None
    )  # the backend takes the mask's bounds
    job_id = client.run_job(request, poll_s=0.01)
    assert fake_backend.requests[0]["json"]["mask"] == mask
    with pytest.raises(BackendError, match="format=gpkg") as info:
        client.result_geojson(job_id)
    assert (info.value.code, info.value.status) == ("too_large", 413)
    assert client.result_gpkg(job_id)[:16] == b"SQLite format 3\x00"


# --- the transport: QGIS's network stack ---------------------------------------------------------
@dataclass
class Served:
    """A tiny HTTP server on 127.0.0.1: what it received (method, target, headers, body), in order."""

    port: int
    requests: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def serve():
    """``serve(answer)`` starts a server answering each request with ``answer(request)`` (status, body);
    every server stops after the test."""
    servers = []

    def start(answer: Callable[[dict], tuple[int, bytes]]) -> Served:
        served = Served(0)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = {"method": self.command, "target": self.path, "headers": self.headers, "body": body}
                served.requests.append(request)
                status, data = answer(request)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test)

            do_GET = do_POST = do_DELETE = answer  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        served.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return served

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


HEALTH = {
    "status": "ok",
    "version": "0.1.0",
    "api_version": 1,
    "model": "behind-the-proxy",
    "models": [],
    "device": "cpu",
    "gpu_name": None,
}
UNREACHABLE = (
    "No rsov backend answers at {url} ({reason}): start it with Start backend or `rsov serve`, "
    "or check the backend URL."
)


@contextmanager
def qgis_proxy(port: int):
    """QGIS set (as in Settings > Options > Network) to send everything through the HTTP proxy on
    127.0.0.1:``port``; the settings are restored afterwards."""
    keys = {
        "proxy/proxyEnabled": True,
        "proxy/proxyType": "HttpProxy",
        "proxy/proxyHost": "127.0.0.1",
        "proxy/proxyPort": str(port),
    }
    settings = QgsSettings()
    before = {key: settings.value(key) for key in keys if settings.contains(key)}
    for key, value in keys.items():
        settings.setValue(key, value)
    QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()  # what saving QGIS's options does
    try:
        yield
    finally:
        for key in keys:
            settings.remove(key)
        for key, value in before.items():
            settings.setValue(key, value)
        QgsNetworkAccessManager.instance().setupDefaultProxyAndCache()


def in_worker_thread(function: Callable):
    """``function()`` in a plain Python thread (as the dock's background calls run): its result, or its
    exception raised."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function()
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_qgis_proxy_carries_remote_calls_but_never_loopback_ones(serve, fake_backend):
    proxy = serve(lambda request: (200, json.dumps(HEALTH).encode()))
    remote = BackendClient("http://rsov.invalid:8765", None, timeout=5)  # .invalid: the proxy answers, no DNS
    with qgis_proxy(proxy.port):
        assert remote.health().model == "behind-the-proxy"
        assert in_worker_thread(remote.health).model == "behind-the-proxy"  # that thread's own manager, same settings
        assert [(r["method"], r["target"]) for r in proxy.requests] == [
            ("GET", "http://rsov.invalid:8765/v1/health")
        ] * 2
        local = BackendClient(fake_backend.url, fake_backend.token_file, timeout=5)
        assert local.health().model == "fake-model" and local.models()[0].name == "fake-model"
        assert in_worker_thread(local.health).model == "fake-model"
        assert BackendClient(fake_backend.url.replace("127.0.0.1", "localhost")).health().model == "fake-model"
        assert len(proxy.requests) == 2  # loopback calls went straight to the backend


def test_a_loopback_call_on_the_main_thread_runs_none_of_its_events(client, qtbot):
    """As over urllib: nothing waiting on the main thread (here a timer; a deferred deletion of
    the dock that made the call, in use) runs inside a call to a local backend."""
    fired = []
    QTimer.singleShot(0, lambda: fired.append("timer"))
    assert client.health().model == "fake-model" and client.models()
    assert fired == []
    qtbot.waitUntil(lambda: fired == ["timer"])  # it runs once the event loop does


def test_a_backend_that_never_answers_times_out_as_before(serve):
    release = threading.Event()
    silent = serve(lambda request: (release.wait(30), (200, b"{}"))[1])
    try:
        for client, call in (
            (BackendClient(silent.url, None, timeout=0.5), lambda c: c.health()),
            (BackendClient(silent.url, None, timeout=60), lambda c: c.health(timeout=0.5)),
        ):
            started = time.monotonic()
            with pytest.raises(BackendError) as info:
                call(client)
            assert time.monotonic() - started < 5  # the client's timeout, or the call's
            assert (info.value.code, info.value.status) == ("unreachable", None)
            assert str(info.value) == UNREACHABLE.format(url=silent.url, reason="timed out")
        assert len(silent.requests) == 2  # the requests arrived: the answers were what never came
    finally:
        release.set()


def test_a_chip_arrives_as_multipart_byte_for_byte(serve, tmp_path):
    chip = tmp_path / "chip.tif"
    data = bytes(range(256)) * 4096 + b"\r\n--boundary\r\n\r\n"  # every byte value, line breaks, a lookalike boundary
    chip.write_bytes(data)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    backend = serve(lambda request: (202, b'{"job_id": "j1"}'))
    request = JobRequest(["building,roof", "tree"], None, None)
    with qgis_proxy(backend.port):  # a remote backend, through QGIS's shared manager (loopback calls use their own)
        assert BackendClient("http://rsov.invalid:8765", token).submit(request, chip) == "j1"
    sent = backend.requests[0]
    assert (sent["method"], sent["target"]) == ("POST", "http://rsov.invalid:8765/v1/jobs")
    assert sent["headers"]["Authorization"] == "Bearer s3cret"
    assert int(sent["headers"]["Content-Length"]) == len(sent["body"])
    content_type = sent["headers"].get_content_type(), sent["headers"].get_param("boundary")
    assert content_type[0] == "multipart/form-data" and content_type[1]
    boundary = b"--" + content_type[1].encode()
    preamble, *parts, end = sent["body"].split(boundary)
    assert preamble == b"" and end == b"--\r\n" and len(parts) == 2
    heads, bodies = zip(
        *(part[2:-2].split(b"\r\n\r\n", 1) for part in parts)
    )  # each part: CRLF head CRLF CRLF body CRLF
    assert [sorted(head.decode().lower().split("\r\n")) for head in heads] == [
        ['content-disposition: form-data; name="request"', "content-type: application/json"],
        ['content-disposition: form-data; name="chip"; filename="chip.tif"', "content-type: image/tiff"],
    ]
    assert json.loads(bodies[0]) == request.to_json() and bodies[1] == data
    if Path("/proc/self/fd").is_dir():  # the chip is closed once sent: the caller removes its folder
        assert str(chip) not in {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}


def test_a_whole_chip_job_runs_in_a_qgis_task(client, fake_backend, oem_raster, qtbot):
    request = _request(oem_raster)
    request.raster = None

    outcome = {}

    def job(task):
        return client.result_gpkg(client.run_job(request, oem_raster, poll_s=0.01))

    def finished(exception, result=None):
        outcome.update(exception=exception, result=result)

    task = QgsTask.fromFunction("rsov client test", job, on_finished=finished)
    QgsApplication.taskManager().addTask(task)  # run in a thread of QGIS's task pool
    qtbot.waitUntil(lambda: bool(outcome), timeout=30000)
    assert outcome["exception"] is None and outcome["result"][:16] == b"SQLite format 3\x00"
    assert fake_backend.requests[0]["chip"] == oem_raster.read_bytes()


def test_answers_that_are_not_the_backends_json(serve, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    odd = serve(
        lambda request: (
            (200, b"<html>a router</html>") if request["target"] == "/v1/health" else (502, b"<html>bad gateway</html>")
        )
    )
    client = BackendClient(odd.url, token)
    with pytest.raises(BackendError) as info:
        client.health()
    assert (info.value.code, str(info.value)) == (
        "bad_response",
        f"The backend at {odd.url} did not answer JSON: is it rsov?",
    )
    with pytest.raises(BackendError) as info:
        client.models()
    assert (info.value.code, info.value.status, str(info.value)) == (
        "http_502",
        502,
        "The backend answered HTTP 502 (Bad Gateway).",
    )
    with pytest.raises(BackendError) as info:
        client.download_model("x")  # a POST without a body: still one request, with the token
    assert info.value.status == 502 and odd.requests[-1]["method"] == "POST" and odd.requests[-1]["body"] == b""
    assert odd.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"
