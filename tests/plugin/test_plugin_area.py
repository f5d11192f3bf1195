"""Processing areas (visible extent, whole layer, selected polygons as a mask) and the estimate
line: the requests the area functions build, and what the dock sends to the fake backend."""

import time

import pytest
from helpers import polygon_layer, xyz_layer
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
)

from rsov_qgis.area import LAYER, MASK, VISIBLE, mask_request, selected_polygons, whole_layer_request
from rsov_qgis.backend_client import SegmentOptions
from rsov_qgis.extent import ExtentError

TIMEOUT_MS = 30000
CONTEXT = QgsCoordinateTransformContext()
UTM = QgsCoordinateReferenceSystem("EPSG:25832")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
# inside the OpenEarthMap sample (346000..346500, 5647500..5648000 in EPSG:25832, 0.5 m pixels), off its grid
FIELD = "POLYGON((346100.2 5647600.2, 346180.3 5647600.2, 346180.3 5647650.7, 346100.2 5647650.7, 346100.2 5647600.2))"
POND = "POLYGON((346300 5647800, 346340 5647800, 346340 5647830, 346300 5647800))"
FAR_AWAY = "POLYGON((340000 5640000, 340020 5640000, 340020 5640020, 340000 5640000))"
STRADDLING = "POLYGON((346450 5647900, 346600 5647900, 346600 5648100, 346450 5648100, 346450 5647900))"


def in_4326(wkt: str) -> str:
    geometry = QgsGeometry.fromWkt(wkt)
    geometry.transform(QgsCoordinateTransform(UTM, WGS84, CONTEXT))
    return geometry.asWkt(10)


def _messages(iface, level):
    return [m.split(":", 1)[1] for m in iface.messageBar().get_messages(getattr(Qgis.MessageLevel, level))]


def _on_grid(value, origin, step=0.5):
    ratio = (value - origin) / step
    return abs(ratio - round(ratio)) < 1e-6


def _assert_snapped_bounds(bbox, inner: QgsRectangle):
    """``bbox`` holds ``inner``, lies on the raster's 0.5 m grid and is at most a pixel larger each side."""
    minx, miny, maxx, maxy = bbox
    assert QgsRectangle(*bbox).contains(inner)
    assert all(_on_grid(x, 346000) for x in (minx, maxx)) and all(_on_grid(y, 5648000) for y in (miny, maxy))
    assert inner.xMinimum() - minx < 0.5 and maxx - inner.xMaximum() < 0.5
    assert inner.yMinimum() - miny < 0.5 and maxy - inner.yMaximum() < 0.5


def _choose_area(dock, area, mask_layer=None):
    dock.area_combo.setCurrentIndex(dock.area_combo.findData(area))
    if mask_layer is not None:
        dock.mask_combo.setLayer(mask_layer)


def _run(dock, qtbot):
    task = dock.segment()
    assert task is not None, f"the task did not start: {dock.stage_label.text()}"
    qtbot.waitUntil(lambda: dock.task is None, timeout=TIMEOUT_MS)
    return task


def _show_central_half(canvas, layer):
    canvas.setDestinationCrs(layer.crs())
    c = layer.extent().center()
    canvas.setExtent(QgsRectangle(c.x() - 125, c.y() - 125, c.x() + 125, c.y() + 125))


# --- the requests ---------------------------------------------------------------------------------
def test_whole_layer_is_the_raster_extent_for_files_only(oem_layer, tmp_path):
    request = whole_layer_request(oem_layer, CONTEXT, local_backend=True)
    assert request.bbox == pytest.approx((346000, 5647500, 346500, 5648000)) and request.mask is None
    assert (request.width, request.height) == (1000, 1000) and request.path
    with pytest.raises(ExtentError, match="cannot read it as a local file"):
        whole_layer_request(oem_layer, CONTEXT, local_backend=False)  # a backend on another machine
    with pytest.raises(ExtentError, match="whole layer of tiles cannot be segmented") as info:
        whole_layer_request(xyz_layer(tmp_path / "tiles", lambda x, y: (1, 2, 3)), CONTEXT, local_backend=True)
    assert str(info.value).count(".") == 1 and str(info.value).endswith("Selected polygons.")  # one sentence


def test_mask_is_reprojected_into_the_raster_crs_with_its_bounds_as_the_extent(oem_layer):
    geometries = [
        QgsGeometry.fromWkt(in_4326(FIELD)),
        QgsGeometry.fromWkt(in_4326(FAR_AWAY)),
        QgsGeometry.fromWkt("POINT(6.8 50.9)"),
    ]
    request = mask_request(geometries, WGS84, oem_layer, CONTEXT, local_backend=True)
    mask = request.mask
    assert mask["type"] == "FeatureCollection"
    assert mask["crs"] == {"type": "name", "properties": {"name": "EPSG:25832"}}
    [feature] = mask["features"]  # the one off the raster and the point are left out
    assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    ring = feature["geometry"]["coordinates"][0]
    ring = ring[0] if feature["geometry"]["type"] == "MultiPolygon" else ring
    assert ring[0] == pytest.approx([346100.2, 5647600.2], abs=0.01)
    _assert_snapped_bounds(request.bbox, QgsGeometry.fromWkt(FIELD).boundingBox())
    job = request.job(["water"], SegmentOptions())
    assert job.to_json()["mask"] is mask and job.to_json()["bbox_crs"] == "EPSG:25832"


def test_mask_bounds_are_clipped_to_the_raster_and_the_extent(oem_layer):
    request = mask_request([QgsGeometry.fromWkt(STRADDLING), QgsGeometry.fromWkt(POND)], UTM, oem_layer, CONTEXT, True)
    assert request.bbox == pytest.approx((346300, 5647800, 346500, 5648000))
    assert len(request.mask["features"]) == 2  # the mask itself is sent whole
    within = QgsRectangle(346000, 5647500, 346400, 5647850)
    request = mask_request(
        [QgsGeometry.fromWkt(STRADDLING), QgsGeometry.fromWkt(POND)], UTM, oem_layer, CONTEXT, True, within=within
    )
    assert request.bbox == pytest.approx((346300, 5647800, 346340, 5647830))
    assert len(request.mask["features"]) == 1


def test_mask_errors_are_one_clear_sentence(oem_layer):
    with pytest.raises(ExtentError, match="The polygons do not overlap the raster oem_koeln_50"):
        mask_request([QgsGeometry.fromWkt(in_4326(FAR_AWAY))], WGS84, oem_layer, CONTEXT, True)
    with pytest.raises(ExtentError, match="hold no polygons"):
        mask_request([QgsGeometry.fromWkt("POINT(346100 5647600)")], UTM, oem_layer, CONTEXT, True)
    with pytest.raises(ExtentError, match="Choose the polygon layer"):
        selected_polygons(None)
    layer = polygon_layer([FIELD])
    layer.removeSelection()
    with pytest.raises(ExtentError, match="No polygons of drawn are selected"):
        selected_polygons(layer)


# --- the dock -------------------------------------------------------------------------------------
def test_area_choice_names_the_button_and_is_remembered(dock, oem_layer):
    assert [dock.area_combo.itemData(i) for i in range(dock.area_combo.count())] == [VISIBLE, LAYER, MASK]
    assert dock.segment_button.text() == "Segment visible extent" and not dock.mask_combo.isEnabled()
    _choose_area(dock, LAYER)
    assert dock.segment_button.text() == "Segment whole layer"
    drawn = polygon_layer([FIELD])
    QgsProject.instance().addMapLayer(drawn)
    _choose_area(dock, MASK, drawn)
    assert dock.segment_button.text() == "Segment selected polygons of drawn" and dock.mask_combo.isEnabled()
    from rsov_qgis.settings import Settings

    assert Settings.load().area == MASK


def test_dock_sends_the_visible_extent_without_a_mask(fake_backend, dock, oem_layer, qgis_canvas, qtbot):
    _show_central_half(qgis_canvas, oem_layer)
    _run(dock, qtbot)
    sent = fake_backend.requests[0]["json"]
    visible = qgis_canvas.mapSettings().visibleExtent().intersect(oem_layer.extent())
    assert "mask" not in sent and QgsRectangle(*sent["bbox"]).contains(visible)
    assert QgsRectangle(*sent["bbox"]).height() == pytest.approx(250, abs=1)  # not the whole raster
    assert fake_backend.results == ["format=gpkg"]  # results come as GeoPackages (GeoJSON may be too large)


def test_dock_sends_the_whole_layer(fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot):
    _show_central_half(qgis_canvas, oem_layer)  # the view does not matter
    _choose_area(dock, LAYER)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == []
    sent = fake_backend.requests[0]["json"]
    assert sent["bbox"] == pytest.approx([346000, 5647500, 346500, 5648000]) and "mask" not in sent
    assert sent["bbox_crs"] == "EPSG:25832" and sent["options"] == {"threshold": 0.3}  # auto resolution: none sent


def test_dock_sends_selected_polygons_as_a_mask_in_the_raster_crs(
    fake_backend, dock, oem_layer, qgis_canvas, qgis_iface, qtbot
):
    drawn = polygon_layer([in_4326(FIELD), in_4326(POND)], crs="EPSG:4326")
    QgsProject.instance().addMapLayer(drawn)
    drawn.selectByIds([next(drawn.getFeatures()).id()])  # the field only
    qgis_canvas.setDestinationCrs(oem_layer.crs())
    qgis_canvas.setExtent(QgsRectangle(346400, 5647900, 346450, 5647950))  # the view does not matter
    _choose_area(dock, MASK, drawn)
    _run(dock, qtbot)
    assert _messages(qgis_iface, "Critical") == []
    sent = fake_backend.requests[0]["json"]
    assert sent["mask"]["crs"]["properties"]["name"] == "EPSG:25832" == sent["bbox_crs"]
    [feature] = sent["mask"]["features"]
    mask = QgsGeometry.fromWkt(FIELD)
    sent_geometry = QgsGeometry.fromWkt(
        "POLYGON((" + ",".join(f"{x} {y}" for x, y in feature["geometry"]["coordinates"][0]) + "))"
    )
    assert sent_geometry.symDifference(mask).area() < 0.1  # the same field, in metres
    _assert_snapped_bounds(sent["bbox"], mask.boundingBox())
    [result] = [node.layer() for node in QgsProject.instance().layerTreeRoot().findGroup("rsov results").findLayers()]
    assert result.featureCount() == 3
    for feature in result.getFeatures():  # the fake cuts its strips to the mask, as the backend classifies inside only
        assert mask.buffer(0.01, 4).contains(feature.geometry())


@pytest.mark.parametrize("case", ["empty selection", "off the raster", "whole web layer", "no mask layer"])
def test_area_errors_send_nothing_and_say_why_in_the_dock(case, fake_backend, dock, oem_layer, qgis_iface, tmp_path):
    if case == "whole web layer":
        layer = xyz_layer(tmp_path / "tiles", lambda x, y: (30, 160, 60))
        QgsProject.instance().addMapLayer(layer)
        dock.raster_combo.setLayer(layer)
        _choose_area(dock, LAYER)
        expected = "The whole layer of tiles cannot be segmented"
    elif case == "no mask layer":
        _choose_area(dock, MASK)
        expected = "Choose the polygon layer"
    else:
        drawn = polygon_layer([in_4326(FAR_AWAY)], crs="EPSG:4326")
        QgsProject.instance().addMapLayer(drawn)
        if case == "empty selection":
            drawn.removeSelection()
        _choose_area(dock, MASK, drawn)
        expected = (
            "No polygons of drawn are selected"
            if case == "empty selection"
            else "The selected polygons of drawn do not overlap the raster oem_koeln_50"
        )
    assert dock.segment() is None
    [warning] = _messages(qgis_iface, "Warning")
    assert warning.startswith(expected) and warning.count(". ") == 0 and warning.endswith(".")
    assert dock.stage_label.text() == warning  # said in the dock itself
    assert fake_backend.requests == [] and dock.segment_button.isEnabled()


# --- the estimate line ------------------------------------------------------------------------------
def _estimate(dock, qtbot):
    dock.refresh_estimate()
    qtbot.waitUntil(lambda: "asking" not in dock.estimate_label.text(), timeout=TIMEOUT_MS)
    return dock.estimate_label.text()


def test_estimate_line_shows_resolution_windows_and_time(fake_backend, dock, oem_layer, qtbot):
    _choose_area(dock, LAYER)
    # auto: 0.5 m × 1024/448 = 1.14 m, 438 px: 3 × 3 windows of 224 px every 112 px
    assert _estimate(dock, qtbot) == "Estimate: 1.14 m/px (auto), 438 × 438 px, 9 windows, about 2 s"
    sent = fake_backend.estimates[-1]
    assert sent["bbox"] == pytest.approx([346000, 5647500, 346500, 5648000]) and "resolution" not in sent["options"]
    assert sent["raster"] and sent["classes"] == ["building,roof,house", "tree,forest", "water,river"]
    dock.resolution_spin.setValue(0.5)
    assert _estimate(dock, qtbot) == "Estimate: 0.5 m/px (fixed), 1000 × 1000 px, 64 windows, about 16 s"
    assert fake_backend.estimates[-1]["options"]["resolution"] == 0.5
    assert fake_backend.requests == []  # an estimate starts no job


def test_estimate_follows_changes_debounced(fake_backend, dock, oem_layer, qgis_canvas, qtbot):
    drawn = polygon_layer([FIELD, POND])
    QgsProject.instance().addMapLayer(drawn)
    qtbot.wait(600)  # the dock's first estimate
    before = len(fake_backend.estimates)
    _choose_area(dock, MASK, drawn)
    drawn.selectByIds([next(drawn.getFeatures()).id()])
    dock.resolution_spin.setValue(0.25)
    _show_central_half(qgis_canvas, oem_layer)
    qtbot.waitUntil(lambda: dock.estimate_label.text().startswith("Estimate: 0.25 m/px"), timeout=TIMEOUT_MS)
    assert len(fake_backend.estimates) == before + 1  # one question for the burst of changes
    assert len(fake_backend.estimates[-1]["mask"]["features"]) == 1
    drawn.removeSelection()  # the selection is the area: the line follows it
    qtbot.waitUntil(
        lambda: dock.estimate_label.text().startswith("No polygons of drawn are selected"), timeout=TIMEOUT_MS
    )


def test_estimate_never_freezes_the_panel(fake_backend, dock, oem_layer, qtbot):
    fake_backend.estimate_delay_s = 2.0
    start = time.monotonic()
    dock.refresh_estimate()
    assert time.monotonic() - start < 1.0 and dock.estimate_label.text() == "Estimate: asking the backend…"
    dock.resolution_spin.setValue(1.0)
    dock.refresh_estimate()  # overtakes the first: only its answer is shown
    qtbot.waitUntil(lambda: "asking" not in dock.estimate_label.text(), timeout=TIMEOUT_MS)
    assert dock.estimate_label.text().startswith("Estimate: 1 m/px (fixed)")
    qtbot.wait(500)
    assert dock.estimate_label.text().startswith("Estimate: 1 m/px (fixed)")


def test_estimate_is_not_available_for_chips_or_without_a_backend(
    fake_backend, dock, oem_layer, qgis_canvas, qtbot, tmp_path
):
    layer = xyz_layer(tmp_path / "tiles", lambda x, y: (30, 160, 60))
    QgsProject.instance().addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    qgis_canvas.setDestinationCrs(layer.crs())
    qgis_canvas.setExtent(QgsRectangle(-1e6, 5e6, 1e6, 6e6))
    assert _estimate(dock, qtbot).startswith("Estimate not available: this raster is sent to the backend as an image")
    _choose_area(dock, LAYER)
    assert _estimate(dock, qtbot).startswith("The whole layer of tiles cannot be segmented")
    dock.raster_combo.setLayer(oem_layer)
    fake_backend.stop()
    assert _estimate(dock, qtbot) == "Estimate not available: no backend answers (see the Backend tab)."


def test_estimate_shows_the_backend_refusal(fake_backend, dock, oem_layer, qtbot):
    _choose_area(dock, LAYER)
    fake_backend.max_resolution_m = 100.0
    dock.resolution_spin.setValue(500.0)
    assert _estimate(dock, qtbot).startswith("Estimate not available: A resolution of 500 m per pixel is coarser")
    fake_backend.server.RequestHandlerClass.do_POST = lambda self: fake_backend._error(
        self, 404, "http_error", "Not Found"
    )  # a backend older than /v1/estimate
    assert _estimate(dock, qtbot) == "Estimate not available: this backend has no /v1/estimate (update rsov)."
