"""End to end with the real backend (`.venv/bin/rsov serve --model tiny-random`): the dock, Processing,
cancel, a geographic raster under a Web Mercator canvas, a web layer sent as a chip, Start backend,
a backend killed during a job (Restart and retry), instance mode with examples (dock and
Processing), and selected polygons as the processing area with the estimate line.

tiny-random has random weights (and a tiny random Segment Anything), so the classes and objects it
finds are arbitrary: the tests check the plumbing (extent, CRS, fields, style, files), with
threshold 0 so that polygons come out at all, and permissive instance options so that objects do.
"""

import os
import re
import signal

import pytest
from conftest import REPO, RSOV
from helpers import PERMISSIVE, free_port, polygon_layer, xyz_layer
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from rsov_qgis import schema
from rsov_qgis.backend_client import BackendClient, BackendError
from rsov_qgis.dock import CRASHED, RsovDock
from rsov_qgis.results import GROUP
from rsov_qgis.styling import OUTLINE_FILL_ALPHA
from rsov_qgis.vocabulary import parse_vocabulary

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 120000
VOCABULARY = "building, roof, house  # #e31a1c\ntree, forest  # #33a02c\nwater, river  # #1f78b4\n"
ROOF = "POLYGON((346100 5647600, 346130 5647600, 346130 5647630, 346100 5647630, 346100 5647600))"


@pytest.fixture
def dock(use_real_backend, qgis_iface, qtbot, qgis_new_project):
    widget = RsovDock(qgis_iface)
    qtbot.addWidget(widget)
    widget.set_vocabulary(parse_vocabulary(VOCABULARY))
    widget.threshold_spin.setValue(0.0)
    yield widget
    widget.shutdown()


def _critical(iface):
    return iface.messageBar().get_messages(Qgis.MessageLevel.Critical)


def _show(canvas, layer, crs, half_size_fraction=0.3):
    """Centre the canvas (in ``crs``) on ``layer``, showing a part of it."""
    canvas.setDestinationCrs(crs)
    extent = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance()).transformBoundingBox(layer.extent())
    c, w, h = extent.center(), extent.width() * half_size_fraction, extent.height() * half_size_fraction
    canvas.setExtent(QgsRectangle(c.x() - w, c.y() - h, c.x() + w, c.y() + h))
    return canvas.mapSettings().visibleExtent()


def _segment(dock, qtbot):
    task = dock.segment()
    assert task is not None
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    return task


def _only_result():
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP)
    layers = [node.layer() for node in group.findLayers()] if group else []
    assert len(layers) == 1, f"expected one result layer, got {layers}"
    return layers[0]


def _legend_order(classes, features):
    """The classes the features hold first, then the others, each group in vocabulary order."""
    present = {f[schema.CLASS] for f in features}
    return [c for c in classes if c.name in present] + [c for c in classes if c.name not in present]


def _assert_result(layer, dock, inside: QgsRectangle, crs: str):
    assert layer.isValid() and layer.crs().authid() == crs
    assert layer.source().split("|")[0].endswith(".gpkg")
    assert {"class", "class_id", "score", "area_m2", "status"} <= set(layer.fields().names())
    features = list(layer.getFeatures())
    assert features, "tiny-random at threshold 0 should give polygons"
    names = [c.name for c in dock.vocabulary()]
    assert {f[schema.CLASS] for f in features} <= set(names)
    assert {f[schema.STATUS] for f in features} == {"new"}
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "class"
    assert [(c.value(), c.symbol().color().name()) for c in renderer.categories()] == [
        (c.name, c.color) for c in _legend_order(dock.vocabulary(), features)
    ]
    tolerance = max(inside.width(), inside.height()) * 0.01
    for feature in features:
        assert inside.buffered(tolerance).contains(feature.geometry().boundingBox())
    assert QgsVectorLayer(layer.source(), "again", "ogr").listStylesInDatabase()[0] == 1


def test_dock_segments_the_visible_extent(dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    visible = _show(qgis_canvas, oem_layer, oem_layer.crs())
    _segment(dock, qtbot)
    assert _critical(qgis_iface) == []
    layer = _only_result()
    _assert_result(layer, dock, visible.intersect(oem_layer.extent()), "EPSG:25832")
    assert layer.source().startswith(str(tmp_path / "results"))
    assert "tiny-random" in dock.status_label.text() or dock.check_backend()


def test_geographic_raster_under_a_web_mercator_canvas(dock, oem_raster, qgis_canvas, qgis_iface, qtbot, tmp_path):
    path = tmp_path / "oem_4326.tif"
    gdal.Warp(str(path), str(oem_raster), dstSRS="EPSG:4326")
    layer = QgsRasterLayer(str(path), "oem_4326")
    QgsProject.instance().addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    visible = _show(qgis_canvas, layer, QgsCoordinateReferenceSystem("EPSG:3857"))
    _segment(dock, qtbot)
    assert _critical(qgis_iface) == []
    in_4326 = QgsCoordinateTransform(
        QgsCoordinateReferenceSystem("EPSG:3857"), layer.crs(), QgsProject.instance()
    ).transformBoundingBox(visible)
    _assert_result(_only_result(), dock, in_4326.intersect(layer.extent()), "EPSG:4326")


def test_web_layer_goes_as_a_chip(dock, qgis_canvas, qgis_iface, qtbot, tmp_path):
    layer = xyz_layer(tmp_path / "tiles", lambda x, y: (40 + 150 * x, 120, 200 - 150 * y))
    QgsProject.instance().addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    qgis_canvas.setDestinationCrs(layer.crs())
    qgis_canvas.setExtent(QgsRectangle(-2e5, -1e5, 2e5, 1e5))
    # the chip's own resolution (~1 km/px): random weights give classes there, not only background
    dock.resolution_spin.setValue(1000.0)
    _segment(dock, qtbot)
    assert _critical(qgis_iface) == []
    _assert_result(_only_result(), dock, qgis_canvas.mapSettings().visibleExtent(), "EPSG:3857")


def test_cancel_mid_job(dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    _show(qgis_canvas, oem_layer, oem_layer.crs(), 0.5)
    dock.resolution_spin.setValue(0.23)  # a few seconds of work, and not in the backend's feature cache
    task = dock.segment()
    qtbot.waitUntil(lambda: task.job_id is not None, timeout=TIMEOUT_MS)
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    assert dock.stage_label.text() == "Cancelled"
    client = dock.settings.client()
    # DELETE answers "cancelled" at once; the job itself stops at its next window
    qtbot.waitUntil(lambda: client.status(task.job_id).finished, timeout=TIMEOUT_MS)
    assert client.status(task.job_id).state == "cancelled"
    assert QgsProject.instance().layerTreeRoot().findGroup(GROUP) is None
    results = tmp_path / "results"
    assert not results.exists() or list(results.iterdir()) == []


def test_processing_segment(use_real_backend, oem_layer, qgis_processing, tmp_path):
    import processing
    from qgis.core import QgsApplication

    from rsov_qgis.processing_provider import RsovProvider

    provider = RsovProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    try:
        e = oem_layer.extent()
        box = QgsRectangle(e.xMinimum() + 50, e.yMinimum() + 50, e.xMinimum() + 350, e.yMinimum() + 250)
        result = processing.run(
            "rsov:segment",
            {
                "INPUT": oem_layer,
                "CLASSES": "building,roof,house; tree,forest; water,river",
                "THRESHOLD": 0.0,
                "EXTENT": f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:25832]",
                "OUTPUT": str(tmp_path / "out.gpkg"),
            },
        )
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    features = list(layer.getFeatures())
    assert layer.crs().authid() == "EPSG:25832" and features
    assert {f["class"] for f in features} <= {"building", "tree", "water"}
    assert {f["status"] for f in features} == {"new"}
    for feature in features:
        assert box.buffered(1.0).contains(feature.geometry().boundingBox())


def _dock_starting_its_backend(iface, qtbot, tmp_path, monkeypatch) -> RsovDock:
    """A dock whose Start backend runs the real `rsov serve --model tiny-random`, at a free port with
    its cache in ``tmp_path``."""
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RSOV_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    dock = RsovDock(iface)
    qtbot.addWidget(dock)
    dock.executable_widget.setFilePath(str(RSOV))
    dock.models_panel.set_model("tiny-random")
    return dock


def test_start_backend_button_runs_rsov_serve(qgis_iface, qtbot, qgis_new_project, tmp_path, monkeypatch):
    dock = _dock_starting_its_backend(qgis_iface, qtbot, tmp_path, monkeypatch)
    url = dock.settings.backend_url
    dock.start_backend()
    # the time it has taken so far, while it loads (torch alone takes seconds)
    qtbot.waitUntil(
        lambda: re.search(r"loading the model\): \d+ s…", dock.status_label.text()) is not None, timeout=TIMEOUT_MS
    )
    qtbot.waitUntil(
        lambda: "Connected" in dock.status_label.text() or not dock.backend.is_running(), timeout=TIMEOUT_MS
    )
    assert "model tiny-random on CPU" in dock.status_label.text() or "CUDA" in dock.status_label.text()
    assert (tmp_path / "token").exists()
    dock.shutdown()
    with pytest.raises(BackendError, match="No rsov backend answers"):
        BackendClient(url).health()


def _all_messages(iface) -> list[str]:
    return [
        m
        for level in ("Info", "Success", "Warning", "Critical")
        for m in iface.messageBar().get_messages(getattr(Qgis.MessageLevel, level))
    ]


def test_backend_killed_during_a_job_restart_and_retry(
    oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path, monkeypatch
):
    dock = _dock_starting_its_backend(qgis_iface, qtbot, tmp_path, monkeypatch)
    dock.resize(520, 900)
    try:
        dock.set_vocabulary(parse_vocabulary(VOCABULARY))
        dock.threshold_spin.setValue(0.0)
        dock.start_backend()
        qtbot.waitUntil(lambda: "Connected" in dock.status_label.text(), timeout=TIMEOUT_MS)
        visible = _show(qgis_canvas, oem_layer, oem_layer.crs(), 0.5)
        dock.resolution_spin.setValue(0.23)  # a few seconds of work
        task = dock.segment()
        qtbot.waitUntil(lambda: task.job_id is not None, timeout=TIMEOUT_MS)
        before = _all_messages(qgis_iface)
        os.kill(dock.backend.process.processId(), signal.SIGKILL)  # what the kernel's OOM killer does
        qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
        # one message: the status line, with the Restart and retry button beside it
        assert f"{CRASHED} during the job." in dock.status_label.text()
        assert "listening on" not in dock.status_label.text()  # its start-up banner says nothing about why
        assert dock.restart_button.text() == "Restart and retry" and not dock.restart_button.isHidden()
        assert _all_messages(qgis_iface) == before and dock.stage_label.text() == "Failed"
        screenshot = REPO / "docs" / "screenshots" / "crash.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert dock.grab().save(str(screenshot))

        dock.restart_button.click()
        assert dock.restart_button.isHidden()
        qtbot.waitUntil(lambda: dock.stage_label.text().startswith("Done"), timeout=TIMEOUT_MS)
        assert _critical(qgis_iface) == [] and "Connected" in dock.status_label.text()
        layer = _only_result()  # the same job, sent again
        _assert_result(layer, dock, visible.intersect(oem_layer.extent()), "EPSG:25832")
        assert dock.review_panel.results_combo.currentLayer() is layer
    finally:
        dock.shutdown()


def _assert_objects(layer, classes):
    """An instance result: a GeoPackage with numbered objects, drawn as outlines per class."""
    assert layer.source().split("|")[0].endswith(".gpkg")
    assert {"class", "class_id", "score", "area_m2", "instance_id", "status"} <= set(layer.fields().names())
    features = list(layer.getFeatures())
    assert features, "permissive options on tiny-random should give objects"
    assert sorted(f["instance_id"] for f in features) == list(range(1, len(features) + 1))
    assert {f["class"] for f in features} <= {c.name for c in classes}
    looks = [(c.value(), c.symbol().color().name(), c.symbol().color().alpha()) for c in layer.renderer().categories()]
    assert looks == [(c.name, c.color, OUTLINE_FILL_ALPHA) for c in _legend_order(classes, features)]
    assert not layer.labelsEnabled()


def test_dock_instance_mode_with_examples(dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    for key, value in PERMISSIVE.items():
        dock.instance_panel.spins[key].setValue(value)
    dock.instance_panel.prompts_check.setChecked(False)
    drawn = polygon_layer([ROOF])
    QgsProject.instance().addMapLayer(drawn)
    qgis_iface.setActiveLayer(drawn)
    dock.instance_panel.example_class_combo.setCurrentText("building")
    dock.instance_panel.add_selected_examples()
    _show(qgis_canvas, oem_layer, oem_layer.crs(), 0.6)  # the whole raster
    task = _segment(dock, qtbot)
    assert _critical(qgis_iface) == []
    assert [f["properties"]["class"] for f in task.job.to_json()["examples"]["features"]] == ["building"]
    layer = _only_result()
    assert layer.name().startswith("oem_koeln_50 objects ") and layer.crs().authid() == "EPSG:25832"
    _assert_objects(layer, dock.vocabulary())
    # with the backend's summary of its proposals (a backend before the summary gives none)
    count = layer.featureCount()
    assert re.match(
        rf"Done: {count} objects? in {re.escape(layer.name())}( \(\d+ proposals, {count} kept(, .+)?\))?$",
        dock.stage_label.text(),
    ), dock.stage_label.text()


def test_processing_instance_mode_with_examples(use_real_backend, oem_layer, qgis_processing, tmp_path):
    import processing
    from qgis.core import QgsApplication

    from rsov_qgis.processing_provider import RsovProvider

    provider = RsovProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    examples = polygon_layer([ROOF], classes=["tree"])
    try:
        result = processing.runAndLoadResults(
            "rsov:segment",
            {
                "INPUT": oem_layer,
                "CLASSES": "building,roof,house; tree,forest; water,river",
                "THRESHOLD": 0.0,
                "MODE": "instance",
                "EXAMPLES": examples,
                "CLASS_PROMPTS": False,
                **{key.upper(): value for key, value in PERMISSIVE.items()},
                "OUTPUT": str(tmp_path / "objects.gpkg"),
            },
        )
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)
    [layer] = [
        layer for layer in QgsProject.instance().mapLayers().values() if layer.source().startswith(result["OUTPUT"])
    ]
    assert layer.crs().authid() == "EPSG:25832"
    _assert_objects(layer, parse_vocabulary("building, roof, house\ntree, forest\nwater, river"))
    assert {f["status"] for f in layer.getFeatures()} == {"new"}


def test_dock_selected_polygons_and_the_estimate(dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    from rsov_qgis.area import MASK

    field = "POLYGON((346120.3 5647620.3, 346260.1 5647620.3, 346260.1 5647700.8, 346120.3 5647620.3))"
    drawn = polygon_layer([field])
    QgsProject.instance().addMapLayer(drawn)
    dock.area_combo.setCurrentIndex(dock.area_combo.findData(MASK))
    dock.mask_combo.setLayer(drawn)
    _show(qgis_canvas, oem_layer, oem_layer.crs(), 0.1)  # the view does not matter
    dock.refresh_estimate()
    qtbot.waitUntil(lambda: "asking" not in dock.estimate_label.text(), timeout=TIMEOUT_MS)
    # auto: the raster's 0.5 m × 1024/448
    assert re.match(r"Estimate: 1\.14 m/px \(auto\), \d+ × \d+ px, \d+ windows?", dock.estimate_label.text()), (
        dock.estimate_label.text()
    )
    task = _segment(dock, qtbot)
    assert _critical(qgis_iface) == []
    assert task.job.to_json()["mask"]["crs"]["properties"]["name"] == "EPSG:25832"
    layer = _only_result()
    features = list(layer.getFeatures())
    assert features, "tiny-random at threshold 0 should give polygons"
    inside = QgsGeometry.fromWkt(field).buffer(1.5, 4)  # pixels outside the mask get no class
    for feature in features:
        assert inside.contains(feature.geometry()), feature.geometry().boundingBox().toString()
