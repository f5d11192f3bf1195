# SPDX-License-Identifier: GPL-2.0-or-later
"""Reviewing a result layer: score filter, accept/reject, relabel, next unreviewed, merge.

Accept, reject and relabel go through the layer's edit buffer (editing starts when needed), one
undo step each; :func:`save_review`, or QGIS's own Save edits, writes them to the file. Merging
writes at once: the copies into the target, and into the result which features went to which
target (the ``merged_into`` field), so that merging again adds only what was not merged yet.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsFeatureRequest,
    QgsFeatureSink,
    QgsProviderRegistry,
    QgsRectangle,
    QgsVectorLayer,
    QgsVectorLayerUtils,
    QgsWkbTypes,
)

from . import schema
from .compat import enum_value
from .errors import RsovPluginError
from .results import text_field

UNREVIEWED = f'"{schema.STATUS}" IS NULL OR "{schema.STATUS}" = \'{schema.NEW}\''
ACCEPTED = f"\"{schema.STATUS}\" = '{schema.ACCEPTED}'"
CONTEXT = 3.0  # a feature under review is shown in a view three times its size: its own size of margin all round
LOST = 4.0  # in a view over four times that, the feature is too small to judge: zoom in
FILTER_KEYS = ("subset", "sql")  # where OGR and PostgreSQL sources keep a layer's filter
NO_GEOMETRY = enum_value((Qgis, "FeatureRequestFlag.NoGeometry"), (QgsFeatureRequest, "NoGeometry"))


class ReviewError(RsovPluginError):
    """A review action could not be done; the message says why."""


class Merged(NamedTuple):
    """What a merge did, in accepted features of the result."""

    added: int
    already: int  # merged into the same target before


# --- edits ---------------------------------------------------------------------------------------
@contextmanager
def undoable(layer: QgsVectorLayer, text: str) -> Iterator[None]:
    """Edit ``layer`` as one undo step called ``text``, in its edit buffer (editing starts if needed)."""
    if not layer.isEditable() and not layer.startEditing():
        raise ReviewError(f"The layer {layer.name()} cannot be edited.")
    layer.beginEditCommand(text)
    try:
        yield
    except Exception:
        layer.destroyEditCommand()  # undoes what the step had done
        raise
    layer.endEditCommand()


@contextmanager
def saved_edits(layer: QgsVectorLayer) -> Iterator[None]:
    """Edit ``layer``, saved at the end unless it was already in edit mode; rolled back on error."""
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
    _commit(layer, stop_editing=True)


@contextmanager
def outside_editing(layer: QgsVectorLayer) -> Iterator[None]:
    """Leave an edit session that holds no changes for a while (QGIS filters no layer being
    edited), then edit again; with unsaved changes, refused."""
    if not layer.isEditable():
        yield
        return
    if layer.isModified():
        raise ReviewError(f"Save the review of {layer.name()} (or undo its changes) first.")
    layer.rollBack()
    try:
        yield
    finally:
        layer.startEditing()


@contextmanager
def unfiltered(layer: QgsVectorLayer) -> Iterator[None]:
    """Lift the layer's subset string (the score filter) for a while (not while it is edited)."""
    subset = layer.subsetString()
    if not subset:
        yield
        return
    if not layer.setSubsetString(""):
        raise ReviewError(f"The filter of {layer.name()} cannot be lifted: save or discard its edits first.")
    try:
        yield
    finally:
        layer.setSubsetString(subset)


def _commit(layer: QgsVectorLayer, stop_editing: bool) -> None:
    if not layer.commitChanges(stop_editing):
        errors = "; ".join(layer.commitErrors())
        layer.rollBack()
        raise ReviewError(f"Saving the changes to {layer.name()} failed: {errors}")


def _field_index(layer: QgsVectorLayer, name: str) -> int:
    index = layer.fields().indexOf(name)
    if index < 0:
        raise ReviewError(f"The layer {layer.name()} has no '{name}' field: is it an rsov result?")
    return index


def set_attribute(layer: QgsVectorLayer, feature_ids: Iterable[int], values: dict[str, object], text: str) -> int:
    """Set ``values`` (field name -> value) on the given features as the undo step ``text``;
    returns how many features changed."""
    indexes = {_field_index(layer, name): value for name, value in values.items()}
    ids = list(feature_ids)
    with undoable(layer, text):
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
    ids = list(feature_ids)
    return set_attribute(layer, ids, {schema.STATUS: status}, f"rsov: mark {len(ids)} {status}")


def relabel(layer: QgsVectorLayer, feature_ids: Iterable[int], class_name: str, class_id: int | None = None) -> int:
    """Give features another class (and its id when the layer has ``class_id``)."""
    values: dict[str, object] = {schema.CLASS: class_name}
    if class_id is not None and layer.fields().indexOf(schema.CLASS_ID) >= 0:
        values[schema.CLASS_ID] = class_id
    ids = list(feature_ids)
    return set_attribute(layer, ids, values, f"rsov: relabel {len(ids)} as {class_name}")


def has_unsaved_review(layer: QgsVectorLayer) -> bool:
    """Whether ``layer`` holds changes not written to its file yet."""
    return layer.isEditable() and layer.isModified()


def save_review(layer: QgsVectorLayer) -> None:
    """Write the layer's edit buffer to its file and stop editing it."""
    if layer.isEditable():
        _commit(layer, stop_editing=True)


def status_counts(layer: QgsVectorLayer) -> Counter:
    """How many shown features have each status (unsaved changes included)."""
    request = QgsFeatureRequest().setFlags(NO_GEOMETRY).setSubsetOfAttributes([schema.STATUS], layer.fields())
    return Counter(f[schema.STATUS] or schema.NEW for f in layer.getFeatures(request))


# --- the score filter ------------------------------------------------------------------------------
_SCORE_SUBSET = re.compile(rf'"{schema.SCORE}" >= ([0-9.]+)')


def score_filter(layer: QgsVectorLayer, min_score: float) -> None:
    """Show only features scoring at least ``min_score`` (0 shows all); refused while the layer
    holds unsaved changes."""
    _field_index(layer, schema.SCORE)
    subset = f'"{schema.SCORE}" >= {min_score:.4f}' if min_score > 0 else ""
    if layer.subsetString() == subset:
        return
    with outside_editing(layer):
        if not layer.setSubsetString(subset):
            raise ReviewError(f"Filtering {layer.name()} failed.")


def current_score_filter(layer: QgsVectorLayer) -> float:
    """The minimum score :func:`score_filter` set on ``layer`` (0 when there is none)."""
    match = _SCORE_SUBSET.fullmatch(layer.subsetString())
    return float(match.group(1)) if match else 0.0


def hidden_unreviewed(layer: QgsVectorLayer) -> int:
    """How many unreviewed features the score filter hides. Read as saved, through a second layer
    on the same data: QGIS cannot lift the filter of a layer being edited, and the hidden features
    have no unsaved changes (the filter cannot change while there are any)."""
    min_score = current_score_filter(layer)
    if not min_score:
        return 0
    everything = QgsVectorLayer(
        layer.source(), layer.name(), layer.providerType(), QgsVectorLayer.LayerOptions(False)
    )  # no style needed
    if not everything.setSubsetString(""):
        return 0
    request = QgsFeatureRequest().setFilterExpression(f'({UNREVIEWED}) AND "{schema.SCORE}" < {min_score}')
    return sum(1 for _ in everything.getFeatures(request.setFlags(NO_GEOMETRY)))


# --- next unreviewed ---------------------------------------------------------------------------------
def next_unreviewed(layer: QgsVectorLayer, after_id: int | None = None) -> QgsFeature | None:
    """The first shown ``new`` feature after feature ``after_id`` (wrapping around), by feature id."""
    _field_index(layer, schema.STATUS)
    features = sorted(layer.getFeatures(QgsFeatureRequest().setFilterExpression(UNREVIEWED)), key=lambda f: f.id())
    later = [f for f in features if after_id is None or f.id() > after_id]
    return (later or features or [None])[0]


def review_extent(view: QgsRectangle, box: QgsRectangle, smallest: float) -> QgsRectangle:
    """Where the map goes to show the feature bounded by ``box`` for review, from the extent
    ``view`` (in the same CRS): ``view`` only panned to centre the feature when its scale shows
    the feature with CONTEXT around it; else the feature with that context, at least ``smallest``
    map units across (a tiny feature is not blown up to fill the map)."""
    wanted = max(box.width() * CONTEXT, box.height() * CONTEXT, smallest)
    if wanted <= min(view.width(), view.height()) <= wanted * LOST:
        half_width, half_height = view.width() / 2, view.height() / 2
    else:
        half_width = half_height = wanted / 2
    centre = box.center()
    return QgsRectangle(
        centre.x() - half_width, centre.y() - half_height, centre.x() + half_width, centre.y() + half_height
    )


# --- merging -------------------------------------------------------------------------------------
def target_key(layer: QgsVectorLayer) -> str:
    """What the result remembers a merge target by, across projects: its data source, without
    any password and without its filter (filtering the target makes it no other layer)."""
    source = layer.publicSource()
    registry = QgsProviderRegistry.instance()
    parts = registry.decodeUri(layer.providerType(), source)
    if not any(parts.get(key) for key in FILTER_KEYS):
        return source
    return registry.encodeUri(layer.providerType(), {k: v for k, v in parts.items() if k not in FILTER_KEYS})


def merged_into(feature: QgsFeature) -> list[str]:
    """The targets (:func:`target_key`) ``feature`` was merged into."""
    if feature.fields().indexOf(schema.MERGED) < 0 or not feature[schema.MERGED]:
        return []
    try:
        targets = json.loads(feature[schema.MERGED])
    except ValueError:
        return []  # edited by hand into something else: the feature counts as never merged
    return targets if isinstance(targets, list) else []


def merge_accepted(
    source: QgsVectorLayer, target: QgsVectorLayer, context: QgsCoordinateTransformContext | None = None
) -> Merged:
    """Copy the accepted features of ``source`` not merged into ``target`` before into the polygon
    layer ``target`` (fields matched by name, geometry reprojected and split into parts for a
    single-part target), and record them as merged there. Features hidden by the score filter
    count too, since accepting them was explicit. The review of ``source`` must be saved."""
    _check_target(source, target)
    key = target_key(target)
    with outside_editing(source):
        with unfiltered(source):
            accepted = list(source.getFeatures(QgsFeatureRequest().setFilterExpression(ACCEPTED)))
        new = [f for f in accepted if key not in merged_into(f)]
        if new:
            with saved_edits(target):
                if not target.addFeatures(_copies(new, source, target, context)):
                    raise ReviewError(f"Adding features to {target.name()} failed.")
            _record_merge(source, new, key)
    target.triggerRepaint()
    return Merged(len(new), len(accepted) - len(new))


def _check_target(source: QgsVectorLayer, target: QgsVectorLayer) -> None:
    polygon = enum_value((Qgis, "GeometryType.Polygon"), (QgsWkbTypes, "PolygonGeometry"))
    if target.geometryType() != polygon:
        raise ReviewError(f"The target layer {target.name()} does not hold polygons.")
    if target.id() == source.id():
        raise ReviewError("Choose a target layer other than the result layer itself.")


def _copies(
    features: list[QgsFeature],
    source: QgsVectorLayer,
    target: QgsVectorLayer,
    context: QgsCoordinateTransformContext | None,
) -> list[QgsFeature]:
    """``features`` of ``source`` as features of ``target``: reprojected, then made compatible by
    QGIS (fields matched by name, primary keys left to the target, geometries of the target's type:
    a multipolygon becomes one feature per part in a single-part target, Z and M are added or dropped)."""
    transform = None
    if source.crs() != target.crs():
        transform = QgsCoordinateTransform(source.crs(), target.crs(), context or QgsCoordinateTransformContext())
    moved = []
    for feature in features:
        copy = QgsFeature(feature)
        if transform is not None:
            geometry = copy.geometry()
            geometry.transform(transform)
            copy.setGeometry(geometry)
        if copy.fields().indexOf(schema.MERGED) >= 0:
            copy[schema.MERGED] = None  # the source's record of where it went, not the target's
        moved.append(copy)
    return QgsVectorLayerUtils.makeFeaturesCompatible(moved, target, QgsFeatureSink.SinkFlag.RegeneratePrimaryKey)


def _record_merge(source: QgsVectorLayer, features: list[QgsFeature], key: str) -> None:
    """Add ``key`` to the ``merged_into`` field of ``features`` (the field is added when missing),
    saved at once like the copies in the target."""
    with saved_edits(source):
        if source.fields().indexOf(schema.MERGED) < 0 and not source.addAttribute(text_field(schema.MERGED)):
            raise ReviewError(f"The field {schema.MERGED} cannot be added to {source.name()}.")
        index = source.fields().indexOf(schema.MERGED)
        for feature in features:
            if not source.changeAttributeValue(feature.id(), index, json.dumps(merged_into(feature) + [key])):
                raise ReviewError(f"Feature {feature.id()} of {source.name()} cannot be changed.")
