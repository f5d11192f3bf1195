# SPDX-License-Identifier: GPL-2.0-or-later
"""The rsov panel: the Segment, Review and Backend tabs under the backend's status line.

The dock composes the tabs and wires them to the backend process, the segmentation task and the
layers; the tabs hold the widgets (:mod:`segment_tab`, :mod:`review_panel`, :mod:`backend_tab`),
the logic modules do the work (extent, task, review, results, vocabulary, backend_process).
"""

from __future__ import annotations

import re
from datetime import datetime
from html import escape
from typing import NamedTuple

from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .area import VISIBLE, area_request
from .backend_client import (
    BackendClient,
    BackendError,
    Health,
    JobRequest,
    JobStatus,
    describe_estimate,
    first_sentence,
)
from .backend_process import BackendProcess, find_executable
from .backend_tab import BackendTab
from .background import BackgroundCalls
from .compat import enum_value
from .errors import RsovPluginError
from .extent import ExtentError, RasterRequest, chip_pipe
from .results import output_folder, result_path
from .review_panel import ReviewPanel
from .segment_tab import SegmentTab
from .settings import Settings
from .styling import is_instance_layer
from .task import SegmentTask
from .vocabulary import VocabularyClass, validate
from .widgets import counted, theme_button

OK_COLOUR, BAD_COLOUR, IDLE_COLOUR = "#2e7d32", "#c62828", "#757575"
ESTIMATE_DELAY_MS = 400  # the estimate is asked for once the area, raster, resolution or view stop changing
ESTIMATE_TIMEOUT_S = 5.0
ASIDE = re.compile(r"\s*\([^()]*\)")
CRASHED = "The backend stopped (killed, or out of memory?)"
CRASH_WAIT_MS = 1000  # how long a job that lost its backend waits to learn whether the process died
LOG_LINE_CHARS = 90  # longer log lines are cut in the status (a long path must not widen the panel)
# why Segment waits (its tooltip then)
NO_BACKEND = "No backend answers: start it on the Backend tab (or check its URL there)."
NO_WEIGHTS = "The backend's model has no weights yet: use Download or Import weights file… on the Backend tab."


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
    cut = [line if len(line) <= LOG_LINE_CHARS else line[: LOG_LINE_CHARS - 1] + "…" for line in lines.splitlines()]
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
    """The dock panel (objectName ``rsovDock``). The tabs' widgets that the rest of the plugin and
    its tests reach are attributes of the dock too (``segment_button``, ``models_panel``, …)."""

    def __init__(self, iface, parent: QWidget | None = None):
        super().__init__("rsov — open-vocabulary segmentation", parent)
        self.setObjectName("rsovDock")
        self.iface = iface
        self.settings = Settings.load()
        self.task: SegmentTask | None = None
        self._backend_model = ""  # the model of the backend last checked
        self._crash_log: str | None = None  # the last lines of a backend that stopped during the job
        self._crashed_job: SegmentTask | None = None  # the job it took along (Restart and retry sends it again)
        self._retry: SegmentTask | None = None  # sent once the restarted backend is ready
        self.backend = BackendProcess(self)
        self.backend.starting.connect(self._on_backend_starting)
        self.backend.ready.connect(self._on_backend_ready)
        self.backend.failed.connect(self._on_backend_failed)
        self.backend.stopped.connect(self._on_backend_stopped)
        self.estimate_timer = QTimer(self)
        self.estimate_timer.setSingleShot(True)
        self.estimate_timer.setInterval(ESTIMATE_DELAY_MS)
        self.estimate_timer.timeout.connect(self.refresh_estimate)
        self._estimate_generation = 0
        self._estimates = BackgroundCalls(self)
        self._estimates.done.connect(self._on_estimate)

        self.segment_page = SegmentTab(iface, self.settings, self.message)
        self.segment_page.segment_requested.connect(self.segment)
        self.segment_page.cancel_requested.connect(self.cancel)
        self.segment_page.inputs_changed.connect(self.schedule_estimate)
        self.review_panel = ReviewPanel(iface, self.message)
        self.addActions(self.review_panel.shortcut_actions)  # their shortcuts work whichever tab shows
        self.backend_page = BackendTab(self.settings, self.message)
        self.backend_page.start_requested.connect(self.start_backend)
        self.backend_page.stop_requested.connect(self.stop_backend)
        self.backend_page.check_requested.connect(self.check_backend)
        self.backend_page.installed.connect(self._on_backend_installed)
        self.backend_page.models_panel.transferred.connect(self._on_weights_transferred)
        self.tabs = QTabWidget()
        self.tabs.addTab(scrolling(self.segment_page), "Segment")
        self.tabs.addTab(self.review_panel, "Review")
        self.tabs.addTab(self.backend_page, "Backend")
        # the tabs' widgets that the rest of the plugin and its tests reach through the dock
        tab = self.segment_page
        self.raster_combo, self.area_combo, self.mask_combo = tab.raster_combo, tab.area_combo, tab.mask_combo
        self.mode_combo, self.instance_panel, self.refine_check = tab.mode_combo, tab.instance_panel, tab.refine_check
        self.engine_combo = tab.engine_combo
        self.threshold_spin, self.resolution_spin = tab.threshold_spin, tab.resolution_spin
        self.vocabulary_editor, self.estimate_label = tab.vocabulary_editor, tab.estimate_label
        self.segment_button, self.cancel_button = tab.segment_button, tab.cancel_button
        self.progress, self.stage_label = tab.progress, tab.stage_label
        tab = self.backend_page
        self.url_edit, self.executable_widget, self.models_panel = tab.url_edit, tab.executable_widget, tab.models_panel
        self.start_button, self.stop_button, self.install_panel = tab.start_button, tab.stop_button, tab.install_panel

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

        self._select_active_raster(iface.activeLayer())
        iface.currentLayerChanged.connect(self._select_active_raster)
        iface.mapCanvas().extentsChanged.connect(self._on_view_changed)
        self.schedule_estimate()

    # --- messages --------------------------------------------------------------------------------
    def message(self, text: str, level: str = "Info", duration: int = 8) -> None:
        """Show ``text`` in QGIS's message bar (``level``: Info, Success, Warning, Critical)."""
        self.iface.messageBar().pushMessage("rsov", text, _level(level), duration if level != "Critical" else 0)

    def _set_status(self, text: str, colour: str, log: str = "") -> None:
        """The status line: a coloured dot, ``text``, and under it ``log`` lines in small grey type."""
        self.status_text = text
        detail = f"<br><small style='color:{IDLE_COLOUR}'><tt>{status_detail(log)}</tt></small>" if log else ""
        self.status_label.setText(f"<span style='color:{colour}'>●</span> {escape(text, quote=False)}{detail}")

    # --- vocabulary ------------------------------------------------------------------------------
    def vocabulary(self) -> list[VocabularyClass]:
        """The classes of the vocabulary editor."""
        return self.segment_page.vocabulary()

    def set_vocabulary(self, classes: list[VocabularyClass]) -> None:
        """Replace the vocabulary editor's classes."""
        self.segment_page.set_vocabulary(classes)

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
            self.segment_page.hold(NO_BACKEND)
            return False
        self.restart_button.setVisible(False)  # a backend answers: nothing to restart
        self.install_offer.setVisible(bool(health.incompatibility()))
        if health.incompatibility():
            self._set_status(f"{health.incompatibility()} (found {health.describe()}).", BAD_COLOUR)
            self.segment_page.hold(f"{health.incompatibility()}.")
            return False
        self.segment_page.hold(NO_WEIGHTS if not health.model_ready else "")
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

    def _on_weights_transferred(self, name: str) -> None:
        """Weights of the backend's own model arrived (or did not): its status may have changed."""
        if name == self._backend_model:
            self.check_backend()

    def start_backend(self) -> bool:
        """Start `rsov serve` unless a backend already answers at the URL; True when it is starting."""
        self.backend_page.remember()
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
        self.backend.start(
            self.settings.backend_executable, self.settings.backend_url, self.settings.token_file, self.settings.model
        )
        self.stop_button.setEnabled(self.backend.is_running())
        return self.backend.is_running()

    def stop_backend(self) -> None:
        """Stop the backend the plugin started."""
        self._retry = None
        self.backend.stop()
        self.backend_page.set_running(False)
        self._set_status("Backend stopped.", IDLE_COLOUR)
        self.segment_page.hold(NO_BACKEND)

    def restart_backend(self) -> None:
        """Start the backend that stopped again, then send the job it took along once more."""
        retry, self._crashed_job = self._crashed_job, None
        if self.start_backend():
            self._retry = retry

    def _on_backend_starting(self, elapsed: float, log: str) -> None:
        self._set_status(f"Starting the backend (loading the model): {elapsed:.0f} s…", IDLE_COLOUR, log)

    def _on_backend_ready(self, health) -> None:
        self.backend_page.set_running(True)
        retry, self._retry = self._retry, None
        if self.check_backend():
            self.message(f"Backend started: {health.describe()}", "Success")
            if retry is not None and self.task is None:  # unless another job was started meanwhile
                self._start_task(retry)
        elif self.segment_page.hold_reason != NO_WEIGHTS:  # no weights: in the status line, cure beside
            self.message(self.status_text, "Critical")

    def _on_backend_failed(self, text: str, missing: bool) -> None:
        self._retry = None
        self.backend_page.set_running(False)
        self._set_status(text, BAD_COLOUR)
        self.install_offer.setVisible(missing)
        self.segment_page.hold(NO_BACKEND)
        self.message(text, "Critical")

    def _on_backend_stopped(self, log: str) -> None:
        """The backend the plugin started has died. During a job the job's failure, on its way,
        reports it (one message); otherwise it is reported here."""
        self.backend_page.set_running(False)
        self.segment_page.hold(NO_BACKEND)
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
        process = self.backend.process
        if (
            self._crash_log is None
            and task.error_code == "unreachable"
            and process is not None
            and self.backend.is_running()
        ):
            process.waitForFinished(CRASH_WAIT_MS)  # emits stopped() now if it died
        return self._crash_log

    def show_installer(self) -> None:
        """Show the backend installer (Backend tab)."""
        self.tabs.setCurrentWidget(self.backend_page)
        self.backend_page.show_installer()

    def _on_backend_installed(self, rsov: str) -> None:
        """The installer put the backend in place (the Backend tab points the settings at it)."""
        self.install_offer.setVisible(False)
        self._set_status("Backend installed: press Start backend.", IDLE_COLOUR)
        self.message(f"The rsov backend is installed ({rsov}): press Start backend on the Backend tab.", "Success")

    # --- segmentation ---------------------------------------------------------------------------
    def _select_active_raster(self, layer) -> None:
        if isinstance(layer, QgsRasterLayer):
            self.raster_combo.setLayer(layer)

    def _prepare(self) -> Prepared:
        """The job for the chosen raster, area, vocabulary and options (an RsovPluginError says
        what is missing)."""
        layer = self.raster_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            raise ExtentError("Choose a raster layer to segment.")
        project = QgsProject.instance()
        classes = self.vocabulary()
        queries = validate(classes)
        client = self.settings.client()
        raster = area_request(
            self.area_combo.currentData(),
            self.iface.mapCanvas().mapSettings(),
            layer,
            project.transformContext(),
            client.is_local,
            self.mask_combo.currentLayer(),
        )
        instance = self.segment_page.instance_options()
        job = raster.job(queries, self.segment_page.options(), instance)
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
        except RsovPluginError as exc:
            self.stage_label.setText(str(exc))
            self.message(str(exc), "Warning")
            return None
        project = QgsProject.instance()
        now = datetime.now()
        name = f"{layer.name()} objects" if job.instance else layer.name()
        destination = result_path(output_folder(project, self.settings.results_dir()), name, now)
        self._start_task(
            SegmentTask(client, raster, job, classes, destination, f"{name} {now:%H:%M:%S}", chip, project)
        )
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
        self.segment_page.set_busy(True)
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
        except RsovPluginError as exc:
            self.estimate_label.setText(str(exc))
            return
        if prepared.raster.path is None:
            self.estimate_label.setText(
                "Estimate not available: this raster is sent to the backend as an image "
                "(a web layer, or a backend on another machine)."
            )
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

    def _on_task_succeeded(self, layer) -> None:
        task = self.task
        if task is None:
            return  # not a job of this panel's
        count = counted(layer.featureCount(), "object" if is_instance_layer(layer) else "polygon")
        status = task.status
        self.segment_page.set_busy(False)
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
        if task is None:
            return  # not a job of this panel's
        crash_log = self._backend_crash_log(task)  # while self.task is set: a stop now is this job's
        self.segment_page.set_busy(False)
        self.task = None
        self.stage_label.setText("Failed")
        if crash_log is not None:
            self._show_crash(crash_log, task.again())
            return
        self.message(text, "Critical")
        self.check_backend()

    def _on_task_cancelled(self) -> None:
        self.segment_page.set_busy(False)
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
        self.backend_page.shutdown()
        self.segment_page.shutdown()
        self.review_panel.shutdown()
        for signal, slot in (
            (self.iface.currentLayerChanged, self._select_active_raster),
            (self.iface.mapCanvas().extentsChanged, self._on_view_changed),
        ):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass  # already disconnected
