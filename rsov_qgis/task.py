# SPDX-License-Identifier: GPL-2.0-or-later
"""The background task of one segmentation: chip export, backend job, result GeoPackage.

``run()`` works in a worker thread and touches no widget and no project layer; ``finished()``
runs on the main thread and adds the saved result to the project.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from pathlib import Path

from qgis.core import QgsMessageLog, QgsProject, QgsRasterPipe, QgsTask, QgsVectorLayer
from qgis.PyQt.QtCore import pyqtSignal

from .backend_client import BackendClient, BackendError, JobCancelled, JobRequest, JobStatus
from .compat import enum_value
from .extent import ExtentError, RasterRequest, write_chip
from .results import ResultError, add_result_layer, save_result
from .vocabulary import VocabularyClass

LOG_TAG = "rsov"


class SegmentTask(QgsTask):
    """Segment one extent; emits ``stageChanged(str)`` (the stage and the time left) while running,
    then ``succeeded(layer)``, ``failed(message)`` or ``cancelled()`` on the main thread."""

    stageChanged = pyqtSignal(str)  # noqa: N815 (Qt naming)
    succeeded = pyqtSignal(object)
    failed = pyqtSignal(str)
    cancelled = pyqtSignal()

    def __init__(
        self,
        client: BackendClient,
        raster: RasterRequest,
        job: JobRequest,
        classes: list[VocabularyClass],
        destination: Path,
        layer_name: str,
        chip: QgsRasterPipe | None = None,
        project: QgsProject | None = None,
    ):
        super().__init__(f"rsov: segment {layer_name}", enum_value((QgsTask, "Flag.CanCancel"), (QgsTask, "CanCancel")))
        self.client = client
        self.raster = raster
        self.job = job
        self.classes = classes
        self.destination = destination
        self.layer_name = layer_name
        self.chip = chip  # a pipe to export when the backend cannot read the raster itself
        self.project = project or QgsProject.instance()
        self.error = ""
        self.error_code = ""  # the BackendError's code ("unreachable", ...) when the backend failed the job
        self.job_id: str | None = None
        self.status: JobStatus | None = None  # the backend's last word: once done, its message and summary
        self.layer: QgsVectorLayer | None = None

    def again(self) -> SegmentTask:
        """A new task for the same job, to send it once more."""
        return SegmentTask(
            self.client, self.raster, self.job, self.classes, self.destination, self.layer_name, self.chip, self.project
        )

    def _on_status(self, status: JobStatus) -> None:
        self.job_id, self.status = status.job_id, status
        self.setProgress(10.0 + 85.0 * max(0.0, min(1.0, status.progress)))
        self.stageChanged.emit(status.progress_text())

    def run(self) -> bool:  # worker thread
        folder = Path(tempfile.mkdtemp(prefix="rsov_chip_"))
        try:
            chip = None
            if self.chip is not None:
                self.stageChanged.emit("exporting the raster extent")
                chip = write_chip(self.chip, self.raster, folder / "chip.tif")
            if self.isCanceled():
                return False
            self.setProgress(5.0)
            self.stageChanged.emit("sending the request")
            job_id = self.client.run_job(self.job, chip, self._on_status, self.isCanceled)
            self.stageChanged.emit("downloading the result")
            data = self.client.result_gpkg(job_id)
            self.stageChanged.emit("saving the result")
            save_result(data, self.destination, self.classes)
            self.setProgress(100.0)
            return True
        except JobCancelled:
            return False
        except BackendError as exc:
            self.error, self.error_code = str(exc), exc.code
            return False
        except (ExtentError, ResultError) as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # a bug must still end the task with a message, not silently
            self.error = f"Unexpected error: {exc}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG)
            return False
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def finished(self, result: bool) -> None:  # main thread
        if result:
            try:
                self.layer = add_result_layer(self.destination, self.layer_name, self.project)
            except ResultError as exc:
                self.failed.emit(str(exc))
                return
            self.succeeded.emit(self.layer)
        elif self.error:
            self.failed.emit(self.error)
        else:
            self.cancelled.emit()
