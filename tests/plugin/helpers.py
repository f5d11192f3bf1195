"""Small builders shared by the plugin tests."""

from __future__ import annotations

import socket
from pathlib import Path

from osgeo import ogr, osr
from qgis.core import QgsFeature, QgsGeometry, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtGui import QColor, QImage

from rsov_qgis.vocabulary import VocabularyClass, parse_classes_string

# Instance options under which tiny-random's Segment Anything (poor masks) still gives objects:
# every mask kept, every classified object kept.
PERMISSIVE = {"points_per_side": 3, "pred_iou": -1.0, "stability": -1.0, "object_threshold": 0.0}


def result_gpkg_bytes(
    path: Path, classes: list[str], epsg: int = 25832, origin=(346000.0, 5647500.0), instance: bool = False
) -> bytes:
    """A backend-like result GeoPackage: two squares per class (scores 0.2 and 0.8), numbered
    objects with ``instance``."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("rsov", srs, ogr.wkbMultiPolygon)
    for name, kind in (
        ("class", ogr.OFTString),
        ("class_id", ogr.OFTInteger),
        ("score", ogr.OFTReal),
        ("area_m2", ogr.OFTReal),
        *([("instance_id", ogr.OFTInteger)] if instance else []),
    ):
        layer.CreateField(ogr.FieldDefn(name, kind))
    x0, y0 = origin
    for i, name in enumerate(classes):
        for j, score in enumerate((0.2, 0.8)):
            x, y = x0 + 20 * i, y0 + 20 * j
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("class", name)
            feature.SetField("class_id", i + 1)
            feature.SetField("score", score)
            feature.SetField("area_m2", 100.0)
            if instance:
                feature.SetField("instance_id", 2 * i + j + 1)
            feature.SetGeometry(
                ogr.CreateGeometryFromWkt(
                    f"MULTIPOLYGON((({x} {y},{x + 10} {y},{x + 10} {y + 10},{x} {y + 10},{x} {y})))"
                )
            )
            layer.CreateFeature(feature)
    ds = None  # noqa: F841 (closes the file)
    return path.read_bytes()


def vocabulary(text: str = "building,roof; tree,forest; water") -> list[VocabularyClass]:
    return parse_classes_string(text)


def free_port() -> int:
    """A TCP port nobody listens on (for 'backend down' cases and fresh servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xyz_layer(folder: Path, colour) -> QgsRasterLayer:
    """A web-tile (XYZ) layer read from disk: the four zoom-1 tiles, coloured by ``colour(x, y)``."""
    for x in range(2):
        (folder / "1" / str(x)).mkdir(parents=True, exist_ok=True)
        for y in range(2):
            tile = QImage(256, 256, QImage.Format.Format_ARGB32)
            tile.fill(QColor(*colour(x, y)))
            assert tile.save(str(folder / "1" / str(x) / f"{y}.png"))
    layer = QgsRasterLayer(f"type=xyz&url=file://{folder}/{{z}}/{{x}}/{{y}}.png&zmin=0&zmax=1", "tiles", "wms")
    assert layer.isValid(), layer.error().message()
    return layer


def polygon_layer(
    wkts: list[str],
    crs: str = "EPSG:25832",
    name: str = "drawn",
    classes: list[str] | None = None,
) -> QgsVectorLayer:
    """A memory layer of polygons with a ``class`` field (``classes``, else empty), all selected."""
    layer = QgsVectorLayer(f"Polygon?crs={crs}&field=class:string", name, "memory")
    features = []
    for wkt, cls in zip(wkts, classes or [None] * len(wkts)):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        feature["class"] = cls
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    layer.selectAll()
    return layer
