"""The dock in a real (offscreen) QGIS: widgets, backend status, segmentation through the fake
backend, failure paths, cancel, review, and the plugin's load/unload."""

import re
from pathlib import Path

import pytest
from conftest import REPO
from helpers import free_port, polygon_layer, xyz_layer
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QApplication, QLineEdit

from rsov_qgis import classFactory, schema
from rsov_qgis.backend_client import ModelInfo
from rsov_qgis.dock import NO_BACKEND, RsovDock
from rsov_qgis.palette import class_colour
from rsov_qgis.results import GROUP
from rsov_qgis.settings import Settings
from rsov_qgis.vocabulary import parse_classes_string, parse_vocabulary

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


def _screenshot(dock, qtbot, name: str) -> None:
    """docs/screenshots/NAME: the dock as the analyst sees it (shown, so its scroll bars are settled)."""
    dock.show()
    qtbot.waitExposed(dock)
    QApplication.processEvents()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert dock.grab().save(str(SCREENSHOTS / name))


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
    editor = dock.vocabulary_editor
    editor.add_class("swimming pool, pool")
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "water", "swimming pool"]
    assert dock.vocabulary()[-1].color not in {c.color for c in dock.vocabulary()[:-1]}
    editor.table.setCurrentCell(3, 1)
    editor.move_class(-1)
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "swimming pool", "water"]
    assert editor.table.currentRow() == 2
    editor.remove_class()
    assert [c.name for c in dock.vocabulary()] == ["building", "tree", "water"]
    editor.table.item(0, 1).setText("house, roof , building")  # typed by the user
    assert dock.vocabulary()[0].synonyms == ["house", "roof", "building"]
    editor.table.cellWidget(0, 0).setColor(QColor("#123456"))
    assert dock.vocabulary()[0].color == "#123456"
    # remembered across sessions
    assert [c.synonyms for c in parse_vocabulary(Settings.load().vocabulary)] == [c.synonyms for c in dock.vocabulary()]
    # files
    path = tmp_path / "vocab.txt"
    editor.save(path)
    dock.set_vocabulary([])
    editor.load(path)
    assert dock.vocabulary()[0].synonyms == ["house", "roof", "building"] and dock.vocabulary()[0].color == "#123456"


def test_presets_combo(dock):
    combo = dock.vocabulary_editor.preset_combo
    index = combo.findText("Land cover (OpenEarthMap)")
    assert index > 0
    combo.activated.emit(index)
    assert len(dock.vocabulary()) == 8 and dock.vocabulary()[-1].color == "#de1f07"
    assert combo.currentIndex() == 0


def _names(dock):
    return [c.synonyms for c in dock.vocabulary()]


def _row_colours(editor):
    return [editor.table.cellWidget(row, 0).color().name() for row in range(editor.table.rowCount())]


def test_classes_typed_into_one_row_become_rows(dock, qtbot):
    editor = dock.vocabulary_editor
    dock.set_vocabulary(parse_vocabulary("building, roof"))
    editor.add_class()  # a new row, its cell editor open
    cell = editor.table.findChild(QLineEdit)
    qtbot.keyClicks(cell, "a,b; c; d")
    qtbot.keyClick(cell, Qt.Key.Key_Return)  # the cell's text is committed once the event loop runs
    qtbot.waitUntil(lambda: len(dock.vocabulary()) > 1)
    assert _names(dock) == [["building", "roof"], ["a", "b"], ["c"], ["d"]]
    assert [c.color for c in dock.vocabulary()] == [c.color for c in parse_classes_string("building,roof; a,b; c; d")]
    assert _row_colours(editor) == [c.color for c in dock.vocabulary()]
    assert [c.synonyms for c in parse_vocabulary(Settings.load().vocabulary)] == _names(dock)  # remembered


def test_classes_pasted_into_the_table_fill_rows(dock, qtbot):
    editor = dock.vocabulary_editor
    dock.set_vocabulary([])
    QApplication.clipboard().setText("a,b; c; d")
    editor.table.setFocus()
    qtbot.keyClick(editor.table, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert _names(dock) == [["a", "b"], ["c"], ["d"]]
    editor.table.setCurrentCell(1, 1)
    editor.paste("grass\ntree, forest\n\nwater, river, lake  # #0000ff\n")  # a list, one class per line
    assert _names(dock) == [["a", "b"], ["c"], ["grass"], ["tree", "forest"], ["water", "river", "lake"], ["d"]]
    assert editor.table.currentRow() == 4 and dock.vocabulary()[4].color == "#0000ff"
    assert _row_colours(editor) == [class_colour(k) for k in (1, 2, 3, 4)] + ["#0000ff", class_colour(6)]
    dock.resize(520, 900)
    _screenshot(dock, qtbot, "vocabulary_pasted.png")


def test_row_colours_are_the_palette_of_processing_unless_chosen(dock):
    editor = dock.vocabulary_editor
    text = "; ".join(f"class {k}" for k in range(1, 13))
    dock.set_vocabulary([])
    editor.paste(text)
    colours = [c.color for c in dock.vocabulary()]
    assert colours == [c.color for c in parse_classes_string(text)] == [class_colour(k) for k in range(1, 13)]
    assert len(set(colours)) == 12 and _row_colours(editor) == colours
    dock.set_vocabulary([])
    for _ in range(3):
        editor.add_class()  # rows added before anything is typed into them
    assert len(set(_row_colours(editor))) == 3
    dock.set_vocabulary(parse_classes_string("a; b; c"))
    editor.table.cellWidget(1, 0).setColor(QColor("#123456"))  # chosen by the analyst
    editor.table.setCurrentCell(1, 1)
    editor.move_class(-1)
    assert [(c.name, c.color) for c in dock.vocabulary()] == [
        ("b", "#123456"),
        ("a", class_colour(2)),
        ("c", class_colour(3)),
    ]
    assert parse_vocabulary(Settings.load().vocabulary)[0].color == "#123456"  # remembered as chosen
    editor.table.cellWidget(0, 0).setToDefaultColor()  # the button's "default colour": the palette's again
    assert dock.vocabulary()[0].color == class_colour(1)


def test_segment_waits_for_a_backend_and_a_ready_one_clears_the_failure(fake_backend, dock, monkeypatch):
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    dock.settings = Settings.load()
    assert not dock.check_backend()
    assert not dock.segment_button.isEnabled() and dock.segment_button.toolTip() == NO_BACKEND
    dock.stage_label.setText("Failed")  # what the last job left
    monkeypatch.setenv("RSOV_BACKEND_URL", fake_backend.url)
    dock.settings = Settings.load()
    assert dock.check_backend()
    assert dock.segment_button.isEnabled() and dock.stage_label.text() == "Idle"
    assert dock.segment_button.toolTip() == "Segment what the map shows of the chosen raster"
    # the backend the plugin started dies, and is started again
    dock.backend.stopped.emit("Killed")
    assert not dock.segment_button.isEnabled() and dock.segment_button.toolTip() == NO_BACKEND
    dock.stage_label.setText("Failed")
    dock.backend.ready.emit(dock.settings.client().health())
    assert dock.segment_button.isEnabled() and dock.stage_label.text() == "Idle"


def test_instance_mode_keeps_five_vocabulary_rows_and_the_status_in_view(dock, qtbot, monkeypatch):
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    dock.settings = Settings.load()
    dock.check_backend()  # a long status line
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    dock.show()
    qtbot.waitExposed(dock)
    QApplication.processEvents()
    table, status = dock.vocabulary_editor.table, dock.status_label
    assert table.viewport().height() >= 5 * table.verticalHeader().defaultSectionSize()  # the panel scrolls instead
    assert dock.tabs.widget(0).verticalScrollBar().maximum() > 0
    assert status.height() >= status.heightForWidth(status.width())  # wrapped, every line shown
    dock.tabs.widget(0).verticalScrollBar().setValue(dock.vocabulary_editor.y() - 30)  # scrolled to the vocabulary
    _screenshot(dock, qtbot, "vocabulary_instance.png")


def test_backend_status_line(fake_backend, dock, tmp_path, monkeypatch):
    assert dock.check_backend()
    assert "Connected: rsov 0.1.0, model fake-model on CPU" in dock.status_label.text()
    fake_backend.token_file.write_text("stale")
    assert not dock.check_backend()
    assert "refused the token" in dock.status_label.text()
    fake_backend.stop()
    assert not dock.check_backend()
    assert "No rsov backend answers" in dock.status_label.text()


def test_a_backend_of_another_api_version_is_refused(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path
):
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
        (c.name, c.color) for c in dock.vocabulary()
    ]
    for feature in layer.getFeatures():
        assert visible.buffered(1.0).contains(feature.geometry().boundingBox())
    assert layer.source().startswith(str(tmp_path / "results"))
    assert dock.review_panel.results_combo.currentLayer() is layer
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


def test_backend_down_shows_a_message_and_writes_nothing(
    dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path, monkeypatch
):
    monkeypatch.setenv("RSOV_BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    dock.settings = Settings.load()
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [message] = _messages(qgis_iface, "Critical")
    assert "No rsov backend answers" in message and "Start backend" in message
    _assert_nothing_written(tmp_path)
    assert not dock.segment_button.isEnabled() and dock.segment_button.toolTip() == NO_BACKEND  # until one answers
    assert dock.stage_label.text() == "Failed"


def test_wrong_token_shows_a_message_and_writes_nothing(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path
):
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
    qtbot.waitUntil(
        lambda: re.fullmatch(r"segmenting block [23]/3 — about 40 s left", dock.stage_label.text()) is not None,
        timeout=TIMEOUT_MS,
    )
    assert dock.progress.value() > 0
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    assert [job.state for job in fake_backend.jobs.values()] == ["cancelled"]
    assert dock.stage_label.text() == "Cancelled" and _messages(qgis_iface, "Critical") == []
    _assert_nothing_written(tmp_path)


def test_backend_crash_mid_job_shows_a_message_and_writes_nothing(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot, tmp_path
):
    fake_backend.hold = True
    _show_central_half(qgis_canvas, oem_layer)
    dock.segment()
    qtbot.waitUntil(lambda: any(job.polls >= 2 for job in fake_backend.jobs.values()), timeout=TIMEOUT_MS)
    fake_backend.stop()  # the backend process dies while the job runs
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    [message] = _messages(qgis_iface, "Critical")
    assert "backend" in message.lower()
    assert dock.stage_label.text() == "Failed" and not dock.segment_button.isEnabled()  # until one answers
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
    panel = dock.review_panel
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [layer] = _result_layers()
    assert [panel.relabel_combo.itemText(i) for i in range(panel.relabel_combo.count())] == [
        "building",
        "tree",
        "water",
    ]
    ids = sorted(f.id() for f in layer.getFeatures())
    panel.next_action.trigger()
    assert layer.selectedFeatureIds() == [ids[0]]
    panel.accept_action.trigger()  # accepts and moves on
    assert layer.selectedFeatureIds() == [ids[1]]
    panel.reject_action.trigger()
    assert {f.id(): f[schema.STATUS] for f in layer.getFeatures()} == {
        ids[0]: "accepted",
        ids[1]: "rejected",
        ids[2]: "new",
    }
    qtbot.waitUntil(lambda: panel.review_summary.text() == "1 new, 1 accepted, 1 rejected (all shown; not saved yet)")
    assert panel.save_button.isEnabled() and panel.undo_button.isEnabled() and not panel.redo_button.isEnabled()
    panel.undo()  # the reject
    qtbot.waitUntil(lambda: panel.review_summary.text().startswith("2 new, 1 accepted, 0 rejected"))
    assert panel.redo_button.isEnabled()
    panel.redo()
    layer.selectByIds([ids[2]])
    panel.relabel_combo.setCurrentIndex(0)
    panel.relabel_selected()
    assert layer.getFeature(ids[2])[schema.CLASS] == "building" and layer.getFeature(ids[2])[schema.CLASS_ID] == 1
    panel.score_slider.setValue(50)  # scores are 0.3, 0.6, 0.9; refused while the review is not saved
    assert layer.featureCount() == 3 and panel.score_slider.value() == 0 and panel.score_label.text() == "all"
    assert "Save the review" in _messages(qgis_iface, "Warning")[-1]
    panel.save_review()
    qtbot.waitUntil(lambda: panel.review_summary.text() == "1 new, 1 accepted, 1 rejected (all shown)")
    assert not layer.isEditable() and not panel.save_button.isEnabled()
    panel.score_slider.setValue(50)
    assert layer.featureCount() == 2 and panel.score_label.text() == "≥ 0.50"
    target = QgsVectorLayer("MultiPolygon?crs=EPSG:25832&field=class:string", "reviewed", "memory")
    QgsProject.instance().addMapLayer(target)
    panel.target_combo.setLayer(target)
    panel.merge_accepted()
    panel.merge_accepted()  # again: nothing twice
    assert [f["class"] for f in target.getFeatures()] == ["building"]
    assert [m for m in _messages(qgis_iface, "Success") + _messages(qgis_iface, "Info") if "merged" in m] == [
        f"Accepted features of {layer.name()}: 1 added to reviewed, 0 already merged.",
        f"Accepted features of {layer.name()}: 0 added to reviewed, 1 already merged.",
    ]
    assert [a.shortcut().toString() for a in panel.shortcut_actions] == ["Alt+Shift+A", "Alt+Shift+R", "Alt+Shift+N"]
    assert set(panel.shortcut_actions) <= set(dock.actions())  # on the dock: they work whichever tab shows


def test_review_without_selection_warns(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    dock.review_panel.accept_action.trigger()
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
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot
):
    assert not dock.instance_panel.isVisibleTo(dock)  # semantic by default
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    assert dock.instance_panel.isVisibleTo(dock)
    dock.instance_panel.spins["points_per_side"].setValue(8)
    dock.instance_panel.prompts_check.setChecked(False)
    drawn = polygon_layer(
        [
            "POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))",  # off the raster
            "POLYGON((346100 5647600, 346120 5647600, 346120 5647620, 346100 5647600))",
        ],
        crs="EPSG:25832",
    )
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
    assert sent["options"] == {
        "threshold": 0.3,
        "object_threshold": 0.3,
        "points_per_side": 8,
        "pred_iou": 0.8,
        "stability": 0.9,
        "class_prompts": False,
        "points_per_batch": 64,
    }
    assert sent["examples"]["crs"] == {"type": "name", "properties": {"name": "EPSG:25832"}}
    assert [f["properties"]["class"] for f in sent["examples"]["features"]] == ["building"]
    assert sent["examples"]["features"][0]["geometry"]["coordinates"][0][0] == pytest.approx([346100, 5647600])
    [layer] = _result_layers()
    assert layer.name().startswith("oem_koeln_50 objects ") and "_objects_" in layer.source()
    assert schema.INSTANCE_ID in layer.fields().names() and layer.featureCount() == 2
    assert dock.stage_label.text() == (
        f"Done: 2 objects in {layer.name()} "  # with the backend's summary
        "(3 proposals, 2 kept, 0 below the object threshold 0.30, 1 background)"
    )
    looks = [
        (c.value(), c.symbol().color().alpha(), c.symbol().symbolLayer(0).strokeColor().name())
        for c in layer.renderer().categories()
    ]
    assert looks == [("building", 40, class_colour(1)), ("tree", 40, class_colour(2))]  # outlines in the class colours
    assert layer.labeling() is not None and not layer.labelsEnabled()
    # the review tools work on objects too
    ids = sorted(f.id() for f in layer.getFeatures())
    dock.review_panel.next_action.trigger()
    dock.review_panel.accept_action.trigger()
    assert layer.getFeature(ids[0])[schema.STATUS] == "accepted" and layer.selectedFeatureIds() == [ids[1]]
    dock.review_panel.relabel_combo.setCurrentText("building")
    dock.review_panel.relabel_selected()
    assert layer.getFeature(ids[1])[schema.CLASS] == "building"
    # remembered
    settings = Settings.load()
    assert settings.mode == "instance" and settings.points_per_side == 8 and settings.class_prompts is False


def test_an_instance_job_without_objects_says_why(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    dock.resize(520, 1060)  # room for the instance options and the vocabulary
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    dock.instance_panel.spins["object_threshold"].setValue(0.95)  # over every score of the fake's objects
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    [layer] = _result_layers()
    summary = "4 proposals, 0 kept, 3 below the object threshold 0.95, 1 background"
    assert layer.featureCount() == 0 and dock.stage_label.text() == f"Done: 0 objects in {layer.name()} ({summary})"
    assert _messages(qgis_iface, "Warning") == [
        f"No objects: {summary}. Lower the object threshold or check the vocabulary."
    ]
    assert _messages(qgis_iface, "Success") == [] and _messages(qgis_iface, "Critical") == []
    _screenshot(dock, qtbot, "no_objects.png")


def test_refine_with_sam_regions_is_sent_remembered_and_semantic_only(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot
):
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
    _screenshot(dock, qtbot, "progress.png")
    dock.cancel()
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)


# --- the engine -----------------------------------------------------------------------------------
def test_the_engine_is_sent_remembered_and_sam3_has_no_sam_refinement(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot
):
    combo = dock.engine_combo
    assert [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count())] == [
        ("clip", "CLIP (training-free, any vocabulary)"),
        ("sam3", "SAM 3 (finds every object of each class)"),
    ]
    assert combo.currentData() == "clip" and combo.isVisibleTo(dock)
    tip = combo.toolTip()
    assert "rsov models --download sam3" in tip and "https://huggingface.co/facebook/sam3" in tip
    assert "grass, water or road" in tip and "CLIP" in tip
    dock.refine_check.setChecked(True)
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    assert fake_backend.requests[0]["json"]["options"] == {"threshold": 0.3, "refine": "sam"}  # CLIP: not sent
    combo.setCurrentIndex(combo.findData("sam3"))
    assert Settings.load().engine == "sam3"
    assert not dock.refine_check.isVisibleTo(dock)  # refining with SAM's regions is the CLIP engine's
    _run(dock, qtbot)
    assert fake_backend.requests[1]["json"]["options"] == {"threshold": 0.3, "engine": "sam3"}
    dock.resize(520, 900)
    dock.tabs.setCurrentWidget(dock.tabs.widget(0))
    _screenshot(dock, qtbot, "engine_sam3.png")
    # instance mode: SAM 3 finds its objects from the class names, not from Segment Anything's point grid
    dock.mode_combo.setCurrentIndex(dock.mode_combo.findData("instance"))
    spins = dock.instance_panel.spins
    assert spins["object_threshold"].isEnabled() and not spins["points_per_side"].isEnabled()
    assert not dock.instance_panel.prompts_check.isEnabled()
    assert spins["pred_iou"].toolTip().startswith("Not used by the SAM 3 engine")
    _run(dock, qtbot)
    sent = fake_backend.requests[2]["json"]
    assert sent["mode"] == "instance" and sent["options"]["engine"] == "sam3"
    assert _messages(qgis_iface, "Critical") == []
    again = RsovDock(qgis_iface)  # the next session
    qtbot.addWidget(again)
    try:
        assert again.engine_combo.currentData() == "sam3" and again.segment_page.options().engine == "sam3"
        assert not again.instance_panel.spins["stability"].isEnabled()
        again.engine_combo.setCurrentIndex(again.engine_combo.findData("clip"))
        assert again.instance_panel.spins["stability"].isEnabled()
        assert not again.instance_panel.spins["stability"].toolTip().startswith("Not used")
        assert Settings.load().engine == "clip" and again.segment_page.options().engine is None
        again.mode_combo.setCurrentIndex(again.mode_combo.findData("semantic"))
        assert again.refine_check.isVisibleTo(again) and again.refine_check.isChecked()  # remembered meanwhile
    finally:
        again.shutdown()


# --- a gated model's weights ----------------------------------------------------------------------
def test_a_gated_models_download_sends_the_typed_token_and_shows_the_licence_step(fake_backend, dock, qtbot):
    dock.resize(520, 900)
    dock.tabs.setCurrentWidget(dock.backend_page)
    assert dock.check_backend()
    panel = dock.models_panel
    panel.set_weights_model("sam3")
    assert panel.weights_model() == "sam3" and panel.gated_box.isVisibleTo(dock)
    assert "https://huggingface.co/facebook/sam3" in panel.gated_label.text() and panel.gated_label.openExternalLinks()
    assert panel.token_edit.echoMode() == QLineEdit.EchoMode.Password and panel.token_edit.text() == ""
    assert "not saved" in panel.token_edit.placeholderText()

    def download() -> str:
        with qtbot.waitSignal(panel.transferred, timeout=TIMEOUT_MS):
            panel.download()
        return panel.info_label.text()

    # without a token: no body (the backend's own token, if it has one); the refusal shows whole
    shown = download()
    assert fake_backend.downloads == [None]
    assert shown.startswith("Downloading 'sam3' needs a Hugging Face token. They are gated: sign in at ")
    assert "accept the licence there" in shown and "Hub token field in the plugin's Backend tab" in shown
    # a token of an account without the licence: sent in the body, refused by the hub
    qtbot.keyClicks(panel.token_edit, " hf_no_licence ")
    shown = download()
    assert fake_backend.downloads[-1] == {"hub_token": "hf_no_licence"}  # stripped
    assert "refused the download (HTTP 403). They are gated:" in shown and "accept the licence" in shown
    assert panel.token_edit.text() == " hf_no_licence "  # kept for another try
    _screenshot(dock, qtbot, "models_sam3.png")
    # the accepted one: the download runs
    panel.token_edit.setText(fake_backend.hub_token)
    panel.download()
    qtbot.waitUntil(lambda: panel.info_label.text().startswith("Downloading the weights of sam3"), timeout=TIMEOUT_MS)
    assert fake_backend.downloads[-1] == {"hub_token": fake_backend.hub_token}
    assert not panel.token_edit.isEnabled() and not panel.download_button.isEnabled()
    store = QgsSettings()
    assert not [key for key in store.allKeys() if "hf_" in str(store.value(key))]  # never saved
    panel.shutdown()
    # a model that is not gated has no token field
    panel.set_models([ModelInfo("other", "clip", "plain", downloadable=True)])
    assert panel.weights_model() == "other" and not panel.gated_box.isVisibleTo(dock)
