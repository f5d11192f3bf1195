# SPDX-License-Identifier: GPL-2.0-or-later
"""Result GeoPackages: written completely (status field, style) before they are shown.

The backend's GeoPackage is written to a hidden temporary file beside the destination, given
the ``status`` field and the class style (replacing the one the backend wrote, ``rsov/qml.py``),
closed, checked complete, and only then renamed into place, so a failure never leaves a
half-written result behind. The dock and Processing save results through :func:`save_result`.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import datetime
from pathlib import Path

from osgeo import gdal, ogr
from qgis.core import QgsField, QgsLayerTreeGroup, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QMetaType, QVariant
from qgis.PyQt.QtXml import QDomDocument

from . import schema
from .compat import enum_value
from .errors import RsovPluginError
from .styling import STYLE_DESCRIPTION, STYLE_NAME, apply_result_style
from .vocabulary import VocabularyClass

GROUP = "rsov results"
PROJECT_SUBFOLDER = "rsov_results"


class ResultError(RsovPluginError):
    """The result could not be saved or loaded; the message says why."""


def text_field(name: str, length: int = 0) -> QgsField:
    """A text field."""
    return QgsField(name, enum_value((QVariant, "String"), (QMetaType, "Type.QString")), "text", length)


def status_field() -> QgsField:
    """The text field ``status`` that holds new/accepted/rejected."""
    return text_field(schema.STATUS, 10)


def output_folder(project: QgsProject, fallback: Path) -> Path:
    """``<project folder>/rsov_results`` for a saved project, else ``fallback``."""
    if project.fileName():
        return Path(project.absolutePath()) / PROJECT_SUBFOLDER
    return fallback


def result_path(folder: Path, raster_name: str, when: datetime) -> Path:
    """``folder/<raster>_<YYYYmmdd_HHMMSS>.gpkg``, with a suffix if that name is taken."""
    stem = re.sub(r"[^\w.-]+", "_", raster_name).strip("._") or "raster"
    path = folder / f"{stem}_{when:%Y%m%d_%H%M%S}.gpkg"
    counter = 1
    while path.exists():
        counter += 1
        path = folder / f"{stem}_{when:%Y%m%d_%H%M%S}_{counter}.gpkg"
    return path


def layer_uri(path: Path) -> str:
    """The OGR URI of the result layer in ``path``."""
    return f"{path}|layername={schema.LAYER}"


def save_result(data: bytes, path: Path, classes: list[VocabularyClass]) -> Path:
    """Write the backend's GeoPackage bytes to ``path`` with a ``status`` field set to ``new``
    and the class style saved inside; atomic (all or nothing). Safe in a worker thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial.gpkg")
    try:
        partial.write_bytes(data)
        _prepare(partial, classes)
        _check_complete(partial)
        os.replace(partial, path)
    except OSError as exc:
        raise ResultError(f"Writing the result {path} failed: {exc.strerror or exc}.") from None
    finally:
        for leftover in (partial, *(Path(f"{partial}{s}") for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
    return path


SET_ALL_NEW = 'UPDATE "rsov" SET "status" = \'new\''  # schema.LAYER, schema.STATUS, schema.NEW
DISTINCT_CLASSES = 'SELECT DISTINCT "class" FROM "rsov"'  # schema.CLASS, schema.LAYER


def _prepare(path: Path, classes: list[VocabularyClass]) -> None:
    """Add the ``status`` field (all ``new``) and the class style to the GeoPackage at ``path``.

    Written with OGR and closed explicitly, never through a QGIS layer: QGIS's connection pool
    would keep the file open past the rename, in WAL mode against side files that are then
    deleted, and a layer opened on the final path could read an empty snapshot."""
    dataset = _open(path, update=True)
    try:
        layer = dataset.GetLayerByName(schema.LAYER)
        definition = layer.GetLayerDefn()
        names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        missing = [f for f in (schema.CLASS, schema.SCORE) if f not in names]
        if missing:
            raise ResultError(f"The backend's result lacks the field(s) {', '.join(missing)}.")
        if schema.STATUS not in names:
            status = ogr.FieldDefn(schema.STATUS, ogr.OFTString)
            status.SetWidth(10)
            _check(layer.CreateField(status), path)
        dataset.ExecuteSQL(SET_ALL_NEW)
        qml, sld = _style_documents(names, classes, _classes_present(dataset))
        _write_style(dataset, layer.GetGeometryColumn(), qml, sld, path)
        dataset.FlushCache()
    except RuntimeError as exc:
        raise ResultError(f"Writing the review status and style into {path.name} failed: {exc}") from None
    finally:
        layer = dataset = None  # noqa: F841 (closes the file before the rename)


def _open(path: Path, update: bool = False):
    """The GeoPackage at ``path`` through OGR; ResultError when it is not one with the result layer."""
    unreadable = f"The backend's result is not a readable GeoPackage with a layer '{schema.LAYER}'."
    try:  # GDAL raises or returns None, as gdal.UseExceptions() was called in this QGIS or not
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | (gdal.OF_UPDATE if update else 0), allowed_drivers=["GPKG"])
    except RuntimeError:
        dataset = None
    if dataset is None or dataset.GetLayerByName(schema.LAYER) is None:
        raise ResultError(unreadable)
    return dataset


def _check_complete(path: Path) -> None:
    """Refuse a result that lacks its status field or its default style, however that happened:
    the Review tab refuses such a layer, and its colours would be gone."""
    dataset = _open(path)
    try:
        complete = _is_complete(dataset)
    finally:
        dataset = None  # noqa: F841 (closes the file before the rename)
    if not complete:
        raise ResultError(f"Writing the review status and style into {path.name} failed.")


def _is_complete(dataset) -> bool:
    """Whether the result layer has the status field and one default style."""
    styles = dataset.GetLayerByName(STYLE_TABLE)
    if styles is None or dataset.GetLayerByName(schema.LAYER).GetLayerDefn().GetFieldIndex(schema.STATUS) < 0:
        return False
    styles.SetAttributeFilter(DEFAULT_STYLE)
    return styles.GetFeatureCount() == 1


def _check(error: int, path: Path) -> None:
    if error != ogr.OGRERR_NONE:
        raise ResultError(f"Writing the review status and style into {path.name} failed: {gdal.GetLastErrorMsg()}")


def _classes_present(dataset) -> set[str]:
    """The class names the result's features hold (the legend lists them first), asked of SQLite
    rather than read feature by feature: a result may hold millions."""
    rows = dataset.ExecuteSQL(DISTINCT_CLASSES)
    try:
        return {row.GetField(0) for row in rows}
    finally:
        dataset.ReleaseResultSet(rows)


def _style_documents(field_names: list[str], classes: list[VocabularyClass], present: set[str]) -> tuple[str, str]:
    """The QML and SLD of the class style, made on a memory layer with the result's fields."""
    fields = "&".join(f"field={name}:string" for name in field_names)
    layer = QgsVectorLayer(f"MultiPolygon?{fields}", schema.LAYER, "memory")
    apply_result_style(layer, classes, present)
    qml, sld = QDomDocument(), QDomDocument()
    layer.exportNamedStyle(qml)
    layer.exportSldStyle(sld, "")
    return qml.toString(), sld.toString()


STYLE_TABLE = "layer_styles"
DELETE_STYLES = 'DELETE FROM "layer_styles" WHERE "f_table_name" = \'rsov\''  # STYLE_TABLE, schema.LAYER
DEFAULT_STYLE = '"f_table_name" = \'rsov\' AND "useAsDefault" = 1'
STYLE_FIELDS = (  # QGIS's own layer_styles table (what QgsVectorLayer.saveStyleToDatabase makes)
    ("f_table_catalog", ogr.OFTString, 256),
    ("f_table_schema", ogr.OFTString, 256),
    ("f_table_name", ogr.OFTString, 256),
    ("f_geometry_column", ogr.OFTString, 256),
    ("styleName", ogr.OFTString, 30),
    ("styleQML", ogr.OFTString, 0),
    ("styleSLD", ogr.OFTString, 0),
    ("useAsDefault", ogr.OFTInteger, 0),
    ("description", ogr.OFTString, 0),
    ("owner", ogr.OFTString, 30),
    ("ui", ogr.OFTString, 30),
    ("update_time", ogr.OFTDateTime, 0),
)


def _write_style(dataset, geometry_column: str, qml: str, sld: str, path: Path) -> None:
    """Store the style as the layer's default in ``layer_styles``, which QGIS reads on load,
    in place of any the backend wrote."""
    styles = dataset.GetLayerByName(STYLE_TABLE)
    if styles is not None:
        dataset.ExecuteSQL(DELETE_STYLES)
    else:
        styles = dataset.CreateLayer(STYLE_TABLE, geom_type=ogr.wkbNone, options=["FID=id"])
        for name, kind, width in STYLE_FIELDS:
            field = ogr.FieldDefn(name, kind)
            field.SetWidth(width)
            if name == "useAsDefault":
                field.SetSubType(ogr.OFSTBoolean)
            if name == "update_time":
                field.SetDefault("CURRENT_TIMESTAMP")
            _check(styles.CreateField(field), path)
    feature = ogr.Feature(styles.GetLayerDefn())
    values = {
        "f_table_catalog": "",
        "f_table_schema": "",
        "f_table_name": schema.LAYER,
        "f_geometry_column": geometry_column,
        "styleName": STYLE_NAME,
        "styleQML": qml,
        "styleSLD": sld,
        "useAsDefault": 1,
        "description": STYLE_DESCRIPTION,
        "owner": "",
    }
    for name, value in values.items():
        feature.SetField(name, value)
    _check(styles.CreateFeature(feature), path)


def result_group(project: QgsProject) -> QgsLayerTreeGroup:
    """The ``rsov results`` group at the top of the layer tree (created when missing)."""
    root = project.layerTreeRoot()
    return root.findGroup(GROUP) or root.insertGroup(0, GROUP)


def add_result_layer(path: Path, name: str, project: QgsProject) -> QgsVectorLayer:
    """Load a saved result (its style comes from the GeoPackage) into the results group."""
    layer = QgsVectorLayer(layer_uri(path), name, "ogr")
    if not layer.isValid():
        raise ResultError(f"The result {path} cannot be opened.")
    project.addMapLayer(layer, False)
    group = result_group(project)
    group.insertLayer(0, layer)
    group.setExpanded(True)
    return layer


def is_result_layer(layer) -> bool:
    """Whether ``layer`` looks like an rsov result (polygons with class, score and status)."""
    return isinstance(layer, QgsVectorLayer) and all(
        layer.fields().indexOf(f) >= 0 for f in (schema.CLASS, schema.SCORE, schema.STATUS)
    )
