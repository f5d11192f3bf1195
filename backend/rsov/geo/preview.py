"""A PNG preview of a segmentation: the image with the classes overlaid in their colours (``palette``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_output
from ..palette import class_rgb


def write_preview(
    image: np.ndarray, class_map: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, alpha: float = 0.5
) -> Path:
    """image (H, W, 3) uint8, class_map (H, W) int -> PNG with classes blended in and a legend; written atomically."""
    colours = np.array([class_rgb(k) for k in range(len(class_names) + 1)], dtype=np.float32)
    overlay = colours[class_map]
    mask = (class_map > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * overlay, image).astype(np.uint8)
    canvas = Image.fromarray(blended)
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(class_names, start=1):
        y = 6 + 16 * (k - 1)
        draw.rectangle([6, y, 18, y + 12], fill=class_rgb(k), outline=(255, 255, 255))
        draw.text((24, y), name, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
