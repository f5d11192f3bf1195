# SPDX-License-Identifier: GPL-2.0-or-later
"""The look of result layers: categorized by class in the vocabulary's colours (semantic results
filled, instance results as outlines over a light fill, with class labels ready but off), with
the review status drawn on top (accepted: bold green outline; rejected: no fill, grey dashes)."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRendererCategory,
    QgsSymbolLayer,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from . import schema
from .compat import enum_value
from .vocabulary import VocabularyClass, assign_colors

FILL_ALPHA = 150  # of 255: the image stays visible under the polygons
OUTLINE_FILL_ALPHA = 40  # instance results: a light fill inside the outline, to click on
STYLE_NAME = "rsov"  # the default style stored in each result GeoPackage
STYLE_DESCRIPTION = "rsov classes and review status"


def _when_status(**values: str) -> QgsProperty:
    """``CASE WHEN "status" = 'accepted' THEN ... END``; NULL (other statuses) keeps the symbol's own value."""
    cases = " ".join(f"WHEN \"{schema.STATUS}\" = '{status}' THEN {value}" for status, value in values.items())
    return QgsProperty.fromExpression(f"CASE {cases} END")


def _property(name: str):
    return enum_value((QgsSymbolLayer, f"Property.{name}"), (QgsSymbolLayer, f"Property{name}"))


def class_symbol(color: str, outlined: bool = False) -> QgsFillSymbol:
    """A translucent fill in ``color`` (an outline in ``color`` over a light fill when ``outlined``)
    whose outline and fill follow the review status."""
    fill = QColor(color)
    fill.setAlpha(OUTLINE_FILL_ALPHA if outlined else FILL_ALPHA)
    symbol = QgsFillSymbol.createSimple({
        "color": ",".join(str(v) for v in fill.getRgb()),
        "outline_color": QColor(color).name() if outlined else QColor(color).darker(150).name(),
        "outline_width": "0.6" if outlined else "0.3",
    })
    layer = symbol.symbolLayer(0)
    layer.setDataDefinedProperty(_property("FillStyle"), _when_status(rejected="'no'"))
    layer.setDataDefinedProperty(_property("StrokeColor"), _when_status(accepted="'#00c853'", rejected="'#9e9e9e'"))
    layer.setDataDefinedProperty(_property("StrokeWidth"), _when_status(accepted="0.9", rejected="0.4"))
    layer.setDataDefinedProperty(_property("StrokeStyle"), _when_status(rejected="'dash'"))
    return symbol


def class_renderer(classes: list[VocabularyClass], outlined: bool = False) -> QgsCategorizedSymbolRenderer:
    """One category per class, in vocabulary order, labelled with all its synonyms."""
    categories = [
        QgsRendererCategory(c.name, class_symbol(c.color, outlined),
                            c.name if len(c.synonyms) == 1 else f"{c.name} ({', '.join(c.synonyms[1:])})")
        for c in assign_colors(classes)
    ]
    return QgsCategorizedSymbolRenderer(schema.CLASS, categories)


def class_labeling() -> QgsVectorLayerSimpleLabeling:
    """Labels with the class name (for the user to switch on)."""
    settings = QgsPalLayerSettings()
    settings.fieldName = schema.CLASS
    text = settings.format()
    buffer = text.buffer()
    buffer.setEnabled(True)  # readable over any image
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def is_instance_layer(layer) -> bool:
    """Whether ``layer`` holds instance results (one feature per object)."""
    return isinstance(layer, QgsVectorLayer) and layer.fields().indexOf(schema.INSTANCE_ID) >= 0


def renderer_classes(layer: QgsVectorLayer) -> list[VocabularyClass]:
    """The classes of a result layer's categorized renderer (names and colours), in order."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return []
    return [VocabularyClass([str(c.value())], c.symbol().color().name()) for c in renderer.categories()
            if str(c.value())]


def apply_result_style(layer: QgsVectorLayer, classes: list[VocabularyClass]) -> None:
    """Give ``layer`` the categorized renderer of ``classes``: outlines, and class labels that are
    off, for instance results."""
    outlined = is_instance_layer(layer)
    layer.setRenderer(class_renderer(classes, outlined))
    if outlined:
        layer.setLabeling(class_labeling())
        layer.setLabelsEnabled(False)
