"""Review logic on a saved result layer: status, relabel, score filter, next, merge, and looks."""

import pytest
from qgis.core import (
    QgsFeatureRequest,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from helpers import result_gpkg_bytes, vocabulary
from rsov_qgis import review, schema
from rsov_qgis.results import add_result_layer, save_result


@pytest.fixture
def result(tmp_path, qgis_new_project) -> QgsVectorLayer:
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", ["building", "tree", "water"])
    path = save_result(data, tmp_path / "result.gpkg", vocabulary())
    return add_result_layer(path, "result", QgsProject.instance())


def _status(layer):
    return {f.id(): f[schema.STATUS] for f in layer.getFeatures()}


def _on_disk(layer, *fields) -> dict[int, tuple]:
    """What the GeoPackage file holds, read by OGR on its own connection (not through QGIS's shared ones)."""
    from osgeo import ogr

    dataset = ogr.Open(layer.source().split("|")[0])
    try:
        return {f.GetFID(): tuple(f.GetField(name) for name in fields) for f in dataset.GetLayerByName("rsov")}
    finally:
        dataset = None  # closes the file


def test_accept_and_reject_are_saved(result):
    ids = sorted(_status(result))
    assert review.set_status(result, ids[:2], schema.ACCEPTED) == 2
    review.set_status(result, [ids[2]], schema.REJECTED)
    expected = {ids[0]: "accepted", ids[1]: "accepted", ids[2]: "rejected", **{i: "new" for i in ids[3:]}}
    assert {fid: status for fid, (status,) in _on_disk(result, schema.STATUS).items()} == expected  # committed
    assert not result.isEditable()
    with pytest.raises(review.ReviewError, match="Unknown review status"):
        review.set_status(result, ids, "maybe")


def test_changes_stay_in_the_edit_buffer_of_a_layer_being_edited(result):
    result.startEditing()
    fid = sorted(_status(result))[0]
    review.set_status(result, [fid], schema.ACCEPTED)
    assert result.isEditable() and _status(result)[fid] == "accepted"
    assert _on_disk(result, schema.STATUS)[fid] == ("new",)  # the file is untouched until the edits are saved
    result.rollBack()


def test_relabel(result):
    tree = [f.id() for f in result.getFeatures() if f[schema.CLASS] == "tree"]
    review.relabel(result, tree, "water", 3)
    on_disk = _on_disk(result, schema.CLASS, schema.CLASS_ID)
    assert tree and {on_disk[fid] for fid in tree} == {("water", 3)}


def test_score_filter(result):
    review.score_filter(result, 0.5)
    assert result.featureCount() == 3 and {f[schema.SCORE] for f in result.getFeatures()} == {0.8}
    assert review.current_score_filter(result) == 0.5
    review.score_filter(result, 0.0)
    assert result.featureCount() == 6 and result.subsetString() == ""
    assert review.current_score_filter(result) == 0.0
    result.setSubsetString('"class" = \'tree\'')  # someone else's filter
    assert review.current_score_filter(result) == 0.0


def test_next_unreviewed_walks_and_wraps(result):
    ids = sorted(_status(result))
    review.set_status(result, [ids[1]], schema.ACCEPTED)
    assert review.next_unreviewed(result).id() == ids[0]
    assert review.next_unreviewed(result, ids[0]).id() == ids[2]  # skips the accepted one
    assert review.next_unreviewed(result, ids[-1]).id() == ids[0]  # wraps around
    review.set_status(result, ids, schema.REJECTED)
    assert review.next_unreviewed(result) is None


def test_merge_accepted_into_target(result):
    target = QgsVectorLayer("Polygon?crs=EPSG:4326&field=class:string&field=score:double&field=note:string",
                            "buildings", "memory")
    QgsProject.instance().addMapLayer(target)
    accepted = [f.id() for f in result.getFeatures() if f[schema.CLASS] == "building"]
    review.set_status(result, accepted, schema.ACCEPTED)
    review.score_filter(result, 0.5)  # hides one accepted feature: it is merged all the same
    assert review.merge_accepted(result, target, QgsProject.instance().transformContext()) == 2
    merged = list(target.getFeatures())
    assert [f["class"] for f in merged] == ["building", "building"] and {f["score"] for f in merged} == {0.2, 0.8}
    assert result.subsetString() and result.featureCount() == 3  # the filter is back
    centre = merged[0].geometry().centroid().asPoint()
    assert 6.0 < centre.x() < 8.0 and 50.0 < centre.y() < 52.0  # reprojected from EPSG:25832 (Cologne)
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    with pytest.raises(review.ReviewError, match="does not hold polygons"):
        review.merge_accepted(result, points)
    with pytest.raises(review.ReviewError, match="other than the result layer"):
        review.merge_accepted(result, result)


def _render(layer) -> QImage:
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(QgsRectangle(346000, 5647500, 346010, 5647510))  # the first building square
    settings.setOutputSize(QSize(100, 100))
    settings.setBackgroundColor(QColor(255, 255, 255, 0))
    image = QImage(100, 100, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    return image


def test_status_changes_the_look(result):
    first = next(result.getFeatures(QgsFeatureRequest().setFilterExpression('"class" = \'building\' AND "score" < 0.5')))
    new = _render(result).pixelColor(50, 50)
    assert abs(new.alpha() - 150) <= 2 and abs(new.red() - 0xe3) <= 3  # class colour, translucent
    review.set_status(result, [first.id()], schema.REJECTED)
    assert _render(result).pixelColor(50, 50).alpha() == 0  # rejected: no fill
    review.set_status(result, [first.id()], schema.ACCEPTED)
    edge = _render(result).pixelColor(1, 50)
    assert edge.green() > 150 and edge.red() < 60  # bold green outline
