"""The raster-anchored window grid: the same answer at any zoom, streamed equals in memory, areas.

The tiny CLIP is saved and loaded back through the real checkpoint path; the oracle encoder gives
known answers for polygons across block seams and for processing areas.
"""

import numpy as np
import pytest
import rasterio
from affine import Affine
from oracle import PALETTE, oracle_engine
from rasterio.windows import Window

from rsov.engine import SegmentRequest, load_engine
from rsov.errors import InputError
from rsov.geo.vectorize import read_vector
from rsov.grid import AUTO_FACTOR, working_grid
from rsov.semantic.predictor import FeatureOptions, ScoreOptions
from rsov.streaming import Outputs, in_process, segment_streamed
from rsov.tiled import WindowStats, plan

CLASSES = ("building,roof", "tree", "road", "water")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint):
    return load_engine(tiny_checkpoint, "cpu")


@pytest.fixture
def oem(shared_data):
    return str(shared_data / "openearthmap" / "oem_koeln_50.tif")


def world(path, col, row):
    with rasterio.open(path) as ds:
        return ds.transform @ (col, row)


def sub_bbox(path, c0, r0, c1, r1):
    """A bbox through pixel coordinates that need not be whole pixels."""
    x0, y0 = world(path, c0, r0)
    x1, y1 = world(path, c1, r1)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@pytest.mark.parametrize("resolution", [None, 0.7])  # auto (0.5 x 1024/448), and not a fraction of 0.5
def test_a_sub_extent_gets_the_same_answer_as_the_whole(tiny_engine, oem, resolution):
    features = FeatureOptions(resolution_m=resolution)
    whole = tiny_engine.segment(SegmentRequest(oem, CLASSES, features=features, vectorize=False))
    # a box that is not aligned to the window grid, nor to whole metres
    bbox = sub_bbox(oem, 333.3, 271.7, 802.2, 655.5)
    part = tiny_engine.segment(SegmentRequest(oem, CLASSES, bbox=bbox, features=features, vectorize=False))
    c0, r0 = (round(v) for v in ~whole.transform @ (part.bounds[0], part.bounds[3]))
    h, w = part.prediction.class_map.shape
    inside = whole.prediction.class_map[r0 : r0 + h, c0 : c0 + w]
    assert inside.shape == (h, w) and (c0, r0) == (333, 271)
    assert (inside == part.prediction.class_map).mean() >= 0.9999
    assert np.abs(whole.prediction.score_map[r0 : r0 + h, c0 : c0 + w] - part.prediction.score_map).max() < 1e-5
    assert len(np.unique(inside)) > 1  # a map with something to agree on


def test_logits_of_a_sub_extent_equal_those_of_the_whole(tiny_engine, oem):
    request = SegmentRequest(oem, CLASSES, features=FeatureOptions(resolution_m=0.7))
    job = tiny_engine.plan(request)
    grid = tiny_engine.grid_predictor()
    queries = ["building", "tree", "road"]
    with rasterio.open(oem) as ds:
        grid.set_raster(ds, job, request.features)
        whole = grid.working_logits(queries, request.scoring, (0, job.grid.height), (0, job.grid.width))
        part = grid.working_logits(queries, request.scoring, (101, 357), (77, 263))
    assert job.grid.height == job.grid.width == round(1000 * 0.5 / 0.7)
    assert torch_close(whole[:, 101:357, 77:263], part, 1e-5)


def torch_close(a, b, atol):
    return float((a - b).abs().max()) <= atol


def test_panning_by_half_an_extent_reencodes_only_new_windows(tiny_engine, oem):
    request = SegmentRequest(
        oem, CLASSES, bbox=sub_bbox(oem, 0, 0, 500, 500), vectorize=False, features=FeatureOptions(resolution_m=0.5)
    )
    first = tiny_engine.segment(request)
    panned = tiny_engine.segment(SegmentRequest(**{**request.__dict__, "bbox": sub_bbox(oem, 250, 0, 750, 500)}))
    total = panned.windows_encoded + panned.windows_cached
    # 500 px at 0.5 m: window rows and cols at 0, 112, ..., 448; panned, cols 112 ... 672
    assert first.windows_encoded == 25 and total == 30 and panned.windows_cached == 20
    assert 0 < panned.windows_encoded / total <= 0.55
    edited = tiny_engine.segment(SegmentRequest(**{**request.__dict__, "classes": ("house", "car")}))
    assert edited.features_cached  # a vocabulary edit only re-scores


def test_auto_resolution_follows_the_raster_not_the_extent(oem):
    whole = plan(oem, None, None, None, FeatureOptions(), None)
    part = plan(oem, sub_bbox(oem, 100, 100, 300, 200), None, None, FeatureOptions(), None)
    assert whole.grid == part.grid and whole.grid.rule == "auto"
    assert whole.grid.resolution_m == pytest.approx(0.5 * AUTO_FACTOR)
    assert whole.grid.width == round(1000 / AUTO_FACTOR)
    paper = plan(oem, sub_bbox(oem, 100, 100, 300, 200), None, None, FeatureOptions(long_side=448), None)
    assert paper.grid.rule == "long_side" and (paper.grid.height, paper.grid.width) == (224, 448)


@pytest.mark.parametrize("resolution, words", [(1e-9, "finer"), (1e6, "coarser"), (float("nan"), "positive")])
def test_absurd_resolutions_are_refused(resolution, words):
    with pytest.raises(InputError, match=words):
        working_grid((1000, 1000), Window(0, 0, 1000, 1000), 0.5, resolution, None, 224, 112)


def test_streamed_equals_in_memory(tiny_engine, oem, tmp_path):
    # unsimplified, the polygons must be the same; simplified, a dissolved ring may start elsewhere
    request = SegmentRequest(oem, CLASSES, features=FeatureOptions(resolution_m=0.7), simplify_px=0.0)
    memory = tiny_engine.segment(request)
    job = plan(oem, None, None, None, request.features, None, block=192)
    assert len(job.out.blocks) == 36
    stats = WindowStats()
    out = Outputs(vector=tmp_path / "s.gpkg", class_raster=tmp_path / "s.tif")
    summary = segment_streamed(request, job, out, in_process(tiny_engine, stats), stats=stats)
    with rasterio.open(tmp_path / "s.tif") as ds:
        streamed = ds.read(1)
        assert ds.profile["tiled"] and ds.transform == memory.transform
    assert (streamed == memory.prediction.class_map).all()
    crs, features = read_vector(tmp_path / "s.gpkg")
    assert crs == memory.crs and summary.polygons == len(features) == len(memory.features)
    key = lambda f: (f.class_id, round(f.area_m2, 3), round(f.score, 4))  # noqa: E731
    assert sorted(map(key, features)) == sorted(map(key, memory.features))


def paint_cross(size=512):
    """A grey raster with one red cross spanning the middle and a blue square in a corner."""
    image = np.empty((3, size, size), dtype=np.uint8)
    image[:] = np.array(PALETTE["grey"][0], dtype=np.uint8)[:, None, None]
    red, blue = (np.array(PALETTE[c][0])[:, None, None] for c in ("red", "blue"))
    image[:, 224:288, 32:480] = red
    image[:, 32:480, 224:288] = red
    image[:, 400:464, 400:464] = blue
    return image


TRANSFORM = Affine(0.5, 0, 356000.0, 0, -0.5, 5645000.0)


def test_a_region_across_block_seams_is_one_polygon(make_geotiff, tmp_path):
    path = make_geotiff(paint_cross(), crs="EPSG:25832", transform=TRANSFORM)
    request = SegmentRequest(
        str(path),
        ("building,roof", "water"),
        background=("background",),
        features=FeatureOptions(resolution_m=0.5),
        scoring=ScoreOptions(cls_lambda=0.0),
        simplify_px=0.0,
    )
    engine = oracle_engine()
    job = plan(str(path), None, None, None, request.features, None, block=96)  # the cross spans 5 x 5 blocks
    summary = segment_streamed(request, job, Outputs(vector=tmp_path / "o.gpkg"), in_process(engine, WindowStats()))
    _, features = read_vector(tmp_path / "o.gpkg")
    buildings = [f for f in features if f.class_name == "building"]
    assert summary.features == {"building": 1, "water": 1} and len(buildings) == 1
    cross = buildings[0].geometry
    assert len(cross.geoms) == 1 and not cross.geoms[0].interiors
    assert cross.area == pytest.approx((2 * 448 * 64 - 64 * 64) * 0.25, rel=0.03)
    assert buildings[0].score > 0.9


def test_processing_area_masks_the_answer(make_geotiff):
    path = make_geotiff(paint_cross(), crs="EPSG:25832", transform=TRANSFORM)
    x0, y0 = TRANSFORM @ (0, 512)
    x1, y1 = TRANSFORM @ (256, 0)  # the left half
    area = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            }
        ],
    }
    request = SegmentRequest(
        str(path),
        ("building,roof", "water"),
        background=("background",),
        area=area,
        features=FeatureOptions(resolution_m=0.5),
        scoring=ScoreOptions(cls_lambda=0.0),
    )
    result = oracle_engine().segment(request)
    assert result.prediction.class_map.shape == (512, 256)  # the extent is the area's
    assert {f.class_name for f in result.features} == {"building"}  # the water square lies outside
    assert all(f.geometry.bounds[2] <= x1 + 1e-6 for f in result.features)


def test_an_area_off_the_raster_is_refused(make_geotiff):
    path = make_geotiff(paint_cross(), crs="EPSG:25832", transform=TRANSFORM)
    area = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}  # lon/lat 0, 0
    with pytest.raises(InputError, match="does not overlap"):
        plan(str(path), None, None, None, FeatureOptions(), None, area=area)
