"""Processing: rsov:segment against the fake backend."""

import os
import shutil
import subprocess
import zipfile

import pytest
from conftest import RSOV, real_backend_available
from helpers import free_port, polygon_layer
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from test_plugin_backend_process import fake_rsov_script

from rsov_qgis import classFactory
from rsov_qgis.backend_client import BackendClient, BackendError, JobStatus
from rsov_qgis.processing_provider import ProgressTexts, RsovProvider
from rsov_qgis.results import is_result_layer
from rsov_qgis.vocabulary import parse_classes_string


@pytest.fixture
def provider(qgis_processing):
    provider = RsovProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider("rsov")  # unless the test did


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos, self.progress_values, self.progress_texts = [], [], []
        self.progressChanged.connect(self.progress_values.append)

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def setProgressText(self, text):  # noqa: N802
        self.progress_texts.append(text)
        super().setProgressText(text)


def test_segment_algorithm_writes_features(fake_backend, provider, oem_layer, tmp_path):
    import processing

    extent = oem_layer.extent()
    box = QgsRectangle(
        extent.xMinimum() + 100, extent.yMinimum() + 100, extent.xMinimum() + 300, extent.yMinimum() + 200
    )
    feedback = Feedback()
    out = str(tmp_path / "segments.gpkg")
    result = processing.run(
        "rsov:segment",
        {
            "INPUT": oem_layer,
            "CLASSES": "building,roof; tree ,forest",
            "THRESHOLD": 0.6,
            "EXTENT": f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:25832]",
            "OUTPUT": out,
        },
        feedback=feedback,
    )
    sent = fake_backend.requests[0]["json"]
    assert sent["classes"] == ["building,roof", "tree,forest"] and sent["options"]["threshold"] == 0.6
    assert sent["bbox"] == pytest.approx([box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()])
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:25832"
    assert sorted(f["class"] for f in layer.getFeatures()) == ["building", "tree"]
    assert {f["status"] for f in layer.getFeatures()} == {"new"}
    assert {"class", "class_id", "score", "area_m2", "status"} <= set(layer.fields().names())
    for feature in layer.getFeatures():
        assert box.contains(feature.geometry().boundingBox())
    assert feedback.progress_texts[0] == "segmenting block 1/3 — about 40 s left"
    assert feedback.progress_values[-1] == 100
    assert not [info for info in feedback.infos if "proposals" in info]  # semantic jobs have no summary


def test_whole_raster_by_default_and_errors_are_processing_exceptions(fake_backend, provider, oem_layer, tmp_path):
    import processing

    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[0]["json"]["bbox"] == pytest.approx([346000, 5647500, 346500, 5648000])
    with pytest.raises(QgsProcessingException, match="vocabulary is empty"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": " ; ", "OUTPUT": "TEMPORARY_OUTPUT"})
    fake_backend.token_file.write_text("wrong")
    with pytest.raises(QgsProcessingException, match="refused the token"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})


def test_cancel_through_feedback(fake_backend, provider, oem_layer):
    import processing

    fake_backend.hold = True
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: feedback.cancel() if value > 0 else None)
    result = processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback
    )
    assert result["OUTPUT"] is None
    assert [job.state for job in fake_backend.jobs.values()] == ["cancelled"]


def _loaded(result) -> QgsVectorLayer:
    """The layer Processing loaded for the output ``result``: the result layer of the GeoPackage."""
    [layer] = [layer for layer in QgsProject.instance().mapLayers().values() if layer.source() == result["OUTPUT"]]
    return layer


def test_loaded_output_gets_the_vocabulary_style(fake_backend, provider, oem_layer):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer

    result = processing.runAndLoadResults(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "building,roof; water", "OUTPUT": "TEMPORARY_OUTPUT"}
    )
    assert result["OUTPUT"].endswith(".gpkg|layername=rsov")  # a temporary GeoPackage
    layer = _loaded(result)
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.value() for c in layer.renderer().categories()] == ["building", "water"]


def test_output_reopened_in_a_fresh_project_keeps_its_style(fake_backend, provider, oem_layer, oem_raster, tmp_path):
    """The style is inside the GeoPackage: a new project (or another QGIS) shows the classes' colours."""
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsRasterLayer

    classes = "building,roof; tree; water"
    result = processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": classes, "OUTPUT": str(tmp_path / "segments.gpkg")}
    )
    assert result["OUTPUT"] == f"{tmp_path / 'segments.gpkg'}|layername=rsov"
    QgsProject.instance().clear()
    layer = QgsVectorLayer(result["OUTPUT"], "reopened", "ogr")
    assert is_result_layer(layer) and {f["status"] for f in layer.getFeatures()} == {"new"}
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [(c.value(), c.symbol().color().name()) for c in layer.renderer().categories()] == [
        (c.name, c.color) for c in parse_classes_string(classes)
    ]
    count, _, names, _, _ = layer.listStylesInDatabase()
    assert count == 1 and names == ["rsov"]
    raster = QgsRasterLayer(str(oem_raster), "oem")
    _render([layer, raster], raster, tmp_path / "reopened.png")  # to look at
    shown = _render([layer], raster, tmp_path / "classes.png")
    for category in layer.renderer().categories():  # each class's fill, over the white background
        colour = category.symbol().color()
        over_white = tuple(
            round(colour.alphaF() * c + (1 - colour.alphaF()) * 255)
            for c in (colour.red(), colour.green(), colour.blue())
        )
        assert over_white in shown, (category.value(), over_white)


def _render(layers, raster, path) -> set:
    """``layers`` over the extent of ``raster`` on white, saved as a PNG; the colours shown."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(raster.extent())
    settings.setOutputSize(QSize(500, 500))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    assert image.save(str(path))
    return {image.pixelColor(x, y).getRgb()[:3] for x in range(0, 500, 2) for y in range(0, 500, 2)}


def test_outputs_are_geopackages(fake_backend, provider, oem_layer, tmp_path):
    import processing

    for output in ("memory:", str(tmp_path / "x.shp"), f"ogr:dbname='{tmp_path / 'x.gpkg'}' table=\"t\" (geom)"):
        with pytest.raises(QgsProcessingException, match=r"saved as a GeoPackage file \(.gpkg\), not to"):
            processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": output})
    assert fake_backend.requests == []


def test_instance_mode_with_an_examples_layer(fake_backend, provider, oem_layer):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer

    examples = polygon_layer(
        [
            "POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))",  # off the raster
            "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # in it, in EPSG:4326
            "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # a class outside the vocabulary
            "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # no class
        ],
        crs="EPSG:4326",
        classes=["Building", "water", "car", None],
    )
    feedback = Feedback()
    result = processing.runAndLoadResults(
        "rsov:segment",
        {
            "INPUT": oem_layer,
            "CLASSES": "building,roof; water",
            "MODE": "instance",
            "EXAMPLES": examples,
            "POINTS_PER_SIDE": 4,
            "PRED_IOU": -1,
            "CLASS_PROMPTS": False,
            "OUTPUT": "TEMPORARY_OUTPUT",
        },
        feedback=feedback,
    )
    sent = fake_backend.requests[0]["json"]
    assert sent["mode"] == "instance"
    assert sent["options"] == {
        "threshold": 0.3,
        "object_threshold": 0.3,
        "points_per_side": 4,
        "pred_iou": -1,
        "stability": 0.9,
        "class_prompts": False,
        "points_per_batch": 64,
    }
    assert sent["examples"]["crs"]["properties"]["name"] == "EPSG:25832"
    assert [f["properties"]["class"] for f in sent["examples"]["features"]] == ["water"]
    assert "Instance mode; examples sent: 1." in feedback.infos
    assert feedback.progress_texts[0] == "proposing objects: tile 1/3, prompts 64/192 — about 40 s left"
    assert "3 proposals, 2 kept, 0 below the object threshold 0.30, 1 background" in feedback.infos  # the summary
    layer = _loaded(result)
    assert "instance_id" in layer.fields().names() and layer.featureCount() == 2
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.symbol().color().alpha() for c in layer.renderer().categories()] == [40, 40]  # outlines


def test_examples_need_their_class_field(fake_backend, provider, oem_layer):
    import processing

    examples = polygon_layer(["POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))"], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException):
        processing.run(
            "rsov:segment",
            {
                "INPUT": oem_layer,
                "CLASSES": "water",
                "MODE": "instance",
                "EXAMPLES": examples,
                "EXAMPLES_CLASS": "kind",
                "OUTPUT": "TEMPORARY_OUTPUT",
            },
        )
    processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "EXAMPLES": examples, "OUTPUT": "TEMPORARY_OUTPUT"}
    )
    assert (
        fake_backend.requests[-1]["json"]["mode"] == "semantic" and "examples" not in fake_backend.requests[-1]["json"]
    )


# inside the raster (346000..346500, 5647500..5648000), in EPSG:4326
FIELD_4326 = "POLYGON((6.8105 50.9605, 6.8115 50.9605, 6.8115 50.9611, 6.8105 50.9611, 6.8105 50.9605))"
POND_4326 = "POLYGON((6.812 50.962, 6.8125 50.962, 6.8125 50.9623, 6.812 50.962))"
OFF_4326 = "POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))"


def _in_raster_crs(wkt, layer):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    geometry = QgsGeometry.fromWkt(wkt)
    geometry.transform(
        QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), layer.crs(), QgsProject.instance())
    )
    return geometry


def test_mask_with_selected_features_only(fake_backend, provider, oem_layer, tmp_path):
    import processing

    mask = polygon_layer([FIELD_4326, POND_4326, OFF_4326], crs="EPSG:4326", name="fields")
    QgsProject.instance().addMapLayer(mask)
    mask.selectByIds([next(mask.getFeatures()).id()])  # the field only
    feedback = Feedback()
    result = processing.run(
        "rsov:segment",
        {
            "INPUT": oem_layer,
            "CLASSES": "building; water",
            "RESOLUTION": 0,
            "MASK": QgsProcessingFeatureSourceDefinition(mask.id(), True),
            "OUTPUT": str(tmp_path / "masked.gpkg"),
        },
        feedback=feedback,
    )
    sent = fake_backend.requests[0]["json"]
    assert "resolution" not in sent["options"]  # 0: auto
    assert sent["mask"]["crs"]["properties"]["name"] == "EPSG:25832" == sent["bbox_crs"]
    [feature] = sent["mask"]["features"]
    field = _in_raster_crs(FIELD_4326, oem_layer)
    ring = feature["geometry"]["coordinates"][0]
    assert (
        QgsGeometry.fromWkt("POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))").symDifference(field).area()
        < 0.1
    )
    box = field.boundingBox()
    assert QgsRectangle(*sent["bbox"]).contains(box) and QgsRectangle(*sent["bbox"]).width() < box.width() + 1.01
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    assert layer.featureCount() == 2
    for out in layer.getFeatures():
        assert field.buffer(0.01, 4).contains(out.geometry())
    assert any(info.startswith("Estimate: 1.14 m/px (auto)") for info in feedback.infos)
    assert "Mask polygons on the raster: 1." in feedback.infos
    assert fake_backend.results == ["format=gpkg"]
    # every polygon of the layer (the one off the raster is left out), at a fixed resolution
    processing.run(
        "rsov:segment",
        {"INPUT": oem_layer, "CLASSES": "water", "RESOLUTION": 0.5, "MASK": mask, "OUTPUT": "TEMPORARY_OUTPUT"},
    )
    sent = fake_backend.requests[1]["json"]
    assert len(sent["mask"]["features"]) == 2 and sent["options"]["resolution"] == 0.5
    assert fake_backend.estimates[-1]["options"]["resolution"] == 0.5


def test_mask_off_the_raster_or_outside_the_extent_is_refused(fake_backend, provider, oem_layer):
    import processing

    off = polygon_layer([OFF_4326], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException, match="The mask polygons do not overlap the raster oem_koeln_50"):
        processing.run(
            "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "MASK": off, "OUTPUT": "TEMPORARY_OUTPUT"}
        )
    field = polygon_layer([FIELD_4326], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException, match="within the extent"):
        processing.run(
            "rsov:segment",
            {
                "INPUT": oem_layer,
                "CLASSES": "water",
                "MASK": field,
                "EXTENT": "346400,346500,5647900,5648000 [EPSG:25832]",
                "OUTPUT": "TEMPORARY_OUTPUT",
            },
        )
    assert fake_backend.requests == []


def test_an_instance_job_without_objects_and_the_refine_parameter(fake_backend, provider, oem_layer):
    import processing

    feedback = Feedback()
    result = processing.run(
        "rsov:segment",
        {
            "INPUT": oem_layer,
            "CLASSES": "building; water",
            "MODE": "instance",
            "OBJECT_THRESHOLD": 0.95,
            "POINTS_PER_BATCH": 16,
            "REFINE": True,
            "OUTPUT": "TEMPORARY_OUTPUT",
        },
        feedback=feedback,
    )
    empty = QgsVectorLayer(result["OUTPUT"], "objects", "ogr")  # complete all the same: the Review tab takes it
    assert empty.featureCount() == 0 and is_result_layer(empty) and "instance_id" in empty.fields().names()
    assert [c.value() for c in empty.renderer().categories()] == ["building", "water"]
    options = fake_backend.requests[0]["json"]["options"]
    assert options["points_per_batch"] == 16 and "refine" not in options  # semantic mode's alone
    assert (
        "No objects: 3 proposals, 0 kept, 2 below the object threshold 0.95, 1 background. "
        "Lower the object threshold or check the vocabulary."
    ) in feedback.infos
    processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "REFINE": True, "OUTPUT": "TEMPORARY_OUTPUT"}
    )
    assert fake_backend.requests[1]["json"]["options"] == {"threshold": 0.3, "refine": "sam"}
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[2]["json"]["options"] == {"threshold": 0.3}  # unchecked: the backend's "none"
    algorithm = QgsApplication.processingRegistry().algorithmById("rsov:segment")
    refine = algorithm.parameterDefinition("REFINE")
    assert refine.description() == "Refine with SAM regions (semantic mode, clip engine)"
    assert "1024 px tile" in refine.help()


def test_the_engine_parameter(fake_backend, provider, oem_layer):
    import processing

    processing.run(
        "rsov:segment",
        {"INPUT": oem_layer, "CLASSES": "car; grass", "ENGINE": "sam3", "REFINE": True, "OUTPUT": "TEMPORARY_OUTPUT"},
    )
    assert fake_backend.requests[0]["json"]["options"] == {"threshold": 0.3, "engine": "sam3"}  # no refine with SAM 3
    processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "car", "ENGINE": "clip", "OUTPUT": "TEMPORARY_OUTPUT"}
    )
    assert fake_backend.requests[1]["json"]["options"] == {"threshold": 0.3}  # the backend's default: not sent
    engine = QgsApplication.processingRegistry().algorithmById("rsov:segment").parameterDefinition("ENGINE")
    assert engine.options() == ["clip", "sam3"] and engine.defaultValue() == "clip"
    assert "rsov models --download sam3" in engine.help()


@pytest.fixture
def startable_backend(tmp_path, monkeypatch):
    """Settings whose backend nobody runs yet, with an executable (the fake backend behind a stand-in
    `rsov`) that Processing can start; returns the URL. (Ask for it after ``oem_layer``: adding a
    layer to the project may make a panel of an earlier test save its own settings.)"""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RSOV_BACKEND_URL", url)
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    QgsSettings().setValue("rsov/backend_executable", str(fake_rsov_script(tmp_path / "rsov", "sleep 1")))
    return url


def test_processing_starts_a_backend_and_leaves_it_running(provider, oem_layer, startable_backend):
    """No backend answers: Processing starts one with the panel's settings, and the next run (of a
    batch, say) finds it running instead of loading the model again."""
    import processing

    feedback = Feedback()
    result = processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback
    )
    assert QgsVectorLayer(result["OUTPUT"], "out", "ogr").featureCount() == 1
    assert f"No rsov backend answers at {startable_backend}: starting one." in feedback.infos
    assert any(
        info.startswith("Started rsov ") and "keeps running for the next runs" in info for info in feedback.infos
    )
    assert provider.backend.is_running()
    again = Feedback()
    processing.run(
        "rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=again
    )
    assert not [info for info in again.infos if "starting one" in info]
    QgsApplication.processingRegistry().removeProvider(provider)  # unloading the plugin, quitting qgis_process
    with pytest.raises(BackendError):
        BackendClient(startable_backend).health()


def test_processing_in_a_worker_thread_starts_the_backend(provider, oem_layer, startable_backend, qtbot):
    """What Processing's dialog does: the algorithm runs in a task's thread."""
    from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext

    context, feedback = QgsProcessingContext(), Feedback()
    context.setProject(QgsProject.instance())
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("rsov:segment")
    task = QgsProcessingAlgRunnerTask(
        algorithm, {"INPUT": oem_layer.id(), "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"}, context, feedback
    )
    outcome = []
    task.executed.connect(lambda ok, results: outcome.append((ok, results)))
    QgsApplication.taskManager().addTask(task)
    qtbot.waitUntil(lambda: bool(outcome), timeout=60000)
    ok, results = outcome[0]
    assert ok and QgsVectorLayer(results["OUTPUT"], "out", "ogr").featureCount() == 1
    assert provider.backend.is_running() and provider.backend.process.thread() == provider.backend.thread()


def test_when_no_backend_can_be_started_one_sentence_says_how_to_start_one(provider, oem_layer, tmp_path, monkeypatch):
    import processing

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RSOV_BACKEND_URL", url)
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no rsov on it
    QgsSettings().setValue("rsov/backend_executable", "")  # none set (whatever an earlier test's panel left)
    with pytest.raises(QgsProcessingException) as refused:
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})
    port = url.rsplit(":", 1)[1]
    assert str(refused.value) == (
        f"No rsov backend answers at {url} and Processing cannot start one (no rsov executable is set in the rsov "
        "settings or found on PATH): start one from a shell with "
        f"`rsov serve --host 127.0.0.1 --port {port} --token-file {tmp_path / 'token'}`."
    )
    QgsSettings().setValue("rsov/backend_executable", str(tmp_path / "gone" / "rsov"))
    QgsSettings().setValue("rsov/model", "tiny-random")
    with pytest.raises(
        QgsProcessingException,
        match=r"the rsov executable '.*gone/rsov' set in the rsov settings "
        r"does not exist\): start one from a shell with `rsov serve "
        r".* --model tiny-random`\.$",
    ):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})


@pytest.mark.e2e
def test_processing_starts_the_real_backend(provider, oem_layer, tmp_path, monkeypatch):
    """`rsov serve --model tiny-random`, started by Processing from the panel's settings."""
    import processing

    assert real_backend_available(), f"{RSOV} serve is not available (run `make setup`)"
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RSOV_BACKEND_URL", url)
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    QgsSettings().setValue("rsov/backend_executable", str(RSOV))
    QgsSettings().setValue("rsov/model", "tiny-random")
    feedback = Feedback()
    result = processing.run(
        "rsov:segment",
        {
            "INPUT": oem_layer,
            "CLASSES": "building; water",
            "THRESHOLD": 0.0,
            "EXTENT": "346100,346300,5647600,5647800 [EPSG:25832]",
            "OUTPUT": str(tmp_path / "out.gpkg"),
        },
        feedback=feedback,
    )
    assert any(info.startswith("Started rsov ") and "model tiny-random" in info for info in feedback.infos)
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    assert is_result_layer(layer) and layer.featureCount() > 0
    assert [c.value() for c in layer.renderer().categories()] == ["building", "water"]
    QgsApplication.processingRegistry().removeProvider("rsov")
    with pytest.raises(BackendError):
        BackendClient(url).health()


def test_qgis_process_starts_a_backend_and_stops_it_when_it_ends(plugin_zip, oem_raster, tmp_path):
    """The shell's Processing: the plugin from its zip in a fresh profile, no backend running."""
    # Debian's qgis_process wrapper adds --noversioncheck, which 3.22's qgis_process refuses
    qgis_process = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    assert qgis_process, "qgis_process is missing (it comes with QGIS)"
    profile = tmp_path / "profiles" / "default"
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(profile / "python" / "plugins")
    url = f"http://127.0.0.1:{free_port()}"
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        f"[PythonPlugins]\nrsov_qgis=true\n\n[rsov]\nbackend_executable={fake_rsov_script(tmp_path / 'rsov')}\n"
        f"backend_url={url}\ntoken_file={tmp_path / 'token'}\n"
    )
    out = tmp_path / "out.gpkg"
    environment = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run(
        [qgis_process, "run", "rsov:segment", "--", f"INPUT={oem_raster}", "CLASSES=a; b", f"OUTPUT={out}"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"No rsov backend answers at {url}: starting one." in run.stdout
    layer = QgsVectorLayer(f"{out}|layername=rsov", "out", "ogr")
    assert is_result_layer(layer) and [c.value() for c in layer.renderer().categories()] == ["a", "b"]
    with pytest.raises(BackendError):  # no backend left behind
        BackendClient(url).health()


def test_the_plugin_gives_processing_the_docks_backend(qgis_iface, qgis_app):
    """One backend process, whether the Backend tab or Processing starts it."""
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.provider.backend is plugin.dock.backend
    finally:
        plugin.unload()


def test_progress_texts_go_at_once_for_a_new_stage_and_every_few_seconds_within_one():
    now = [0.0]
    texts = ProgressTexts(every_s=5.0, clock=lambda: now[0])

    def at(seconds, stage, eta_s):
        now[0] = seconds
        return texts.due(JobStatus("j", "running", stage=stage, eta_s=eta_s))

    assert at(0, "encoding windows: 3/9", None) == "encoding windows: 3/9"
    assert at(1, "encoding windows: 4/9", None) is None  # the same stage, too soon
    assert at(5, "encoding windows: 5/9", 30) == "encoding windows: 5/9 — about 30 s left"
    assert at(6, "proposing objects: tile 1/4, prompts 64/320", 25) == (
        "proposing objects: tile 1/4, prompts 64/320 — about 25 s left"
    )  # a new stage: at once
    assert at(20, "proposing objects: tile 1/4, prompts 64/320", 25) is None  # nothing new
    assert texts.due(JobStatus("j", "done", stage="done")) == "done"
