"""Turn per-pixel class maps into georeferenced polygons and write them for QGIS.

Outputs are GeoPackage or GeoJSON vectors (one MultiPolygon feature per
connected region of one class) and single-band GeoTIFF class rasters with a
colour table. Every file is written atomically: it appears complete at its path
or not at all. Vector files are results ready for the plugin's review (a ``status`` field, all
``new``); a GeoPackage also carries its QGIS style (``qml``) as the default of each layer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyogrio.raw
import pyproj
import rasterio
import rasterio.features
import rasterio.windows
import shapely
import shapely.affinity
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from ..atomic import atomic_output
from ..errors import InputError
from ..palette import class_rgb
from .qml import result_qml

VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON"}
RASTER_SUFFIXES = (".tif", ".tiff")
# Attribute field -> numpy dtype, in layer order; pyogrio writes object as a string field.
FIELDS = {"class": object, "class_id": np.int32, "score": np.float64, "area_m2": np.float64}
STATUS, NEW = "status", "new"  # the review field of result files (the plugin's schema.STATUS, schema.NEW)
GEOMETRY_COLUMN = "geom"
STYLE_TABLE = "layer_styles"  # where QGIS reads a GeoPackage layer's default style from
# Its columns as QGIS itself creates them (QgsVectorLayer.saveStyleToDatabase); unset ones are "".
STYLE_COLUMNS: dict[str, npt.DTypeLike] = {
    **dict.fromkeys(
        ("f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName", "styleQML", "styleSLD"),
        object,
    ),
    "useAsDefault": bool,
    **dict.fromkeys(("description", "owner", "ui"), object),
    "update_time": "datetime64[ms]",
}
STYLE_NAME, STYLE_DESCRIPTION = "rsov", "rsov classes"
# GeoPackage 1.2, as QGIS 3.22's GDAL writes it: that GDAL warns about the 1.4 files newer ones write.
GPKG_OPTIONS = {"VERSION": "1.2", "GEOMETRY_NAME": GEOMETRY_COLUMN}

_geod = pyproj.Geod(ellps="WGS84")


@dataclass
class VectorFeature:
    """One connected region of one class."""

    geometry: BaseGeometry  # Polygon or MultiPolygon in the raster CRS (holes kept)
    class_name: str
    class_id: int
    score: float  # mean winning-class probability over the region's pixels (instances: the object's score)
    area_m2: float
    instance_id: int | None = None  # set in instance mode, where one feature is one object


def polygonize(
    class_map: np.ndarray,
    score_map: np.ndarray,
    valid: np.ndarray | None,
    transform: Affine,
    crs: CRS | str | None,
    class_names: Sequence[str],
    simplify_px: float = 0.0,
    min_area_m2: float = 0.0,
) -> list[VectorFeature]:
    """Vectorize a class map into one feature per 4-connected region of one class.

    ``class_map`` is (H, W) integer with 0 = background and k >= 1 meaning
    ``class_names[k - 1]``; ``score_map`` is (H, W) float, the winning class's
    probability; ``valid`` is (H, W) bool or None, and invalid pixels never
    produce features. ``simplify_px`` is a Douglas-Peucker tolerance in pixels
    (topology-preserving; results are repaired to valid polygons).
    Features smaller than ``min_area_m2`` are dropped; the rest are ordered by
    class id, then by decreasing area.
    """
    valid = np.ones(class_map.shape, dtype=bool) if valid is None else valid
    # the whole map is one block with no seams: every region is finished at once
    features = SeamPolygonizer(transform, crs, class_names, class_map.shape, simplify_px, min_area_m2).add(
        (0, 0, *class_map.shape), class_map, score_map, valid
    )
    return sorted(features, key=lambda f: (f.class_id, -f.area_m2))


class VectorWriter:
    """Write features batch by batch into a GeoPackage (or GeoJSON) that appears whole at the end.

    ``layers`` are created up front (empty ones keep the schema); ``add`` appends. GeoJSON cannot
    be appended to, so its features are kept until the file is written on close. A GeoPackage
    gets, on close, each layer's style: the classes of ``class_names`` (class k is
    ``class_names[k - 1]``) and any other class its features have.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        crs: CRS | str | None,
        layers: Sequence[str] = ("rsov",),
        instances: bool = False,
        class_names: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.driver = VECTOR_DRIVERS.get(self.path.suffix.lower())
        if self.driver is None:
            raise InputError(
                f"Cannot write {self.path}: the extension {self.path.suffix!r} is not supported; use .gpkg or .geojson."
            )
        if len(layers) > 1 and self.driver != "GPKG":
            raise InputError(
                f"Cannot write {self.path}: one layer per class (or extra layers) needs a GeoPackage (.gpkg) output."
            )
        self.crs_wkt = None if crs is None else CRS.from_user_input(crs).to_wkt()
        self.instances = instances
        self.fields = {**FIELDS, "instance_id": np.int32} if instances else FIELDS
        self.layers = list(dict.fromkeys(layers))
        self.classes = dict(enumerate(class_names, start=1))  # class id -> name
        self.count = 0
        self._held: dict[str, list[VectorFeature]] = {name: [] for name in self.layers}
        self._atomic = atomic_output(self.path)
        self._tmp: Path | None = None

    def __enter__(self) -> VectorWriter:
        self._tmp = self._atomic.__enter__()
        if self.driver == "GPKG":
            for name in self.layers:
                self._write(name, [], append=False)
        return self

    def add(self, features: Sequence[VectorFeature], layer: str | None = None) -> None:
        """Append ``features`` to ``layer`` (default: the first)."""
        name = layer or self.layers[0]
        self.count += len(features)
        for feature in features:
            self.classes.setdefault(feature.class_id, feature.class_name)
        if self.driver == "GPKG":
            if features:
                self._write(name, features, append=True)
        else:
            self._held[name] += features

    def __exit__(self, kind, value, traceback) -> bool | None:
        if kind is None and self.driver == "GPKG":
            self._write_styles()
        elif kind is None:
            self._write(self.layers[0], self._held[self.layers[0]], append=False)
        return self._atomic.__exit__(kind, value, traceback)

    def _write(self, layer: str, features: Sequence[VectorFeature], append: bool) -> None:
        rows = [_properties(f) for f in features]
        pyogrio.raw.write(
            self._tmp,
            np.array([shapely.to_wkb(_as_multi(f.geometry)) for f in features], dtype=object),
            [
                *(np.array([row[field] for row in rows], dtype=dtype) for field, dtype in self.fields.items()),
                np.full(len(features), NEW, dtype=object),
            ],
            [*self.fields, STATUS],
            layer=layer,
            driver=self.driver,
            geometry_type="MultiPolygon",
            crs=self.crs_wkt,
            append=append,
            **(GPKG_OPTIONS if self.driver == "GPKG" and not append else {}),
        )

    def _write_styles(self) -> None:
        """Every layer's style as its default in QGIS's ``layer_styles`` table."""
        style = {
            "f_geometry_column": GEOMETRY_COLUMN,
            "styleName": STYLE_NAME,
            "useAsDefault": True,
            "styleQML": result_qml(sorted(self.classes.items()), self.instances),
            "description": STYLE_DESCRIPTION,
            "update_time": np.datetime64("now", "ms"),
        }
        rows = [{**style, "f_table_name": layer} for layer in self.layers]
        pyogrio.raw.write(
            self._tmp,
            None,
            [np.array([row.get(name, "") for row in rows], dtype=dtype) for name, dtype in STYLE_COLUMNS.items()],
            list(STYLE_COLUMNS),
            layer=STYLE_TABLE,
            driver="GPKG",
            geometry_type=None,
            append=True,
            FID="id",
        )


def write_vector(
    features: Sequence[VectorFeature],
    path: str | os.PathLike,
    crs: CRS | str | None,
    *,
    layer: str = "rsov",
    layer_per_class: bool = False,
    class_names: Sequence[str] = (),
    extra_layers: Mapping[str, Sequence[VectorFeature]] | None = None,
    instances: bool = False,
) -> Path:
    """Write features to a GeoPackage (``.gpkg``) or GeoJSON (``.geojson``) file.

    Fields are class, class_id, score, area_m2 and status (``new``); geometries are MultiPolygons.
    GeoPackage gets one layer named ``layer``, or with ``layer_per_class`` one
    layer per class named after it (every name in ``class_names`` gets a layer, empty
    if the class was not found, so a vocabulary always yields the same layers), each with its
    style: the classes of ``class_names`` (the vocabulary) and of ``features``. GeoJSON is
    written in the raster CRS, not WGS84 as RFC 7946 asks: GDAL records that CRS in a "crs" member, which QGIS
    and GDAL read, and no reprojection blurs the pixel-aligned edges. An empty
    ``features`` still writes an empty layer with the schema. ``extra_layers`` (GeoPackage
    only) go into the same file, e.g. oriented boxes beside instance outlines. ``instances``
    adds the ``instance_id`` field (also to empty layers).
    """
    layers = _layers(features, layer, layer_per_class, class_names) | dict(extra_layers or {})
    with VectorWriter(path, crs, list(layers), instances, class_names) as writer:
        for name, group in layers.items():
            writer.add(group, name)
    return Path(path)


class SeamPolygonizer:
    """Vectorize a class map block by block, in any order, without holding the map.

    A region inside one block is finished at once; a region that reaches a block seam is kept,
    in pixel coordinates (exact integers, so pieces meet exactly), and its pieces are dissolved
    across seams at ``finish``: it comes out as one polygon, as if the map had been whole.
    """

    def __init__(
        self,
        transform: Affine,
        crs: CRS | str | None,
        class_names: Sequence[str],
        size: tuple[int, int],
        simplify_px: float = 0.0,
        min_area_m2: float = 0.0,
    ) -> None:
        self.transform = transform
        self.crs = None if crs is None else CRS.from_user_input(crs)
        self.class_names = list(class_names)
        self.height, self.width = size
        self.simplify_px = simplify_px
        self.min_area_m2 = min_area_m2
        self._open: dict[int, list[tuple[BaseGeometry, float, float]]] = {}  # class -> (piece, score sum, pixels)

    def add(
        self, block: tuple[int, int, int, int], class_map: np.ndarray, score_map: np.ndarray, valid: np.ndarray
    ) -> list[VectorFeature]:
        """Block (r0, c0, r1, c1) of the map -> the features it finishes."""
        r0, c0, r1, c1 = block
        keep = (class_map > 0) & valid
        _check_class_ids(class_map[keep], self.class_names)
        labels, region_class = _label_regions(class_map, keep)
        index = np.arange(1, len(region_class) + 1)
        sums = ndimage.sum(score_map, labels, index)
        pixels = ndimage.sum(keep, labels, index)
        edges = [
            labels[0] if r0 > 0 else (),
            labels[-1] if r1 < self.height else (),
            labels[:, 0] if c0 > 0 else (),
            labels[:, -1] if c1 < self.width else (),
        ]
        seam = set(np.unique(np.concatenate([np.asarray(e, dtype=np.int32) for e in edges])).tolist()) - {0}
        finished = []
        offset = Affine.translation(c0, r0)
        for geojson, label in rasterio.features.shapes(labels, mask=keep, connectivity=4, transform=offset):
            label = int(label)
            class_id = int(region_class[label - 1])
            if label in seam:
                self._open.setdefault(class_id, []).append((shape(geojson), sums[label - 1], pixels[label - 1]))
            else:
                finished += self._feature(shape(geojson), class_id, sums[label - 1] / pixels[label - 1])
        return finished

    def finish(self) -> list[VectorFeature]:
        """The regions that crossed seams, each dissolved into one feature."""
        out = []
        for class_id, pieces in sorted(self._open.items()):
            merged = shapely.union_all([p for p, _, _ in pieces])
            parts = list(getattr(merged, "geoms", [merged]))
            points = [p.representative_point() for p, _, _ in pieces]
            inside, part = shapely.STRtree(parts).query(points, predicate="within")
            sums, pixels = np.zeros(len(parts)), np.zeros(len(parts))
            np.add.at(sums, part, [pieces[i][1] for i in inside])
            np.add.at(pixels, part, [pieces[i][2] for i in inside])
            for k, geometry in enumerate(parts):
                out += self._feature(geometry, class_id, sums[k] / max(pixels[k], 1.0))
        self._open.clear()
        return out

    def _feature(self, pixel_geometry: BaseGeometry, class_id: int, score: float) -> list[VectorFeature]:
        """A region in pixel coordinates -> its feature (none if simplified away or too small)."""
        geometry = _clean(pixel_geometry, self.simplify_px)
        if geometry is None:
            return []
        t = self.transform
        geometry = shapely.affinity.affine_transform(geometry, [t.a, t.b, t.d, t.e, t.c, t.f])
        area = _area_m2(geometry, self.crs)
        if area < self.min_area_m2:
            return []
        return [VectorFeature(geometry, self.class_names[class_id - 1], class_id, float(score), area)]


def read_vector(path: str | os.PathLike, layer: str | int = 0) -> tuple[CRS | None, list[VectorFeature]]:
    """The CRS and features of a file written by ``write_vector`` (its first layer by default)."""
    meta, _, geometries, values = pyogrio.raw.read(path, layer=layer)
    columns = dict(zip(meta["fields"], values, strict=True))
    features = [
        VectorFeature(
            shapely.from_wkb(g),
            str(columns["class"][i]),
            int(columns["class_id"][i]),
            float(columns["score"][i]),
            float(columns["area_m2"][i]),
            int(columns["instance_id"][i]) if "instance_id" in columns else None,
        )
        for i, g in enumerate(geometries)
    ]
    crs = meta.get("crs")
    return (CRS.from_user_input(crs) if crs else None), features


def mask_geometry(
    mask: np.ndarray, transform: Affine, simplify_px: float = 0.0, fill_holes: bool = False
) -> Polygon | MultiPolygon | None:
    """One object's (h, w) bool mask -> its (Multi)Polygon through ``transform``; None if empty."""
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    parts = [
        shape(g)
        for g, v in rasterio.features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=transform)
        if v
    ]
    if not parts:
        return None
    # 4-connected components are disjoint (at most touching at corners): no union needed
    geometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return _clean(geometry, simplify_px * math.sqrt(abs(transform.determinant)))


def feature_area_m2(geometry: BaseGeometry, crs: CRS | str | None) -> float:
    """Area in square metres of a geometry in ``crs`` (geodesic for geographic CRSs)."""
    return _area_m2(geometry, None if crs is None else CRS.from_user_input(crs))


def features_to_geojson(features: Sequence[VectorFeature], crs: CRS | str | None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection dict in the raster CRS, named in a top-level "crs" member.

    The "crs" member is left out when ``crs`` is None (plain images).
    """
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": mapping(f.geometry),
                "properties": _properties(f),
            }
            for f in features
        ],
    }
    if crs is not None:
        parsed = CRS.from_user_input(crs)
        epsg = parsed.to_epsg()
        name = f"EPSG:{epsg}" if epsg else parsed.to_wkt()
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    return collection


class ClassRasterWriter:
    """A single-band uint8 class GeoTIFF (tiled, LZW, colour table, class names in the band
    description), written block by block and appearing whole at the end."""

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int],
        transform: Affine,
        crs: CRS | str | None,
        class_names: Sequence[str],
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in RASTER_SUFFIXES:
            raise InputError(f"Cannot write {self.path}: a class raster must be a GeoTIFF (.tif).")
        if len(class_names) > 255:
            raise InputError(
                f"A class raster holds at most 255 classes, but {len(class_names)} were given: write polygons instead."
            )
        self.class_names = list(class_names)
        height, width = size
        self.profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "uint8",
            "crs": crs,
            "transform": transform,
            "compress": "lzw",
            "tiled": True,
            "BIGTIFF": "IF_SAFER",
        }
        self._atomic = atomic_output(self.path)

    def __enter__(self) -> ClassRasterWriter:
        self._ds = rasterio.open(self._atomic.__enter__(), "w", **self.profile)
        # the colour table goes in before any pixel: GDAL cannot change the photometric tag later
        self._ds.write_colormap(1, {k: (*class_rgb(k), 255) for k in range(len(self.class_names) + 1)})
        self._ds.set_band_description(
            1, "; ".join(f"{i}={name}" for i, name in enumerate(["background", *self.class_names]))
        )
        return self

    def write(self, row: int, col: int, class_map: np.ndarray) -> None:
        """Write (h, w) class ids with their top-left pixel at (row, col)."""
        _check_class_ids(class_map, self.class_names)
        h, w = class_map.shape
        self._ds.write(class_map.astype(np.uint8), 1, window=rasterio.windows.Window(col, row, w, h))

    def __exit__(self, kind, value, traceback) -> bool | None:
        self._ds.close()
        return self._atomic.__exit__(kind, value, traceback)


def write_class_raster(
    class_map: np.ndarray,
    transform: Affine,
    crs: CRS | str | None,
    path: str | os.PathLike,
    class_names: Sequence[str],
) -> Path:
    """Write an (H, W) class map (0 = background, k = ``class_names[k - 1]``) as a GeoTIFF (see ClassRasterWriter)."""
    with ClassRasterWriter(path, class_map.shape, transform, crs, class_names) as writer:
        writer.write(0, 0, class_map)
    return Path(path)


def _check_class_ids(class_ids: np.ndarray, class_names: Sequence[str]) -> None:
    """Every class id in ``class_ids`` (any shape) must name a class."""
    highest = class_ids.max(initial=0)
    if highest > len(class_names):
        raise ValueError(f"class map holds class {highest} but only {len(class_names)} class names were given")


def _label_regions(class_map: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the 4-connected regions of each class.

    Returns an (H, W) int32 label image (0 = no region, regions 1..N) and an
    (N,) array with the class id of each region.
    """
    labels = np.zeros(class_map.shape, dtype=np.int32)
    region_class: list[int] = []
    for class_id in np.unique(class_map[keep]):
        # scipy's default structuring element in 2-D is the 4-neighbour cross.
        regions, count = ndimage.label(keep & (class_map == class_id))
        inside = regions > 0
        labels[inside] = regions[inside] + len(region_class)
        region_class.extend([int(class_id)] * count)
    return labels, np.array(region_class, dtype=np.int64)


def _clean(geometry: BaseGeometry, tolerance: float) -> Polygon | MultiPolygon | None:
    """Simplify and repair a polygon; None if nothing is left.

    Plain Douglas-Peucker plus a validity repair: GEOS's topology-preserving variant gave
    the same shapes but took seconds on the ragged outlines of large masks.
    """
    if tolerance > 0:
        geometry = geometry.simplify(tolerance, preserve_topology=False)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
        polygons = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, (Polygon, MultiPolygon))]
        geometry = shapely.union_all(polygons) if polygons else None
    return None if geometry is None or geometry.is_empty else geometry


def _area_m2(geometry: BaseGeometry, crs: CRS | None) -> float:
    """Area in square metres (geodesic for geographic CRSs; CRS units squared without a CRS)."""
    if crs is None:
        return float(geometry.area)
    if crs.is_geographic:
        return sum(_ring_area(p.exterior) - sum(_ring_area(r) for r in p.interiors) for p in _as_multi(geometry).geoms)
    return float(geometry.area) * crs.linear_units_factor[1] ** 2


def _ring_area(ring: shapely.LinearRing) -> float:
    """Geodesic area enclosed by a lon/lat ring, whatever its orientation."""
    lons, lats = ring.xy
    area, _ = _geod.polygon_area_perimeter(lons, lats)
    return abs(area)


def _as_multi(geometry: BaseGeometry) -> MultiPolygon:
    return geometry if isinstance(geometry, MultiPolygon) else MultiPolygon([geometry])


def _layers(
    features: Sequence[VectorFeature], layer: str, layer_per_class: bool, class_names: Sequence[str]
) -> dict[str, list[VectorFeature]]:
    """Layer name -> its features; always at least one (possibly empty) layer."""
    if not layer_per_class or not (features or class_names):
        return {layer: list(features)}
    layers: dict[str, list[VectorFeature]] = {name: [] for name in class_names}
    for feature in sorted(features, key=lambda f: f.class_id):
        layers.setdefault(feature.class_name, []).append(feature)
    return layers


def _properties(feature: VectorFeature) -> dict[str, Any]:
    """The attribute values of ``feature``, keyed like FIELDS (and instance_id when set)."""
    values = {
        "class": feature.class_name,
        "class_id": feature.class_id,
        "score": feature.score,
        "area_m2": feature.area_m2,
    }
    if feature.instance_id is not None:
        values["instance_id"] = feature.instance_id
    return values
