# SPDX-License-Identifier: GPL-2.0-or-later
"""Example polygons for instance mode: picked on the map, kept in the project, sent with jobs.

A project keeps its examples in its custom properties (scope ``rsov``, key ``examples``) as a
GeoJSON FeatureCollection with a ``class`` property per polygon and a ``crs`` member naming its
CRS, so they are saved in the .qgz/.qgs file with the project. A job gets the examples of its
own classes, transformed into the raster CRS and limited to those on pixels the backend reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsFields,
    QgsGeometry,
    QgsJsonUtils,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from . import schema
from .errors import RsovPluginError
from .extent import RasterRequest, crs_id
from .geojson import POLYGON, feature_collection, in_crs, is_polygon, transform_between
from .results import text_field

PROJECT_SCOPE, PROJECT_KEY = "rsov", "examples"
DEFAULT_CRS = "EPSG:4326"  # of a GeoJSON collection without a crs member (RFC 7946)


class ExampleError(RsovPluginError):
    """Examples cannot be taken or read; the message says why."""


@dataclass(frozen=True)
class Example:
    """One example object: a polygon of a class."""

    class_name: str
    geometry: QgsGeometry


def examples_collection(examples: Iterable[Example], crs_name: str) -> dict[str, Any]:
    """GeoJSON of ``examples`` (a ``class`` property each) whose coordinates are in ``crs_name``."""
    return feature_collection((({schema.CLASS: e.class_name}, e.geometry) for e in examples), crs_name)


@dataclass
class ExampleSet:
    """Examples in one CRS: that of the first ones added."""

    crs: QgsCoordinateReferenceSystem = field(default_factory=QgsCoordinateReferenceSystem)
    examples: list[Example] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many examples each class has, classes in the order they first came."""
        return dict(Counter(e.class_name for e in self.examples))

    def add(
        self,
        class_name: str,
        geometries: Iterable[QgsGeometry],
        crs: QgsCoordinateReferenceSystem,
        context: QgsCoordinateTransformContext,
    ) -> int:
        """Add the polygons among ``geometries`` (in ``crs``) as examples of ``class_name``;
        returns how many were added."""
        if not self.examples:
            self.crs = crs
        transform = transform_between(crs, self.crs, context)
        try:
            added = [Example(class_name, in_crs(g, transform)) for g in geometries if is_polygon(g)]
        except QgsCsException:
            raise ExampleError(
                f"The polygons cannot be transformed into the examples' CRS "
                f"{self.crs.authid() or self.crs.description()}."
            ) from None
        self.examples += added
        return len(added)

    def for_job(
        self,
        class_names: list[str],
        layer: QgsRasterLayer,
        request: RasterRequest,
        context: QgsCoordinateTransformContext,
    ) -> dict[str, Any] | None:
        """The ``examples`` of a job on ``request`` (of ``layer``): those of ``class_names``
        (matched regardless of case, sent with the vocabulary's spelling) in the raster CRS,
        on the pixels the backend reads; None when there are none."""
        names = {name.lower(): name for name in class_names}
        area = request.readable_area(layer)
        transform = transform_between(self.crs, layer.crs(), context)
        chosen = []
        for example in self.examples:
            name = names.get(example.class_name.lower())
            if name is None:
                continue
            try:
                geometry = in_crs(example.geometry, transform)
            except QgsCsException:
                continue  # nowhere near the raster
            if geometry.intersects(area):
                chosen.append(Example(name, geometry))
        return examples_collection(chosen, request.crs) if chosen else None

    def to_geojson(self) -> dict[str, Any]:
        """The stored form."""
        return examples_collection(self.examples, crs_id(self.crs))

    @classmethod
    def from_geojson(cls, data: dict[str, Any]) -> ExampleSet:
        """Read :meth:`to_geojson`'s form (any GeoJSON of polygons with a ``class`` property)."""
        name = ((data.get("crs") or {}).get("properties") or {}).get("name") or DEFAULT_CRS
        fields = QgsFields()
        fields.append(text_field(schema.CLASS))
        features = QgsJsonUtils.stringToFeatureList(json.dumps(data), fields)
        return cls(
            QgsCoordinateReferenceSystem(name),
            [
                Example(str(f[schema.CLASS]), f.geometry())
                for f in features
                if f[schema.CLASS] and is_polygon(f.geometry())
            ],
        )


def project_examples(project: QgsProject) -> ExampleSet:
    """The examples stored in ``project`` (an empty set when there are none)."""
    text, _ = project.readEntry(PROJECT_SCOPE, PROJECT_KEY, "")
    if not text:
        return ExampleSet()
    try:
        return ExampleSet.from_geojson(json.loads(text))
    except (ValueError, AttributeError):
        raise ExampleError(
            "The examples stored in this project cannot be read: clear them and pick them again."
        ) from None


def store_examples(project: QgsProject, examples: ExampleSet) -> None:
    """Keep ``examples`` in ``project`` (saved with it; the project is marked modified)."""
    if examples.examples:
        project.writeEntry(PROJECT_SCOPE, PROJECT_KEY, json.dumps(examples.to_geojson()))
    else:
        project.removeEntry(PROJECT_SCOPE, PROJECT_KEY)


def selected_polygons(layer) -> list[QgsGeometry]:
    """The selected polygons of the vector layer ``layer``; ExampleError says what to do otherwise."""
    if not isinstance(layer, QgsVectorLayer) or layer.geometryType() != POLYGON:
        raise ExampleError(
            "Make a polygon layer active (a result layer or one you drew) and select the example objects on it."
        )
    geometries = [f.geometry() for f in layer.getSelectedFeatures() if is_polygon(f.geometry())]
    if not geometries:
        raise ExampleError(f"Select the example objects of {layer.name()} first (Select Features tool).")
    return geometries
