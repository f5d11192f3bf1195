"""`make bench --only instances`: instance mode and the SAM refinement, part by part.

* dedup: seam merging and mask NMS on 3,000 synthetic masks (goal: under 1 s together);
* the SAM decoder: the call size measured on this machine, and the shared-image decoder against
  SAM's own on the same prompts;
* one 1024 x 1024 tile with SAM ViT-B: encoder, decoding, dedup, classification (goal: everything
  after the encoder at most 25 % of the encoder time), in fp32 and in ``fast``;
* the tiny models on a 1300 x 1300 single-band uint16 raster in EPSG:4326 (4 tiles): the whole job
  (goal: under 30 s on a 2-core CPU);
* a semantic tile with and without ``--refine sam``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
import torch
from common import CLASSES, SHARED, SIZE, extent, line, timed
from rasterio.transform import from_origin

from rsov.engine import SegmentRequest, load_engine
from rsov.instance.classify import classify
from rsov.instance.masks import mask_nms, merge_across_seams
from rsov.instance.sam import decode_masks
from rsov.instance.types import InstanceOptions, Mask
from rsov.models import find_weights, resolve_sam_spec
from rsov.precision import resolve_precision
from rsov.semantic.predictor import FeatureOptions

TINY_CLASSES = ("building,roof", "tree", "road", "water")


def seam_masks(count: int, grid: int = 5, tile: int = 256, overlap: int = 64) -> tuple[list[Mask], list]:
    """About ``count`` masks of random boxes and ellipses on ``grid`` x ``grid`` overlapping tiles, every
    object seen (clipped) by each tile it touches: the duplicates seam merging and NMS must find."""
    rng = np.random.default_rng(0)
    step = tile - overlap
    tiles = [(y, x, y + tile, x + tile) for y in range(0, grid * step, step) for x in range(0, grid * step, step)]
    side = (grid - 1) * step + tile
    masks: list[Mask] = []
    while len(masks) < count:
        h, w = rng.integers(6, 90, 2)
        y0, x0 = rng.integers(0, side - h), rng.integers(0, side - w)
        yy, xx = np.ogrid[:h, :w]
        shape = (
            ((2 * yy + 1 - h) / h) ** 2 + ((2 * xx + 1 - w) / w) ** 2 <= 1
            if rng.random() < 0.5
            else np.ones((h, w), bool)
        )
        for index, (ty0, tx0, ty1, tx1) in enumerate(tiles):
            cy0, cx0, cy1, cx1 = max(y0, ty0), max(x0, tx0), min(y0 + h, ty1), min(x0 + w, tx1)
            if cy0 < cy1 and cx0 < cx1 and shape[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].any():
                masks.append(
                    Mask(shape[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], cy0, cx0, float(rng.random()), index)
                )
    return masks, tiles


def bench_dedup() -> None:
    """Seam merging and mask NMS on 3,000 synthetic masks over 25 tiles (goal: under 1 s together)."""
    masks, tiles = seam_masks(3000)
    merged, t_merge = timed(lambda: merge_across_seams(masks, tiles))
    kept, t_nms = timed(lambda: mask_nms(merged, [m.quality for m in merged], 0.5))
    print(f"dedup: {len(masks)} synthetic masks over {len(tiles)} tiles")
    line("seam merge", f"{t_merge:8.2f} s  ({len(merged)} masks after merging)")
    line("mask NMS", f"{t_nms:8.2f} s  ({len(kept)} kept)")


def vit_b_sam(folder: Path) -> str:
    """SAM ViT-B: the real weights when cached, else random ones saved and loaded the real way."""
    from segment_anything import sam_model_registry

    if find_weights(resolve_sam_spec("sam-vit-b")) is not None:
        return "sam-vit-b"
    torch.manual_seed(0)
    path = folder / "sam_vit_b_random.pth"
    if not path.exists():
        torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return f"vit_b@{path}"


def bench_decoder(proposer, device: torch.device) -> None:
    """The measured call sizes, and the shared-image decoder against SAM's own decoder (same prompts, same run)."""
    sam = proposer.predictor.model
    print("SAM mask decoder: seconds per prompt by call size (measured once per machine, kept in the cache)")
    for size, seconds in sorted(proposer.chunk_seconds.items()):
        line(f"{size} prompts per call", f"{1000 * seconds:8.1f} ms per prompt")
    chunk = min(proposer.chunk_seconds, key=proposer.chunk_seconds.get)
    image = torch.randn(1, 256, 64, 64, device=device)
    pe = sam.prompt_encoder.get_dense_pe()
    points = (torch.rand(32, 1, 2, device=device) * 1024, torch.ones(32, 1, dtype=torch.int64, device=device))
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)

        def run(shared: bool) -> None:
            for start in range(0, 32, chunk):
                s, d = sparse[start : start + chunk], dense[start : start + chunk]
                if shared:
                    decode_masks(sam.mask_decoder, image, pe, s, d[:1])
                else:
                    sam.mask_decoder(
                        image_embeddings=image,
                        image_pe=pe,
                        sparse_prompt_embeddings=s,
                        dense_prompt_embeddings=d,
                        multimask_output=True,
                    )

        run(False)
        _, t_sam = timed(lambda: run(False))
        _, t_shared = timed(lambda: run(True))
        _, t_batch = timed(
            lambda: sam.mask_decoder(
                image_embeddings=image,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        )
    line("SAM's decoder, 32 prompts in one call", f"{1000 * t_batch / 32:8.1f} ms per prompt (the former path)")
    line(f"SAM's decoder, calls of {chunk}", f"{1000 * t_sam / 32:8.1f} ms per prompt")
    line(
        f"shared-image decoder, calls of {chunk}",
        f"{1000 * t_shared / 32:8.1f} ms per prompt  (x{t_batch / t_shared:.2f} the former path)",
    )


def bench_instances(args: argparse.Namespace, model: str, device: torch.device, raster: Path, folder: Path) -> None:
    """Instance mode on one 1024 x 1024 tile with SAM ViT-B, in fp32 and in ``fast``; then a new vocabulary."""
    sam = vit_b_sam(folder)
    engine = load_engine(model, str(device), sam=sam)
    options = InstanceOptions()
    if "@" in sam:  # random weights pass no quality threshold: open them (and NMS), so there are masks to classify
        options = replace(options, pred_iou_thresh=-1.0, stability_thresh=-1.0, score_threshold=0.0, nms_iou=1.0)
    fast = resolve_precision("fast", device, folder / "cache")
    print(
        f"instances: one {SIZE}x{SIZE} tile, {len(CLASSES)} classes, SAM {sam.split('@')[0]}, "
        f"{options.points_per_side}x{options.points_per_side} grid + semantic prompts; fast = {fast.precision}"
    )
    for n, precision in enumerate(dict.fromkeys(("fp32", fast.precision))):
        request = SegmentRequest(
            str(raster),
            CLASSES,
            bbox=extent(raster, 8 * n),
            mode="instance",
            instance=options,
            features=FeatureOptions(long_side=args.long_side, precision=precision),
        )
        before = replace(engine.proposer.timings) if n else None
        result, t_job = timed(partial(engine.segment, request))
        timings = engine.proposer.timings
        encode_s = timings.sam_encode_s - (before.sam_encode_s if before else 0)
        decode_s = timings.sam_decode_s - (before.sam_decode_s if before else 0)
        proposals_s = timings.proposals_s - (before.proposals_s if before else 0)
        after = result.timings["proposals_s"] - encode_s + result.timings["classify_s"]
        print(f"  {precision}: {result.summary.text}")
        line("SAM image encoder", f"{encode_s:8.2f} s")
        line("mask decoder network", f"{decode_s:8.2f} s")
        line("post-processing (filter, upsample, NMS)", f"{proposals_s - decode_s:8.2f} s")
        line("seam merge and the rest of proposing", f"{result.timings['proposals_s'] - encode_s - proposals_s:8.2f} s")
        line("classification (pooling, text, NMS)", f"{result.timings['classify_s']:8.2f} s")
        line("after the encoder, against it (goal 25 %)", f"{100 * after / encode_s:8.0f} %")
        line("whole job", f"{t_job:8.2f} s")
        if n == 0:
            bench_decoder(engine.proposer, device)
            request0, first = request, result
    # Random SAM weights give few masks; time classification on 200 box masks as well.
    rng = np.random.default_rng(0)
    boxes = [
        Mask(np.ones((int(h), int(w)), bool), int(y), int(x))
        for y, x, h, w in zip(
            rng.integers(0, 900, 200),
            rng.integers(0, 900, 200),
            rng.integers(8, 120, 200),
            rng.integers(8, 120, 200),
            strict=False,
        )
    ]
    _, t_classify = timed(
        lambda: classify(engine.predictor(), first.chip.image, boxes, first.vocabulary, request0.scoring, options)
    )
    encoded = engine.proposer.encoded_tiles
    second, t_second = timed(lambda: engine.segment(replace(request0, classes=CLASSES[:-1] + ("solar panel",))))
    line("classification of 200 box masks", f"{t_classify:8.2f} s  ({1000 * t_classify / 200:.1f} ms per mask)")
    line(
        "fp32 again, one class edited",
        f"{t_second:8.2f} s  (SAM tiles encoded again: "
        f"{engine.proposer.encoded_tiles - encoded}; grid masks and CLIP features cached)",
    )


def uint16_raster(folder: Path, side: int = 1300) -> Path:
    """The OEM sample's first band, mirrored out to ``side`` px, as uint16 in EPSG:4326 (about 0.3 m pixels)."""
    with rasterio.open(SHARED / "data" / "openearthmap" / "oem_koeln_50.tif") as src:
        band = src.read(1)
    data = np.pad(band, ((0, side - band.shape[0]), (0, side - band.shape[1])), mode="reflect").astype(np.uint16) * 40
    path = folder / "uint16_4326.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=1,
        dtype="uint16",
        crs="EPSG:4326",
        transform=from_origin(6.9, 50.9, 3e-6, 3e-6),
    ) as dst:
        dst.write(data[None])
    return path


def bench_tiny_job(device: torch.device, folder: Path) -> None:
    """The tiny models on 1300 x 1300 px of single-band uint16 in EPSG:4326: the whole instance job (goal < 30 s),
    in a fresh engine (the decoder call size already measured), in fp32 and in ``fast``."""
    raster = uint16_raster(folder)
    fast = resolve_precision("fast", device, folder / "cache")
    print(
        f"instances, tiny models: 1300 x 1300 px, 1 band uint16, EPSG:4326, {len(TINY_CLASSES)} classes "
        f"(goal: under 30 s); fast = {fast.precision}"
    )
    for precision in dict.fromkeys(("fp32", fast.precision)):
        engine = load_engine("tiny-random", str(device))
        request = SegmentRequest(
            str(raster), TINY_CLASSES, mode="instance", features=FeatureOptions(precision=precision)
        )
        result, seconds = timed(partial(engine.segment, request))
        t = engine.proposer.timings
        line(
            f"{precision}: whole job",
            f"{seconds:8.2f} s  ({t.encoded_tiles} tiles, {t.decoded_prompts} prompts: "
            f"encoder {t.sam_encode_s:.1f} s, decoder {t.sam_decode_s:.1f} s; {result.summary.text})",
        )


def bench_refine(args: argparse.Namespace, model: str, device: torch.device, raster: Path, folder: Path) -> None:
    """A 1024 x 1024 semantic extent, plain and refined with SAM ViT-B's regions (each in a fresh engine)."""
    sam = vit_b_sam(folder)
    print(f"semantic refinement with SAM {sam.split('@')[0]}: one {SIZE}x{SIZE} extent, {len(CLASSES)} classes")
    times = {}
    for refine in ("none", "sam"):
        engine = load_engine(model, str(device), sam=sam)
        request = SegmentRequest(
            str(raster),
            CLASSES,
            bbox=extent(raster, 0),
            refine=refine,
            features=FeatureOptions(long_side=args.long_side),
        )
        started = time.perf_counter()
        engine.segment(request)
        times[refine] = time.perf_counter() - started
        extra = (
            ""
            if refine == "none"
            else (f"  (x{times['sam'] / times['none']:.1f}; SAM tiles {engine.proposer.encoded_tiles})")
        )
        line(f"refine {refine}", f"{times[refine]:8.2f} s{extra}")
