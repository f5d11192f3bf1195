"""Read georeferenced rasters as 8-bit RGB chips for a CLIP-style model.

Any raster GDAL can open is accepted: multispectral, 16-bit, float, with
nodata values, alpha bands or internal masks, and plain images without a
georeference (PNG, JPEG), which get an identity transform and no CRS.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from shapely.errors import GEOSException
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from ..errors import InputError

Bounds = tuple[float, float, float, float]

# Long side of the whole-raster sample that the percentile stretch is computed on.
STATS_SIDE = 1024
STRETCH_PERCENTILES = (2.0, 98.0)
COORDINATE_LIMIT = 1e9
# Slack for window edges that land on pixel edges up to floating-point error.
_SNAP_EPS = 1e-6

_stretch_cache: dict[tuple[str, float, int], tuple[float, float]] = {}
_geod = pyproj.Geod(ellps="WGS84")
_WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class RasterInfo:
    """What a raster is, without reading its pixels.

    ``bounds`` is (minx, miny, maxx, maxy) in the raster CRS (pixel coordinates
    for rasters without a CRS).
    """

    path: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: CRS | None
    transform: Affine
    bounds: Bounds
    nodata: float | None


@dataclass
class RasterChip:
    """An extent of a raster, as 8-bit RGB plus validity mask."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, ready for a CLIP model
    valid: np.ndarray  # (H, W) bool, False where any selected band is nodata/masked
    transform: Affine  # chip pixel (col, row) -> raster CRS coordinates
    crs: CRS | None  # the raster's CRS (None for plain images such as PNGs)
    bounds: Bounds  # chip (minx, miny, maxx, maxy) in the raster CRS
    pixel_size_m: float  # ground size of one chip pixel in metres (1.0 without CRS)
    source: str  # the raster path


def describe_raster(path: str | os.PathLike) -> RasterInfo:
    """Return size, bands, CRS and extent of the raster at ``path``."""
    with open_raster(path) as ds:
        return RasterInfo(
            path=str(path),
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtypes=tuple(ds.dtypes),
            crs=ds.crs,
            transform=ds.transform,
            bounds=window_bounds(Window(0, 0, ds.width, ds.height), ds.transform),
            nodata=ds.nodata,
        )


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse a band list such as ``"4,3,2"`` into 1-based indexes; empty means default."""
    if not text or not text.strip():
        return None
    items = text.replace(",", " ").split()
    if not all(item.isdigit() and int(item) >= 1 for item in items):
        raise InputError(
            f'Band list {text!r} is not valid: give 1-based band numbers separated by commas, e.g. "4,3,2".'
        )
    return tuple(int(item) for item in items)


def read_chip(
    path: str | os.PathLike,
    bbox: Bounds | None = None,
    bbox_crs: str | None = None,
    bands: Sequence[int] | None = None,
    max_side: int | None = 2048,
) -> RasterChip:
    """Read an extent of a raster as an RGB chip.

    ``bbox`` is (minx, miny, maxx, maxy) in ``bbox_crs`` (default: the raster
    CRS; pixel coordinates for rasters without a CRS) and is snapped outward to
    the raster's pixel grid; None reads the whole raster. ``bands`` are three
    (R, G, B) or one (grey) 1-based band indexes. If the extent's long side
    exceeds ``max_side`` pixels it is read decimated by averaging.
    """
    with open_raster(path) as ds:
        indexes = select_bands(bands, ds.count, path)
        window = extent_window(ds, bbox, bbox_crs)
        out_h, out_w = _out_shape(window, max_side)
        # Only the window is read, and decimated by GDAL (from overviews when the
        # file has them), so huge rasters are never loaded whole.
        image, valid = read_rgb(ds, indexes, window, (out_h, out_w), Resampling.average)
        if not valid.any():
            raise InputError("The requested extent contains only nodata pixels.")
        transform = (
            ds.transform
            @ Affine.translation(window.col_off, window.row_off)
            @ Affine.scale(window.width / out_w, window.height / out_h)
        )
        return RasterChip(
            image=image,
            valid=valid,
            transform=transform,
            crs=ds.crs,
            bounds=window_bounds(window, ds.transform),
            pixel_size_m=_pixel_size_m(transform, ds.crs, out_w, out_h),
            source=str(path),
        )


GDAL_CACHE_MB = 128


def bounded_gdal_cache() -> rasterio.Env:
    """GDAL's block cache bounded: by default it grows to 5% of the machine's memory as a streamed
    job reads and writes blocks, so a big raster would cost more memory than a small one."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def read_rgb(
    ds: DatasetReader,
    indexes: Sequence[int],
    window: Window,
    out_shape: tuple[int, int],
    resampling: Resampling = Resampling.bilinear,
) -> tuple[np.ndarray, np.ndarray]:
    """A (possibly fractional) window resampled by GDAL to ``out_shape`` (H, W).

    Returns the (H, W, 3) uint8 image (0 at nodata) and the (H, W) validity mask. The same
    window always gives the same pixels, whichever request it is read for.
    """
    shape = (len(indexes), *out_shape)
    data = ds.read(indexes, window=window, out_shape=shape, resampling=resampling)
    masks = ds.read_masks(indexes, window=window, out_shape=shape)
    valid = np.all((masks > 0) & _finite(data), axis=0)
    if not valid.any():
        return np.zeros((*out_shape, 3), dtype=np.uint8), valid
    image = np.stack([_to_uint8(ds, band, values, valid) for band, values in zip(indexes, data, strict=True)], axis=-1)
    image[~valid] = 0
    return image, valid


def read_valid(ds: DatasetReader, indexes: Sequence[int], window: Window, out_shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: where the selected bands hold data in ``window`` read at ``out_shape``."""
    shape = (len(indexes), *out_shape)
    data = ds.read(indexes, window=window, out_shape=shape, resampling=Resampling.nearest)
    return np.all((ds.read_masks(indexes, window=window, out_shape=shape) > 0) & _finite(data), axis=0)


def raster_pixel_size_m(ds: DatasetReader) -> float | None:
    """Ground size of one of the raster's own pixels in metres; None without a CRS."""
    return None if ds.crs is None else _pixel_size_m(ds.transform, ds.crs, ds.width, ds.height)


def read_geojson(source: str | os.PathLike | dict, what: str) -> tuple[dict, str]:
    """A GeoJSON object (from a file, or as given) and its CRS: its ``crs`` member
    (``{"type": "name", "properties": {"name": "EPSG:..."}}``), else EPSG:4326 as RFC 7946 says."""
    if not isinstance(source, dict):
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read the {what} file {source}: {exc}.") from None
    if not isinstance(source, dict):
        raise InputError(f"The {what} must be a GeoJSON object.")
    return source, (source.get("crs") or {}).get("properties", {}).get("name", "EPSG:4326")


def read_area(source: str | os.PathLike | dict) -> tuple[list[BaseGeometry], str]:
    """Processing-area polygons from GeoJSON (a FeatureCollection, a Feature or a geometry; file or dict)
    and their CRS (see ``read_geojson``)."""
    source, crs = read_geojson(source, "area")
    items = source.get("features") if source.get("type") == "FeatureCollection" else [source]
    geometries = []
    for item in items or []:
        try:
            geometry = shape(item.get("geometry", item) if isinstance(item, dict) else item)
        except (KeyError, TypeError, ValueError, AttributeError, GEOSException):
            geometry = None
        if geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon") or not geometry.is_valid:
            raise InputError("The processing area must be valid Polygon or MultiPolygon features.")
        if not geometry.is_empty:
            geometries.append(geometry)
    if not geometries:
        raise InputError("The processing area holds no polygon: select at least one polygon.")
    return geometries, crs


def area_in_raster_crs(ds: DatasetReader, geometries: Sequence[BaseGeometry], crs: str | None) -> list[dict]:
    """Area polygons as GeoJSON geometries in the raster CRS; an area off the raster is an InputError."""
    shapes = [mapping(g) for g in geometries]
    if crs is not None and ds.crs is not None:
        _parse_crs(crs)
        try:
            shapes = [transform_geom(crs, ds.crs, g) for g in shapes]
        except (CRSError, ValueError) as exc:
            raise InputError(f"The processing area cannot be transformed into the raster's CRS ({exc}).") from None
    union = shapely.union_all([shape(g) for g in shapes])
    raster = box(*window_bounds(Window(0, 0, ds.width, ds.height), ds.transform))
    if union.is_empty or not union.intersects(raster) or union.intersection(raster).area <= 0:
        raise InputError(
            f"The processing area {_fmt(union.bounds) if not union.is_empty else '()'} does not overlap the raster "
            f"{ds.name}, whose bounds are {_fmt(raster.bounds)} "
            f"({_crs_label(ds.crs) if ds.crs else 'pixel coordinates'})."
        )
    return shapes


def _crs_label(crs: CRS) -> str:
    """A short name for ``crs`` in messages: ``EPSG:xxxx`` when it has one."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else pyproj.CRS.from_user_input(crs).name


# Formats that cannot point at other files (a VRT can name any path, archive or URL as a source).
SELF_CONTAINED_DRIVERS = {"GTiff": "GeoTIFF", "JP2OpenJPEG": "JPEG 2000", "PNG": "PNG", "JPEG": "JPEG"}
_allowed_drivers: tuple[str, ...] | None = None  # None: any format GDAL reads


def disable_network() -> None:
    """GDAL reaches no network in this process (none of /vsicurl/ and friends), with short timeouts
    should a path ever get that far."""
    os.environ.update(
        {
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".rsov-no-network",
            "GDAL_HTTP_TIMEOUT": "5",
            "GDAL_HTTP_CONNECTTIMEOUT": "5",
            "GDAL_HTTP_MAX_RETRY": "0",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        }
    )


def restrict_drivers(drivers: Iterable[str] | None) -> None:
    """Open rasters with these GDAL drivers only, in this process (the server: SELF_CONTAINED_DRIVERS)."""
    global _allowed_drivers
    _allowed_drivers = tuple(drivers) if drivers is not None else None


def _open_dataset(path: str | os.PathLike) -> DatasetReader:
    if _allowed_drivers is None:
        return rasterio.open(path)
    if str(path).startswith("/vsi") or not Path(path).is_file():  # no virtual paths, FIFOs or devices
        raise InputError(f"{path} is not a regular local file.")
    for driver in _allowed_drivers:  # each driver alone: a VRT renamed to .tif is not read as one
        try:
            return rasterio.open(path, driver=driver)
        except RasterioIOError:
            continue
    names = ", ".join(SELF_CONTAINED_DRIVERS.get(d, d) for d in _allowed_drivers)
    raise InputError(f"{path} is not a raster this backend reads: it reads {names} files only (no VRT).")


@contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[DatasetReader]:
    """Open a raster, turning "missing", "not a raster" and "unreadable" into InputError."""
    # GDAL virtual paths (/vsicurl/..., /vsizip/...) are not files on disk.
    if not str(path).startswith("/vsi") and not Path(path).exists():
        raise InputError(f"Raster file not found: {path}.")
    try:
        with warnings.catch_warnings():
            # Plain images are expected: they get an identity transform.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = _open_dataset(path)
    except RasterioIOError as error:
        raise InputError(f"{path} is not a raster file that GDAL can read ({error}).") from None
    with ds:
        try:
            yield ds
        except RasterioIOError as error:
            # GDAL opens truncated files from their header and fails on the pixels.
            detail = error.__cause__ or error
            raise InputError(
                f"{path} is not a raster file that GDAL can read: it may be truncated or corrupt ({detail})."
            ) from None


def check_header(ds: DatasetReader, max_pixels: int, max_bands: int) -> None:
    """Refuse, from the header alone, rasters larger than the limits or of complex data."""
    if ds.width * ds.height > max_pixels or ds.count > max_bands:
        raise InputError(
            f"{ds.name} is {ds.width} x {ds.height} px with {ds.count} bands, over this backend's limits "
            f"of {max_pixels:.3g} px and {max_bands} bands."
        )
    check_real(ds)


def check_real(ds: DatasetReader) -> None:
    """Refuse complex data, which no stretch to 8-bit RGB can show."""
    if any(np.dtype(d).kind == "c" for d in ds.dtypes):
        raise InputError(f"{ds.name} holds complex numbers ({ds.dtypes[0]}): give a raster of real values.")


def select_bands(bands: Sequence[int] | None, count: int, path: str | os.PathLike) -> list[int]:
    """Return the three 1-based band indexes to use as R, G, B."""
    if bands is None:
        return [1, 2, 3] if count >= 3 else [1, 1, 1]
    bands = list(bands)
    if len(bands) not in (1, 3):
        raise InputError(f"Band list {bands} has {len(bands)} bands: give three (R,G,B) or one (shown as grey).")
    bad = [band for band in bands if not 1 <= band <= count]
    if bad:
        raise InputError(
            f"Band {bad[0]} does not exist: {path} has {count} band{'s' if count > 1 else ''} (numbered from 1)."
        )
    return bands * 3 if len(bands) == 1 else bands


def extent_window(ds: DatasetReader, bbox: Bounds | None, bbox_crs: str | None) -> Window:
    """The integer pixel window covering ``bbox``, snapped outward and clipped to the raster."""
    if bbox is None:
        return Window(0, 0, ds.width, ds.height)
    minx, miny, maxx, maxy = bbox
    if not all(math.isfinite(v) for v in bbox):
        raise InputError(f"Extent {_fmt(bbox)} holds a number that is not finite: give four finite coordinates.")
    if not (minx < maxx and miny < maxy):
        raise InputError(f"Extent {_fmt(bbox)} is empty or inverted: give it as minx, miny, maxx, maxy with min < max.")
    bounds = _to_raster_crs(ds, bbox, bbox_crs)
    # Map all four corners through the inverse transform rather than use
    # windows.from_bounds, which rejects south-up grids such as plain images.
    corners = [~ds.transform @ (x, y) for x in bounds[::2] for y in bounds[1::2]]
    # clamped just outside the raster: extents far larger than it must not overflow the pixel maths
    cols = [min(max(c, -1.0), ds.width + 1.0) for c, _ in corners]
    rows = [min(max(r, -1.0), ds.height + 1.0) for _, r in corners]
    col0 = max(math.floor(min(cols) + _SNAP_EPS), 0)
    row0 = max(math.floor(min(rows) + _SNAP_EPS), 0)
    col1 = min(math.ceil(max(cols) - _SNAP_EPS), ds.width)
    row1 = min(math.ceil(max(rows) - _SNAP_EPS), ds.height)
    if col1 <= col0 or row1 <= row0:
        raise _outside_error(ds, bbox, bbox_crs)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _to_raster_crs(ds: DatasetReader, bbox: Bounds, bbox_crs: str | None) -> Bounds:
    """Transform ``bbox`` from ``bbox_crs`` into the raster CRS (bounding box of the densified edges)."""
    if bbox_crs is None:
        return bbox
    src_crs = _parse_crs(bbox_crs)
    # no CRS has coordinates beyond a billion units; PROJ can loop for ages on 1e300
    x0, y0, x1, y1 = (min(max(v, -COORDINATE_LIMIT), COORDINATE_LIMIT) for v in bbox)
    bbox = (x0, y0, x1, y1)
    if ds.crs is None:
        raise InputError(
            f"{ds.name} has no CRS, so an extent in {bbox_crs} cannot be placed on it: "
            "give the extent in pixel coordinates without a CRS."
        )
    # Compare in lon/lat first: an extent much larger than the raster (a zoomed-out
    # map canvas) cannot be projected into a local projection such as UTM.
    raster_bounds = window_bounds(Window(0, 0, ds.width, ds.height), ds.transform)
    raster_ll = transform_bounds(ds.crs, _WGS84, *raster_bounds, densify_pts=21)
    bbox_ll = transform_bounds(src_crs, _WGS84, *bbox, densify_pts=21)
    if raster_ll[0] < raster_ll[2] and bbox_ll[0] < bbox_ll[2]:  # neither crosses the antimeridian
        if not _overlaps(bbox_ll, raster_ll):
            raise _outside_error(ds, bbox, bbox_crs)
        if _contains(bbox_ll, raster_ll):
            return raster_bounds
    bounds = transform_bounds(src_crs, ds.crs, *bbox, densify_pts=21)
    if not all(math.isfinite(v) for v in bounds):
        raise _outside_error(ds, bbox, bbox_crs)
    return bounds


def _overlaps(a: Bounds, b: Bounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _contains(outer: Bounds, inner: Bounds) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _parse_crs(text: str) -> CRS:
    try:
        pyproj.CRS.from_user_input(text)  # PROJ also takes pipelines and operations, which are not CRSs
        return CRS.from_user_input(text)
    except (CRSError, pyproj.exceptions.CRSError):
        raise InputError(
            f'CRS {text!r} is not recognised: give an EPSG code such as "EPSG:4326" or a WKT definition.'
        ) from None


def _outside_error(ds: DatasetReader, bbox: Bounds, bbox_crs: str | None) -> InputError:
    raster_crs = _crs_label(ds.crs) if ds.crs else "pixel coordinates"
    bbox_label = bbox_crs or raster_crs
    raster_bounds = window_bounds(Window(0, 0, ds.width, ds.height), ds.transform)
    return InputError(
        f"The requested extent {_fmt(bbox)} ({bbox_label}) does not overlap the raster {ds.name}, "
        f"whose bounds are {_fmt(raster_bounds)} ({raster_crs})."
    )


def _fmt(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in bounds) + ")"


def window_bounds(window: Window, transform: Affine) -> Bounds:
    """(minx, miny, maxx, maxy) of ``window``, whatever the sign of the pixel size."""
    x0, y0 = transform @ (window.col_off, window.row_off)
    x1, y1 = transform @ (window.col_off + window.width, window.row_off + window.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _out_shape(window: Window, max_side: int | None) -> tuple[int, int]:
    """(rows, cols) to read ``window`` at, keeping the aspect ratio, long side <= ``max_side``."""
    height, width = int(window.height), int(window.width)
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _finite(data: np.ndarray) -> np.ndarray:
    """(B, H, W) bool: False at NaN/inf, which float rasters often use without declaring nodata."""
    return np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)


def _to_uint8(ds: DatasetReader, band: int, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) band values -> (H, W) uint8; non-uint8 bands get the whole-raster percentile stretch."""
    if values.dtype == np.uint8:
        return values
    low, high = _stretch_limits(ds, band)
    if math.isnan(low):  # the whole-raster sample missed every valid pixel: use the chip's
        low, high = np.percentile(values[valid], STRETCH_PERCENTILES)
    # A constant band maps to 0 instead of dividing by zero.
    span = max(float(high - low), float(np.finfo(np.float64).eps))
    scaled = (np.nan_to_num(values.astype(np.float64)) - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretch_limits(ds: DatasetReader, band: int) -> tuple[float, float]:
    """2nd and 98th percentiles of the valid pixels of the whole band (NaN if none were sampled).

    Computed on a decimated read of the whole raster, not the chip, so that
    different extents of one raster get the same colours; cached per file version.
    """
    key = (ds.name, _mtime(ds.name), band)
    if key not in _stretch_cache:
        scale = min(1.0, STATS_SIDE / max(ds.width, ds.height))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        values = ds.read(band, out_shape=shape)
        sampled = values[(ds.read_masks(band, out_shape=shape) > 0) & _finite(values)]
        limits = np.percentile(sampled, STRETCH_PERCENTILES) if sampled.size else (np.nan, np.nan)
        _stretch_cache[key] = (float(limits[0]), float(limits[1]))
    return _stretch_cache[key]


def _mtime(path: str) -> float:
    """Modification time of a file, 0 for GDAL virtual paths."""
    return os.path.getmtime(path) if os.path.exists(path) else 0.0


def _pixel_size_m(transform: Affine, crs: CRS | None, width: int, height: int) -> float:
    """Ground size in metres of one pixel of ``transform`` (at the centre for geographic CRSs)."""
    size = math.hypot(transform.a, transform.d)
    if crs is None:
        return 1.0
    if not crs.is_geographic:
        return size * crs.linear_units_factor[1]
    lon, lat = transform @ (width / 2, height / 2)
    _, _, distance = _geod.inv(lon - size / 2, lat, lon + size / 2, lat)
    return float(distance)
