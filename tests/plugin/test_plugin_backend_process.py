"""Starting and stopping the backend process (a stand-in `rsov` that serves the fake backend), what
the dock shows while it starts, and a backend that dies while idle."""

import os
import re
import signal
import stat
import sys
import threading
from pathlib import Path

import pytest
from helpers import free_port
from qgis.core import Qgis

from rsov_qgis.backend_client import BackendClient, BackendError, JobCancelled
from rsov_qgis.backend_process import BackendProcess, serve_command, serve_shell_command, start_and_wait

FAKE = Path(__file__).resolve().parent / "fake_backend.py"


def shell_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_rsov_script(path: Path, before: str = "") -> Path:
    """`rsov serve --host H --port P --token-file F [--model M]` -> ``before`` (shell lines), then
    the fake backend on P with F."""
    return shell_script(path, f'[ "$1" = serve ] || exit 2\n{before}\nexec {sys.executable} {FAKE} "$5" "$7"')


@pytest.fixture
def fake_rsov(tmp_path) -> Path:
    return fake_rsov_script(tmp_path / "rsov")


@pytest.fixture
def process(qtbot):
    backend = BackendProcess()
    yield backend
    backend.stop()


def test_serve_command():
    assert serve_command("/env/bin/rsov", "http://127.0.0.1:9000", "/t", "tiny-random") == (
        "/env/bin/rsov",
        ["serve", "--host", "127.0.0.1", "--port", "9000", "--token-file", "/t", "--model", "tiny-random"],
    )
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
    broken = shell_script(tmp_path / "rsov", 'echo "rsov: weights for ViT-B-16-openai are missing"\nexit 3')
    with qtbot.waitSignal(process.failed, timeout=10000) as failed:
        process.start(str(broken), f"http://127.0.0.1:{free_port()}", str(tmp_path / "token"))
    assert "exited (code 3)" in failed.args[0] and "weights for ViT-B-16-openai are missing" in failed.args[0]
    assert not failed.args[1]


def test_start_and_wait_in_the_main_thread_reports_the_wait(process, tmp_path):
    """qgis_process runs Processing in the main thread: the wait runs the backend's events itself."""
    slow = fake_rsov_script(tmp_path / "rsov", 'echo "rsov: loading the model ViT-B-16-openai"\nsleep 6')
    waits, url = [], f"http://127.0.0.1:{free_port()}"
    health = start_and_wait(
        process,
        str(slow),
        url,
        str(tmp_path / "token"),
        "",
        lambda: False,
        lambda elapsed, log: waits.append((round(elapsed), log)),
    )
    assert health.model == "fake-model" and process.is_running()
    assert waits and waits[0][0] == 5 and waits[0][1].endswith("rsov: loading the model ViT-B-16-openai")
    # running already (the Backend tab started it, say): it answers at once
    assert start_and_wait(process, str(slow), url, str(tmp_path / "token"), "", lambda: False, waits.append)
    assert len(waits) == 1


def test_start_and_wait_from_a_worker_thread(process, fake_rsov, tmp_path, qtbot):
    """Processing's dialog runs the algorithm in a worker thread: the process still starts (and
    lives) in the main thread, whose event loop runs meanwhile."""
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(
            start_and_wait(
                process,
                str(fake_rsov),
                f"http://127.0.0.1:{free_port()}",
                str(tmp_path / "token"),
                "",
                lambda: False,
                lambda *_: None,
            )
        )
    )
    worker.start()
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=30000)
    assert answers[0].model == "fake-model" and process.is_running()
    assert process.process.thread() == process.thread()


def test_start_and_wait_says_why_it_failed_or_stops_when_cancelled(process, tmp_path):
    broken = shell_script(tmp_path / "rsov", 'echo "rsov: weights for ViT-B-16-openai are missing"\nexit 3')
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match="exited \\(code 3\\).*weights for ViT-B-16-openai") as failed:
        start_and_wait(process, str(broken), url, str(tmp_path / "token"), "", lambda: False, lambda *_: None)
    assert failed.value.code == "not_started"
    slow = fake_rsov_script(tmp_path / "slow", "sleep 30")
    with pytest.raises(JobCancelled):
        start_and_wait(process, str(slow), url, str(tmp_path / "token"), "", lambda: True, lambda *_: None)


def test_serve_shell_command_quotes_the_token_file():
    assert serve_shell_command("http://127.0.0.1:9000", "/my tokens/t", "tiny-random") == (
        "rsov serve --host 127.0.0.1 --port 9000 --token-file '/my tokens/t' --model tiny-random"
    )


def _dock(iface, qtbot, tmp_path, monkeypatch, rsov: Path):
    """A dock whose Start backend runs ``rsov`` at a free port."""
    from rsov_qgis.dock import RsovDock

    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    dock = RsovDock(iface)
    qtbot.addWidget(dock)
    dock.executable_widget.setFilePath(str(rsov))
    return dock


def test_a_backend_that_dies_once_ready_leaves_its_last_lines(process, qtbot, tmp_path):
    dying = shell_script(
        tmp_path / "rsov",
        f'{sys.executable} {FAKE} "$5" "$7" &\n'
        'while [ ! -s "$7" ]; do sleep 0.1; done\nsleep 3\n'
        'echo "MemoryError: cannot allocate 3.2 GiB"\nkill -9 $!\nexit 1',
    )
    with qtbot.waitSignal(process.ready, timeout=30000):
        process.start(str(dying), f"http://127.0.0.1:{free_port()}", str(tmp_path / "token"))
    with qtbot.waitSignal(process.stopped, timeout=30000) as stopped:
        pass
    assert stopped.args[0].splitlines()[-1] == "MemoryError: cannot allocate 3.2 GiB"


def test_dock_starts_and_stops_the_backend(qgis_iface, qtbot, qgis_new_project, fake_rsov, tmp_path, monkeypatch):
    dock = _dock(qgis_iface, qtbot, tmp_path, monkeypatch, fake_rsov)
    url = dock.settings.backend_url
    dock.start_backend()
    assert not dock.start_button.isEnabled() and "Starting" in dock.status_label.text()
    qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=30000)
    assert "fake-model" in dock.status_label.text() and dock.stop_button.isEnabled()
    dock.start_backend()  # a second press finds the running backend
    assert any("already answers" in m for m in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Info))
    dock.shutdown()  # what unloading the plugin or quitting QGIS does
    with pytest.raises(BackendError):
        BackendClient(url).health()


def test_dock_shows_the_time_and_the_log_while_the_backend_starts(
    qgis_iface, qtbot, qgis_new_project, tmp_path, monkeypatch
):
    slow = fake_rsov_script(tmp_path / "rsov", 'echo "rsov: loading the model ViT-B-16-openai"\nsleep 3')
    dock = _dock(qgis_iface, qtbot, tmp_path, monkeypatch, slow)
    try:
        dock.start_backend()
        qtbot.waitUntil(
            lambda: (
                re.search(r"Starting the backend \(loading the model\): [1-9] s…", dock.status_label.text()) is not None
            ),
            timeout=10000,
        )
        assert "rsov: loading the model ViT-B-16-openai" in dock.status_label.text()  # its latest output
        qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=30000)
        assert "loading the model" not in dock.status_label.text()
    finally:
        dock.shutdown()


def test_a_backend_that_dies_while_idle_can_be_restarted(
    qgis_iface, qtbot, qgis_new_project, fake_rsov, tmp_path, monkeypatch
):
    from rsov_qgis.dock import CRASHED

    dock = _dock(qgis_iface, qtbot, tmp_path, monkeypatch, fake_rsov)
    try:
        dock.start_backend()
        qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=30000)
        os.kill(dock.backend.process.processId(), signal.SIGKILL)
        qtbot.waitUntil(lambda: CRASHED in dock.status_label.text(), timeout=10000)
        assert "<br>" not in dock.status_label.text()  # killed: it printed nothing since it was ready
        assert dock.restart_button.text() == "Restart backend" and not dock.restart_button.isHidden()
        assert qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical) == []  # the status line says it
        dock.restart_button.click()
        qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=30000)
        assert dock.restart_button.isHidden() and dock.backend.is_running()
    finally:
        dock.shutdown()
