# SPDX-License-Identifier: GPL-2.0-or-later
"""The look of result layers: categorized by class in the vocabulary's colours, with the
review status drawn on top (accepted: bold green outline; rejected: no fill, grey dashes)."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsProperty,
    QgsRendererCategory,
    QgsSymbolLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from . import schema
from .compat import enum_value
from .vocabulary import VocabularyClass, assign_colors

FILL_ALPHA = 150  # of 255: the image stays visible under the polygons
STYLE_NAME = "rsov"


def _when_status(**values: str) -> QgsProperty:
    """``CASE WHEN "status" = 'accepted' THEN ... END``; NULL (other statuses) keeps the symbol's own value."""
    cases = " ".join(f"WHEN \"{schema.STATUS}\" = '{status}' THEN {value}" for status, value in values.items())
    return QgsProperty.fromExpression(f"CASE {cases} END")


def _property(name: str):
    return enum_value((QgsSymbolLayer, f"Property.{name}"), (QgsSymbolLayer, f"Property{name}"))


def class_symbol(color: str) -> QgsFillSymbol:
    """A translucent fill in ``color`` whose outline and fill follow the review status."""
    fill = QColor(color)
    fill.setAlpha(FILL_ALPHA)
    symbol = QgsFillSymbol.createSimple({
        "color": ",".join(str(v) for v in fill.getRgb()),
        "outline_color": QColor(color).darker(150).name(),
        "outline_width": "0.3",
    })
    layer = symbol.symbolLayer(0)
    layer.setDataDefinedProperty(_property("FillStyle"), _when_status(rejected="'no'"))
    layer.setDataDefinedProperty(_property("StrokeColor"), _when_status(accepted="'#00c853'", rejected="'#9e9e9e'"))
    layer.setDataDefinedProperty(_property("StrokeWidth"), _when_status(accepted="0.9", rejected="0.4"))
    layer.setDataDefinedProperty(_property("StrokeStyle"), _when_status(rejected="'dash'"))
    return symbol


def class_renderer(classes: list[VocabularyClass]) -> QgsCategorizedSymbolRenderer:
    """One category per class, in vocabulary order, labelled with all its synonyms."""
    categories = [
        QgsRendererCategory(c.name, class_symbol(c.color), c.name if len(c.synonyms) == 1 else f"{c.name} ({', '.join(c.synonyms[1:])})")
        for c in assign_colors(classes)
    ]
    return QgsCategorizedSymbolRenderer(schema.CLASS, categories)


def renderer_classes(layer: QgsVectorLayer) -> list[VocabularyClass]:
    """The classes of a result layer's categorized renderer (names and colours), in order."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return []
    return [VocabularyClass([str(c.value())], c.symbol().color().name()) for c in renderer.categories()
            if str(c.value())]


def apply_result_style(layer: QgsVectorLayer, classes: list[VocabularyClass]) -> None:
    """Give ``layer`` the categorized renderer of ``classes``."""
    layer.setRenderer(class_renderer(classes))


def save_style_to_database(layer: QgsVectorLayer) -> None:
    """Store the layer's style in its GeoPackage as the default style (RuntimeError on failure)."""
    description = "rsov classes and review status"
    if hasattr(layer, "saveStyleToDatabaseV2"):  # QGIS >= 3.40; an SLD that cannot be made is no failure
        results, message = layer.saveStyleToDatabaseV2(STYLE_NAME, description, True, "")
        result = QgsMapLayer.SaveStyleResult
        failed = bool(results & (result.QmlGenerationFailed | result.DatabaseWriteFailed))
    else:
        message = layer.saveStyleToDatabase(STYLE_NAME, description, True, "")
        failed = bool(message)
    if failed:
        raise RuntimeError(f"Saving the style into {layer.source()} failed: {message}")
