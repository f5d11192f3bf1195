"""What every part of `make bench` shares: the sample raster, its extents, timing and the printed lines."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
JBU = SHARED / "weights" / "featup" / "clip_jbu_stack_cocostuff.ckpt"
CLASSES = (
    "building,roof,house",
    "tree,forest",
    "grass",
    "road",
    "water,river",
    "bareland,barren",
    "pavement",
    "cropland",
    "car",
    "swimming pool",
)
SIZE = 1024


def make_raster(folder: Path) -> Path:
    """The OEM sample mirrored out to 1100 x 1100 (same CRS and pixel size)."""
    with rasterio.open(SHARED / "data" / "openearthmap" / "oem_koeln_50.tif") as src:
        data = src.read([1, 2, 3])
        profile = src.profile | {"width": 1100, "height": 1100, "count": 3, "driver": "GTiff"}
    path = folder / "bench.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.pad(data, ((0, 0), (0, 100), (0, 100)), mode="reflect"))
    return path


def extent(raster: Path, shift_px: int) -> tuple[float, float, float, float]:
    """A SIZE x SIZE pixel extent, moved right and down by ``shift_px`` (a new extent for the caches)."""
    with rasterio.open(raster) as src:
        left, top, res = src.bounds.left + shift_px * src.res[0], src.bounds.top - shift_px * src.res[1], src.res[0]
    return left, top - SIZE * res, left + SIZE * res, top


def timed(fn):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def line(label: str, value: str) -> None:
    print(f"  {label:<44}: {value}")
