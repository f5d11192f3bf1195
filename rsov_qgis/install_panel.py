# SPDX-License-Identifier: GPL-2.0-or-later
"""The backend installer in the panel: its options, Install and Cancel, a progress bar, the
installer's live output and its outcome.

The work is :mod:`install_backend`'s, run as a separate process (QProcess) by a Python found
outside QGIS (QGIS's ``sys.executable`` is the QGIS binary on Windows and macOS).
"""

from __future__ import annotations

from collections import deque

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QTextCursor
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import install_backend
from .compat import enum_value
from .paths import PACKAGE_PARENT
from .settings import Settings

TORCH_CHOICES = (("auto (CUDA where an NVIDIA GPU is present)", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"))
KILL_AFTER_MS = 10000  # a cancelled installer that has not stopped by then is killed
LOG_LINES = 5000
OK_COLOUR, BAD_COLOUR = "#2e7d32", "#c62828"


def _directory_widget(path: str, placeholder: str, tip: str) -> QgsFileWidget:
    widget = QgsFileWidget()
    widget.setStorageMode(enum_value((QgsFileWidget, "StorageMode.GetDirectory"), (QgsFileWidget, "GetDirectory")))
    widget.setFilePath(path)
    widget.lineEdit().setPlaceholderText(placeholder)
    widget.setToolTip(tip)
    return widget


class InstallPanel(QGroupBox):
    """Installs the backend into its own environment; emits ``installed(rsov executable)`` or
    ``failed(message)`` (a cancelled run emits neither)."""

    installed = pyqtSignal(str)
    failed = pyqtSignal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__("Install the backend", parent)
        self.setObjectName("rsovInstallPanel")
        self.settings = settings
        self.process: QProcess | None = None
        self._tail: deque[str] = deque(maxlen=200)  # the end of the output, for the error message
        self._rsov = ""
        self._cancelled = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.setInterval(KILL_AFTER_MS)
        self._kill_timer.timeout.connect(self._kill)

        self.prefix_widget = _directory_widget(
            settings.install_prefix,
            str(install_backend.default_prefix()),
            "The folder of the backend's own Python environment (several GB: torch and its CUDA libraries); "
            "an environment already there is reused",
        )
        self.python_widget = QgsFileWidget()
        self.python_widget.setFilePath(settings.install_python)
        self.python_widget.lineEdit().setPlaceholderText("found on PATH (Python 3.10 or newer)")
        self.python_widget.setToolTip("The Python the environment is made with (not QGIS's own)")
        self.torch_combo = QComboBox()
        for text, value in TORCH_CHOICES:
            self.torch_combo.addItem(text, value)
        self.torch_combo.setCurrentIndex(max(0, self.torch_combo.findData(settings.install_torch)))
        self.wheelhouse_widget = _directory_widget(
            settings.install_wheelhouse,
            "none: everything from pip's index",
            "A folder of wheels pip may install from (pip --find-links), for sites without internet",
        )
        self.offline_check = QCheckBox("Only from the wheelhouse (offline)")
        self.offline_check.setChecked(settings.install_offline)

        self.install_button = QPushButton("Install")
        self.install_button.setToolTip(
            "Create the environment, install torch and the backend into it, and point the rsov executable setting at it"
        )
        self.install_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.stage_label = QLabel("Not started")
        self.stage_label.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log.setMinimumHeight(140)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setObjectName("rsovInstallResult")
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        form.addRow("Folder", self.prefix_widget)
        form.addRow("Python", self.python_widget)
        form.addRow("PyTorch", self.torch_combo)
        form.addRow("Wheelhouse", self.wheelhouse_widget)
        form.addRow("", self.offline_check)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.install_button)
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(progress_row)
        layout.addWidget(self.stage_label)
        layout.addWidget(self.result_label)
        layout.addWidget(self.log, 1)  # below the result: an error's detail lines are the log's last lines

    # --- running ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        """Whether an installer process runs."""
        not_running = enum_value((QProcess, "ProcessState.NotRunning"), (QProcess, "NotRunning"))
        return self.process is not None and self.process.state() != not_running

    def start(self) -> bool:
        """Run the installer with the options shown; False (with the reason shown) when it cannot start."""
        if self.is_running():
            return False
        self._remember()
        request = self.settings.install_request()
        try:
            python = install_backend.launcher(request.python)  # a few quick probes
        except install_backend.InstallError as exc:
            self._show_result(exc.message, BAD_COLOUR)
            self.failed.emit(exc.message)
            return False
        self.log.clear()
        self._tail.clear()
        self._rsov, self._cancelled = "", False
        self._show_result("", OK_COLOUR)
        self.process = QProcess(self)
        environment = QProcessEnvironment()
        for name, value in install_backend.child_environment().items():
            environment.insert(name, value)
        self.process.setProcessEnvironment(environment)
        self.process.setWorkingDirectory(str(PACKAGE_PARENT))  # where `-m rsov_qgis.install_backend` imports
        self.process.setProcessChannelMode(
            enum_value((QProcess, "ProcessChannelMode.MergedChannels"), (QProcess, "MergedChannels"))
        )
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)
        self._set_busy(True)
        self._line(f"{python.executable} {' '.join(request.arguments())}")
        self.process.start(python.executable, request.arguments())
        return True

    def cancel(self) -> None:
        """Stop the installer and its pip (killed if they do not stop within 10 s); a later
        Install continues where it stopped."""
        process = self.process
        if process is None or not self.is_running() or self._cancelled:
            return
        self._cancelled = True
        self.stage_label.setText("Cancelling…")
        install_backend.stop_installer(int(process.processId()))
        self._kill_timer.start()

    def shutdown(self) -> None:
        """Stop a running installer (plugin unload, QGIS exit)."""
        process = self.process
        if process is not None and self.is_running():
            self.cancel()
            if not process.waitForFinished(KILL_AFTER_MS):
                self._kill()

    def _kill(self) -> None:
        process = self.process
        if process is not None and self.is_running():
            process.kill()
            process.waitForFinished(2000)

    # --- output -----------------------------------------------------------------------------
    def _read(self) -> None:
        while self.process is not None and self.process.canReadLine():
            self._line(bytes(self.process.readLine()).decode("utf-8", "replace").rstrip("\r\n"))

    def _line(self, line: str) -> None:
        """One line of the installer: into the log, and into the progress bar or the result."""
        self.log.appendPlainText(line)
        self._tail.append(line)
        progress = install_backend.parse_progress(line)
        if progress is not None:
            self.progress.setValue(progress[0])
            self.stage_label.setText(progress[1][:1].upper() + progress[1][1:])
        self._rsov = install_backend.done_path(line) or self._rsov

    def _on_finished(self, exit_code: int, *_status) -> None:
        self._kill_timer.stop()
        process = self.process
        if process is None:
            return  # already ended (it failed to start)
        rest = bytes(process.readAll()).decode("utf-8", "replace").strip()
        if rest:  # a last line without its newline
            self._line(rest)
        process.deleteLater()
        self.process = None
        self._set_busy(False)
        self.log.moveCursor(QTextCursor.MoveOperation.End)  # the outcome (and an error's details) in view
        if exit_code == 0 and self._rsov:
            self._show_result(
                f"Installed: {self._rsov}. The rsov executable setting points at it now: press Start backend.",
                OK_COLOUR,
            )
            self.installed.emit(self._rsov)
        elif self._cancelled:
            self.stage_label.setText("Cancelled")
            self._show_result("Cancelled: press Install to continue where it stopped.", BAD_COLOUR)
        else:
            message = (
                install_backend.error_message("\n".join(self._tail))
                or f"The installer stopped (exit code {exit_code}) without saying why: see its output below."
            )
            self.stage_label.setText("Failed")
            self._show_result(message.splitlines()[0], BAD_COLOUR)  # its detail lines end the log
            self.failed.emit(message.splitlines()[0])

    def _on_error(self, error) -> None:
        if error == enum_value((QProcess, "ProcessError.FailedToStart"), (QProcess, "FailedToStart")):
            program = self.process.program() if self.process is not None else ""
            self.process = None
            self._set_busy(False)
            message = f"The installer could not be started with {program}: choose a Python 3.10+ above."
            self._show_result(message, BAD_COLOUR)
            self.failed.emit(message)

    # --- widgets ----------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        for widget in (
            self.install_button,
            self.prefix_widget,
            self.python_widget,
            self.torch_combo,
            self.wheelhouse_widget,
            self.offline_check,
        ):
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setValue(0)
            self.stage_label.setText("Starting…")

    def _show_result(self, text: str, colour: str) -> None:
        self.result_label.setText(text)
        self.result_label.setStyleSheet(f"color: {colour}")

    def _remember(self) -> None:
        self.settings.install_prefix = self.prefix_widget.filePath().strip()
        self.settings.install_python = self.python_widget.filePath().strip()
        self.settings.install_torch = self.torch_combo.currentData()
        self.settings.install_wheelhouse = self.wheelhouse_widget.filePath().strip()
        self.settings.install_offline = self.offline_check.isChecked()
        self.settings.save()
