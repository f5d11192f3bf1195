# SPDX-License-Identifier: GPL-2.0-or-later
"""Processing provider ``rsov`` with ``rsov:segment``, run against the configured backend."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from qgis.core import (
    Qgis,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
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
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingProvider,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import schema
from .area import mask_request
from .backend_client import (
    REFINE_SAM,
    BackendError,
    InstanceOptions,
    JobCancelled,
    JobStatus,
    SegmentOptions,
    describe_estimate,
)
from .compat import enum_value
from .examples import ExampleError, ExampleSet
from .extent import ExtentError, chip_pipe, raster_request, write_chip
from .instance import CLASS_PROMPTS, NUMBER_OPTIONS
from .paths import ICON
from .results import layer_uri, status_field
from .semantic import REFINE
from .settings import Settings
from .styling import apply_result_style
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


class _StyleOutput(QgsProcessingLayerPostProcessorInterface):
    """Gives the loaded output layer the vocabulary's categorized style."""

    def __init__(self, classes: list[VocabularyClass]):
        super().__init__()
        self.classes = classes

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        if isinstance(layer, QgsVectorLayer):
            apply_result_style(layer, self.classes)


class SegmentAlgorithm(QgsProcessingAlgorithm):
    """Open-vocabulary segmentation of a raster extent into class polygons."""

    INPUT, CLASSES, EXTENT, THRESHOLD, RESOLUTION, OUTPUT = "INPUT", "CLASSES", "EXTENT", "THRESHOLD", "RESOLUTION", "OUTPUT"
    MODE, EXAMPLES, EXAMPLES_CLASS, CLASS_PROMPTS = "MODE", "EXAMPLES", "EXAMPLES_CLASS", "CLASS_PROMPTS"
    MASK, REFINE = "MASK", "REFINE"
    MODES = ("semantic", "instance")
    _post_processors: list[_StyleOutput] = []  # kept alive until QGIS has used them

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Segment raster (open vocabulary)"

    def shortHelpString(self):  # noqa: N802
        return ("Segments a raster extent into polygons of the classes you type, with the rsov backend "
                "(start it from the rsov panel or with `rsov serve`). Classes are separated by ';', "
                "synonyms by ',': 'building,roof,house; tree,forest; water'. Pixels whose best class "
                "probability is under the threshold are left out.\n\n"
                "The processing area is the whole raster, or the extent given; with polygons as the mask "
                "(use 'Selected features only' for a selection) only the pixels inside them get a class. "
                "Resolution 0 (auto) works at the raster's own resolution × 1024/448, so a pixel gets the "
                "same class whatever the area.\n\n"
                "Mode 'instance' gives one polygon per object (with an instance_id) instead of class "
                "regions. Its optional examples are polygons of objects like those wanted, their class "
                "(one of the vocabulary's class names) in the examples' class field; examples of other "
                "classes, or off the raster, are not used. The instance options are under Advanced.")

    def createInstance(self):  # noqa: N802
        return SegmentAlgorithm()

    def icon(self):
        return QIcon(str(ICON))

    def initAlgorithm(self, config=None):  # noqa: N802
        double = enum_value((Qgis, "ProcessingNumberParameterType.Double"), (QgsProcessingParameterNumber, "Double"))
        polygons = enum_value((Qgis, "ProcessingSourceType.VectorPolygon"), (QgsProcessing, "TypeVectorPolygon"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster"))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, "Classes (';' between classes, ',' between synonyms)",
            defaultValue="building,roof,house; tree,forest; water,river"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: the whole raster)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, "Threshold (minimum class probability)",
                                                       double, 0.3, False, 0.0, 1.0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Processing area: polygons (pixels outside them get no class)", [polygons], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Resolution in metres per pixel (0: auto, from the raster's resolution)",
            double, 0.0, True, 0.0))
        self.addParameter(QgsProcessingParameterEnum(self.MODE, "Mode", list(self.MODES), False, self.MODES[0],
                                                     False, True))
        advanced = enum_value((Qgis, "ProcessingParameterFlag.Advanced"), (QgsProcessingParameterDefinition, "FlagAdvanced"))
        refine = QgsProcessingParameterBoolean(self.REFINE, f"{REFINE[0]} (semantic mode)", False)
        refine.setHelp(REFINE[1])
        self._add_advanced(refine, advanced)
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXAMPLES, "Example objects (instance mode)", [polygons], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.EXAMPLES_CLASS, "Class field of the examples", schema.CLASS, self.EXAMPLES, optional=True))
        integer = enum_value((Qgis, "ProcessingNumberParameterType.Integer"), (QgsProcessingParameterNumber, "Integer"))
        for option in NUMBER_OPTIONS:
            parameter = QgsProcessingParameterNumber(option.key.upper(), f"{option.label} (instance mode)",
                                                     double if option.decimals else integer, option.default, False,
                                                     option.minimum, option.maximum)
            parameter.setHelp(option.tip)
            self._add_advanced(parameter, advanced)
        self._add_advanced(QgsProcessingParameterBoolean(self.CLASS_PROMPTS, f"{CLASS_PROMPTS[0]} (instance mode)",
                                                         InstanceOptions.class_prompts), advanced)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Segments", polygons))

    def _add_advanced(self, parameter, advanced) -> None:
        parameter.setFlags(parameter.flags() | advanced)
        self.addParameter(parameter)

    def _instance(self, parameters, context) -> InstanceOptions | None:
        """The instance options, or None for a semantic job."""
        if self.parameterAsEnumString(parameters, self.MODE, context) != "instance":
            return None
        numbers = {o.key: (self.parameterAsDouble if o.decimals else self.parameterAsInt)(parameters, o.key.upper(), context)
                   for o in NUMBER_OPTIONS}
        return InstanceOptions(**numbers, class_prompts=self.parameterAsBoolean(parameters, self.CLASS_PROMPTS, context))

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
        refine = self.parameterAsBoolean(parameters, self.REFINE, context)
        options = SegmentOptions(threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
                                 resolution=resolution or None, refine=REFINE_SAM if refine else None)
        instance = self._instance(parameters, context)
        extent = None
        if parameters.get(self.EXTENT) is not None:
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        mask = self.parameterAsSource(parameters, self.MASK, context)
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
                client = settings.client()
                if mask is not None:
                    request = mask_request((f.geometry() for f in mask.getFeatures()), mask.sourceCrs(), layer,
                                           context.transformContext(), client.is_local, within=extent,
                                           source="The mask polygons")
                    feedback.pushInfo(f"Mask polygons on the raster: {len(request.mask['features'])}.")
                else:
                    request = raster_request(extent or layer.extent(), layer.crs(), layer, context.transformContext(),
                                             client.is_local)
                job = request.job(queries, options, instance)
                self._report_estimate(client, job, feedback)
                if instance is not None:
                    job.examples = self._job_examples(parameters, context, classes, layer, request)
                    feedback.pushInfo(f"Instance mode; examples sent: {len((job.examples or {}).get('features', []))}.")
                chip = None if request.path else write_chip(chip_pipe(layer), request, Path(folder) / "chip.tif")
                job_id = client.run_job(job, chip, on_status, feedback.isCanceled)
                self._report_summary(last, feedback)
                result = Path(folder) / "result.gpkg"
                result.write_bytes(client.result_gpkg(job_id))
            except JobCancelled:
                feedback.reportError("Cancelled.")
                return {self.OUTPUT: None}
            except (BackendError, ExtentError, ExampleError) as exc:
                raise QgsProcessingException(str(exc)) from None
            dest_id = self._write_sink(result, parameters, context, feedback)
        if context.willLoadLayerOnCompletion(dest_id):
            post = _StyleOutput(classes)
            self._post_processors[:] = [*self._post_processors[-7:], post]
            context.layerToLoadOnCompletionDetails(dest_id).setPostProcessor(post)
        return {self.OUTPUT: dest_id}

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

    def _write_sink(self, result: Path, parameters, context, feedback) -> str:
        source = QgsVectorLayer(layer_uri(result), "rsov", "ogr")
        if not source.isValid():
            raise QgsProcessingException("The backend's result is not a readable GeoPackage.")
        fields = QgsFields()
        for field in source.fields():
            if field.name() != "fid":
                fields.append(field)
        fields.append(status_field())
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, source.wkbType(), source.crs())
        if sink is None:
            raise QgsProcessingException("The output layer cannot be created.")
        fast = enum_value((QgsFeatureSink, "Flag.FastInsert"), (QgsFeatureSink, "FastInsert"))
        for feature in source.getFeatures():
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            for field in fields:
                out[field.name()] = schema.NEW if field.name() == schema.STATUS else feature[field.name()]
            sink.addFeature(out, fast)
        del source
        return dest_id


class RsovProvider(QgsProcessingProvider):
    """The ``rsov`` provider."""

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
