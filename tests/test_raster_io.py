"""Tests for rsov.geo.raster_io on real samples and synthetic edge-case rasters."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window

from rsov.errors import InputError
from rsov.geo.raster_io import describe_raster, parse_bands, read_chip


@pytest.fixture
def oem(shared_data):
    return shared_data / "openearthmap" / "oem_koeln_50.tif"


@pytest.fixture
def spacenet(shared_data):
    return shared_data / "spacenet-buildings" / "sample_geotiff.tif"


def _stretch(band: np.ndarray) -> np.ndarray:
    """Reference 2-98 % stretch of a whole (small) band to uint8."""
    low, high = np.percentile(band, [2, 98])
    return np.clip(np.rint((band.astype(float) - low) * 255 / (high - low)), 0, 255).astype(np.uint8)


# --- real data ---------------------------------------------------------------


def test_describe_oem(oem):
    info = describe_raster(oem)
    assert (info.width, info.height, info.count) == (1000, 1000, 3)
    assert info.dtypes == ("uint8",) * 3
    assert info.crs.to_epsg() == 25832
    assert info.bounds == (346000.0, 5647500.0, 346500.0, 5648000.0)
    assert info.transform == Affine(0.5, 0, 346000, 0, -0.5, 5648000)
    assert info.nodata is None


def test_whole_oem_read_as_is(oem):
    chip = read_chip(oem)
    with rasterio.open(oem) as ds:
        expected = ds.read().transpose(1, 2, 0)
        assert chip.bounds == tuple(ds.bounds)
        assert chip.transform == ds.transform
    assert chip.image.shape == (1000, 1000, 3) and chip.image.dtype == np.uint8
    assert np.array_equal(chip.image, expected)  # uint8 bands are not stretched
    assert chip.valid.shape == (1000, 1000) and chip.valid.all()
    assert chip.crs.to_epsg() == 25832
    assert chip.pixel_size_m == 0.5
    assert chip.source == str(oem)


def test_bbox_in_wgs84_lands_on_the_right_pixels(oem):
    bbox = (6.8085, 50.9595, 6.8115, 50.9620)  # lon/lat, inside the tile
    # Expected window, independently: project densely sampled bbox edges with pyproj.
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    t = np.linspace(0, 1, 200)
    lons = np.concatenate(
        [
            bbox[0] + t * (bbox[2] - bbox[0]),
            np.full(200, bbox[2]),
            bbox[0] + t * (bbox[2] - bbox[0]),
            np.full(200, bbox[0]),
        ]
    )
    lats = np.concatenate(
        [
            np.full(200, bbox[1]),
            bbox[1] + t * (bbox[3] - bbox[1]),
            np.full(200, bbox[3]),
            bbox[1] + t * (bbox[3] - bbox[1]),
        ]
    )
    xs, ys = to_utm.transform(lons, lats)
    col0, col1 = math.floor((xs.min() - 346000) / 0.5), math.ceil((xs.max() - 346000) / 0.5)
    row0, row1 = math.floor((5648000 - ys.max()) / 0.5), math.ceil((5648000 - ys.min()) / 0.5)
    assert 0 < col0 < col1 < 1000 and 0 < row0 < row1 < 1000

    chip = read_chip(oem, bbox=bbox, bbox_crs="EPSG:4326")

    assert chip.image.shape == (row1 - row0, col1 - col0, 3)
    assert chip.bounds == (346000 + col0 * 0.5, 5648000 - row1 * 0.5, 346000 + col1 * 0.5, 5648000 - row0 * 0.5)
    assert chip.transform == Affine(0.5, 0, 346000 + col0 * 0.5, 0, -0.5, 5648000 - row0 * 0.5)
    with rasterio.open(oem) as ds:
        expected = ds.read(window=Window(col0, row0, col1 - col0, row1 - row0)).transpose(1, 2, 0)
    assert np.array_equal(chip.image, expected)


def test_bbox_in_raster_crs_snaps_outward_and_clips(oem):
    chip = read_chip(oem, bbox=(346010.2, 5647400.0, 346020.0, 5647600.3))
    # x: 10.2 m -> col 20 (floor), 20 m -> col 40 exactly; y: clipped at the bottom edge.
    assert chip.bounds == (346010.0, 5647500.0, 346020.0, 5647600.5)
    assert chip.image.shape == (201, 20, 3)


@pytest.mark.parametrize(("bbox", "crs"), [((-180, -90, 180, 90), "EPSG:4326"), ((-2e7, -2e7, 2e7, 2e7), "EPSG:3857")])
def test_world_extent_reads_the_whole_raster(oem, bbox, crs):
    # Projected into UTM directly, such extents collapse to nonsense far from the raster.
    chip = read_chip(oem, bbox=bbox, bbox_crs=crs)
    assert chip.bounds == (346000.0, 5647500.0, 346500.0, 5648000.0)


def test_bbox_off_the_raster(oem):
    with pytest.raises(InputError) as error:
        read_chip(oem, bbox=(7.5, 51.5, 7.6, 51.6), bbox_crs="EPSG:4326")
    message = str(error.value)
    assert "does not overlap" in message
    assert "(7.5, 51.5, 7.6, 51.6) (EPSG:4326)" in message
    assert "(346000, 5647500, 346500, 5648000) (EPSG:25832)" in message


def test_unknown_crs(oem):
    with pytest.raises(InputError, match="CRS 'EPSG:999999' is not recognised"):
        read_chip(oem, bbox=(0, 0, 1, 1), bbox_crs="EPSG:999999")
    with pytest.raises(InputError, match="'not a crs'"):
        read_chip(oem, bbox=(0, 0, 1, 1), bbox_crs="not a crs")


@pytest.mark.parametrize("bbox", [(346400, 5647600, 346100, 5647900), (346100, 5647600, 346400, 5647600)])
def test_inverted_or_empty_bbox(oem, bbox):
    with pytest.raises(InputError, match="empty or inverted"):
        read_chip(oem, bbox=bbox)


def test_spacenet_uint16_becomes_grey_stretched_rgb(spacenet):
    chip = read_chip(spacenet)
    with rasterio.open(spacenet) as ds:
        raw = ds.read(1)
    image = chip.image
    assert image.shape == (900, 900, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    grey = image[..., 0]
    # 2-98 % stretch: a few percent saturate at each end, the rest spreads over the range.
    assert 0.005 < (grey == 0).mean() < 0.05 and 0.005 < (grey == 255).mean() < 0.05
    assert 60 < grey.mean() < 190 and grey.std() > 40
    assert len(np.unique(grey)) > 200
    assert np.corrcoef(grey.ravel(), raw.ravel())[0, 1] > 0.9


def test_stretch_is_the_same_for_two_extents(spacenet):
    # Two overlapping extents with different content must colour shared pixels alike.
    a = read_chip(spacenet, bbox=(733601, 3724689, 733801, 3724889))  # rows 500:900, cols 0:400
    b = read_chip(spacenet, bbox=(733701, 3724789, 734051, 3725139))  # rows 0:700, cols 200:900
    whole = read_chip(spacenet)
    # Shared part: rows 500:700, cols 200:400 of the raster.
    shared_a = a.image[:200, 200:400]
    shared_b = b.image[500:700, :200]
    assert np.array_equal(shared_a, shared_b)
    assert np.array_equal(shared_a, whole.image[500:700, 200:400])


def test_ten_band_uint16_band_selection(make_geotiff):
    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(1000 * k, 100 + 20 * k, (60, 80)) for k in range(1, 11)])
    path = make_geotiff(np.clip(data, 0, 65535).astype(np.uint16))
    with rasterio.open(path) as ds:
        bands = ds.read()

    chip = read_chip(path, bands=(4, 3, 2))
    for channel, band in enumerate((4, 3, 2)):
        assert np.abs(chip.image[..., channel].astype(int) - _stretch(bands[band - 1])).max() <= 1
    # Each band is random, so a wrong band choice would not match.
    assert not np.array_equal(chip.image[..., 0], chip.image[..., 1])

    default = read_chip(path)
    assert np.abs(default.image[..., 0].astype(int) - _stretch(bands[0])).max() <= 1
    grey = read_chip(path, bands=[7])
    assert np.array_equal(grey.image[..., 0], grey.image[..., 2])


def test_band_errors(make_geotiff):
    path = make_geotiff(np.ones((10, 8, 8), dtype=np.uint16))
    with pytest.raises(InputError, match="Band 11 does not exist: .* has 10 bands"):
        read_chip(path, bands=(11, 3, 2))
    with pytest.raises(InputError, match="has 2 bands: give three"):
        read_chip(path, bands=(4, 3))


def test_float32_nodata_and_nan_are_masked(make_geotiff):
    data = np.linspace(-1.0, 1.0, 40 * 50, dtype=np.float32).reshape(1, 40, 50)
    data[0, :10, :] = -9999.0  # nodata rows
    data[0, 20, 5] = np.nan  # undeclared NaN
    chip = read_chip(make_geotiff(data, nodata=-9999.0))
    assert not chip.valid[:10].any() and not chip.valid[20, 5]
    assert chip.valid.sum() == 30 * 50 - 1
    assert (chip.image[~chip.valid] == 0).all()
    # Nodata did not pull the stretch down: valid pixels span the full range.
    valid_grey = chip.image[..., 0][chip.valid]
    assert valid_grey.min() == 0 and valid_grey.max() == 255 and 100 < valid_grey.mean() < 155


def test_alpha_band_masks_pixels(make_geotiff):
    data = np.full((4, 20, 20), 120, dtype=np.uint8)
    data[3] = 255
    data[3, :, :5] = 0  # transparent columns
    path = make_geotiff(data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [
            rasterio.enums.ColorInterp.red,
            rasterio.enums.ColorInterp.green,
            rasterio.enums.ColorInterp.blue,
            rasterio.enums.ColorInterp.alpha,
        ]
    chip = read_chip(path)
    assert not chip.valid[:, :5].any() and chip.valid[:, 5:].all()
    assert (chip.image[:, :5] == 0).all() and (chip.image[:, 5:] == 120).all()


def test_all_nodata(make_geotiff):
    path = make_geotiff(np.zeros((1, 16, 16), dtype=np.int16), nodata=0)
    with pytest.raises(InputError, match="only nodata pixels"):
        read_chip(path)


def test_extent_with_only_nodata(make_geotiff):
    data = np.full((1, 20, 20), 7, dtype=np.uint16)
    data[0, :, :10] = 0
    path = make_geotiff(data, nodata=0, transform=Affine(1, 0, 0, 0, -1, 20))
    with pytest.raises(InputError, match="only nodata pixels"):
        read_chip(path, bbox=(0, 0, 10, 20))
    assert read_chip(path, bbox=(10, 0, 20, 20)).valid.all()


def test_constant_band_does_not_divide_by_zero(make_geotiff):
    path = make_geotiff(np.full((1, 12, 12), 500, dtype=np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's divide-by-zero warnings
        chip = read_chip(path)
    assert chip.valid.all() and (chip.image == 0).all()


def test_not_a_raster(tmp_path, oem):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"notes.tif is not a raster file that GDAL can read \("):
        read_chip(text)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(oem.read_bytes()[:200_000])
    with pytest.raises(InputError, match="truncated.tif is not a raster file that GDAL can read"):
        read_chip(truncated)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="Raster file not found: .*missing.tif"):
        read_chip(tmp_path / "missing.tif")


def test_max_side_decimates(oem):
    chip = read_chip(oem, max_side=250)
    assert chip.image.shape == (250, 250, 3)
    assert chip.transform == Affine(2.0, 0, 346000, 0, -2.0, 5648000)
    assert chip.bounds == (346000.0, 5647500.0, 346500.0, 5648000.0)
    assert chip.pixel_size_m == 2.0
    with rasterio.open(oem) as ds:
        block_mean = ds.read(1)[:4, :4].mean()
    assert abs(int(chip.image[0, 0, 0]) - block_mean) <= 1  # averaged, not sampled

    strip = read_chip(oem, bbox=(346000, 5647750, 346500, 5648000), max_side=100)
    assert strip.image.shape == (50, 100, 3)
    assert strip.transform.a == 5.0 and strip.transform.e == -5.0
    assert read_chip(oem, max_side=None).image.shape == (1000, 1000, 3)


def test_geographic_pixel_size(make_geotiff):
    # 0.0001 degree pixels centred at 60 N: about 111.32 km * cos(60) * 1e-4 = 5.57 m wide.
    path = make_geotiff(
        np.full((3, 100, 100), 50, dtype=np.uint8),
        crs="EPSG:4326",
        transform=Affine(0.0001, 0, 10.0, 0, -0.0001, 60.005),
    )
    chip = read_chip(path)
    assert chip.pixel_size_m == pytest.approx(111320 * math.cos(math.radians(60)) * 1e-4, rel=0.005)
    sub = read_chip(path, bbox=(10.002, 60.0, 10.004, 60.002), bbox_crs="EPSG:4326")
    assert sub.image.shape == (20, 20, 3)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_plain_png_without_crs(shared_data):
    png = shared_data / "loveda" / "img_dir" / "0.png"
    chip = read_chip(png, bbox=(100, 200, 300, 250))
    assert chip.crs is None and chip.pixel_size_m == 1.0
    assert chip.image.shape == (50, 200, 3)
    assert chip.bounds == (100.0, 200.0, 300.0, 250.0)
    with rasterio.open(png) as ds:
        assert np.array_equal(chip.image, ds.read(window=Window(100, 200, 200, 50)).transpose(1, 2, 0))
    with pytest.raises(InputError, match="has no CRS"):
        read_chip(png, bbox=(0, 0, 1, 1), bbox_crs="EPSG:4326")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4,3,2", (4, 3, 2)), (" 4, 3 ,2 ", (4, 3, 2)), ("8", (8,)), ("5 4 3", (5, 4, 3)), (None, None), ("", None)],
)
def test_parse_bands(text, expected):
    assert parse_bands(text) == expected


@pytest.mark.parametrize("text", ["red,green,blue", "0,1,2", "1.5", "4;3;2", "-1"])
def test_parse_bands_rejects(text):
    with pytest.raises(InputError, match=f"Band list '{text}' is not valid"):
        parse_bands(text)
