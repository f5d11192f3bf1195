"""Review logic on a saved result layer: status and relabel through the edit buffer (undo, save),
score filter, next unreviewed, merge (once per target), and looks; the Review panel's map moves
and messages."""

import json

import pytest
from helpers import result_gpkg_bytes, vocabulary
from osgeo import ogr, osr
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

from rsov_qgis import review, review_panel, schema
from rsov_qgis.results import add_result_layer, save_result
from rsov_qgis.review_panel import ReviewPanel
from rsov_qgis.styling import CHECK_GREEN
from rsov_qgis.vocabulary import VocabularyClass


@pytest.fixture
def result(tmp_path, qgis_new_project) -> QgsVectorLayer:
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", ["building", "tree", "water"])
    path = save_result(data, tmp_path / "result.gpkg", vocabulary())
    return add_result_layer(path, "result", QgsProject.instance())


def _status(layer):
    return {f.id(): f[schema.STATUS] for f in layer.getFeatures()}


def _on_disk(layer, *fields) -> dict[int, tuple]:
    """What the GeoPackage file holds, read by OGR on its own connection (not through QGIS's shared ones)."""
    dataset = ogr.Open(layer.source().split("|")[0])
    try:
        return {f.GetFID(): tuple(f.GetField(name) for name in fields) for f in dataset.GetLayerByName("rsov")}
    finally:
        dataset = None  # closes the file


def _statuses_on_disk(layer) -> dict[int, str]:
    return {fid: status for fid, (status,) in _on_disk(layer, schema.STATUS).items()}


# --- edits ---------------------------------------------------------------------------------------
def test_accept_and_reject_wait_in_the_edit_buffer_until_saved(result):
    ids = sorted(_status(result))
    assert review.set_status(result, ids[:2], schema.ACCEPTED) == 2
    review.set_status(result, [ids[2]], schema.REJECTED)
    expected = {ids[0]: "accepted", ids[1]: "accepted", ids[2]: "rejected", **{i: "new" for i in ids[3:]}}
    assert _status(result) == expected and result.isEditable() and review.has_unsaved_review(result)
    assert set(_statuses_on_disk(result).values()) == {"new"}  # nothing reaches the file before the save
    review.save_review(result)
    assert _statuses_on_disk(result) == expected and not result.isEditable()
    with pytest.raises(review.ReviewError, match="Unknown review status"):
        review.set_status(result, ids, "maybe")


def test_each_action_is_one_undo_step(result):
    ids = sorted(_status(result))
    stack = result.undoStack()
    review.set_status(result, ids[:3], schema.ACCEPTED)  # one click on three features
    review.relabel(result, [ids[0]], "water", 3)
    assert stack.count() == 2 and result.getFeature(ids[0])[schema.CLASS] == "water"
    stack.undo()  # the relabel
    assert result.getFeature(ids[0])[schema.CLASS] == "building" and result.getFeature(ids[0])[schema.CLASS_ID] == 1
    stack.undo()  # the accept, of all three
    assert set(_status(result).values()) == {"new"} and not result.isModified()
    stack.redo()
    assert [_status(result)[i] for i in ids[:3]] == ["accepted"] * 3
    review.save_review(result)
    assert [_statuses_on_disk(result)[i] for i in ids] == ["accepted"] * 3 + ["new"] * 3


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
    review.save_review(result)
    on_disk = _on_disk(result, schema.CLASS, schema.CLASS_ID)
    assert tree and {on_disk[fid] for fid in tree} == {("water", 3)}


# --- the score filter ----------------------------------------------------------------------------
def test_score_filter(result):
    review.score_filter(result, 0.5)
    assert result.featureCount() == 3 and {f[schema.SCORE] for f in result.getFeatures()} == {0.8}
    assert review.current_score_filter(result) == 0.5
    review.score_filter(result, 0.0)
    assert result.featureCount() == 6 and result.subsetString() == ""
    assert review.current_score_filter(result) == 0.0
    result.setSubsetString("\"class\" = 'tree'")  # someone else's filter
    assert review.current_score_filter(result) == 0.0


def test_the_score_filter_waits_for_a_saved_review(result):
    result.startEditing()  # an edit session without changes: filtering leaves and resumes it
    review.score_filter(result, 0.5)
    assert result.featureCount() == 3 and result.isEditable()
    review.set_status(result, [next(result.getFeatures()).id()], schema.ACCEPTED)
    with pytest.raises(review.ReviewError, match="Save the review of result"):
        review.score_filter(result, 0.0)
    assert result.featureCount() == 3 and review.has_unsaved_review(result)  # nothing lost


def test_counts_the_unreviewed_features_the_score_filter_hides(result):
    assert review.hidden_unreviewed(result) == 0
    review.score_filter(result, 0.5)
    review.set_status(result, [f.id() for f in result.getFeatures()], schema.ACCEPTED)  # every shown one
    assert review.next_unreviewed(result) is None
    assert review.hidden_unreviewed(result) == 3  # while the review is still being edited
    assert review.status_counts(result) == {"accepted": 3}


# --- next unreviewed -----------------------------------------------------------------------------
def test_next_unreviewed_walks_and_wraps(result):
    ids = sorted(_status(result))
    review.set_status(result, [ids[1]], schema.ACCEPTED)
    assert review.next_unreviewed(result).id() == ids[0]
    assert review.next_unreviewed(result, ids[0]).id() == ids[2]  # skips the accepted one
    assert review.next_unreviewed(result, ids[-1]).id() == ids[0]  # wraps around
    review.set_status(result, ids, schema.REJECTED)
    assert review.next_unreviewed(result) is None


def _size(rectangle):
    return rectangle.width(), rectangle.height()


def test_review_extent_zooms_with_context_or_only_pans():
    box = QgsRectangle(100, 100, 120, 110)  # 20 x 10
    far = QgsRectangle(0, 0, 10000, 5000)
    zoomed = review.review_extent(far, box, smallest=1.0)
    assert _size(zoomed) == (60, 60) and zoomed.center() == box.center()  # three times the feature's size
    assert zoomed.contains(box.buffered(19))  # a margin of about its size all round
    assert _size(review.review_extent(far, box, smallest=200.0)) == (200, 200)  # not closer than the smallest view
    assert _size(review.review_extent(QgsRectangle(0, 0, 30, 20), box, 1.0)) == (60, 60)  # too close: zooms out
    near = QgsRectangle(150, 150, 250, 230)  # 100 x 80: fits the feature with its context
    panned = review.review_extent(near, box, smallest=1.0)
    assert _size(panned) == _size(near) and panned.center() == box.center()
    assert _size(review.review_extent(QgsRectangle(0, 0, 300, 250), box, 1.0)) == (60, 60)  # lost in the view


# --- merging -------------------------------------------------------------------------------------
def _buildings(path) -> QgsVectorLayer:
    """A polygon GeoPackage in EPSG:4326 with class, score and note fields."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("buildings", srs, ogr.wkbPolygon)
    for name, kind in (("class", ogr.OFTString), ("score", ogr.OFTReal), ("note", ogr.OFTString)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    layer = dataset = None  # noqa: F841 (closes the file)
    target = QgsVectorLayer(f"{path}|layername=buildings", "buildings", "ogr")
    assert target.isValid()
    QgsProject.instance().addMapLayer(target)
    return target


def _accept_buildings(result) -> list[int]:
    accepted = [f.id() for f in result.getFeatures() if f[schema.CLASS] == "building"]
    review.set_status(result, accepted, schema.ACCEPTED)
    return accepted


def test_merge_accepted_into_target(result, tmp_path):
    target = _buildings(tmp_path / "buildings.gpkg")
    _accept_buildings(result)
    with pytest.raises(review.ReviewError, match="Save the review of result"):
        review.merge_accepted(result, target)
    review.save_review(result)
    review.score_filter(result, 0.5)  # hides one accepted feature: it is merged all the same
    assert review.merge_accepted(result, target, QgsProject.instance().transformContext()) == (2, 0)
    merged = list(target.getFeatures())  # single parts from the result's multipolygons
    assert [f["class"] for f in merged] == ["building", "building"] and {f["score"] for f in merged} == {0.2, 0.8}
    assert result.subsetString() and result.featureCount() == 3  # the filter is back
    centre = merged[0].geometry().centroid().asPoint()
    assert 6.0 < centre.x() < 8.0 and 50.0 < centre.y() < 52.0  # reprojected from EPSG:25832 (Cologne)
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    with pytest.raises(review.ReviewError, match="does not hold polygons"):
        review.merge_accepted(result, points)
    with pytest.raises(review.ReviewError, match="other than the result layer"):
        review.merge_accepted(result, result)


def test_merging_twice_adds_nothing_the_second_time(result, tmp_path):
    target = _buildings(tmp_path / "buildings.gpkg")
    accepted = _accept_buildings(result)
    review.save_review(result)
    assert review.merge_accepted(result, target) == (2, 0)
    assert review.merge_accepted(result, target) == (0, 2) and target.featureCount() == 2
    target.setSubsetString('"note" IS NULL')  # a filtered target is the same target
    assert review.merge_accepted(result, target) == (0, 2)
    key = f"{tmp_path / 'buildings.gpkg'}|layername=buildings"
    merged = _on_disk(result, schema.MERGED)  # the record is in the result's file
    assert {fid: json.loads(value) if value else None for fid, (value,) in merged.items() if value} == {
        fid: [key] for fid in accepted
    }
    other = QgsVectorLayer("Polygon?crs=EPSG:25832&field=class:string", "other", "memory")
    assert review.merge_accepted(result, other) == (2, 0)  # another target gets them too
    assert review.merged_into(result.getFeature(accepted[0])) == [key, review.target_key(other)]


def test_a_merge_is_remembered_after_reopening_the_project(result, tmp_path):
    target = _buildings(tmp_path / "buildings.gpkg")
    accepted = _accept_buildings(result)
    review.save_review(result)
    assert review.merge_accepted(result, target) == (2, 0)
    review.set_status(result, [f.id() for f in result.getFeatures() if f[schema.CLASS] == "tree"][:1], schema.ACCEPTED)
    review.save_review(result)
    project = QgsProject.instance()
    assert project.write(str(tmp_path / "review.qgz"))
    project.clear()
    assert project.read(str(tmp_path / "review.qgz"))
    [result] = project.mapLayersByName("result")
    [target] = project.mapLayersByName("buildings")
    assert review.merge_accepted(result, target) == (1, 2)  # only the tree accepted since
    assert target.featureCount() == 3 and len(accepted) == 2


# --- looks ---------------------------------------------------------------------------------------
TRANSPARENT = QColor(255, 255, 255, 0)


def _render(layer, extent: QgsRectangle, size: QSize, background: QColor = TRANSPARENT) -> QImage:
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(size)
    settings.setBackgroundColor(background)
    image = QImage(size, QImage.Format.Format_ARGB32)
    image.fill(background)
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    return image


def _first_building_square(layer) -> QImage:
    return _render(layer, QgsRectangle(346000, 5647500, 346010, 5647510), QSize(100, 100))


def test_status_changes_the_look(result):
    first = next(
        result.getFeatures(QgsFeatureRequest().setFilterExpression('"class" = \'building\' AND "score" < 0.5'))
    )
    new = _first_building_square(result).pixelColor(50, 20)
    assert abs(new.alpha() - 150) <= 2 and abs(new.red() - 0xE3) <= 3  # class colour, translucent
    review.set_status(result, [first.id()], schema.REJECTED)
    assert _first_building_square(result).pixelColor(50, 20).alpha() == 0  # rejected: no fill


def _lightness(image: QImage, xs: range, ys: range) -> list[int]:
    return [image.pixelColor(x, y).lightness() for x in xs for y in ys]


def test_the_review_look_reads_on_any_class_colour(tmp_path, qgis_new_project):
    """Accepted features of a green and of a dark class, a rejected one of a grey class, over an
    imagery-like grey-green ground: white halo and dark line at the edge, a check mark inside."""
    classes = [
        VocabularyClass(["grass"], "#33a02c"),
        VocabularyClass(["shadow"], "#1a1a1a"),
        VocabularyClass(["pavement"], "#949494"),
    ]
    data = result_gpkg_bytes(tmp_path / "backend.gpkg", [c.name for c in classes])
    layer = add_result_layer(save_result(data, tmp_path / "result.gpkg", classes), "looks", QgsProject.instance())
    low = {f[schema.CLASS]: f.id() for f in layer.getFeatures() if f[schema.SCORE] < 0.5}  # the bottom row
    review.set_status(layer, [low["grass"], low["shadow"]], schema.ACCEPTED)
    review.set_status(layer, [low["pavement"]], schema.REJECTED)
    # 10 px per metre; class i's bottom square spans x 50+200i..150+200i, y 250..350
    image = _render(layer, QgsRectangle(345995, 5647495, 346065, 5647535), QSize(700, 400), QColor("#7d8270"))
    image.save(str(tmp_path / "looks.png"))  # to look at
    for left in (50, 250):  # grass, shadow
        edge = _lightness(image, range(left - 8, left + 9), range(270, 280))  # across the left edge, off the check
        assert max(edge) > 240 and min(edge) < 50, (left, max(edge), min(edge))  # white halo and dark line
        check = [image.pixelColor(x, y) for x in range(left + 38, left + 63) for y in range(288, 313)]
        assert max(c.lightness() for c in check) > 240  # the check mark's halo
        assert any(abs(c.green() - QColor(CHECK_GREEN).green()) < 25 and c.red() < 60 for c in check)  # and its green
    assert image.pixelColor(47, 100) == QColor("#7d8270")  # a new feature drawn after them keeps its thin outline
    rejected = _lightness(image, range(442, 459), range(270, 280))
    assert max(rejected) > 240 and min(rejected) < 130  # grey dashes on a white line, over a grey-ish ground
    assert _lightness(image, [500], [300]) == _lightness(image, [500], [380])  # no fill: the ground shows


# --- the Review panel ------------------------------------------------------------------------------
@pytest.fixture
def panel(result, qgis_iface, qgis_canvas, qtbot):
    messages = []
    widget = ReviewPanel(qgis_iface, lambda text, level: messages.append((level, text)))
    widget.messages = messages
    qtbot.addWidget(widget)
    widget.show_result(result)
    qgis_canvas.setDestinationCrs(result.crs())
    yield widget
    widget.shutdown()


def _selected_box(layer) -> QgsRectangle:
    [feature] = layer.selectedFeatures()
    return feature.geometry().boundingBox()


def test_next_unreviewed_shows_the_feature_with_its_surroundings(panel, result, qgis_canvas, monkeypatch):
    city = QgsRectangle(340000, 5640000, 350000, 5650000)
    qgis_canvas.setExtent(city)
    panel.zoom_to_next_unreviewed()
    box, view = _selected_box(result), qgis_canvas.extent()  # a 10 m square
    assert view.center() == box.center() and view.contains(box.buffered(box.width()))  # its size of margin all round
    side = max(review.CONTEXT * box.width(), review_panel._smallest_view(qgis_canvas))  # (the test canvas is small)
    assert min(view.width(), view.height()) == pytest.approx(side) and qgis_canvas.scale() >= review_panel.MIN_SCALE
    monkeypatch.setattr(review_panel, "MIN_SCALE", 20000)  # a scale where its context is smaller than the map
    qgis_canvas.setExtent(city)
    panel.zoom_to_next_unreviewed()
    assert qgis_canvas.scale() == pytest.approx(20000, rel=0.01)  # not blown up to fill the map
    assert qgis_canvas.extent().contains(_selected_box(result).buffered(10))


def test_an_already_visible_feature_only_pans(panel, result, qgis_canvas):
    qgis_canvas.setExtent(QgsRectangle(345960, 5647470, 346080, 5647560))  # the squares at a fitting scale
    scale, before = qgis_canvas.scale(), qgis_canvas.extent()
    panel.zoom_to_next_unreviewed()
    box, view = _selected_box(result), qgis_canvas.extent()
    assert before.contains(box)
    assert qgis_canvas.scale() == pytest.approx(scale) and view.center() == box.center()


def test_next_unreviewed_tells_what_the_score_filter_hides(panel, result):
    panel.score_slider.setValue(50)
    assert result.featureCount() == 3
    review.set_status(result, [f.id() for f in result.getFeatures()], schema.ACCEPTED)
    panel.zoom_to_next_unreviewed()
    assert panel.messages[-1] == (
        "Info",
        "3 hidden by the score filter still to review: lower the minimum score "
        "to see them (every shown feature of result is reviewed).",
    )
    assert result.selectedFeatureIds() == []
    panel.save_review()
    panel.score_slider.setValue(0)
    review.set_status(result, [f.id() for f in result.getFeatures()], schema.REJECTED)
    panel.zoom_to_next_unreviewed()
    assert panel.messages[-1] == ("Success", "Every feature of result is reviewed.")
