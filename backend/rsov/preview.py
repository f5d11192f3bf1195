"""Class colours and a PNG preview of a segmentation (the image with classes overlaid)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_output

# Distinct, colour-blind-aware colours (Okabe-Ito first, then Tableau); class k uses index k-1.
PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB colour of class id ``class_id`` (1-based); background (0) is black."""
    return (0, 0, 0) if class_id == 0 else PALETTE[(class_id - 1) % len(PALETTE)]


def write_preview(image: np.ndarray, class_map: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                  alpha: float = 0.5) -> Path:
    """image (H, W, 3) uint8, class_map (H, W) int -> PNG with classes blended in and a legend; written atomically."""
    colours = np.array([class_colour(k) for k in range(len(class_names) + 1)], dtype=np.float32)
    overlay = colours[class_map]
    mask = (class_map > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * overlay, image).astype(np.uint8)
    canvas = Image.fromarray(blended)
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(class_names, start=1):
        y = 6 + 16 * (k - 1)
        draw.rectangle([6, y, 18, y + 12], fill=class_colour(k), outline=(255, 255, 255))
        draw.text((24, y), name, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
