# SPDX-License-Identifier: GPL-2.0-or-later
"""The processing area of a job: the visible extent, the whole layer, or polygons (a mask).

Polygons are sent as the job's ``mask`` in the raster CRS (pixels outside them get no class),
with the part of the raster their bounds cover as the job's extent.
"""

from __future__ import annotations

from collections.abc import Iterable

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsGeometry,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from .extent import (
    ExtentError,
    RasterRequest,
    canvas_units_per_pixel,
    local_raster_path,
    raster_request,
    visible_extent_request,
)
from .geojson import POLYGON, feature_collection, in_crs, is_polygon, transform_between

VISIBLE, LAYER, MASK = "visible", "layer", "mask"
# (key, what the dock's combo shows, the segment button's text)
AREAS = (
    (VISIBLE, "Visible extent", "Segment visible extent"),
    (LAYER, "Whole layer", "Segment whole layer"),
    (MASK, "Selected polygons of", "Segment selected polygons"),
)


def whole_layer_request(
    layer: QgsRasterLayer, context: QgsCoordinateTransformContext, local_backend: bool
) -> RasterRequest:
    """The whole raster, for a file the backend reads by path (a web layer has no whole)."""
    if not (local_backend and local_raster_path(layer)):
        raise ExtentError(
            f"The whole layer of {layer.name()} cannot be segmented because the backend cannot read it "
            "as a local file (web layers have no bounds): choose Visible extent or Selected polygons."
        )
    return raster_request(layer.extent(), layer.crs(), layer, context, local_backend)


def mask_request(
    geometries: Iterable[QgsGeometry],
    crs: QgsCoordinateReferenceSystem,
    layer: QgsRasterLayer,
    context: QgsCoordinateTransformContext,
    local_backend: bool,
    units_per_pixel: float | None = None,
    within: QgsRectangle | None = None,
    source: str = "The polygons",
) -> RasterRequest:
    """A request for the polygons among ``geometries`` (in ``crs``) that overlap ``layer``: their
    bounds on the raster (also within ``within``, in the raster CRS, when given) as the extent,
    the polygons in the raster CRS as the mask. ``source`` names the polygons in messages."""
    polygons = [g for g in geometries if is_polygon(g)]
    if not polygons:
        raise ExtentError(f"{source} hold no polygons: the processing area needs at least one.")
    transform = transform_between(crs, layer.crs(), context)
    area = QgsRectangle(layer.extent())
    if within is not None:
        area = area.intersect(within)
    inside = []
    for polygon in polygons:
        try:
            geometry = in_crs(polygon, transform)
        except QgsCsException:
            continue  # nowhere near the raster
        if not area.isEmpty() and geometry.intersects(area):
            inside.append(geometry)
    if not inside:
        raise ExtentError(
            f"{source} do not overlap the raster {layer.name()}"
            + (" within the extent" if within is not None else "")
            + ": select polygons on it."
        )
    bounds = QgsRectangle(inside[0].boundingBox())
    for geometry in inside[1:]:
        bounds.combineExtentWith(geometry.boundingBox())
    if within is not None:
        bounds = bounds.intersect(within)
    request = raster_request(bounds, layer.crs(), layer, context, local_backend, units_per_pixel)
    return RasterRequest(
        request.bbox,
        request.crs,
        request.width,
        request.height,
        request.path,
        feature_collection((({}, g) for g in inside), request.crs),
    )


def selected_polygons(layer) -> list[QgsGeometry]:
    """The selected polygons of ``layer`` (a polygon layer); ExtentError says what to do otherwise."""
    if not isinstance(layer, QgsVectorLayer) or layer.geometryType() != POLYGON:
        raise ExtentError("Choose the polygon layer whose selected polygons are the processing area.")
    geometries = [f.geometry() for f in layer.getSelectedFeatures() if is_polygon(f.geometry())]
    if not geometries:
        raise ExtentError(
            f"No polygons of {layer.name()} are selected: select the processing area on it "
            "(Select Features tool) first."
        )
    return geometries


def area_request(
    area: str,
    map_settings: QgsMapSettings,
    layer: QgsRasterLayer,
    context: QgsCoordinateTransformContext,
    local_backend: bool,
    mask_layer=None,
) -> RasterRequest:
    """The request for the dock's processing area ``area`` (VISIBLE, LAYER or MASK: the selected
    polygons of ``mask_layer``); chips get the canvas's on-screen resolution."""
    if area == LAYER:
        return whole_layer_request(layer, context, local_backend)
    if area == MASK:
        polygons = selected_polygons(mask_layer)
        by_path = local_backend and local_raster_path(layer)
        return mask_request(
            polygons,
            mask_layer.crs(),
            layer,
            context,
            local_backend,
            None if by_path else canvas_units_per_pixel(map_settings, layer, context),
            source=f"The selected polygons of {mask_layer.name()}",
        )
    return visible_extent_request(map_settings, layer, context, local_backend)
