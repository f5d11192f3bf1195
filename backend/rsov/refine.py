"""SAM-refined semantic maps: training-free, after AerOSeg's finding that SAM's regions are cleaner than CLIP's.

SAM's automatic regions (instance mode's point-grid masks, from the same cached tile embeddings)
clean a block of the semantic map: inside each region the class probabilities are averaged, so the
region takes one class and the map's boundaries snap to the region's edges. Pixels that no region
covers keep their answer.

So that a pixel's answer does not depend on the block, the extent or the process computing it,
each pixel is refined by the SAM tile that owns it on the raster's tile slide (of the tiles holding
it, the one whose centre is nearest), and a region's average is taken over all of the region inside
that tile, also where it reaches outside the block or the extent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from .errors import CancelledError
from .geo.raster_io import read_rgb
from .grid import owning_starts, tile_slide
from .instance.types import InstanceOptions, Mask, Proposer
from .semantic.predictor import ScoreOptions, best_class
from .semantic.vocabulary import Vocabulary
from .tiled import BlockResult, GridPredictor, Plan, rasterize_area


def region_labels(masks: list[Mask], shape: tuple[int, int]) -> np.ndarray:
    """(h, w) int32: the region of every pixel, numbered from 1 (0: none). Masks are painted largest
    first, so a part lies on top of the whole it belongs to (SAM's multimask output gives both)."""
    labels = np.zeros(shape, dtype=np.int32)
    for number, m in enumerate(sorted(masks, key=lambda m: -m.area), start=1):
        y0, x0, y1, x1 = m.box
        labels[y0:y1, x0:x1][m.crop] = number
    return labels


def region_means(labels: np.ndarray, chunks: Iterable[tuple[int, torch.Tensor]], regions: int) -> torch.Tensor:
    """(regions + 1, N + 1) mean class probabilities of each region (row 0: the pixels of no region), from
    (first row, (N + 1, rows, w) probabilities) chunks covering ``labels`` (h, w)."""
    sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    for start, probs in chunks:
        index = torch.from_numpy(labels[start : start + probs.shape[1]]).flatten().long().to(probs.device)
        if sums is None or counts is None:
            sums = torch.zeros(regions + 1, probs.shape[0], device=probs.device)
            counts = torch.zeros(regions + 1, device=probs.device)
        sums.index_add_(0, index, probs.flatten(1).T)
        counts.index_add_(0, index, torch.ones(len(index), device=probs.device))
    if sums is None or counts is None:
        raise ValueError("region_means needs at least one chunk of probabilities")
    return sums / counts.clamp_min(1)[:, None]


class SamRefiner:
    """Refines the blocks of one planned request with SAM's regions (see the module doc)."""

    def __init__(
        self,
        proposer: Proposer,
        grid: GridPredictor,
        ds: DatasetReader,
        plan: Plan,
        vocabulary: Vocabulary,
        scoring: ScoreOptions,
        options: InstanceOptions,
        precision: str,
        key: str,
    ) -> None:
        self.proposer, self.grid, self.ds, self.plan = proposer, grid, ds, plan
        self.vocabulary, self.scoring, self.options, self.precision = vocabulary, scoring, options, precision
        self.key = key  # names the raster's pixels for the tile caches, as instance mode does
        self.slide = tile_slide(plan.raster_size, options.tile, options.tile_overlap, plan.pixel_size_m)

    def refine(
        self,
        block: BlockResult,
        cancelled: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BlockResult:
        """The block with every pixel inside a SAM region given the region's mean class
        (``progress(tiles done, tiles)``)."""
        r0, c0, r1, c1 = block.block
        out = self.plan.out
        rows = owning_starts(self.slide, 0, out.row0 + r0, out.row0 + r1)  # native starts of the owning tiles
        cols = owning_starts(self.slide, 1, out.col0 + c0, out.col0 + c1)
        class_map, score_map = block.class_map.copy(), block.score_map.copy()
        tiles = [(y, x) for y in np.unique(rows) for x in np.unique(cols)]
        for done, (y, x) in enumerate(tiles):
            if cancelled is not None and cancelled():
                raise CancelledError("The job was cancelled.")
            labels, means = self._regions(y, x)
            ys, xs = np.flatnonzero(rows == y), np.flatnonzero(cols == x)  # contiguous: owners grow along an axis
            by, bx = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
            ty, tx = out.row0 + r0 + ys[0] - y, out.col0 + c0 + xs[0] - x  # where the owned part lies in the tile
            owned = labels[ty : ty + len(ys), tx : tx + len(xs)]
            hit = (owned > 0) & block.valid[by, bx]
            label, best = best_class(means[torch.from_numpy(owned[hit]).long().to(means.device)].T, self.scoring)
            class_map[by, bx][hit] = label.cpu().numpy()
            score_map[by, bx][hit] = best.cpu().numpy()
            if progress is not None:
                progress(done + 1, len(tiles))
        return BlockResult(block.block, class_map, score_map, block.valid)

    def _regions(self, y: int, x: int) -> tuple[np.ndarray, torch.Tensor]:
        """The SAM tile at native (y, x): its region labels (h, w) and their mean class probabilities."""
        h, w = min(self.slide.window, self.slide.height), min(self.slide.window, self.slide.width)
        image, valid = read_rgb(self.ds, self.plan.indexes, Window(x, y, w, h), (h, w), Resampling.average)
        if self.plan.area is not None:  # the pixels instance mode gives SAM: outside the area is black
            valid &= rasterize_area(self.plan.area, self.plan.raster_transform @ Affine.translation(x, y), (h, w))
            image[~valid] = 0
        masks = self.proposer.propose(
            image, f"{self.key}|{y},{x},{y + h},{x + w}", np.zeros((0, 3)), self.options, self.precision
        )
        labels = region_labels(masks, (h, w))
        labels[~valid] = 0  # nodata and pixels outside the area do not vote
        out = self.plan.out
        box = (y - out.row0, x - out.col0, y - out.row0 + h, x - out.col0 + w)  # the tile in output pixels
        return labels, region_means(
            labels, self.grid.class_probabilities(self.vocabulary, self.scoring, box), len(masks)
        )
