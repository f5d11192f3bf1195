"""Example objects for instance mode: taken from a selection, kept in the project (also across a
save and reload of a .qgz), shown in the panel, and chosen for a job."""

import json

import pytest
from helpers import polygon_layer
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

from rsov_qgis.examples import (
    PROJECT_KEY,
    PROJECT_SCOPE,
    ExampleError,
    ExampleSet,
    project_examples,
    selected_polygons,
    store_examples,
)
from rsov_qgis.extent import raster_request

CONTEXT = QgsCoordinateTransformContext()
UTM = QgsCoordinateReferenceSystem("EPSG:25832")
# inside the OpenEarthMap sample (346000..346500, 5647500..5648000 in EPSG:25832)
ROOF = "POLYGON((346100 5647600, 346120 5647600, 346120 5647620, 346100 5647620, 346100 5647600))"
TREE = "POLYGON((346300 5647800, 346330 5647800, 346330 5647830, 346300 5647800))"
FAR_AWAY = "POLYGON((340000 5640000, 340020 5640000, 340020 5640020, 340000 5640000))"


def in_4326(wkt: str) -> str:
    geometry = QgsGeometry.fromWkt(wkt)
    geometry.transform(QgsCoordinateTransform(UTM, QgsCoordinateReferenceSystem("EPSG:4326"), CONTEXT))
    return geometry.asWkt(9)


def test_examples_keep_one_crs_and_count_per_class():
    examples = ExampleSet()
    assert examples.add("building", [QgsGeometry.fromWkt(ROOF)], UTM, CONTEXT) == 1
    assert (
        examples.add(
            "tree",
            [QgsGeometry.fromWkt(in_4326(TREE)), QgsGeometry.fromWkt("POINT(1 1)")],
            QgsCoordinateReferenceSystem("EPSG:4326"),
            CONTEXT,
        )
        == 1
    )  # points are no examples
    assert examples.crs.authid() == "EPSG:25832" and examples.counts() == {"building": 1, "tree": 1}
    tree = examples.examples[1].geometry.boundingBox()
    assert tree.xMinimum() == pytest.approx(346300, abs=0.01)  # transformed into the set's CRS
    again = ExampleSet.from_geojson(json.loads(json.dumps(examples.to_geojson())))
    assert again.crs.authid() == "EPSG:25832" and again.counts() == examples.counts()
    assert again.examples[0].geometry.equals(QgsGeometry.fromWkt(ROOF))


def test_a_job_gets_its_own_classes_in_the_raster_crs_on_readable_pixels(oem_layer):
    examples = ExampleSet()
    examples.add("Building", [QgsGeometry.fromWkt(in_4326(ROOF))], QgsCoordinateReferenceSystem("EPSG:4326"), CONTEXT)
    examples.add("tree", [QgsGeometry.fromWkt(in_4326(TREE))], QgsCoordinateReferenceSystem("EPSG:4326"), CONTEXT)
    examples.add("car", [QgsGeometry.fromWkt(in_4326(ROOF))], QgsCoordinateReferenceSystem("EPSG:4326"), CONTEXT)
    examples.add(
        "building", [QgsGeometry.fromWkt(in_4326(FAR_AWAY))], QgsCoordinateReferenceSystem("EPSG:4326"), CONTEXT
    )
    small = QgsRectangle(346050, 5647550, 346200, 5647700)  # holds the roof, not the tree
    by_path = raster_request(small, UTM, oem_layer, CONTEXT, local_backend=True)
    sent = examples.for_job(["building", "tree"], oem_layer, by_path, CONTEXT)
    assert sent["crs"] == {"type": "name", "properties": {"name": "EPSG:25832"}}
    # the backend reads the whole file: the tree counts too; "car" is not in the vocabulary, FAR_AWAY is off the raster
    assert [f["properties"]["class"] for f in sent["features"]] == ["building", "tree"]  # the vocabulary's spelling
    ring = sent["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == pytest.approx([346100, 5647600], abs=0.01)
    as_chip = raster_request(small, UTM, oem_layer, CONTEXT, local_backend=False)
    assert [
        f["properties"]["class"]
        for f in examples.for_job(["building", "tree"], oem_layer, as_chip, CONTEXT)["features"]
    ] == ["building"]  # a chip holds only the extent
    assert examples.for_job(["water"], oem_layer, by_path, CONTEXT) is None


def test_examples_are_saved_with_the_project(qgis_new_project, tmp_path):
    project = QgsProject.instance()
    examples = ExampleSet()
    examples.add("building", [QgsGeometry.fromWkt(ROOF)], UTM, CONTEXT)
    examples.add("tree", [QgsGeometry.fromWkt(TREE), QgsGeometry.fromWkt(TREE)], UTM, CONTEXT)
    store_examples(project, examples)
    assert project.isDirty()
    path = tmp_path / "with_examples.qgz"
    assert project.write(str(path))
    project.clear()
    assert project_examples(project).examples == []
    assert project.read(str(path))
    restored = project_examples(project)
    assert restored.counts() == {"building": 1, "tree": 2} and restored.crs.authid() == "EPSG:25832"
    assert restored.examples[0].geometry.equals(QgsGeometry.fromWkt(ROOF))
    store_examples(project, ExampleSet())
    assert project.readEntry(PROJECT_SCOPE, PROJECT_KEY, "")[0] == ""


def test_damaged_entry_and_wrong_layers_are_explained(qgis_new_project):
    project = QgsProject.instance()
    project.writeEntry(PROJECT_SCOPE, PROJECT_KEY, "{not json")
    with pytest.raises(ExampleError, match="cannot be read"):
        project_examples(project)
    with pytest.raises(ExampleError, match="Make a polygon layer active"):
        selected_polygons(None)
    with pytest.raises(ExampleError, match="Make a polygon layer active"):
        selected_polygons(QgsVectorLayer("Point?crs=EPSG:25832", "points", "memory"))
    layer = polygon_layer([ROOF])
    layer.removeSelection()
    with pytest.raises(ExampleError, match="Select the example objects of drawn"):
        selected_polygons(layer)


def test_panel_takes_selected_polygons_as_examples(dock, qgis_iface, tmp_path):
    panel = dock.instance_panel
    assert [panel.example_class_combo.itemText(i) for i in range(panel.example_class_combo.count())] == [
        "building",
        "tree",
        "water",
    ]
    assert panel.examples_label.text().startswith("None")
    drawn = polygon_layer([ROOF, in_4326(TREE)], crs="EPSG:4326")
    QgsProject.instance().addMapLayer(drawn)
    qgis_iface.setActiveLayer(drawn)
    panel.example_class_combo.setCurrentText("tree")
    panel.add_selected_examples()
    assert project_examples(QgsProject.instance()).counts() == {"tree": 2}
    assert panel.examples_label.text() == "tree: 2"
    dock.set_vocabulary([c for c in dock.vocabulary() if c.name != "tree"])  # the class leaves the vocabulary
    assert panel.examples_label.text() == "tree: 2 (not in the vocabulary)"
    assert [panel.example_class_combo.itemText(i) for i in range(panel.example_class_combo.count())] == [
        "building",
        "water",
    ]
    # saved and read back with the project: the panel follows
    path = tmp_path / "p.qgz"
    assert QgsProject.instance().write(str(path))
    QgsProject.instance().clear()
    assert panel.examples_label.text().startswith("None")
    assert QgsProject.instance().read(str(path))
    assert panel.examples_label.text() == "tree: 2 (not in the vocabulary)"
    panel.clear_examples()
    assert project_examples(QgsProject.instance()).examples == [] and panel.examples_label.text().startswith("None")


def test_panel_warns_without_a_polygon_selection(dock, qgis_iface, oem_layer):
    qgis_iface.setActiveLayer(oem_layer)
    dock.instance_panel.add_selected_examples()
    [warning] = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
    assert "Make a polygon layer active" in warning
    assert project_examples(QgsProject.instance()).examples == []
