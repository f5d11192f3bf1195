"""Tests for rsov.geo.vectorize: polygons from class maps, vector and raster outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes

from rsov import palette
from rsov.errors import InputError
from rsov.geo.qml import result_qml
from rsov.geo.vectorize import (
    VectorFeature,
    _clean,
    features_to_geojson,
    polygonize,
    write_class_raster,
    write_vector,
)
from rsov.palette import class_rgb

UTM = "EPSG:25832"
# 0.5 m pixels, upper-left corner at (346000, 5648000).
TRANSFORM = Affine(0.5, 0, 346000, 0, -0.5, 5648000)
NAMES = ["building", "water"]


@pytest.fixture
def scene():
    """(40, 50) class map: a building square, a water square, a building square with a hole."""
    class_map = np.zeros((40, 50), dtype=np.uint8)
    class_map[2:8, 3:13] = 1  # 6 x 10 px building
    class_map[20:30, 5:15] = 2  # 10 x 10 px water
    class_map[15:35, 25:45] = 1  # 20 x 20 px building ...
    class_map[20:25, 30:38] = 0  # ... with a 5 x 8 px hole
    score_map = np.random.default_rng(1).uniform(0.3, 1.0, class_map.shape)
    return class_map, score_map


@pytest.fixture
def features(scene):
    class_map, score_map = scene
    return polygonize(class_map, score_map, None, TRANSFORM, UTM, NAMES)


def _world_box(row0, col0, row1, col1, transform=TRANSFORM):
    """Expected (minx, miny, maxx, maxy) of pixel rows row0:row1, cols col0:col1."""
    return (
        transform.c + col0 * transform.a,
        transform.f + row1 * transform.e,
        transform.c + col1 * transform.a,
        transform.f + row0 * transform.e,
    )


def test_one_feature_per_region_in_order(features):
    assert [(f.class_id, f.class_name) for f in features] == [(1, "building"), (1, "building"), (2, "water")]
    # Buildings by decreasing area: the holed square (400 - 40 px) before the small one (60 px).
    assert [f.area_m2 for f in features] == [360 * 0.25, 60 * 0.25, 100 * 0.25]


def test_georeferenced_bounds_and_holes(features):
    holed, small, water = features
    assert small.geometry.bounds == _world_box(2, 3, 8, 13)
    assert water.geometry.bounds == _world_box(20, 5, 30, 15)
    assert holed.geometry.bounds == _world_box(15, 25, 35, 45)
    assert isinstance(holed.geometry, shapely.Polygon)
    assert len(holed.geometry.interiors) == 1
    assert shapely.Polygon(holed.geometry.interiors[0]).bounds == _world_box(20, 30, 25, 38)
    assert len(small.geometry.interiors) == 0
    assert all(f.geometry.is_valid for f in features)


def test_scores_are_region_means(scene, features):
    class_map, score_map = scene
    holed, small, water = features
    assert small.score == pytest.approx(score_map[2:8, 3:13].mean())
    assert water.score == pytest.approx(score_map[20:30, 5:15].mean())
    region = np.zeros(class_map.shape, dtype=bool)
    region[15:35, 25:45] = True
    region[20:25, 30:38] = False
    assert holed.score == pytest.approx(score_map[region].mean())


def test_valid_mask_removes_pixels(scene):
    class_map, score_map = scene
    valid = np.ones(class_map.shape, dtype=bool)
    valid[:, 8] = False  # cuts the small building in two
    valid[20:30, 5:15] = False  # hides the water
    features = polygonize(class_map, score_map, valid, TRANSFORM, UTM, NAMES)
    assert [f.class_id for f in features] == [1, 1, 1]
    assert sorted(f.area_m2 for f in features) == [24 * 0.25, 30 * 0.25, 360 * 0.25]  # cols 9:13 and 3:8


def test_four_connectivity_and_adjacent_classes():
    class_map = np.array([[1, 0, 2, 2], [0, 1, 2, 1], [0, 0, 0, 0]], dtype=np.int32)
    features = polygonize(class_map, np.ones(class_map.shape), None, Affine.identity(), None, ["a", "b"])
    # Diagonal neighbours are separate regions; touching classes stay separate.
    assert [(f.class_id, f.area_m2) for f in features] == [(1, 1.0), (1, 1.0), (1, 1.0), (2, 3.0)]


def test_geographic_area_is_geodesic():
    # 100 x 100 px of 1e-4 degree at 52.5 N.
    transform = Affine(1e-4, 0, 13.4, 0, -1e-4, 52.5)
    class_map = np.zeros((120, 120), dtype=np.uint8)
    class_map[10:110, 10:110] = 1
    (feature,) = polygonize(class_map, np.ones(class_map.shape), None, transform, "EPSG:4326", ["field"])
    # Spherical zone area R^2 * dlon * (sin(lat1) - sin(lat0)), mean Earth radius.
    lat_top, lat_bottom = 52.5 - 10e-4, 52.5 - 110e-4
    expected = (
        6371008.8**2 * math.radians(0.01) * (math.sin(math.radians(lat_top)) - math.sin(math.radians(lat_bottom)))
    )
    assert feature.area_m2 == pytest.approx(expected, rel=0.01)
    assert feature.geometry.bounds == pytest.approx((13.401, 52.489, 13.411, 52.499))


def test_no_crs_area_in_pixels(scene):
    class_map, score_map = scene
    features = polygonize(class_map, score_map, None, Affine.identity(), None, NAMES)
    assert [f.area_m2 for f in features] == [360.0, 60.0, 100.0]


def test_feet_crs_area_converted():
    # EPSG:2263 (NY Long Island, US survey feet): 10 x 10 px of 1 ft.
    class_map = np.zeros((12, 12), dtype=np.uint8)
    class_map[1:11, 1:11] = 1
    (feature,) = polygonize(class_map, np.ones((12, 12)), None, Affine(1, 0, 1e6, 0, -1, 2e5), "EPSG:2263", ["x"])
    assert feature.area_m2 == pytest.approx(100 * (1200 / 3937) ** 2)


def test_min_area_filter(scene):
    class_map, score_map = scene
    features = polygonize(class_map, score_map, None, TRANSFORM, UTM, NAMES, min_area_m2=20.0)
    assert [f.area_m2 for f in features] == [90.0, 25.0]


def test_simplify_reduces_vertices_and_stays_valid():
    rows, cols = np.mgrid[:120, :120]
    disk = ((rows - 60) ** 2 + (cols - 60) ** 2 < 50**2).astype(np.uint8)
    disk[55:65, 55:65] = 0  # a hole, which must survive
    args = (disk, np.ones(disk.shape), None, TRANSFORM, UTM, ["tank"])
    (raw,) = polygonize(*args)
    (smooth,) = polygonize(*args, simplify_px=1.5)
    assert shapely.get_num_coordinates(smooth.geometry) < shapely.get_num_coordinates(raw.geometry) / 3
    assert smooth.geometry.is_valid and len(smooth.geometry.interiors) == 1
    assert smooth.area_m2 == pytest.approx(raw.area_m2, rel=0.03)


def test_class_id_without_name_is_rejected():
    with pytest.raises(ValueError, match="class 3"):
        polygonize(np.full((2, 2), 3), np.ones((2, 2)), None, TRANSFORM, UTM, NAMES)


def test_write_gpkg_round_trip(features, tmp_path):
    path = write_vector(features, tmp_path / "result.gpkg", UTM)
    assert path == tmp_path / "result.gpkg"
    info = pyogrio.read_info(path, layer="rsov")
    assert info["crs"] == UTM
    assert info["features"] == 3
    assert info["geometry_type"] == "MultiPolygon"
    assert list(info["fields"]) == ["class", "class_id", "score", "area_m2", "status"]
    assert info["ogr_types"] == ["OFTString", "OFTInteger", "OFTReal", "OFTReal", "OFTString"]
    _, _, geometry, fields = pyogrio.raw.read(path, layer="rsov")
    assert list(fields[0]) == ["building", "building", "water"]
    assert list(fields[1]) == [1, 1, 2]
    assert list(fields[2]) == [f.score for f in features]
    assert list(fields[3]) == [90.0, 15.0, 25.0]
    assert list(fields[4]) == ["new"] * 3  # ready for review
    assert all(shapely.from_wkb(g).equals(f.geometry) for g, f in zip(geometry, features, strict=True))
    assert sorted(os.listdir(tmp_path)) == ["result.gpkg"]  # no temporary leftovers


def test_write_gpkg_layer_per_class(features, tmp_path):
    path = write_vector(features, tmp_path / "classes.gpkg", UTM, layer_per_class=True)
    assert [name for name, _ in pyogrio.list_layers(path)] == ["building", "water", "layer_styles"]
    assert pyogrio.read_info(path, layer="building")["features"] == 2
    assert pyogrio.read_info(path, layer="water")["features"] == 1


def test_write_empty_result(tmp_path):
    path = write_vector([], tmp_path / "empty.gpkg", UTM, layer="detections")
    info = pyogrio.read_info(path, layer="detections")
    assert info["features"] == 0 and info["crs"] == UTM
    assert list(info["fields"]) == ["class", "class_id", "score", "area_m2", "status"]
    assert info["geometry_type"] == "MultiPolygon"
    assert _styles(path) == [("detections", "geom", True)]


def _styles(path) -> list[tuple[str, str, bool]]:
    """(layer, geometry column, is default) of each style in the GeoPackage's layer_styles table."""
    _, _, _, (layers, columns, defaults) = pyogrio.raw.read(
        path, layer="layer_styles", columns=["f_table_name", "f_geometry_column", "useAsDefault"]
    )
    return list(zip(layers, columns, map(bool, defaults), strict=True))


def _symbols(path, layer: str = "rsov") -> list[tuple[str, dict[str, str]]]:
    """(category value, its SimpleFill properties) of the categorized renderer in a layer's QML."""
    _, _, _, (names, qmls) = pyogrio.raw.read(path, layer="layer_styles", columns=["f_table_name", "styleQML"])
    root = ElementTree.fromstring(dict(zip(names, qmls, strict=True))[layer])
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class"
    symbols = {s.get("name"): s for s in renderer.iter("symbol")}
    return [
        (c.get("value"), {p.get("k"): p.get("v") for p in symbols[c.get("symbol")].find("layer").iter("prop")})
        for c in renderer.iter("category")
    ]


def test_gpkg_opens_styled_in_the_palette_colours(features, tmp_path):
    """QGIS reads a layer's default style from layer_styles: categorized on class, class k in colour k."""
    path = write_vector(features, tmp_path / "result.gpkg", UTM, class_names=["building", "tree", "water"])
    assert _styles(path) == [("rsov", "geom", True)]
    assert pyogrio.read_info(path, layer="rsov")["geometry_name"] == "geom"
    symbols = _symbols(path)
    assert [value for value, _ in symbols] == ["building", "tree", "water"]  # the vocabulary, found or not
    assert [props["color"] for _, props in symbols] == [f"{','.join(map(str, class_rgb(k)))},150" for k in (1, 2, 3)]
    assert symbols[0][1]["outline_color"] == "153,106,0,255"  # QColor("#e69f00").darker(150)
    assert {props["outline_width"] for _, props in symbols} == {"0.3"}
    with sqlite3.connect(path) as db:  # GeoPackage 1.2, which QGIS 3.22's GDAL reads without a warning
        assert db.execute("PRAGMA user_version").fetchone() == (10200,)


def test_instance_gpkg_is_outlined_and_every_layer_is_styled(features, tmp_path):
    objects = [dataclasses.replace(f, instance_id=i) for i, f in enumerate(features, start=1)]
    path = write_vector(
        objects, tmp_path / "objects.gpkg", UTM, layer_per_class=True, class_names=NAMES, instances=True
    )
    assert _styles(path) == [("building", "geom", True), ("water", "geom", True)]
    value, props = _symbols(path, "water")[1]
    assert value == "water" and props["color"] == f"{','.join(map(str, class_rgb(2)))},40"
    assert props["outline_color"] == f"{','.join(map(str, class_rgb(2)))},255" and props["outline_width"] == "0.6"


def test_classes_past_the_palette_s_first_cycle_are_hatched():
    """Class 21 repeats class 1's colour darker: lines across it tell them apart (as in the plugin)."""
    names = [f"class {k}" for k in range(1, 2 * len(palette.COLOURS) + 2)] + ['roof "flat" & <tiles>']
    renderer = ElementTree.fromstring(result_qml(enumerate(names, start=1), instances=False)).find("renderer-v2")
    symbols = {s.get("name"): s for s in renderer.iter("symbol")}
    layers = [
        [layer.get("class") for layer in symbols[c.get("symbol")].iter("layer")] for c in renderer.iter("category")
    ]
    assert layers[0] == layers[19] == ["SimpleFill"] and layers[20] == layers[40] == ["SimpleFill", "LinePatternFill"]
    angles = [
        {p.get("k"): p.get("v") for p in symbols[str(k)].findall("layer")[-1].iter("prop")}["angle"] for k in (20, 40)
    ]
    assert angles == ["45", "135"]  # one angle per cycle
    assert [c.get("value") for c in renderer.iter("category")][-1] == 'roof "flat" & <tiles>'


def test_style_names_the_classes_found_when_no_vocabulary_is_given(tmp_path):
    found = [VectorFeature(shapely.box(0, 0, 1, 1), "water", 3, 0.5, 1.0)]
    path = write_vector(found, tmp_path / "result.gpkg", UTM)
    [(value, props)] = _symbols(path)
    assert value == "water" and props["color"].startswith(",".join(map(str, class_rgb(3))))


def test_an_empty_instance_result_is_complete(tmp_path):
    """No objects found: still the review field and the style (the plugin's Review tab takes it)."""
    path = write_vector([], tmp_path / "empty.gpkg", UTM, class_names=NAMES, instances=True)
    info = pyogrio.read_info(path, layer="rsov")
    assert info["features"] == 0 and {"instance_id", "status"} <= set(info["fields"])
    assert _styles(path) == [("rsov", "geom", True)] and [v for v, _ in _symbols(path)] == NAMES


def test_write_geojson_keeps_raster_crs(features, tmp_path):
    path = write_vector(features, tmp_path / "result.geojson", UTM)
    info = pyogrio.read_info(path)
    assert info["crs"] == UTM and info["features"] == 3
    assert json.loads(path.read_text())["features"][2]["properties"] == {
        "class": "water",
        "class_id": 2,
        "score": features[2].score,
        "area_m2": 25.0,
        "status": "new",
    }


def test_overwrites_existing_file(features, tmp_path):
    path = tmp_path / "result.gpkg"
    write_vector(features, path, UTM)
    write_vector(features[:1], path, UTM)
    assert pyogrio.read_info(path, layer="rsov")["features"] == 1


def test_bad_output_paths(features, tmp_path):
    with pytest.raises(InputError, match=r"result.shp: the extension '.shp' is not supported"):
        write_vector(features, tmp_path / "result.shp", UTM)
    with pytest.raises(InputError, match="the folder .*nowhere does not exist"):
        write_vector(features, tmp_path / "nowhere" / "result.gpkg", UTM)
    with pytest.raises(InputError, match="needs a GeoPackage"):
        write_vector(features, tmp_path / "result.geojson", UTM, layer_per_class=True)
    assert os.listdir(tmp_path) == []
    (tmp_path / "folder.gpkg").mkdir()
    with pytest.raises(InputError, match="folder.gpkg: it is a folder"):
        write_vector(features, tmp_path / "folder.gpkg", UTM)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder the test process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    else:  # root ignores permission bits; sysfs refuses new files even to root
        yield Path("/sys")


def test_unwritable_folder(features, unwritable_dir):
    target = unwritable_dir / "result.gpkg"
    with pytest.raises(InputError, match=f"Cannot write {target}: the folder {unwritable_dir} is not writable"):
        write_vector(features, target, UTM)
    assert not target.exists()


def test_failure_leaves_nothing_behind(features, tmp_path, monkeypatch):
    previous = write_vector(features[:1], tmp_path / "result.gpkg", UTM)
    before = previous.read_bytes()

    def half_write(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pyogrio.raw, "write", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_vector(features, tmp_path / "result.gpkg", UTM)
    with pytest.raises(RuntimeError, match="disk full"):
        write_vector(features, tmp_path / "new.gpkg", UTM)
    assert sorted(os.listdir(tmp_path)) == ["result.gpkg"]
    assert previous.read_bytes() == before  # the old result is intact


def test_features_to_geojson(features):
    collection = features_to_geojson(features, UTM)
    assert collection["type"] == "FeatureCollection"
    assert collection["crs"] == {"type": "name", "properties": {"name": "EPSG:25832"}}
    first = collection["features"][0]
    assert first["properties"] == {"class": "building", "class_id": 1, "score": features[0].score, "area_m2": 90.0}
    assert shapely.geometry.shape(first["geometry"]).equals(features[0].geometry)
    json.dumps(collection)  # serialisable as-is


def test_features_to_geojson_without_epsg():
    crs = "+proj=tmerc +lat_0=0 +lon_0=11.5 +k=1 +x_0=0 +y_0=0 +ellps=bessel +units=m"
    feature = VectorFeature(shapely.box(0, 0, 1, 1), "a", 1, 0.5, 1.0)
    name = features_to_geojson([feature], crs)["crs"]["properties"]["name"]
    assert "PROJCS" in name or "PROJCRS" in name
    assert "crs" not in features_to_geojson([feature], None)


def test_class_raster_round_trip(scene, tmp_path):
    class_map, _ = scene
    names = [f"class {i}" for i in range(1, 13)]
    path = write_class_raster(class_map, TRANSFORM, UTM, tmp_path / "classes.tif", names)
    with rasterio.open(path) as ds:
        assert (ds.count, ds.dtypes[0]) == (1, "uint8")
        assert ds.crs.to_epsg() == 25832 and ds.transform == TRANSFORM
        assert ds.compression.name == "lzw"
        assert np.array_equal(ds.read(1), class_map)
        colours = ds.colormap(1)
        description = ds.descriptions[0]
    assert colours[0] == (0, 0, 0, 255)
    class_colours = [colours[i] for i in range(1, 13)]
    assert len(set(class_colours)) == 12 and (0, 0, 0, 255) not in class_colours
    assert description == "0=background; " + "; ".join(f"{i}=class {i}" for i in range(1, 13))
    assert sorted(os.listdir(tmp_path)) == ["classes.tif"]


def test_class_raster_needs_tif(scene, tmp_path):
    with pytest.raises(InputError, match="must be a GeoTIFF"):
        write_class_raster(scene[0], TRANSFORM, UTM, tmp_path / "classes.png", NAMES)


# --- real SpaceNet data --------------------------------------------------------


@pytest.fixture
def spacenet_grid(shared_data):
    with rasterio.open(shared_data / "spacenet-buildings" / "sample_geotiff.tif") as ds:
        return ds.transform, ds.crs


def test_spacenet_labels_survive_rasterize_and_polygonize(shared_data, spacenet_grid):
    """Burn the 43 labelled buildings onto the 0.5 m grid, vectorize, compare with the labels."""
    transform, crs = spacenet_grid
    _, _, wkb, _ = pyogrio.raw.read(shared_data / "spacenet-buildings" / "geotiff_labels.geojson")
    labels = shapely.from_wkb(wkb)
    assert len(labels) == 43
    class_map = rasterize(labels, out_shape=(900, 900), transform=transform).astype(np.uint8)

    features = polygonize(class_map, np.ones(class_map.shape), None, transform, crs, ["building"])

    # Touching buildings merge and thin parts can split at 0.5 m, so allow a few.
    assert abs(len(features) - 43) <= 3
    label_area = sum(g.area for g in labels)
    assert sum(f.area_m2 for f in features) == pytest.approx(label_area, rel=0.05)
    found = shapely.union_all([f.geometry for f in features])
    truth = shapely.union_all(labels)
    assert found.intersection(truth).area / found.union(truth).area > 0.9
    assert all(found.intersection(g).area > 0.8 * g.area for g in labels)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_spacenet_mask_polygons_match_the_mask(shared_data, spacenet_grid):
    """The 0/255 footprint mask vectorizes to polygons that burn back to exactly the same pixels."""
    transform, crs = spacenet_grid
    with rasterio.open(shared_data / "spacenet-buildings" / "sample_fp_mask.tif") as ds:
        mask = ds.read(1) == 255

    features = polygonize(mask.astype(np.uint8), np.ones(mask.shape), None, transform, crs, ["building"])

    # GDAL's own 4-connected regions of the mask, counted without scipy's labelling.
    regions = [value for _, value in shapes(mask.astype(np.uint8), mask=mask, connectivity=4)]
    assert len(features) == len(regions) > 43
    assert sum(f.area_m2 for f in features) == mask.sum() * 0.25
    burnt = rasterize([f.geometry for f in features], out_shape=mask.shape, transform=transform)
    assert np.array_equal(burnt > 0, mask)


def test_invalid_geometry_is_repaired():
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)])
    repaired = _clean(bowtie, 0.0)
    assert repaired.is_valid and repaired.geom_type == "MultiPolygon"
    assert repaired.area == pytest.approx(2.0)
