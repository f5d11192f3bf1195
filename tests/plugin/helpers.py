"""Small builders shared by the plugin tests."""

from __future__ import annotations

from pathlib import Path

from osgeo import ogr, osr

from rsov_qgis.vocabulary import VocabularyClass, parse_classes_string


def result_gpkg_bytes(path: Path, classes: list[str], epsg: int = 25832, origin=(346000.0, 5647500.0)) -> bytes:
    """A backend-like result GeoPackage: two squares per class (scores 0.2 and 0.8)."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("rsov", srs, ogr.wkbMultiPolygon)
    for name, kind in (("class", ogr.OFTString), ("class_id", ogr.OFTInteger), ("score", ogr.OFTReal),
                       ("area_m2", ogr.OFTReal)):
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
            feature.SetGeometry(ogr.CreateGeometryFromWkt(
                f"MULTIPOLYGON((({x} {y},{x + 10} {y},{x + 10} {y + 10},{x} {y + 10},{x} {y})))"))
            layer.CreateFeature(feature)
    ds = None  # noqa: F841 (closes the file)
    return path.read_bytes()


def vocabulary(text: str = "building,roof; tree,forest; water") -> list[VocabularyClass]:
    return parse_classes_string(text)
