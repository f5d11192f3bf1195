"""The dock in a real (offscreen) QGIS: widgets, backend status, segmentation through the fake
backend, failure paths, cancel, review, and the plugin's load/unload."""

import re
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsApplication, QgsCategorizedSymbolRenderer, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtGui import QColor

from conftest import REPO
from helpers import free_port, polygon_layer, xyz_layer
from rsov_qgis import classFactory, schema
from rsov_qgis.dock import RsovDock
from rsov_qgis.results import GROUP
from rsov_qgis.settings import Settings
from rsov_qgis.vocabulary import parse_vocabulary

TIMEOUT_MS = 30000
SCREENSHOTS = REPO / "docs" / "screenshots"


def _messages(iface, level):
    return [m.split(":", 1)[1] for m in iface.messageBar().get_messages(getattr(Qgis.MessageLevel, level))]


def _show_central_half(canvas, layer):
    canvas.setDestinationCrs(layer.crs())
    extent = layer.extent()
    c = extent.center()
    canvas.setExtent(QgsRectangle(c.x() - 125, c.y() - 125, c.x() + 125, c.y() + 125))
    return canvas.mapSettings().visibleExtent().intersect(extent)  # the part of the raster on screen


def _run(dock, qtbot):
    task = dock.segment()
    assert task is not None, "the task did not start"
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    return task


def _result_layers():
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP)
    return [node.layer() for node in group.findLayers()] if group else []


# --- widgets ------------------------------------------------------------------------------------
def test_dock_builds_with_sensible_defaults(dock, oem_layer, qgis_iface):
    assert dock.objectName() == "rsovDock"
    assert [dock.tabs.tabText(i) for i in range(dock.tabs.count())] == ["Segment", "Review", "Backend"]
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "water"]
    assert dock.threshold_spin.value() == pytest.approx(0.3)
    assert dock.resolution_spin.value() == 0 and dock.resolution_spin.text().startswith("auto")
    assert dock.mode_combo.currentData() == "semantic"
    assert dock.raster_combo.currentLayer() is oem_layer
    other = QgsRasterLayer(oem_layer.source(), "other")
    QgsProject.instance().addMapLayer(other)
    dock._select_active_raster(other)  # what QGIS's currentLayerChanged does
    assert dock.raster_combo.currentLayer() is other
    assert not dock.cancel_button.isEnabled() and dock.segment_button.isEnabled()


def test_vocabulary_editor(dock, tmp_path, qtbot):
    dock.add_class("swimming pool, pool")
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "water", "swimming pool"]
    assert dock.vocabulary()[-1].color not in {c.color for c in dock.vocabulary()[:-1]}
    dock.vocab_table.setCurrentCell(3, 1)
    dock.move_class(-1)
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "swimming pool", "water"]
    assert dock.vocab_table.currentRow() == 2
    dock.remove_class()
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "water"]
    dock.vocab_table.item(0, 1).setText("house, roof , building")  # typed by the user
    assert dock.vocabulary()[0].synonyms == ["house", "roof", "building"]
    dock.vocab_table.cellWidget(0, 0).setColor(QColor("#123456"))
    assert dock.vocabulary()[0].color == "#123456"
    # remembered across sessions
    assert [c.synonyms for c in parse_vocabulary(Settings.load().vocabulary)] == [c.synonyms for c in dock.vocabulary()]
    # files
    path = tmp_path / "vocab.txt"
    dock.save_vocabulary(path)
    dock.set_vocabulary([])
    dock.load_vocabulary(path)
    assert dock.vocabulary()[0].synonyms == ["house", "roof", "building"] and dock.vocabulary()[0].color == "#123456"


def test_presets_combo(dock):
    index = dock.preset_combo.findText("Land cover (OpenEarthMap)")
    assert index > 0
    dock.preset_combo.activated.emit(index)
    assert len(dock.vocabulary()) == 8 and dock.vocabulary()[-1].color == "#de1f07"
    assert dock.preset_combo.currentIndex() == 0


def test_backend_status_line(fake_backend, dock, tmp_path, monkeypatch):
    assert dock.check_backend()
    assert "Connected: rsov 0.1.0, model fake-model on CPU" in dock.status_label.text()
    fake_backend.token_file.write_text("stale")
    assert not dock.check_backend()
    assert "refused the token" in dock.status_label.text()
    fake_backend.stop()
    assert not dock.check_backend()
    assert "No rsov backend answers" in dock.status_label.text()


def test_a_backend_of_another_api_version_is_refused(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot,
                                                     tmp_path):
    sentence = "This backend speaks API v0, the plugin needs v1: reinstall the backend"
    fake_backend.api_version = 0
    assert not dock.check_backend()
    assert f"{sentence} (found rsov 0.1.0, model fake-model on CPU)." in dock.status_label.text()
    assert not dock.install_offer.isHidden()
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == [sentence + "."] and fake_backend.requests == []  # nothing sent
    _assert_nothing_written(tmp_path)
    dock.install_offer.click()
    assert dock.tabs.currentWidget() is dock.backend_page and not dock.install_panel.isHidden()
    fake_backend.api_version = 1
    assert dock.check_backend() and dock.install_offer.isHidden()


def test_no_backend_installed_offers_the_installer(dock, qgis_iface, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no rsov anywhere
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    dock.settings = Settings.load()
    assert not dock.check_backend() and not dock.install_offer.isHidden()
    dock.start_backend()
    [message] = _messages(qgis_iface, "Critical")
    assert "not installed" in message and "Install backend…" in message and not dock.install_offer.isHidden()


def test_environment_sets_and_locks_backend_fields(fake_backend, dock):
    assert dock.url_edit.text() == fake_backend.url and not dock.url_edit.isEnabled()
    assert "RSOV_BACKEND_URL" in dock.url_edit.toolTip()


# --- segmentation -------------------------------------------------------------------------------
def test_segment_visible_extent(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    visible = _show_central_half(qgis_canvas, oem_layer)
    dock.threshold_spin.setValue(0.45)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == []
    sent = fake_backend.requests[0]["json"]
    # compare files, not spellings (the data folder may be reached through a link)
    assert Path(sent["raster"]).resolve() == Path(QgsProject.instance().mapLayer(oem_layer.id()).source()).resolve()
    assert sent["bbox_crs"] == "EPSG:25832" and sent["classes"] == ["building,roof,house", "tree,forest", "water,river"]
    assert sent["options"] == {"threshold": 0.45} and sent["mode"] == "semantic"
    assert QgsRectangle(*sent["bbox"]).contains(visible)
    [layer] = _result_layers()
    assert layer.name().startswith("oem_koeln_50 ") and layer.featureCount() == 3
    assert {f[schema.CLASS] for f in layer.getFeatures()} == {"building", "tree", "water"}
    assert {f[schema.STATUS] for f in layer.getFeatures()} == {"new"}
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert [(c.value(), c.symbol().color().name()) for c in renderer.categories()] == [
        (c.name, c.color) for c in dock.vocabulary()]
    for feature in layer.getFeatures():
        assert visible.buffered(1.0).contains(feature.geometry().boundingBox())
    assert layer.source().startswith(str(tmp_path / "results"))
    assert dock.results_combo.currentLayer() is layer
    assert any("3 polygons saved" in m for m in _messages(qgis_iface, "Success"))
    assert dock.progress.value() == 100 and dock.stage_label.text().startswith("Done: 3 polygons")


def test_web_layer_is_sent_as_multipart_chip(fake_backend, dock, qgis_canvas, qgis_iface, qtbot, tmp_path):
    layer = xyz_layer(tmp_path / "tiles", lambda x, y: (30, 160, 60))
    QgsProject.instance().addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    qgis_canvas.setDestinationCrs(layer.crs())
    qgis_canvas.setExtent(QgsRectangle(-1e6, 5e6, 1e6, 6e6))
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == []
    sent = fake_backend.requests[0]
    assert sent["chip"][:4] in (b"II*\x00", b"MM\x00*") and "raster" not in sent["json"]
    assert sent["json"]["bbox_crs"] == "EPSG:3857"
    assert _result_layers()[0].featureCount() == 3


def _assert_nothing_written(tmp_path):
    assert _result_layers() == [] and QgsProject.instance().layerTreeRoot().findGroup(GROUP) is None
    results = tmp_path / "results"
    assert not results.exists() or list(results.iterdir()) == []


def test_backend_down_shows_a_message_and_writes_nothing(dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    dock.settings = Settings.load()
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [message] = _messages(qgis_iface, "Critical")
    assert "No rsov backend answers" in message and "Start backend" in message
    _assert_nothing_written(tmp_path)
    assert dock.segment_button.isEnabled() and dock.stage_label.text() == "Failed"


def test_wrong_token_shows_a_message_and_writes_nothing(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    fake_backend.token_file.write_text("not-the-token")
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [message] = _messages(qgis_iface, "Critical")
    assert "refused the token" in message
    _assert_nothing_written(tmp_path)


def test_failed_job_shows_the_backend_error(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    fake_backend.fail_with = "CUDA out of memory: use a smaller extent."
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == ["CUDA out of memory: use a smaller extent."]
    _assert_nothing_written(tmp_path)


def test_cancel_mid_job(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path):
    fake_backend.hold = True
    _show_central_half(qgis_canvas, oem_layer)
    dock.segment()
    assert dock.cancel_button.isEnabled() and not dock.segment_button.isEnabled()
    qtbot.waitUntil(lambda: any(job.polls >= 2 for job in fake_backend.jobs.values()), timeout=TIMEOUT_MS)
    # the backend's stage as it reads, with the time left (the poll's answer reaches the label a
    # moment after the fake counts it)
    qtbot.waitUntil(lambda: re.fullmatch(r"segmenting block [23]/3 — about 40 s left", dock.stage_label.text())
                    is not None, timeout=TIMEOUT_MS)
    assert dock.progress.value() > 0
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    assert [job.state for job in fake_backend.jobs.values()] == ["cancelled"]
    assert dock.stage_label.text() == "Cancelled" and _messages(qgis_iface, "Critical") == []
    _assert_nothing_written(tmp_path)


def test_backend_crash_mid_job_shows_a_message_and_writes_nothing(fake_backend, dock, oem_layer, qgis_canvas,
                                                                  qgis_iface, qtbot, tmp_path):
    fake_backend.hold = True
    _show_central_half(qgis_canvas, oem_layer)
    dock.segment()
    qtbot.waitUntil(lambda: any(job.polls >= 2 for job in fake_backend.jobs.values()), timeout=TIMEOUT_MS)
    fake_backend.stop()  # the backend process dies while the job runs
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    [message] = _messages(qgis_iface, "Critical")
    assert "backend" in message.lower()
    assert dock.stage_label.text() == "Failed" and dock.segment_button.isEnabled()
    _assert_nothing_written(tmp_path)


def test_user_errors_are_warnings(dock, oem_layer, qgis_canvas, qgis_iface):
    qgis_canvas.setDestinationCrs(oem_layer.crs())
    qgis_canvas.setExtent(QgsRectangle(0, 0, 100, 100))
    assert dock.segment() is None
    dock.set_vocabulary([])
    _show_central_half(qgis_canvas, oem_layer)
    assert dock.segment() is None
    dock.raster_combo.setLayer(None)
    assert dock.segment() is None
    warnings = _messages(qgis_iface, "Warning")
    assert "does not overlap the raster oem_koeln_50" in warnings[0]
    assert "vocabulary is empty" in warnings[1] and "Choose a raster layer" in warnings[2]


# --- review through the dock ------------------------------------------------------------------------
def test_review_tools(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [layer] = _result_layers()
    assert [dock.relabel_combo.itemText(i) for i in range(dock.relabel_combo.count())] == ["building", "tree", "water"]
    ids = sorted(f.id() for f in layer.getFeatures())
    dock.next_action.trigger()
    assert layer.selectedFeatureIds() == [ids[0]]
    dock.accept_action.trigger()  # accepts and moves on
    assert layer.selectedFeatureIds() == [ids[1]]
    dock.reject_action.trigger()
    assert {f.id(): f[schema.STATUS] for f in layer.getFeatures()} == {ids[0]: "accepted", ids[1]: "rejected", ids[2]: "new"}
    assert dock.review_summary.text().startswith("1 new, 1 accepted, 1 rejected")
    layer.selectByIds([ids[2]])
    dock.relabel_combo.setCurrentIndex(0)
    dock.relabel_selected()
    assert layer.getFeature(ids[2])[schema.CLASS] == "building" and layer.getFeature(ids[2])[schema.CLASS_ID] == 1
    dock.score_slider.setValue(50)  # scores are 0.3, 0.6, 0.9
    assert layer.featureCount() == 2 and dock.score_label.text() == "≥ 0.50"
    target = QgsVectorLayer("MultiPolygon?crs=EPSG:25832&field=class:string", "reviewed", "memory")
    QgsProject.instance().addMapLayer(target)
    dock.target_combo.setLayer(target)
    dock.merge_accepted()
    assert [f["class"] for f in target.getFeatures()] == ["building"]
    assert any("1 accepted features added to reviewed" in m for m in _messages(qgis_iface, "Success"))
    assert [a.shortcut().toString() for a in (dock.accept_action, dock.reject_action, dock.next_action)] == [
        "Alt+Shift+A", "Alt+Shift+R", "Alt+Shift+N"]


def test_review_without_selection_warns(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    dock.accept_action.trigger()
    assert any("Select features" in m for m in _messages(qgis_iface, "Warning"))


# --- the plugin object ----------------------------------------------------------------------------
def test_plugin_load_and_unload(qgis_iface, qgis_app):
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("rsov") is not None and registry.algorithmById("rsov:segment") is not None
    assert plugin.dock.objectName() == "rsovDock" and plugin.action.isCheckable()
    plugin.action.setChecked(False)
    assert not plugin.dock.isVisible()
    plugin.unload()
    assert registry.providerById("rsov") is None and plugin.dock is None


# --- instance mode --------------------------------------------------------------------------------
def test_instance_mode_sends_its_options_and_the_examples_of_its_classes(
        fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    assert not dock.instance_panel.isVisibleTo(dock)  # semantic by default
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    assert dock.instance_panel.isVisibleTo(dock)
    dock.instance_panel.spins["points_per_side"].setValue(8)
    dock.instance_panel.prompts_check.setChecked(False)
    drawn = polygon_layer(["POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))",  # off the raster
                           "POLYGON((346100 5647600, 346120 5647600, 346120 5647620, 346100 5647600))"],
                          crs="EPSG:25832")
    QgsProject.instance().addMapLayer(drawn)
    qgis_iface.setActiveLayer(drawn)
    for name in ("building", "water"):
        dock.instance_panel.example_class_combo.setCurrentText(name)
        dock.instance_panel.add_selected_examples()
    dock.set_vocabulary([c for c in dock.vocabulary() if c.name != "water"])  # its examples must stay home
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == []
    sent = fake_backend.requests[0]["json"]
    assert sent["mode"] == "instance" and sent["classes"] == ["building,roof,house", "tree,forest"]
    assert sent["options"] == {"threshold": 0.3, "object_threshold": 0.3, "points_per_side": 8, "pred_iou": 0.8,
                               "stability": 0.9, "class_prompts": False, "points_per_batch": 64}
    assert sent["examples"]["crs"] == {"type": "name", "properties": {"name": "EPSG:25832"}}
    assert [f["properties"]["class"] for f in sent["examples"]["features"]] == ["building"]
    assert sent["examples"]["features"][0]["geometry"]["coordinates"][0][0] == pytest.approx([346100, 5647600])
    [layer] = _result_layers()
    assert layer.name().startswith("oem_koeln_50 objects ") and "_objects_" in layer.source()
    assert schema.INSTANCE_ID in layer.fields().names() and layer.featureCount() == 2
    assert dock.stage_label.text() == (f"Done: 2 objects in {layer.name()} "  # with the backend's summary
                                       "(3 proposals, 2 kept, 0 below the object threshold 0.30, 1 background)")
    looks = [(c.value(), c.symbol().color().alpha(), c.symbol().symbolLayer(0).strokeColor().name())
             for c in layer.renderer().categories()]
    assert looks == [("building", 40, "#e31a1c"), ("tree", 40, "#33a02c")]  # outlines in the class colours, light fill
    assert layer.labeling() is not None and not layer.labelsEnabled()
    # the review tools work on objects too
    ids = sorted(f.id() for f in layer.getFeatures())
    dock.next_action.trigger()
    dock.accept_action.trigger()
    assert layer.getFeature(ids[0])[schema.STATUS] == "accepted" and layer.selectedFeatureIds() == [ids[1]]
    dock.relabel_combo.setCurrentText("building")
    dock.relabel_selected()
    assert layer.getFeature(ids[1])[schema.CLASS] == "building"
    # remembered
    settings = Settings.load()
    assert settings.mode == "instance" and settings.points_per_side == 8 and settings.class_prompts is False


def test_an_instance_job_without_objects_says_why(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    dock.resize(520, 1000)  # room for the instance options
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    dock.instance_panel.spins["object_threshold"].setValue(0.95)  # over every score of the fake's objects
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [layer] = _result_layers()
    summary = "4 proposals, 0 kept, 3 below the object threshold 0.95, 1 background"
    assert layer.featureCount() == 0 and dock.stage_label.text() == f"Done: 0 objects in {layer.name()} ({summary})"
    assert _messages(qgis_iface, "Warning") == [
        f"No objects: {summary}. Lower the object threshold or check the vocabulary."]
    assert _messages(qgis_iface, "Success") == [] and _messages(qgis_iface, "Critical") == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert dock.grab().save(str(SCREENSHOTS / "no_objects.png"))


def test_refine_with_sam_regions_is_sent_remembered_and_semantic_only(fake_backend, dock, oem_layer, qgis_canvas,
                                                                      qgis_iface, qtbot):
    assert dock.refine_check.isVisibleTo(dock) and not dock.refine_check.isChecked()
    assert "1024 px tile" in dock.refine_check.toolTip()
    dock.refine_check.setChecked(True)
    assert Settings.load().refine is True
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    assert fake_backend.requests[0]["json"]["options"] == {"threshold": 0.3, "refine": "sam"}
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    assert not dock.refine_check.isVisibleTo(dock)  # instance mode has no refine
    _run(dock, qtbot)
    assert "refine" not in fake_backend.requests[1]["json"]["options"]
    assert _messages(qgis_iface, "Critical") == []
    again = RsovDock(qgis_iface)  # the next session
    qtbot.addWidget(again)
    try:
        assert again.refine_check.isChecked() and not again.refine_check.isVisibleTo(again)
    finally:
        again.shutdown()


def test_the_stage_line_tells_the_time_left(fake_backend, dock, oem_layer, qgis_canvas, qtbot):
    dock.resize(520, 900)
    dock.refine_check.setChecked(True)  # to be seen in the picture
    fake_backend.hold, fake_backend.seconds_per_poll = True, 150.0
    _show_central_half(qgis_canvas, oem_layer)
    dock.segment()
    qtbot.waitUntil(lambda: dock.stage_label.text() == "segmenting block 3/3 — about 3 min left", timeout=TIMEOUT_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert dock.grab().save(str(SCREENSHOTS / "progress.png"))
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
