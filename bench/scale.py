"""Scale figures of `make bench`: whole rasters streamed block by block, area scaling, panning, Dask.

The rasters are the OpenEarthMap sample (0.5 m) tiled, mirrored, into 8000 x 8000 and 16000 x 16000 px
GeoTIFFs. Every run but the panning one is a fresh `rsov segment` process, so its peak RSS is its own
(``os.wait4``). On a CPU the whole-raster runs at 1 m and 0.5 m take hours, so by default they run at a
coarse resolution and the 1 m / 0.5 m figures come from extents of 1x, 4x and 16x area; ``--full`` runs
the whole rasters at 1 m and 0.5 m (for a GPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

RSOV = Path(sys.executable).parent / "rsov"
CLASSES = "building,roof,house; tree,forest; grass; road; water,river; bareland,barren; pavement; cropland"


def mosaic(sample: Path, folder: Path, side: int) -> Path:
    """``sample`` tiled (mirrored) to side x side px, written tile by tile (tiled, LZW)."""
    path = folder / f"mosaic_{side}.tif"
    if path.exists():
        return path
    with rasterio.open(sample) as src:
        tile, profile = src.read(), src.profile
    flips = {(0, 0): tile, (0, 1): tile[:, :, ::-1], (1, 0): tile[:, ::-1], (1, 1): tile[:, ::-1, ::-1]}
    size = tile.shape[1]
    profile.update(
        width=side, height=side, tiled=True, blockxsize=512, blockysize=512, compress="lzw", BIGTIFF="IF_SAFER"
    )
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, size):
            for col in range(0, side, size):
                data = flips[(row // size % 2, col // size % 2)]
                h, w = min(size, side - row), min(size, side - col)
                dst.write(data[:, :h, :w], window=Window(col, row, w, h))
    return path


def segment(raster: Path, model: str, device: str, out: Path, *extra: str) -> tuple[float, float, str]:
    """One `rsov segment` process: wall seconds, peak RSS in MiB, its summary line."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            RSOV,
            "segment",
            raster,
            "--classes",
            CLASSES,
            "--model",
            model,
            "--device",
            device,
            "--out",
            out,
            "--quiet",
            "--yes",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"rsov segment failed: {stderr.strip().splitlines()[-1:]}")
    return seconds, usage.ru_maxrss / 1024, stdout.strip()


def bbox(raster: Path, side_px: int, shift_px: int = 0) -> str:
    with rasterio.open(raster) as ds:
        left, top = ds.bounds.left + shift_px * ds.res[0], ds.bounds.top
        return f"{left},{top - side_px * ds.res[1]},{left + side_px * ds.res[0]},{top}"


def line(label: str, value: str) -> None:
    print(f"  {label:<44}: {value}")


def bench_scale(args: argparse.Namespace, model: str, device: str, sample: Path, folder: Path) -> None:
    big = {side: mosaic(sample, folder, side) for side in (8000, 16000)}
    print(f"scale: OpenEarthMap sample tiled to 8000^2 and 16000^2 px at 0.5 m, {CLASSES.count(';') + 1} classes")
    coarse = ["1.0", "0.5"] if args.full else [args.coarse]
    for side, raster in big.items():
        for resolution in coarse:
            seconds, rss, summary = segment(raster, model, device, folder / "whole.gpkg", "--resolution", resolution)
            mpx = side * side / 1e6
            line(
                f"whole {side}^2 px ({mpx:.0f} Mpx) at {resolution} m",
                f"{seconds:8.1f} s, peak RSS {rss:6.0f} MiB "
                f"({next(p for p in summary.split(', ') if p.endswith('blocks'))})",
            )
    # area scaling at 1 m (and 0.5 m): the time per Mpx should stay flat, the memory bounded
    startup, rss, _ = segment(
        big[16000], model, device, folder / "area.gpkg", "--resolution", "1.0", f"--bbox={bbox(big[16000], 100)}"
    )
    line("start-up (model load, one window)", f"{startup:8.1f} s, peak RSS {rss:6.0f} MiB")
    per_mpx = {}
    for factor, side_px in ((1, 1000), (4, 2000), (16, 4000)):
        seconds, rss, _ = segment(
            big[16000],
            model,
            device,
            folder / "area.gpkg",
            "--resolution",
            "1.0",
            f"--bbox={bbox(big[16000], side_px)}",
        )
        per_mpx[factor] = (seconds - startup) / (side_px * side_px / 1e6)
        line(
            f"{factor:>2}x area at 1 m ({side_px}^2 px)",
            f"{seconds:8.1f} s, {per_mpx[factor]:6.2f} s/Mpx after start-up, peak RSS {rss:6.0f} MiB",
        )
    line("time per Mpx, 16x against 1x", f"x{per_mpx[16] / per_mpx[1]:.2f} (1.00 = linear)")
    seconds, rss, _ = segment(
        big[16000], model, device, folder / "area.gpkg", "--resolution", "0.5", f"--bbox={bbox(big[16000], 1000)}"
    )
    line(
        "1x area at 0.5 m (1000^2 px)",
        f"{seconds:8.1f} s, {seconds - startup:6.2f} s/Mpx after start-up, peak RSS {rss:6.0f} MiB",
    )
    bench_pan(model, device, big[8000])
    one, _, _ = segment(
        big[16000],
        model,
        device,
        folder / "d1.gpkg",
        "--resolution",
        "1.0",
        f"--bbox={bbox(big[16000], 2000)}",
        "--block-size",
        "1024",
    )
    two, rss, _ = segment(
        big[16000],
        model,
        device,
        folder / "d2.gpkg",
        "--resolution",
        "1.0",
        f"--bbox={bbox(big[16000], 2000)}",
        "--block-size",
        "1024",
        "--workers",
        "2",
    )
    line(
        "4x area, Dask LocalCluster 2 workers",
        f"{two:8.1f} s vs {one:.1f} s in one process (x{one / two:.2f}; {os.cpu_count()} cores)",
    )


def bench_pan(model: str, device: str, raster: Path) -> None:
    """Pan by half an extent in one warm engine: the share of windows encoded again, and the time."""
    from rsov.engine import SegmentRequest, load_engine
    from rsov.semantic.predictor import FeatureOptions

    engine = load_engine(model, device)
    features = FeatureOptions(resolution_m=1.0)
    first = SegmentRequest(
        str(raster), tuple(CLASSES.split(";")), features=features, bbox=tuple(map(float, bbox(raster, 2000).split(",")))
    )
    start = time.perf_counter()
    engine.segment(first)
    t_first = time.perf_counter() - start
    panned = SegmentRequest(**{**first.__dict__, "bbox": tuple(map(float, bbox(raster, 2000, 1000).split(",")))})
    start = time.perf_counter()
    result = engine.segment(panned)
    t_pan = time.perf_counter() - start
    total = result.windows_encoded + result.windows_cached
    line(
        "pan by half a 2000^2 px extent at 1 m",
        f"{result.windows_encoded}/{total} windows re-encoded "
        f"({100 * result.windows_encoded / total:.0f} %), {t_pan:.1f} s vs {t_first:.1f} s for the first view",
    )
