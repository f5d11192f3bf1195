# SPDX-License-Identifier: GPL-2.0-or-later
"""The look of result layers: categorized by class in the vocabulary's colours (semantic results
filled, instance results as outlines over a light fill, with class labels ready but off), with
the review status drawn on top in colours that read over any class colour and image (accepted: a
dark outline on a white halo and a check mark; rejected: no fill, grey dashes on a white line)."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterable

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCentroidFillSymbolLayer,
    QgsFillSymbol,
    QgsLinePatternFillSymbolLayer,
    QgsMarkerSymbol,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRendererCategory,
    QgsSimpleFillSymbolLayer,
    QgsSvgMarkerSymbolLayer,
    QgsSymbolLayer,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from . import schema
from .compat import enum_value
from .palette import cycle
from .vocabulary import VocabularyClass, assign_colors, format_vocabulary, legend_order, parse_vocabulary

FILL_ALPHA = 150  # of 255: the image stays visible under the polygons
OUTLINE_FILL_ALPHA = 40  # instance results: a light fill inside the outline, to click on
STYLE_NAME = "rsov"  # the default style stored in each result GeoPackage
STYLE_DESCRIPTION = "rsov classes and review status"
VOCABULARY_PROPERTY = (
    "rsov/vocabulary"  # the layer's vocabulary (text format): the class ids, whatever the legend order
)
HATCH_ANGLES = (45.0, 135.0, 0.0, 90.0)  # degrees, one per further palette cycle (then again)
HATCH_DISTANCE, HATCH_WIDTH = 2.0, 0.3  # mm
# The review look: dark lines on a white halo read over any class colour and any image.
HALO, ACCEPTED_LINE, REJECTED_LINE, CHECK_GREEN = "#ffffff", "#212121", "#757575", "#1b5e20"
CHECK_SIZE = 6.0  # mm
_CHECK_PATH = '<path d="M4 12.5l5 5L20 6.5" fill="none" stroke-linecap="round" stroke-linejoin="round" '
CHECK_SVG = (
    f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">{_CHECK_PATH}stroke="{HALO}" '
    f'stroke-width="7"/>{_CHECK_PATH}stroke="{CHECK_GREEN}" stroke-width="3.5"/></svg>'
)
CHECK_MARK = "base64:" + b64encode(CHECK_SVG.encode()).decode()  # embedded: the style needs no file beside it


def _when_status(**values: str) -> QgsProperty:
    """``CASE WHEN "status" = 'accepted' THEN ... ELSE @value END``: other statuses keep the symbol
    layer's own value (@value; a NULL would keep the value of the feature drawn before)."""
    cases = " ".join(f"WHEN \"{schema.STATUS}\" = '{status}' THEN {value}" for status, value in values.items())
    return QgsProperty.fromExpression(f"CASE {cases} ELSE @value END")


def _property(name: str):
    return enum_value((QgsSymbolLayer, f"Property.{name}"), (QgsSymbolLayer, f"Property{name}"))


def class_symbol(color: str, outlined: bool = False) -> QgsFillSymbol:
    """A translucent fill in ``color`` (an outline in ``color`` over a light fill when ``outlined``)
    whose outline and fill follow the review status."""
    fill = QColor(color)
    fill.setAlpha(OUTLINE_FILL_ALPHA if outlined else FILL_ALPHA)
    symbol = QgsFillSymbol.createSimple(
        {
            "color": ",".join(str(v) for v in fill.getRgb()),
            "outline_color": QColor(color).name() if outlined else QColor(color).darker(150).name(),
            "outline_width": "0.6" if outlined else "0.3",
        }
    )
    layer = symbol.symbolLayer(0)
    layer.setDataDefinedProperty(_property("FillStyle"), _when_status(rejected="'no'"))
    # a reviewed feature's own outline becomes the white halo under its status line
    layer.setDataDefinedProperty(_property("StrokeColor"), _when_status(accepted=f"'{HALO}'", rejected=f"'{HALO}'"))
    layer.setDataDefinedProperty(_property("StrokeWidth"), _when_status(accepted="1.4", rejected="0.8"))
    for status_layer in (
        _status_outline(schema.ACCEPTED, ACCEPTED_LINE, 0.5, "solid"),
        _check_mark(),
        _status_outline(schema.REJECTED, REJECTED_LINE, 0.4, "dash"),
    ):
        status_layer.setLocked(True)  # recolouring the class in QGIS leaves the review look as it is
        symbol.appendSymbolLayer(status_layer)
    return symbol


# The status layers draw nothing by themselves (the legend shows the class alone): a data-defined
# value draws them for features of their status.
def _status_outline(status: str, color: str, width: float, style: str) -> QgsSymbolLayer:
    """An outline in ``style`` (``solid``, ``dash``) for features of ``status``."""
    layer = QgsSimpleFillSymbolLayer(QColor(0, 0, 0, 0), Qt.BrushStyle.NoBrush, QColor(color), Qt.PenStyle.NoPen, width)
    layer.setDataDefinedProperty(_property("StrokeStyle"), _when_status(**{status: f"'{style}'"}))
    return layer


def _check_mark() -> QgsSymbolLayer:
    """The check mark inside accepted features (on the surface, once per feature)."""
    check = QgsSvgMarkerSymbolLayer(CHECK_MARK, 0.0)
    check.setDataDefinedProperty(_property("Size"), _when_status(accepted=str(CHECK_SIZE)))
    marker = QgsMarkerSymbol()
    marker.changeSymbolLayer(0, check)  # (the list constructor of 3.22's bindings double-frees)
    layer = QgsCentroidFillSymbolLayer()
    layer.setPointOnSurface(True)
    layer.setPointOnAllParts(False)
    layer.setSubSymbol(marker)
    return layer


def class_renderer(
    classes: list[VocabularyClass], outlined: bool = False, present: Iterable[str] = ()
) -> QgsCategorizedSymbolRenderer:
    """One category per class, labelled with all its synonyms: the classes named in ``present``
    (those the layer holds) first, then the others (so every class stays drawn and can be
    relabelled to), each part in vocabulary order."""
    categories = [
        QgsRendererCategory(
            c.name,
            category_symbol(class_id, c.color, outlined),
            c.name if len(c.synonyms) == 1 else f"{c.name} ({', '.join(c.synonyms[1:])})",
        )
        for class_id, c in legend_order(assign_colors(classes), present)
    ]
    return QgsCategorizedSymbolRenderer(schema.CLASS, categories)


def category_symbol(class_id: int, color: str, outlined: bool) -> QgsFillSymbol:
    """The symbol of class ``class_id``: hatched past the palette's first cycle, whose colours
    the later cycles repeat darker, so class 21 never looks like class 1."""
    symbol = class_symbol(color, outlined)
    if cycle(class_id) >= 1:
        symbol.insertSymbolLayer(1, class_hatch(class_id, color, outlined))  # over the fill, under the review look
    return symbol


def class_hatch(class_id: int, color: str, outlined: bool) -> QgsLinePatternFillSymbolLayer:
    """Lines across the class's fill at an angle of its palette cycle: in the class colour over an
    outline's light fill, else in black or white, whichever reads on the colour. Off for rejected
    features (they have no fill); locked, so recolouring the class keeps them readable."""
    hatch = QgsLinePatternFillSymbolLayer()
    hatch.setLineAngle(HATCH_ANGLES[(cycle(class_id) - 1) % len(HATCH_ANGLES)])
    hatch.setDistance(HATCH_DISTANCE)
    hatch.setLineWidth(HATCH_WIDTH)
    lines = QColor(color) if outlined else QColor("#000000" if QColor(color).lightness() > 140 else "#ffffff")
    hatch.setColor(lines)
    hatch.setDataDefinedProperty(
        _property("LayerEnabled"),
        QgsProperty.fromExpression(f"coalesce(\"{schema.STATUS}\" <> '{schema.REJECTED}', true)"),
    )
    hatch.setLocked(True)
    return hatch


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
    """The classes of a result layer in vocabulary order (a class's place is its class id): the
    vocabulary kept with its style, else its categorized renderer's (names and colours), in order."""
    stored = layer.customProperty(VOCABULARY_PROPERTY)
    if stored:
        return parse_vocabulary(stored)
    renderer = layer.renderer()
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return []
    return [
        VocabularyClass([str(c.value())], c.symbol().color().name()) for c in renderer.categories() if str(c.value())
    ]


def apply_result_style(
    layer: QgsVectorLayer,
    classes: list[VocabularyClass],
    present: Iterable[str] | None = None,
) -> None:
    """Give ``layer`` the categorized renderer of ``classes``, those in ``present`` (by default the
    classes the layer holds) first in its legend, and keep the vocabulary with the style:
    outlines, and class labels that are off, for instance results."""
    outlined = is_instance_layer(layer)
    if present is None:
        present = layer.uniqueValues(layer.fields().indexOf(schema.CLASS))
    layer.setRenderer(class_renderer(classes, outlined, present))
    layer.setCustomProperty(VOCABULARY_PROPERTY, format_vocabulary(classes))
    if outlined:
        layer.setLabeling(class_labeling())
        layer.setLabelsEnabled(False)
