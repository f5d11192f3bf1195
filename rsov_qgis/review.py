# SPDX-License-Identifier: GPL-2.0-or-later
"""Reviewing a result layer: score filter, accept/reject, relabel, next unreviewed, merge.

Changes go through the layer's edit buffer: committed at once when the layer was not being
edited, left in the buffer (for the user to save) when it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsFeatureRequest,
    QgsGeometry,
    QgsVectorLayer,
    QgsWkbTypes,
)

from . import schema
from .compat import enum_value


class ReviewError(RuntimeError):
    """A review action could not be done; the message says why."""


@contextmanager
def editing(layer: QgsVectorLayer) -> Iterator[None]:
    """Edit ``layer``: commit at the end unless it was already in edit mode; roll back on error."""
    if layer.isEditable():
        yield
        return
    if not layer.startEditing():
        raise ReviewError(f"The layer {layer.name()} cannot be edited.")
    try:
        yield
    except Exception:
        layer.rollBack()
        raise
    if not layer.commitChanges():
        errors = "; ".join(layer.commitErrors())
        layer.rollBack()
        raise ReviewError(f"Saving the changes to {layer.name()} failed: {errors}")


@contextmanager
def unfiltered(layer: QgsVectorLayer) -> Iterator[None]:
    """Lift the layer's subset string (the score filter) for a while, if it can be lifted."""
    subset = layer.subsetString()
    if not subset or not layer.setSubsetString(""):
        yield
        return
    try:
        yield
    finally:
        layer.setSubsetString(subset)


def _field_index(layer: QgsVectorLayer, name: str) -> int:
    index = layer.fields().indexOf(name)
    if index < 0:
        raise ReviewError(f"The layer {layer.name()} has no '{name}' field: is it an rsov result?")
    return index


def set_attribute(layer: QgsVectorLayer, feature_ids: Iterable[int], values: dict[str, object]) -> int:
    """Set ``values`` (field name -> value) on the given features; returns how many changed."""
    indexes = {_field_index(layer, name): value for name, value in values.items()}
    ids = list(feature_ids)
    with editing(layer):
        for fid in ids:
            for index, value in indexes.items():
                if not layer.changeAttributeValue(fid, index, value):
                    raise ReviewError(f"Feature {fid} of {layer.name()} cannot be changed.")
    layer.triggerRepaint()
    return len(ids)


def set_status(layer: QgsVectorLayer, feature_ids: Iterable[int], status: str) -> int:
    """Mark features ``new``, ``accepted`` or ``rejected``."""
    if status not in schema.STATUSES:
        raise ReviewError(f"Unknown review status '{status}'.")
    return set_attribute(layer, feature_ids, {schema.STATUS: status})


def relabel(layer: QgsVectorLayer, feature_ids: Iterable[int], class_name: str, class_id: int | None = None) -> int:
    """Give features another class (and its id when the layer has ``class_id``)."""
    values: dict[str, object] = {schema.CLASS: class_name}
    if class_id is not None and layer.fields().indexOf(schema.CLASS_ID) >= 0:
        values[schema.CLASS_ID] = class_id
    return set_attribute(layer, feature_ids, values)


_SCORE_SUBSET = re.compile(rf'"{schema.SCORE}" >= ([0-9.]+)')


def score_filter(layer: QgsVectorLayer, min_score: float) -> None:
    """Show only features scoring at least ``min_score`` (0 shows all)."""
    _field_index(layer, schema.SCORE)
    subset = f'"{schema.SCORE}" >= {min_score:.4f}' if min_score > 0 else ""
    if layer.subsetString() != subset and not layer.setSubsetString(subset):
        raise ReviewError(f"Filtering {layer.name()} failed: save or discard its edits first.")


def current_score_filter(layer: QgsVectorLayer) -> float:
    """The minimum score :func:`score_filter` set on ``layer`` (0 when there is none)."""
    match = _SCORE_SUBSET.fullmatch(layer.subsetString())
    return float(match.group(1)) if match else 0.0


def next_unreviewed(layer: QgsVectorLayer, after_id: int | None = None) -> QgsFeature | None:
    """The first ``new`` feature after feature ``after_id`` (wrapping around), by feature id."""
    _field_index(layer, schema.STATUS)
    request = QgsFeatureRequest().setFilterExpression(
        f"\"{schema.STATUS}\" IS NULL OR \"{schema.STATUS}\" = '{schema.NEW}'")
    features = sorted(layer.getFeatures(request), key=lambda f: f.id())
    later = [f for f in features if after_id is None or f.id() > after_id]
    return (later or features or [None])[0]


def merge_accepted(source: QgsVectorLayer, target: QgsVectorLayer,
                   context: QgsCoordinateTransformContext | None = None) -> int:
    """Copy the accepted features of ``source`` into the polygon layer ``target`` (fields matched
    by name, geometry reprojected and split into parts for a single-part target); features hidden
    by the score filter count too, since accepting them was explicit. Returns how many were added."""
    polygon = enum_value((Qgis, "GeometryType.Polygon"), (QgsWkbTypes, "PolygonGeometry"))
    if target.geometryType() != polygon:
        raise ReviewError(f"The target layer {target.name()} does not hold polygons.")
    if target.id() == source.id():
        raise ReviewError("Choose a target layer other than the result layer itself.")
    transform = None
    if source.crs() != target.crs():
        transform = QgsCoordinateTransform(source.crs(), target.crs(), context or QgsCoordinateTransformContext())
    keys = set(target.primaryKeyAttributes())
    shared = [(name, target.fields().indexOf(name)) for name in source.fields().names()
              if target.fields().indexOf(name) >= 0 and target.fields().indexOf(name) not in keys]
    multi = QgsWkbTypes.isMultiType(target.wkbType())
    request = QgsFeatureRequest().setFilterExpression(f"\"{schema.STATUS}\" = '{schema.ACCEPTED}'")
    copies = []
    with unfiltered(source):
        accepted = list(source.getFeatures(request))
    for feature in accepted:
        geometry = QgsGeometry(feature.geometry())
        if transform is not None:
            geometry.transform(transform)
        if multi:
            geometry.convertToMultiType()
        for part in [geometry] if multi else geometry.asGeometryCollection():
            copy = QgsFeature(target.fields())
            for name, index in shared:
                copy.setAttribute(index, feature[name])
            copy.setGeometry(part)
            copies.append(copy)
    if copies:
        with editing(target):
            if not target.addFeatures(copies):
                raise ReviewError(f"Adding features to {target.name()} failed.")
    target.triggerRepaint()
    return len(copies)
