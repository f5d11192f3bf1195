"""Result GeoPackages (atomic save, status field, style inside) and their categorized style (filled
for semantic results, outlines for instance results)."""

import importlib
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime

import pytest
from conftest import REPO, RSOV, real_backend_available
from helpers import result_gpkg_bytes, vocabulary
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsLinePatternFillSymbolLayer,
    QgsPalLayerSettings,
    QgsProject,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
)
from qgis.PyQt.QtXml import QDomDocument

from rsov_qgis import results, review, schema
from rsov_qgis.palette import COLOURS, class_colour
from rsov_qgis.results import (
    GROUP,
    ResultError,
    add_result_layer,
    is_result_layer,
    layer_uri,
    output_folder,
    result_path,
    save_result,
)
from rsov_qgis.styling import (
    FILL_ALPHA,
    OUTLINE_FILL_ALPHA,
    apply_result_style,
    class_renderer,
    is_instance_layer,
    renderer_classes,
)
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
    expressions = [
        p.expressionString()
        for p in (
            symbol_layer.dataDefinedProperties().property(k)
            for k in symbol_layer.dataDefinedProperties().propertyKeys()
        )
    ]
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
    assert [(c.name, c.color) for c in renderer_classes(layer)] == [(c.name, c.color) for c in vocabulary()]
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
        (c.name, c.color, OUTLINE_FILL_ALPHA) for c in vocabulary()
    ]
    assert [c.symbol().symbolLayer(0).strokeColor().name() for c in categories] == [c.color for c in vocabulary()]
    assert layer.labeling().settings().fieldName == "class" and not layer.labelsEnabled()
    assert [(c.name, c.color) for c in renderer_classes(layer)] == [(c.name, c.color) for c in vocabulary()]
    semantic = save_result(
        result_gpkg_bytes(tmp_path / "semantic.gpkg", ["water"]), tmp_path / "out" / "s.gpkg", vocabulary()
    )
    assert not is_instance_layer(QgsVectorLayer(f"{semantic}|layername=rsov", "s", "ogr"))


def test_empty_result_still_gets_the_status_field(tmp_path):
    """A job that finds nothing (e.g. a mask over bare ground) is a valid, reviewable result."""
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", [])
    saved = save_result(data, tmp_path / "out" / "empty.gpkg", vocabulary())
    layer = QgsVectorLayer(f"{saved}|layername=rsov", "r", "ogr")
    assert layer.isValid() and layer.featureCount() == 0
    assert schema.STATUS in layer.fields().names()
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)


@pytest.mark.parametrize("instance", [False, True], ids=["semantic", "instance"])
def test_an_empty_result_is_complete_and_reviewable(tmp_path, instance):
    """No polygons (a mask over bare ground, an object threshold too high): the status field, the
    default style and the layer name all the same, and the Review tab takes the layer."""
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", [], instance=instance)
    saved = save_result(data, tmp_path / "out" / "empty.gpkg", vocabulary())
    layer = QgsVectorLayer(layer_uri(saved), "r", "ogr")
    assert layer.isValid() and layer.featureCount() == 0 and is_instance_layer(layer) == instance
    assert is_result_layer(layer) and review.status_counts(layer) == {}
    assert review.set_status(layer, [], schema.ACCEPTED) == 0
    assert [c.value() for c in layer.renderer().categories()] == [c.name for c in vocabulary()]
    count, _, names, _, _ = layer.listStylesInDatabase()
    assert count == 1 and names == ["rsov"]


def test_a_result_that_did_not_get_its_style_is_refused(tmp_path, monkeypatch):
    """Whatever went wrong, an incomplete file is never shown (nor left behind)."""
    monkeypatch.setattr(results, "_write_style", lambda *args: None)
    with pytest.raises(ResultError, match="status and style"):
        save_result(result_gpkg_bytes(tmp_path / "backend.gpkg", []), tmp_path / "out" / "r.gpkg", vocabulary())
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture(scope="module")
def backend_qml():
    """The backend's ``rsov.geo.qml``, from its source (it needs nothing but the palette)."""
    sys.path.insert(0, str(REPO / "backend"))
    try:
        return importlib.import_module("rsov.geo.qml")
    finally:
        sys.path.remove(str(REPO / "backend"))


def _look(renderer) -> list[tuple]:
    """What each class looks like in a categorized renderer: its value, its first symbol layer's
    fill and outline, and its hatch (the review look is styling's alone)."""
    return [
        (
            c.value(),
            c.symbol().type(),
            _fill_look(c.symbol().symbolLayer(0)),
            [
                _hatch_look(layer)
                for layer in c.symbol().symbolLayers()
                if isinstance(layer, QgsLinePatternFillSymbolLayer)
            ],
        )
        for c in renderer.categories()
    ]


def _fill_look(layer) -> tuple:
    return (
        layer.fillColor().getRgb(),
        layer.strokeColor().getRgb(),
        layer.strokeWidth(),
        layer.strokeWidthUnit(),
        layer.brushStyle(),
        layer.strokeStyle(),
    )


def _hatch_look(layer) -> tuple:
    lines = layer.subSymbol()
    return (
        layer.lineAngle(),
        layer.distance(),
        layer.distanceUnit(),
        layer.lineWidth(),
        lines.color().getRgb(),
        lines.width(),
        lines.symbolLayer(0).penStyle(),
        layer.isLocked(),
    )


@pytest.mark.parametrize("outlined", [False, True], ids=["semantic", "instance"])
def test_the_cli_style_looks_like_the_plugin_style(backend_qml, outlined):
    """Two producers of one look: styling (the reference, in QGIS) and the backend's QML (for the
    CLI's GeoPackages): the same categories, colours and symbols, labels for instance results."""
    names = [f"class {k}" for k in range(1, 2 * len(COLOURS) + 3)]  # into the palette's third cycle
    layer = QgsVectorLayer(
        "MultiPolygon?field=class:string" + ("&field=instance_id:integer" if outlined else ""), "cli", "memory"
    )
    document = QDomDocument()
    assert document.setContent(backend_qml.result_qml(enumerate(names, start=1), outlined))
    assert layer.importNamedStyle(document) == (True, "")
    reference = QgsVectorLayer(layer.source(), "plugin", "memory")
    apply_result_style(reference, [VocabularyClass([name], class_colour(k)) for k, name in enumerate(names, 1)])
    assert layer.renderer().classAttribute() == reference.renderer().classAttribute() == "class"
    assert _look(layer.renderer()) == _look(reference.renderer())
    assert layer.labelsEnabled() == reference.labelsEnabled() is False
    if outlined:
        assert _label_look(layer.labeling()) == _label_look(reference.labeling())
    else:
        assert not layer.labeling()


def _label_look(labeling) -> tuple:
    """What the labels look like (copies: 3.22's bindings hand out references into temporaries)."""
    settings = QgsPalLayerSettings(labeling.settings())
    text = QgsTextFormat(settings.format())
    buffer = QgsTextBufferSettings(text.buffer())
    return (
        settings.fieldName,
        settings.isExpression,
        settings.placement,
        text.size(),
        text.sizeUnit(),
        text.color().name(),
        buffer.enabled(),
        buffer.size(),
        buffer.sizeUnit(),
        buffer.color().name(),
    )


CLI_INSTANCE = [
    "--mode",
    "instance",
    "--points-per-side",
    "3",
    "--pred-iou=-1",
    "--stability=-1",
    "--object-threshold",
    "0",
]


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_a_cli_geopackage_opens_styled_and_reviewable(oem_raster, tmp_path, mode):
    """`rsov segment --out x.gpkg` writes without QGIS; QGIS opens it in the palette's colours (fills,
    or outlines for objects), and the Review tab takes it (tiny-random finds no objects here)."""
    assert real_backend_available(), f"{RSOV} is not available (run `make setup`)"
    out = tmp_path / "cli.gpkg"
    run = subprocess.run(
        [
            str(RSOV),
            "segment",
            str(oem_raster),
            "--model",
            "tiny-random",
            "--classes",
            "a; b",
            "--threshold",
            "0",
            "--bbox",
            "346100,5647600,346300,5647800",
            "--out",
            str(out),
            "--quiet",
            *(CLI_INSTANCE if mode == "instance" else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    layer = QgsVectorLayer(f"{out}|layername=rsov", "cli", "ogr")
    assert layer.isValid() and is_result_layer(layer) and is_instance_layer(layer) == (mode == "instance")
    assert set(review.status_counts(layer)) <= {schema.NEW}
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer) and layer.renderer().classAttribute() == "class"
    alpha = OUTLINE_FILL_ALPHA if mode == "instance" else FILL_ALPHA
    assert [
        (c.value(), c.symbol().color().name(), c.symbol().color().alpha()) for c in layer.renderer().categories()
    ] == [("a", class_colour(1), alpha), ("b", class_colour(2), alpha)]
    saved = save_result(
        out.read_bytes(),
        tmp_path / "dock.gpkg",
        [VocabularyClass(["a"], "#123456"), VocabularyClass(["b"], class_colour(2))],
    )
    count, _, names, _, _ = QgsVectorLayer(layer_uri(saved), "dock", "ogr").listStylesInDatabase()
    assert count == 1 and names == ["rsov"]  # the plugin's style replaced the backend's
    assert renderer_classes(QgsVectorLayer(layer_uri(saved), "dock", "ogr"))[0].color == "#123456"
