"""SAM 3 as instance mode's second engine: text prompts in, every object of each concept out.

Each class line is a set of prompts (one per synonym) whose detections the class takes. A tile is
encoded once (``Sam3Detector`` keeps its image embedding per tile key, so a vocabulary edit re-runs only
the prompt side); prompts are run against it in batches of ``prompts_per_call`` (one text encoding and
one grounding pass per batch). ``detect_concepts`` runs the tiles of the raster's tile grid and returns
objects: seam-cut masks of one class merged, then mask NMS across classes, the score threshold and the
minimum area applied as in CLIP instance mode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CancelledError, InputError
from ..semantic.vocabulary import Vocabulary
from .masks import clean_mask, crop_mask, mask_nms, merge_across_seams
from .sam import precision_context
from .sam3_build import Sam3Size, clip_bpe_path
from .types import Instance, InstanceOptions, InstanceSummary, Mask

ProgressFn = Callable[[float, str], None]  # (fraction of the tile done, what is being done)
# SAM 3 answers every prompt with all its query slots, most of them empty: a slot scoring under this is
# no detection at all, one between this and the job's threshold is counted "below the object threshold".
DETECTION_FLOOR = 0.05
TEXT_CACHE = 4096  # prompt encodings kept (32 KiB each at the published size)
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in tile pixels


@dataclass(frozen=True)
class ConceptPrompt:
    """One text prompt and the class its detections go to; ``boxes`` are exemplar boxes in tile pixels."""

    text: str
    class_id: int
    boxes: tuple[Box, ...] = ()


@dataclass
class TileDetections:
    """What one tile gave: masks in tile pixels (``hint`` = class id, ``quality`` = score), and how many
    detections scored between ``DETECTION_FLOOR`` and the job's threshold."""

    masks: list[Mask] = field(default_factory=list)
    below_threshold: int = 0


class ConceptDetector(Protocol):
    """Text-prompted detection on one tile (SAM 3, or a test oracle)."""

    def check_prompts(self, prompts: list[ConceptPrompt]) -> None:
        """Raise InputError for a prompt the model cannot read whole, before any tile is run."""
        ...

    def detect(
        self,
        tile: np.ndarray,
        key: str,
        prompts: list[ConceptPrompt],
        threshold: float,
        precision: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> TileDetections:
        """tile (h, w, 3) uint8, ``key`` naming its pixels (for the embedding cache) -> its detections."""
        ...


def concept_prompts(
    vocabulary: Vocabulary, classes: list[int] | None = None, boxes: dict[int, list[Box]] | None = None
) -> list[ConceptPrompt]:
    """One prompt per synonym of each class id in ``classes`` (default: all). Background words are not
    prompted: SAM 3 finds things, and a pixel no prompt claims is already "none of these". ``boxes`` maps
    class ids to exemplar boxes."""
    wanted = range(1, len(vocabulary.classes) + 1) if classes is None else classes
    return [
        ConceptPrompt(text, k, tuple((boxes or {}).get(k, ())))
        for k in wanted
        for text in vocabulary.classes[k - 1].synonyms
    ]


@lru_cache(maxsize=1)
def _tokenizer():
    try:
        from sam3.model.tokenizer_ve import SimpleTokenizer
    except ImportError as exc:
        raise InputError(f"The sam3 engine needs the `sam3` package ({exc}): pip install 'rsov[sam3]'.") from exc

    return SimpleTokenizer(bpe_path=clip_bpe_path())


def check_prompt_lengths(prompts: list[ConceptPrompt], size: Sam3Size) -> None:
    """Refuse a prompt SAM 3 would silently cut, naming the limit (its text context less start and end)."""
    limit = size.text_context - 2
    for prompt in prompts:
        n = len(_tokenizer().encode(prompt.text))
        if n > limit:
            raise InputError(
                f"The prompt '{prompt.text}' is {n} word pieces long; SAM 3 reads at most {limit}: "
                "shorten it or split it into synonyms."
            )


class Sam3Detector:
    """SAM 3's image model behind the ``ConceptDetector`` protocol, with its processor's preprocessing.

    ``model`` is a ``Sam3Image`` (see ``sam3_build``); ``size`` its architecture (input side, prompt
    length). Embeddings of the last ``cache_bytes`` worth of tiles are kept; text encodings per prompt.
    """

    def __init__(
        self,
        model: Any,  # sam3's Sam3Image (untyped)
        size: Sam3Size,
        weights_id: str,
        device: torch.device,
        prompts_per_call: int = 4,
        cache_bytes: int = 1 << 30,
    ) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        self.model = model
        self.size = size
        self.device = device
        self.weights_id = weights_id
        self.prompts_per_call = prompts_per_call
        self.processor = Sam3Processor(model, resolution=size.image_size, device=str(device))
        self.cache_bytes = cache_bytes
        self._tiles: OrderedDict[str, dict] = OrderedDict()
        self._texts: OrderedDict[str, dict] = OrderedDict()  # the last TEXT_CACHE prompts' encodings
        self.encoded_tiles = 0  # tiles whose image embedding was computed (not taken from the cache)
        self.prompt_calls = 0  # grounding passes run

    def check_prompts(self, prompts: list[ConceptPrompt]) -> None:
        check_prompt_lengths(prompts, self.size)

    def _embedding(self, tile: np.ndarray, key: str, precision: str) -> dict:
        key = f"{key}|{precision}"
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        image = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))
        with precision_context(precision, self.device):
            state = self.processor.set_image(image)
        self.encoded_tiles += 1
        self._tiles[key] = state
        while len(self._tiles) > 1 and sum(_nbytes(s) for s in self._tiles.values()) > self.cache_bytes:
            self._tiles.popitem(last=False)
        return state

    def _text(self, texts: list[str]) -> dict:
        """The language features of ``texts``, batched along the prompt axis."""
        for text in texts:  # the batch's own encodings are the newest: eviction never takes them
            if text in self._texts:
                self._texts.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            out = self.model.backbone.forward_text(missing, device=str(self.device))
            for i, text in enumerate(missing):
                self._texts[text] = {
                    "language_features": out["language_features"][:, i : i + 1],
                    "language_mask": out["language_mask"][i : i + 1],
                }
            while len(self._texts) > max(TEXT_CACHE, len(texts)):
                self._texts.popitem(last=False)
        return {
            name: torch.cat([self._texts[t][name] for t in texts], dim=1 if name == "language_features" else 0)
            for name in ("language_features", "language_mask")
        }

    def _geometry(self, prompts: list[ConceptPrompt], height: int, width: int):
        """The exemplar boxes of a batch as SAM 3's padded geometric prompt (cx, cy, w, h in 0..1)."""
        from sam3.model.geometry_encoders import Prompt

        count = max(len(p.boxes) for p in prompts)
        if count == 0:
            return self.model._get_dummy_prompt(len(prompts))
        boxes = torch.zeros(count, len(prompts), 4, device=self.device)
        padding = torch.ones(len(prompts), count, dtype=torch.bool, device=self.device)
        for j, prompt in enumerate(prompts):
            for i, (x0, y0, x1, y1) in enumerate(prompt.boxes):
                boxes[i, j] = torch.tensor(
                    [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
                )
                padding[j, i] = False
        labels = torch.ones(count, len(prompts), dtype=torch.long, device=self.device)
        return Prompt(box_embeddings=boxes.clamp(0, 1), box_mask=padding, box_labels=labels)

    @torch.inference_mode()
    def detect(
        self,
        tile: np.ndarray,
        key: str,
        prompts: list[ConceptPrompt],
        threshold: float,
        precision: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> TileDetections:
        from sam3.model.data_misc import FindStage

        height, width = tile.shape[:2]
        state = self._embedding(tile, key, precision)
        found = TileDetections()
        for start in range(0, len(prompts), self.prompts_per_call):
            batch = prompts[start : start + self.prompts_per_call]
            n = len(batch)
            find = FindStage(
                img_ids=torch.zeros(n, dtype=torch.long, device=self.device),
                text_ids=torch.arange(n, dtype=torch.long, device=self.device),
                input_boxes=None,
                input_boxes_mask=None,
                input_boxes_label=None,
                input_points=None,
                input_points_mask=None,
            )
            backbone = {**state["backbone_out"], **self._text([p.text for p in batch])}
            with precision_context(precision, self.device):
                out = self.model.forward_grounding(
                    backbone_out=backbone,
                    find_input=find,
                    find_target=None,
                    geometric_prompt=self._geometry(batch, height, width),
                )
            self.prompt_calls += 1
            # the processor's score: the query's probability times the prompt's presence probability
            scores = out["pred_logits"].float().sigmoid().squeeze(-1) * out["presence_logit_dec"].float().sigmoid()
            logits = out["pred_masks"].float()  # (n, Q, h', w')
            for j, prompt in enumerate(batch):
                keep = torch.nonzero(scores[j] > threshold).flatten()
                found.below_threshold += int(((scores[j] >= DETECTION_FLOOR) & (scores[j] <= threshold)).sum())
                for q in keep.tolist():
                    mask = F.interpolate(logits[j, q][None, None], (height, width), mode="bilinear")[0, 0] > 0
                    if mask.any():
                        found.masks.append(crop_mask(mask.cpu().numpy(), float(scores[j, q]), prompt.class_id))
            if progress is not None:
                progress(min(start + n, len(prompts)) / len(prompts), f"prompts {start + n}/{len(prompts)}")
        return found


def _nbytes(state: dict) -> int:
    out = state["backbone_out"]
    tensors = [out["vision_features"], *out["backbone_fpn"], *out["vision_pos_enc"]]
    return sum(t.numel() * t.element_size() for t in tensors)


def detect_concepts(
    detector: ConceptDetector,
    image: np.ndarray,
    valid: np.ndarray,
    key: str,
    tiles: list[tuple[int, int, int, int]],
    origin: tuple[int, int],
    vocabulary: Vocabulary,
    options: InstanceOptions,
    classes: list[int] | None = None,
    boxes: dict[int, list[Box]] | None = None,
    precision: str = "fp32",
    cancelled: Callable[[], bool] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[Instance], InstanceSummary]:
    """Every object of the vocabulary on the chip ``image`` (H, W, 3) uint8, ``valid`` (H, W) bool.

    ``tiles`` (y0, x0, y1, x1) are in chip pixels, ``origin`` the chip's place on the raster (a tile's key
    names the same pixels whatever the chip); ``classes`` the class ids to prompt (default: all);
    ``boxes`` exemplar boxes (x0, y0, x1, y1) per class id in chip pixels.
    """
    detector.check_prompts(concept_prompts(vocabulary, classes))
    masks: list[Mask] = []
    below = 0
    for index, (y0, x0, y1, x1) in enumerate(tiles):
        if cancelled is not None and cancelled():
            raise CancelledError("The job was cancelled.")
        local = {
            k: [(a - x0, b - y0, c - x0, d - y0) for a, b, c, d in bs if a < x1 and c > x0 and b < y1 and d > y0]
            for k, bs in (boxes or {}).items()
        }
        prompts = concept_prompts(vocabulary, classes, local)

        def tile_progress(fraction: float, text: str, index: int = index) -> None:
            if cancelled is not None and cancelled():  # after each prompt batch: a CPU tile takes minutes
                raise CancelledError("The job was cancelled.")
            if progress is not None:
                progress((index + fraction) / len(tiles), f"tile {index + 1}/{len(tiles)}, {text}")

        where = f"{y0 + origin[0]},{x0 + origin[1]},{y1 + origin[0]},{x1 + origin[1]}"
        found = detector.detect(
            image[y0:y1, x0:x1], f"{key}|{where}", prompts, options.score_threshold, precision, tile_progress
        )
        below += found.below_threshold
        for m in found.masks:
            y, x = m.y0 + y0, m.x0 + x0
            cut = Mask(m.crop & valid[y : y + m.crop.shape[0], x : x + m.crop.shape[1]], y, x, m.quality, index, m.hint)
            if cut.crop.any():
                masks.append(cut)
    masks = [c for c in (clean_mask(m, options.min_area_px) for m in masks) if c is not None]
    # seams: one class's masks only (two classes' masks of one object are NMS's business, not the seam's)
    merged = [
        m for k in sorted({m.hint for m in masks}) for m in merge_across_seams([m for m in masks if m.hint == k], tiles)
    ]
    kept = mask_nms(merged, [m.quality for m in merged], options.nms_iou)
    shape = image.shape[:2]
    names = vocabulary.names
    instances = [Instance(merged[k], shape, merged[k].hint, names[merged[k].hint - 1], merged[k].quality) for k in kept]
    summary = InstanceSummary(
        proposals=len(merged) + below,
        kept=len(instances),
        below_threshold=below,
        threshold=options.score_threshold,
        background=0,
        duplicates=len(merged) - len(kept),
    )
    return instances, summary
