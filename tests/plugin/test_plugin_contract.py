"""The plugin's side of the HTTP contract, docs/api/openapi.json (the backend's tests keep it equal to
what `rsov serve` serves and answers):

- every answer the stand-in backend (fake_backend.py) gives, for each route and status it can produce,
  is one the contract documents, with a body of the documented schema and an error code listed for it;
- every request body the plugin builds is a body of the contract;
- the fields the plugin reads are in the answers, and its option defaults are the backend's.

The plugin never imports the backend: this test reads the JSON file (jsonschema, Draft 2020-12).
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest

from rsov_qgis import backend_client
from rsov_qgis.backend_client import BackendClient, InstanceOptions, JobRequest, SegmentOptions

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "api" / "openapi.json"
SCHEMA = json.loads(CONTRACT.read_text(encoding="utf-8"))
COMPONENTS = SCHEMA["components"]
OPTIONS = COMPONENTS["schemas"]["JobOptions"]["properties"]
FAKE = Path(__file__).with_name("fake_backend.py")

CRS = {"type": "name", "properties": {"name": "EPSG:25832"}}
SQUARE = {
    "type": "Polygon",
    "coordinates": [
        [
            [346100.0, 5647600.0],
            [346200.0, 5647600.0],
            [346200.0, 5647700.0],
            [346100.0, 5647700.0],
            [346100.0, 5647600.0],
        ]
    ],
}
MASK = {
    "type": "FeatureCollection",
    "crs": CRS,
    "features": [{"type": "Feature", "properties": {}, "geometry": SQUARE}],
}
EXAMPLES = {
    "type": "FeatureCollection",
    "crs": CRS,
    "features": [{"type": "Feature", "properties": {"class": "building"}, "geometry": SQUARE}],
}
BBOX = (346000.0, 5647500.0, 346500.0, 5648000.0)


def errors_of(instance: Any, schema: dict) -> list[str]:
    """Why ``instance`` does not follow ``schema`` (whose ``#/components/...`` are the contract's); [] if it does."""
    validator = jsonschema.Draft202012Validator({**schema, "components": COMPONENTS})
    return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in validator.iter_errors(instance)]


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def operation(method: str, path: str) -> dict | None:
    """The contract's operation for ``method path`` (path parameters matched), None for no such route."""
    for template, operations in SCHEMA["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in operations:
            return operations[method.lower()]
    return None


class Answer(NamedTuple):
    method: str
    path: str
    status: int
    content_type: str
    body: Any


def contract_violations(answer: Answer) -> list[str]:
    """What is wrong with one answer of the stand-in, by the contract; [] when nothing is."""
    where = f"{answer.method} {answer.path} -> {answer.status}"
    op = operation(answer.method, answer.path)
    if op is None:  # a route the backend does not have: FastAPI's 404 or 405, as an error body
        wrong = answer.status not in (404, 405) or (answer.body.get("error") or {}).get("code") != "http_error"
        return [f"{where}: no such route in the contract"] * wrong + errors_of(answer.body, component("ErrorBody"))
    documented = op["responses"].get(str(answer.status))
    if documented is None:
        return [f"{where}: the contract lists no {answer.status} for this route ({sorted(op['responses'])})"]
    content = documented["content"]
    if answer.content_type not in content:
        return [f"{where}: sent as {answer.content_type}, the contract says {sorted(content)}"]
    if answer.content_type == "application/geopackage+sqlite3":
        return [] if answer.body[:16] == b"SQLite format 3\x00" else [f"{where}: not a GeoPackage"]
    problems = [f"{where}: {e}" for e in errors_of(answer.body, content[answer.content_type]["schema"])]
    if answer.status >= 400 and not problems and answer.body["error"]["code"] not in documented["x-error-codes"]:
        problems.append(
            f"{where}: the backend never answers code {answer.body['error']['code']!r} here "
            f"(it answers {documented['x-error-codes']})"
        )
    return problems


@pytest.fixture
def answers(fake_backend) -> list[Answer]:
    """Every answer the stand-in gives from now on, as it sends it."""
    sent: list[Answer] = []
    send = fake_backend._send

    def record(http, status, body, content_type="application/json"):
        decoded = body if isinstance(body, bytes) else json.loads(json.dumps(body))
        sent.append(Answer(http.command, http.path.partition("?")[0], status, content_type, decoded))
        send(http, status, body, content_type)

    fake_backend._send = record
    return sent


def _call(
    fake,
    method: str,
    path: str,
    body: Any = None,
    content_type: str | None = "application/json",
    token: bool = True,
    raw: bytes | None = None,
) -> int:
    """One plain HTTP exchange with the stand-in; its status."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {fake.token}"} if token else {}
    if data is not None and content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(fake.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def _multipart(request: Any, chip: bytes | None) -> tuple[bytes, str]:
    boundary = "rsov-contract-boundary"
    parts = [
        (
            f'Content-Disposition: form-data; name="request"\r\nContent-Type: application/json\r\n\r\n'
            f"{json.dumps(request)}"
        ).encode()
    ]
    if chip is not None:
        parts.append(
            b'Content-Disposition: form-data; name="chip"; filename="chip.tif"\r\n'
            b"Content-Type: image/tiff\r\n\r\n" + chip
        )
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def _job(fake, body: dict) -> str:
    assert _call(fake, "POST", "/v1/jobs", body) == 202
    return list(fake.jobs)[-1]


def _poll_to_the_end(fake, job_id: str) -> None:
    for _ in range(5):
        assert _call(fake, "GET", f"/v1/jobs/{job_id}") == 200


def test_every_answer_of_the_stand_in_is_one_the_contract_documents(fake_backend, answers, oem_raster, tmp_path):
    fake, raster = fake_backend, str(oem_raster)
    job = {"raster": raster, "classes": ["building,roof", "tree"], "bbox": list(BBOX), "bbox_crs": "EPSG:25832"}
    # health, models, weights transfers
    assert _call(fake, "GET", "/v1/health", token=False) == 200
    assert _call(fake, "GET", "/v1/models", token=False) == 401
    assert _call(fake, "POST", f"/v1/models/{fake.model}/download") == 202
    assert _call(fake, "POST", "/v1/models/no-such-model/download") == 404
    assert _call(fake, "POST", "/v1/models/sam3/download", {"hub_token": "hf_no_licence"}) == 202  # then failed
    assert _call(fake, "POST", f"/v1/models/{fake.model}/import", {"path": raster}) == 202
    assert _call(fake, "GET", "/v1/models") == 200  # with the transfer
    assert _call(fake, "POST", f"/v1/models/{fake.model}/import", {"path": "relative.pth"}) == 400
    assert _call(fake, "POST", f"/v1/models/{fake.model}/import", {"file": raster}) == 422
    assert _call(fake, "POST", f"/v1/models/{fake.model}/import", raw=b"{not json") == 422
    # jobs the backend refuses
    refused = [
        (dict(job, raster=str(tmp_path / "missing.tif")), 400),
        (dict(job, raster="relative.tif"), 400),
        (dict(job, raster=str(tmp_path)), 400),
        (dict(job, raster=raster + "\x00"), 400),
        (dict(job, classes=[]), 400),
        ({k: v for k, v in job.items() if k != "classes"}, 422),
        ({k: v for k, v in job.items() if k != "raster"}, 422),
        (dict(job, colour="red"), 422),
        (dict(job, options={"threshold": 3}), 422),
        (dict(job, options={"refine": "crf"}), 422),
        (dict(job, mode="instance", options={"points_per_batch": 0}), 422),
        (dict(job, mask={"type": "FeatureCollection", "crs": CRS, "features": []}), 400),
        (
            dict(
                job,
                mask={
                    "type": "FeatureCollection",
                    "crs": CRS,
                    "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}],
                },
            ),
            400,
        ),
        (
            dict(
                job,
                mode="instance",
                examples={**EXAMPLES, "features": [{"type": "Feature", "properties": {}, "geometry": SQUARE}]},
            ),
            400,
        ),
        (dict(job, classes=["tree"], mode="instance", examples=EXAMPLES), 400),
    ]
    for body, status in refused:
        assert _call(fake, "POST", "/v1/jobs", body) == status, body
        assert _call(fake, "POST", "/v1/estimate", body) == status, body
    assert _call(fake, "POST", "/v1/jobs", raw=b"{not json") == 422
    assert _call(fake, "POST", "/v1/jobs", raw=b"raster=x", content_type="text/plain") == 415
    chip = oem_raster.read_bytes()
    for request, part, status in [
        ({"classes": ["tree"]}, chip, 202),
        ({"classes": ["tree"]}, None, 422),
        ({"classes": ["tree"], "raster": raster}, chip, 422),
    ]:
        data, content_type = _multipart(request, part)
        assert _call(fake, "POST", "/v1/jobs", raw=data, content_type=content_type) == status
    fake.max_resolution_m = 100.0
    assert _call(fake, "POST", "/v1/estimate", dict(job, options={"resolution": 500.0})) == 400
    assert _call(fake, "POST", "/v1/estimate", job) == 200
    # a semantic job from queued to done, its results, and a cancelled, a failed and an instance job
    semantic = _job(fake, job)
    assert _call(fake, "GET", f"/v1/jobs/{semantic}/result") == 409
    _poll_to_the_end(fake, semantic)
    assert _call(fake, "GET", f"/v1/jobs/{semantic}/result") == 413  # 2 classes, over geojson_limit
    assert _call(fake, "GET", f"/v1/jobs/{semantic}/result?format=gpkg") == 200
    assert _call(fake, "DELETE", f"/v1/jobs/{semantic}") == 200  # a finished job: its status
    small = _job(fake, dict(job, classes=["tree"]))
    _poll_to_the_end(fake, small)
    assert _call(fake, "GET", f"/v1/jobs/{small}/result") == 200
    cancelled = _job(fake, job)
    assert _call(fake, "GET", f"/v1/jobs/{cancelled}") == 200  # running, with its time left
    assert _call(fake, "DELETE", f"/v1/jobs/{cancelled}") == 200
    instance = _job(fake, dict(job, mode="instance", examples=EXAMPLES, mask=MASK, options={"object_threshold": 0.5}))
    _poll_to_the_end(fake, instance)  # done, with its summary
    fake.fail_with = "The model ran out of memory."
    _poll_to_the_end(fake, _job(fake, job))
    for method, path, status in [
        ("GET", "/v1/jobs/nope", 404),
        ("DELETE", "/v1/jobs/nope", 404),
        ("GET", "/v1/jobs/nope/result", 404),
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/v1/jobs", 405),
    ]:
        assert _call(fake, method, path) == status, (method, path)

    problems = [p for answer in answers for p in contract_violations(answer)]
    assert not problems, "the stand-in says what the backend never says:\n" + "\n".join(problems)
    # every error the stand-in can send was sent above, and every route of the contract was answered
    sent = {(a.status, a.body["error"]["code"]) for a in answers if a.status >= 400}
    in_source = {(int(s), c) for s, c in re.findall(r'(\d{3}),\s*"([a-z_]+)"', FAKE.read_text(encoding="utf-8"))}
    assert in_source <= sent, f"errors of fake_backend.py this test never caused: {sorted(in_source - sent)}"
    answered = {
        (a.method.lower(), template)
        for a in answers
        for template in SCHEMA["paths"]
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), a.path)
    }
    routes = {(m, t) for t, operations in SCHEMA["paths"].items() for m in operations}
    assert routes <= answered, f"routes of the contract the stand-in never answered: {sorted(routes - answered)}"
    statuses = {
        (a.method, operation(a.method, a.path)["operationId"], a.status)
        for a in answers
        if operation(a.method, a.path) is not None and a.status < 400
    }
    assert {op for _, op, _ in statuses} == {
        op["operationId"] for ops in SCHEMA["paths"].values() for op in ops.values()
    }  # each route's success answer too


def test_the_contract_checker_catches_what_the_backend_never_says():
    assert contract_violations(
        Answer("POST", "/v1/jobs", 400, "application/json", {"error": {"code": "missing_file", "message": "No file."}})
    )
    assert contract_violations(
        Answer("POST", "/v1/jobs", 422, "application/json", {"error": {"code": "bad_path", "message": "Relative."}})
    )
    assert contract_violations(
        Answer("DELETE", "/v1/jobs/x", 200, "application/json", {"job_id": "x", "state": "cancelled"})
    )
    assert contract_violations(
        Answer("GET", "/v1/jobs/x", 409, "application/json", {"error": {"code": "not_done", "message": "Not done."}})
    )
    assert not contract_violations(
        Answer(
            "GET", "/v1/jobs/x/result", 409, "application/json", {"error": {"code": "not_done", "message": "Not done."}}
        )
    )


# --- what the plugin sends ---------------------------------------------------------------------


def every_option() -> SegmentOptions:
    return SegmentOptions(
        threshold=0.4,
        resolution=0.7,
        bands=[3, 2, 1],
        templates="remote-sensing",
        background=["background", "grass"],
        refine=backend_client.REFINE_SAM,
        engine=backend_client.ENGINE_SAM3,
    )


BODIES = {
    "semantic": JobRequest(classes=["building,roof", "tree"], bbox=BBOX, bbox_crs="EPSG:25832", raster="/data/a.tif"),
    "semantic, every option, masked": JobRequest(
        classes=["building,roof", "tree"],
        bbox=None,
        bbox_crs=None,
        raster="/data/a.tif",
        options=every_option(),
        mask=MASK,
    ),
    "instance": JobRequest(
        classes=["building"], bbox=BBOX, bbox_crs="EPSG:25832", raster="/data/a.tif", instance=InstanceOptions()
    ),
    "instance, examples and mask": JobRequest(
        classes=["building", "car"],
        bbox=BBOX,
        bbox_crs="EPSG:25832",
        raster="/data/a.tif",
        options=every_option(),
        instance=InstanceOptions(points_per_batch=16, class_prompts=False),
        examples=EXAMPLES,
        mask=MASK,
    ),
    "chip upload (no raster)": JobRequest(classes=["tree"], bbox=BBOX, bbox_crs="EPSG:25832"),
}


@pytest.mark.parametrize("name", BODIES)
def test_every_job_body_the_plugin_builds_is_a_job_request(name):
    body = json.loads(json.dumps(BODIES[name].to_json()))
    assert not errors_of(body, component("JobRequest")), errors_of(body, component("JobRequest"))


def test_the_bodies_the_client_sends_are_the_contracts(client_of_fake, fake_backend, oem_raster, tmp_path):
    request = JobRequest(
        classes=["building", "tree"],
        bbox=BBOX,
        bbox_crs="EPSG:25832",
        raster=str(oem_raster),
        options=every_option(),
        instance=InstanceOptions(),
        examples=EXAMPLES,
        mask=MASK,
    )
    client_of_fake.submit(request)
    chip = tmp_path / "chip.tif"
    chip.write_bytes(oem_raster.read_bytes())
    client_of_fake.submit(JobRequest(classes=["tree"], bbox=BBOX, bbox_crs="EPSG:25832"), chip)
    client_of_fake.estimate(dataclasses.replace(request, instance=None, examples=None))
    client_of_fake.import_model(fake_backend.model, str(oem_raster))
    client_of_fake.download_model(fake_backend.model)
    client_of_fake.download_model("sam3", "hf_a_read_token")
    sent = [r["json"] for r in fake_backend.requests] + fake_backend.estimates
    assert len(sent) == 3 and fake_backend.requests[1]["chip"] and "raster" not in sent[1]
    for body in sent:
        assert not errors_of(body, component("JobRequest")), body
    assert sent[0]["options"]["engine"] == "sam3"
    assert fake_backend.imports == [{"path": str(oem_raster)}]
    assert not errors_of(fake_backend.imports[0], component("ImportRequest"))
    assert fake_backend.downloads == [None, {"hub_token": "hf_a_read_token"}]  # no body without a token
    body_schema = operation("POST", "/v1/models/x/download")["requestBody"]["content"]["application/json"]["schema"]
    for body in fake_backend.downloads:
        assert not errors_of(body, body_schema), body
    assert not errors_of(fake_backend.downloads[1], component("DownloadRequest"))


@pytest.fixture
def client_of_fake(fake_backend) -> BackendClient:
    return BackendClient(fake_backend.url, fake_backend.token_file, timeout=10)


# --- what the plugin reads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader, answer",
    [
        (backend_client.Health, "Health"),
        (backend_client.JobStatus, "JobStatus"),
        (backend_client.ModelInfo, "ModelRow"),
        (backend_client.Transfer, "Transfer"),
    ],
)
def test_every_field_the_plugin_reads_is_in_the_answer(reader, answer):
    schema = COMPONENTS["schemas"][answer]
    read = {f.name for f in dataclasses.fields(reader)}
    assert read <= set(schema["properties"]), f"{reader.__name__} reads {sorted(read - set(schema['properties']))}"
    assert read - {"api_version", "model_ready", "model_error"} <= set(schema["required"])  # older backends lack these


def test_the_estimate_figures_the_plugin_shows_are_in_the_answer():
    estimate = COMPONENTS["schemas"]["Estimate"]
    shown = {"resolution_m", "rule", "working_size", "windows", "windows_cached", "estimated_s"}  # describe_estimate
    assert shown <= set(estimate["required"])
    assert set(estimate["properties"]["rule"]["enum"]) == set(backend_client.RULES)


# --- the plugin's defaults are the backend's ---------------------------------------------------

# The plugin's None means "not sent": the backend's default applies. Where the plugin counts on that
# default being a particular value, it is named here (SegmentOptions: refine None is "none", engine None
# is "clip": not sending the default also keeps backends from before the engine option working).
MEANS_WHEN_UNSENT = {"refine": "none", "resolution": None, "engine": backend_client.ENGINE_CLIP}
# Settings store some options in their own form: resolution 0 is auto (not sent), refine is a checkbox.
SETTING_MEANS = {
    "resolution": lambda value: None if not value else value,
    "refine": lambda checked: backend_client.REFINE_SAM if checked else "none",
}


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in OPTIONS}


@pytest.mark.parametrize("cls", [SegmentOptions, InstanceOptions])
def test_the_plugins_option_defaults_are_the_backends(cls):
    defaults = _defaults(cls)
    assert len(defaults) == len(dataclasses.fields(cls))  # every field is a JobOptions field
    for name, value in defaults.items():
        if value is None:
            assert name not in cls().to_json()  # not sent: the backend's default applies
            value = MEANS_WHEN_UNSENT.get(name, OPTIONS[name].get("default"))
        assert value == OPTIONS[name].get("default"), (cls.__name__, name, value, OPTIONS[name].get("default"))


def test_the_settings_defaults_are_the_backends():
    from rsov_qgis.settings import Settings

    defaults = _defaults(Settings)
    assert {
        "threshold",
        "resolution",
        "refine",
        "engine",
        *(f.name for f in dataclasses.fields(InstanceOptions)),
    } <= set(defaults)
    for name, value in defaults.items():
        meant = SETTING_MEANS.get(name, lambda v: v)(value)
        assert meant == OPTIONS[name].get("default"), ("Settings", name, value, OPTIONS[name].get("default"))


def test_the_dock_sends_the_backends_defaults(dock):
    sent = {**dock.segment_page.options().to_json(), **dock.segment_page.instance_panel.options().to_json()}
    assert sent and all(value == OPTIONS[name].get("default") for name, value in sent.items()), sent
    assert dock.segment_page.engine() == OPTIONS["engine"]["default"]


def test_the_engines_the_plugin_offers_are_the_contracts():
    from rsov_qgis.engines import ENGINES

    offered = [key for key, _ in ENGINES]
    assert offered == OPTIONS["engine"]["enum"] and offered[0] == OPTIONS["engine"]["default"]  # the default first
    assert {backend_client.ENGINE_CLIP, backend_client.ENGINE_SAM3} == set(offered)


def test_the_gated_model_row_is_one_the_plugin_knows():
    assert "sam3" in COMPONENTS["schemas"]["ModelRow"]["properties"]["kind"]["enum"]
    row = {"name": "sam3", "kind": "sam3", "description": "Meta SAM 3 (gated: accept its licence ...)"}
    assert backend_client.ModelInfo.from_json(row).gated
    assert not backend_client.ModelInfo.from_json(dict(row, name="sam-vit-b", kind="sam", description="SAM")).gated
    assert set(COMPONENTS["schemas"]["DownloadRequest"]["properties"]) == {"hub_token"}  # what download_model sends
