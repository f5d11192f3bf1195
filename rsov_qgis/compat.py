# SPDX-License-Identifier: GPL-2.0-or-later
"""Names that differ between QGIS 3.22 (Qt5) and QGIS 3.3x / 4 (Qt6, scoped enums)."""

from __future__ import annotations

from typing import Any

try:  # Qt6 moved QAction to QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction

__all__ = ["QAction", "enum_value"]


def enum_value(*candidates: tuple[Any, str]) -> Any:
    """The first ``(owner, "Dotted.Name")`` that exists, e.g.
    ``enum_value((Qgis, "ProcessingSourceType.Raster"), (QgsProcessing, "TypeRaster"))``."""
    for owner, dotted in candidates:
        value = owner
        try:
            for part in dotted.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        return value
    raise AttributeError("none of " + ", ".join(f"{getattr(o, '__name__', o)}.{d}" for o, d in candidates))
