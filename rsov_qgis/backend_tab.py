# SPDX-License-Identifier: GPL-2.0-or-later
"""The panel's Backend tab: where the backend is (URL, token file, rsov executable), its model and
weights, the output folder, Start/Stop/Check, and the installer.

Widgets and their wiring only; the dock runs the backend (:mod:`backend_process`).
"""

from __future__ import annotations

from collections.abc import Callable

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from .compat import enum_value
from .install_panel import InstallPanel
from .models_panel import ModelsPanel
from .settings import Settings


class BackendTab(QWidget):
    """The Backend tab; its fields are remembered in ``settings``, ``message(text, level)``
    reports to the user.

    ``start_requested``, ``stop_requested`` and ``check_requested``: Start, Stop or Check was
    pressed; ``installed(rsov)``: the installer put a backend in place, and the settings point at it.
    """

    start_requested = pyqtSignal()
    stop_requested = pyqtSignal()
    check_requested = pyqtSignal()
    installed = pyqtSignal(str)

    def __init__(self, settings: Settings, message: Callable[[str, str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.url_edit = QLineEdit(settings.backend_url)
        self.token_widget = QgsFileWidget()
        self.token_widget.setFilePath(settings.token_file)
        self.executable_widget = QgsFileWidget()
        self.executable_widget.setFilePath(settings.backend_executable)
        self.executable_widget.lineEdit().setPlaceholderText("rsov on PATH")
        self.executable_widget.setToolTip(
            "The `rsov` script of the backend's environment (e.g. .venv/bin/rsov), "
            "or the Python interpreter of that environment"
        )
        self.models_panel = ModelsPanel(settings.model, lambda: settings.client(timeout=10.0))
        self.models_panel.changed.connect(self.remember)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(
            enum_value((QgsFileWidget, "StorageMode.GetDirectory"), (QgsFileWidget, "GetDirectory"))
        )
        self.output_widget.setFilePath(settings.output_dir)
        self.output_widget.lineEdit().setPlaceholderText(str(settings.results_dir()))
        self.output_widget.setToolTip(
            "Results of an unsaved project go here; a saved project keeps them in rsov_results/ beside the project file"
        )
        for name, widget in (("backend_url", self.url_edit), ("token_file", self.token_widget)):
            variable = Settings.from_environment(name)
            if variable:
                widget.setEnabled(False)
                widget.setToolTip(f"Set by the environment variable {variable}")
        self.url_edit.editingFinished.connect(self.remember)
        for widget in (self.token_widget, self.executable_widget, self.output_widget):
            widget.fileChanged.connect(self.remember)

        self.start_button = QPushButton("Start backend")
        self.start_button.setToolTip("Run `rsov serve` as a separate process; it stops when QGIS quits")
        self.start_button.clicked.connect(self.start_requested)
        self.stop_button = QPushButton("Stop backend")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        check_button = QPushButton("Check connection")
        check_button.clicked.connect(self.check_requested)
        install_button = QPushButton("Install backend…")
        install_button.setToolTip("Install the backend (torch and rsov) into its own Python environment")
        install_button.clicked.connect(self.show_installer)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, check_button, install_button):
            buttons.addWidget(button)
        self.install_panel = InstallPanel(settings)
        self.install_panel.setVisible(False)
        self.install_panel.installed.connect(self._on_installed)
        self.install_panel.failed.connect(lambda text: message(f"The backend was not installed: {text}", "Critical"))

        form = QFormLayout()
        form.addRow("Backend URL", self.url_edit)
        form.addRow("Token file", self.token_widget)
        form.addRow("rsov executable", self.executable_widget)
        form.addRow("Model", self.models_panel.model_combo)
        form.addRow("Weights", self.models_panel)
        form.addRow("Output folder", self.output_widget)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.install_panel, 1)
        layout.addStretch(1)

    def remember(self, *_args) -> None:
        """Store the fields in the settings (what Start, Check and the client then use)."""
        self.settings.backend_url = self.url_edit.text().strip()
        self.settings.token_file = self.token_widget.filePath().strip()
        self.settings.backend_executable = self.executable_widget.filePath().strip()
        self.settings.model = self.models_panel.model()
        self.settings.output_dir = self.output_widget.filePath().strip()
        self.settings.save()

    def set_running(self, running: bool) -> None:
        """The backend the plugin started runs (Stop on) or does not; Start is on either way."""
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(running)

    def show_installer(self) -> None:
        """Show the backend installer."""
        self.install_panel.setVisible(True)
        self.install_panel.install_button.setFocus()

    def _on_installed(self, rsov: str) -> None:
        """Point the settings at the new environment (Start backend then runs it)."""
        self.executable_widget.setFilePath(rsov)
        self.remember()
        self.installed.emit(rsov)

    def shutdown(self) -> None:
        """Stop the installer and the weight transfers (plugin unload)."""
        self.install_panel.shutdown()
        self.models_panel.shutdown()
