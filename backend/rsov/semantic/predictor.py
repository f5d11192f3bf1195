"""The engine: encode an image once, score any vocabulary against it many times.

Shaped like segment-anything's ``SamPredictor``: ``set_image`` runs the
expensive part (resize, sliding windows through the dense CLIP encoder,
optional rotation ensemble and feature upsampling) and keeps class-independent
features per window; ``query_logits`` / ``predict`` score a vocabulary against
them (SegEarth-OV, seed 003):

    logit[q, i] = cos(f_i, t_q) - lambda * cos(f_cls, t_q)     per window,
    averaged where windows overlap, bilinearly resized to the input size,
    softmax(50 * logit) over queries, max over a class's synonyms, argmax,
    and pixels whose best probability is below a threshold go to background.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CancelledError, InputError
from ..grid import window_starts
from .encoder import DenseEncoder
from .text import TextEmbedder
from .vocabulary import Vocabulary

ProgressFn = Callable[[int, int], None]  # (windows done, windows in all)
CancelFn = Callable[[], bool]
PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # "fast" is resolved per machine (precision.py)


@dataclass(frozen=True)
class FeatureOptions:
    """Everything that changes the image features (and so keys a feature cache)."""

    window: int = 224
    stride: int = 112
    long_side: int | None = None  # the paper's per-extent rule: resize the extent to this long side...
    resolution_m: float | None = None  # ...else this ground resolution (default: from the raster, see grid)
    max_working_side: int = 4096  # in-memory images (set_image) only: beyond this their dense maps stop fitting
    rotations: tuple[int, ...] = (0,)  # AerOSeg rotation ensemble, degrees (multiples of 90)
    precision: str = "fp32"
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.window < 16 or not 0 < self.stride <= self.window:
            raise InputError(
                f"Window {self.window} and stride {self.stride} must satisfy 0 < stride <= window, window >= 16."
            )
        if any(r % 90 for r in self.rotations) or not self.rotations:
            raise InputError(f"Rotations must be multiples of 90 degrees, got {self.rotations}.")
        if self.precision not in PRECISIONS:
            raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.")
        if self.resolution_m is not None and not (math.isfinite(self.resolution_m) and self.resolution_m > 0):
            raise InputError(f"Resolution must be a positive number of metres per pixel, got {self.resolution_m}.")
        if self.long_side is not None and self.long_side < 16:
            raise InputError(f"The long side must be at least 16 px, got {self.long_side}.")


@dataclass(frozen=True)
class ScoreOptions:
    """Cheap options, applied when scoring kept features against a vocabulary."""

    threshold: float = 0.3
    cls_lambda: float = 0.3  # global-bias subtraction (seed 003 eq. 9)
    logit_scale: float = 50.0
    dec_keep: float | None = None  # ZoRI DEC: fraction of embedding channels kept (300/768 in the paper)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"Threshold must be between 0 and 1, got {self.threshold}.")
        if self.dec_keep is not None and not 0.0 < self.dec_keep <= 1.0:
            raise InputError(f"DEC keep fraction must be in (0, 1], got {self.dec_keep}.")


@dataclass
class ImageFeatures:
    """Class-independent features of one image, per sliding window."""

    input_size: tuple[int, int]  # (H, W) of the image given to set_image
    working_size: tuple[int, int]  # (Hw, Ww) the windows tile
    windows: list[tuple[int, int, int, int]]  # (y0, x0, y1, x1) in working pixels
    patches: list[torch.Tensor]  # per window (C, h, w), unit L2 norm over C; h, w = window (upsampled) or grid
    cls: torch.Tensor  # (N, C) unit-norm [CLS] features
    patch_size: int
    options: FeatureOptions
    # where the image lies on the working pixels, (y0, x0, y1, x1); None: it spans them exactly
    # (set_image). Features gathered from a raster's grid cover a little more than the image.
    input_box: tuple[float, float, float, float] | None = None

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.patches) + self.cls.numel() * self.cls.element_size()


@dataclass
class Prediction:
    """A scored image at input resolution."""

    class_map: np.ndarray  # (H, W) int16, 0 = background, k = vocabulary.classes[k - 1]
    score_map: np.ndarray  # (H, W) float32, probability of the winning class
    class_names: list[str] = field(default_factory=list)


def working_size(size: tuple[int, int], options: FeatureOptions, pixel_size_m: float | None) -> tuple[int, int]:
    """Resize keeping the aspect ratio (rounded like mmcv): long side, or ground resolution when given."""
    h, w = size
    if options.resolution_m is not None:
        if not pixel_size_m:
            raise InputError("A ground resolution needs a georeferenced raster (its pixel size is unknown).")
        scale = pixel_size_m / options.resolution_m
    else:
        scale = (options.long_side or 448) / max(h, w)
    out = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    if max(out) > options.max_working_side:
        raise InputError(
            f"The extent is {max(out)} px at the working resolution, over the limit of {options.max_working_side}: "
            "choose a coarser resolution or a smaller extent."
        )
    return out


def sliding_windows(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg-style slide: a grid of windows, the last one in each direction clamped to the edge."""
    return [
        (y, x, min(y + window, height), min(x + window, width))
        for y in window_starts(height, window, stride)
        for x in window_starts(width, window, stride)
    ]


def bilinear_matrix(out_n: int, in_n: int) -> torch.Tensor:
    """(out_n, in_n) weights equal to torch's bilinear resize (align_corners=False) along one axis."""
    scale = torch.tensor(in_n / out_n, dtype=torch.float32)  # float32 index maths, as torch does
    pos = ((torch.arange(out_n, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    lo = pos.floor().long().clamp(max=in_n - 1)
    hi = (lo + 1).clamp(max=in_n - 1)
    frac = pos - lo
    m = torch.zeros(out_n, in_n)
    m[torch.arange(out_n), lo] += 1 - frac
    m[torch.arange(out_n), hi] += frac
    return m


def dec_channels(text: torch.Tensor, keep: float, lam: float = 0.7) -> torch.Tensor:
    """ZoRI's discrimination-enhanced channels: text (Q, C) unit-norm -> indices of the kept channels.

    O = -lam * S + (1 - lam) * V, S the mean pairwise product across classes, V the variance.
    """
    q = text.shape[0]
    if q < 2:
        return torch.arange(text.shape[1])
    total = text.sum(0)
    s = (total**2 - (text**2).sum(0)) / (q * (q - 1))
    v = text.var(0, unbiased=False)
    k = max(1, round(keep * text.shape[1]))
    return torch.topk(-lam * s + (1 - lam) * v, k).indices.sort().values


def _quantized(encoder: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``encoder`` with int8 dynamic quantization of its Linear layers (CPU only)."""
    if device.type != "cpu":
        raise InputError("int8 runs on the CPU only; on a GPU use fp16 (or fast).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization, superseded by torchao
        warnings.simplefilter("ignore", UserWarning)  # ...and its quantized tensors, said as a UserWarning
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8)


class Predictor:
    """Keeps the features of one image (``set_image``) and scores vocabularies against them."""

    def __init__(
        self,
        encoder: DenseEncoder,
        text: TextEmbedder,
        upsampler: nn.Module | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.encoder = encoder
        self.text = text
        self.upsampler = upsampler
        self.device = torch.device(device)
        self.features: ImageFeatures | None = None
        self._cast: dict[str, tuple[DenseEncoder, nn.Module | None]] = {}

    def _models(self, precision: str) -> tuple[DenseEncoder, nn.Module | None]:
        """Encoder and upsampler in ``precision``, cast once and kept.

        Casting the weights beats autocast: on CPUs, bf16 autocast over frozen weights ran
        ~15x slower than fp32 here, while bf16 weights ran ~2.4x faster.
        """
        if precision == "fp32" or not isinstance(self.encoder, nn.Module):
            return self.encoder, self.upsampler
        if precision not in self._cast:
            # a copy of a DenseEncoder module (cast or quantized) is still one
            if precision == "int8":
                self._cast[precision] = (cast(DenseEncoder, _quantized(self.encoder, self.device)), self.upsampler)
            else:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float16
                up = copy.deepcopy(self.upsampler).to(dtype) if self.upsampler is not None else None
                self._cast[precision] = (cast(DenseEncoder, copy.deepcopy(self.encoder).to(dtype)), up)
        return self._cast[precision]

    # ---- image side -------------------------------------------------------------------------

    def prepare(self, image: np.ndarray, options: FeatureOptions, pixel_size_m: float | None = None) -> torch.Tensor:
        """uint8 (H, W, 3) -> normalised float (1, 3, Hw, Ww) at the working size (bilinear on 0-255 RGB)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"Expected an RGB image of shape (H, W, 3), got {image.shape}.")
        size = working_size(image.shape[:2], options, pixel_size_m)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, torch.float32).permute(2, 0, 1)[None]
        if size != image.shape[:2]:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.encoder.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.encoder.std, device=self.device).view(1, 3, 1, 1) * 255
        return (x - mean) / std

    @torch.inference_mode()
    def set_image(
        self,
        image: np.ndarray,
        options: FeatureOptions = FeatureOptions(),
        pixel_size_m: float | None = None,
        progress: ProgressFn | None = None,
        cancelled: CancelFn | None = None,
    ) -> ImageFeatures:
        """Run the dense encoder over sliding windows of ``image`` (H, W, 3) uint8 and keep the features."""
        x = self.prepare(image, options, pixel_size_m)
        height, width = x.shape[-2:]
        # Windows of one shape batch together; edge windows of small images may differ.
        windows = [
            w
            for group in _same_shape_groups(sliding_windows(height, width, options.window, options.stride))
            for w in group
        ]
        patches: list[torch.Tensor] = []
        cls: list[torch.Tensor] = []
        while len(patches) < len(windows):
            if cancelled is not None and cancelled():
                raise CancelledError("The job was cancelled.")
            first = windows[len(patches)]
            shape = (first[2] - first[0], first[3] - first[1])
            batch = [
                w
                for w in windows[len(patches) : len(patches) + options.batch_size]
                if (w[2] - w[0], w[3] - w[1]) == shape
            ]
            crops = torch.cat([x[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in batch])
            feats, tokens = self.encode(crops, options)
            patches += feats
            cls.append(tokens)
            if progress is not None:
                progress(len(patches), len(windows))
        self.features = ImageFeatures(
            input_size=tuple(image.shape[:2]),
            working_size=(height, width),
            windows=windows,
            patches=patches,
            cls=torch.cat(cls),
            patch_size=self.encoder.patch_size,
            options=options,
        )
        return self.features

    def encode(self, crops: torch.Tensor, options: FeatureOptions) -> tuple[list[torch.Tensor], torch.Tensor]:
        """crops (B, 3, h, w) -> per crop (C, h', w') unit-norm features, (B, C) unit-norm [CLS]."""
        encoder, upsampler = self._models(options.precision)
        h, w = crops.shape[-2:]
        top, left = _centred_padding(h, self.encoder.patch_size), _centred_padding(w, self.encoder.patch_size)
        # SegEarth-OV pads crops to a multiple of the patch size with zeros (the mean colour), split evenly.
        padded = F.pad(crops, (left[0], left[1], top[0], top[1]))
        feats_sum: torch.Tensor | None = None
        tokens_sum: torch.Tensor | None = None
        for degrees in options.rotations:
            k = (degrees // 90) % 4
            f, t = encoder(torch.rot90(padded, k, dims=(2, 3)))
            f = torch.rot90(f, -k, dims=(2, 3))
            feats_sum = f if feats_sum is None else feats_sum + f
            tokens_sum = t if tokens_sum is None else tokens_sum + t
        if feats_sum is None or tokens_sum is None:
            raise InputError("Give at least one rotation.")  # FeatureOptions refuses none already
        feats, tokens = feats_sum / len(options.rotations), tokens_sum / len(options.rotations)
        if upsampler is not None:
            feats = upsampler(feats, padded.to(feats.dtype))[:, :, top[0] : top[0] + h, left[0] : left[0] + w]
        store = torch.float32 if options.precision == "fp32" else feats.dtype
        feats = F.normalize(feats.float(), dim=1).to(store)
        return list(feats), F.normalize(tokens.float(), dim=-1)

    # ---- scoring side -----------------------------------------------------------------------

    def _require_features(self) -> ImageFeatures:
        if self.features is None:
            raise RuntimeError("Call set_image (or set_features) before scoring.")
        return self.features

    def set_features(self, features: ImageFeatures) -> None:
        """Reuse features computed earlier (e.g. kept in a cache) instead of running set_image."""
        self.features = features

    @torch.inference_mode()
    def query_logits(self, queries: list[str], options: ScoreOptions = ScoreOptions()) -> torch.Tensor:
        """Per-query logits before the x50 softmax, averaged over windows: (Q, Hw, Ww) at working size."""
        feats = self._require_features()
        text, cls, keep = scoring_vectors(self.text.embed(queries).to(self.device), feats.cls.to(self.device), options)
        height, width = feats.working_size
        total = torch.zeros(len(queries), height, width, device=self.device)
        count = torch.zeros(1, height, width, device=self.device)
        bias = options.cls_lambda * (cls @ text.T)  # (N, Q)
        for i, (y0, x0, y1, x1) in enumerate(feats.windows):
            total[:, y0:y1, x0:x1] += window_logits(
                feats.patches[i].to(self.device), text, bias[i], (y1 - y0, x1 - x0), feats.patch_size, keep
            )
            count[:, y0:y1, x0:x1] += 1
        return total / count

    @torch.inference_mode()
    def pool(self, masks: torch.Tensor) -> torch.Tensor:
        """Mask-pooled features: masks (M, Hw, Ww) weights in [0, 1] at the WORKING size -> (M, C) unit norm.

        Each window contributes its features weighted by the mask's cover of each patch
        (or pixel, when features were upsampled); overlapping windows average out.
        """
        feats = self._require_features()
        masks = masks.to(self.device, torch.float32)
        total = torch.zeros(masks.shape[0], feats.cls.shape[1], device=self.device)
        weight = torch.zeros(masks.shape[0], 1, device=self.device)
        p = feats.patch_size
        for (y0, x0, y1, x1), f in zip(feats.windows, feats.patches, strict=True):
            crop = masks[:, y0:y1, x0:x1]
            if f.shape[-2:] != crop.shape[-2:]:  # patch-grid features: mask cover per padded patch
                top, left = _centred_padding(y1 - y0, p), _centred_padding(x1 - x0, p)
                crop = F.avg_pool2d(F.pad(crop, (left[0], left[1], top[0], top[1]))[None], p)[0] * (p * p)
            total += torch.einsum("mhw,chw->mc", crop, f.to(self.device, torch.float32))
            weight += crop.sum(dim=(1, 2))[:, None]
        return F.normalize(total / weight.clamp_min(1e-6), dim=-1)

    @torch.inference_mode()
    def predict(
        self,
        vocabulary: Vocabulary,
        options: ScoreOptions = ScoreOptions(),
        valid: np.ndarray | None = None,
        rows_per_chunk: int = 256,
    ) -> Prediction:
        """Class map and score map at the input size. valid (H, W) bool marks pixels that may get a class."""
        feats = self._require_features()
        queries, owners = vocabulary.queries()
        logits = self.query_logits(queries, options)
        height, width = feats.input_size
        ry = bilinear_matrix(height, logits.shape[1]).to(self.device)
        rx = bilinear_matrix(width, logits.shape[2]).to(self.device)
        owner = torch.tensor(owners, device=self.device)
        n_classes = len(vocabulary.classes) + 1
        class_map = np.zeros((height, width), dtype=np.int16)
        score_map = np.zeros((height, width), dtype=np.float32)
        cols = torch.einsum("qhw,xw->qhx", logits, rx)  # (Q, Hw, W): resize columns once
        for r0 in range(0, height, rows_per_chunk):
            rows = torch.einsum("yh,qhx->qyx", ry[r0 : r0 + rows_per_chunk], cols)  # (Q, r, W)
            label, best = classify_logits(rows, owner, n_classes, options)
            class_map[r0 : r0 + rows.shape[1]] = label.cpu().numpy()
            score_map[r0 : r0 + rows.shape[1]] = best.cpu().numpy()
        if valid is not None:
            class_map[~valid] = 0
            score_map[~valid] = 0.0
        return Prediction(class_map, score_map, vocabulary.names)


def scoring_vectors(
    text: torch.Tensor, cls: torch.Tensor, options: ScoreOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Text (Q, C) and [CLS] (N, C) restricted to ZoRI's DEC channels when asked, and the kept channels."""
    if options.dec_keep is None:
        return text, cls, None
    keep = dec_channels(text, options.dec_keep)
    return F.normalize(text[:, keep], dim=-1), F.normalize(cls[:, keep], dim=-1), keep


def window_logits(
    f: torch.Tensor,
    text: torch.Tensor,
    bias: torch.Tensor,
    size: tuple[int, int],
    patch_size: int,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """One window's logits: features f (C, h', w') unit-norm, text (Q, C), bias (Q,) -> (Q, h, w) at the crop size.

    Patch-grid features are resized to the padded crop, then the padding is dropped.
    """
    f = f.float()
    if keep is not None:
        f = F.normalize(f[keep], dim=0)
    logits = torch.einsum("chw,qc->qhw", f, text) - bias.view(-1, 1, 1)
    h, w = size
    if logits.shape[-2:] != (h, w):
        top, left = _centred_padding(h, patch_size)[0], _centred_padding(w, patch_size)[0]
        padded = (logits.shape[-2] * patch_size, logits.shape[-1] * patch_size)
        logits = F.interpolate(logits[None], size=padded, mode="bilinear", align_corners=False)[0]
        logits = logits[:, top : top + h, left : left + w]
    return logits


def classify_logits(
    logits: torch.Tensor, owner: torch.Tensor, n_classes: int, options: ScoreOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (Q, ...) -> class ids and winning probabilities (...), background under the threshold."""
    return best_class(class_probabilities(logits, owner, n_classes, options), options)


def class_probabilities(
    logits: torch.Tensor, owner: torch.Tensor, n_classes: int, options: ScoreOptions
) -> torch.Tensor:
    """Logits (Q, ...) -> (N + 1, ...) class probabilities: softmax(scale x logits) over queries, max over each
    class's synonyms (``owner`` (Q,) class of each query); classes without a query get -1."""
    probs = torch.softmax(options.logit_scale * logits, dim=0)
    per_class = torch.full((n_classes, *probs.shape[1:]), -1.0, device=probs.device)
    index = owner.view(-1, *([1] * (probs.dim() - 1))).expand_as(probs)
    return per_class.scatter_reduce_(0, index, probs, "amax")


def best_class(per_class: torch.Tensor, options: ScoreOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(N + 1, ...) class probabilities -> class ids and their probabilities (...), background under the threshold."""
    best, label = per_class.max(dim=0)
    label[best < options.threshold] = 0
    return label, best


def _centred_padding(n: int, multiple: int) -> tuple[int, int]:
    """Padding (before, after) that brings n to a multiple, split evenly (the extra pixel after)."""
    total = -n % multiple
    return total // 2, total - total // 2


def _same_shape_groups(windows: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    groups: dict[tuple[int, int], list] = {}
    for win in windows:
        groups.setdefault((win[2] - win[0], win[3] - win[1]), []).append(win)
    return list(groups.values())
