"""Maps from objects: the sam3 engine's class map, and its fusion with CLIP's dense map (semantic mode).

The rule (also in docs/engines.md): SAM 3's objects paint their class with their score, the higher
score winning where objects overlap. Stuff classes come from CLIP's dense map, computed with only the
stuff classes and the background words. Each pixel takes SAM 3's class where an object covers it, unless
CLIP calls it a stuff class with a higher probability than the object's score; elsewhere it takes CLIP's
answer (a stuff class, or 0: none of these). CLIP's background never overrides an object: knowing no
thing class, CLIP calls every object background, so its background says nothing about objects.
The two scores are not calibrated against each other; the rule only asks which source is surer.
"""

from __future__ import annotations

import numpy as np

from .instance.types import Instance


def paint_instances(instances: list[Instance], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int16 class ids and float32 scores of the best-scoring object at each pixel (0 and 0.0: none)."""
    class_map, score_map = np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.float32)
    for instance in sorted(instances, key=lambda i: i.score):  # ascending: the higher score paints last
        y0, x0, y1, x1 = instance.mask.box
        crop = instance.mask.crop[: shape[0] - y0, : shape[1] - x0]
        class_map[y0:y1, x0:x1][crop] = instance.class_id
        score_map[y0:y1, x0:x1][crop] = instance.score
    return class_map, score_map


def fuse_with_stuff(
    things: np.ndarray, thing_scores: np.ndarray, stuff: np.ndarray, stuff_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the more confident of SAM 3's objects (``things``, ``thing_scores``) and CLIP's stuff map
    (``stuff``, ``stuff_scores``; 0 background), all (H, W); ties, and CLIP's background, go to the object."""
    take = (things > 0) & ((stuff == 0) | (thing_scores >= stuff_scores))
    return np.where(take, things, stuff).astype(np.int16), np.where(take, thing_scores, stuff_scores).astype(np.float32)
