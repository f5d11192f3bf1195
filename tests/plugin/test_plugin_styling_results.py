"""Result GeoPackages (atomic save, status field, style inside) and their categorized style (filled
for semantic results, outlines for instance results)."""

import sqlite3
from contextlib import closing
from datetime import datetime

import pytest
from qgis.core import QgsCategorizedSymbolRenderer, QgsProject, QgsVectorLayer

from helpers import result_gpkg_bytes, vocabulary
from rsov_qgis import schema
from rsov_qgis.results import GROUP, ResultError, add_result_layer, output_folder, result_path, save_result
from rsov_qgis.styling import OUTLINE_FILL_ALPHA, class_renderer, is_instance_layer, renderer_classes
from rsov_qgis.vocabulary import VocabularyClass


def test_renderer_categories_follow_the_vocabulary():
    classes = [VocabularyClass(["building", "roof"], "#e31a1c"), VocabularyClass(["water"], "#1f78b4")]
    renderer = class_renderer(classes)
    assert renderer.classAttribute() == "class"
    categories = renderer.categories()
    assert [c.value() for c in categories] == ["building", "water"]
    assert [c.label() for c in categories] == ["building (roof)", "water"]
    assert [c.symbol().color().name() for c in categories] == ["#e31a1c", "#1f78b4"]
    assert 0 < categories[0].symbol().color().alpha() < 255  # translucent over the image
    symbol_layer = categories[0].symbol().symbolLayer(0)
    expressions = [p.expressionString() for p in (symbol_layer.dataDefinedProperties().property(k)
                                                  for k in symbol_layer.dataDefinedProperties().propertyKeys())]
    assert any("'accepted'" in e for e in expressions) and any("'rejected'" in e for e in expressions)


@pytest.fixture
def saved(tmp_path):
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", ["building", "tree", "water"])
    return save_result(data, tmp_path / "out" / "result.gpkg", vocabulary())


def test_saved_result_has_status_field_and_style(saved):
    assert sorted(p.name for p in saved.parent.iterdir()) == ["result.gpkg"]  # no temp file, no WAL left
    layer = QgsVectorLayer(f"{saved}|layername=rsov", "r", "ogr")
    assert layer.isValid() and layer.featureCount() == 6
    assert {f[schema.STATUS] for f in layer.getFeatures()} == {"new"}
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)  # the default style from the GeoPackage
    assert [(c.name, c.color) for c in renderer_classes(layer)] == [
        (c.name, c.color) for c in vocabulary()]
    count, ids, names, _, error = layer.listStylesInDatabase()
    assert count == 1 and names == ["rsov"] and not error
    with closing(sqlite3.connect(saved)) as db:  # written and closed by OGR: nothing left in a WAL
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert layer.startEditing() and layer.featureCount() == 6 and len(list(layer.getFeatures())) == 6


def test_broken_result_leaves_nothing_behind(tmp_path):
    with pytest.raises(ResultError, match="not a readable GeoPackage"):
        save_result(b"<html>proxy error</html>", tmp_path / "out" / "result.gpkg", vocabulary())
    assert list((tmp_path / "out").iterdir()) == []


def test_result_is_added_to_the_results_group(saved, qgis_new_project):
    project = QgsProject.instance()
    first = add_result_layer(saved, "oem 10:00:00", project)
    second = add_result_layer(saved, "oem 10:05:00", project)
    group = project.layerTreeRoot().findGroup(GROUP)
    assert project.layerTreeRoot().children()[0] is group
    assert [node.layer() for node in group.findLayers()] == [second, first]  # newest on top


def test_output_folder_and_names(tmp_path, qgis_new_project):
    project = QgsProject.instance()
    assert output_folder(project, tmp_path / "fallback") == tmp_path / "fallback"
    (tmp_path / "proj").mkdir()
    assert project.write(str(tmp_path / "proj" / "p.qgz"))
    assert output_folder(project, tmp_path / "fallback") == tmp_path / "proj" / "rsov_results"
    when = datetime(2024, 5, 1, 12, 30, 0)
    first = result_path(tmp_path, "Köln 50cm / RGB", when)
    assert first.name == "Köln_50cm_RGB_20240501_123000.gpkg"
    first.write_bytes(b"x")
    assert result_path(tmp_path, "Köln 50cm / RGB", when).name == "Köln_50cm_RGB_20240501_123000_2.gpkg"


def test_instance_results_are_outlines_with_labels_ready_but_off(tmp_path):
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", ["building", "tree", "water"], instance=True)
    saved = save_result(data, tmp_path / "out" / "objects.gpkg", vocabulary())
    layer = QgsVectorLayer(f"{saved}|layername=rsov", "r", "ogr")  # the style comes from the GeoPackage
    assert is_instance_layer(layer) and layer.featureCount() == 6
    categories = layer.renderer().categories()
    assert [(c.value(), c.symbol().color().name(), c.symbol().color().alpha()) for c in categories] == [
        (c.name, c.color, OUTLINE_FILL_ALPHA) for c in vocabulary()]
    assert [c.symbol().symbolLayer(0).strokeColor().name() for c in categories] == [c.color for c in vocabulary()]
    assert layer.labeling().settings().fieldName == "class" and not layer.labelsEnabled()
    assert [(c.name, c.color) for c in renderer_classes(layer)] == [(c.name, c.color) for c in vocabulary()]
    semantic = save_result(result_gpkg_bytes(tmp_path / "semantic.gpkg", ["water"]), tmp_path / "out" / "s.gpkg",
                           vocabulary())
    assert not is_instance_layer(QgsVectorLayer(f"{semantic}|layername=rsov", "s", "ogr"))


def test_empty_result_still_gets_the_status_field(tmp_path):
    """A job that finds nothing (e.g. a mask over bare ground) is a valid, reviewable result."""
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", [])
    saved = save_result(data, tmp_path / "out" / "empty.gpkg", vocabulary())
    layer = QgsVectorLayer(f"{saved}|layername=rsov", "r", "ogr")
    assert layer.isValid() and layer.featureCount() == 0
    assert schema.STATUS in layer.fields().names()
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
