# SPDX-License-Identifier: GPL-2.0-or-later
"""From a map extent to what the backend is asked to segment.

The extent is transformed into the raster's CRS and intersected with the raster. A local file
the backend can open is sent by path with the extent snapped outward to the raster grid; any
other raster (web tiles, WMS, remote files, or a backend on another machine) is exported to a
GeoTIFF chip of that extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsMapSettings,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

from .backend_client import InstanceOptions, JobRequest, SegmentOptions
from .compat import enum_value
from .errors import RsovPluginError

MAX_CHIP_SIDE = 2048  # pixels; a larger chip is written at a coarser resolution
DEFAULT_CHIP_SIDE = 1024  # pixels of a chip when nothing suggests a resolution
_EPS = 1e-6  # of a pixel: coordinates this close to a grid line count as on it


class ExtentError(RsovPluginError):
    """The extent cannot be segmented; the message says why and what to do."""


@dataclass(frozen=True)
class RasterRequest:
    """An extent of one raster, in the raster's CRS, ready for a backend job."""

    bbox: tuple[float, float, float, float]
    crs: str  # authority id ("EPSG:25832") or WKT of the raster CRS
    width: int  # pixels
    height: int
    path: str | None  # a local file the backend reads; None: send a chip
    mask: dict[str, Any] | None = None  # GeoJSON polygons in the raster CRS: pixels outside get no class

    def job(self, classes: list[str], options: SegmentOptions, instance: InstanceOptions | None = None) -> JobRequest:
        """The backend request for these classes (``raster`` is left out for chips); an instance
        job when ``instance`` is given."""
        return JobRequest(
            classes=classes,
            bbox=self.bbox,
            bbox_crs=self.crs,
            raster=self.path,
            options=options,
            instance=instance,
            mask=self.mask,
        )

    def readable_area(self, layer: QgsRasterLayer) -> QgsRectangle:
        """Where the backend can read pixels, in the raster CRS: the whole file when it reads the
        file by path, only the chip otherwise."""
        return layer.extent() if self.path else QgsRectangle(*self.bbox)


def crs_id(crs: QgsCoordinateReferenceSystem) -> str:
    """The authority id when there is one, else the WKT."""
    if crs.authid():
        return crs.authid()
    return crs.toWkt(enum_value((Qgis, "CrsWktVariant.Preferred"), (QgsCoordinateReferenceSystem, "WKT_PREFERRED")))


def local_raster_path(layer: QgsRasterLayer) -> str | None:
    """The file behind a GDAL layer when it is a plain local file (not /vsicurl/, not a URL)."""
    if layer.providerType() != "gdal":
        return None
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or ""
    return str(Path(path).resolve()) if path and Path(path).is_file() else None


def to_layer_crs(
    rect: QgsRectangle, crs: QgsCoordinateReferenceSystem, layer: QgsRasterLayer, context: QgsCoordinateTransformContext
) -> QgsRectangle:
    """``rect`` (in ``crs``) as a bounding box in the layer's CRS."""
    if not crs.isValid() or crs == layer.crs():
        return QgsRectangle(rect)
    try:
        return QgsCoordinateTransform(crs, layer.crs(), context).transformBoundingBox(rect)
    except QgsCsException:
        raise ExtentError(
            f"The extent cannot be transformed into the CRS of {layer.name()}: "
            "zoom to the raster (right-click the layer > Zoom to Layer)."
        ) from None


def snap_to_grid(rect: QgsRectangle, layer: QgsRasterLayer) -> QgsRectangle:
    """Grow ``rect`` outward to whole raster pixels (the grid starts at the top-left corner)."""
    extent = layer.extent()
    px, py = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    x0, y0 = extent.xMinimum(), extent.yMaximum()
    return QgsRectangle(
        x0 + math.floor((rect.xMinimum() - x0) / px + _EPS) * px,
        y0 - math.ceil((y0 - rect.yMinimum()) / py - _EPS) * py,
        x0 + math.ceil((rect.xMaximum() - x0) / px - _EPS) * px,
        y0 - math.floor((y0 - rect.yMaximum()) / py + _EPS) * py,
    )


def raster_request(
    rect: QgsRectangle,
    crs: QgsCoordinateReferenceSystem,
    layer: QgsRasterLayer,
    context: QgsCoordinateTransformContext,
    local_backend: bool,
    units_per_pixel: float | None = None,
) -> RasterRequest:
    """The part of ``rect`` (in ``crs``) that covers ``layer``, as a backend request.

    ``units_per_pixel`` (raster CRS units) sets the chip resolution of rasters sent as chips;
    by default the raster's own resolution, or 1024 pixels on the long side for web layers.
    """
    wanted = to_layer_crs(rect, crs, layer, context)
    area = wanted.intersect(layer.extent())
    if area.isEmpty() or area.width() <= 0 or area.height() <= 0:
        raise ExtentError(
            f"The extent does not overlap the raster {layer.name()}: pan or zoom to it "
            "(right-click the layer > Zoom to Layer) and try again."
        )
    path = local_raster_path(layer) if local_backend else None
    if path:
        area = snap_to_grid(area, layer).intersect(layer.extent())
        width = round(area.width() / layer.rasterUnitsPerPixelX())
        height = round(area.height() / layer.rasterUnitsPerPixelY())
    else:
        width, height = _chip_size(area, layer, units_per_pixel)
    bbox = (area.xMinimum(), area.yMinimum(), area.xMaximum(), area.yMaximum())
    return RasterRequest(bbox, crs_id(layer.crs()), max(1, width), max(1, height), path)


def _chip_size(area: QgsRectangle, layer: QgsRasterLayer, units_per_pixel: float | None) -> tuple[int, int]:
    provider = layer.dataProvider()
    has_size = bool(
        provider.capabilities() & enum_value((Qgis, "RasterInterfaceCapability.Size"), (QgsRasterDataProvider, "Size"))
    )
    upp = units_per_pixel or (layer.rasterUnitsPerPixelX() if has_size and provider.xSize() > 0 else None)
    if not upp:
        upp = max(area.width(), area.height()) / DEFAULT_CHIP_SIDE
    scale = max(1.0, max(area.width(), area.height()) / upp / MAX_CHIP_SIDE)
    return math.ceil(area.width() / upp / scale), math.ceil(area.height() / upp / scale)


def canvas_units_per_pixel(
    map_settings: QgsMapSettings, layer: QgsRasterLayer, context: QgsCoordinateTransformContext
) -> float | None:
    """The canvas's on-screen resolution in the raster's CRS units (the resolution of chips)."""
    in_layer_crs = to_layer_crs(map_settings.visibleExtent(), map_settings.destinationCrs(), layer, context)
    size = map_settings.outputSize()
    return max(in_layer_crs.width() / max(1, size.width()), in_layer_crs.height() / max(1, size.height())) or None


def visible_extent_request(
    map_settings: QgsMapSettings, layer: QgsRasterLayer, context: QgsCoordinateTransformContext, local_backend: bool
) -> RasterRequest:
    """The canvas's visible extent as a request; chips get the canvas's on-screen resolution."""
    return raster_request(
        map_settings.visibleExtent(),
        map_settings.destinationCrs(),
        layer,
        context,
        local_backend,
        canvas_units_per_pixel(map_settings, layer, context),
    )


def chip_pipe(layer: QgsRasterLayer) -> QgsRasterPipe:
    """A pipe over a clone of the layer's provider, made on the main thread for a worker to write."""
    pipe = QgsRasterPipe()
    if not pipe.set(layer.dataProvider().clone()):
        raise ExtentError(f"The raster {layer.name()} cannot be exported as a chip.")
    return pipe


def write_chip(
    pipe: QgsRasterPipe, request: RasterRequest, path: Path, feedback: QgsRasterBlockFeedback | None = None
) -> Path:
    """Write the request's extent from ``pipe`` as a GeoTIFF chip (web layers give RGBA)."""
    writer = QgsRasterFileWriter(str(path))
    writer.setOutputFormat("GTiff")
    crs = QgsCoordinateReferenceSystem(request.crs)
    error = writer.writeRaster(
        pipe, request.width, request.height, QgsRectangle(*request.bbox), crs, QgsCoordinateTransformContext(), feedback
    )
    if error != enum_value((Qgis, "RasterFileWriterResult.Success"), (QgsRasterFileWriter, "NoError")):
        raise ExtentError(f"Exporting the raster extent to {path.name} failed (writer error {error}).")
    return path
