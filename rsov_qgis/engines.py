# SPDX-License-Identifier: GPL-2.0-or-later
"""The segmentation engines (the job option ``engine``) as the panel and Processing show them:
one table for both."""

from __future__ import annotations

from .backend_client import ENGINE_CLIP, ENGINE_SAM3

SAM3_LICENCE_URL = "https://huggingface.co/facebook/sam3"
# (the option's value, what the panel shows), the backend's default first
ENGINES = (
    (ENGINE_CLIP, "CLIP (training-free, any vocabulary)"),
    (ENGINE_SAM3, "SAM 3 (finds every object of each class)"),
)
ENGINE_TIP = (
    "CLIP: training-free, any vocabulary; every pixel is scored against the class names "
    "(instance mode: Segment Anything proposes the objects, CLIP names them).\n"
    "SAM 3: Meta's Segment Anything 3 finds every object of each class from its text. In semantic "
    "mode, land-cover \u201cstuff\u201d classes such as grass, water or road still come from CLIP. "
    "SAM 3's weights are gated: accept the licence at " + SAM3_LICENCE_URL + ", then download them on "
    "the Backend tab (Weights: sam3, with a Hugging Face token) or with `rsov models --download sam3`"
)
# the instance options SAM 3 does not use (it finds its objects from the class names, not from a point
# grid), besides the prompts from the semantic map (class_prompts)
SAM_GRID_ONLY = ("points_per_side", "pred_iou", "stability", "points_per_batch")
NOT_FOR_SAM3 = "Not used by the SAM 3 engine: it finds the objects of each class from the class names"
