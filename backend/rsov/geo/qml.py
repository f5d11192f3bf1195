"""The QGIS style of a result layer as a QML document, for GeoPackages written without QGIS.

The reference is the plugin's ``rsov_qgis/styling.py``: the dock and Processing style their
results with it, through QGIS's own classes, and replace this style when they save a result.
This module gives the CLI's (and the server's) GeoPackages the same class look, so they open
styled in QGIS: a categorized renderer on ``class``, class k in the palette's colour k, semantic
results as translucent fills with a darker outline, instance results as outlines over a light
fill with class labels ready but off, classes past the palette's first cycle hatched. The review
look (what accepted and rejected features get) is styling's alone, and the legend lists the
classes in vocabulary order (styling puts those found first and keeps the vocabulary beside, for
the class ids). A plugin test loads this QML in QGIS and checks that its colours and symbols
agree with styling's.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from html import escape

from ..palette import class_rgb, cycle

FILL_ALPHA = 150  # styling.FILL_ALPHA: the image stays visible under the polygons
OUTLINE_FILL_ALPHA = 40  # styling.OUTLINE_FILL_ALPHA: instance results, a light fill to click on
OUTLINE_WIDTH_MM = {False: "0.3", True: "0.6"}  # styling.class_symbol's, by ``outlined``
DARKER = 1.5  # styling's QColor.darker(150): the outline of a fill
HATCH_ANGLES = ("45", "135", "0", "90")  # styling.HATCH_ANGLES: degrees, one per further palette cycle
HATCH_DISTANCE_MM, HATCH_WIDTH_MM = "2", "0.3"  # styling.HATCH_DISTANCE, HATCH_WIDTH
HATCH_DARK_ABOVE = 140  # styling.class_hatch: black lines on colours lighter than this (HSL), else white
QGIS_VERSION = "3.22.0"  # the oldest QGIS the plugin supports reads this document

LABELING = (  # styling.class_labeling: the class name over a buffer, for the user to switch on
    '<labeling type="simple"><settings calloutType="simple">'
    '<text-style fieldName="class" isExpression="0" fontSize="10" fontSizeUnit="Point" textColor="50,50,50,255" '
    'textOpacity="1"><text-buffer bufferDraw="1" bufferSize="1" bufferSizeUnits="MM" '
    'bufferColor="250,250,250,255" bufferOpacity="1"/></text-style></settings></labeling>'
)


def darker(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """``rgb`` with its HSV value divided by DARKER, as Qt's QColor.darker does."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    red, green, blue = (round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value / DARKER))
    return red, green, blue


def _rgba(rgb: tuple[int, int, int], alpha: int = 255) -> str:
    return ",".join(str(v) for v in (*rgb, alpha))


def fill_properties(class_id: int, outlined: bool) -> dict[str, str]:
    """The SimpleFill properties of class ``class_id``'s symbol."""
    rgb = class_rgb(class_id)
    return {
        "color": _rgba(rgb, OUTLINE_FILL_ALPHA if outlined else FILL_ALPHA),
        "outline_color": _rgba(rgb if outlined else darker(rgb)),
        "outline_style": "solid",
        "outline_width": OUTLINE_WIDTH_MM[outlined],
        "outline_width_unit": "MM",
        "style": "solid",
    }


def hatch_properties(class_id: int, outlined: bool) -> dict[str, str]:
    """The LinePatternFill properties of the hatch of class ``class_id`` (past the first cycle):
    lines in the class colour over an outline's light fill, else black or white, whichever reads."""
    rgb = class_rgb(class_id)
    lightness = (max(rgb) + min(rgb)) / 2
    lines = rgb if outlined else (0, 0, 0) if lightness > HATCH_DARK_ABOVE else (255, 255, 255)
    return {
        "angle": HATCH_ANGLES[(cycle(class_id) - 1) % len(HATCH_ANGLES)],
        "distance": HATCH_DISTANCE_MM,
        "distance_unit": "MM",
        "line_width": HATCH_WIDTH_MM,
        "line_width_unit": "MM",
        "color": _rgba(lines),
    }


def _layer(kind: str, properties: dict[str, str], locked: bool = False) -> str:
    props = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in properties.items())
    return f'<layer class="{kind}" enabled="1" locked="{int(locked)}" pass="0">{props}</layer>'


def _symbol(index: int, class_id: int, outlined: bool) -> str:
    layers = _layer("SimpleFill", fill_properties(class_id, outlined))
    if cycle(class_id) >= 1:
        layers += _layer("LinePatternFill", hatch_properties(class_id, outlined), locked=True)
    return f'<symbol type="fill" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">{layers}</symbol>'


def result_qml(classes: Iterable[tuple[int, str]], instances: bool) -> str:
    """The QML of a result layer whose classes are ``(class_id, name)`` (class ids 1-based, in
    vocabulary order); ``instances``: outlines and class labels (off), else fills."""
    classes = list(classes)
    categories = "".join(
        f'<category render="true" symbol="{i}" value="{escape(name)}" label="{escape(name)}"/>'
        for i, (_, name) in enumerate(classes)
    )
    symbols = "".join(_symbol(i, class_id, instances) for i, (class_id, _) in enumerate(classes))
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
        f'<qgis version="{QGIS_VERSION}" styleCategories="Symbology|Labeling" labelsEnabled="0">'
        '<renderer-v2 type="categorizedSymbol" attr="class" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<categories>{categories}</categories><symbols>{symbols}</symbols></renderer-v2>"
        f"{LABELING if instances else ''}</qgis>"
    )
