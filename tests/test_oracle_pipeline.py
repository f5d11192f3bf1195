"""Known-answer tests: with an oracle encoder, each class must land exactly on its colour region.

This exercises the whole chain: raster reading and georeferencing, resizing, sliding windows,
overlap averaging, logit upsampling, synonyms, thresholds, nodata, vectorization.
"""

from dataclasses import replace

import numpy as np
import pytest
from affine import Affine
from oracle import PALETTE, oracle_engine
from pyproj import Transformer
from shapely.geometry import box

from rsov.engine import SegmentRequest
from rsov.semantic.predictor import FeatureOptions, ScoreOptions
from rsov.semantic.vocabulary import build_vocabulary

CLASSES = ("building,roof", "tree", "water")
# (row0, col0, row1, col1) in pixels of a 448 x 448 raster, on the 16 px patch grid
REGIONS = {"building": (64, 96, 160, 224), "tree": (256, 32, 384, 192), "water": (288, 288, 416, 432)}
COLOUR = {"building": "red", "tree": "green", "water": "blue"}


def paint(size=448, scale=1):
    image = np.empty((3, size * scale, size * scale), dtype=np.uint8)
    image[:] = np.array(PALETTE["grey"][0], dtype=np.uint8)[:, None, None]
    for name, (r0, c0, r1, c1) in REGIONS.items():
        image[:, r0 * scale : r1 * scale, c0 * scale : c1 * scale] = np.array(PALETTE[COLOUR[name]][0])[:, None, None]
    return image


def expected_box(transform, region, scale=1):
    r0, c0, r1, c1 = (v * scale for v in region)
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def by_class(features):
    out = {}
    for f in features:
        out.setdefault(f.class_name, []).append(f)
    return out


def check_regions(result, transform, pixel, scale=1, tolerance_px=2):
    found = by_class(result.features)
    assert sorted(found) == sorted(REGIONS)
    for name, region in REGIONS.items():
        assert len(found[name]) == 1, f"{name}: {len(found[name])} polygons"
        geom = found[name][0].geometry
        want = expected_box(transform, region, scale)
        # every edge within tolerance_px pixels of the painted region
        assert np.allclose(geom.bounds, want.bounds, atol=tolerance_px * pixel), (name, geom.bounds, want.bounds)
        assert geom.intersection(want).area / geom.union(want).area > 0.97
        assert found[name][0].score > 0.9


def request(path, **kw):
    # The [CLS] bias subtraction moves boundaries towards the dominant class by design (checked number
    # for number in test_predictor); without it the known answer is the painted region itself.
    kw.setdefault("scoring", ScoreOptions(cls_lambda=0.0))
    # the paper's per-extent rule: these 448 px rasters are worked on at their own pixels
    kw.setdefault("features", FeatureOptions(long_side=448))
    return SegmentRequest(raster=str(path), classes=CLASSES, background=("background",), **kw)


PROJECTED = Affine(0.5, 0, 356000.0, 0, -0.5, 5645000.0)  # EPSG:25832, 0.5 m pixels
GEOGRAPHIC = Affine(1e-5, 0, 6.95, 0, -1e-5, 50.94)  # EPSG:4326


def test_projected_raster(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=PROJECTED)
    result = oracle_engine().segment(request(path))
    assert result.crs.to_epsg() == 25832
    check_regions(result, PROJECTED, 0.5)
    building = by_class(result.features)["building"][0]
    assert building.area_m2 == pytest.approx(96 * 128 * 0.25, rel=0.03)


def test_geographic_raster(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:4326", transform=GEOGRAPHIC)
    result = oracle_engine().segment(request(path))
    assert result.crs.to_epsg() == 4326
    check_regions(result, GEOGRAPHIC, 1e-5)
    # 1e-5 degrees is ~1.11 m north-south and ~0.70 m east-west at 50.9 N
    building = by_class(result.features)["building"][0]
    assert building.area_m2 == pytest.approx(96 * 1.112 * 128 * 0.702, rel=0.03)


def test_resized_working_resolution(make_geotiff):
    transform = Affine(0.25, 0, 356000.0, 0, -0.25, 5645000.0)
    path = make_geotiff(paint(scale=2), crs="EPSG:25832", transform=transform)
    result = oracle_engine().segment(request(path))
    assert result.prediction.class_map.shape == (896, 896)  # output at the raster's resolution
    check_regions(result, transform, 0.25, scale=2, tolerance_px=2)


def test_bbox_in_another_crs_selects_the_extent(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=PROJECTED)
    to_wgs84 = Transformer.from_crs("EPSG:25832", "EPSG:4326", always_xy=True)
    x0, y1 = PROJECTED @ (0, 0)
    x1, y0 = PROJECTED @ (240, 200)  # the building and nothing else
    bbox = to_wgs84.transform_bounds(x0, y0, x1, y1)
    result = oracle_engine().segment(request(path, bbox=bbox, bbox_crs="EPSG:4326"))
    names = {f.class_name for f in result.features}
    assert "building" in names and "water" not in names
    bounds = box(*result.bounds)
    assert all(bounds.buffer(1.0).contains(f.geometry) for f in result.features)
    building = by_class(result.features)["building"][0]
    assert np.allclose(building.geometry.bounds, expected_box(PROJECTED, REGIONS["building"]).bounds, atol=1.0)


def test_synonyms_threshold_and_background(make_geotiff):
    image = paint()
    # a yellow region matches no query of the vocabulary (only "sand", which it leaves out)
    image[:, 400:448, 0:96] = np.array(PALETTE["yellow"][0])[:, None, None]
    path = make_geotiff(image, crs="EPSG:25832", transform=PROJECTED)
    engine = oracle_engine()
    result = engine.segment(request(path, scoring=ScoreOptions(threshold=0.6, cls_lambda=0.0)))
    # "building" itself is an unknown word to the oracle: only its synonym "roof" can find the red roof
    assert len(by_class(result.features)["building"]) == 1
    # yellow is equally unlike every query: without the [CLS] bias the probabilities are flat (0.2),
    # under the threshold -> background
    rows, cols = slice(408, 448), slice(8, 88)
    assert (result.prediction.class_map[rows, cols] == 0).all()


def test_nodata_gets_no_class(make_geotiff):
    image = paint()
    image[:, 64:160, 96:160] = 0  # the left half of the building is nodata
    path = make_geotiff(image, crs="EPSG:25832", transform=PROJECTED, nodata=0)
    result = oracle_engine().segment(request(path))
    assert not result.prediction.class_map[64:160, 96:160].any()
    nodata_area = expected_box(PROJECTED, (64, 96, 160, 160))
    found = by_class(result.features)
    assert sorted(found) == sorted(REGIONS) and all(len(found[name]) == 1 for name in REGIONS)
    assert all(f.geometry.intersection(nodata_area).area < 1e-6 for f in result.features)
    # the building is its right half, the part with data
    right_half = expected_box(PROJECTED, (64, 160, 160, 224))
    assert np.allclose(found["building"][0].geometry.bounds, right_half.bounds, atol=1.0)


def test_edited_vocabulary_reuses_image_features(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=PROJECTED)
    engine = oracle_engine()
    first = engine.segment(request(path))
    calls = engine.encoder.calls
    edited = SegmentRequest(
        raster=str(path),
        classes=("building,roof", "tree"),
        background=("background",),
        scoring=ScoreOptions(cls_lambda=0.0, threshold=0.5),
        features=FeatureOptions(long_side=448),
    )
    second = engine.segment(edited)
    assert engine.encoder.calls == calls and second.features_cached and not first.features_cached
    assert sorted(by_class(second.features)) == ["building", "tree"]
    # under the per-extent rule, a different extent is a different grid
    engine.segment(request(path, bbox=(356000.0, 5644800.0, 356100.0, 5645000.0)))
    assert engine.encoder.calls > calls


def test_progress_moves_through_the_vocabulary_windows_and_rows(make_geotiff):
    """No stall without a word: a large vocabulary is embedded, windows encoded and rows scored, each counted."""
    path = make_geotiff(paint(), crs="EPSG:25832", transform=PROJECTED)
    classes = CLASSES + tuple(f"thing {k}" for k in range(40))
    stages = []
    oracle_engine().segment(
        replace(request(path), classes=classes, block_size=128),
        stage=lambda name, fraction: stages.append((fraction, name)),
    )
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    names = [name for _, name in stages]
    queries = len(build_vocabulary(list(classes), ("background",)).queries()[0])
    assert f"embedding the vocabulary: {queries}/{queries} queries" in names
    blocks = sum(1 for name in names if name.startswith("segmenting block") and ":" not in name)
    assert blocks > 1 and any(name.endswith(f"scoring {len(classes)} classes: rows 128/128") for name in names)
    assert any("encoding windows" in name for name in names)
