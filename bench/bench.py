"""`make bench`: speed and memory of the engine on a 1024 x 1024 extent with 10 classes.

Uses the real ViT-B/16 architecture. If its OpenAI weights are in the cache they are used; otherwise
the weights are random (speed does not depend on weight values, and the figures say which). The
raster is the OpenEarthMap sample mirrored to 1024 x 1024 and written as a GeoTIFF, so the run goes
through the same reading, encoding, scoring and vectorizing as `rsov segment`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import rasterio
import torch

from rsov.dense_clip import SegEarthCLIP
from rsov.engine import Engine, FeatureCache, SegmentRequest, resolve_device
from rsov.models import DEFAULT_MODEL, LoadedModel, find_weights, load_model, resolve_spec
from rsov.predictor import FeatureOptions
from rsov.text import ClipTextEmbedder
from rsov.upsample import load_jbu_upsampler

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CLASSES = ("building,roof,house", "tree,forest", "grass", "road", "water,river", "bareland,barren", "pavement",
           "cropland", "car", "swimming pool")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_raster(folder: Path) -> Path:
    """The OEM sample mirrored out to 1024 x 1024 (same CRS and pixel size)."""
    with rasterio.open(SHARED / "data" / "openearthmap" / "oem_koeln_50.tif") as src:
        data = src.read([1, 2, 3])
        profile = src.profile | {"width": 1024, "height": 1024, "count": 3, "driver": "GTiff"}
    big = np.pad(data, ((0, 0), (0, 24), (0, 24)), mode="reflect")
    path = folder / "bench_1024.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
    return path


def build_engine(device: torch.device, upsampler: str | None) -> tuple[Engine, str]:
    spec = resolve_spec(DEFAULT_MODEL)
    if find_weights(spec) is not None:
        loaded, label = load_model(DEFAULT_MODEL, device), f"{DEFAULT_MODEL} (real weights)"
    else:
        torch.manual_seed(0)
        model = open_clip.create_model(spec.arch, pretrained=None, device=device).eval().requires_grad_(False)
        loaded = LoadedModel(spec, model, open_clip.get_tokenizer(spec.arch), open_clip.OPENAI_DATASET_MEAN,
                             open_clip.OPENAI_DATASET_STD, "bench-random-vit-b-16", device)
        label = f"{spec.arch} (random weights: timing only)"
    encoder = SegEarthCLIP(loaded.model, loaded.mean, loaded.std).to(device)
    up = load_jbu_upsampler(upsampler).to(device) if upsampler else None
    text_root = Path(tempfile.mkdtemp(prefix="rsov-bench-text-"))
    return Engine(encoder, lambda t: ClipTextEmbedder(loaded, t, cache_root=text_root), up, device, label), label


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--long-side", type=int, default=448, help="working size (448 = paper default)")
    parser.add_argument("--no-jbu", action="store_true", help="skip the FeatUp JBU run")
    args = parser.parse_args()
    device = resolve_device(args.device)
    fast = "fp16" if device.type == "cuda" else "bf16"
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        raster = make_raster(Path(tmp))
        engine, label = build_engine(device, None)
        gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
        print(f"rsov bench: {label}, device {device} (GPU: {gpu}), torch threads {torch.get_num_threads()}")
        options = FeatureOptions(long_side=args.long_side)
        request = SegmentRequest(str(raster), CLASSES, features=options)

        # 1. cold: text tower for 10 classes x synonyms x 80 templates, image encoding, scoring.
        cold, t_cold = timed(lambda: engine.segment(request))
        n_windows = len(cold.image_features.windows)
        # 2. warm text cache, new image features (as if another extent with the same vocabulary).
        engine.cache = FeatureCache()
        warm, t_warm = timed(lambda: engine.segment(request))
        # 3. edit one class: its text is embedded, image features come from the cache.
        edited = replace(request, classes=CLASSES[:-1] + ("solar panel",))
        rescored, t_edit = timed(lambda: engine.segment(edited))
        assert rescored.features_cached
        h, w = cold.prediction.class_map.shape
        print(f"extent {w}x{h} px -> working {options.long_side} px long side, {n_windows} windows of 224/112, "
              f"{len(CLASSES)} classes")
        print(f"cold run (text embeddings + image + scoring): {t_cold:8.2f} s")
        print(f"warm run (image encode + scoring)          : {t_warm:8.2f} s  "
              f"({n_windows / warm.timings['encode_s']:.2f} windows/s; encode {warm.timings['encode_s']:.2f} s, "
              f"score {warm.timings['score_s']:.2f} s, vectorize {warm.timings['vectorize_s']:.2f} s)")
        print(f"re-run after editing one class             : {t_edit:8.2f} s  "
              f"(x{t_warm / t_edit:.1f} faster than the warm run)")

        # 4. fast precision: same request, labels compared with fp32.
        engine.cache = FeatureCache()
        fast_req = replace(request, features=replace(options, precision=fast))
        fast_res, t_fast = timed(lambda: engine.segment(fast_req))
        agree = float((fast_res.prediction.class_map == warm.prediction.class_map).mean())
        print(f"{fast} run (image encode + scoring)           : {t_fast:8.2f} s  "
              f"(x{t_warm / t_fast:.2f} vs fp32; label agreement with fp32 {agree * 100:.2f} %)")

        jbu_path = SHARED / "weights" / "featup" / "clip_jbu_stack_cocostuff.ckpt"
        if not args.no_jbu and jbu_path.is_file():
            engine_jbu, _ = build_engine(device, str(jbu_path))
            jbu_res, t_jbu = timed(lambda: engine_jbu.segment(request))
            print(f"with FeatUp JBU upsampler (cold text)      : {t_jbu:8.2f} s  "
                  f"(encode+upsample {jbu_res.timings['encode_s']:.2f} s, features "
                  f"{jbu_res.image_features.nbytes / 2**20:.0f} MiB)")
        print(f"peak memory (process RSS)                  : {peak_rss_mb():8.0f} MiB")
        if device.type == "cuda":
            print(f"peak GPU memory                            : {torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
