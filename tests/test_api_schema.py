"""The committed HTTP contract, docs/api/openapi.json: the one the server serves, and what it answers.

The plugin's tests check their stand-in backend and the plugin's request bodies against the same file
(tests/plugin/test_plugin_contract.py), so the plugin and the backend meet only in this file.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from shapely.geometry import MultiPolygon, box
from test_server import BIN, Server, slow_options

from rsov.geo.vectorize import VectorFeature, features_to_geojson
from rsov.service import jobs as service_jobs
from rsov.service.api_schema import REGENERATE, api_schema
from rsov.service.openapi import dump
from rsov.service.schemas import ERROR_CODES

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "api" / "openapi.json"
SERVICE = REPO / "backend" / "rsov" / "service"
SCHEMA = json.loads(COMMITTED.read_text(encoding="utf-8"))


def _validator(schema: dict):
    """A Draft 2020-12 validator whose ``#/components/...`` references resolve in the committed file."""
    root = {**schema, "components": SCHEMA["components"]}
    try:
        import jsonschema_rs
    except ImportError:  # schemathesis 3 brings jsonschema, 4 jsonschema_rs
        import jsonschema

        validator = jsonschema.Draft202012Validator(root)
        return lambda instance: [e.message for e in validator.iter_errors(instance)]
    validator = jsonschema_rs.Draft202012Validator(root)
    return lambda instance: [e.message for e in validator.iter_errors(instance)]


def schema_errors(instance, ref: str) -> list[str]:
    """Why ``instance`` is not a ``#/components/schemas/<ref>``; empty when it is."""
    return _validator({"$ref": f"#/components/schemas/{ref}"})(instance)


def operation(method: str, url_path: str) -> dict:
    """The committed operation that serves ``method url_path`` (path parameters matched)."""
    for template, operations in SCHEMA["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), url_path) and method.lower() in operations:
            return operations[method.lower()]
    raise AssertionError(f"{method} {url_path} is not in {COMMITTED}")


def check_answer(response: httpx.Response) -> None:
    """The answer is one the contract documents for its route and status, and its body follows the schema."""
    request = response.request
    path = request.url.path
    try:
        documented = operation(request.method, path)["responses"]
    except AssertionError:
        documented = None  # an unknown route: an error body all the same
    if documented is None:
        assert response.status_code in (404, 405) and response.json()["error"]["code"] == "http_error"
        assert not schema_errors(response.json(), "ErrorBody")
        return
    status = str(response.status_code)
    assert status in documented, f"{request.method} {path} answered {status}, which {COMMITTED.name} does not list"
    media_type = response.headers["content-type"].split(";")[0]
    content = documented[status]["content"]
    assert media_type in content, (request.method, path, status, media_type, list(content))
    if media_type == "application/geopackage+sqlite3":
        assert response.content[:16] == b"SQLite format 3\x00"
        return
    body = response.json()
    errors = _validator(content[media_type]["schema"])(body)
    assert not errors, (request.method, path, status, errors, body)
    if response.status_code >= 400:
        assert body["error"]["code"] in documented[status]["x-error-codes"], (request.method, path, status, body)


# --- the file ------------------------------------------------------------------------------


def test_the_committed_schema_is_the_one_the_routes_make():
    current = dump(api_schema())
    committed = COMMITTED.read_text(encoding="utf-8")
    diff = "".join(
        list(difflib.unified_diff(committed.splitlines(True), current.splitlines(True), "committed", "current"))[:60]
    )
    assert committed == current, f"{COMMITTED} is out of date: regenerate it with {REGENERATE}.\n{diff}"


def test_the_regeneration_commands_write_the_committed_file(tmp_path):
    out = tmp_path / "api" / "openapi.json"
    subprocess.run([BIN / "rsov", "api-schema", "--out", out], check=True, capture_output=True, timeout=300)
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    out.write_text(out.read_text(encoding="utf-8").replace('"rsov backend"', '"another backend"'), encoding="utf-8")
    check = subprocess.run(
        [sys.executable, "-m", "rsov.service.api_schema", "--check", out], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 1 and "make api-schema" in check.stderr


def test_the_committed_schema_is_sorted_pretty_json_with_a_trailing_newline():
    text = COMMITTED.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_every_route_but_health_needs_the_token_and_every_error_is_an_error_body():
    assert SCHEMA["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": SCHEMA["components"]["securitySchemes"]["bearerToken"]["description"],
    }
    assert "HTTPValidationError" not in json.dumps(SCHEMA) and "ValidationError" not in SCHEMA["components"]["schemas"]
    for path, operations in SCHEMA["paths"].items():
        for method, op in operations.items():
            assert op.get("security") == (None if path == "/v1/health" else [{"bearerToken": []}]), (method, path)
            if path != "/v1/health":
                assert op["responses"]["401"]["x-error-codes"] == ["unauthorized"]
            for status, answer in op["responses"].items():
                if int(status) < 400:
                    continue
                assert answer["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                assert answer["x-error-codes"] and all(
                    ERROR_CODES[c][0] == int(status) for c in answer["x-error-codes"]
                )
                assert all(f"`{c}`" in answer["description"] for c in answer["x-error-codes"])


def test_every_error_code_the_service_raises_is_in_the_contract():
    raised = set()
    for source in SERVICE.rglob("*.py"):
        for status, code in re.findall(r'(?:ApiError|error_response)\(\s*(\d{3}),\s*"(\w+)"', source.read_text()):
            assert ERROR_CODES[code][0] == int(status), (source.name, status, code)
            raised.add(code)
    listed = {
        c
        for ops in SCHEMA["paths"].values()
        for op in ops.values()
        for answer in op["responses"].values()
        for c in answer.get("x-error-codes", ())
    }
    assert raised - {"http_error"} <= listed  # http_error: unknown routes, in no operation
    assert set(ERROR_CODES) == raised | {"http_error", "internal_error"}
    assert SCHEMA["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"] == list(ERROR_CODES)


def test_an_instance_jobs_summary_and_result_are_the_documented_ones():
    """What an instance job's status and result hold (the served ones are checked for semantic jobs below)."""
    summary = service_jobs.InstanceSummary(
        proposals=5, kept=2, below_threshold=1, threshold=0.3, background=1, duplicates=1, outside_extent=0, too_small=0
    )
    assert not schema_errors(summary.to_json(), "ProposalSummary")
    features = [
        VectorFeature(box(0, 0, 1, 1), "car", 2, 0.5, 1.0, instance_id=1),
        VectorFeature(MultiPolygon([box(2, 2, 3, 3)]), "ship", 3, 0.25, 1.0, instance_id=2),
    ]
    assert not schema_errors(features_to_geojson(features, "EPSG:25832"), "FeatureCollection")
    assert not schema_errors(features_to_geojson(features, None), "FeatureCollection")  # no CRS: no crs member


def _first_fields(text: str) -> list[str]:
    """The field names of the first ``{...}`` in ``text`` (``{a, b: x|y, c (a note)}``: a, b, c)."""
    names, current, depth = [], "", 0
    for ch in text[text.index("{") :]:
        opens, closes = ch in "{[(", ch in "}])"
        depth -= closes
        if depth == 1 and not opens:
            if ch == ",":
                names.append(current)
                current = ""
            else:
                current += ch
        depth += opens
        if depth == 0:
            break
    return [re.match(r"\s*`?(\w+)", n).group(1) for n in [*names, current] if n.strip()]


README_ANSWERS = {
    "GET /v1/health": "Health",
    "GET /v1/models": "ModelList",
    "POST /v1/models/{}/download": "ModelTransfer",
    "POST /v1/models/{}/import": "ImportRequest",
    "POST /v1/jobs": "JobCreated",
    "POST /v1/estimate": "Estimate",
    "GET /v1/jobs/{}": "JobStatus",
    "GET /v1/jobs/{}/result": "FeatureProperties",
    "DELETE /v1/jobs/{}": None,
}


def test_the_readme_table_agrees_with_the_contract():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/api/openapi.json" in readme and "make api-schema" in readme
    table = readme[readme.index("| endpoint | answer |") :].split("\n\n")[0]
    rows = {
        re.sub(r"\{\w+\}", "{}", m.group(1)): m.group(2)
        for m in re.finditer(r"^\| `((?:GET|POST|DELETE) /\S+)`[^|]*\| (.*) \|$", table, re.M)
    }
    routes = {m.upper() + " " + re.sub(r"\{\w+\}", "{}", path) for path, ops in SCHEMA["paths"].items() for m in ops}
    assert set(rows) == routes == set(README_ANSWERS)
    components = SCHEMA["components"]["schemas"]
    for route, answer in README_ANSWERS.items():
        if answer is not None:
            fields = _first_fields(rows[route])
            assert len(fields) == len(set(fields)) and set(fields) == set(components[answer]["properties"]), route
    jobs = rows["POST /v1/jobs"]
    options = jobs[jobs.index("options?") :]
    named = set(re.findall(r"(\w+)(?: \(|,|\}|;)", options)) - {"null", "file", "mode", "part", "auto"}
    assert named == set(components["JobOptions"]["properties"])  # every option, and no other


# --- the served schema and answers ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("schema_server"), "--max-json-mb", "0.05")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def oem(shared_data) -> str:
    return str(shared_data / "openearthmap" / "oem_koeln_50.tif")


def test_the_served_schema_is_the_committed_one(server):
    served = server.http("GET", "/openapi.json")
    assert served.status_code == 200
    diff = "".join(
        list(
            difflib.unified_diff(
                COMMITTED.read_text(encoding="utf-8").splitlines(True),
                dump(served.json()).splitlines(True),
                "committed",
                "served",
            )
        )[:60]
    )
    assert served.json() == SCHEMA, (
        f"{COMMITTED} differs from the served /openapi.json: regenerate it with {REGENERATE}.\n{diff}"
    )


def _done(server, job_id: str, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        status = server.http("GET", f"/v1/jobs/{job_id}")
        check_answer(status)
        if status.json()["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_every_answer_of_a_job_follows_the_contract(server, oem):
    check_answer(server.http("GET", "/v1/health", token=None))
    check_answer(server.http("GET", "/v1/models"))
    job = {
        "raster": oem,
        "classes": ["building,roof", "tree"],
        "bbox": [346100, 5647600, 346300, 5647800],
        "bbox_crs": "EPSG:25832",
        "options": {"threshold": 0, "background": []},
    }  # every pixel gets a class
    estimate = server.http("POST", "/v1/estimate", json=job)
    assert estimate.status_code == 200
    check_answer(estimate)
    created = server.http("POST", "/v1/jobs", json=job)
    assert created.status_code == 202
    check_answer(created)
    job_id = created.json()["job_id"]
    assert _done(server, job_id).json()["state"] == "done"
    result = server.http("GET", f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.json()["features"]
    check_answer(result)
    check_answer(server.http("GET", f"/v1/jobs/{job_id}/result", params={"format": "gpkg"}))
    check_answer(server.http("DELETE", f"/v1/jobs/{job_id}"))  # a finished job: its status


def test_a_running_and_a_cancelled_job_and_an_upload_follow_the_contract(server, oem):
    created = server.http("POST", "/v1/jobs", json={"raster": oem, "classes": ["building"], "options": slow_options()})
    job_id = created.json()["job_id"]
    not_done = server.http("GET", f"/v1/jobs/{job_id}/result")
    assert not_done.status_code == 409
    check_answer(not_done)
    check_answer(server.http("GET", f"/v1/jobs/{job_id}"))
    cancelled = server.http("DELETE", f"/v1/jobs/{job_id}")
    check_answer(cancelled)
    assert _done(server, job_id).json()["state"] == "cancelled"
    with open(oem, "rb") as chip:
        upload = server.http(
            "POST",
            "/v1/jobs",
            files={"chip": ("chip.tif", chip, "image/tiff")},
            data={"request": '{"classes": ["tree"], "bbox": [346000, 5647500, 346100, 5647600]}'},
        )
    assert upload.status_code == 202
    check_answer(upload)
    assert _done(server, upload.json()["job_id"]).json()["state"] == "done"


def test_every_error_that_is_cheap_to_cause_follows_the_contract(server, oem, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    cases = [
        ("GET", "/v1/models", {"token": None}, "unauthorized"),
        ("GET", "/v1/models", {"token": "wrong-token"}, "unauthorized"),
        ("GET", "/v1/health", {"headers": {"Host": "evil.example.com"}}, "untrusted_host"),
        ("GET", "/v1/jobs/nope", {}, "no_such_job"),
        ("GET", "/v1/jobs/nope/result", {}, "no_such_job"),
        ("GET", "/v1/jobs/nope/result", {"params": {"format": "shp"}}, "invalid_request"),
        ("DELETE", "/v1/jobs/nope", {}, "no_such_job"),
        ("POST", "/v1/models/no-such-model/download", {}, "no_such_model"),
        ("POST", "/v1/models/sam-vit-b/import", {"json": {"path": "relative.pth"}}, "bad_path"),
        ("POST", "/v1/models/sam-vit-b/import", {"json": {"file": "/x.pth"}}, "invalid_request"),
        ("POST", "/v1/models/sam-vit-b/import", {"json": {"path": str(server.token_file)}}, "forbidden_path"),
        ("POST", "/v1/jobs", {"json": {"raster": "/nowhere/x.tif", "classes": ["a"]}}, "bad_path"),
        ("POST", "/v1/jobs", {"json": {"raster": str(text), "classes": ["a"]}}, "bad_request"),
        ("POST", "/v1/jobs", {"json": {"raster": oem, "classes": []}}, "bad_request"),
        ("POST", "/v1/jobs", {"json": {"raster": oem, "classes": ["a"], "model": "ViT-H-14"}}, "unknown_model"),
        ("POST", "/v1/jobs", {"json": {"raster": str(server.token_file), "classes": ["a"]}}, "forbidden_path"),
        (
            "POST",
            "/v1/jobs",
            {"json": {"raster": oem, "classes": ["a"], "options": {"threshold": 3}}},
            "invalid_request",
        ),
        ("POST", "/v1/jobs", {"json": {"classes": ["a"]}}, "invalid_request"),
        (
            "POST",
            "/v1/jobs",
            {"content": b"raster=x", "headers": {"content-type": "text/plain"}},
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/jobs",
            {"json": {"raster": oem, "classes": ["a"], "mask": {"padding": "x" * 60_000}}},
            "too_large",
        ),
        ("POST", "/v1/jobs", {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, "bad_multipart"),
        (
            "POST",
            "/v1/jobs",
            {"files": {"chip": ("c.tif", b"\0")}, "data": {"request": '{"classes": ["a"], "raster": "/x"}'}},
            "invalid_request",
        ),
        ("POST", "/v1/estimate", {"json": {"classes": ["a"]}}, "invalid_request"),
        (
            "POST",
            "/v1/estimate",
            {"json": {"raster": oem, "classes": ["a"], "options": {"resolution": 1e-9}}},
            "bad_request",
        ),
        ("GET", "/v1/nothing-here", {}, "http_error"),
        ("PUT", "/v1/jobs", {}, "http_error"),
    ]
    for method, path, kwargs, code in cases:
        response = server.http(method, path, **kwargs)
        assert response.status_code >= 400 and response.json()["error"]["code"] == code, (method, path, response.text)
        check_answer(response)
