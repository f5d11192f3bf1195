# SPDX-License-Identifier: GPL-2.0-or-later
"""Starting and stopping ``rsov serve`` as a separate process (QProcess, never in QGIS's Python).

The executable is the backend environment's ``rsov`` script, or its Python interpreter (then
``python -m rsov.cli serve`` is run). Readiness is polled on ``GET /v1/health`` from a timer,
so QGIS stays responsive while the model loads; meanwhile the elapsed time and the process's
latest output lines are reported on each poll. Processing, which runs in a worker thread or
(qgis_process) in the main thread, starts one and waits for it with :func:`start_and_wait`.
"""

from __future__ import annotations

import queue
import shlex
import shutil
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from qgis.PyQt.QtCore import (
    QEventLoop,
    QObject,
    QProcess,
    QProcessEnvironment,
    Qt,
    QThread,
    QTimer,
    pyqtSignal,
    pyqtSlot,
)

from .backend_client import BackendClient, BackendError, Health, JobCancelled
from .compat import enum_value

START_TIMEOUT_S = 180.0  # loading a large model on a CPU takes a while
POLL_MS = 500
WAIT_REPORT_S = 5.0  # how often a waiting Processing run says how long it has waited


def find_executable(configured: str) -> str:
    """The configured executable, else ``rsov`` on PATH; "" when there is none."""
    if configured:
        return configured if Path(configured).is_file() else ""
    return shutil.which("rsov") or ""


def serve_command(executable: str, url: str, token_file: str, model: str = "") -> tuple[str, list[str]]:
    """The program and arguments that serve the backend at ``url``."""
    parts = urllib.parse.urlsplit(url)
    args = [
        "serve",
        "--host",
        parts.hostname or "127.0.0.1",
        "--port",
        str(parts.port or 8765),
        "--token-file",
        str(Path(token_file).expanduser()),
    ]
    if model:
        args += ["--model", model]
    if Path(executable).name.startswith("python"):
        args = ["-m", "rsov.cli", *args]
    return executable, args


def serve_shell_command(url: str, token_file: str, model: str = "") -> str:
    """``rsov serve ...`` for a shell: the backend the plugin's settings point at."""
    program, args = serve_command("rsov", url, token_file, model)
    return shlex.join([program, *args])


class BackendProcess(QObject):
    """One backend process started by the plugin. While it starts it emits ``starting(elapsed
    seconds, latest output lines)``, then ``ready(Health)`` or ``failed(message, missing)``,
    ``missing`` telling that no backend is installed (the installer is the cure). A process that
    exits once ready (killed, out of memory) emits ``stopped(its last lines)``, of what it printed
    once ready (its start-up banner says nothing about why it stopped)."""

    starting = pyqtSignal(float, str)
    ready = pyqtSignal(object)
    failed = pyqtSignal(str, bool)
    stopped = pyqtSignal(str)
    _start_requested = pyqtSignal(str, str, str, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._start_requested.connect(self.start)  # queued into this object's thread when emitted from another
        self.process: QProcess | None = None
        self.client: BackendClient | None = None
        self._output = ""
        self._since_ready = ""  # the output printed once it was ready
        self._started = 0.0
        self._ready = False
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    def is_running(self) -> bool:
        """Whether the process the plugin started is still alive."""
        not_running = enum_value((QProcess, "ProcessState.NotRunning"), (QProcess, "NotRunning"))
        return self.process is not None and self.process.state() != not_running

    def request_start(self, executable: str, url: str, token_file: str, model: str = "") -> None:
        """:meth:`start`, from any thread: it runs in this object's thread, where the QProcess
        and the timer must live (at once when that is the calling thread)."""
        self._start_requested.emit(executable, url, token_file, model)

    @pyqtSlot(str, str, str, str)
    def start(self, executable: str, url: str, token_file: str, model: str = "") -> None:
        """Launch ``rsov serve`` unless one runs already; the outcome arrives as a signal."""
        if self.is_running():
            return
        found = find_executable(executable)
        if not found:
            where = f"'{executable}' does not exist" if executable else "no `rsov` is on PATH"
            self.failed.emit(
                f"The rsov backend is not installed here ({where}): install it with Install backend… on the "
                "Backend tab, or set the rsov executable of an existing environment in the rsov settings.",
                True,
            )
            return
        self.client = BackendClient(url, token_file, timeout=2.0)
        program, args = serve_command(found, url, token_file, model)
        self._output = self._since_ready = ""
        self._ready = False
        self.process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONUNBUFFERED", "1")  # its log lines as they are written, not in blocks
        self.process.setProcessEnvironment(environment)
        self.process.setProcessChannelMode(
            enum_value((QProcess, "ProcessChannelMode.MergedChannels"), (QProcess, "MergedChannels"))
        )
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)
        self.process.start(program, args)
        self._started = time.monotonic()
        self._timer.start()

    def stop(self) -> None:
        """Terminate the process (killed if it does not exit within 5 s)."""
        self._timer.stop()
        if self.process is None:
            return
        process, self.process = self.process, None
        process.finished.disconnect(self._on_finished)
        process.errorOccurred.disconnect(self._on_error)
        if process.state() != enum_value((QProcess, "ProcessState.NotRunning"), (QProcess, "NotRunning")):
            process.terminate()
            if not process.waitForFinished(5000):
                process.kill()
                process.waitForFinished(2000)
        process.deleteLater()

    def output_tail(self, lines: int = 5, since_ready: bool = False) -> str:
        """The last lines the process printed (for error messages), or printed once ready."""
        return "\n".join((self._since_ready if since_ready else self._output).strip().splitlines()[-lines:])

    def _read_output(self) -> None:
        if self.process is not None:
            data = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
            self._output = (self._output + data)[-20000:]
            if self._ready:
                self._since_ready = (self._since_ready + data)[-20000:]

    def _poll(self) -> None:
        client = self.client
        if client is None:
            return  # not started
        try:
            health: Health = client.health(timeout=1.0)
        except BackendError:
            elapsed = time.monotonic() - self._started
            if elapsed > START_TIMEOUT_S:
                self._timer.stop()
                self.failed.emit(
                    f"The backend did not answer within {START_TIMEOUT_S:.0f} s. {self.output_tail()}", False
                )
            else:
                self.starting.emit(elapsed, self.output_tail(3))
            return
        self._timer.stop()
        self._read_output()  # what it printed while starting is not part of what comes after
        self._ready = True
        self.ready.emit(health)

    def _on_error(self, error) -> None:
        if error == enum_value((QProcess, "ProcessError.FailedToStart"), (QProcess, "FailedToStart")):
            self._timer.stop()
            program = self.process.program() if self.process is not None else ""
            self.process = None
            self.failed.emit(
                f"The rsov backend could not be started ({program}): check the rsov executable in the settings.", False
            )

    def _on_finished(self, exit_code: int, *_status) -> None:
        self._timer.stop()
        self._read_output()
        self.process = None
        if self._ready:
            self.stopped.emit(self.output_tail(3, since_ready=True))
        else:
            self.failed.emit(f"The rsov backend exited (code {exit_code}): {self.output_tail() or 'no output'}", False)


def start_and_wait(
    backend: BackendProcess,
    executable: str,
    url: str,
    token_file: str,
    model: str,
    cancelled: Callable[[], bool],
    waiting: Callable[[float, str], None],
) -> Health:
    """Start ``backend`` (unless it runs already) and block until the backend at ``url`` answers,
    from any thread; ``waiting(elapsed s, latest output lines)`` is called every WAIT_REPORT_S
    meanwhile. Raises BackendError ``not_started`` with the reason, or JobCancelled."""
    failures: queue.Queue = queue.Queue()

    def on_failed(text: str, _missing: bool) -> None:
        failures.put(text)

    direct = enum_value((Qt, "ConnectionType.DirectConnection"), (Qt, "DirectConnection"))
    backend.failed.connect(on_failed, direct)  # run in the backend's thread: the queue carries the reason over
    wait = _wait_in_event_loop if QThread.currentThread() == backend.thread() else _wait_on_queue
    client = BackendClient(url, token_file)
    started, report_at = time.monotonic(), WAIT_REPORT_S
    try:
        backend.request_start(executable, url, token_file, model)
        while (failure := wait(failures)) is None:
            try:
                return client.health(timeout=1.0)
            except BackendError:
                pass
            if cancelled():
                raise JobCancelled()
            elapsed = time.monotonic() - started
            if elapsed > START_TIMEOUT_S + WAIT_REPORT_S:  # e.g. a process that runs but never answers
                raise BackendError("not_started", f"The backend did not answer within {START_TIMEOUT_S:.0f} s.")
            if elapsed >= report_at:
                waiting(elapsed, backend.output_tail(3))
                report_at += WAIT_REPORT_S
        raise BackendError("not_started", failure)
    finally:
        backend.failed.disconnect(on_failed)


def _wait_on_queue(failures: queue.Queue) -> str | None:
    """A failure within one poll interval, or None (another thread runs the backend's events)."""
    try:
        return failures.get(timeout=POLL_MS / 1000)
    except queue.Empty:
        return None


def _wait_in_event_loop(failures: queue.Queue) -> str | None:
    """A failure within one poll interval, or None, processing this thread's events meanwhile:
    the backend's timer, output and exit need them, and nothing else runs them now."""
    loop = QEventLoop()
    QTimer.singleShot(POLL_MS, loop.quit)
    loop.exec()
    try:
        return failures.get_nowait()
    except queue.Empty:
        return None
