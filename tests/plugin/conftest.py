"""Fixtures of the plugin tests (real QGIS, offscreen).

Outside QGIS's Python (e.g. the backend's `pytest tests`) this folder is skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
OEM_RASTER = SHARED_DATA / "openearthmap" / "oem_koeln_50.tif"

if importlib.util.find_spec("qgis") is None:  # never a silent "collected 0 items"
    import pytest

    raise pytest.UsageError(
        "tests/plugin runs in QGIS's Python (python3-qgis), not this one: `make test-plugin`, "
        "or .qgis-venv/bin/python -m pytest tests/plugin"
    )
else:
    import pytest
    from fake_backend import FakeBackend
    from qgis.core import QgsProject, QgsRasterLayer, QgsSettings

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    @pytest.fixture(autouse=True)
    def clean_settings(monkeypatch, tmp_path):
        """Each test starts with no rsov settings, no backend environment and an empty project."""
        QgsSettings().remove("rsov")
        for variable in ("RSOV_BACKEND_URL", "RSOV_TOKEN_FILE"):
            monkeypatch.delenv(variable, raising=False)
        QgsSettings().setValue("rsov/output_dir", str(tmp_path / "results"))
        yield
        QgsProject.instance().clear()
        QgsSettings().remove("rsov")

    @pytest.fixture
    def dock(qgis_iface, qtbot, qgis_new_project):
        """The rsov dock in the test QGIS, shut down (backend process included) afterwards."""
        from rsov_qgis.dock import RsovDock

        widget = RsovDock(qgis_iface)
        qtbot.addWidget(widget)
        yield widget
        widget.shutdown()

    @pytest.fixture
    def oem_raster() -> Path:
        """The OpenEarthMap sample (1000x1000 RGB, EPSG:25832), read-only."""
        assert OEM_RASTER.is_file(), f"sample raster {OEM_RASTER} is missing"
        return OEM_RASTER

    @pytest.fixture
    def oem_layer(oem_raster, qgis_new_project) -> QgsRasterLayer:
        layer = QgsRasterLayer(str(oem_raster), "oem_koeln_50")
        assert layer.isValid()
        QgsProject.instance().addMapLayer(layer)
        return layer

    @pytest.fixture
    def fake_backend(tmp_path, monkeypatch):
        """A running contract-following fake backend; the environment points the plugin at it."""
        token_file = tmp_path / "token"
        backend = FakeBackend()
        token_file.write_text(backend.token + "\n")
        backend.start()
        backend.token_file = token_file
        monkeypatch.setenv("RSOV_BACKEND_URL", backend.url)
        monkeypatch.setenv("RSOV_TOKEN_FILE", str(token_file))
        yield backend
        backend.stop()

    @pytest.fixture(scope="session")
    def plugin_zip() -> Path:
        """dist/rsov_qgis.zip, freshly built by `make package`."""
        import subprocess

        subprocess.run(["make", "-s", "-C", str(REPO), "package"], check=True, capture_output=True)
        return REPO / "dist" / "rsov_qgis.zip"

    RSOV = REPO / ".venv" / "bin" / "rsov"

    def real_backend_available() -> bool:
        """Whether the backend's environment has `rsov serve`."""
        import subprocess

        if not RSOV.exists():
            return False
        return subprocess.run([str(RSOV), "serve", "--help"], capture_output=True).returncode == 0

    @contextmanager
    def serving(folder: Path, *args: str, env: dict[str, str] | None = None):
        """`rsov serve ARGS` on a free port, its output in FOLDER/serve.log, until the block ends;
        yields {"url", "token_file", "process"}. ``env`` is added to the environment."""
        import os
        import subprocess
        import time

        from helpers import free_port

        from rsov_qgis.backend_client import BackendClient, BackendError

        assert real_backend_available(), f"{RSOV} serve is not available (run `make setup`)"
        port = free_port()
        token_file = folder / "token"
        with open(folder / "serve.log", "w") as log:
            process = subprocess.Popen(
                [str(RSOV), "serve", *args, "--port", str(port), "--token-file", str(token_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    BackendClient(url, timeout=1).health()
                    break
                except BackendError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        process.kill()
                        pytest.fail(f"rsov serve did not start:\n{(folder / 'serve.log').read_text()[-3000:]}")
                    time.sleep(0.3)
            try:
                yield {"url": url, "token_file": token_file, "process": process}
            finally:
                process.terminate()
                process.wait(timeout=20)

    @pytest.fixture(scope="session")
    def real_backend(tmp_path_factory):
        """`rsov serve --model tiny-random` on a free port (`make test` builds the backend first)."""
        with serving(tmp_path_factory.mktemp("real_backend"), "--model", "tiny-random") as backend:
            yield backend

    @pytest.fixture
    def use_real_backend(real_backend, monkeypatch):
        """Point the plugin (through the environment) at the real backend."""
        monkeypatch.setenv("RSOV_BACKEND_URL", real_backend["url"])
        monkeypatch.setenv("RSOV_TOKEN_FILE", str(real_backend["token_file"]))
        return real_backend
