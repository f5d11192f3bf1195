# SPDX-License-Identifier: GPL-2.0-or-later
"""The rsov panel: what to segment (raster, vocabulary, options), the backend, and review.

Widgets and their wiring only; the work is done by the logic modules (extent, task, review,
results, vocabulary, backend_process).
"""

from __future__ import annotations

import re
from datetime import datetime
from html import escape
from typing import NamedTuple

from qgis.core import Qgis, QgsApplication, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsDoubleSpinBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .area import AREAS, MASK, VISIBLE, area_request
from .backend_client import (
    REFINE_SAM,
    BackendClient,
    BackendError,
    Health,
    JobRequest,
    JobStatus,
    SegmentOptions,
    describe_estimate,
    first_sentence,
)
from .backend_process import BackendProcess, find_executable
from .background import BackgroundCalls
from .compat import enum_value
from .examples import ExampleError
from .extent import ExtentError, RasterRequest, chip_pipe
from .install_panel import InstallPanel
from .instance_panel import InstancePanel
from .models_panel import ModelsPanel
from .paths import PRESETS
from .results import output_folder, result_path
from .review_panel import ReviewPanel
from .semantic import REFINE
from .settings import Settings
from .styling import is_instance_layer
from .task import SegmentTask
from .vocabulary import VocabularyClass, VocabularyError, format_vocabulary, list_presets, parse_vocabulary, validate
from .vocabulary_editor import VocabularyEditor
from .widgets import counted, polygon_layers, theme_button

DEFAULT_VOCABULARY = "building, roof, house\ntree, forest\nwater, river\n"  # in the palette's colours
OK_COLOUR, BAD_COLOUR, IDLE_COLOUR = "#2e7d32", "#c62828", "#757575"
ESTIMATE_DELAY_MS = 400  # the estimate is asked for once the area, raster, resolution or view stop changing
ESTIMATE_TIMEOUT_S = 5.0
AUTO_RESOLUTION = "auto (from the raster's resolution)"
ASIDE = re.compile(r"\s*\([^()]*\)")
CRASHED = "The backend stopped (killed, or out of memory?)"
CRASH_WAIT_MS = 1000  # how long a job that lost its backend waits to learn whether the process died
LOG_LINE_CHARS = 90  # longer log lines are cut in the status (a long path must not widen the panel)
# why Segment waits (its tooltip then)
NO_BACKEND = "No backend answers: start it on the Backend tab (or check its URL there)."
NO_WEIGHTS = "The backend's model has no weights yet: use Download or Import weights file… on the Backend tab."
SEGMENT_TIPS = {
    VISIBLE: "Segment what the map shows of the chosen raster",
    MASK: "Segment the chosen raster inside the selected polygons of the chosen layer",
}
WHOLE_TIP = "Segment the whole chosen raster"


class Prepared(NamedTuple):
    """What a job (or its estimate) is made of."""

    layer: QgsRasterLayer
    classes: list[VocabularyClass]
    client: BackendClient
    raster: RasterRequest
    job: JobRequest


def estimate_failure(exc: BackendError) -> str:
    """The estimate line when the backend gives no estimate."""
    if exc.code == "unreachable":
        return "Estimate not available: no backend answers (see the Backend tab)."
    if exc.status == 404:
        return "Estimate not available: this backend has no /v1/estimate (update rsov)."
    return f"Estimate not available: {exc}"


def estimate_line(client: BackendClient, job: JobRequest) -> str:
    """The estimate line of ``job`` (worker thread: no widget touched here)."""
    return "Estimate: " + describe_estimate(client.estimate(job))


def not_ready(health: Health) -> str:
    """The status of a backend whose model has no weights yet, in one sentence: the first of its
    reason without the asides in brackets (the model's description, the URL), then the cure."""
    reason = first_sentence(health.model_error or f"The weights of {health.model} are missing.")
    while ASIDE.search(reason):  # innermost first: asides may nest
        reason = ASIDE.sub("", reason)
    return f"Not ready: {reason.rstrip('.')}; use Download or Import weights file… on the Backend tab."


def done_text(count: str, layer_name: str, status: JobStatus | None) -> str:
    """The stage line of a finished job: what came back, with an instance job's summary."""
    summary = status.summary_text if status else ""
    return f"Done: {count} in {layer_name}" + (f" ({summary})" if summary else "")


def status_detail(lines: str) -> str:
    """Log lines for the status line: escaped, each cut to LOG_LINE_CHARS."""
    cut = [line if len(line) <= LOG_LINE_CHARS else line[:LOG_LINE_CHARS - 1] + "…" for line in lines.splitlines()]
    return "<br>".join(escape(line, quote=False) for line in cut)


def scrolling(page: QWidget) -> QScrollArea:
    """``page`` in a frameless scroll area: a short panel scrolls rather than squeezing it."""
    area = QScrollArea()
    area.setWidget(page)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


def _level(name: str):
    return enum_value((Qgis, f"MessageLevel.{name}"), (Qgis, name))


class RsovDock(QDockWidget):
    """The dock panel (objectName ``rsovDock``)."""

    def __init__(self, iface, parent: QWidget | None = None):
        super().__init__("rsov — open-vocabulary segmentation", parent)
        self.setObjectName("rsovDock")
        self.iface = iface
        self.settings = Settings.load()
        self.task: SegmentTask | None = None
        self._segment_hold = ""  # why Segment waits for the backend ("" when it need not)
        self._backend_model = ""  # the model of the backend last checked
        self._crash_log: str | None = None  # the last lines of a backend that stopped during the job
        self._crashed_job: SegmentTask | None = None  # the job it took along (Restart and retry sends it again)
        self._retry: SegmentTask | None = None  # sent once the restarted backend is ready
        self.backend = BackendProcess(self)
        self.backend.starting.connect(self._on_backend_starting)
        self.backend.ready.connect(self._on_backend_ready)
        self.backend.failed.connect(self._on_backend_failed)
        self.backend.stopped.connect(self._on_backend_stopped)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._segment_tab(), "Segment")
        self.review_panel = ReviewPanel(iface, self.message)
        self.addActions(self.review_panel.shortcut_actions)  # their shortcuts work whichever tab shows
        self.tabs.addTab(self.review_panel, "Review")
        self.backend_page = self._backend_tab()
        self.tabs.addTab(self.backend_page, "Backend")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # shown where installing the backend is the cure (none installed, or one of another API version)
        self.install_offer = QPushButton("Install backend…")
        self.install_offer.setToolTip("Install the backend into its own environment (Backend tab)")
        self.install_offer.clicked.connect(self.show_installer)
        self.install_offer.setVisible(False)
        # shown when the backend the plugin started has stopped
        self.restart_button = QPushButton("Restart and retry")
        self.restart_button.setObjectName("rsovRestart")
        self.restart_button.clicked.connect(self.restart_backend)
        self.restart_button.setVisible(False)
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.install_offer)
        status_row.addWidget(self.restart_button)
        status_row.addWidget(theme_button("/mActionRefresh.svg", "Check the backend connection", self.check_backend))
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(status_row)
        layout.addWidget(self.tabs)
        self.setWidget(body)
        self._set_status("Backend not checked yet.", IDLE_COLOUR)

        self.set_vocabulary(parse_vocabulary(self.settings.vocabulary or DEFAULT_VOCABULARY))
        self._select_active_raster(iface.activeLayer())
        iface.currentLayerChanged.connect(self._select_active_raster)
        iface.mapCanvas().extentsChanged.connect(self._on_view_changed)
        self.raster_combo.layerChanged.connect(self.schedule_estimate)
        self.schedule_estimate()

    # --- building the tabs -------------------------------------------------------------------
    def _segment_tab(self) -> QWidget:
        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(enum_value((Qgis, "LayerFilter.RasterLayer"), (QgsMapLayerProxyModel, "RasterLayer")))
        self.raster_combo.setToolTip("The raster to segment (follows the active raster layer)")

        self.area_combo = QComboBox()
        for key, text, _button in AREAS:
            self.area_combo.addItem(text, key)
        self.area_combo.setToolTip("What to segment: what the map shows of the raster, the whole raster (a file "
                                   "the backend reads), or the selected polygons of a polygon layer (pixels "
                                   "outside them get no class)")
        self.area_combo.setCurrentIndex(max(0, self.area_combo.findData(self.settings.area)))
        self.mask_combo = QgsMapLayerComboBox()
        self.mask_combo.setFilters(polygon_layers())
        self.mask_combo.setToolTip("The polygon layer whose selected polygons are the processing area")
        self._mask_layer = None  # the layer whose selection changes refresh the estimate
        area_row = QHBoxLayout()
        area_row.addWidget(self.area_combo)
        area_row.addWidget(self.mask_combo, 1)

        self.vocabulary_editor = VocabularyEditor(list_presets(PRESETS), self.message)
        self.vocabulary_editor.changed.connect(self._remember_vocabulary)

        self.mode_combo = QComboBox()
        self.mode_combo.addItem("Semantic (classes per pixel)", "semantic")
        self.mode_combo.addItem("Instance (one polygon per object)", "instance")
        self.mode_combo.setToolTip("Semantic: every pixel gets a class, polygons are regions. Instance: "
                                   "Segment Anything proposes objects and CLIP names each; the backend loads "
                                   "its SAM model (rsov serve --sam) on the first instance job")
        self.instance_panel = InstancePanel(self.iface, self.settings, self.message)
        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(self.settings.mode)))
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.threshold_spin = QgsDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setClearValue(0.3)
        self.threshold_spin.setValue(self.settings.threshold)
        self.threshold_spin.setToolTip("Pixels whose best class probability is lower stay background "
                                       "(land cover 0.1-0.3; buildings 0.6-0.7)")
        self.resolution_spin = QgsDoubleSpinBox()
        self.resolution_spin.setRange(0.0, 1000.0)
        self.resolution_spin.setDecimals(2)
        self.resolution_spin.setSingleStep(0.1)
        self.resolution_spin.setSuffix(" m/px")
        self.resolution_spin.setSpecialValueText(AUTO_RESOLUTION)
        self.resolution_spin.setClearValue(0.0)
        self.resolution_spin.setValue(self.settings.resolution)
        self.resolution_spin.setToolTip("Ground resolution the image is analysed at. Auto: from the raster's own "
                                        "resolution (× 1024/448, the scale the method was tuned on). Auto or fixed, "
                                        "a pixel gets the same class at any zoom and for any area")
        self.refine_check = QCheckBox(REFINE[0])
        self.refine_check.setToolTip(REFINE[1])
        self.refine_check.setChecked(self.settings.refine)
        self.threshold_spin.valueChanged.connect(self._remember_options)
        self.resolution_spin.valueChanged.connect(self._remember_options)
        self.refine_check.toggled.connect(self._remember_options)
        self.resolution_spin.valueChanged.connect(self.schedule_estimate)
        self.refine_check.toggled.connect(self.schedule_estimate)

        self.estimate_label = QLabel()
        self.estimate_label.setObjectName("rsovEstimate")
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip("Working resolution (and its rule), working size, windows to encode (those "
                                       "the backend has cached are cheap) and the backend's time estimate")
        self.estimate_timer = QTimer(self)
        self.estimate_timer.setSingleShot(True)
        self.estimate_timer.setInterval(ESTIMATE_DELAY_MS)
        self.estimate_timer.timeout.connect(self.refresh_estimate)
        self._estimate_generation = 0
        self._estimates = BackgroundCalls(self)
        self._estimates.done.connect(self._on_estimate)

        self.segment_button = QPushButton(QgsApplication.getThemeIcon("/mActionZoomActual.svg"), "")
        self.segment_button.clicked.connect(self.segment)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.stage_label = QLabel("Idle")
        self.stage_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)

        page = QWidget()
        form = QFormLayout()
        form.addRow("Raster", self.raster_combo)
        form.addRow("Area", area_row)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Threshold", self.threshold_spin)
        form.addRow("Resolution", self.resolution_spin)
        form.addRow(self.refine_check)
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addWidget(self.instance_panel)
        layout.addWidget(QLabel("<b>Vocabulary</b>"))
        layout.addWidget(self.vocabulary_editor, 1)
        layout.addWidget(self.estimate_label)
        layout.addWidget(self.segment_button)
        layout.addLayout(progress_row)
        layout.addWidget(self.stage_label)
        self._on_mode_changed()  # once the instance panel has its parent
        self._on_area_changed()
        self.area_combo.currentIndexChanged.connect(self._on_area_changed)
        self.mask_combo.layerChanged.connect(self._on_mask_layer_changed)
        self._on_mask_layer_changed(self.mask_combo.currentLayer())
        return scrolling(page)

    def _backend_tab(self) -> QWidget:
        self.url_edit = QLineEdit(self.settings.backend_url)
        self.token_widget = QgsFileWidget()
        self.token_widget.setFilePath(self.settings.token_file)
        self.executable_widget = QgsFileWidget()
        self.executable_widget.setFilePath(self.settings.backend_executable)
        self.executable_widget.lineEdit().setPlaceholderText("rsov on PATH")
        self.executable_widget.setToolTip("The `rsov` script of the backend's environment (e.g. .venv/bin/rsov), "
                                          "or the Python interpreter of that environment")
        self.models_panel = ModelsPanel(self.settings.model, lambda: self.settings.client(timeout=10.0))
        self.models_panel.changed.connect(self._remember_backend)
        self.models_panel.transferred.connect(self._on_weights_transferred)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(enum_value((QgsFileWidget, "StorageMode.GetDirectory"),
                                                     (QgsFileWidget, "GetDirectory")))
        self.output_widget.setFilePath(self.settings.output_dir)
        self.output_widget.lineEdit().setPlaceholderText(str(self.settings.results_dir()))
        self.output_widget.setToolTip("Results of an unsaved project go here; a saved project keeps them "
                                      "in rsov_results/ beside the project file")
        for name, widget in (("backend_url", self.url_edit), ("token_file", self.token_widget)):
            variable = Settings.from_environment(name)
            if variable:
                widget.setEnabled(False)
                widget.setToolTip(f"Set by the environment variable {variable}")
        self.url_edit.editingFinished.connect(self._remember_backend)
        for widget in (self.token_widget, self.executable_widget, self.output_widget):
            widget.fileChanged.connect(self._remember_backend)

        self.start_button = QPushButton("Start backend")
        self.start_button.setToolTip("Run `rsov serve` as a separate process; it stops when QGIS quits")
        self.start_button.clicked.connect(self.start_backend)
        self.stop_button = QPushButton("Stop backend")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_backend)
        check_button = QPushButton("Check connection")
        check_button.clicked.connect(self.check_backend)
        install_button = QPushButton("Install backend…")
        install_button.setToolTip("Install the backend (torch and rsov) into its own Python environment")
        install_button.clicked.connect(self.show_installer)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, check_button, install_button):
            buttons.addWidget(button)
        self.install_panel = InstallPanel(self.settings)
        self.install_panel.setVisible(False)
        self.install_panel.installed.connect(self._on_backend_installed)
        self.install_panel.failed.connect(
            lambda text: self.message(f"The backend was not installed: {text}", "Critical"))

        page = QWidget()
        form = QFormLayout()
        form.addRow("Backend URL", self.url_edit)
        form.addRow("Token file", self.token_widget)
        form.addRow("rsov executable", self.executable_widget)
        form.addRow("Model", self.models_panel.model_combo)
        form.addRow("Weights", self.models_panel)
        form.addRow("Output folder", self.output_widget)
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.install_panel, 1)
        layout.addStretch(1)
        return page

    # --- messages and settings ---------------------------------------------------------------
    def message(self, text: str, level: str = "Info", duration: int = 8) -> None:
        """Show ``text`` in QGIS's message bar (``level``: Info, Success, Warning, Critical)."""
        self.iface.messageBar().pushMessage("rsov", text, _level(level), duration if level != "Critical" else 0)

    def _set_status(self, text: str, colour: str, log: str = "") -> None:
        """The status line: a coloured dot, ``text``, and under it ``log`` lines in small grey type."""
        self.status_text = text
        detail = f"<br><small style='color:{IDLE_COLOUR}'><tt>{status_detail(log)}</tt></small>" if log else ""
        self.status_label.setText(f"<span style='color:{colour}'>●</span> {escape(text, quote=False)}{detail}")

    def _remember_backend(self, *_args) -> None:
        self.settings.backend_url = self.url_edit.text().strip()
        self.settings.token_file = self.token_widget.filePath().strip()
        self.settings.backend_executable = self.executable_widget.filePath().strip()
        self.settings.model = self.models_panel.model()
        self.settings.output_dir = self.output_widget.filePath().strip()
        self.settings.save()

    def _remember_options(self, *_args) -> None:
        self.settings.threshold = self.threshold_spin.value()
        self.settings.resolution = self.resolution_spin.value()
        self.settings.refine = self.refine_check.isChecked()
        self.settings.save()

    def _remember_vocabulary(self, *_args) -> None:
        classes = self.vocabulary()
        self.settings.vocabulary = format_vocabulary(classes)
        self.settings.save()
        self.instance_panel.set_classes(classes)
        self.schedule_estimate()

    def _on_mode_changed(self, *_args) -> None:
        self.settings.mode = self.mode_combo.currentData()
        self.settings.save()
        self.instance_panel.setVisible(self.settings.mode == "instance")
        self.refine_check.setVisible(self.settings.mode == "semantic")
        self.schedule_estimate()

    def _on_area_changed(self, *_args) -> None:
        area = self.area_combo.currentData()
        self.settings.area = area
        self.settings.save()
        button = next(text for key, _, text in AREAS if key == area)
        layer = self.mask_combo.currentLayer()
        self.segment_button.setText(f"{button} of {layer.name()}" if area == MASK and layer else button)
        self._update_segment_button()
        self.mask_combo.setEnabled(area == MASK)
        self.schedule_estimate()

    def _on_mask_layer_changed(self, layer) -> None:
        self._follow_mask_layer(layer)
        self._on_area_changed()

    def _follow_mask_layer(self, layer) -> None:
        """Refresh the estimate when the selection of ``layer`` (and no other) changes."""
        if self._mask_layer is not None:
            try:
                self._mask_layer.selectionChanged.disconnect(self.schedule_estimate)
            except (TypeError, RuntimeError):
                pass  # already disconnected, or the layer is gone
        self._mask_layer = layer
        if layer is not None:
            layer.selectionChanged.connect(self.schedule_estimate)

    # --- vocabulary editor --------------------------------------------------------------------
    def vocabulary(self) -> list[VocabularyClass]:
        """The classes of the vocabulary editor."""
        return self.vocabulary_editor.classes()

    def set_vocabulary(self, classes: list[VocabularyClass]) -> None:
        """Replace the vocabulary editor's classes."""
        self.vocabulary_editor.set_classes(classes)

    # --- backend ---------------------------------------------------------------------------
    def check_backend(self) -> bool:
        """Update the status line and the model list from ``/v1/health`` and ``/v1/models`` (a
        token check too); True when the backend can segment."""
        try:
            client = self.settings.client(timeout=3.0)
            health = client.health()
        except BackendError as exc:
            self._set_status(f"Not connected: {exc}", BAD_COLOUR)
            self.install_offer.setVisible(not find_executable(self.settings.backend_executable))
            self._hold_segment(NO_BACKEND)
            return False
        self.restart_button.setVisible(False)  # a backend answers: nothing to restart
        self.install_offer.setVisible(bool(health.incompatibility()))
        if health.incompatibility():
            self._set_status(f"{health.incompatibility()} (found {health.describe()}).", BAD_COLOUR)
            self._hold_segment(f"{health.incompatibility()}.")
            return False
        self._hold_segment(NO_WEIGHTS if not health.model_ready else "")
        try:
            self.models_panel.set_models(client.models())
        except BackendError as exc:
            self._set_status(f"Connected to {health.describe()}, but: {exc}", BAD_COLOUR)
            return False
        self._backend_model = health.model
        if not health.model_ready:
            self.models_panel.set_model(health.model)  # what Download and Import then fetch
            self._set_status(not_ready(health), BAD_COLOUR)
            return False
        self._set_status(f"Connected: {health.describe()}", OK_COLOUR)
        self.schedule_estimate()
        return True

    def _hold_segment(self, reason: str) -> None:
        """Segment waits while ``reason`` ("" when it need not): no backend answers, or it cannot
        segment yet. When the wait ends, the stage line of the job that failed meanwhile goes."""
        if self._segment_hold and not reason and self.task is None:
            self.stage_label.setText("Idle")
        self._segment_hold = reason
        self._update_segment_button()

    def _update_segment_button(self) -> None:
        """Segment is enabled unless a job runs or it waits; its tooltip says what it segments, or
        what it waits for."""
        self.segment_button.setEnabled(self.task is None and not self._segment_hold)
        self.segment_button.setToolTip(self._segment_hold or SEGMENT_TIPS.get(self.area_combo.currentData(), WHOLE_TIP))

    def _on_weights_transferred(self, name: str) -> None:
        """Weights of the backend's own model arrived (or did not): its status may have changed."""
        if name == self._backend_model:
            self.check_backend()

    def start_backend(self) -> bool:
        """Start `rsov serve` unless a backend already answers at the URL; True when it is starting."""
        self._remember_backend()
        try:
            self.settings.client(timeout=1.0).health()
        except BackendError as exc:
            if exc.code == "bad_url":
                self.message(str(exc), "Critical")
                return False
        else:
            self.message(f"A backend already answers at {self.settings.backend_url}.")
            self.check_backend()
            return False
        self.restart_button.setVisible(False)
        self._set_status("Starting the backend…", IDLE_COLOUR)
        self.start_button.setEnabled(False)
        self.backend.start(self.settings.backend_executable, self.settings.backend_url,
                           self.settings.token_file, self.settings.model)
        self.stop_button.setEnabled(self.backend.is_running())
        return self.backend.is_running()

    def stop_backend(self) -> None:
        """Stop the backend the plugin started."""
        self._retry = None
        self.backend.stop()
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._set_status("Backend stopped.", IDLE_COLOUR)
        self._hold_segment(NO_BACKEND)

    def restart_backend(self) -> None:
        """Start the backend that stopped again, then send the job it took along once more."""
        retry, self._crashed_job = self._crashed_job, None
        if self.start_backend():
            self._retry = retry

    def _on_backend_starting(self, elapsed: float, log: str) -> None:
        self._set_status(f"Starting the backend (loading the model): {elapsed:.0f} s…", IDLE_COLOUR, log)

    def _on_backend_ready(self, health) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(True)
        retry, self._retry = self._retry, None
        if self.check_backend():
            self.message(f"Backend started: {health.describe()}", "Success")
            if retry is not None and self.task is None:  # unless another job was started meanwhile
                self._start_task(retry)
        elif self._segment_hold != NO_WEIGHTS:  # a model without weights is in the status line, with its cure beside
            self.message(self.status_text, "Critical")

    def _on_backend_failed(self, text: str, missing: bool) -> None:
        self._retry = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._set_status(text, BAD_COLOUR)
        self.install_offer.setVisible(missing)
        self._hold_segment(NO_BACKEND)
        self.message(text, "Critical")

    def _on_backend_stopped(self, log: str) -> None:
        """The backend the plugin started has died. During a job the job's failure, on its way,
        reports it (one message); otherwise it is reported here."""
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._hold_segment(NO_BACKEND)
        if self.task is not None:
            self._crash_log = log
        else:
            self._show_crash(log, None)

    def _show_crash(self, log: str, job: SegmentTask | None) -> None:
        """The one message about a backend that stopped, with Restart (and retry ``job``)."""
        self._crashed_job = job
        self.restart_button.setText("Restart and retry" if job else "Restart backend")
        self.restart_button.setToolTip("Start the backend again" + (" and send the job once more" if job else ""))
        self.restart_button.setVisible(True)
        self._set_status(f"{CRASHED}{' during the job' if job else ''}.", BAD_COLOUR, log)

    def _backend_crash_log(self, task: SegmentTask) -> str | None:
        """The last lines of the plugin's backend if it died under ``task``, else None. A killed
        process is reaped at once, but its exit may reach the event loop after the job's failure."""
        if self._crash_log is None and task.error_code == "unreachable" and self.backend.is_running():
            self.backend.process.waitForFinished(CRASH_WAIT_MS)  # emits stopped() now if it died
        return self._crash_log

    def show_installer(self) -> None:
        """Show the backend installer (Backend tab)."""
        self.tabs.setCurrentWidget(self.backend_page)
        self.install_panel.setVisible(True)
        self.install_panel.install_button.setFocus()

    def _on_backend_installed(self, rsov: str) -> None:
        """Point the settings at the new environment (Start backend then runs it)."""
        self.executable_widget.setFilePath(rsov)
        self._remember_backend()
        self.install_offer.setVisible(False)
        self._set_status("Backend installed: press Start backend.", IDLE_COLOUR)
        self.message(f"The rsov backend is installed ({rsov}): press Start backend on the Backend tab.", "Success")

    # --- segmentation ---------------------------------------------------------------------------
    def _select_active_raster(self, layer) -> None:
        if isinstance(layer, QgsRasterLayer):
            self.raster_combo.setLayer(layer)

    def _prepare(self) -> Prepared:
        """The job for the chosen raster, area, vocabulary and options (ExtentError, VocabularyError,
        BackendError or ExampleError say what is missing)."""
        layer = self.raster_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            raise ExtentError("Choose a raster layer to segment.")
        project = QgsProject.instance()
        classes = self.vocabulary()
        queries = validate(classes)
        client = self.settings.client()
        raster = area_request(self.area_combo.currentData(), self.iface.mapCanvas().mapSettings(), layer,
                              project.transformContext(), client.is_local, self.mask_combo.currentLayer())
        instance = self.instance_panel.options() if self.mode_combo.currentData() == "instance" else None
        options = SegmentOptions(threshold=self.threshold_spin.value(), resolution=self.resolution_spin.value() or None,
                                 refine=REFINE_SAM if self.refine_check.isChecked() else None)
        job = raster.job(queries, options, instance)
        job.examples = self.instance_panel.job_examples(classes, layer, raster) if instance else None
        return Prepared(layer, classes, client, raster, job)

    def segment(self) -> SegmentTask | None:
        """Start a task for the chosen area (visible extent, whole layer or selected polygons) of the
        chosen raster; returns it (None, with a message, when nothing can be sent)."""
        if self.task is not None:
            self.message("A segmentation is already running; wait for it or cancel it.", "Warning")
            return None
        try:
            layer, classes, client, raster, job = self._prepare()
            chip = None if raster.path else chip_pipe(layer)
        except (VocabularyError, ExtentError, BackendError, ExampleError) as exc:
            self.stage_label.setText(str(exc))
            self.message(str(exc), "Warning")
            return None
        project = QgsProject.instance()
        now = datetime.now()
        name = f"{layer.name()} objects" if job.instance else layer.name()
        destination = result_path(output_folder(project, self.settings.results_dir()), name, now)
        self._start_task(SegmentTask(client, raster, job, classes, destination, f"{name} {now:%H:%M:%S}", chip,
                                     project))
        return self.task

    def _start_task(self, task: SegmentTask) -> None:
        """Run ``task`` in QGIS's task manager, its progress and outcome shown in the panel."""
        self.task = task
        self._crash_log = None
        task.progressChanged.connect(lambda value: self.progress.setValue(round(value)))
        task.stageChanged.connect(self.stage_label.setText)  # the backend's stage as it reads, and the time left
        task.succeeded.connect(self._on_task_succeeded)
        task.failed.connect(self._on_task_failed)
        task.cancelled.connect(self._on_task_cancelled)
        self._set_busy(True)
        QgsApplication.taskManager().addTask(task)

    # --- estimate --------------------------------------------------------------------------------
    def schedule_estimate(self, *_args) -> None:
        """Refresh the estimate once things stop changing for a moment."""
        self.estimate_timer.start()

    def _on_view_changed(self) -> None:
        if self.area_combo.currentData() == VISIBLE:
            self.schedule_estimate()

    def refresh_estimate(self) -> None:
        """Ask the backend (in a worker thread) for the working resolution, windows and time of the
        job the Segment button would start; the answer fills the estimate line."""
        self.estimate_timer.stop()
        self._estimate_generation += 1
        try:
            prepared = self._prepare()
        except (VocabularyError, ExtentError, BackendError, ExampleError) as exc:
            self.estimate_label.setText(str(exc))
            return
        if prepared.raster.path is None:
            self.estimate_label.setText("Estimate not available: this raster is sent to the backend as an image "
                                        "(a web layer, or a backend on another machine).")
            return
        self.estimate_label.setText("Estimate: asking the backend…")
        client = self.settings.client(timeout=ESTIMATE_TIMEOUT_S)
        self._estimates.start(self._estimate_generation, lambda: estimate_line(client, prepared.job))

    def _on_estimate(self, generation: int, answer: str | BackendError) -> None:
        if generation == self._estimate_generation:  # not an answer overtaken by a newer question
            self.estimate_label.setText(estimate_failure(answer) if isinstance(answer, BackendError) else answer)

    def cancel(self) -> None:
        """Cancel the running segmentation (the backend job is cancelled too)."""
        if self.task is not None:
            self.stage_label.setText("Cancelling…")
            self.task.cancel()

    def _set_busy(self, busy: bool) -> None:
        self.segment_button.setEnabled(not busy and not self._segment_hold)
        self.cancel_button.setEnabled(busy)
        self.progress.setValue(0)
        self.stage_label.setText("Starting…" if busy else "Idle")

    def _on_task_succeeded(self, layer) -> None:
        count = counted(layer.featureCount(), "object" if is_instance_layer(layer) else "polygon")
        status = self.task.status
        self._set_busy(False)
        self.progress.setValue(100)
        self.task = None
        self.stage_label.setText(done_text(count, layer.name(), status))
        self.review_panel.show_result(layer)
        self.iface.setActiveLayer(layer)  # ready for the selection tools of the review
        if layer.featureCount() == 0 and status is not None and status.summary:
            self.message(status.no_objects_text(), "Warning")  # why nothing came back, and what to change
        else:
            self.message(f"{count} saved to {layer.source().split('|')[0]}", "Success")

    def _on_task_failed(self, text: str) -> None:
        task = self.task
        crash_log = self._backend_crash_log(task)  # while self.task is set: a stop now is this job's
        self._set_busy(False)
        self.task = None
        self.stage_label.setText("Failed")
        if crash_log is not None:
            self._show_crash(crash_log, task.again())
            return
        self.message(text, "Critical")
        self.check_backend()

    def _on_task_cancelled(self) -> None:
        self._set_busy(False)
        self.task = None
        self.stage_label.setText("Cancelled")
        self.message("Segmentation cancelled.", "Info")

    # --- lifetime ------------------------------------------------------------------------------
    def check_backend_later(self) -> None:
        """Check the backend once the event loop runs (so opening the panel stays instant)."""
        QTimer.singleShot(0, self.check_backend)

    def shutdown(self) -> None:
        """Cancel the running task and stop the backend the plugin started (plugin unload, QGIS exit)."""
        if self.task is not None:
            self.task.cancel()
        self.estimate_timer.stop()
        self._estimate_generation += 1  # an estimate still on its way is not shown
        self.backend.stop()
        self.install_panel.shutdown()
        self.models_panel.shutdown()
        self.instance_panel.shutdown()
        self.review_panel.shutdown()
        self._follow_mask_layer(None)
        for signal, slot in ((self.iface.currentLayerChanged, self._select_active_raster),
                             (self.iface.mapCanvas().extentsChanged, self._on_view_changed)):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass  # already disconnected
