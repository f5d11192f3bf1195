"""An oracle encoder and text embedder whose features are known exactly.

Each 16x16 patch's feature is the one-hot vector of the palette colour nearest
to the patch's mean colour; each query word maps to a chosen one-hot vector.
A pipeline that windows, averages, resizes, thresholds and georeferences
correctly must therefore put each class exactly on its colour region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsov.engine import Engine

# colour (0..255 RGB) -> embedding channel
PALETTE = {
    "red": ((220, 30, 30), 0),
    "green": ((30, 200, 40), 1),
    "blue": ((20, 40, 220), 2),
    "grey": ((128, 128, 128), 3),
    "yellow": ((230, 220, 30), 4),
}
# query word -> embedding channel (7 is the "unknown word" channel no colour maps to)
WORDS = {"roof": 0, "tree": 1, "water": 2, "background": 3, "sand": 4}
DIM = 8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class OracleEncoder:
    patch_size = 16
    embed_dim = DIM
    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += images.shape[0]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        rgb = (images.float() * std + mean) * 255
        patch_rgb = F.avg_pool2d(rgb, self.patch_size)  # (B, 3, h, w)
        colours = torch.tensor([c for c, _ in PALETTE.values()], dtype=torch.float32)  # (K, 3)
        channels = torch.tensor([ch for _, ch in PALETTE.values()])
        dist = ((patch_rgb[:, None] - colours[None, :, :, None, None]) ** 2).sum(2)  # (B, K, h, w)
        nearest = channels[dist.argmin(1)]  # (B, h, w)
        feats = F.one_hot(nearest, DIM).permute(0, 3, 1, 2).float()
        return feats, feats.mean(dim=(2, 3))

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[0].mean(dim=(2, 3))


class OracleText:
    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, queries: list[str]) -> torch.Tensor:
        self.embedded += queries
        return F.one_hot(torch.tensor([WORDS.get(q, 7) for q in queries]), DIM).float()


def oracle_engine() -> Engine:
    text = OracleText()
    return Engine(OracleEncoder(), lambda templates: text, name="oracle")


class OracleProposer:
    """Proposals = the 4-connected regions of non-grey colour inside each tile (clipped by the tile)."""

    def __init__(self) -> None:
        self.tiles: list[tuple[int, int]] = []

    def propose(self, tile, key, points, options, precision="fp32", progress=None):
        import numpy as np
        from scipy import ndimage

        from rsov.instance.masks import crop_mask

        self.tiles.append(tile.shape[:2])
        grey = np.array(PALETTE["grey"][0])
        objects = np.abs(tile.astype(int) - grey).sum(-1) > 30
        colours = tile[..., 0].astype(int) * 65536 + tile[..., 1].astype(int) * 256 + tile[..., 2]
        masks = []
        for value in np.unique(colours[objects]):
            regions, count = ndimage.label(objects & (colours == value))
            masks += [crop_mask(regions == k, 0.99) for k in range(1, count + 1)]
        return masks


def oracle_instance_engine(text=None) -> Engine:
    text = text or OracleText()
    proposer = OracleProposer()
    return Engine(OracleEncoder(), lambda templates: text, name="oracle", proposer_factory=lambda: proposer)
