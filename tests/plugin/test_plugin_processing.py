"""Processing: rsov:segment against the fake backend."""

import pytest
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

from helpers import polygon_layer
from rsov_qgis.backend_client import JobStatus
from rsov_qgis.processing_provider import ProgressTexts, RsovProvider


@pytest.fixture
def provider(qgis_processing):
    provider = RsovProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos, self.progress_values, self.progress_texts = [], [], []
        self.progressChanged.connect(self.progress_values.append)

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def setProgressText(self, text):  # noqa: N802
        self.progress_texts.append(text)
        super().setProgressText(text)


def test_segment_algorithm_writes_features(fake_backend, provider, oem_layer, tmp_path):
    import processing

    extent = oem_layer.extent()
    box = QgsRectangle(extent.xMinimum() + 100, extent.yMinimum() + 100, extent.xMinimum() + 300, extent.yMinimum() + 200)
    feedback = Feedback()
    out = str(tmp_path / "segments.gpkg")
    result = processing.run("rsov:segment", {
        "INPUT": oem_layer, "CLASSES": "building,roof; tree ,forest", "THRESHOLD": 0.6,
        "EXTENT": f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:25832]",
        "OUTPUT": out,
    }, feedback=feedback)
    sent = fake_backend.requests[0]["json"]
    assert sent["classes"] == ["building,roof", "tree,forest"] and sent["options"]["threshold"] == 0.6
    assert sent["bbox"] == pytest.approx([box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()])
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:25832"
    assert sorted(f["class"] for f in layer.getFeatures()) == ["building", "tree"]
    assert {f["status"] for f in layer.getFeatures()} == {"new"}
    assert {"class", "class_id", "score", "area_m2", "status"} <= set(layer.fields().names())
    for feature in layer.getFeatures():
        assert box.contains(feature.geometry().boundingBox())
    assert feedback.progress_texts[0] == "segmenting block 1/3 — about 40 s left"
    assert feedback.progress_values[-1] == 100
    assert not [info for info in feedback.infos if "proposals" in info]  # semantic jobs have no summary


def test_whole_raster_by_default_and_errors_are_processing_exceptions(fake_backend, provider, oem_layer, tmp_path):
    import processing

    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[0]["json"]["bbox"] == pytest.approx([346000, 5647500, 346500, 5648000])
    with pytest.raises(QgsProcessingException, match="vocabulary is empty"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": " ; ", "OUTPUT": "TEMPORARY_OUTPUT"})
    fake_backend.token_file.write_text("wrong")
    with pytest.raises(QgsProcessingException, match="refused the token"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})


def test_cancel_through_feedback(fake_backend, provider, oem_layer):
    import processing

    fake_backend.hold = True
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: feedback.cancel() if value > 0 else None)
    result = processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"},
                            feedback=feedback)
    assert result["OUTPUT"] is None
    assert [job.state for job in fake_backend.jobs.values()] == ["cancelled"]


def test_loaded_output_gets_the_vocabulary_style(fake_backend, provider, oem_layer):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject

    result = processing.runAndLoadResults("rsov:segment", {
        "INPUT": oem_layer, "CLASSES": "building,roof; water", "OUTPUT": "TEMPORARY_OUTPUT"})
    layer = QgsProject.instance().mapLayer(result["OUTPUT"])
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.value() for c in layer.renderer().categories()] == ["building", "water"]


def test_instance_mode_with_an_examples_layer(fake_backend, provider, oem_layer):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject

    examples = polygon_layer([
        "POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))",  # off the raster
        "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # in it, in EPSG:4326
        "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # a class outside the vocabulary
        "POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))",  # no class
    ], crs="EPSG:4326", classes=["Building", "water", "car", None])
    feedback = Feedback()
    result = processing.runAndLoadResults("rsov:segment", {
        "INPUT": oem_layer, "CLASSES": "building,roof; water", "MODE": "instance", "EXAMPLES": examples,
        "POINTS_PER_SIDE": 4, "PRED_IOU": -1, "CLASS_PROMPTS": False, "OUTPUT": "TEMPORARY_OUTPUT"},
        feedback=feedback)
    sent = fake_backend.requests[0]["json"]
    assert sent["mode"] == "instance"
    assert sent["options"] == {"threshold": 0.3, "object_threshold": 0.3, "points_per_side": 4, "pred_iou": -1,
                               "stability": 0.9, "class_prompts": False, "points_per_batch": 64}
    assert sent["examples"]["crs"]["properties"]["name"] == "EPSG:25832"
    assert [f["properties"]["class"] for f in sent["examples"]["features"]] == ["water"]
    assert "Instance mode; examples sent: 1." in feedback.infos
    assert feedback.progress_texts[0] == "proposing objects: tile 1/3, prompts 64/192 — about 40 s left"
    assert "3 proposals, 2 kept, 0 below the object threshold 0.30, 1 background" in feedback.infos  # the summary
    layer = QgsProject.instance().mapLayer(result["OUTPUT"])
    assert "instance_id" in layer.fields().names() and layer.featureCount() == 2
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.symbol().color().alpha() for c in layer.renderer().categories()] == [40, 40]  # outlines


def test_examples_need_their_class_field(fake_backend, provider, oem_layer):
    import processing

    examples = polygon_layer(["POLYGON((6.81 50.96, 6.8101 50.96, 6.8101 50.9601, 6.81 50.96))"], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "MODE": "instance",
                                        "EXAMPLES": examples, "EXAMPLES_CLASS": "kind", "OUTPUT": "TEMPORARY_OUTPUT"})
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "EXAMPLES": examples,
                                    "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[-1]["json"]["mode"] == "semantic" and "examples" not in fake_backend.requests[-1]["json"]


# inside the raster (346000..346500, 5647500..5648000), in EPSG:4326
FIELD_4326 = "POLYGON((6.8105 50.9605, 6.8115 50.9605, 6.8115 50.9611, 6.8105 50.9611, 6.8105 50.9605))"
POND_4326 = "POLYGON((6.812 50.962, 6.8125 50.962, 6.8125 50.9623, 6.812 50.962))"
OFF_4326 = "POLYGON((7.0 50.95, 7.0001 50.95, 7.0001 50.9501, 7.0 50.95))"


def _in_raster_crs(wkt, layer):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    geometry = QgsGeometry.fromWkt(wkt)
    geometry.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), layer.crs(),
                                              QgsProject.instance()))
    return geometry


def test_mask_with_selected_features_only(fake_backend, provider, oem_layer, tmp_path):
    import processing

    mask = polygon_layer([FIELD_4326, POND_4326, OFF_4326], crs="EPSG:4326", name="fields")
    QgsProject.instance().addMapLayer(mask)
    mask.selectByIds([next(mask.getFeatures()).id()])  # the field only
    feedback = Feedback()
    result = processing.run("rsov:segment", {
        "INPUT": oem_layer, "CLASSES": "building; water", "RESOLUTION": 0,
        "MASK": QgsProcessingFeatureSourceDefinition(mask.id(), True), "OUTPUT": str(tmp_path / "masked.gpkg")},
        feedback=feedback)
    sent = fake_backend.requests[0]["json"]
    assert "resolution" not in sent["options"]  # 0: auto
    assert sent["mask"]["crs"]["properties"]["name"] == "EPSG:25832" == sent["bbox_crs"]
    [feature] = sent["mask"]["features"]
    field = _in_raster_crs(FIELD_4326, oem_layer)
    ring = feature["geometry"]["coordinates"][0]
    assert QgsGeometry.fromWkt("POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))").symDifference(
        field).area() < 0.1
    box = field.boundingBox()
    assert QgsRectangle(*sent["bbox"]).contains(box) and QgsRectangle(*sent["bbox"]).width() < box.width() + 1.01
    layer = QgsVectorLayer(result["OUTPUT"], "out", "ogr")
    assert layer.featureCount() == 2
    for out in layer.getFeatures():
        assert field.buffer(0.01, 4).contains(out.geometry())
    assert any(info.startswith("Estimate: 1.14 m/px (auto)") for info in feedback.infos)
    assert "Mask polygons on the raster: 1." in feedback.infos
    assert fake_backend.results == ["format=gpkg"]
    # every polygon of the layer (the one off the raster is left out), at a fixed resolution
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "RESOLUTION": 0.5, "MASK": mask,
                                    "OUTPUT": "TEMPORARY_OUTPUT"})
    sent = fake_backend.requests[1]["json"]
    assert len(sent["mask"]["features"]) == 2 and sent["options"]["resolution"] == 0.5
    assert fake_backend.estimates[-1]["options"]["resolution"] == 0.5


def test_mask_off_the_raster_or_outside_the_extent_is_refused(fake_backend, provider, oem_layer):
    import processing

    off = polygon_layer([OFF_4326], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException, match="The mask polygons do not overlap the raster oem_koeln_50"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "MASK": off,
                                        "OUTPUT": "TEMPORARY_OUTPUT"})
    field = polygon_layer([FIELD_4326], crs="EPSG:4326")
    with pytest.raises(QgsProcessingException, match="within the extent"):
        processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "MASK": field,
                                        "EXTENT": "346400,346500,5647900,5648000 [EPSG:25832]",
                                        "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests == []


def test_an_instance_job_without_objects_and_the_refine_parameter(fake_backend, provider, oem_layer):
    import processing

    feedback = Feedback()
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "building; water", "MODE": "instance",
                                    "OBJECT_THRESHOLD": 0.95, "POINTS_PER_BATCH": 16, "REFINE": True,
                                    "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback)
    options = fake_backend.requests[0]["json"]["options"]
    assert options["points_per_batch"] == 16 and "refine" not in options  # semantic mode's alone
    assert ("No objects: 3 proposals, 0 kept, 2 below the object threshold 0.95, 1 background. "
            "Lower the object threshold or check the vocabulary.") in feedback.infos
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "REFINE": True,
                                    "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[1]["json"]["options"] == {"threshold": 0.3, "refine": "sam"}
    processing.run("rsov:segment", {"INPUT": oem_layer, "CLASSES": "water", "OUTPUT": "TEMPORARY_OUTPUT"})
    assert fake_backend.requests[2]["json"]["options"] == {"threshold": 0.3}  # unchecked: the backend's "none"
    algorithm = QgsApplication.processingRegistry().algorithmById("rsov:segment")
    refine = algorithm.parameterDefinition("REFINE")
    assert refine.description() == "Refine with SAM regions (semantic mode)" and "1024 px tile" in refine.help()


def test_progress_texts_go_at_once_for_a_new_stage_and_every_few_seconds_within_one():
    now = [0.0]
    texts = ProgressTexts(every_s=5.0, clock=lambda: now[0])

    def at(seconds, stage, eta_s):
        now[0] = seconds
        return texts.due(JobStatus("j", "running", stage=stage, eta_s=eta_s))

    assert at(0, "encoding windows: 3/9", None) == "encoding windows: 3/9"
    assert at(1, "encoding windows: 4/9", None) is None  # the same stage, too soon
    assert at(5, "encoding windows: 5/9", 30) == "encoding windows: 5/9 — about 30 s left"
    assert at(6, "proposing objects: tile 1/4, prompts 64/320", 25) == (
        "proposing objects: tile 1/4, prompts 64/320 — about 25 s left")  # a new stage: at once
    assert at(20, "proposing objects: tile 1/4, prompts 64/320", 25) is None  # nothing new
    assert texts.due(JobStatus("j", "done", stage="done")) == "done"
