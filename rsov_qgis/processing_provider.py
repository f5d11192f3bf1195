# SPDX-License-Identifier: GPL-2.0-or-later
"""Processing provider ``rsov`` with ``rsov:segment``, run against the configured backend.

Its output is a result GeoPackage like the dock's (``results.save_result``: status field, the
class style as its default, layer ``rsov``). When no backend answers, it starts one with the
dock's settings (the dock's own process, in QGIS; its own one in qgis_process) and leaves it
running: a batch or a model runs the algorithm many times, and loading the model each time
would cost more than the job. The dock's Stop backend, unloading the plugin or quitting QGIS
(or qgis_process) stops it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingProvider,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import schema
from .area import mask_request
from .backend_client import (
    ENGINE_CLIP,
    REFINE_SAM,
    BackendClient,
    BackendError,
    InstanceOptions,
    JobCancelled,
    JobStatus,
    SegmentOptions,
    describe_estimate,
)
from .backend_process import BackendProcess, find_executable, serve_shell_command, start_and_wait
from .compat import enum_value
from .engines import ENGINE_TIP, ENGINES
from .examples import ExampleError, ExampleSet
from .extent import ExtentError, chip_pipe, raster_request, write_chip
from .instance import CLASS_PROMPTS, NUMBER_OPTIONS
from .paths import ICON
from .results import ResultError, layer_uri, save_result
from .semantic import REFINE
from .settings import Settings
from .vocabulary import VocabularyClass, VocabularyError, parse_classes_string, validate

PROGRESS_TEXT_EVERY_S = 5.0  # within one stage (the backend is polled twice a second)


class ProgressTexts:
    """Which progress texts to pass on: Processing's dialog writes each one into its log, so a new
    stage goes at once, but the same stage's counts and time left at most every ``every_s``. A
    stage is what its text says before a colon ("proposing objects: tile 2/4, prompts 128/320")."""

    def __init__(self, every_s: float = PROGRESS_TEXT_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._stage: str | None = None
        self._text = ""
        self._at = 0.0

    def due(self, status: JobStatus) -> str | None:
        """The text to show for ``status``, or None when it should wait."""
        text, stage, now = status.progress_text(), status.stage.split(":")[0], self.clock()
        if text == self._text or (stage == self._stage and now - self._at < self.every_s):
            return None
        self._stage, self._text, self._at = stage, text, now
        return text


def cannot_start_text(settings: Settings, client: BackendClient) -> str:
    """Why Processing cannot start a backend, and how to start one from a shell, in one sentence."""
    if not client.is_local:
        why = "the backend URL is not on this machine"
    elif settings.backend_executable:
        why = f"the rsov executable '{settings.backend_executable}' set in the rsov settings does not exist"
    else:
        why = "no rsov executable is set in the rsov settings or found on PATH"
    command = serve_shell_command(settings.backend_url, settings.token_file, settings.model)
    return (
        f"No rsov backend answers at {client.url} and Processing cannot start one ({why}): start one from a "
        f"shell with `{command}`."
    )


class _EmbeddedStyle(QgsProcessingLayerPostProcessorInterface):
    """Gives the loaded output layer the style saved in its GeoPackage (QGIS loads Processing
    outputs without their default style)."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        if isinstance(layer, QgsVectorLayer):
            layer.loadDefaultStyle()


class SegmentAlgorithm(QgsProcessingAlgorithm):
    """Open-vocabulary segmentation of a raster extent into class polygons."""

    INPUT, CLASSES, EXTENT, THRESHOLD, RESOLUTION, OUTPUT = (
        "INPUT",
        "CLASSES",
        "EXTENT",
        "THRESHOLD",
        "RESOLUTION",
        "OUTPUT",
    )
    MODE, EXAMPLES, EXAMPLES_CLASS, CLASS_PROMPTS = "MODE", "EXAMPLES", "EXAMPLES_CLASS", "CLASS_PROMPTS"
    MASK, REFINE, ENGINE = "MASK", "REFINE", "ENGINE"
    MODES = ("semantic", "instance")
    _post_processors: list[_EmbeddedStyle] = []  # kept alive until QGIS has used them

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Segment raster (open vocabulary)"

    def shortHelpString(self):  # noqa: N802
        return (
            "Segments a raster extent into polygons of the classes you type, with the rsov backend "
            "(when none answers, it is started with the rsov panel's settings and keeps running for "
            "the next runs). Classes are separated by ';', "
            "synonyms by ',': 'building,roof,house; tree,forest; water'. Pixels whose best class "
            "probability is under the threshold are left out.\n\n"
            "The processing area is the whole raster, or the extent given; with polygons as the mask "
            "(use 'Selected features only' for a selection) only the pixels inside them get a class. "
            "Resolution 0 (auto) works at the raster's own resolution × 1024/448, so a pixel gets the "
            "same class whatever the area.\n\n"
            "Mode 'instance' gives one polygon per object (with an instance_id) instead of class "
            "regions. Its optional examples are polygons of objects like those wanted, their class "
            "(one of the vocabulary's class names) in the examples' class field; examples of other "
            "classes, or off the raster, are not used. The instance options are under Advanced.\n\n"
            "Engine 'sam3' has Meta's SAM 3 find every object of each class (semantic mode: land-cover "
            "classes such as grass, water or road from CLIP); its gated weights must be on the backend "
            "(`rsov models --download sam3`, after accepting the licence at huggingface.co/facebook/sam3).\n\n"
            "The output is a GeoPackage (layer 'rsov') with the review status field and the class style "
            "saved inside."
        )

    def createInstance(self):  # noqa: N802
        return SegmentAlgorithm()

    def icon(self):
        return QIcon(str(ICON))

    def initAlgorithm(self, config=None):  # noqa: N802
        double = enum_value((Qgis, "ProcessingNumberParameterType.Double"), (QgsProcessingParameterNumber, "Double"))
        polygons = enum_value((Qgis, "ProcessingSourceType.VectorPolygon"), (QgsProcessing, "TypeVectorPolygon"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster"))
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASSES,
                "Classes (';' between classes, ',' between synonyms)",
                defaultValue="building,roof,house; tree,forest; water,river",
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, "Extent (default: the whole raster)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD, "Threshold (minimum class probability)", double, 0.3, False, 0.0, 1.0
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.MASK, "Processing area: polygons (pixels outside them get no class)", [polygons], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.RESOLUTION,
                "Resolution in metres per pixel (0: auto, from the raster's resolution)",
                double,
                0.0,
                True,
                0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.MODE, "Mode", list(self.MODES), False, self.MODES[0], False, True)
        )
        engines = [key for key, _ in ENGINES]
        engine = QgsProcessingParameterEnum(
            self.ENGINE, "Engine (clip: CLIP, any vocabulary; sam3: SAM 3)", engines, False, ENGINE_CLIP, False, True
        )
        engine.setHelp(ENGINE_TIP)
        self.addParameter(engine)
        advanced = enum_value(
            (Qgis, "ProcessingParameterFlag.Advanced"), (QgsProcessingParameterDefinition, "FlagAdvanced")
        )
        refine = QgsProcessingParameterBoolean(self.REFINE, f"{REFINE[0]} (semantic mode, clip engine)", False)
        refine.setHelp(REFINE[1])
        self._add_advanced(refine, advanced)
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.EXAMPLES, "Example objects (instance mode)", [polygons], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.EXAMPLES_CLASS, "Class field of the examples", schema.CLASS, self.EXAMPLES, optional=True
            )
        )
        integer = enum_value((Qgis, "ProcessingNumberParameterType.Integer"), (QgsProcessingParameterNumber, "Integer"))
        for option in NUMBER_OPTIONS:
            parameter = QgsProcessingParameterNumber(
                option.key.upper(),
                f"{option.label} (instance mode)",
                double if option.decimals else integer,
                option.default,
                False,
                option.minimum,
                option.maximum,
            )
            parameter.setHelp(option.tip)
            self._add_advanced(parameter, advanced)
        self._add_advanced(
            QgsProcessingParameterBoolean(
                self.CLASS_PROMPTS, f"{CLASS_PROMPTS[0]} (instance mode)", InstanceOptions.class_prompts
            ),
            advanced,
        )
        self.addParameter(QgsProcessingParameterVectorDestination(self.OUTPUT, "Segments", polygons))

    def _add_advanced(self, parameter, advanced) -> None:
        parameter.setFlags(parameter.flags() | advanced)
        self.addParameter(parameter)

    def _instance(self, parameters, context) -> InstanceOptions | None:
        """The instance options, or None for a semantic job."""
        if self.parameterAsEnumString(parameters, self.MODE, context) != "instance":
            return None
        numbers = {
            o.key: (self.parameterAsDouble if o.decimals else self.parameterAsInt)(parameters, o.key.upper(), context)
            for o in NUMBER_OPTIONS
        }
        return InstanceOptions(
            **numbers, class_prompts=self.parameterAsBoolean(parameters, self.CLASS_PROMPTS, context)
        )

    def _job_examples(self, parameters, context, classes: list[VocabularyClass], layer, request) -> dict | None:
        """The example objects to send (their class read from their class field), as
        :meth:`ExampleSet.for_job` chooses them."""
        source = self.parameterAsSource(parameters, self.EXAMPLES, context)
        if source is None:
            return None
        field = self.parameterAsString(parameters, self.EXAMPLES_CLASS, context) or schema.CLASS
        if source.fields().indexOf(field) < 0:
            raise QgsProcessingException(f"The examples have no field '{field}' naming their class.")
        examples = ExampleSet()
        for feature in source.getFeatures():
            if feature[field]:
                examples.add(str(feature[field]), [feature.geometry()], source.sourceCrs(), context.transformContext())
        return examples.for_job([c.name for c in classes], layer, request, context.transformContext())

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("The input raster cannot be opened.")
        classes = parse_classes_string(self.parameterAsString(parameters, self.CLASSES, context))
        try:
            queries = validate(classes)
        except VocabularyError as exc:
            raise QgsProcessingException(str(exc)) from None
        settings = Settings.load()
        resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        engine = self.parameterAsEnumString(parameters, self.ENGINE, context) or ENGINE_CLIP
        refine = self.parameterAsBoolean(parameters, self.REFINE, context) and engine == ENGINE_CLIP
        options = SegmentOptions(
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            resolution=resolution or None,
            refine=REFINE_SAM if refine else None,
            engine=None if engine == ENGINE_CLIP else engine,
        )
        instance = self._instance(parameters, context)
        extent = None
        if parameters.get(self.EXTENT) is not None:
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        mask = self.parameterAsSource(parameters, self.MASK, context)
        output = self._output_path(parameters, context)
        texts = ProgressTexts()
        last: JobStatus | None = None

        def on_status(status: JobStatus) -> None:
            nonlocal last
            last = status
            feedback.setProgress(100.0 * status.progress)
            text = texts.due(status)
            if text:
                feedback.setProgressText(text)

        with tempfile.TemporaryDirectory(prefix="rsov_") as folder:
            try:
                client = self._backend(settings, feedback)
                if mask is not None:
                    request = mask_request(
                        (f.geometry() for f in mask.getFeatures()),
                        mask.sourceCrs(),
                        layer,
                        context.transformContext(),
                        client.is_local,
                        within=extent,
                        source="The mask polygons",
                    )
                    polygons = cast("dict[str, Any]", request.mask)  # mask_request always sets it
                    feedback.pushInfo(f"Mask polygons on the raster: {len(polygons['features'])}.")
                else:
                    request = raster_request(
                        extent or layer.extent(), layer.crs(), layer, context.transformContext(), client.is_local
                    )
                job = request.job(queries, options, instance)
                self._report_estimate(client, job, feedback)
                if instance is not None:
                    job.examples = self._job_examples(parameters, context, classes, layer, request)
                    feedback.pushInfo(f"Instance mode; examples sent: {len((job.examples or {}).get('features', []))}.")
                chip = None if request.path else write_chip(chip_pipe(layer), request, Path(folder) / "chip.tif")
                job_id = client.run_job(job, chip, on_status, feedback.isCanceled)
                if last is not None:
                    self._report_summary(last, feedback)
                save_result(client.result_gpkg(job_id), output, classes)
            except JobCancelled:
                feedback.reportError("Cancelled.")
                return {self.OUTPUT: None}
            except (BackendError, ExtentError, ExampleError, ResultError) as exc:
                raise QgsProcessingException(str(exc)) from None
        if context.willLoadLayerOnCompletion(str(output)):
            self._load_result_layer(context, output)
        return {self.OUTPUT: layer_uri(output)}

    def _load_result_layer(self, context, output: Path) -> None:
        """Have QGIS load the result layer, with its embedded style, rather than the file's first layer."""
        layers = context.layersToLoadOnCompletion()
        details = layers.pop(str(output))
        post = _EmbeddedStyle()
        self._post_processors[:] = [*self._post_processors[-7:], post]
        details.setPostProcessor(post)
        context.setLayersToLoadOnCompletion({**layers, layer_uri(output): details})

    def _output_path(self, parameters, context) -> Path:
        """The GeoPackage file to write (a temporary one for a temporary output)."""
        destination = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not destination.lower().endswith(".gpkg") or destination.startswith("ogr:"):
            raise QgsProcessingException(f"The segments are saved as a GeoPackage file (.gpkg), not to {destination}.")
        return Path(destination)

    def _backend(self, settings: Settings, feedback) -> BackendClient:
        """A client of the configured backend, started (with the rsov panel's settings) when none
        answers and it runs on this machine."""
        client = settings.client()
        try:
            client.health(timeout=2.0)
            return client
        except BackendError as exc:
            if exc.code != "unreachable":
                raise
        if not client.is_local or not find_executable(settings.backend_executable):
            raise BackendError("unreachable", cannot_start_text(settings, client))
        feedback.pushInfo(f"No rsov backend answers at {client.url}: starting one.")

        def waiting(elapsed: float, log: str) -> None:
            feedback.setProgressText(
                f"Starting the rsov backend (loading the model): {elapsed:.0f} s"
                + (f" — {log.splitlines()[-1]}" if log else "")
            )

        health = start_and_wait(
            self.provider().backend,
            settings.backend_executable,
            settings.backend_url,
            settings.token_file,
            settings.model,
            feedback.isCanceled,
            waiting,
        )
        feedback.pushInfo(
            f"Started {health.describe()}; it keeps running for the next runs, until the rsov "
            "panel's Stop backend or the end of this QGIS (or qgis_process)."
        )
        return client

    @staticmethod
    def _report_summary(status: JobStatus, feedback) -> None:
        """An instance job's account of its proposals; why there are no objects when none was kept."""
        if status.summary:
            feedback.pushInfo(status.summary_text if status.summary.get("kept") else status.no_objects_text())

    @staticmethod
    def _report_estimate(client, job, feedback) -> None:
        """Say what the backend expects (rasters read by path; an older backend has no estimate)."""
        if job.raster is None:
            return
        try:
            feedback.pushInfo("Estimate: " + describe_estimate(client.estimate(job)))
        except BackendError as exc:
            if exc.code in ("unreachable", "unauthorized", "token_missing"):
                raise  # the job would fail the same way: say so now
            feedback.pushInfo(f"No estimate: {exc}")


class RsovProvider(QgsProcessingProvider):
    """The ``rsov`` provider; its outputs are GeoPackage files (they carry the style)."""

    def __init__(self):
        super().__init__()
        self._own_backend = BackendProcess()  # qgis_process has no dock to share one with
        self.backend = self._own_backend  # the one Processing starts when no backend answers

    def use_backend(self, backend: BackendProcess) -> None:
        """Start the dock's backend process: the Backend tab shows it and its Stop button stops it."""
        self.backend = backend

    def unload(self):
        self._own_backend.stop()

    def supportsNonFileBasedOutput(self):  # noqa: N802
        return False

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802, N803
        return "gpkg"

    def id(self):
        return "rsov"

    def name(self):
        return "rsov"

    def longName(self):  # noqa: N802
        return "rsov open-vocabulary segmentation"

    def icon(self):
        return QIcon(str(ICON))

    def loadAlgorithms(self):  # noqa: N802
        self.addAlgorithm(SegmentAlgorithm())
