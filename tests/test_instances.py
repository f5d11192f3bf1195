"""Instance mode: known answers with oracle proposals and features, and the real SAM path with tiny models."""

import json
import re
from dataclasses import replace

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from oracle import PALETTE, OracleEncoder, OracleText, oracle_instance_engine
from scipy import ndimage
from shapely.geometry import box, mapping

from rsov import cli
from rsov.engine import Engine, SegmentRequest, load_engine
from rsov.geo.instance_io import read_examples
from rsov.instance.masks import crop_mask, mask_nms, merge_across_seams
from rsov.instance.prompts import prompt_points
from rsov.instance.sam import SamProposer
from rsov.instance.types import InstanceOptions, Mask
from rsov.semantic.predictor import FeatureOptions, ScoreOptions

TRANSFORM = Affine(0.5, 0, 356000.0, 0, -0.5, 5645000.0)  # EPSG:25832, 0.5 m
OBJECTS = {  # name: (row0, col0, row1, col1, colour)
    "roof_a": (32, 32, 96, 128, "red"),
    "roof_seam": (160, 160, 224, 304, "red"),  # crosses both seams of 256 px tiles overlapping by 64
    "lake": (320, 320, 400, 416, "blue"),
}
TILES = InstanceOptions(tile=256, tile_overlap=64)


def paint(objects):
    image = np.empty((3, 448, 448), dtype=np.uint8)
    image[:] = np.array(PALETTE["grey"][0], dtype=np.uint8)[:, None, None]
    for r0, c0, r1, c1, colour in objects.values():
        image[:, r0:r1, c0:c1] = np.array(PALETTE[colour][0])[:, None, None]
    return image


def world_box(r0, c0, r1, c1):
    (x0, y0), (x1, y1) = TRANSFORM @ (c0, r0), TRANSFORM @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def request(path, **kw):
    kw.setdefault("scoring", ScoreOptions(cls_lambda=0.0))
    kw.setdefault("features", FeatureOptions(long_side=448))  # these 448 px rasters at their own pixels
    kw.setdefault("instance", TILES)
    kw.setdefault("background", ("background",))
    return SegmentRequest(raster=str(path), classes=("building,roof", "water"), mode="instance", **kw)


def test_each_object_once_with_its_class_across_tile_seams(make_geotiff):
    path = make_geotiff(paint(OBJECTS), crs="EPSG:25832", transform=TRANSFORM)
    engine = oracle_instance_engine()
    result = engine.segment(request(path))
    assert len(engine.proposer.tiles) == 4  # 2 x 2 tiles: the seam object was cut four ways
    found = sorted((f.class_name, f.geometry.bounds) for f in result.features)
    expected = sorted(
        (("water" if colour == "blue" else "building"), world_box(r0, c0, r1, c1).bounds)
        for r0, c0, r1, c1, colour in OBJECTS.values()
    )
    assert [name for name, _ in found] == [name for name, _ in expected]
    for (_, got), (_, want) in zip(found, expected, strict=False):
        assert np.allclose(got, want, atol=1e-6)  # one polygon per object, exactly its extent
    ids = [f.instance_id for f in result.features]
    assert sorted(ids) == list(range(1, len(ids) + 1))
    assert all(f.score > 0.9 for f in result.features)
    seam = next(f for f in result.features if f.geometry.bounds == world_box(160, 160, 224, 304).bounds)
    assert seam.area_m2 == pytest.approx(64 * 144 * 0.25)


class MixedText(OracleText):
    """'roof' leans towards yellow too, so text alone calls a yellow pool a building."""

    def embed(self, queries):
        vectors = super().embed(queries)
        for i, q in enumerate(queries):
            if q == "roof":
                vectors[i] = F.normalize(torch.tensor([1.0, 0, 0, 0, 0.5, 0, 0, 0]), dim=0)
        return vectors


def test_two_examples_fix_a_decision_the_text_gets_wrong(make_geotiff, tmp_path):
    objects = {
        "roof": (32, 32, 96, 128, "red"),
        "pool": (160, 160, 224, 256, "yellow"),
        "ex1": (320, 32, 384, 96, "yellow"),
        "ex2": (320, 320, 400, 400, "yellow"),
    }
    path = make_geotiff(paint(objects), crs="EPSG:25832", transform=TRANSFORM)
    classes = ("building,roof", "swimming pool,pool")

    def run(examples=()):
        req = SegmentRequest(
            raster=str(path),
            classes=classes,
            background=("background",),
            mode="instance",
            features=FeatureOptions(long_side=448),
            scoring=ScoreOptions(cls_lambda=0.0),
            examples=examples,
        )
        result = oracle_instance_engine(MixedText()).segment(req)
        return {f.geometry.bounds: f.class_name for f in result.features}

    target = world_box(160, 160, 224, 256).bounds
    assert run()[target] == "building"  # the text alone is wrong
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [
            {
                "type": "Feature",
                "properties": {"class": "swimming pool"},
                "geometry": mapping(world_box(*objects[k][:4])),
            }
            for k in ("ex1", "ex2")
        ],
    }
    examples_file = tmp_path / "examples.geojson"
    examples_file.write_text(json.dumps(collection))
    fixed = run(read_examples(examples_file))
    assert fixed[target] == "swimming pool"
    assert fixed[world_box(32, 32, 96, 128).bounds] == "building"  # a clear roof stays a roof


def test_examples_must_name_a_class(make_geotiff, tmp_path):
    path = make_geotiff(paint(OBJECTS), crs="EPSG:25832", transform=TRANSFORM)
    bad = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"class": "ship"}, "geometry": mapping(world_box(0, 0, 10, 10))}
        ],
    }
    examples = read_examples(bad)
    assert examples[0].crs == "EPSG:4326"  # RFC 7946 default
    with pytest.raises(Exception, match="not in the vocabulary|does not overlap"):
        oracle_instance_engine().segment(request(path, examples=examples))
    with pytest.raises(Exception, match="Polygon feature with a 'class'"):
        read_examples(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": mapping(box(0, 0, 1, 1))}],
            }
        )


def test_mask_helpers():
    a = Mask(np.ones((10, 10), bool), 0, 0)
    b = Mask(np.ones((10, 10), bool), 5, 0)
    assert reference_iou(a, b) == pytest.approx(50 / 150)
    assert mask_nms([a, b, Mask(np.ones((4, 4), bool), 50, 50)], [0.9, 0.8, 0.1], iou=0.3) == [0, 2]
    # the same object seen by two overlapping tiles is merged, a neighbour is not
    left = Mask(np.ones((10, 30), bool), 0, 70, tile=0)  # cols 70..100 in tile 0 (cols 0..100)
    right = Mask(np.ones((10, 40), bool), 0, 80, tile=1)  # cols 80..120 in tile 1 (cols 80..180)
    other = Mask(np.ones((10, 10), bool), 50, 90, tile=1)
    merged = merge_across_seams([left, right, other], [(0, 0, 100, 100), (0, 80, 100, 180)])
    assert sorted(m.box for m in merged) == [(0, 70, 10, 120), (50, 90, 60, 100)]


def test_prompt_points_sit_inside_confident_regions():
    class_map = np.zeros((50, 50), np.int16)
    class_map[5:15, 5:25] = 1
    class_map[30:45, 30:45] = 2
    score = np.full((50, 50), 0.9, np.float32)
    score[30:45, 30:45] = 0.2  # unsure: no prompt
    points = prompt_points(class_map, score, InstanceOptions(prompt_confidence=0.6))
    assert points.shape == (1, 3) and points[0, 2] == 1
    x, y = points[0, :2]
    assert 5 <= x <= 25 and 5 <= y <= 15


# Random SAM weights give poor masks: accept them all, and keep the (CPU-costly) decoder calls few.
PERMISSIVE = InstanceOptions(
    points_per_side=3, pred_iou_thresh=-1.0, stability_thresh=-1.0, score_threshold=0.0, nms_iou=0.9, max_prompts=8
)


def test_real_sam_path_on_spacenet(shared_data, tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    clip, sam = tiny_checkpoints
    raster = shared_data / "spacenet-buildings" / "sample_geotiff.tif"
    engine = load_engine(clip, "cpu", sam=sam)
    req = SegmentRequest(
        raster=str(raster), classes=("building", "road"), background=(), mode="instance", instance=PERMISSIVE
    )
    first = engine.segment(req)
    assert first.chip.crs.to_epsg() == 32616
    with rasterio.open(raster) as src:
        bounds = box(*src.bounds).buffer(0.01)
    assert first.features and all(bounds.contains(f.geometry) for f in first.features)
    assert len({f.instance_id for f in first.features}) == len(first.features)
    assert engine.proposer.encoded_tiles == 1
    # a new vocabulary re-runs only the cheap parts: SAM's embedding is kept
    second = engine.segment(SegmentRequest(**{**req.__dict__, "classes": ("house", "tree")}))
    assert engine.proposer.encoded_tiles == 1 and second.features_cached
    assert {f.class_name for f in second.features} <= {"house", "tree"}
    # a sub-extent lies in the same raster-anchored tile: SAM's embedding and CLIP's windows are reused
    with rasterio.open(raster) as src:
        left, bottom, right, top = src.bounds
    part = engine.segment(
        SegmentRequest(**{**req.__dict__, "bbox": (left + 33.3, bottom + 51.7, right - 80.1, top - 20.2)})
    )
    assert engine.proposer.encoded_tiles == 1 and part.features_cached
    assert part.chip.image.shape[:2] == part.prediction.class_map.shape != first.chip.image.shape[:2]


def test_cli_instance_mode_with_examples_and_oriented_boxes(
    shared_data, tiny_checkpoints, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    clip, sam = tiny_checkpoints
    raster = shared_data / "openearthmap" / "oem_koeln_50.tif"
    examples = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:25832"}},
        "features": [
            {
                "type": "Feature",
                "properties": {"class": "building"},
                "geometry": mapping(box(346100, 5647700, 346120, 5647720)),
            }
        ],
    }
    (tmp_path / "ex.geojson").write_text(json.dumps(examples))
    out = tmp_path / "objects.gpkg"
    code = cli.main(
        [
            "segment",
            str(raster),
            "--classes",
            "building; car",
            "--mode",
            "instance",
            "--model",
            clip,
            "--sam",
            sam,
            "--examples",
            str(tmp_path / "ex.geojson"),
            "--points-per-side",
            "3",
            "--no-class-prompts",
            "--pred-iou=-1",
            "--stability=-1",
            "--object-threshold",
            "0",
            "--background",
            "",
            "--obb",
            "--out",
            str(out),
            "--preview",
            str(tmp_path / "p.png"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    layers = dict(pyogrio.list_layers(out))
    assert set(layers) == {"rsov", "rsov_obb", "layer_styles"}
    info = pyogrio.read_info(out, layer="rsov")
    assert "instance_id" in info["fields"] and info["crs"] == "EPSG:25832"
    assert pyogrio.read_info(out, layer="rsov_obb")["features"] == info["features"] > 0
    printed = capsys.readouterr().out
    assert "objects" in printed and f"summary: {info['features']} kept" not in printed
    assert re.search(rf"summary: \d+ proposals, {info['features']} kept, \d+ below the object threshold 0.00", printed)


def test_mask_paste_on_a_window():
    mask = Mask(np.array([[True, False], [True, True]]), 3, 4)
    full = mask.paste((8, 8))
    assert full.sum() == 3 and full[3, 4] and full[4, 5] and not full[3, 5]
    window = mask.paste((3, 3), origin=(2, 4))  # rows 2..5, cols 4..7
    assert np.array_equal(window, full[2:5, 4:7])
    assert not mask.paste((2, 2), origin=(0, 0)).any()  # no overlap


def test_cut_out_embedding_sees_the_object():
    from oracle import OracleEncoder

    from rsov.instance.classify import crop_features

    image = np.zeros((200, 200, 3), np.uint8)
    image[:] = PALETTE["grey"][0]
    image[60:120, 50:150] = PALETTE["blue"][0]
    image[0:40, 0:40] = PALETTE["red"][0]  # outside the object's window: must not show
    mask = Mask(np.ones((60, 100), bool), 60, 50)
    embedding = crop_features(OracleEncoder(), image, [mask], torch.device("cpu"))[0]
    # the object is blue; the rest of its square window is the mean colour (grey to the oracle); no red
    assert embedding[2] > 0.5 and embedding[0] == 0


def test_objects_do_not_depend_on_the_extent(make_geotiff):
    """Tiles and windows lie on the raster's grids: a sub-extent that cuts tiles finds the same objects."""
    path = make_geotiff(paint(OBJECTS), crs="EPSG:25832", transform=TRANSFORM)
    features = FeatureOptions(resolution_m=0.5)  # the raster grid at its own pixels, not the per-extent rule
    engine = oracle_instance_engine()
    whole = engine.segment(request(path, features=features))
    part_box = world_box(20, 150, 430, 440).bounds  # cuts tiles and windows off-grid; roof_a lies outside
    part = engine.segment(request(path, features=features, bbox=part_box))
    assert part.prediction.class_map.shape == (410, 290)
    key = lambda f: (f.class_name, tuple(round(v, 6) for v in f.geometry.bounds), round(f.score, 5))  # noqa: E731
    inside = sorted(key(f) for f in whole.features if box(*part_box).intersects(f.geometry))
    assert sorted(key(f) for f in part.features) == inside and len(inside) == 2
    assert part.windows_encoded == 0  # the sub-extent reused the whole raster's window features


# --- the cheap decoding against the former full-resolution path, on an oracle SAM -----------------------------


class OracleImageEncoder(torch.nn.Module):
    """SAM's 'embedding' is the normalised, padded input itself at the decoder's 256 x 256."""

    img_size = 1024

    def forward(self, x):
        return F.avg_pool2d(x, 4)


class OraclePromptEncoder(torch.nn.Module):
    """Passes the prompt points (B, 1, 2), in SAM's 1024 frame, on to the decoder."""

    def forward(self, points, boxes, masks):
        return points[0], torch.zeros(len(points[0]), 1)

    def get_dense_pe(self):
        return torch.zeros(1)


class OracleMaskDecoder(torch.nn.Module):
    """Three candidates per point: its colour region (confident, logits = signed distance), the region grown
    by 8 px (predicted IoU 0.7, under the threshold) and noise (predicted IoU 0.9, unstable)."""

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        image = image_embeddings[0].numpy()
        logits = []
        for x, y in (sparse_prompt_embeddings[:, 0] / 4).long().tolist():
            regions, _ = ndimage.label(np.abs(image - image[:, y : y + 1, x : x + 1]).sum(0) < 0.1)
            region = regions == regions[y, x]
            signed = ndimage.distance_transform_edt(region) - ndimage.distance_transform_edt(~region)
            grown = ndimage.binary_dilation(region, iterations=8)
            noise = np.random.default_rng(x * 1000 + y).normal(0, 0.5, region.shape)
            logits.append(np.stack([4 * signed, np.where(grown, 4.0, -4.0), noise]))
        iou = torch.tensor([[0.95, 0.7, 0.9]]).expand(len(logits), 3)
        return torch.from_numpy(np.stack(logits)).float(), iou


def oracle_sam():
    from segment_anything.modeling import Sam

    return Sam(OracleImageEncoder(), OraclePromptEncoder(), OracleMaskDecoder()).eval()


class FullResolutionProposer(SamProposer):
    """The former path, as a reference: every candidate upsampled to the whole tile, then filtered."""

    def _full(self, xy):
        from segment_anything.utils.amg import calculate_stability_score

        p = self.predictor
        coords = p.transform.apply_coords_torch(torch.as_tensor(xy, dtype=torch.float32), p.original_size)
        logits, iou, _ = p.predict_torch(
            coords[:, None, :], torch.ones(len(coords), 1, dtype=torch.int64), multimask_output=True, return_logits=True
        )
        return logits > 0, iou, calculate_stability_score(logits, 0.0, 1.0)

    def _grid_masks(self, size, options):
        from segment_anything.utils.amg import batched_mask_to_box, build_point_grid
        from torchvision.ops import batched_nms

        xy = build_point_grid(options.points_per_side) * np.array(size[::-1])
        kept, scores = [], []
        for start in range(0, len(xy), options.points_per_batch):
            masks, iou, stability = (t.flatten(0, 1) for t in self._full(xy[start : start + options.points_per_batch]))
            keep = (iou > options.pred_iou_thresh) & (stability > options.stability_thresh) & masks.flatten(1).any(1)
            kept.append(masks[keep])
            scores.append((iou * stability)[keep])
        masks, scores = torch.cat(kept), torch.cat(scores)
        keep = batched_nms(batched_mask_to_box(masks).float(), scores, torch.zeros(len(masks)), iou_threshold=0.7)
        return [crop_mask(masks[i].numpy(), float(scores[i])) for i in keep.tolist()]

    def _prompted_masks(self, points, options):
        out = []
        for start in range(0, len(points), options.points_per_batch):
            batch = points[start : start + options.points_per_batch]
            masks, iou, stability = self._full(batch[:, :2])
            for i, j in enumerate(iou.argmax(dim=1).tolist()):
                if masks[i, j].any():
                    out.append(
                        crop_mask(masks[i, j].numpy(), float(iou[i, j] * stability[i, j]), hint=int(batch[i, 2]))
                    )
        return out


ORACLE_SAM = InstanceOptions(points_per_side=6, points_per_batch=16, tile=256, tile_overlap=64)


def test_low_resolution_decoding_keeps_the_full_resolution_masks():
    """A tile that is not square (SAM pads it): same masks as the full-resolution path, to within a pixel."""
    tile = np.empty((300, 200, 3), np.uint8)
    tile[:] = PALETTE["grey"][0]
    tile[20:90, 30:150] = PALETTE["red"][0]
    tile[150:290, 120:190] = PALETTE["blue"][0]  # touches the bottom-right corner of the tile, next to the padding
    tile[200:230, 10:60] = PALETTE["yellow"][0]
    points = np.array([[60.0, 50.0, 1], [150.0, 200.0, 2], [35.0, 215.0, 1]])
    with torch.inference_mode():
        cheap = SamProposer(oracle_sam(), "oracle").propose(tile, "t", points, ORACLE_SAM)
        full = FullResolutionProposer(oracle_sam(), "oracle").propose(tile, "t", points, ORACLE_SAM)
    assert len(cheap) == len(full) >= 7  # four regions from the grid, three prompted
    by_place = lambda m: (m.box, m.hint)  # noqa: E731 (the order follows quality, which differs a little)
    for a, b in zip(sorted(cheap, key=by_place), sorted(full, key=by_place), strict=False):
        assert np.abs(np.subtract(a.box, b.box)).max() <= 1 and a.hint == b.hint
        assert reference_iou(a, b) > 0.98
        assert a.quality == pytest.approx(b.quality, abs=0.1)  # stability on 16x fewer pixels: close, not equal


def test_cheap_decoding_finds_the_same_objects_through_the_engine(make_geotiff):
    path = make_geotiff(paint(OBJECTS), crs="EPSG:25832", transform=TRANSFORM)

    def objects(proposer):
        text = OracleText()
        engine = Engine(OracleEncoder(), lambda templates: text, name="oracle", proposer_factory=lambda: proposer)
        return sorted(
            (f.class_name, f.geometry.bounds) for f in engine.segment(request(path, instance=ORACLE_SAM)).features
        )

    cheap, full = objects(SamProposer(oracle_sam(), "oracle")), objects(FullResolutionProposer(oracle_sam(), "oracle"))
    assert [name for name, _ in cheap] == [name for name, _ in full] == ["building", "building", "water"]
    for (_, a), (_, b) in zip(cheap, full, strict=False):
        assert np.allclose(a, b, atol=0.5)  # one pixel is 0.5 m


# --- deduplication against the former pairwise loops -----------------------------------------------------------


def reference_iou(a: Mask, b: Mask) -> float:
    """IoU of two cropped masks, on the window of their two boxes."""
    y0, x0 = min(a.y0, b.y0), min(a.x0, b.x0)
    shape = (max(a.box[2], b.box[2]) - y0, max(a.box[3], b.box[3]) - x0)
    pa, pb = a.paste(shape, (y0, x0)), b.paste(shape, (y0, x0))
    inter = int((pa & pb).sum())
    return inter / max(int(pa.sum()) + int(pb.sum()) - inter, 1)


def reference_merge(masks, tiles, iou=0.5):
    """Every pair of masks of different tiles, compared inside their tiles' overlap; unions by connected groups."""
    graph = np.eye(len(masks), dtype=bool)
    for i, a in enumerate(masks):
        for j, b in enumerate(masks[:i]):
            if a.tile != b.tile and min(a.tile, b.tile) >= 0:
                ta, tb = tiles[a.tile], tiles[b.tile]
                y0, x0, y1, x1 = max(ta[0], tb[0]), max(ta[1], tb[1]), min(ta[2], tb[2]), min(ta[3], tb[3])
                if y0 < y1 and x0 < x1:
                    pa, pb = (Mask(m.paste((y1 - y0, x1 - x0), (y0, x0)), y0, x0) for m in (a, b))
                    graph[i, j] = graph[j, i] = reference_iou(pa, pb) > iou
    group = _components(graph)
    out = []
    for g in dict.fromkeys(group):
        members = [m for m, k in zip(masks, group, strict=False) if k == g]
        if len(members) == 1:
            out.append(members[0])
            continue
        canvas = np.any([m.paste((1200, 1200)) for m in members], axis=0)
        merged = crop_mask(canvas, max(m.quality for m in members), next((m.hint for m in members if m.hint), 0))
        out.append(Mask(merged.crop, merged.y0, merged.x0, merged.quality, -1, merged.hint))
    return out


def _components(graph):
    """Connected groups of a boolean adjacency matrix, each named by its first member (a plain flood fill)."""
    group = [-1] * len(graph)
    for start in range(len(graph)):
        stack = [start] if group[start] < 0 else []
        group[start] = group[start] if group[start] >= 0 else start
        while stack:
            for k in np.flatnonzero(graph[stack.pop()]).tolist():
                if group[k] < 0:
                    group[k] = start
                    stack.append(k)
    return group


def reference_nms(masks, scores, iou):
    kept = []
    for i in sorted(range(len(masks)), key=lambda k: -scores[k]):
        if all(reference_iou(masks[i], masks[k]) <= iou for k in kept):
            kept.append(i)
    return kept


def seam_masks(rng, tiles, objects):
    """Random ellipses and rectangles, each seen by every tile it touches (clipped there, sometimes eroded
    by a pixel or shifted so the copies agree more or less), plus nested parts in the same tile."""
    masks = []
    for _ in range(objects):
        cy, cx, ry, rx = rng.integers(0, 600), rng.integers(0, 600), rng.integers(4, 40), rng.integers(4, 40)
        yy, xx = np.ogrid[:600, :600]
        shape = (
            ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            if rng.random() < 0.5
            else (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        )
        for index, (y0, x0, y1, x1) in enumerate(tiles):
            seen = np.zeros_like(shape)
            seen[y0:y1, x0:x1] = shape[y0:y1, x0:x1]
            if rng.random() < 0.3:
                seen = (
                    np.roll(seen, rng.integers(-6, 7), axis=1)
                    & (np.arange(600) < x1)[None]
                    & (np.arange(600) >= x0)[None]
                )
            if seen.any():
                m = crop_mask(seen, float(rng.random()), int(rng.integers(0, 3)))
                masks.append(Mask(m.crop, m.y0, m.x0, m.quality, index, m.hint))
                if rng.random() < 0.2:  # its upper half too, as SAM's multimask output gives parts
                    half = crop_mask(m.crop[: max(1, m.crop.shape[0] // 2)], m.quality, m.hint)
                    masks.append(Mask(half.crop, half.y0 + m.y0, half.x0 + m.x0, m.quality, index, m.hint))
    return masks


def test_vectorised_dedup_matches_the_pairwise_reference():
    rng = np.random.default_rng(7)
    tiles = [(y, x, y + 256, x + 256) for y in (0, 172, 344) for x in (0, 172, 344)]  # 3 x 3, overlap 84
    masks = seam_masks(rng, tiles, 140)
    assert len(masks) >= 300
    merged, expected = merge_across_seams(masks, tiles), reference_merge(masks, tiles)
    assert len(expected) < len(masks) - 50  # many copies across seams were merged
    assert [(m.box, m.quality, m.tile, m.hint) for m in merged] == [
        (m.box, m.quality, m.tile, m.hint) for m in expected
    ]
    assert all(np.array_equal(a.crop, b.crop) for a, b in zip(merged, expected, strict=False))
    scores = rng.random(len(masks)).round(2).tolist()  # ties too
    for iou in (0.0, 0.3, 0.5, 0.9):
        assert mask_nms(masks, scores, iou) == reference_nms(masks, scores, iou)
    assert mask_nms([], [], 0.5) == [] and merge_across_seams([], tiles) == []


# --- what the analyst is told: progress and the summary --------------------------------------------------------


def test_the_summary_says_where_every_proposal_went(make_geotiff):
    objects = {
        **OBJECTS,
        "tree": (16, 304, 64, 352, "green"),
        "sand": (288, 32, 352, 96, "yellow"),
        "shed": (416, 416, 432, 432, "red"),
    }  # on the oracle's 16 px patches, so each is seen pure
    path = make_geotiff(paint(objects), crs="EPSG:25832", transform=TRANSFORM)

    class LeaningText(OracleText):  # 'water' leans a little towards yellow: sand is water, unsure (p = 0.45)
        def embed(self, queries):
            vectors = super().embed(queries)
            vectors[torch.tensor([q == "water" for q in queries])] = F.normalize(
                torch.tensor([0, 0, 1.0, 0, 0.01, 0, 0, 0]), dim=0
            )
            return vectors

    engine = oracle_instance_engine(LeaningText())
    stages = []
    result = engine.segment(
        request(
            path, background=("background", "tree"), min_area_m2=100.0, instance=replace(TILES, score_threshold=0.5)
        ),
        stage=lambda name, fraction: stages.append((fraction, name)),
    )
    s = result.summary
    # the seam roof is one proposal after merging; the tree is background; the shed is 64 m2
    assert (s.proposals, s.kept, s.background, s.below_threshold, s.too_small) == (6, 3, 1, 1, 1)
    assert s.kept + s.below_threshold + s.background + s.duplicates + s.outside_extent + s.too_small == s.proposals
    assert len(result.features) == s.kept
    assert s.text == ("6 proposals, 3 kept, 1 below the object threshold 0.50, 1 background, 1 too small")
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(name.startswith("proposing objects: tile 4/4") for _, name in stages)
    assert stages[-1][1] == f"done: {s.text}"


def test_objects_outside_the_extent_are_counted(make_geotiff):
    path = make_geotiff(paint(OBJECTS), crs="EPSG:25832", transform=TRANSFORM)
    part = oracle_instance_engine().segment(
        request(path, features=FeatureOptions(resolution_m=0.5), bbox=world_box(300, 300, 440, 440).bounds)
    )
    s = part.summary
    assert s.kept == 1 and s.outside_extent == s.proposals - 1  # the whole tile was proposed, one object touches
