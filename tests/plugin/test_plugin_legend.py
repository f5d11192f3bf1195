"""The result layers' legend: the classes a layer holds first, every class kept (drawn, and there
to relabel to, with its class id), colours by class id, and a hatch past the palette's first cycle."""

from helpers import result_gpkg_bytes
from qgis.core import QgsFeature, QgsGeometry, QgsLinePatternFillSymbolLayer, QgsVectorLayer
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtWidgets import QComboBox

from rsov_qgis import schema
from rsov_qgis.palette import class_colour
from rsov_qgis.results import save_result
from rsov_qgis.styling import apply_result_style, class_renderer, renderer_classes
from rsov_qgis.vocabulary import parse_classes_string
from rsov_qgis.widgets import fill_class_combo

MANY = "; ".join(f"class {k}" for k in range(1, 26))  # past the palette's 20 colours


def _layer_holding(*names: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(
        f"MultiPolygon?crs=EPSG:25832&field={schema.CLASS}:string&field={schema.STATUS}:string", "result", "memory"
    )
    features = []
    for i, name in enumerate(names):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromWkt(f"MULTIPOLYGON((({i} 0,{i + 1} 0,{i + 1} 1,{i} 0)))"))
        feature[schema.CLASS] = name
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    return layer


def test_the_legend_lists_the_classes_present_first_and_keeps_the_others():
    layer = _layer_holding("class 22", "class 3", "class 22")
    apply_result_style(layer, parse_classes_string(MANY))
    categories = layer.renderer().categories()
    absent = [f"class {k}" for k in range(1, 26) if k not in (3, 22)]
    assert [c.value() for c in categories] == ["class 3", "class 22", *absent]
    # colours follow the class id, not the place in the legend
    assert [c.symbol().color().name() for c in categories[:3]] == [class_colour(3), class_colour(22), class_colour(1)]


def test_relabel_offers_every_class_with_its_class_id_whatever_the_legend_order():
    layer = _layer_holding("water")
    apply_result_style(layer, parse_classes_string("building,roof; tree; water"))
    assert [c.value() for c in layer.renderer().categories()] == ["water", "building", "tree"]
    classes = renderer_classes(layer)
    assert [(c.name, c.color) for c in classes] == [
        ("building", class_colour(1)),
        ("tree", class_colour(2)),
        ("water", class_colour(3)),
    ]
    combo = QComboBox()
    fill_class_combo(combo, classes)  # what the Review tab's "Relabel as" shows
    assert [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())] == [
        ("building", 1),
        ("tree", 2),
        ("water", 3),
    ]


def test_the_vocabulary_travels_with_the_saved_style(tmp_path):
    classes = parse_classes_string("building,roof; tree; water")
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", ["water"])
    saved = save_result(data, tmp_path / "out" / "result.gpkg", classes)
    layer = QgsVectorLayer(f"{saved}|layername=rsov", "r", "ogr")
    assert [(c.synonyms, c.color) for c in renderer_classes(layer)] == [(c.synonyms, c.color) for c in classes]
    assert [c.value() for c in layer.renderer().categories()] == ["water", "building", "tree"]  # the saved legend too


def test_classes_past_the_first_palette_cycle_are_hatched():
    categories = class_renderer(parse_classes_string(MANY)).categories()  # (each category owns its symbol)
    first, twenty_first = categories[0].symbol(), categories[20].symbol()
    assert [c.value() for c in (categories[0], categories[20])] == ["class 1", "class 21"]
    hatches = [layer for layer in twenty_first.symbolLayers() if isinstance(layer, QgsLinePatternFillSymbolLayer)]
    assert len(hatches) == 1 and hatches[0].isLocked()  # recolouring the class keeps it
    assert twenty_first.symbolLayers().index(hatches[0]) == 1  # on the fill, under the review look
    assert not any(isinstance(layer, QgsLinePatternFillSymbolLayer) for layer in first.symbolLayers())
    assert twenty_first.color().name() == class_colour(21) != class_colour(1)
    assert _lightest(twenty_first) > 200 > _lightest(first)  # in the legend too: white lines across the darker fill


def _lightest(symbol) -> int:
    image = symbol.asImage(QSize(48, 48))
    return max(image.pixelColor(x, y).lightness() for x in range(48) for y in range(48))
