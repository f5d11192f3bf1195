"""Starting and stopping the backend process (a stand-in `rsov` that serves the fake backend)."""

import stat
import sys
from pathlib import Path

import pytest
from qgis.core import Qgis

from helpers import free_port
from rsov_qgis.backend_client import BackendClient, BackendError
from rsov_qgis.backend_process import BackendProcess, serve_command

FAKE = Path(__file__).resolve().parent / "fake_backend.py"


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_rsov(tmp_path) -> Path:
    """`rsov serve --host H --port P --token-file F [--model M]` -> the fake backend on P with F."""
    return _script(tmp_path / "rsov", f'[ "$1" = serve ] || exit 2\nexec {sys.executable} {FAKE} "$5" "$7"')


@pytest.fixture
def process(qtbot):
    backend = BackendProcess()
    yield backend
    backend.stop()


def test_serve_command():
    assert serve_command("/env/bin/rsov", "http://127.0.0.1:9000", "/t", "tiny-random") == (
        "/env/bin/rsov", ["serve", "--host", "127.0.0.1", "--port", "9000", "--token-file", "/t", "--model", "tiny-random"])
    program, args = serve_command("/env/bin/python3.11", "http://localhost", "/t")
    assert args[:3] == ["-m", "rsov.cli", "serve"] and args[-4:] == ["--port", "8765", "--token-file", "/t"]


def test_start_waits_for_health_and_stop_ends_it(process, fake_rsov, tmp_path, qtbot):
    url = f"http://127.0.0.1:{free_port()}"
    token_file = tmp_path / "config" / "token"
    with qtbot.waitSignal(process.ready, timeout=30000) as ready:
        process.start(str(fake_rsov), url, str(token_file))
    assert ready.args[0].model == "fake-model" and process.is_running()
    assert BackendClient(url, token_file).models()  # the token the backend wrote works
    process.stop()
    assert not process.is_running()
    with pytest.raises(BackendError, match="No rsov backend answers"):
        BackendClient(url).health()


def test_not_installed(process, qtbot, tmp_path, monkeypatch):
    with qtbot.waitSignal(process.failed) as failed:
        process.start(str(tmp_path / "nowhere" / "rsov"), "http://127.0.0.1:1", "/t")
    assert "not installed" in failed.args[0] and "does not exist" in failed.args[0]
    assert "Install backend…" in failed.args[0] and failed.args[1]  # the installer is the cure
    monkeypatch.setenv("PATH", str(tmp_path))
    with qtbot.waitSignal(process.failed) as failed:
        process.start("", "http://127.0.0.1:1", "/t")
    assert "no `rsov` is on PATH" in failed.args[0]


def test_backend_that_exits_is_reported_with_its_output(process, qtbot, tmp_path):
    broken = _script(tmp_path / "rsov", 'echo "rsov: weights for ViT-B-16-openai are missing"\nexit 3')
    with qtbot.waitSignal(process.failed, timeout=10000) as failed:
        process.start(str(broken), f"http://127.0.0.1:{free_port()}", str(tmp_path / "token"))
    assert "exited (code 3)" in failed.args[0] and "weights for ViT-B-16-openai are missing" in failed.args[0]
    assert not failed.args[1]


def test_dock_starts_and_stops_the_backend(qgis_iface, qtbot, qgis_new_project, fake_rsov, tmp_path, monkeypatch):
    from rsov_qgis.dock import RsovDock

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RSOV_BACKEND_URL", url)
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    dock = RsovDock(qgis_iface)
    qtbot.addWidget(dock)
    dock.executable_widget.setFilePath(str(fake_rsov))
    dock.start_backend()
    assert not dock.start_button.isEnabled() and "Starting" in dock.status_label.text()
    qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=30000)
    assert "fake-model" in dock.status_label.text() and dock.stop_button.isEnabled()
    dock.start_backend()  # a second press finds the running backend
    assert any("already answers" in m for m in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Info))
    dock.shutdown()  # what unloading the plugin or quitting QGIS does
    with pytest.raises(BackendError):
        BackendClient(url).health()
