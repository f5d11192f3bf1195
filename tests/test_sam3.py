"""The sam3 engine: a tiny SAM 3 through the real loading path, an oracle detector for known answers
through the whole engine, and the bad inputs (weights missing or gated, unknown engine, long prompts)."""

import http.server
import re
import threading
import warnings
from dataclasses import replace

import numpy as np
import pyogrio
import pytest
import torch
from affine import Affine
from oracle import PALETTE, OracleConcepts, oracle_concept_engine
from shapely.geometry import box

from rsov import cli, models, weights
from rsov.engine import SegmentRequest, load_engine
from rsov.errors import InputError, WeightsMissingError
from rsov.fusion import fuse_with_stuff
from rsov.instance.concepts import ConceptPrompt, Sam3Detector
from rsov.instance.sam3_build import SAM3_TINY, build_sam3, load_checkpoint, save_checkpoint
from rsov.instance.types import InstanceOptions
from rsov.semantic.predictor import FeatureOptions, ScoreOptions

TRANSFORM = Affine(0.5, 0, 356000.0, 0, -0.5, 5645000.0)  # EPSG:25832, 0.5 m
OBJECTS = {  # name: (row0, col0, row1, col1, colour)
    "roof_a": (32, 32, 96, 128, "red"),
    "roof_seam": (160, 160, 224, 304, "red"),  # crosses both seams of 256 px tiles overlapping by 64
    "pool": (320, 320, 360, 380, "blue"),
    "car": (40, 300, 56, 330, "yellow"),  # scored 0.2 by the oracle
    "speck": (420, 250, 424, 253, "red"),  # 12 px, under the minimum area
    "trees": (304, 0, 432, 192, "green"),  # stuff: CLIP's (on its 16 px patches)
}
TILES = InstanceOptions(tile=256, tile_overlap=64, min_area_px=16)
CLASSES = ("roof,house", "pool", "car", "tree")


def paint(objects=OBJECTS) -> np.ndarray:
    image = np.empty((3, 448, 448), dtype=np.uint8)
    image[:] = np.array(PALETTE["grey"][0], dtype=np.uint8)[:, None, None]
    for r0, c0, r1, c1, colour in objects.values():
        image[:, r0:r1, c0:c1] = np.array(PALETTE[colour][0])[:, None, None]
    return image


def world_box(r0, c0, r1, c1, *_):
    (x0, y0), (x1, y1) = TRANSFORM @ (c0, r0), TRANSFORM @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def request(path, **kw) -> SegmentRequest:
    kw.setdefault("scoring", ScoreOptions(cls_lambda=0.0))
    kw.setdefault("features", FeatureOptions(long_side=448))
    kw.setdefault("instance", TILES)
    kw.setdefault("background", ("background",))
    kw.setdefault("mode", "instance")
    return SegmentRequest(raster=str(path), classes=CLASSES, engine="sam3", stuff=("tree",), **kw)


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """A SAM 3 at reduced width and depth, random weights, saved in SAM 3's checkpoint format."""
    torch.manual_seed(1)
    model = build_sam3(SAM3_TINY)
    path = tmp_path_factory.mktemp("sam3") / "tiny-sam3.pt"
    save_checkpoint(model, path)
    return f"sam3-tiny@{path}", model


def test_instance_mode_finds_each_object_once_with_its_class(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    engine = oracle_concept_engine()
    result = engine.segment(request(path))
    detector = engine.detector
    assert len(detector.calls) == 4  # 2 x 2 tiles of the raster's grid
    assert all(texts == ("roof", "house", "pool", "car", "tree") for _, texts in detector.calls)
    found = sorted((f.class_name, f.geometry.bounds) for f in result.features)
    # the seam roof is one object, the synonyms' double detections one each, the car under the
    # threshold, the speck under the minimum area, and the trees no object of any prompt
    expected = sorted(
        ("roof" if o[4] == "red" else "pool", world_box(*o).bounds)
        for name, o in OBJECTS.items()
        if name in ("roof_a", "roof_seam", "pool")
    )
    assert [n for n, _ in found] == [n for n, _ in expected]
    for (_, got), (_, want) in zip(found, expected, strict=True):
        assert np.allclose(got, want, atol=1e-6)  # georeferenced in the raster's CRS, exactly
    assert result.crs.to_epsg() == 25832
    roofs = [f for f in result.features if f.class_name == "roof"]
    assert all(f.score == pytest.approx(0.9) for f in roofs)  # "roof" (0.9) beat its synonym "house" (0.8)
    summary = result.summary
    assert summary.kept == 3 and summary.below_threshold == 1  # the car, seen by one tile
    assert summary.proposals == summary.kept + summary.below_threshold + summary.duplicates + summary.too_small


def test_thresholds_and_minimum_area_hold(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    engine = oracle_concept_engine()
    low = engine.segment(request(path, instance=replace(TILES, score_threshold=0.1, min_area_px=4)))
    names = sorted(f.class_name for f in low.features)
    assert names == ["car", "pool", "roof", "roof", "roof"]  # the car and the speck now pass
    high = engine.segment(request(path, instance=replace(TILES, score_threshold=0.85)))
    assert sorted(f.class_name for f in high.features) == ["roof", "roof"]  # 0.9 only
    none = engine.segment(request(path, instance=replace(TILES, score_threshold=0.95)))
    assert none.features == [] and none.summary.kept == 0  # "none of these": nothing over the threshold


def test_semantic_mode_takes_things_from_sam3_and_stuff_from_clip(make_geotiff):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    engine = oracle_concept_engine()
    result = engine.segment(request(path, mode="semantic"))
    assert all("tree" not in texts for _, texts in engine.detector.calls)  # stuff is not prompted
    class_map = result.prediction.class_map
    names = result.vocabulary.names
    for name, (r0, c0, r1, c1, _) in OBJECTS.items():
        want = {"roof_a": "roof", "roof_seam": "roof", "pool": "pool", "trees": "tree"}.get(name)
        m = 8 if name == "trees" else 0  # CLIP's map is exact inside its 16 px patches, SAM 3's objects to the pixel
        got = set(np.unique(class_map[r0 + m : r1 - m, c0 + m : c1 - m]).tolist())
        assert got == ({names.index(want) + 1} if want else {0}), name
    assert (class_map[0:20, 200:280] == 0).all()  # grey: none of these
    by_class = {}
    for f in result.features:
        by_class.setdefault(f.class_name, []).append(f.geometry)
    assert len(by_class["roof"]) == 2 and len(by_class["tree"]) == 1
    assert np.allclose(by_class["tree"][0].bounds, world_box(*OBJECTS["trees"]).bounds, atol=0.5)


def test_the_more_confident_source_takes_the_pixel():
    things = np.array([[1, 1, 0, 2, 0]], dtype=np.int16)
    thing_scores = np.array([[0.9, 0.4, 0.0, 0.3, 0.0]], dtype=np.float32)
    stuff = np.array([[4, 4, 4, 0, 0]], dtype=np.int16)  # 0: CLIP's background
    stuff_scores = np.array([[0.5, 0.6, 0.7, 0.99, 0.8]], dtype=np.float32)
    classes, scores = fuse_with_stuff(things, thing_scores, stuff, stuff_scores)
    assert classes.tolist() == [[1, 4, 4, 2, 0]]  # CLIP's background never beats an object
    assert scores[0].tolist() == pytest.approx([0.9, 0.6, 0.7, 0.3, 0.8])


def test_objects_do_not_depend_on_the_extent(make_geotiff):
    """A roof inside a small extent comes out the same as in the whole raster: tiles are the raster's."""
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    whole = oracle_concept_engine().segment(request(path))
    bbox = world_box(150, 150, 240, 320).bounds
    part = oracle_concept_engine().segment(request(path, bbox=bbox, bbox_crs="EPSG:25832"))
    seam = world_box(*OBJECTS["roof_seam"]).bounds
    assert [f.geometry.bounds for f in part.features if f.class_name == "roof"] == [pytest.approx(seam)]
    assert any(f.geometry.bounds == pytest.approx(seam) for f in whole.features)


def test_exemplar_polygons_become_box_prompts_of_their_class(make_geotiff):
    from rsov.instance.types import Example

    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    detector = OracleConcepts()
    seen = []
    original = detector.detect

    def detect(tile, key, prompts, threshold, precision="fp32", progress=None):
        seen.extend((p.text, p.boxes) for p in prompts if p.boxes)
        return original(tile, key, prompts, threshold, precision, progress)

    detector.detect = detect
    engine = oracle_concept_engine(detector)
    example = Example(world_box(*OBJECTS["roof_a"]), "EPSG:25832", "roof")
    engine.segment(request(path, examples=(example,)))
    r0, c0, r1, c1, _ = OBJECTS["roof_a"]
    assert {text for text, _ in seen} == {"roof", "house"}  # both synonyms of its class, in the one tile
    assert all(boxes == ((c0, r0, c1, r1),) for _, boxes in seen)  # x0, y0, x1, y1 in tile pixels


def test_tiny_sam3_loads_through_the_real_path(tiny_sam3):
    name, original = tiny_sam3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, size, weights_id = models.load_sam3(name)
    assert size == SAM3_TINY and "tiny-sam3.pt" in weights_id
    saved, loaded = original.state_dict(), model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    tile = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    prompts = [ConceptPrompt("building", 1), ConceptPrompt("swimming pool", 2)]
    a = Sam3Detector(original, SAM3_TINY, "a", torch.device("cpu")).detect(tile, "t", prompts, 0.0)
    b = Sam3Detector(model, SAM3_TINY, "b", torch.device("cpu")).detect(tile, "t", prompts, 0.0)
    assert len(a.masks) == len(b.masks) == 2 * SAM3_TINY.queries  # threshold 0: every query slot
    assert [m.quality for m in a.masks] == pytest.approx([m.quality for m in b.masks], abs=1e-6)
    assert all(m.crop.shape[0] <= 200 and m.crop.shape[1] <= 240 for m in b.masks)  # in tile pixels


def test_prompts_run_in_batches_with_the_same_answer(tiny_sam3):
    _, model = tiny_sam3
    tile = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    prompts = [ConceptPrompt(w, k) for k, w in enumerate(["roof", "tree", "pool", "car", "road", "boat", "ship"], 1)]
    batched = Sam3Detector(model, SAM3_TINY, "x", torch.device("cpu"), prompts_per_call=3)
    single = Sam3Detector(model, SAM3_TINY, "x", torch.device("cpu"), prompts_per_call=1)
    a, b = batched.detect(tile, "t", prompts, 0.15), single.detect(tile, "t", prompts, 0.15)
    assert batched.prompt_calls == 3 and single.prompt_calls == 7
    assert [(m.hint, m.box) for m in a.masks] == [(m.hint, m.box) for m in b.masks]
    assert [m.quality for m in a.masks] == pytest.approx([m.quality for m in b.masks], abs=1e-5)
    assert a.below_threshold == b.below_threshold


def test_a_vocabulary_edit_reuses_the_tile_embedding(tiny_sam3, make_geotiff):
    name, _ = tiny_sam3
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = load_engine(models.TINY_MODEL, "cpu", sam3_model=name)
        first = engine.segment(replace(request(path), classes=("roof", "pool")))
        detector = engine.detector
        assert detector.encoded_tiles == 4 and first.summary is not None
        calls = detector.prompt_calls
        engine.segment(replace(request(path), classes=("roof", "pool", "solar panel")))
    assert detector.encoded_tiles == 4  # only the prompt side ran again
    assert detector.prompt_calls > calls


def test_exemplar_boxes_change_what_sam3_sees(tiny_sam3):
    _, model = tiny_sam3
    detector = Sam3Detector(model, SAM3_TINY, "x", torch.device("cpu"))
    tile = np.random.default_rng(2).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    plain = detector.detect(tile, "t", [ConceptPrompt("roof", 1)], 0.0)
    boxed = detector.detect(tile, "t", [ConceptPrompt("roof", 1, ((20, 30, 90, 120),))], 0.0)
    assert [m.quality for m in plain.masks] != pytest.approx([m.quality for m in boxed.masks], abs=1e-6)


def test_a_prompt_over_the_length_limit_is_refused_with_the_limit(tiny_sam3):
    _, model = tiny_sam3
    detector = Sam3Detector(model, SAM3_TINY, "x", torch.device("cpu"))
    detector.check_prompts([ConceptPrompt("red tiled roof of a house", 1)])
    long = " ".join(["roof"] * 31)
    with pytest.raises(InputError, match="at most 30"):
        detector.check_prompts([ConceptPrompt(long, 1)])


def test_missing_sam3_weights_name_the_licence_step(tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsMissingError, match=r"huggingface.co/facebook/sam3, accept the licence"):
        models.load_sam3("sam3")
    with pytest.raises(WeightsMissingError, match="not found"):
        models.load_sam3(f"sam3-tiny@{tmp_path / 'nothing.pt'}")


def test_a_file_that_is_not_a_sam3_checkpoint_is_refused(tmp_path):
    model = build_sam3(SAM3_TINY)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable SAM 3 checkpoint"):
        load_checkpoint(model, tmp_path / "junk.pt")
    torch.save({"model": {"visual.proj": torch.zeros(2)}}, tmp_path / "clip.pt")
    with pytest.raises(InputError, match="no SAM 3 detector weights"):
        load_checkpoint(model, tmp_path / "clip.pt")
    torch.save({"model": {"detector.transformer.decoder.query_embed.weight": torch.zeros(3, 3)}}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="does not fit"):
        load_checkpoint(model, tmp_path / "x.pt")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A hub that refuses a gated file, as huggingface.co does before the licence is accepted."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.server.auth = self.headers.get("Authorization")
        self.send_response(403)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_refused_gated_download_names_the_licence_step(tmp_path, monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("RSOV_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec = replace(models.SAM3_MODELS["sam3"], source_url=f"http://127.0.0.1:{server.server_port}/sam3.pt")
    try:
        with pytest.raises(weights.AccessRefusedError, match=r"HTTP 403.*accept the licence"):
            models.download_weights(spec, token="hf_secret")
        assert server.auth == "Bearer hf_secret"
        monkeypatch.setattr(models, "hub_token", lambda explicit=None: explicit)
        with pytest.raises(WeightsMissingError, match="needs a Hugging Face token"):
            models.download_weights(spec)
    finally:
        server.shutdown()
    assert not (tmp_path / "checkpoints" / "sam3.pt").exists()  # nothing half-written


def test_unknown_engine_names_the_choices(make_geotiff, capsys):
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    with pytest.raises(InputError, match="Unknown engine 'sam4': use clip or sam3"):
        oracle_concept_engine().segment(replace(request(path), engine="sam4"))
    with pytest.raises(SystemExit):
        cli.main(["segment", str(path), "--classes", "roof", "--engine", "sam4"])
    assert re.search(r"invalid choice: 'sam4' \(choose from '?clip'?, '?sam3'?\)", capsys.readouterr().err)


def test_cli_sam3_semantic_and_instance(tiny_sam3, make_geotiff, tmp_path, capsys):
    name, _ = tiny_sam3
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    common = ["--model", models.TINY_MODEL, "--sam3-model", name, "--engine", "sam3", "--quiet"]
    common += ["--classes", "roof; pool; grass", "--tile", "256", "--tile-overlap", "64"]
    out = tmp_path / "semantic.gpkg"
    assert cli.main(["segment", str(path), *common, "--out", str(out), "--raster-out", str(tmp_path / "c.tif")]) == 0
    assert out.exists() and (tmp_path / "c.tif").exists()
    objects = tmp_path / "objects.gpkg"
    assert cli.main(["segment", str(path), *common, "--mode", "instance", "--out", str(objects)]) == 0
    info = pyogrio.read_info(objects)
    assert info["crs"].endswith("25832")
    assert (
        cli.main(["batch", str(path), "--engine", "sam3", "--classes", "roof", "--out-dir", str(tmp_path / "b")]) != 0
    )
    assert "rsov batch streams whole rasters" in capsys.readouterr().err


def test_a_cancel_stops_between_prompt_batches(tiny_sam3, make_geotiff):
    from rsov.errors import CancelledError

    name, _ = tiny_sam3
    path = make_geotiff(paint(), crs="EPSG:25832", transform=TRANSFORM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = load_engine(models.TINY_MODEL, "cpu", sam3_model=name)
    asked = []

    def cancelled() -> bool:  # the job's first look (before the first tile) says go on, the next says stop
        asked.append(1)
        return len(asked) > 1

    job = replace(request(path), classes=("roof,house,building", "pool,swimming pool", "car,vehicle"))
    with pytest.raises(CancelledError):
        engine.segment(job, cancelled=cancelled)
    assert engine.detector.prompt_calls == 1  # 7 prompts are 2 batches of 4: the second never ran
