"""Known answers for the evaluation arithmetic, label handling, presets and option sweeps (all by hand)."""

import json

import numpy as np
import pytest
import rasterio

from rsov.engine import SegmentRequest
from rsov.errors import InputError
from rsov.evaluation.datasets import (
    PRESETS,
    LabelSpec,
    load_classes,
    load_coco,
    pair_images,
    parse_label_map,
    preset_classes_path,
    read_label,
)
from rsov.evaluation.metrics import NO_CLASS, confusion_matrix, harmonic_mean, instance_scores, semantic_scores
from rsov.evaluation.options import EngineSpec, Variant, apply_option, expand_sweeps, parse_sweep
from rsov.semantic.vocabulary import parse_class

# ---- semantic metrics -------------------------------------------------------------------------

LABEL = np.array([[0, 0, 1, 1], [2, 2, NO_CLASS, 1]])
PRED = np.array([[0, 1, 1, 1], [2, NO_CLASS, 0, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(LABEL, PRED, 4)
    # rows: true class 0..3; columns: predicted 0..3 and "no class"; the ignored pixel is not counted
    assert cm.tolist() == [[1, 1, 0, 0, 0], [1, 2, 0, 0, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0]]


def test_iou_miou_accuracy_absent_class_and_harmonic_mean():
    scores = semantic_scores(confusion_matrix(LABEL, PRED, 4), unseen=[2])
    # class 0: TP 1, label 2, predicted 2 -> 1/3; class 1: 2/(3+3-2); class 2: 1/(2+1-1) (the miss is an FN only)
    assert scores.iou[:3] == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert scores.iou[3] is None  # in neither labels nor predictions: left out of every mean
    assert scores.miou == pytest.approx(4 / 9)
    assert scores.pixel_accuracy == pytest.approx(4 / 7)
    assert scores.split.seen == pytest.approx(5 / 12)
    assert scores.split.unseen == pytest.approx(1 / 2)
    assert scores.split.harmonic == pytest.approx(5 / 11)
    assert semantic_scores(confusion_matrix(LABEL, PRED, 4)).split is None


def test_scores_come_from_the_summed_matrix_and_false_classes_count():
    a = confusion_matrix(np.zeros((10, 10), int), np.zeros((10, 10), int), 2)  # 100 px of class 0, all right
    b = confusion_matrix(np.ones((1, 10), int), np.zeros((1, 10), int), 2)  # 10 px of class 1 called class 0
    scores = semantic_scores(a + b)
    assert scores.iou == pytest.approx([100 / 110, 0.0])
    assert scores.miou == pytest.approx(50 / 110)  # not the mean of per-image mIoUs (1.0 and 0.0)
    # a class that is only predicted has IoU 0 and counts in the mean
    only_predicted = semantic_scores(confusion_matrix(np.zeros((1, 4), int), np.array([[0, 0, 1, 1]]), 2))
    assert only_predicted.iou == pytest.approx([0.5, 0.0]) and only_predicted.miou == pytest.approx(0.25)


def test_nothing_labelled_and_harmonic_edge_cases():
    scores = semantic_scores(confusion_matrix(np.full((2, 2), NO_CLASS), np.zeros((2, 2), int), 3))
    assert scores.iou == [None, None, None] and scores.miou is None and scores.pixel_accuracy is None
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(None, 0.5) is None
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4)


# ---- instance metrics -------------------------------------------------------------------------


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _box(rows, cols, size=20):
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def _gt(image_id, ann_id, category, mask):
    rle = _rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": rle,
        "area": float(mask.sum()),
        "iscrowd": 0,
        "bbox": [0, 0, 1, 1],
    }


def test_instance_ap_and_recall_by_hand():
    g1, g2, g3 = _box(slice(0, 5), slice(0, 10)), _box(slice(10, 20), slice(0, 10)), _box(slice(0, 5), slice(12, 20))
    partial = np.zeros((20, 20), bool)
    partial.flat[np.flatnonzero(g2)[:55]] = True  # 55 of g2's 100 pixels: IoU 0.55
    ground_truth = {
        "images": [{"id": 1, "width": 20, "height": 20}, {"id": 2, "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [_gt(1, 1, 1, g1), _gt(1, 2, 1, g2), _gt(1, 3, 1, g3), _gt(2, 4, 2, g1)],
    }
    detections = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rle(g1)},  # TP
        {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": _rle(_box(slice(15, 20), slice(12, 20)))},  # FP
        {"image_id": 1, "category_id": 1, "score": 0.7, "segmentation": _rle(partial)},  # TP at IoU 0.4/0.5, not 0.6
        {"image_id": 2, "category_id": 3, "score": 0.9, "segmentation": _rle(g1)},  # class c has no ground truth
    ]
    scores = instance_scores(ground_truth, detections, [1, 2], 3, unseen=[1])
    # class a at IoU 0.5: precision 1 up to recall 1/3 (34 of the 101 recall points), 2/3 up to recall 2/3 (33 more)
    assert scores.ap50[0] == pytest.approx((34 * 1 + 33 * 2 / 3) / 101)
    assert scores.ap50[1] == 0.0  # ground truth, no detection
    assert scores.ap50[2] is None  # no ground truth: left out of the means
    assert scores.map50 == pytest.approx(28 / 101)
    assert scores.recall[0.4][:2] == pytest.approx([2 / 3, 0.0])
    assert scores.recall[0.5][0] == pytest.approx(2 / 3)
    assert scores.recall[0.6][0] == pytest.approx(1 / 3)
    assert scores.mean_recall[0.6] == pytest.approx(1 / 6)
    assert scores.ap_split.seen == pytest.approx(56 / 101) and scores.ap_split.unseen == 0.0
    assert scores.ap_split.harmonic == 0.0
    assert scores.recall_split.seen == pytest.approx(2 / 3)


def test_instance_scores_without_any_detection():
    ground_truth = {
        "images": [{"id": 1, "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [_gt(1, 1, 1, _box(slice(0, 5), slice(0, 5)))],
    }
    scores = instance_scores(ground_truth, [], [1], 1)
    assert scores.ap50 == [0.0] and scores.recall[0.5] == [0.0]


# ---- labels, presets, COCO --------------------------------------------------------------------

CLASSES = tuple(parse_class(line) for line in ("background", "building,roof", "water"))


def test_label_map_and_label_spec():
    mapping = parse_label_map("1:0, 2:building, 3:2, 0:ignore", CLASSES)
    assert mapping == {1: 0, 2: 1, 3: 2, 0: None}
    spec = LabelSpec(("background", "building", "water"), mapping, ignore_index=255, background_class=None)
    raw = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    assert spec.label_indexes(raw, "x").tolist() == [[NO_CLASS, 0, 1], [2, NO_CLASS, 0]]
    with pytest.raises(InputError, match="values 7"):
        spec.label_indexes(np.array([[7, 1]]), "x.png")
    identity = LabelSpec(("background", "building", "water"), None, 255, None)
    assert identity.label_indexes(np.array([[2, 255, 0]]), "x").tolist() == [[2, NO_CLASS, 0]]
    with pytest.raises(InputError, match="ignore index"):
        identity.label_indexes(np.array([[3]]), "x")
    class_map = np.array([[0, 1], [2, 3]])
    assert spec.prediction_indexes(class_map).tolist() == [[NO_CLASS, 0], [1, 2]]  # background is a miss...
    with_background = LabelSpec(spec.class_names, mapping, 255, background_class=0)
    assert with_background.prediction_indexes(class_map).tolist() == [[0, 0], [1, 2]]  # ...or the background class


@pytest.mark.parametrize("text", ["1", "a:0", "1:9", "1:lake", ""])
def test_bad_label_maps(text):
    with pytest.raises(InputError):
        parse_label_map(text, CLASSES)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    preset = PRESETS[name]
    classes = load_classes(preset_classes_path(preset))
    names = [c.name for c in classes]
    assert preset.background_class is None or preset.background_class in names
    assert set(preset.unseen) <= set(names)
    if preset.label_map:
        assert sorted(v for v in parse_label_map(preset.label_map, classes).values()) == list(range(len(classes)))
    assert preset.task == "instance" or preset.threshold is not None


def test_presets_carry_the_published_renaming():
    names = {n: [c.synonyms for c in load_classes(preset_classes_path(p))] for n, p in PRESETS.items()}
    assert names["openearthmap"][-1] == ("building", "roof", "house")
    assert names["potsdam"][-1] == ("clutter", "background")
    assert names["loveda"][1] == ("building", "roof", "house")
    assert len(names["fast"]) == 37 and len(names["sior"]) == 20 and len(names["sota"]) == 18
    assert PRESETS["loveda"].threshold == 0.3 and PRESETS["isaid"].threshold == 0.4


def test_pairing_by_stem(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "ann"
    images.mkdir(), labels.mkdir()
    for name in ("a.png", "b.jpg", "c.tif", "notes.txt"):
        (images / name).write_bytes(b"")
    for name in ("a_gt.png", "b_gt.png"):
        (labels / name).write_bytes(b"")
    pairs, unpaired = pair_images(images, labels, "_gt")
    assert [(image.name, label.name) for image, label in pairs] == [("a.png", "a_gt.png"), ("b.jpg", "b_gt.png")]
    assert [p.name for p in unpaired] == ["c.tif"]
    with pytest.raises(InputError, match="No image"):
        pair_images(images, labels)
    (images / "a.tif").write_bytes(b"")
    with pytest.raises(InputError, match="share the name a"):
        pair_images(images, labels, "_gt")


def test_colour_labels_are_refused(make_geotiff):
    path = make_geotiff(np.zeros((3, 4, 4), np.uint8), name="rgb_label.tif")
    with pytest.raises(InputError, match="3 bands"):
        read_label(path)
    path = make_geotiff(np.zeros((1, 4, 4), np.float32), name="float_label.tif")
    with pytest.raises(InputError, match="integers"):
        read_label(path)
    with rasterio.open(make_geotiff(np.full((1, 4, 4), 3, np.uint8), name="ok.tif")) as ds:
        assert (read_label(ds.name) == 3).all()


def test_coco_categories_match_synonyms_and_flat_polygons_are_fixed(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    coco = {
        "images": [
            {"id": 7, "file_name": "img.tif", "width": 10, "height": 10},
            {"id": 8, "file_name": "absent.tif", "width": 10, "height": 10},
        ],
        "categories": [{"id": 1, "name": "Roof"}, {"id": 2, "name": "water"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "segmentation": [0, 0, 5, 0, 5, 5],
                "area": 12.5,
                "bbox": [0, 0, 5, 5],
                "iscrowd": 0,
            }
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    dataset = load_coco(path, tmp_path, CLASSES)
    assert dataset.images == [(7, tmp_path / "img.png")] and dataset.missing == ["absent.tif"]
    ann = dataset.ground_truth["annotations"][0]
    assert ann["category_id"] == 2 and ann["segmentation"] == [[0, 0, 5, 0, 5, 5]]  # class "building" (index 1)
    assert [c["name"] for c in dataset.ground_truth["categories"]] == ["background", "building", "water"]
    coco["categories"][1]["name"] = "lake"
    path.write_text(json.dumps(coco))
    with pytest.raises(InputError, match="lake"):
        load_coco(path, tmp_path, CLASSES)
    dropped = load_coco(path, tmp_path, CLASSES, {1: None, 2: 2})
    assert dropped.ground_truth["annotations"] == []


# ---- options and sweeps -----------------------------------------------------------------------

BASE = Variant(EngineSpec(), SegmentRequest(raster="", classes=("a", "b"), background=()))


def test_sweep_grid():
    sweeps = [parse_sweep(text, "semantic") for text in ("threshold=0.1,0.3", "cls-lambda=0,0.3", "rotations=0,0+90")]
    variants = expand_sweeps(BASE, sweeps)
    assert len(variants) == 8
    assert variants[0].name == "threshold=0.1, cls_lambda=0, rotations=0"
    last = variants[-1]
    assert last.request.scoring.threshold == 0.3 and last.request.scoring.cls_lambda == 0.3
    assert last.request.features.rotations == (0, 90)
    assert len({v.fingerprint() for v in variants}) == 8


def test_option_errors():
    with pytest.raises(InputError, match="Unknown option"):
        parse_sweep("colour=red", "semantic")
    with pytest.raises(InputError, match="Unknown option 'nms_iou' for semantic"):
        parse_sweep("nms_iou=0.5,0.7", "semantic")
    assert parse_sweep("nms-iou=0.5,0.7", "instance") == ("nms_iou", ["0.5", "0.7"])
    with pytest.raises(InputError, match="not OPTION"):
        parse_sweep("threshold", "semantic")
    with pytest.raises(InputError, match="not a valid value"):
        apply_option(BASE, "threshold", "high")
    with pytest.raises(InputError, match="threshold must be >= 0 and <= 1"):
        apply_option(BASE, "threshold", "1.5")
    with pytest.raises(InputError, match="swept twice"):
        expand_sweeps(BASE, [("threshold", ["0.1"]), ("threshold", ["0.2"])])
    assert apply_option(BASE, "dec", "none").request.scoring.dec_keep is None
    assert apply_option(BASE, "upsampler", "jbu").engine.upsampler == "jbu"
    assert apply_option(BASE, "background", "bare land,grass").request.background == ("bare land", "grass")
