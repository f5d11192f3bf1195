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


# SAM 3 oracle: prompt word -> (the colour whose regions it finds, the score it gives them)
CONCEPTS = {"roof": ("red", 0.9), "house": ("red", 0.8), "pool": ("blue", 0.7), "car": ("yellow", 0.2)}


class OracleConcepts:
    """SAM 3 stand-in: a prompt finds the 4-connected regions of its colour in the tile (cut by the tile),
    each scored as ``CONCEPTS`` says; it records the prompts and tile keys it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []  # (tile key, prompt texts)

    def check_prompts(self, prompts) -> None:
        pass

    def detect(self, tile, key, prompts, threshold, precision="fp32", progress=None):
        import numpy as np
        from scipy import ndimage

        from rsov.instance.concepts import TileDetections
        from rsov.instance.masks import crop_mask

        self.calls.append((key, tuple(p.text for p in prompts)))
        found = TileDetections()
        for prompt in prompts:
            colour, score = CONCEPTS.get(prompt.text, (None, 0.0))
            if colour is None:
                continue
            regions, count = ndimage.label((tile == np.array(PALETTE[colour][0])).all(-1))
            for k in range(1, count + 1):
                if score > threshold:
                    found.masks.append(crop_mask(regions == k, score, prompt.class_id))
                else:
                    found.below_threshold += 1
        return found


def oracle_concept_engine(detector=None) -> Engine:
    text = OracleText()
    detector = detector or OracleConcepts()
    return Engine(OracleEncoder(), lambda templates: text, name="oracle", detector_factory=lambda: detector)
