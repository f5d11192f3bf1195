"""Instance mode's geodata: example polygons in (GeoJSON, and their pixels on the raster), objects out as
vector features (outlines and oriented boxes)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import rasterio.features
from affine import Affine
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from ..errors import InputError
from ..instance.examples import encode_examples
from ..instance.masks import crop_mask
from ..instance.types import Example, ExampleBank, Instance, InstanceOptions, Mask
from ..semantic.predictor import FeatureOptions, Predictor
from ..semantic.vocabulary import Vocabulary
from .raster_io import RasterChip, read_chip, read_geojson
from .vectorize import VectorFeature, feature_area_m2, mask_geometry


def read_examples(source: str | os.PathLike | dict) -> tuple[Example, ...]:
    """Examples from a GeoJSON FeatureCollection (file or dict) whose features carry a ``class`` property.

    The CRS comes from a ``crs`` member (``{"type": "name", "properties": {"name": "EPSG:..."}}``),
    else EPSG:4326 as RFC 7946 says.
    """
    source, crs = read_geojson(source, "examples")
    examples = []
    for feature in source.get("features", []):
        name = (feature.get("properties") or {}).get("class")
        try:
            geometry = shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError):
            geometry = None
        if not name or geometry is None or geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError("Every example must be a Polygon feature with a 'class' property naming a class.")
        examples.append(Example(geometry, crs, str(name)))
    return tuple(examples)


def read_example(raster: str, example: Example, bands: Sequence[int] | None) -> tuple[np.ndarray, float, Mask]:
    """The chip of ``raster`` around an example (with some surroundings, as an object is seen in a window):
    its image (h, w, 3) uint8, its pixel size in metres, and the example's valid pixels on it as a mask."""
    minx, miny, maxx, maxy = example.geometry.bounds
    pad = max(maxx - minx, maxy - miny) * 0.5
    chip = read_chip(raster, (minx - pad, miny - pad, maxx + pad, maxy + pad), example.crs, bands)
    geometry = mapping(example.geometry)
    if example.crs is not None and chip.crs is not None:
        geometry = transform_geom(example.crs, chip.crs, geometry)
    burnt = (
        rasterio.features.rasterize(
            [(geometry, 1)], out_shape=chip.image.shape[:2], transform=chip.transform, dtype="uint8"
        ).astype(bool)
        & chip.valid
    )
    if not burnt.any():
        raise InputError(f"An example of '{example.class_name}' covers no pixel of the raster.")
    return chip.image, chip.pixel_size_m, crop_mask(burnt, 1.0)


def build_example_bank(
    predictor: Predictor,
    raster: str,
    examples: tuple[Example, ...],
    vocabulary: Vocabulary,
    bands: Sequence[int] | None,
    features: FeatureOptions,
    resolution_m: float,
) -> ExampleBank:
    """The exemplar bank of ``examples``, each read from ``raster`` where it lies and encoded there."""
    return encode_examples(
        predictor, examples, vocabulary, lambda example: read_example(raster, example, bands), features, resolution_m
    )


def example_boxes(
    examples: tuple[Example, ...], vocabulary: Vocabulary, chip: RasterChip
) -> dict[int, list[tuple[float, float, float, float]]]:
    """The examples' bounding boxes (x0, y0, x1, y1) in ``chip`` pixels by class id (SAM 3's exemplar prompts);
    an example of a class not in the vocabulary is an error, one off the chip is left out."""
    ids = {name.lower(): k for k, name in enumerate(vocabulary.names, start=1)}
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    height, width = chip.valid.shape
    for example in examples:
        k = ids.get(example.class_name.lower())
        if k is None:
            raise InputError(f"An example is of '{example.class_name}', which is not a class of this vocabulary.")
        geometry = mapping(example.geometry)
        if example.crs is not None and chip.crs is not None:
            geometry = transform_geom(example.crs, chip.crs, geometry)
        minx, miny, maxx, maxy = shape(geometry).bounds
        corners = [(~chip.transform) @ xy for xy in ((minx, maxy), (maxx, miny))]
        x0, x1 = np.clip(sorted(c for c, _ in corners), 0, width)
        y0, y1 = np.clip(sorted(r for _, r in corners), 0, height)
        if x1 > x0 and y1 > y0:
            boxes.setdefault(k, []).append((float(x0), float(y0), float(x1), float(y1)))
    return boxes


def instance_features(
    instances: list[Instance], chip: RasterChip, simplify_px: float, options: InstanceOptions, min_area_m2: float = 0.0
) -> list[VectorFeature]:
    """One (Multi)Polygon feature per instance (its mask in ``chip`` pixels), numbered from 1; those
    under ``min_area_m2`` are left out."""
    out = []
    for number, inst in enumerate(instances, start=1):
        transform = chip.transform @ Affine.translation(inst.mask.x0, inst.mask.y0)
        geometry = mask_geometry(inst.mask.crop, transform, simplify_px, options.fill_holes)
        if geometry is None:
            continue
        area = feature_area_m2(geometry, chip.crs)
        if area >= min_area_m2:
            out.append(VectorFeature(geometry, inst.class_name, inst.class_id, inst.score, area, instance_id=number))
    return out


def oriented_boxes(features: list[VectorFeature]) -> list[VectorFeature]:
    """The minimum rotated rectangle of each instance, same attributes."""
    return [
        VectorFeature(f.geometry.minimum_rotated_rectangle, f.class_name, f.class_id, f.score, f.area_m2, f.instance_id)
        for f in features
    ]
