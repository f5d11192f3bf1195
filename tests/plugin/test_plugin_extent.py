"""Canvas extent -> raster request: CRS transform, grid snapping, clipping, chips."""

import math

import pytest
from helpers import xyz_layer
from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)

from rsov_qgis.extent import ExtentError, chip_pipe, raster_request, visible_extent_request, write_chip

WEB_MERCATOR = QgsCoordinateReferenceSystem("EPSG:3857")


@pytest.fixture
def raster_4326(oem_raster, tmp_path) -> QgsRasterLayer:
    """The OpenEarthMap sample warped to EPSG:4326 (in tmp_path)."""
    path = tmp_path / "oem_4326.tif"
    gdal.Warp(str(path), str(oem_raster), dstSRS="EPSG:4326")
    layer = QgsRasterLayer(str(path), "oem_4326")
    assert layer.isValid() and layer.crs().authid() == "EPSG:4326"
    QgsProject.instance().addMapLayer(layer)
    return layer


def _canvas_on(canvas, layer, shrink: float, crs=WEB_MERCATOR, shift=(0.0, 0.0)):
    """Show the central ``shrink`` part of ``layer`` (shifted by layer-widths) in ``crs``."""
    canvas.setDestinationCrs(crs)
    to_canvas = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
    extent = to_canvas.transformBoundingBox(layer.extent())
    centre = extent.center()
    w, h = extent.width() * shrink, extent.height() * shrink
    cx, cy = centre.x() + shift[0] * extent.width(), centre.y() + shift[1] * extent.height()
    canvas.setExtent(QgsRectangle(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return canvas.mapSettings()


def _on_grid(value, origin, step):
    ratio = (value - origin) / step
    return abs(ratio - round(ratio)) < 1e-6


def test_geographic_raster_with_web_mercator_canvas(qgis_canvas, raster_4326):
    settings = _canvas_on(qgis_canvas, raster_4326, 0.5)
    request = visible_extent_request(settings, raster_4326, QgsProject.instance().transformContext(), True)
    assert request.crs == "EPSG:4326" and request.path == raster_4326.source()
    extent, px, py = raster_4326.extent(), raster_4326.rasterUnitsPerPixelX(), raster_4326.rasterUnitsPerPixelY()
    minx, miny, maxx, maxy = request.bbox
    # snapped to the raster grid, inside the raster
    for x in (minx, maxx):
        assert _on_grid(x, extent.xMinimum(), px)
    for y in (miny, maxy):
        assert _on_grid(y, extent.yMaximum(), py)
    assert extent.contains(QgsRectangle(*request.bbox))
    assert (request.width, request.height) == (round((maxx - minx) / px), round((maxy - miny) / py))
    # covers the visible extent, and not much more than it
    visible = QgsCoordinateTransform(WEB_MERCATOR, raster_4326.crs(), QgsProject.instance()).transformBoundingBox(
        settings.visibleExtent()
    )
    assert QgsRectangle(*request.bbox).contains(visible.intersect(extent))
    assert maxx - minx <= visible.width() + 2 * px and maxy - miny <= visible.height() + 2 * py


def test_partly_covered_extent_is_clipped_and_snapped(oem_layer):
    extent, px = oem_layer.extent(), oem_layer.rasterUnitsPerPixelX()
    rect = QgsRectangle(
        extent.center().x() + 0.3 * px, extent.yMinimum() - 100, extent.xMaximum() + 300, extent.yMaximum() + 100
    )
    request = raster_request(rect, oem_layer.crs(), oem_layer, QgsProject.instance().transformContext(), True)
    assert request.bbox == pytest.approx((extent.center().x(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()))
    assert (request.width, request.height) == (500, 1000)


def test_extent_off_the_raster_is_a_clear_error(qgis_canvas, raster_4326):
    settings = _canvas_on(qgis_canvas, raster_4326, 0.5, shift=(3.0, 0.0))
    with pytest.raises(ExtentError, match="does not overlap the raster oem_4326"):
        visible_extent_request(settings, raster_4326, QgsProject.instance().transformContext(), True)


def test_remote_backend_gets_a_chip_at_canvas_resolution(qgis_canvas, raster_4326, tmp_path):
    settings = _canvas_on(qgis_canvas, raster_4326, 0.5)
    request = visible_extent_request(settings, raster_4326, QgsProject.instance().transformContext(), False)
    assert request.path is None
    size = settings.outputSize()
    assert max(request.width, request.height) <= max(size.width(), size.height()) + 1
    chip = write_chip(chip_pipe(raster_4326), request, tmp_path / "chip.tif")
    ds = gdal.Open(str(chip))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (request.width, request.height, 3)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    assert (x0, y0) == pytest.approx((request.bbox[0], request.bbox[3]))
    assert x0 + dx * ds.RasterXSize == pytest.approx(request.bbox[2])
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "4326"


def test_whole_raster_request_in_raster_crs(oem_layer):
    request = raster_request(
        oem_layer.extent(), oem_layer.crs(), oem_layer, QgsProject.instance().transformContext(), True
    )
    assert (request.width, request.height) == (1000, 1000) and request.crs == "EPSG:25832"


def test_web_tile_layer_is_exported_as_an_rgba_chip(tmp_path, qgis_canvas, qgis_new_project):
    """An XYZ layer (tiles from disk, no network) cannot be read by path: it becomes a chip."""
    layer = xyz_layer(tmp_path / "tiles", lambda x, y: (200, 40 + 100 * x, 20))
    QgsProject.instance().addMapLayer(layer)
    rect = QgsRectangle(-2_000_000, 1_000_000, 2_000_000, 3_000_000)  # straddles the x = 0 tile edge
    request = raster_request(rect, WEB_MERCATOR, layer, QgsProject.instance().transformContext(), True, 10_000.0)
    assert request.path is None and (request.width, request.height) == (400, 200)
    chip = write_chip(chip_pipe(layer), request, tmp_path / "chip.tif")
    ds = gdal.Open(str(chip))
    assert ds.RasterCount >= 3
    red, green = ds.GetRasterBand(1).ReadAsArray(), ds.GetRasterBand(2).ReadAsArray()
    assert red[100, 10] == 200 and green[100, 10] == 40 and green[100, 390] == 140
    assert math.isclose(ds.GetGeoTransform()[1], 10_000.0)
