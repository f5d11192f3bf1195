"""SegEarth-OV's dense CLIP image encoder (seed 003, section 4 "Baseline").

The ViT runs unchanged up to its last block. The last block is replaced by
self-self attention on ``ln_1(x)``, per head with scale ``head_dim ** -0.5``::

    A = softmax(s q q^T) + softmax(s k k^T) + softmax(s v v^T)     (a sum, eq. 10)
    out = out_proj(A v)

with no residual connection and no FFN. ``ln_post`` and ``proj`` then map every
token, [CLS] included, into the joint image-text space. Positional embeddings
are resized bicubically for windows other than the model's native size.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn


class DenseEncoder(Protocol):
    """What the predictor needs from an image encoder (CLIP, or a test oracle)."""

    patch_size: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W), normalised -> patch features (B, C, H/p, W/p), [CLS] feature (B, C)."""
        ...

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 224, 224), normalised -> the plain CLIP image embedding (B, C), for object crops."""
        ...


def self_self_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SegEarth-OV's modified last block. x (B, L, D) -> (B, L, D); no residual, no FFN."""
    attn = cast(nn.MultiheadAttention, block.attn)
    heads = attn.num_heads
    b, length, dim = x.shape
    qkv = F.linear(cast(nn.Module, block.ln_1)(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(b, length, heads, dim // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    # scaled_dot_product_attention(t, t, v) == softmax(t t^T / sqrt(head_dim)) v, the scale of eq. 10.
    out = cast(torch.Tensor, sum(F.scaled_dot_product_attention(t, t, v) for t in (q, k, v)))
    return attn.out_proj(out.transpose(1, 2).reshape(b, length, dim))


def resize_positional_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """pos (1 + n*n, D) learned for an n x n grid -> (1 + gh*gw, D), patch part resized bicubically."""
    n = int(round((pos.shape[0] - 1) ** 0.5))
    if (n, n) == tuple(grid):
        return pos
    patch = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


class SegEarthCLIP(nn.Module):
    """Wraps an open_clip ``CLIP`` model; ``forward`` gives dense patch features and the [CLS] feature."""

    def __init__(
        self, clip_model: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        super().__init__()
        visual: Any = clip_model.visual  # open_clip's VisionTransformer (untyped attributes)
        self.visual = visual
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "conv1"):
            raise ValueError("SegEarth-OV needs a plain CLIP ViT image tower (conv patch embedding, [CLS] token).")
        self.patch_size: int = visual.conv1.kernel_size[0]
        self.embed_dim: int = visual.proj.shape[1]
        self.mean, self.std = mean, std

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 224, 224), normalised -> the unmodified CLIP image embedding (B, C)."""
        return self.visual(images.to(self.visual.conv1.weight.dtype))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W), H and W multiples of the patch size -> ((B, C, H/p, W/p), (B, C))."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resize_positional_embedding(v.positional_embedding, grid).to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        x = x if batch_first else x.transpose(0, 1)
        x = self_self_attention(blocks[-1], x)
        x = v.ln_post(x) @ v.proj
        patches = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return patches, x[:, 0]
