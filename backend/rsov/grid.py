"""Where the sliding windows lie: one working grid per raster, whatever extent is asked for.

The working grid resamples a *domain* to the working resolution: the whole raster (the default,
anchored at its top-left corner), or, under the paper's per-extent rule (``long_side``), the
requested extent itself. Its sliding windows (mmseg's slide: a grid of ``window`` px at ``stride``,
the last one per axis clamped to the edge) are fixed by the domain alone, so a request for any
extent encodes exactly the windows that touch it and each pixel averages the same windows: a
pixel's answer does not depend on how far the user zoomed.

The output grid is where answers are written: the raster's own pixels of the extent (or coarser
ones with an explicit ``max_side``), cut into blocks that are processed one at a time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window

from .errors import InputError

# SegEarth-OV was tuned on 1024 px benchmark tiles resized to 448 px: working at the raster's own
# ground resolution times this keeps objects at the scale the method expects.
AUTO_FACTOR = 1024 / 448
# A working grid finer than this many times the raster's own pixels only interpolates.
MAX_UPSAMPLE = 16.0
BLOCK_SIDE = 2048  # output pixels per block side

WindowBox = tuple[int, int, int, int]  # (y0, x0, y1, x1) in working pixels of the domain


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """mmseg-style starts along one axis of ``n`` px: every ``stride``, the last clamped to the edge."""
    count = max(n - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, n) - window, 0) for i in range(count)})


@dataclass(frozen=True)
class WorkingGrid:
    """Working pixels of a domain: working pixel (i, j) covers the native pixels
    ``[row0 + i / sy, row0 + (i + 1) / sy) x [col0 + j / sx, col0 + (j + 1) / sx)``."""

    col0: float  # native column of the domain's left edge
    row0: float
    sx: float  # working pixels per native pixel, along columns
    sy: float
    width: int  # working pixels
    height: int
    window: int
    stride: int
    resolution_m: float  # ground size of one working pixel (nominal, at the centre for lon/lat)
    rule: str  # "auto", "fixed" or "long_side"

    @cached_property
    def _row_starts(self) -> list[int]:
        return window_starts(self.height, self.window, self.stride)

    @cached_property
    def _col_starts(self) -> list[int]:
        return window_starts(self.width, self.window, self.stride)

    def _touching(self, starts: list[int], n: int, lo: int, hi: int) -> list[int]:
        size = min(self.window, n)
        first = bisect.bisect_right(starts, lo - size)  # windows ending after lo
        last = bisect.bisect_left(starts, hi)  # windows starting before hi
        return starts[first:last]

    def windows_touching(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[WindowBox]:
        """The windows that overlap working rows [r0, r1) x cols [c0, c1), row-major."""
        h, w = min(self.window, self.height), min(self.window, self.width)
        ys = self._touching(self._row_starts, self.height, *rows)
        xs = self._touching(self._col_starts, self.width, *cols)
        return [(y, x, y + h, x + w) for y in ys for x in xs]

    def native_window(self, box: WindowBox) -> Window:
        """The (fractional) native pixel window a working window covers."""
        y0, x0, y1, x1 = box
        return Window(self.col0 + x0 / self.sx, self.row0 + y0 / self.sy, (x1 - x0) / self.sx, (y1 - y0) / self.sy)

    def key(self) -> tuple:
        return (self.col0, self.row0, self.sx, self.sy, self.width, self.height, self.window, self.stride)


@dataclass(frozen=True)
class OutputGrid:
    """Output pixels: ``step`` native pixels each (1.0: the raster's own grid), from native (col0, row0)."""

    col0: int
    row0: int
    width: int
    height: int
    step_x: float = 1.0
    step_y: float = 1.0
    block: int = BLOCK_SIDE

    def transform(self, raster_transform: Affine) -> Affine:
        return raster_transform @ Affine.translation(self.col0, self.row0) @ Affine.scale(self.step_x, self.step_y)

    def native_window(self, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> Window:
        """The native window of output rows [r0, r1) x cols [c0, c1) (default: all)."""
        r0, r1 = rows or (0, self.height)
        c0, c1 = cols or (0, self.width)
        return Window(
            self.col0 + c0 * self.step_x, self.row0 + r0 * self.step_y, (c1 - c0) * self.step_x, (r1 - r0) * self.step_y
        )

    @property
    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Blocks (r0, c0, r1, c1) in output pixels, row-major."""
        return [
            (r, c, min(r + self.block, self.height), min(c + self.block, self.width))
            for r in range(0, self.height, self.block)
            for c in range(0, self.width, self.block)
        ]


def tile_slide(raster_size: tuple[int, int], tile: int, overlap: int, pixel_size_m: float | None) -> WorkingGrid:
    """SAM's tiles on a raster of (H, W) native pixels: one slide over the whole raster, so a tile (and
    its cached embedding) is the same whatever extent asks for it."""
    height, width = raster_size
    return WorkingGrid(0.0, 0.0, 1.0, 1.0, width, height, tile, tile - overlap, pixel_size_m or 1.0, "tiles")


def owning_starts(grid: WorkingGrid, axis: int, lo: int, hi: int) -> np.ndarray:
    """For pixels [lo, hi) along ``axis`` (0: rows), the start of the window that owns each: of the
    windows holding the pixel, the one whose centre is nearest (a property of the grid, not of any
    extent). Rows and columns are owned independently, so a window owns a rectangle."""
    n = grid.height if axis == 0 else grid.width
    starts = np.array(grid._row_starts if axis == 0 else grid._col_starts)
    size = min(grid.window, n)
    centre = np.arange(lo, hi)[:, None] + 0.5
    inside = (starts[None] <= centre) & (centre < starts[None] + size)
    distance = np.where(inside, np.abs(centre - (starts[None] + size / 2)), np.inf)
    return starts[distance.argmin(1)]


def working_grid(
    raster_size: tuple[int, int],
    extent: Window,
    pixel_size_m: float | None,
    resolution_m: float | None,
    long_side: int | None,
    window: int,
    stride: int,
) -> WorkingGrid:
    """The working grid for a raster of (H, W) native pixels and a requested extent (native window).

    ``long_side`` selects the per-extent rule (the extent is the domain, resized to that long
    side); otherwise the domain is the whole raster at ``resolution_m`` (default: the raster's
    own resolution times ``AUTO_FACTOR``). Rasters without a georeference use the per-extent rule
    with 448 px, as the paper does.
    """
    if long_side is not None or pixel_size_m is None:
        if long_side is None:
            if resolution_m is not None:
                raise InputError("A ground resolution needs a georeferenced raster (its pixel size is unknown).")
            long_side = 448
        h, w = int(extent.height), int(extent.width)
        scale = long_side / max(h, w)
        hw, ww = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))  # rounded like mmcv
        size_m = (pixel_size_m or 1.0) / scale
        return WorkingGrid(
            float(extent.col_off), float(extent.row_off), ww / w, hw / h, ww, hw, window, stride, size_m, "long_side"
        )
    rule = "fixed" if resolution_m is not None else "auto"
    resolution = resolution_m if resolution_m is not None else pixel_size_m * AUTO_FACTOR
    check_resolution(resolution, pixel_size_m, raster_size)
    height, width = raster_size
    scale = pixel_size_m / resolution
    hw, ww = max(1, round(height * scale)), max(1, round(width * scale))
    return WorkingGrid(0.0, 0.0, ww / width, hw / height, ww, hw, window, stride, resolution, rule)


def check_resolution(resolution_m: float, pixel_size_m: float, raster_size: tuple[int, int]) -> None:
    """Refuse resolutions that are not a number, finer than MAX_UPSAMPLE x the raster's, or coarser than it."""
    if not math.isfinite(resolution_m) or resolution_m <= 0:
        raise InputError(f"Resolution must be a positive number of metres per pixel, got {resolution_m}.")
    if resolution_m < pixel_size_m / MAX_UPSAMPLE:
        raise InputError(
            f"A resolution of {resolution_m:g} m per pixel is over {MAX_UPSAMPLE:g}x finer than the raster's own "
            f"{pixel_size_m:.3g} m: choose at least {pixel_size_m / MAX_UPSAMPLE:.3g} m."
        )
    ground = max(raster_size) * pixel_size_m
    if resolution_m * 2 > ground:
        raise InputError(
            f"A resolution of {resolution_m:g} m per pixel is coarser than the raster itself ({ground:.4g} m on its "
            f"long side): choose at most {ground / 2:.4g} m, or leave the resolution on auto."
        )


def output_grid(extent: Window, max_side: int | None, block: int = BLOCK_SIDE) -> OutputGrid:
    """The extent's own pixels, or coarser ones so the long side is at most ``max_side`` (explicit only)."""
    w, h = int(extent.width), int(extent.height)
    col0, row0 = int(extent.col_off), int(extent.row_off)
    if max_side is None or max(h, w) <= max_side:
        return OutputGrid(col0, row0, w, h, block=block)
    scale = max_side / max(h, w)
    ow, oh = max(1, round(w * scale)), max(1, round(h * scale))
    return OutputGrid(col0, row0, ow, oh, w / ow, h / oh, block=block)


def working_positions(grid: WorkingGrid, out: OutputGrid, axis: int, lo: int, hi: int) -> torch.Tensor:
    """Working-pixel coordinates of the centres of output rows (axis 0) or cols (axis 1) [lo, hi)."""
    idx = torch.arange(lo, hi, dtype=torch.float64) + 0.5
    if axis == 0:
        native = out.row0 + idx * out.step_y
        return (native - grid.row0) * grid.sy - 0.5
    native = out.col0 + idx * out.step_x
    return (native - grid.col0) * grid.sx - 0.5


def interpolation(positions: torch.Tensor, n: int) -> tuple[torch.Tensor, int, int]:
    """Bilinear weights (as torch's resize with align_corners=False) from a working axis of ``n`` px.

    Returns the (P, k) float32 matrix over working pixels [lo, lo + k) and (lo, lo + k): the
    weights depend on the global positions only, so every block that holds a pixel agrees on it.
    """
    pos = positions.clamp(0, n - 1)
    low = pos.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    frac = (pos - low).float()
    first, last = int(low.min()), int(high.max()) + 1
    m = torch.zeros(len(pos), last - first)
    rows = torch.arange(len(pos))
    m[rows, low - first] += 1 - frac
    m[rows, high - first] += frac
    return m, first, last
