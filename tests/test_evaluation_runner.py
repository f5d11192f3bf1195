"""``rsov eval`` end to end on the real LoveDA, Potsdam and SpaceNet samples, with known answers.

Semantic: each label class is painted with an oracle palette colour; with one-pixel oracle patches
and one window per image the features are exactly the labels, so the real runner (real engine,
real label PNGs, the real presets) must score 100, and permuted word->colour mappings must score
numbers computed here from the label histograms alone. Instance: predictions derived from the
SpaceNet COCO annotations (perfect, dropped, shifted, trimmed) against hand-computed AP and recall,
and the engine's own instance mode (oracle features and proposals) on painted rectangles.
"""

import argparse
import json
import warnings

import numpy as np
import pytest
from oracle import PALETTE, WORDS, oracle_engine
from PIL import Image

from rsov.errors import InputError
from rsov.evaluation.cli import add_eval_parser, run_eval
from rsov.evaluation.datasets import PRESETS, load_classes, preset_classes_path
from rsov.evaluation.runner import EngineSegmenter, InstancePrediction

UNKNOWN_CHANNEL = 7  # the oracle's channel that no colour has
EXTRA_COLOURS = {"cyan": ((20, 220, 220), 5), "magenta": ((220, 30, 220), 6)}


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *map(str, argv)])


def results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture
def oracle(monkeypatch):
    """Seven oracle colours; ``oracle.words(dataset, channel_of_class)`` points each class's first synonym
    at a colour channel (other synonyms at no colour). The segmenter's engine has one-pixel patches."""
    for name, entry in EXTRA_COLOURS.items():
        monkeypatch.setitem(PALETTE, name, entry)
    engine = oracle_engine()
    engine.encoder.patch_size = 1  # features per pixel: a painted label gives exactly its own classes

    class Oracle:
        segmenter = EngineSegmenter(load=lambda spec: engine)
        encoder = engine.encoder

        @staticmethod
        def words(dataset, channel_of_class=None):
            for k, spec in enumerate(load_classes(preset_classes_path(PRESETS[dataset]))):
                monkeypatch.setitem(WORDS, spec.synonyms[0], k if channel_of_class is None else channel_of_class[k])
                for synonym in spec.synonyms[1:]:
                    monkeypatch.setitem(WORDS, synonym, UNKNOWN_CHANNEL)

    return Oracle


def paint(labels_dir, out_dir, value_to_class):
    """Each label pixel painted with the colour of its class's channel; returns the raw label histogram."""
    colour_of = {channel: colour for colour, channel in PALETTE.values()}
    out_dir.mkdir()
    histogram = np.zeros(256, np.int64)
    for path in sorted(labels_dir.glob("*.png")):
        label = np.array(Image.open(path))
        image = np.zeros(label.shape + (3,), np.uint8)
        for value, k in value_to_class.items():
            image[label == value] = colour_of[k]
        Image.fromarray(image).save(out_dir / path.name)
        histogram += np.bincount(label.ravel(), minlength=256)
    return histogram


def one_window(side):
    return ["--long-side", side, "--window", side, "--stride", side, "--quiet"]


def test_loveda_perfect_and_shuffled_oracle_features(shared_data, tmp_path, oracle):
    labels = shared_data / "loveda" / "ann_dir"
    images = tmp_path / "painted"
    paint(labels, images, {v: v - 1 for v in range(1, 8)})  # the preset's label map: value v -> class v - 1
    oracle.words("loveda")
    args = ["semantic", "--dataset", "loveda", "--images", images, "--labels", labels, *one_window(1024)]
    assert run_eval(parse(*args, "--out", tmp_path / "perfect"), oracle.segmenter) == 0
    perfect = results(tmp_path / "perfect")["runs"][0]
    assert perfect["metrics"] == {"mIoU": 100.0, "pixel accuracy": 100.0}
    iou = dict(zip(results(tmp_path / "perfect")["classes"], perfect["per_class"]["IoU"], strict=True))
    assert iou["barren"] is None and iou["forest"] == 100.0  # barren is in none of the three labels
    assert [im["image"] for im in perfect["per_image"]] == ["0.png", "1.png", "2.png"]

    oracle.words("loveda", [1, 2, 3, 4, 5, 6, 0])  # every class's word on the next class's colour
    assert run_eval(parse(*args, "--out", tmp_path / "shuffled"), oracle.segmenter) == 0
    shuffled = results(tmp_path / "shuffled")["runs"][0]
    assert shuffled["metrics"] == {"mIoU": 0.0, "pixel accuracy": 0.0}
    assert oracle.encoder.calls == 3  # the second run re-scored the engine's cached features


def test_potsdam_swapped_classes_and_background(shared_data, tmp_path, oracle):
    labels = shared_data / "potsdam" / "ann_dir"
    images = tmp_path / "painted"
    histogram = paint(labels, images, {v: v - 1 for v in range(1, 7)})
    labelled = histogram[1:7].sum()  # value 0 (boundary) is ignored
    args = ["semantic", "--dataset", "potsdam", "--images", images, "--labels", labels, *one_window(512)]

    oracle.words("potsdam")
    run_eval(parse(*args, "--out", tmp_path / "perfect"), oracle.segmenter)
    perfect = results(tmp_path / "perfect")["runs"][0]
    assert perfect["metrics"] == {"mIoU": 100.0, "pixel accuracy": 100.0}
    confusion = np.array(perfect["confusion"])
    assert (np.diag(confusion[:, :6]) == histogram[1:7]).all() and confusion.sum() == labelled

    oracle.words("potsdam", [0, 1, 3, 2, 4, 5])  # low vegetation <-> tree
    run_eval(parse(*args, "--out", tmp_path / "swapped"), oracle.segmenter)
    swapped = results(tmp_path / "swapped")["runs"][0]
    # road, building, car right; low vegetation and tree IoU 0; clutter in neither labels nor predictions
    assert swapped["per_class"]["IoU"] == [100.0, 100.0, 0.0, 0.0, 100.0, None]
    assert swapped["metrics"]["mIoU"] == pytest.approx(300 / 5, abs=0.01)
    assert swapped["metrics"]["pixel accuracy"] == pytest.approx(
        100 * (1 - (histogram[3] + histogram[4]) / labelled), abs=0.01
    )
    assert "| low vegetation | tree | 100.0% |" in (tmp_path / "swapped" / "results.md").read_text()

    # car's word on no colour: car pixels match no query (1/8 each, under 0.3) and go to the background class
    oracle.words("potsdam", [0, 1, 2, 3, UNKNOWN_CHANNEL, 5])
    run_eval(parse(*args, "--threshold", 0.3, "--out", tmp_path / "to_clutter"), oracle.segmenter)
    to_clutter = results(tmp_path / "to_clutter")["runs"][0]
    assert to_clutter["per_class"]["IoU"] == [100.0, 100.0, 100.0, 100.0, 0.0, 0.0]  # clutter: predicted, never true
    run_eval(
        parse(*args, "--threshold", 0.3, "--background-class", "none", "--out", tmp_path / "miss"), oracle.segmenter
    )
    miss = results(tmp_path / "miss")["runs"][0]
    assert miss["per_class"]["IoU"] == [100.0, 100.0, 100.0, 100.0, 0.0, None]  # a miss is no class's false positive
    assert miss["metrics"]["pixel accuracy"] == pytest.approx(100 * (1 - histogram[5] / labelled), abs=0.01)


def test_sweep_writes_json_markdown_and_charts(shared_data, tmp_path, oracle):
    labels = shared_data / "potsdam" / "ann_dir"
    images = tmp_path / "painted"
    paint(labels, images, {v: v - 1 for v in range(1, 7)})
    oracle.words("potsdam", [0, 1, 3, 2, 4, 5])
    out = tmp_path / "sweep"
    code = run_eval(
        parse(
            "semantic",
            "--dataset",
            "potsdam",
            "--images",
            images,
            "--labels",
            labels,
            *one_window(512),
            "--sweep",
            "threshold=0.1,0.99",
            "--sweep",
            "cls_lambda=0,0.3",
            "--unseen",
            "tree,car",
            "--out",
            out,
        ),
        oracle.segmenter,
    )
    assert code == 0
    data = results(out)
    assert [r["name"] for r in data["runs"]] == [
        "threshold=0.1, cls_lambda=0",
        "threshold=0.1, cls_lambda=0.3",
        "threshold=0.99, cls_lambda=0",
        "threshold=0.99, cls_lambda=0.3",
    ]
    assert data["runs"][0]["options"]["cls_lambda"] == 0.0 and data["runs"][0]["swept"] == {
        "threshold": "0.1",
        "cls_lambda": "0",
    }
    first = data["runs"][0]["metrics"]
    assert first["s-mIoU"] == pytest.approx(200 / 3, abs=0.01) and first["u-mIoU"] == 50.0  # tree 0, car 100
    assert first["h-mIoU"] == pytest.approx(2 * (200 / 3) * 50 / (200 / 3 + 50), abs=0.01)
    assert oracle.encoder.calls == 1  # one encoding served all four variants
    markdown = (out / "results.md").read_text()
    assert "| threshold=0.99, cls_lambda=0.3 |" in markdown and "tree (unseen)" in markdown
    assert "--sweep threshold=0.1,0.99 --sweep cls_lambda=0,0.3" in markdown
    for chart in ("per_class.png", "sweep.png"):
        with Image.open(out / chart) as png:
            assert png.format == "PNG" and png.width > 600 and png.height > 300


class LabelSegmenter:
    """Perfect class maps read from LoveDA's labels; can be told to stop (Ctrl-C) after some calls."""

    def __init__(self, labels_dir, interrupt_after=None):
        self.labels_dir = labels_dir
        self.calls = 0
        self.interrupt_after = interrupt_after

    def semantic(self, variant, image):
        if self.calls == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        label = np.array(Image.open(self.labels_dir / image.name))
        return label.astype(np.int16)  # LoveDA value v is class v - 1, i.e. engine class id v; 0 is ignored


def test_resume_after_interrupt_limit_and_option_changes(shared_data, tmp_path, capsys):
    images, labels = shared_data / "loveda" / "img_dir", shared_data / "loveda" / "ann_dir"
    out = tmp_path / "run"
    args = parse("semantic", "--dataset", "loveda", "--images", images, "--labels", labels, "--out", out, "--quiet")
    interrupted = LabelSegmenter(labels, interrupt_after=1)
    assert run_eval(args, interrupted) == 130
    assert "run the same command again" in capsys.readouterr().err
    resumed = LabelSegmenter(labels)
    assert run_eval(args, resumed) == 0
    assert resumed.calls == 2  # the first image came from the cache
    assert results(out)["runs"][0]["metrics"] == {"mIoU": 100.0, "pixel accuracy": 100.0}
    again = LabelSegmenter(labels)
    assert run_eval(args, again) == 0 and again.calls == 0
    assert "3 of 3 image results from the cache" in capsys.readouterr().out
    changed = LabelSegmenter(labels)
    run_eval(
        parse(
            "semantic",
            "--dataset",
            "loveda",
            "--images",
            images,
            "--labels",
            labels,
            "--out",
            out,
            "--threshold",
            "0.5",
            "--quiet",
        ),
        changed,
    )
    assert changed.calls == 3  # another option, another result
    limited = LabelSegmenter(labels)
    run_eval(
        parse(
            "semantic",
            "--dataset",
            "loveda",
            "--images",
            images,
            "--labels",
            labels,
            "--limit",
            2,
            "--out",
            tmp_path / "limited",
            "--no-cache",
            "--quiet",
        ),
        limited,
    )
    assert limited.calls == 2 and results(tmp_path / "limited")["images"] == 2
    assert not (tmp_path / "limited" / "cache").exists()


def test_without_the_eval_extra_eval_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else find_spec(name, *a)
    )
    argv = [
        "--dataset",
        "sota",
        "--images",
        tmp_path,
        "--annotations",
        tmp_path / "coco.json",
        "--out",
        tmp_path / "out",
    ]
    with pytest.raises(InputError, match=r"rsov eval instance needs pycocotools: install the backend with its eval"):
        run_eval(parse("instance", *argv))
    assert not (tmp_path / "out").exists()  # refused before anything is read or written


def test_user_errors(shared_data, tmp_path):
    images, labels = shared_data / "loveda" / "img_dir", shared_data / "loveda" / "ann_dir"
    with pytest.raises(InputError, match="--classes-file"):
        run_eval(parse("semantic", "--images", images, "--labels", labels, "--out", tmp_path), LabelSegmenter(labels))
    classes = tmp_path / "classes.txt"
    classes.write_text("building\nwater\n")
    # LoveDA's raw values 1..7 are no classes of a two-class file without a label map
    with pytest.raises(InputError, match="neither a class nor the ignore index"):
        run_eval(
            parse(
                "semantic",
                "--images",
                images,
                "--labels",
                labels,
                "--classes-file",
                classes,
                "--out",
                tmp_path / "a",
                "--quiet",
            ),
            LabelSegmenter(labels),
        )

    class Wrong(LabelSegmenter):
        def semantic(self, variant, image):
            return super().semantic(variant, image)[:10]

    with pytest.raises(InputError, match="is 1024x10 px but its label .* is 1024x1024 px"):
        run_eval(
            parse(
                "semantic",
                "--dataset",
                "loveda",
                "--images",
                images,
                "--labels",
                labels,
                "--out",
                tmp_path / "b",
                "--quiet",
            ),
            Wrong(labels),
        )
    with pytest.raises(InputError, match="Unknown option"):
        run_eval(
            parse(
                "semantic",
                "--dataset",
                "loveda",
                "--images",
                images,
                "--labels",
                labels,
                "--sweep",
                "colour=red",
                "--out",
                tmp_path / "c",
            ),
            LabelSegmenter(labels),
        )


# ---- instances: SpaceNet's 43 buildings -------------------------------------------------------


@pytest.fixture(scope="module")
def spacenet_masks(shared_data):
    """The 43 ground-truth masks, rasterized from the COCO polygons by pycocotools (as COCOeval does)."""
    from pycocotools import mask as mask_utils

    data = json.loads((shared_data / "spacenet-buildings" / "coco_sample_2.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' decode and numpy 2
        return [
            mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([ann["segmentation"]], 900, 900))).astype(bool)
            for ann in data["annotations"]
        ]


class InstanceSegmenter:
    def __init__(self, predictions):
        self.predictions = predictions
        self.calls = 0

    def instances(self, variant, image):
        assert image.name == "sample_geotiff.tif"
        self.calls += 1
        return self.predictions


def run_instances(shared_data, tmp_path, predictions, name):
    classes = tmp_path / "building.txt"
    classes.write_text("# one class\nbuilding,roof\n")
    segmenter = InstanceSegmenter(predictions)
    out = tmp_path / name
    code = run_eval(
        parse(
            "instance",
            "--images",
            shared_data / "spacenet-buildings",
            "--annotations",
            shared_data / "spacenet-buildings" / "coco_sample_2.json",
            "--classes-file",
            classes,
            "--label-map",
            "1:building,2:building",
            "--out",
            out,
            "--quiet",
        ),
        segmenter,
    )
    assert code == 0 and segmenter.calls == 1
    return results(out)["runs"][0]["metrics"]


def test_spacenet_instances_known_ap_and_recall(shared_data, tmp_path, spacenet_masks):
    from pycocotools import mask as mask_utils

    n = len(spacenet_masks)
    assert n == 43
    perfect = [InstancePrediction(m, 0, 1.0) for m in spacenet_masks]
    assert run_instances(shared_data, tmp_path, perfect, "perfect") == {
        "mAP@0.5": 100.0,
        "R@100 (IoU 0.4)": 100.0,
        "R@100 (IoU 0.5)": 100.0,
        "R@100 (IoU 0.6)": 100.0,
    }

    # 3 buildings missed: precision 1 up to recall 40/43 = 0.930, i.e. at 94 of the 101 recall points
    dropped = run_instances(shared_data, tmp_path, perfect[3:], "dropped")
    assert dropped["mAP@0.5"] == pytest.approx(100 * 94 / 101, abs=0.01)
    assert dropped["R@100 (IoU 0.5)"] == pytest.approx(100 * 40 / 43, abs=0.01)

    # 5 buildings shifted 400 px away, scored above all the right ones: 5 false positives first, then 38 hits;
    # the interpolated precision is 38/43 up to recall 38/43 = 0.884 (89 recall points)
    shifted = [InstancePrediction(np.roll(m, 400, axis=1), 0, 2.0) for m in spacenet_masks[:5]]
    ious = mask_utils.iou(
        [mask_utils.encode(np.asfortranarray(p.mask.astype(np.uint8))) for p in shifted],
        [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in spacenet_masks],
        [0] * n,
    )
    assert ious.max() < 0.4  # the shifted masks match nothing, at any threshold
    result = run_instances(shared_data, tmp_path, shifted + perfect[5:], "shifted")
    assert result["mAP@0.5"] == pytest.approx(100 * 89 * (38 / 43) / 101, abs=0.01)
    assert result["R@100 (IoU 0.4)"] == pytest.approx(100 * 38 / 43, abs=0.01)

    # 4 buildings trimmed to 45% of their pixels (IoU 0.45), scored last: hits at IoU 0.4 only
    trimmed = []
    for m in spacenet_masks[:4]:
        keep = np.zeros_like(m)
        pixels = np.flatnonzero(m)
        keep.flat[pixels[: int(np.ceil(0.45 * len(pixels)))]] = True
        trimmed.append(InstancePrediction(keep, 0, 0.5))
    result = run_instances(shared_data, tmp_path, perfect[4:] + trimmed, "trimmed")
    assert result["R@100 (IoU 0.4)"] == 100.0
    assert result["R@100 (IoU 0.5)"] == pytest.approx(100 * 39 / 43, abs=0.01)
    assert result["R@100 (IoU 0.6)"] == pytest.approx(100 * 39 / 43, abs=0.01)
    assert result["mAP@0.5"] == pytest.approx(100 * 91 / 101, abs=0.01)  # recall 39/43 = 0.907: 91 points


def test_instance_seen_unseen_split_and_cache(shared_data, tmp_path, spacenet_masks):
    # the two SpaceNet categories as two classes; category 2 ("0.0", 37 buildings) is unseen and fully found,
    # category 1 ("1.0", 6 buildings) is never predicted
    data = json.loads((shared_data / "spacenet-buildings" / "coco_sample_2.json").read_text())
    predictions = [
        InstancePrediction(m, 1, 1.0)
        for m, a in zip(spacenet_masks, data["annotations"], strict=True)
        if a["category_id"] == 2
    ]
    classes = tmp_path / "two.txt"
    classes.write_text("building\nhouse\n")
    segmenter = InstanceSegmenter(predictions)
    argv = [
        "instance",
        "--images",
        shared_data / "spacenet-buildings",
        "--annotations",
        shared_data / "spacenet-buildings" / "coco_sample_2.json",
        "--classes-file",
        classes,
        "--label-map",
        "1:0,2:1",
        "--unseen",
        "house",
        "--out",
        tmp_path / "out",
        "--quiet",
    ]
    run_eval(parse(*argv), segmenter)
    metrics = results(tmp_path / "out")["runs"][0]["metrics"]
    assert metrics["seen mAP"] == 0.0 and metrics["unseen mAP"] == 100.0 and metrics["HM mAP"] == 0.0
    assert metrics["mAP@0.5"] == 50.0 and metrics["unseen R@100"] == 100.0
    run_eval(parse(*argv), segmenter)
    assert segmenter.calls == 1  # the second run read the cached, RLE-encoded predictions
    assert results(tmp_path / "out")["runs"][0]["metrics"] == metrics
    with Image.open(tmp_path / "out" / "per_class.png") as png:
        assert png.format == "PNG"


def potsdam_with_the_tiny_model(shared_data, out, *more) -> list:
    """``rsov eval semantic`` arguments: the Potsdam sample with the tiny model, on the CPU."""
    return [
        "semantic",
        *("--dataset", "potsdam", "--model", "tiny-random", "--templates", "plain", "--device", "cpu"),
        *("--images", shared_data / "potsdam" / "img_dir", "--labels", shared_data / "potsdam" / "ann_dir"),
        *more,
        *("--out", out, "--quiet"),
    ]


def test_real_engine_with_the_tiny_model(shared_data, tmp_path, monkeypatch):
    """The real loading path (load_engine), on the Potsdam sample: the tiny model's (meaningless) class map
    is scored exactly as computed here by hand from that map and the label."""
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")
    out = tmp_path / "tiny"

    class Recording(EngineSegmenter):  # the real engine (load_engine), keeping the class maps it gave
        maps: list[np.ndarray] = []

        def semantic(self, variant, image):
            class_map = super().semantic(variant, image)
            self.maps.append(class_map)
            return class_map

    segmenter = Recording("cpu")
    with pytest.warns(UserWarning):  # the tiny model says its output is meaningless
        code = run_eval(parse(*potsdam_with_the_tiny_model(shared_data, out)), segmenter)
    assert code == 0
    run = results(out)["runs"][0]
    assert run["options"]["model"] == "tiny-random"
    assert run["options"]["threshold"] == 0.1 and run["options"]["background"] == []  # the benchmark setting
    # By hand: label value v is class v - 1 (0 = boundary, ignored); the engine's 0 (none of the classes)
    # counts as clutter (class 5), the preset's background class.
    (class_map,) = segmenter.maps
    label = np.array(Image.open(shared_data / "potsdam" / "ann_dir" / "2_10_0_0_512_512.png")).astype(int) - 1
    assert class_map.shape == label.shape == (512, 512)
    predicted = np.where(class_map == 0, 5, class_map.astype(int) - 1)
    keep = label >= 0
    iou = []
    for k in range(6):
        union = (((label == k) | (predicted == k)) & keep).sum()
        iou.append(100 * ((label == k) & (predicted == k)).sum() / union if union else None)
    defined = [v for v in iou if v is not None]
    assert len(np.unique(predicted[keep])) >= 2  # not one class all over: a real mix to score
    assert run["per_class"]["IoU"] == [None if v is None else pytest.approx(v, abs=0.006) for v in iou]
    assert run["metrics"]["mIoU"] == pytest.approx(sum(defined) / len(defined), abs=0.006)
    assert run["metrics"]["pixel accuracy"] == pytest.approx(100 * (predicted == label)[keep].mean(), abs=0.006)


def test_instances_through_the_real_engine(tmp_path):
    """The engine's instance mode (oracle features and proposals) scored against COCO rectangles."""
    from oracle import oracle_instance_engine

    objects = {"building": [(32, 32, 96, 128), (160, 160, 224, 304)], "water": [(320, 320, 400, 416)]}
    image = np.empty((448, 448, 3), np.uint8)
    image[:] = PALETTE["grey"][0]
    annotations = []
    for name, colour in (("building", "red"), ("water", "blue")):
        for r0, c0, r1, c1 in objects[name]:
            image[r0:r1, c0:c1] = PALETTE[colour][0]
    # one more lake in the annotations that is not in the image: water is found at recall 1/2
    annotated = [(name, box) for name in objects for box in objects[name]] + [("water", (16, 300, 80, 400))]
    for k, (name, (r0, c0, r1, c1)) in enumerate(annotated):
        annotations.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1 if name == "building" else 2,
                "iscrowd": 0,
                "segmentation": [[c0, r0, c1, r0, c1, r1, c0, r1]],
                "area": float((r1 - r0) * (c1 - c0)),
                "bbox": [c0, r0, c1 - c0, r1 - r0],
            }
        )
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "scene.png")
    coco = {
        "images": [{"id": 1, "file_name": "scene.png", "width": 448, "height": 448}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "building"}, {"id": 2, "name": "water"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "classes.txt").write_text("building,roof\nwater\n")  # the oracle knows "roof" and "water"
    segmenter = EngineSegmenter(load=lambda spec: oracle_instance_engine())
    run_eval(
        parse(
            "instance",
            "--images",
            tmp_path / "images",
            "--annotations",
            tmp_path / "coco.json",
            "--classes-file",
            tmp_path / "classes.txt",
            "--cls-lambda",
            0,
            "--out",
            tmp_path / "out",
            "--quiet",
        ),
        segmenter,
    )
    run = results(tmp_path / "out")["runs"][0]
    assert run["per_class"]["AP@0.5"] == [100.0, pytest.approx(100 * 51 / 101, abs=0.01)]
    assert run["per_class"]["R@100 (IoU 0.6)"] == [100.0, 50.0]
    assert run["per_image"] == [{"image": "scene.png", "detections": 3}]


def test_instance_sweep_over_engines_scores_each_per_class(tmp_path):
    """``--sweep engine=clip,sam3``: one run per engine, each scored per class on the same rectangles."""
    from oracle import OracleConcepts, OracleEncoder, OracleProposer, OracleText

    from rsov.engine import Engine

    image = np.empty((448, 448, 3), np.uint8)
    image[:] = PALETTE["grey"][0]
    boxes = [("red", (32, 32, 96, 128)), ("blue", (320, 320, 400, 416))]  # a building, a lake
    annotations = []
    for k, (colour, (r0, c0, r1, c1)) in enumerate(boxes):
        image[r0:r1, c0:c1] = PALETTE[colour][0]
        annotations.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": k + 1,
                "iscrowd": 0,
                "segmentation": [[c0, r0, c1, r0, c1, r1, c0, r1]],
                "area": float((r1 - r0) * (c1 - c0)),
                "bbox": [c0, r0, c1 - c0, r1 - r0],
            }
        )
    image[200:240, 40:80] = PALETTE["red"][0]  # a red square nobody annotated: a false building for both
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "scene.png")
    coco = {
        "images": [{"id": 1, "file_name": "scene.png", "width": 448, "height": 448}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "building"}, {"id": 2, "name": "water"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    # CLIP's oracle knows "roof" and "water", SAM 3's "roof" (0.9) and "pool" (0.7)
    (tmp_path / "classes.txt").write_text("building,roof\nwater,pool\n")
    text = OracleText()
    engine = Engine(
        OracleEncoder(),
        lambda templates: text,
        name="oracle",
        proposer_factory=OracleProposer,
        detector_factory=OracleConcepts,
    )
    segmenter = EngineSegmenter(load=lambda spec: engine)
    args = ["instance", "--images", tmp_path / "images", "--annotations", tmp_path / "coco.json"]
    args += ["--classes-file", tmp_path / "classes.txt", "--cls-lambda", 0, "--out", tmp_path / "out", "--quiet"]
    assert run_eval(parse(*args, "--sweep", "engine=clip,sam3"), segmenter) == 0
    runs = results(tmp_path / "out")["runs"]
    assert [r["name"] for r in runs] == ["engine=clip", "engine=sam3"]
    assert [r["options"]["engine"] for r in runs] == ["clip", "sam3"]
    for run in runs:  # either engine finds both objects, and the unannotated red square as a building
        assert run["per_class"]["R@100 (IoU 0.6)"] == [100.0, 100.0]
        assert run["per_image"] == [{"image": "scene.png", "detections": 3}]
        assert run["per_class"]["AP@0.5"][1] == 100.0
    assert [texts for _, texts in engine.detector.calls] == [("building", "roof", "water", "pool")]  # one tile
    assert "| engine=sam3 |" in (tmp_path / "out" / "results.md").read_text()


def test_semantic_sweep_over_engines_with_the_tiny_models(shared_data, tmp_path, monkeypatch):
    """``rsov eval semantic --sweep engine=clip,sam3`` through the real loading path (tiny CLIP, tiny SAM 3):
    both runs are scored per class."""
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RSOV_OFFLINE", "1")
    out = tmp_path / "engines"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny models say their output is meaningless
        args = potsdam_with_the_tiny_model(shared_data, out, "--sweep", "engine=clip,sam3")
        code = run_eval(parse(*args), EngineSegmenter("cpu"))
    assert code == 0
    runs = results(out)["runs"]
    assert [r["swept"] for r in runs] == [{"engine": "clip"}, {"engine": "sam3"}]
    for run in runs:
        assert len(run["per_class"]["IoU"]) == 6 and run["metrics"]["mIoU"] is not None
    assert runs[0]["per_class"] != runs[1]["per_class"]  # two engines, two answers
