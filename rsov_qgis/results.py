# SPDX-License-Identifier: GPL-2.0-or-later
"""Result GeoPackages: written completely (status field, style) before they are shown.

The backend's GeoPackage is written to a hidden temporary file beside the destination, given
the ``status`` field and the class style, closed, and only then renamed into place, so a
failure never leaves a half-written result behind.
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from contextlib import closing
from datetime import datetime
from pathlib import Path

from qgis.core import QgsField, QgsLayerTreeGroup, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QMetaType, QVariant

from . import schema
from .compat import enum_value
from .styling import apply_result_style, save_style_to_database
from .vocabulary import VocabularyClass

GROUP = "rsov results"
PROJECT_SUBFOLDER = "rsov_results"


class ResultError(RuntimeError):
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
        os.replace(partial, path)
    except OSError as exc:
        raise ResultError(f"Writing the result {path} failed: {exc.strerror or exc}.") from None
    finally:
        for leftover in (partial, *(Path(f"{partial}{s}") for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
    return path


ADD_STATUS = 'ALTER TABLE "rsov" ADD COLUMN "status" TEXT(10)'  # schema.LAYER, schema.STATUS


def _add_status_field(path: Path) -> None:
    """Add the ``status`` column with SQLite (a GeoPackage is an SQLite file; OGR adds fields the
    same way): QGIS 3.22's provider reports success but keeps no field added to an empty
    GeoPackage layer (a result without polygons)."""
    unreadable = f"The backend's result is not a readable GeoPackage with a layer '{schema.LAYER}'."
    try:
        with closing(sqlite3.connect(str(path))) as db:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{schema.LAYER}")')]
            if not columns:
                raise ResultError(unreadable)
            if schema.STATUS not in columns:
                db.execute(ADD_STATUS)
                db.commit()
    except sqlite3.DatabaseError:
        raise ResultError(unreadable) from None


def _prepare(path: Path, classes: list[VocabularyClass]) -> None:
    _add_status_field(path)
    layer = QgsVectorLayer(layer_uri(path), "rsov", "ogr")
    if not layer.isValid():
        raise ResultError("The backend's result is not a readable GeoPackage with a layer 'rsov'.")
    missing = [f for f in (schema.CLASS, schema.SCORE, schema.STATUS) if layer.fields().indexOf(f) < 0]
    if missing:
        raise ResultError(f"The backend's result lacks the field(s) {', '.join(missing)}.")
    provider = layer.dataProvider()
    index = layer.fields().indexOf(schema.STATUS)
    changes = {feature.id(): {index: schema.NEW} for feature in layer.getFeatures()}
    if changes and not provider.changeAttributeValues(changes):
        raise ResultError(f"Setting the review status in {path.name} failed.")
    apply_result_style(layer, classes)
    try:
        save_style_to_database(layer)
    except RuntimeError as exc:
        raise ResultError(str(exc)) from None
    del provider, layer  # closes the GeoPackage (and folds its WAL back) before the rename...
    _fold_wal(path)


def _fold_wal(path: Path) -> None:
    """...unless QGIS's connection pool still holds it open: then write the WAL into the file here,
    or the rename would leave the edits in a side file that is deleted."""
    try:
        with closing(sqlite3.connect(str(path))) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError:
        pass  # not in WAL mode, or nothing to fold


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
        layer.fields().indexOf(f) >= 0 for f in (schema.CLASS, schema.SCORE, schema.STATUS))
