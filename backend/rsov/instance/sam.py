"""Segment Anything as instance mode's proposer: masks for one tile from a point grid and point prompts.

``SamPredictor`` encodes a tile once (the embedding is kept per tile, so a vocabulary edit or
the SAM refinement of a semantic map reuses it); the prompts are decoded in batches, filtered on
the decoder's low-resolution logits, and only the survivors are upsampled, inside their boxes.

Two speed choices are made from what the machine does, not assumed:

* the precision asked for the job (bf16 / fp16 run SAM under autocast; int8 runs SAM in fp32);
* how many prompts go into one mask-decoder call: the decoder repeats the 64 x 64 image embedding
  per prompt, so on a CPU large calls spill out of the caches and small ones run faster per prompt,
  while a GPU wants large calls. The fastest size is measured once per machine, precision and
  decoder (``fastest_chunk``) and kept in the rsov cache folder (``DECODER_FILE``).
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_output
from ..precision import calibration_key, cpu_capability
from .masks import crop_mask
from .types import InstanceOptions, Mask

DECODER_FILE = "sam_decoder.json"  # in the rsov cache folder: the fastest decoder call size per machine
CHUNK_SIZES = (1, 2, 4, 8, 16, 32, 64)
ProgressFn = Callable[[float, str], None]  # (fraction of the tile done, what is being done)


def precision_context(precision: str, device: torch.device):
    """Autocast for bf16 / fp16; fp32 (and int8, which SAM does not use) run as they are."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def fastest_chunk(
    decode: Callable[[int], object], limit: int = CHUNK_SIZES[-1], prompts: int = 16, give_up: float = 1.25
) -> tuple[int, dict[int, float]]:
    """The decoder call size with the least time per prompt, and the seconds per prompt measured.

    ``decode(n)`` decodes n prompts. Sizes 1, 2, 4, ... up to ``limit`` are each timed on about
    ``prompts`` prompts; the search stops at the first size ``give_up`` x slower than the best.
    """
    decode(1)  # warm-up: the first call allocates
    seconds: dict[int, float] = {}
    for size in (s for s in CHUNK_SIZES if s <= limit):
        calls = max(1, prompts // size)
        t = time.perf_counter()
        for _ in range(calls):
            decode(size)
        seconds[size] = (time.perf_counter() - t) / (calls * size)
        if seconds[size] > give_up * min(seconds.values()):
            break
    return min(seconds, key=lambda s: seconds[s]), seconds


def decode_masks(
    decoder: torch.nn.Module, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder`` with ``multimask_output=True``, without repeating the image per prompt.

    image, image_pe, dense (1, C, h, w); sparse (B, N, C) -> logits (B, 3, 4h, 4w), predicted IoU (B, 3).
    The decoder's attention layers broadcast over the batch, so the image side of its first layer
    (the same for every prompt while no mask prompt is given) is computed once instead of B times.
    """
    iou_token, mask_tokens = cast(torch.nn.Embedding, decoder.iou_token), cast(torch.nn.Embedding, decoder.mask_tokens)
    transformer, upscaling = cast(torch.nn.Module, decoder.transformer), cast(torch.nn.Module, decoder.output_upscaling)
    hypernetworks = cast(torch.nn.ModuleList, decoder.output_hypernetworks_mlps)
    iou_head = cast(torch.nn.Module, decoder.iou_prediction_head)
    tokens = torch.cat([iou_token.weight, mask_tokens.weight])[None].expand(len(sparse), -1, -1)
    hs, src = transformer(image + dense, image_pe, torch.cat((tokens, sparse), dim=1))
    c, h, w = image.shape[1:]
    upscaled = upscaling(src.transpose(1, 2).reshape(len(sparse), c, h, w))
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(hypernetworks)], dim=1)
    masks = (hyper @ upscaled.flatten(2)).view(len(sparse), -1, *upscaled.shape[-2:])
    iou = iou_head(hs[:, 0])
    return masks[:, 1:], iou[:, 1:]  # SAM's multimask output: the three candidates after the single-mask one


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    return f"{platform.node()} {calibration_key(cpu_capability())}"


@dataclass
class InstanceTimings:
    """Seconds spent by a SamProposer since it was built."""

    sam_encode_s: float = 0.0
    sam_decode_s: float = 0.0  # SAM's prompt encoder and mask decoder, part of proposals_s
    proposals_s: float = 0.0  # decoding and post-processing, not the encoder
    encoded_tiles: int = 0
    decoded_prompts: int = 0

    def per_prompt_s(self) -> float | None:
        """Measured seconds of proposal work per prompt (None before any)."""
        return self.proposals_s / self.decoded_prompts if self.decoded_prompts else None

    def per_tile_encode_s(self) -> float | None:
        return self.sam_encode_s / self.encoded_tiles if self.encoded_tiles else None


class _TileProgress:
    """Progress through one tile, in prompt-equivalents: encoding counts as many prompts as it takes time."""

    ENCODE_PROMPTS = 64.0  # the encoder's weight before anything was measured

    def __init__(self, report: ProgressFn, timings: InstanceTimings, encode: bool, prompts: int) -> None:
        per_prompt, per_tile = timings.per_prompt_s(), timings.per_tile_encode_s()
        self.encode = (per_tile / per_prompt if per_prompt and per_tile else self.ENCODE_PROMPTS) if encode else 0.0
        self.report, self.prompts, self.done = report, prompts, 0
        self.report(0.0, "encoding the tile" if encode else f"prompts 0/{prompts}")

    def encoded(self) -> None:
        self.report(self.encode / max(self.encode + self.prompts, 1e-9), f"prompts 0/{self.prompts}")

    def decoded(self, count: int) -> None:
        self.done += count
        self.report(
            (self.encode + self.done) / max(self.encode + self.prompts, 1e-9), f"prompts {self.done}/{self.prompts}"
        )


class SamProposer:
    """Segment Anything as a proposer, keeping each tile's image embedding and grid masks.

    ``calibration_dir``: where the fastest decoder call size is kept (None: measured, not kept);
    ``chunk``: a fixed call size instead of a measured one.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        weights_id: str,
        cache_size: int = 32,
        calibration_dir: Path | None = None,
        chunk: int | None = None,
    ) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.weights_id = weights_id
        self.cache_size = cache_size
        self.calibration_dir = calibration_dir
        self._fixed_chunk = chunk
        self._chunks: dict[str, int] = {}  # measured or kept call sizes, by machine, precision and decoder
        self.chunk_seconds: dict[int, float] = {}  # the last calibration, seconds per prompt by call size
        self._embeddings: OrderedDict[tuple, tuple] = OrderedDict()
        self._grid: OrderedDict[tuple, list[Mask]] = OrderedDict()
        self.timings = InstanceTimings()
        self._progress: _TileProgress | None = None
        self._chunk = 1  # decoder call size and precision of the tile being decoded
        self._precision = "fp32"

    @property
    def encoded_tiles(self) -> int:
        return self.timings.encoded_tiles

    def cached(self, key: str, precision: str = "fp32") -> bool:
        """Whether the tile ``key`` is encoded already."""
        return (key, precision) in self._embeddings

    @torch.inference_mode()
    def propose(
        self,
        tile: np.ndarray,
        key: str,
        points: np.ndarray,
        options: InstanceOptions,
        precision: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> list[Mask]:
        grid_key = (key, precision, options.points_per_side, options.pred_iou_thresh, options.stability_thresh)
        grid_prompts = 0 if grid_key in self._grid else max(options.points_per_side, 0) ** 2
        self._progress = _TileProgress(
            progress or (lambda fraction, text: None),
            self.timings,
            not self.cached(key, precision),
            grid_prompts + len(points),
        )
        self._precision = precision
        self._set_tile(tile, key, precision)
        self._progress.encoded()
        self._chunk = min(self._decoder_chunk(precision), options.points_per_batch)
        t = time.perf_counter()
        if grid_key not in self._grid:
            self._remember(self._grid, grid_key, self._grid_masks(tile.shape[:2], options))
        masks = list(self._grid[grid_key])
        if len(points):
            masks += self._prompted_masks(points, options)
        self.timings.proposals_s += time.perf_counter() - t
        return masks

    def _set_tile(self, tile: np.ndarray, key: str, precision: str) -> None:
        p = self.predictor
        if (key, precision) in self._embeddings:
            p.features, p.original_size, p.input_size = self._embeddings[(key, precision)]
            p.is_image_set = True
            self._embeddings.move_to_end((key, precision))
            return
        t = time.perf_counter()
        with precision_context(precision, p.device):
            p.set_image(tile)
        self.timings.sam_encode_s += time.perf_counter() - t
        self.timings.encoded_tiles += 1
        self._remember(self._embeddings, (key, precision), (p.features, p.original_size, p.input_size))

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _decoder_chunk(self, precision: str) -> int:
        """The fastest decoder call size here: fixed, kept from an earlier calibration, or measured now
        on the tile that is set (random prompts)."""
        if self._fixed_chunk is not None:
            return self._fixed_chunk
        decoder = self.predictor.model.mask_decoder
        size = sum(p.numel() for p in decoder.parameters())
        key = (
            f"{_machine(self.predictor.device)}; {precision}; {type(decoder).__name__} of {size} parameters, "
            "image shared"
        )
        if key not in self._chunks:
            kept = self._kept_chunks()
            if key not in kept:
                xy = np.random.default_rng(0).random((CHUNK_SIZES[-1], 2)) * np.array(
                    self.predictor.original_size[::-1]
                )
                kept[key], self.chunk_seconds = fastest_chunk(lambda n: self._decoder_call(xy[:n]))
                self._keep_chunks(kept)
            self._chunks[key] = kept[key]
        return self._chunks[key]

    def _kept_chunks(self) -> dict[str, int]:
        if self.calibration_dir is None:
            return {}
        try:
            kept = json.loads((self.calibration_dir / DECODER_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in kept.items() if isinstance(v, int) and v >= 1} if isinstance(kept, dict) else {}

    def _keep_chunks(self, kept: dict[str, int]) -> None:
        if self.calibration_dir is not None:
            self.calibration_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.calibration_dir / DECODER_FILE) as partial:
                partial.write_text(json.dumps(kept, indent=1))

    def _decoder_call(self, xy: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (P, 2) in tile pixels -> SAM's low-resolution logits (P, 3, 256, 256) and predicted IoU (P, 3),
        in one call of the prompt encoder and the mask decoder."""
        from segment_anything.modeling import MaskDecoder

        p = self.predictor
        coords = p.transform.apply_coords_torch(
            torch.as_tensor(xy, dtype=torch.float32, device=p.device), p.original_size
        )
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int64, device=p.device)
        with precision_context(self._precision, p.device):  # the networks only: post-processing stays in fp32
            prompts, dense = p.model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
            pe = p.model.prompt_encoder.get_dense_pe()
            if isinstance(p.model.mask_decoder, MaskDecoder):
                return decode_masks(p.model.mask_decoder, p.features, pe, prompts, dense[:1])
            return p.model.mask_decoder(
                image_embeddings=p.features,
                image_pe=pe,
                sparse_prompt_embeddings=prompts,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )

    def _decode(self, xy: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, _Upsampler]:
        """Points (P, 2) in tile pixels -> low-resolution logits (P, 3, Lh, Lw) of the tile's unpadded part,
        predicted IoU (P, 3), and the map from those logits to tile pixels.

        Calls SAM's prompt encoder and mask decoder directly, ``self._chunk`` prompts at a time:
        ``predict_torch`` would upsample every candidate to full resolution, which costs more than
        the decoder itself.
        """
        p = self.predictor
        t = time.perf_counter()
        parts = [self._decoder_call(xy[start : start + self._chunk]) for start in range(0, len(xy), self._chunk)]
        logits, iou = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        self.timings.sam_decode_s += time.perf_counter() - t
        self.timings.decoded_prompts += len(xy)
        up = _upsampler(
            tuple(p.input_size),
            tuple(p.original_size),
            p.model.image_encoder.img_size,
            logits.shape[-1],
            str(logits.device),
        )
        if self._progress is not None:
            self._progress.decoded(len(xy))
        return logits[..., : up.rows.low, : up.cols.low].float(), iou.float(), up

    def _grid_masks(self, size: tuple[int, int], options: InstanceOptions) -> list[Mask]:
        from segment_anything.utils.amg import build_point_grid, calculate_stability_score
        from torchvision.ops import batched_nms

        if options.points_per_side <= 0:
            return []
        threshold = self.predictor.model.mask_threshold
        xy = build_point_grid(options.points_per_side) * np.array(size[::-1])
        candidates: list[Mask] = []
        for start in range(0, len(xy), options.points_per_batch):
            logits, iou, up = self._decode(xy[start : start + options.points_per_batch])
            logits, iou = logits.flatten(0, 1), iou.flatten()
            stability = calculate_stability_score(logits, threshold, 1.0)  # on the low-res logits: 16x fewer pixels
            keep = (iou > options.pred_iou_thresh) & (stability > options.stability_thresh)
            quality = (iou * stability)[keep]
            candidates += up.masks(logits[keep], quality, np.zeros(len(quality), dtype=int), threshold)
        if not candidates:
            return []
        boxes = torch.tensor([(m.x0, m.y0, m.box[3] - 1, m.box[2] - 1) for m in candidates], dtype=torch.float32)
        scores = torch.tensor([m.quality for m in candidates])
        keep = batched_nms(boxes, scores, torch.zeros(len(boxes)), iou_threshold=0.7)  # SAM's own dedupe
        return [candidates[i] for i in keep.tolist()]

    def _prompted_masks(self, points: np.ndarray, options: InstanceOptions) -> list[Mask]:
        from segment_anything.utils.amg import calculate_stability_score

        threshold = self.predictor.model.mask_threshold
        out: list[Mask] = []
        for start in range(0, len(points), options.points_per_batch):
            batch = points[start : start + options.points_per_batch]
            logits, iou, up = self._decode(batch[:, :2])
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best))
            logits, iou = logits[rows, best], iou[rows, best]
            quality = iou * calculate_stability_score(logits, threshold, 1.0)
            out += up.masks(logits, quality, batch[:, 2].astype(int), threshold)
        return out


@dataclass(frozen=True)
class _Axis:
    """One axis of SAM's ``postprocess_masks`` (bilinear to the padded square, crop, bilinear to the tile) as
    a banded linear map: each tile pixel is a weighted sum of at most K consecutive low-res pixels."""

    index: torch.Tensor  # (n, K) the low-res pixels each tile pixel reads
    weight: torch.Tensor  # (n, K) their weights (0 past the band)
    reach: np.ndarray  # (L, 2) the tile pixels [first, last + 1) each low-res pixel contributes to

    @property
    def low(self) -> int:
        """L: the low-res pixels of the unpadded part (the rest lie in SAM's padding)."""
        return len(self.reach)


@lru_cache(maxsize=32)
def _axis(n_in: int, n_out: int, padded: int, low: int, device: str) -> _Axis:
    """The axis SAM resized from ``n_out`` tile pixels to ``n_in`` inside a ``padded`` side, read from
    ``low`` decoder pixels; tensors on ``device``."""
    dense = (_resize_matrix(n_in, n_out) @ _resize_matrix(low, padded)[:n_in]).numpy()  # (n_out, low)
    nonzero = dense > 0
    first, last = nonzero.argmax(1), low - nonzero[:, ::-1].argmax(1)
    used = int(last.max())
    band = int((last - first).max())
    index = first[:, None] + np.arange(band)
    weight = np.where(index < last[:, None], np.take_along_axis(dense, np.minimum(index, low - 1), 1), 0.0)
    index = np.minimum(index, used - 1)
    hit = nonzero[:, :used]  # a low-res pixel no tile pixel reads (SAM shrank the tile) reaches all of them: safe
    reach = np.stack([hit.argmax(0), n_out - hit[::-1].argmax(0)], axis=1)
    reach[~hit.any(0)] = (0, n_out)
    return _Axis(torch.from_numpy(index).to(device), torch.from_numpy(weight).float().to(device), reach)


def _resize_matrix(n: int, m: int) -> torch.Tensor:
    """(m, n) weights of ``F.interpolate(mode="bilinear", align_corners=False)`` from n to m samples along one axis."""
    return F.interpolate(torch.eye(n)[None], size=m, mode="linear", align_corners=False)[0].T


@dataclass(frozen=True)
class _Upsampler:
    """Low-res decoder logits to tile pixels, one mask at a time and only inside its box."""

    rows: _Axis
    cols: _Axis

    def masks(self, logits: torch.Tensor, quality: torch.Tensor, hints: np.ndarray, threshold: float) -> list[Mask]:
        """logits (N, Lh, Lw), quality (N,), class hints (N,) -> the non-empty masks in tile pixels."""
        from segment_anything.utils.amg import batched_mask_to_box

        low = logits > threshold
        present = low.flatten(1).any(1)
        logits, low = logits[present], low[present]
        qualities, kept_hints = quality[present].tolist(), hints[present.cpu().numpy()].tolist()
        out = []
        for i, (c0, r0, c1, r1) in enumerate(batched_mask_to_box(low).tolist()):
            # bilinear weights are non-negative: tile pixels outside the reach of the low-res box stay below threshold
            y0, y1 = self.rows.reach[r0, 0], self.rows.reach[r1, 1]
            x0, x1 = self.cols.reach[c0, 0], self.cols.reach[c1, 1]
            crop = self._window(logits[i], slice(y0, y1), slice(x0, x1)) > threshold
            if crop.any():
                m = crop_mask(crop.cpu().numpy(), qualities[i], kept_hints[i])
                out.append(Mask(m.crop, m.y0 + int(y0), m.x0 + int(x0), m.quality, hint=m.hint))
        return out

    def _window(self, logits: torch.Tensor, ys: slice, xs: slice) -> torch.Tensor:
        """logits (Lh, Lw) -> full-resolution logits (h, w) of the tile window ``ys``, ``xs``."""
        # both passes gather whole rows (contiguous copies): ~8x faster than gathering columns
        rows = (logits[self.rows.index[ys]] * self.rows.weight[ys, :, None]).sum(1)  # (h, Lw)
        return (rows.T.contiguous()[self.cols.index[xs]] * self.cols.weight[xs, :, None]).sum(1).T  # (h, w)


def _upsampler(
    input_size: tuple[int, int], original_size: tuple[int, int], padded: int, low: int, device: str
) -> _Upsampler:
    """The upsampler of a tile whose longest side SAM resized to ``input_size`` in a ``padded`` square,
    from ``low`` x ``low`` decoder logits on ``device``."""
    sizes = zip(input_size, original_size, strict=True)
    return _Upsampler(*(_axis(n_in, n_out, padded, low, device) for n_in, n_out in sizes))
