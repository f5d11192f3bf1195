# SPDX-License-Identifier: GPL-2.0-or-later
"""Instance mode's options as the panel and Processing show them: one table for both."""

from __future__ import annotations

from dataclasses import dataclass

from .backend_client import InstanceOptions


@dataclass(frozen=True)
class NumberOption:
    """A number of :class:`InstanceOptions` (``key``); its Processing parameter is ``key.upper()``."""

    key: str
    label: str
    tip: str
    minimum: float
    maximum: float
    decimals: int = 2  # 0: an integer

    @property
    def default(self) -> float:
        """The backend's default."""
        return getattr(InstanceOptions, self.key)


NUMBER_OPTIONS = (
    NumberOption(
        "object_threshold",
        "Object threshold",
        'Objects whose best class probability is lower are dropped ("none of these")',
        0.0,
        1.0,
    ),
    NumberOption(
        "points_per_side",
        "Points per side",
        "Density of Segment Anything's point grid per 1024-pixel tile (more finds smaller "
        "objects, and takes longer; 0: semantic prompts only)",
        0,
        64,
        0,
    ),
    NumberOption(
        "pred_iou",
        "Minimum mask quality",
        "Masks of lower predicted quality (IoU) are dropped; -1 keeps all",
        -1.0,
        1.0,
    ),
    NumberOption(
        "stability",
        "Minimum mask stability",
        "Masks that change more with the mask threshold are dropped; -1 keeps all",
        -1.0,
        1.0,
    ),
    NumberOption(
        "points_per_batch",
        "Prompts per batch",
        "Point prompts Segment Anything decodes at once: fewer need less GPU memory, more are faster",
        1,
        1024,
        0,
    ),
)
CLASS_PROMPTS = (
    "Prompt with the semantic map",
    "Also prompt Segment Anything with points in the confident regions of the semantic "
    "segmentation, so that small objects the grid misses are found",
)
