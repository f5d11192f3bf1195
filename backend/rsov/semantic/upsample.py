"""Feature upsampling: CLIP patch features (1/16 resolution) back to image resolution.

SegEarth-OV upsamples CLIP ViT-B/16 patch features with a learned joint-bilateral upsampler
(JBU) guided by the image window. This module implements FeatUp's "JBUStack" (four stacked,
independently trained 2x JBU stages plus a residual 1x1 refinement) so that FeatUp's published
CLIP checkpoint can be loaded; the fallback (``bilinear``) is the paper's resize of the logits.

Every upsampler is called as ``upsampler(source, guidance)``:

- ``source``: (B, C, h, w) patch features;
- ``guidance``: (B, 3, H, W) the CLIP-normalised image window;
- returns (B, C, H, W) features in ``source``'s dtype.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = [
    "JBUStack",
    "JBUStage",
    "build_upsampler",
    "load_jbu_upsampler",
]

# Elements of one channel chunk of the adaptive convolution: small enough to stay in a CPU's
# cache across the kernel taps, large enough that a GPU is not dominated by launch overhead.
_CHUNK_ELEMENTS = 1 << 20


def _pad(x: Tensor, radius: int) -> Tensor:
    """Reflect-pad the last two dims by ``radius``; replicate when a side is too short to reflect."""
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    return F.pad(x, [radius] * 4, mode=mode)


class JBUStage(nn.Module):
    """One learned joint-bilateral upsampling stage (FeatUp's JBU with a learned range kernel).

    Every output pixel is a weighted sum over the ``(2r+1)^2`` neighbourhood of the source after
    a bicubic resize to the guidance size. The weights are the product of a Gaussian spatial
    kernel and a softmax range kernel computed from an MLP embedding of the guidance, normalised,
    then corrected by a small learned residual ("fixup") computed from the kernel and guidance.
    The result is linear in ``source``.
    """

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3) -> None:
        super().__init__()
        self.radius = radius
        taps = (2 * radius + 1) ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        # Layer order (and so state_dict indices 0 and 3) matches FeatUp's checkpoints.
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1),
        )

    def _offsets(self) -> list[tuple[int, int]]:
        """Kernel taps (row, col) in the row-major order of the kernel's channels."""
        diameter = 2 * self.radius + 1
        return [(i, j) for i in range(diameter) for j in range(diameter)]

    def kernel(self, guidance: Tensor) -> Tensor:
        """(B, G, H, W) guidance -> (B, (2r+1)^2, H, W) per-pixel weights, tap p = row * (2r+1) + col."""
        height, width = guidance.shape[-2:]
        r = self.radius
        diameter = 2 * r + 1

        proj = self.range_proj(guidance)
        padded = _pad(proj, r)
        # Range logits tap by tap: an unfold of the 32-channel embedding would be 49x its size.
        logits = torch.stack(
            [(proj * padded[:, :, i : i + height, j : j + width]).sum(1) for i, j in self._offsets()],
            dim=1,
        )
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        range_kernel = torch.softmax(temperature * logits, dim=1)

        grid = torch.linspace(-1.0, 1.0, diameter, device=guidance.device, dtype=guidance.dtype)
        dist2 = (grid[:, None] ** 2 + grid[None, :] ** 2).reshape(1, -1, 1, 1)
        spatial_kernel = torch.exp(-dist2 / (2 * self.sigma_spatial**2))

        combined = range_kernel * spatial_kernel
        combined = combined / combined.sum(1, keepdim=True).clamp_min(1e-7)
        return combined + 0.1 * self.fixup_proj(torch.cat([combined, guidance], dim=1))

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """(B, C, h, w) features, (B, G, H, W) guidance at the target size -> (B, C, H, W).

        The kernel is computed in the parameters' dtype, the weighted sum in at least float32
        (a 49-tap sum in bfloat16 loses about 3% of the signal); the result has ``source``'s dtype.
        """
        height, width = guidance.shape[-2:]
        param_dtype = self.range_temp.dtype
        compute_dtype = torch.promote_types(param_dtype, torch.float32)
        weights = self.kernel(guidance.to(param_dtype)).to(compute_dtype)
        batch, channels = source.shape[:2]
        out = source.new_empty(batch, channels, height, width)
        # Per-pixel ("adaptive") convolution, accumulated tap by tap over channel chunks so that
        # neither a (B, C, H, W, taps) tensor nor a full padded copy of the features is made.
        chunk = max(1, _CHUNK_ELEMENTS // (batch * height * width))
        for start in range(0, channels, chunk):
            part = source[:, start : start + chunk].to(compute_dtype)
            part = _pad(F.interpolate(part, size=(height, width), mode="bicubic", align_corners=False), self.radius)
            acc = part.new_zeros(batch, part.shape[1], height, width)
            for tap, (i, j) in enumerate(self._offsets()):
                acc.addcmul_(part[:, :, i : i + height, j : j + width], weights[:, tap : tap + 1])
            out[:, start : start + chunk] = acc
        return out


class JBUStack(nn.Module):
    """FeatUp's JBUStack: four 2x JBU stages (16x in all) and a residual 1x1 refinement.

    For a guidance of exactly 16x the source size the stages run at 2x, 4x, 8x and 16x the
    source size, as trained. For other sizes (e.g. windows clamped at a raster edge) the total
    ratio is spread evenly over the four stages and the last stage runs at the guidance size, so
    the output always has exactly the guidance's (H, W).
    """

    def __init__(self, feat_dim: int, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.up1 = JBUStage(guidance_dim, key_dim, radius)
        self.up2 = JBUStage(guidance_dim, key_dim, radius)
        self.up3 = JBUStage(guidance_dim, key_dim, radius)
        self.up4 = JBUStage(guidance_dim, key_dim, radius)
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, 1))

    @staticmethod
    def stage_sizes(source_size: tuple[int, int], target_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Output (height, width) of each of the four stages; the last one is ``target_size``."""
        (h, w), (height, width) = source_size, target_size
        sizes = [
            (max(1, round(h * (height / h) ** (k / 4))), max(1, round(w * (width / w) ** (k / 4)))) for k in (1, 2, 3)
        ]
        return [*sizes, (height, width)]

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        """(B, C, h, w) features, (B, 3, H, W) guidance -> (B, C, H, W) features."""
        if source.shape[1] != self.feat_dim:
            # A checkpoint trained for another backbone (e.g. a 768-wide ViT-L) is a user mistake.
            raise InputError(
                f"The upsampler checkpoint is for {self.feat_dim}-channel features "
                f"but the model gives {source.shape[1]}-channel features."
            )
        x = source
        h, w = source.shape[-2:]
        height, width = guidance.shape[-2:]
        sizes = self.stage_sizes((h, w), (height, width))
        for stage, size in zip((self.up1, self.up2, self.up3, self.up4), sizes, strict=True):
            x = stage(x, F.adaptive_avg_pool2d(guidance, size))
        weight_dtype = cast(nn.Conv2d, self.fixup_proj[1]).weight.dtype
        return x + 0.1 * self.fixup_proj(x.to(weight_dtype)).to(x.dtype)


def _unwrap_state_dict(raw: object) -> dict[str, Tensor]:
    """Tensor entries of a Lightning checkpoint's ``upsampler.`` part, or of a plain state_dict."""
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        return {}
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    prefix = "upsampler."
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def load_jbu_upsampler(path: str | os.PathLike[str]) -> JBUStack:
    """Load FeatUp's JBUStack from a Lightning checkpoint or a plain state_dict file.

    The feature width, embedding width and kernel radius are read from the weights. The model is
    returned in eval mode (its dropout layers off) with gradients disabled.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"Upsampler checkpoint not found: {path}. Download FeatUp's CLIP JBU checkpoint "
            "(FeatUp's JBUStack for CLIP ViT-B/16) and pass its path with --upsampler-checkpoint."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        raise InputError(f"Upsampler checkpoint {path} is not a readable PyTorch checkpoint ({exc}).") from exc
    state = _unwrap_state_dict(raw)

    required = ("fixup_proj.1.weight", "up1.range_proj.0.weight", "up1.fixup_proj.3.weight")
    if all(k in state for k in required):
        feat_dim = state["fixup_proj.1.weight"].shape[0]
        key_dim, guidance_dim = state["up1.range_proj.0.weight"].shape[:2]
        radius = (math.isqrt(state["up1.fixup_proj.3.weight"].shape[0]) - 1) // 2
        model = JBUStack(feat_dim, guidance_dim=guidance_dim, key_dim=key_dim, radius=radius)
    else:
        model = JBUStack(512)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise InputError(f"Upsampler checkpoint {path} is not a FeatUp JBUStack checkpoint: {'; '.join(problems)}.")

    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def build_upsampler(kind: str, checkpoint: str | os.PathLike[str] | None = None) -> nn.Module | None:
    """The upsampler named by ``kind``: ``"jbu"`` (needs ``checkpoint``), or None for ``"bilinear"``.

    Bilinear is the paper's own default: the predictor then resizes the patch-grid logits
    bilinearly to the window, so no feature upsampler runs at all.
    """
    if kind == "bilinear":
        return None
    if kind == "jbu":
        if checkpoint is None:
            raise InputError("The jbu upsampler needs its weights: pass --upsampler-checkpoint PATH.")
        return load_jbu_upsampler(checkpoint)
    raise InputError(f"Unknown upsampler {kind!r}: use 'bilinear' or 'jbu'.")
