"""Run inside the real QGIS desktop (`qgis --code desktop_script.py`) by test_plugin_desktop.py.

Checks that the installed plugin shows its panel, segments the visible extent through the dock,
reviews a feature, keeps it as an example and runs an instance job on the whole raster with it,
takes screenshots, writes report.json into $RSOV_DESKTOP_OUT and quits.
"""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QAction, QDockWidget
from qgis.utils import iface, plugins

OUT = Path(os.environ["RSOV_DESKTOP_OUT"])
RASTER = os.environ["RSOV_DESKTOP_RASTER"]
INSTANCE_OPTIONS = json.loads(os.environ["RSOV_DESKTOP_INSTANCE_OPTIONS"])  # helpers.PERMISSIVE
report = {"errors": []}


def dock():
    return iface.mainWindow().findChild(QDockWidget, "rsovDock")


def finish():
    report["messages"] = [item.text() for item in iface.messageBar().items()]
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    QgsProject.instance().clear()
    iface.actionExit().trigger()


def guarded(step):
    def run():
        try:
            step()
        except Exception:  # report whatever went wrong, then quit instead of hanging
            report["errors"].append(traceback.format_exc())
            finish()

    return run


def later(step, ms=500):
    QTimer.singleShot(ms, guarded(step))


def when_done(step, ticks=400):
    """Run ``step`` once the panel's task has ended (polling every 0.5 s, at most ``ticks`` times)."""

    def poll():
        if dock().task is not None and poll.ticks < ticks:
            poll.ticks += 1
            later(poll)
        else:
            step()

    poll.ticks = 0
    later(poll)


def result_layers():
    group = QgsProject.instance().layerTreeRoot().findGroup("rsov results")
    return [node.layer() for node in group.findLayers()] if group else []


def start():
    iface.mainWindow().showMaximized()
    iface.mainWindow().setGeometry(0, 0, 1600, 1000)  # Xvfb has no window manager to maximise it
    panel = dock()
    report["plugin_loaded"] = "rsov_qgis" in plugins
    report["dock_visible"] = panel is not None and panel.isVisible()
    ours = {a.shortcut().toString() for a in panel.review_panel.shortcut_actions}
    report["shortcut_clashes"] = sorted(
        f"{a.text()} ({a.shortcut().toString()})"
        for a in iface.mainWindow().findChildren(QAction)
        if a.shortcut().toString() in ours and a not in panel.review_panel.shortcut_actions
    )
    layer = iface.addRasterLayer(RASTER, "oem_koeln_50")
    QgsProject.instance().setCrs(layer.crs())
    iface.mapCanvas().setDestinationCrs(layer.crs())
    presets = panel.vocabulary_editor.preset_combo
    presets.activated.emit(presets.findText("Land cover (OpenEarthMap)"))
    panel.threshold_spin.setValue(float(os.environ.get("RSOV_DESKTOP_THRESHOLD", "0.1")))
    report["connected"] = panel.check_backend()
    report["status"] = panel.status_label.text()
    later(segment, 1000)  # once the window has its size


def segment():
    iface.mapCanvas().setExtent(dock().raster_combo.currentLayer().extent().buffered(-70))
    iface.mapCanvas().refresh()
    report["task_started"] = dock().segment() is not None
    when_done(segmented)


def segmented():
    layers = result_layers()
    report["result_layers"] = [layer.name() for layer in layers]
    report["stage"] = dock().stage_label.text()
    if layers:
        layer = layers[0]
        report["features"] = layer.featureCount()
        report["classes"] = sorted({f["class"] for f in layer.getFeatures()})
        report["renderer"] = layer.renderer().type()
        report["source"] = layer.source()
    later(shot_segment, 1500)


def shot_segment():
    iface.mapCanvas().waitWhileRendering()
    iface.mainWindow().grab().save(str(OUT / "dock.png"))
    panel = dock()
    report["area"] = panel.area_combo.currentText()
    report["segment_button"] = panel.segment_button.text()
    report["estimate"] = panel.estimate_label.text()
    panel.tabs.setCurrentIndex(1)
    panel.review_panel.next_action.trigger()
    panel.review_panel.accept_action.trigger()
    later(shot_review, 1500)


def shot_review():
    iface.mapCanvas().waitWhileRendering()
    iface.mainWindow().grab().save(str(OUT / "review.png"))
    panel = dock()
    report["review_summary"] = panel.review_panel.review_summary.text()
    panel.review_panel.save_review()  # (unsaved, QGIS would ask about them when the project closes)
    # the accepted feature becomes an example of its class for an instance job on the whole raster
    [semantic] = result_layers()
    [accepted] = [f for f in semantic.getFeatures() if f["status"] == "accepted"]
    semantic.selectByIds([accepted.id()])
    iface.setActiveLayer(semantic)
    panel.tabs.setCurrentIndex(0)
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("instance"))
    for key, value in INSTANCE_OPTIONS.items():
        panel.instance_panel.spins[key].setValue(value)
    panel.instance_panel.prompts_check.setChecked(False)
    panel.instance_panel.example_class_combo.setCurrentText(accepted["class"])
    panel.instance_panel.add_selected_examples()
    report["examples"] = panel.instance_panel.examples_label.text()
    tree = QgsProject.instance().layerTreeRoot()
    for layer in (semantic, panel.raster_combo.currentLayer()):
        tree.findLayer(layer.id()).setExpanded(False)
    tree.findLayer(semantic.id()).setItemVisibilityChecked(False)
    semantic.removeSelection()
    iface.mapCanvas().setExtent(panel.raster_combo.currentLayer().extent().buffered(40))
    task = panel.segment()
    report["instance_task_started"] = task is not None
    report["sent_examples"] = len((task.job.examples or {}).get("features", [])) if task else 0
    when_done(instances_done)


def instances_done():
    layer = result_layers()[0]
    QgsProject.instance().layerTreeRoot().findLayer(layer.id()).setExpanded(True)
    report["instance_layer"] = layer.name()
    report["instance_stage"] = dock().stage_label.text()
    report["instance_fields"] = layer.fields().names()
    report["instance_features"] = layer.featureCount()
    later(shot_instances, 1500)


def shot_instances():
    iface.mapCanvas().waitWhileRendering()
    iface.mainWindow().grab().save(str(OUT / "instances.png"))
    finish()


later(start, 1500)
