"""Run inside the real QGIS desktop (`qgis --code desktop_script.py`) by test_plugin_desktop.py.

Checks that the installed plugin shows its panel, segments the visible extent through the dock,
reviews a feature, takes screenshots, writes report.json into $RSOV_DESKTOP_OUT and quits.
"""

import json
import os
import traceback
from pathlib import Path

from qgis.core import QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QAction, QDockWidget
from qgis.utils import iface, plugins

OUT = Path(os.environ["RSOV_DESKTOP_OUT"])
RASTER = os.environ["RSOV_DESKTOP_RASTER"]
report = {"errors": []}
state = {"ticks": 0}


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


def start():
    iface.mainWindow().showMaximized()
    panel = dock()
    report["plugin_loaded"] = "rsov_qgis" in plugins
    report["dock_visible"] = panel is not None and panel.isVisible()
    ours = {a.shortcut().toString() for a in (panel.accept_action, panel.reject_action, panel.next_action)}
    report["shortcut_clashes"] = sorted(
        f"{a.text()} ({a.shortcut().toString()})" for a in iface.mainWindow().findChildren(QAction)
        if a.shortcut().toString() in ours and a.parent() is not panel)
    layer = iface.addRasterLayer(RASTER, "oem_koeln_50")
    QgsProject.instance().setCrs(layer.crs())
    centre = layer.extent().center()
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(centre.x() - 180, centre.y() - 180, centre.x() + 180, centre.y() + 180))
    canvas.refresh()
    panel.preset_combo.activated.emit(panel.preset_combo.findText("Land cover (OpenEarthMap)"))
    panel.threshold_spin.setValue(float(os.environ.get("RSOV_DESKTOP_THRESHOLD", "0.1")))
    report["connected"] = panel.check_backend()
    report["status"] = panel.status_label.text()
    report["task_started"] = panel.segment_visible_extent() is not None
    later(wait_for_task)


def wait_for_task():
    panel = dock()
    if panel.task is not None and state["ticks"] < 400:
        state["ticks"] += 1
        later(wait_for_task)
        return
    group = QgsProject.instance().layerTreeRoot().findGroup("rsov results")
    layers = [node.layer() for node in group.findLayers()] if group else []
    report["result_layers"] = [layer.name() for layer in layers]
    report["stage"] = panel.stage_label.text()
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
    panel.tabs.setCurrentIndex(1)
    panel.next_action.trigger()
    panel.accept_action.trigger()
    later(shot_review, 1500)


def shot_review():
    iface.mapCanvas().waitWhileRendering()
    iface.mainWindow().grab().save(str(OUT / "review.png"))
    report["review_summary"] = dock().review_summary.text()
    finish()


later(start, 1500)
