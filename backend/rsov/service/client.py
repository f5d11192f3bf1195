"""A tiny Python client for ``rsov serve`` (standard library only). The contract is the HTTP API.

client = Client("http://127.0.0.1:8765", token_file="~/.config/rsov/token")
job = client.submit("/data/ortho.tif", ["building,roof", "tree"], bbox=(...), bbox_crs="EPSG:25832")
client.wait(job)
geojson = client.result(job)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class ClientError(Exception):
    """The backend answered with an error (``status`` and ``code`` from its JSON body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8765",
        token: str | None = None,
        token_file: str | Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = (
            token if token is not None else Path(token_file).expanduser().read_text().strip() if token_file else ""
        )
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, raw: bool = False):
        """One HTTP call; JSON in and out (bytes out with ``raw``). Errors raise ``ClientError``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            # the backend's own http URL, given by the user
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # nosec B310
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": f"HTTP {exc.code}"}
            raise ClientError(exc.code, error["code"], error["message"]) from None
        return payload if raw else json.loads(payload)

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def submit(
        self,
        raster: str,
        classes: list[str],
        bbox: tuple | None = None,
        bbox_crs: str | None = None,
        mask: dict | None = None,
        **options,
    ) -> str:
        return self.request("POST", "/v1/jobs", _job(raster, classes, bbox, bbox_crs, mask, options))["job_id"]

    def estimate(
        self,
        raster: str,
        classes: list[str],
        bbox: tuple | None = None,
        bbox_crs: str | None = None,
        mask: dict | None = None,
        **options,
    ) -> dict:
        """What the job would cost: ``{resolution_m, rule, working_size, output_size, windows, ...}``."""
        return self.request("POST", "/v1/estimate", _job(raster, classes, bbox, bbox_crs, mask, options))

    def status(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def wait(
        self, job_id: str, timeout: float = 600.0, poll_s: float = 0.1, on_status: Callable[[dict], None] | None = None
    ) -> dict:
        """Poll until the job is done, failed or cancelled; returns its last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if on_status is not None:
                on_status(status)
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['state']} after {timeout} s")
            time.sleep(poll_s)

    def result(self, job_id: str, format: str = "geojson"):
        """The GeoJSON dict, or the GeoPackage bytes with ``format="gpkg"``."""
        return self.request("GET", f"/v1/jobs/{job_id}/result?format={format}", raw=format == "gpkg")

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{job_id}")


def _job(raster: str, classes: list[str], bbox, bbox_crs, mask, options: dict) -> dict:
    body = {"raster": raster, "classes": classes, "bbox": bbox, "bbox_crs": bbox_crs, "options": options}
    if mask is not None:
        body["mask"] = mask
    return body
