# SPDX-License-Identifier: GPL-2.0-or-later
"""Polygons as the backend takes them: GeoJSON FeatureCollections with a ``crs`` member naming
their CRS (the ``examples`` and the ``mask`` of a job), and the small geometry helpers both use."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsGeometry,
    QgsWkbTypes,
)

from .compat import enum_value

POLYGON = enum_value((Qgis, "GeometryType.Polygon"), (QgsWkbTypes, "PolygonGeometry"))


def is_polygon(geometry: QgsGeometry) -> bool:
    """Whether ``geometry`` is a non-empty (multi)polygon."""
    return not geometry.isNull() and not geometry.isEmpty() and geometry.type() == POLYGON


def transform_between(
    source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext
) -> QgsCoordinateTransform | None:
    """The transform from ``source`` to ``target``; None when they are the same CRS."""
    return None if source == target else QgsCoordinateTransform(source, target, context)


def in_crs(geometry: QgsGeometry, transform: QgsCoordinateTransform | None) -> QgsGeometry:
    """A copy of ``geometry`` transformed (QgsCsException when it cannot be)."""
    copy = QgsGeometry(geometry)
    if transform is not None:
        copy.transform(transform)
    return copy


def feature_collection(features: Iterable[tuple[dict[str, Any], QgsGeometry]], crs_name: str) -> dict[str, Any]:
    """GeoJSON of (properties, geometry) pairs whose coordinates are in ``crs_name``, saying so in
    its ``crs`` member (``{"type": "name", "properties": {"name": crs_name}}``)."""
    return {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs_name}},
        "features": [
            {"type": "Feature", "properties": dict(properties), "geometry": json.loads(geometry.asJson())}
            for properties, geometry in features
        ],
    }
