"""Instance mode's types: its options, masks and objects, the proposer protocol, examples and the summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from shapely.geometry.base import BaseGeometry

from ..errors import InputError


@dataclass(frozen=True)
class InstanceOptions:
    """Instance-mode settings; the defaults keep every optional idea off until measured."""

    points_per_side: int = 16  # automatic grid density per tile (0: prompts only)
    pred_iou_thresh: float = 0.8  # SAM's predicted mask quality, grid masks
    stability_thresh: float = 0.9
    class_prompts: bool = True  # extra point prompts from confident semantic regions
    prompt_confidence: float = 0.6
    max_prompts: int = 256
    points_per_batch: int = 64  # point prompts per mask-decoder call (bounds memory)
    tile: int = 1024  # SAM's input size; larger extents are tiled...
    tile_overlap: int = 128  # ...with this overlap, and seam-cut masks merged
    nms_iou: float = 0.5  # mask NMS across classes
    min_area_px: int = 16
    score_threshold: float = 0.3  # "none of these" below this class probability
    context_dilation: int = 4  # SCORE: kernel 3 + this, on the working grid
    context_weight: float = 0.0  # 0 = no regional context
    crop_weight: float = 0.0  # weight of the cut-out CLIP score in the geometric ensemble (0 = off)
    exemplar_alpha: float = 0.5  # ZoRI PIP alpha
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.tile < 64 or not 0 <= self.tile_overlap < self.tile // 2:
            raise InputError(
                f"Tile {self.tile} px with overlap {self.tile_overlap} px: need tile >= 64, overlap < tile/2."
            )
        if not 0 <= self.context_weight <= 1 or not 0 <= self.crop_weight <= 1:
            raise InputError("Context and crop weights must be between 0 and 1.")
        if self.points_per_batch < 1:
            raise InputError("points_per_batch must be at least 1.")


@dataclass
class Mask:
    """A binary mask kept as its bounding-box crop in chip pixels."""

    crop: np.ndarray  # (h, w) bool
    y0: int
    x0: int
    quality: float = 1.0  # proposal quality (SAM predicted IoU x stability)
    tile: int = -1  # index of the tile it came from (-1: merged)
    hint: int = 0  # class id of the prompt that produced it (0: grid)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) in chip pixels, end exclusive."""
        return self.y0, self.x0, self.y0 + self.crop.shape[0], self.x0 + self.crop.shape[1]

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def paste(self, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The (H, W) = ``shape`` bool mask on a canvas whose top-left pixel is ``origin`` (clipped to it)."""
        out = np.zeros(shape, dtype=bool)
        y0, x0 = max(self.y0, origin[0]), max(self.x0, origin[1])
        y1, x1 = min(self.box[2], origin[0] + shape[0]), min(self.box[3], origin[1] + shape[1])
        if y0 < y1 and x0 < x1:
            out[y0 - origin[0] : y1 - origin[0], x0 - origin[1] : x1 - origin[1]] = self.crop[
                y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0
            ]
        return out


@dataclass
class Instance:
    """A classified object (what instance mode returns, before vectorization)."""

    mask: Mask
    shape: tuple[int, int]  # (H, W) of the chip
    class_id: int
    class_name: str
    score: float

    @property
    def full_mask(self) -> np.ndarray:
        """(H, W) bool: the mask on the whole chip."""
        return self.mask.paste(self.shape)


class Proposer(Protocol):
    """Class-agnostic mask proposals for one tile (SAM, or a test oracle)."""

    def propose(
        self,
        tile: np.ndarray,
        key: str,
        points: np.ndarray,
        options: InstanceOptions,
        precision: str = "fp32",
        progress: Callable[[float, str], None] | None = None,
    ) -> list[Mask]:
        """tile (h, w, 3) uint8, ``key`` identifying its pixels (for caches), points (P, 3) x, y, class hint
        -> masks in tile pixels (grid masks have hint 0). ``progress(fraction of the tile, text)``."""
        ...


@dataclass(frozen=True)
class Example:
    """An example object the analyst pointed at: a polygon of one class."""

    geometry: BaseGeometry
    crs: str | None  # of the geometry; None = the raster's
    class_name: str


@dataclass
class ExampleBank:
    """ZoRI's cache bank: keys (K, C) unit-norm features of example objects, labels (K,) class ids."""

    keys: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass(frozen=True)
class InstanceSummary:
    """Where every proposal went: the counts add up to ``proposals``."""

    proposals: int  # masks after seam merging
    kept: int  # objects returned
    below_threshold: int  # best class under the object threshold
    threshold: float
    background: int  # best class was a background word
    duplicates: int = 0  # suppressed by mask NMS
    outside_extent: int = 0  # touch no pixel of the extent asked for
    too_small: int = 0  # under the minimum area (after nodata and the processing area were cut away)

    @property
    def text(self) -> str:
        parts = [
            f"{self.proposals} proposals",
            f"{self.kept} kept",
            f"{self.below_threshold} below the object threshold {self.threshold:.2f}",
            f"{self.background} background",
        ]
        parts += [
            f"{n} {what}"
            for n, what in (
                (self.duplicates, "duplicates"),
                (self.outside_extent, "outside the extent"),
                (self.too_small, "too small"),
            )
            if n
        ]
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {**asdict(self), "text": self.text}
