"""SAM-refined semantic maps: known answers with an oracle CLIP (patch-blurred) and oracle SAM regions."""

import numpy as np
import pytest
from affine import Affine
from oracle import PALETTE, OracleEncoder, OracleText
from scipy import ndimage

from rsov.engine import Engine, SegmentRequest
from rsov.errors import InputError
from rsov.evaluation.options import EngineSpec, Variant, apply_option
from rsov.instance.masks import crop_mask
from rsov.instance.types import InstanceOptions
from rsov.refine import region_labels, region_means
from rsov.semantic.predictor import FeatureOptions, ScoreOptions

TRANSFORM = Affine(0.5, 0, 356000.0, 0, -0.5, 5645000.0)  # EPSG:25832, 0.5 m
# off the 16 px patch grid, so the oracle CLIP map is blocky along every edge
OBJECTS = {
    "roof": (37, 41, 139, 171, "red"),
    "lake": (205, 251, 331, 419, "blue"),
    "roof_b": (300, 60, 390, 150, "red"),
    "sand": (70, 300, 101, 333, "yellow"),
}
TRUTH = {"red": 1, "blue": 2, "yellow": 3, "grey": 0}
TILES = InstanceOptions(tile=256, tile_overlap=64)


class ColourRegions:
    """SAM's automatic regions as an oracle: every 4-connected region of one colour in the tile, except
    ``missed`` colours (objects SAM did not find)."""

    def __init__(self, missed=("yellow",)):
        self.missed = {PALETTE[c][0] for c in missed}
        self.tiles = []

    def propose(self, tile, key, points, options, precision="fp32", progress=None):
        self.tiles.append(key)
        codes = tile[..., 0].astype(int) * 65536 + tile[..., 1].astype(int) * 256 + tile[..., 2]
        masks = []
        for value in np.unique(codes):
            if (value >> 16, (value >> 8) & 255, value & 255) in self.missed:
                continue
            regions, count = ndimage.label(codes == value)
            masks += [crop_mask(regions == k, 0.99) for k in range(1, count + 1)]
        return masks


def paint():
    image = np.empty((3, 448, 448), dtype=np.uint8)
    image[:] = np.array(PALETTE["grey"][0], dtype=np.uint8)[:, None, None]
    truth = np.zeros((448, 448), dtype=np.int16)
    for r0, c0, r1, c1, colour in OBJECTS.values():
        image[:, r0:r1, c0:c1] = np.array(PALETTE[colour][0])[:, None, None]
        truth[r0:r1, c0:c1] = TRUTH[colour]
    return image, truth


def engine(proposer):
    text = OracleText()
    return Engine(OracleEncoder(), lambda templates: text, name="oracle", proposer_factory=lambda: proposer)


def request(path, **kw):
    return SegmentRequest(
        raster=str(path),
        classes=("roof", "water", "sand"),
        background=("background",),
        features=FeatureOptions(resolution_m=0.5),
        scoring=ScoreOptions(cls_lambda=0.0),
        instance=TILES,
        **kw,
    )


def boundary_iou(pred, truth, width=3):
    """Mean over classes of the IoU inside the band of ``width`` px around the true boundaries."""
    edges = np.zeros_like(truth, dtype=bool)
    edges[:-1] |= truth[:-1] != truth[1:]
    edges[:, :-1] |= truth[:, :-1] != truth[:, 1:]
    band = ndimage.binary_dilation(edges, iterations=width)
    ious = []
    for k in np.unique(truth):
        p, t = (pred == k) & band, (truth == k) & band
        ious.append((p & t).sum() / max((p | t).sum(), 1))
    return float(np.mean(ious))


def test_sam_regions_make_the_blurred_map_crisp_and_leave_missed_objects_alone(make_geotiff):
    image, truth = paint()
    path = make_geotiff(image, crs="EPSG:25832", transform=TRANSFORM)
    proposer = ColourRegions()
    plain = engine(proposer).segment(request(path)).prediction.class_map
    refined = engine(proposer).segment(request(path, refine="sam")).prediction.class_map
    before, after = boundary_iou(plain, truth), boundary_iou(refined, truth)
    # the oracle CLIP map is blocky at its 16 px patches; every SAM region takes its one class (measured
    # 0.33 -> 0.85, the rest being the object SAM missed)
    assert before < 0.4 and after - before > 0.45
    r0, c0, r1, c1, _ = OBJECTS["sand"]
    missed = np.zeros_like(truth, dtype=bool)
    missed[r0:r1, c0:c1] = True
    assert (refined[~missed] == truth[~missed]).all() and (plain[~missed] != truth[~missed]).sum() > 5000
    assert (refined[missed] == plain[missed]).all()  # no SAM region: CLIP's answer, pixel for pixel...
    assert (plain[missed] != 3).any()  # ...which was not crisp there


def test_refinement_does_not_depend_on_the_block_or_the_extent(make_geotiff):
    image, truth = paint()
    path = make_geotiff(image, crs="EPSG:25832", transform=TRANSFORM)
    proposer = ColourRegions(missed=())
    one = engine(proposer)
    whole = one.segment(request(path, refine="sam")).prediction.class_map
    small_blocks = one.segment(request(path, refine="sam", block_size=96)).prediction.class_map
    assert (small_blocks == whole).all()
    (x0, y1), (x1, y0) = TRANSFORM @ (130, 170), TRANSFORM @ (400, 420)  # cuts regions and tiles off-grid
    part = one.segment(request(path, refine="sam", bbox=(x0, y0, x1, y1))).prediction.class_map
    assert part.shape == (250, 270)
    assert (part == whole[170:420, 130:400]).all()
    assert (whole == truth).mean() > 0.999
    keys = {key.rsplit("|", 1)[1] for key in proposer.tiles}
    assert keys == {"0,0,256,256", "0,192,256,448", "192,0,448,256", "192,192,448,448"}  # the raster's own slide


def test_region_means_average_inside_each_region():
    import torch

    masks = [
        crop_mask(np.pad(np.ones((4, 4), bool), ((0, 4), (0, 4))), 1.0),  # top-left quarter
        crop_mask(np.ones((8, 8), bool), 1.0),
    ]  # everything: painted first, the quarter on top
    labels = region_labels(masks, (8, 8))
    assert (labels[:4, :4] == 2).all() and (labels[4:] == 1).all()
    probs = torch.zeros(2, 8, 8)
    probs[0, :4] = 1.0  # class 0 in the top half
    probs[1, 4:] = 1.0
    means = region_means(labels, [(0, probs[:, :3]), (3, probs[:, 3:])], 2)  # in two chunks of rows
    assert torch.allclose(means[2], torch.tensor([1.0, 0.0]))  # the quarter lies in the top half
    assert torch.allclose(means[1], torch.tensor([16 / 48, 32 / 48]))  # the rest of the top half, and the bottom


def test_bad_refinements_are_refused(make_geotiff):
    image, _ = paint()
    path = make_geotiff(image, crs="EPSG:25832", transform=TRANSFORM)
    one = engine(ColourRegions())
    with pytest.raises(InputError, match="decimated to 200x200 px by max_side"):
        one.segment(request(path, refine="sam", max_side=200))
    with pytest.raises(InputError, match="Unknown refinement 'crf': use one of none, sam"):
        one.segment(request(path, refine="crf"))
    variant = apply_option(Variant(EngineSpec(), request(path)), "refine", "sam")
    assert variant.request.refine == "sam"
    with pytest.raises(InputError, match="refine must be one of none, sam"):
        apply_option(variant, "refine", "crf")


def test_cli_refines_with_the_real_sam_path(shared_data, tiny_checkpoints, tmp_path, monkeypatch, capsys):
    """Tiny CLIP and tiny SAM, saved and loaded the real way; the regions SAM gives decide the classes inside them."""
    import rasterio

    from rsov import cli

    monkeypatch.setenv("RSOV_CACHE_DIR", str(tmp_path / "cache"))
    clip, sam = tiny_checkpoints
    raster = shared_data / "openearthmap" / "oem_koeln_50.tif"
    common = [
        "segment",
        str(raster),
        "--classes",
        "building; tree; road",
        "--model",
        clip,
        "--sam",
        sam,
        "--points-per-side",
        "4",
        "--pred-iou=-1",
        "--stability=-1",
        "--quiet",
    ]
    for refine in ("none", "sam"):
        assert (
            cli.main(
                common
                + [
                    "--refine",
                    refine,
                    "--out",
                    str(tmp_path / f"{refine}.gpkg"),
                    "--raster-out",
                    str(tmp_path / f"{refine}.tif"),
                ]
            )
            == 0
        ), capsys.readouterr().err
    with rasterio.open(tmp_path / "none.tif") as a, rasterio.open(tmp_path / "sam.tif") as b:
        plain, refined = a.read(1), b.read(1)
    assert plain.shape == refined.shape and (plain != refined).any()  # SAM's regions changed the map
    assert (tmp_path / "sam.json").exists() is False and (tmp_path / "cache" / "sam_decoder.json").is_file()
