# SPDX-License-Identifier: GPL-2.0-or-later
"""Small widget builders and texts shared by the panel's parts."""

from __future__ import annotations

from collections.abc import Callable

from qgis.core import Qgis, QgsApplication, QgsMapLayerProxyModel
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import QComboBox, QToolButton

from .compat import enum_value
from .vocabulary import VocabularyClass


def polygon_layers():
    """The layer combo filter of polygon layers."""
    return enum_value((Qgis, "LayerFilter.PolygonLayer"), (QgsMapLayerProxyModel, "PolygonLayer"))


def theme_button(icon: str, tip: str, slot: Callable[[], object]) -> QToolButton:
    """A flat tool button with a QGIS theme icon."""
    button = QToolButton()
    button.setIcon(QgsApplication.getThemeIcon(icon))
    button.setToolTip(tip)
    button.setAutoRaise(True)
    button.clicked.connect(slot)
    return button


def swatch(color: str) -> QIcon:
    """A 16 px square of ``color``."""
    pixmap = QPixmap(16, 16)
    pixmap.fill(QColor(color))
    return QIcon(pixmap)


def fill_class_combo(combo: QComboBox, classes: list[VocabularyClass]) -> None:
    """Put the classes (swatch and name; data: the 1-based class id) into ``combo``, keeping the
    chosen class when it is still there."""
    chosen = combo.currentText()
    combo.clear()
    for index, cls in enumerate(classes, start=1):
        combo.addItem(swatch(cls.color), cls.name, index)
    combo.setCurrentIndex(max(0, combo.findText(chosen)))


def counted(count: int, noun: str) -> str:
    """``"1 object"``, ``"3 objects"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
