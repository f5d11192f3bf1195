# SPDX-License-Identifier: GPL-2.0-or-later
"""Class colours: class k (1-based, its place in the vocabulary) has one colour everywhere.

The same table as the backend's ``rsov/palette.py`` (the class raster, the preview and the CLI's
GeoPackage style use that one; a backend test keeps the two equal): the dock's rows, Processing
and the result styles colour a class the same. A colour the analyst chose overrides it.
Distinct up to len(COLOURS) classes; then they cycle, each further cycle darker, and hatched in
the layer styles (see ``styling``), so class 21 never looks like class 1.
"""

from __future__ import annotations

COLOURS = (
    "#e69f00",
    "#56b4e9",
    "#009e73",
    "#f0e442",
    "#0072b2",
    "#d55e00",
    "#cc79a7",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
    "#a6cee3",
    "#b2df8a",
    "#fb9a99",
)
SHADE_PER_CYCLE = 0.6  # each further cycle multiplies the channels by this


def cycle(class_id: int) -> int:
    """0 for the first len(COLOURS) classes, 1 for the next ones, ..."""
    return (class_id - 1) // len(COLOURS)


def class_colour(class_id: int) -> str:
    """``#rrggbb`` of class id ``class_id`` (1-based); background (0) is black."""
    if class_id <= 0:
        return "#000000"
    base = COLOURS[(class_id - 1) % len(COLOURS)]
    shade = SHADE_PER_CYCLE ** cycle(class_id)
    return "#" + "".join(f"{round(int(base[i : i + 2], 16) * shade):02x}" for i in (1, 3, 5))
