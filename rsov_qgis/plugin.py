# SPDX-License-Identifier: GPL-2.0-or-later
"""The plugin object QGIS loads: registers the panel, its toolbar action and the Processing
provider, and undoes all of it (stopping a backend it started) on unload or exit."""

from __future__ import annotations

from typing import cast

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from .compat import QAction
from .dock import RsovDock
from .paths import ICON
from .processing_provider import RsovProvider
from .review_panel import SHORTCUTS

MENU = "&rsov"
VISIBLE_KEY = "rsov/dock_visible"


class RsovPlugin:
    """Thin glue between QGIS and the rsov panel."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: RsovProvider | None = None
        self.dock: RsovDock | None = None
        self.action: QAction | None = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS's name)
        """Register the ``rsov`` Processing provider (also used by qgis_process)."""
        if self.provider is None:
            self.provider = RsovProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """Add the panel, its toolbar/menu action and the review shortcuts."""
        self.initProcessing()
        provider = cast(RsovProvider, self.provider)  # set by initProcessing
        window = self.iface.mainWindow()
        self.dock = RsovDock(self.iface, window)
        provider.use_backend(self.dock.backend)  # one backend process, whoever starts it
        self.action = QAction(QIcon(str(ICON)), "rsov segmentation panel", window)
        self.action.setObjectName("rsovShowPanel")
        self.action.setCheckable(True)
        self.action.setToolTip("Open-vocabulary segmentation of the visible raster extent")
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        for action, key in zip(self._review_actions(), SHORTCUTS.values()):
            self.iface.registerMainWindowAction(action, key)  # user-configurable shortcuts
        self.dock.setVisible(QgsSettings().value(VISIBLE_KEY, True, type=bool))
        self.action.setChecked(self.dock.isVisible())
        QgsApplication.instance().aboutToQuit.connect(self._shutdown)
        self.dock.check_backend_later()

    def _review_actions(self) -> list[QAction]:
        if self.dock is None:
            return []
        return self.dock.review_panel.shortcut_actions

    def _shutdown(self) -> None:
        if self.dock is not None:
            QgsSettings().setValue(VISIBLE_KEY, self.dock.isVisible())
            self.dock.shutdown()

    def unload(self) -> None:
        """Remove everything initGui and initProcessing added; stop the backend we started."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.dock is None:
            return
        QgsApplication.instance().aboutToQuit.disconnect(self._shutdown)
        self._shutdown()
        for action in self._review_actions():
            self.iface.unregisterMainWindowAction(action)
        self.iface.removePluginRasterMenu(MENU, self.action)
        self.iface.removeToolBarIcon(self.action)
        self.iface.removeDockWidget(self.dock)
        self.dock.deleteLater()
        if self.action is not None:
            self.action.deleteLater()
        self.dock = None
        self.action = None
