"""Classification of each mask (ZoRI, SCORE), training-free, for any class name.

Dense CLIP features pooled in the mask, optionally fused with its dilated surroundings (SCORE's regional
context), are scored against the text classifier (optionally on ZoRI's DEC channels), plus the exemplar
cache bank (ZoRI's PIP) ``logits + alpha * softmax(s f F^T) L``, optionally ensembled geometrically with a
CLIP embedding of the object cut out on its own. Masks whose best class is background or under a
threshold are dropped ("none of these"); mask NMS across classes removes duplicates.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..semantic.encoder import DenseEncoder
from ..semantic.predictor import Predictor, ScoreOptions, dec_channels
from ..semantic.vocabulary import Vocabulary
from .masks import mask_nms
from .types import ExampleBank, Instance, InstanceOptions, InstanceSummary, Mask


def _working_masks(
    masks: list[Mask],
    shape: tuple[int, int],
    working: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """(M, Hw, Ww) float cover of each mask on the working grid (area-averaged); ``box`` is where the
    image lies on it (default: it spans the grid), placed to the nearest working pixel."""
    full = torch.from_numpy(np.stack([m.paste(shape) for m in masks])).float()[None]
    y0, x0, y1, x1 = (round(v) for v in box) if box is not None else (0, 0, *working)
    size = (max(1, y1 - y0), max(1, x1 - x0))
    if full.shape[-2:] != size:
        full = F.interpolate(full, size=size, mode="bilinear", antialias=True, align_corners=False)
    if (y0, x0, *size) == (0, 0, *working):
        return full[0]
    out = torch.zeros(len(masks), *working)
    ty0, tx0, ty1, tx1 = max(y0, 0), max(x0, 0), min(y0 + size[0], working[0]), min(x0 + size[1], working[1])
    out[:, ty0:ty1, tx0:tx1] = full[0, :, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
    return out


def pooled_features(
    predictor: Predictor, masks: list[Mask], shape: tuple[int, int], options: InstanceOptions, batch: int = 8
) -> torch.Tensor:
    """Mask-pooled dense features (M, C) of masks on a chip of (H, W) = ``shape`` (the image the predictor
    has features of), fused with the regional context when asked (SCORE)."""
    features = predictor._require_features()
    working = features.working_size
    out = []
    for start in range(0, len(masks), batch):
        cover = _working_masks(masks[start : start + batch], shape, working, features.input_box)
        f = predictor.pool(cover)
        if options.context_weight > 0:
            k = 3 + options.context_dilation
            dilated = F.max_pool2d(cover[None], k, stride=1, padding=k // 2)[0][:, : working[0], : working[1]]
            f = F.normalize((1 - options.context_weight) * f + options.context_weight * predictor.pool(dilated), dim=-1)
        out.append(f)
    return torch.cat(out)


def class_probabilities(
    features: torch.Tensor,
    predictor: Predictor,
    vocabulary: Vocabulary,
    scoring: ScoreOptions,
    options: InstanceOptions,
    bank: ExampleBank | None = None,
    crop_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """features (M, C) -> (M, N + 1) class probabilities (column 0: background); ``crop_features`` (M, C)
    are the cut-out embeddings for the ensemble (used when ``crop_weight`` > 0)."""
    queries, owners = vocabulary.queries()
    text = full_text = predictor.text.embed(queries).to(features.device)
    keys = bank.keys.to(features.device) if bank is not None and len(bank) else None
    if scoring.dec_keep is not None:
        keep = dec_channels(text, scoring.dec_keep)
        text, features = F.normalize(text[:, keep], dim=-1), F.normalize(features[:, keep], dim=-1)
        keys = F.normalize(keys[:, keep], dim=-1) if keys is not None else None
    n_classes = len(vocabulary.classes) + 1
    owner = torch.tensor(owners, device=features.device)

    def per_class(cosines: torch.Tensor) -> torch.Tensor:  # (M, Q) -> (M, N + 1), max over synonyms
        out = torch.full((cosines.shape[0], n_classes), -1.0, device=cosines.device)
        return out.scatter_reduce(1, owner.expand_as(cosines), cosines, "amax")

    scale = scoring.logit_scale  # CLIP's temperature, used for every softmax over cosines here
    logits = per_class(features @ text.T)
    if keys is not None and bank is not None:  # ZoRI PIP: affinity to the examples, as a class vote
        affinity = torch.softmax(scale * features @ keys.T, dim=1)
        logits = (
            logits + options.exemplar_alpha * affinity @ F.one_hot(bank.labels.to(features.device), n_classes).float()
        )
    probs = torch.softmax(scale * logits, dim=1)
    if crop_features is not None and options.crop_weight > 0:
        out = torch.softmax(scale * per_class(crop_features @ full_text.T), dim=1)
        probs = probs.pow(1 - options.crop_weight) * out.pow(options.crop_weight)
        probs = probs / probs.sum(dim=1, keepdim=True)
    return probs


def crop_features(
    encoder: DenseEncoder,
    image: np.ndarray,
    masks: list[Mask],
    device: torch.device,
    size: int = 224,
    context: float = 0.2,
) -> torch.Tensor:
    """CLIP embeddings (M, C) of each object cut out of ``image`` (H, W, 3) uint8 on its own: a square window
    ``context`` larger than its box, outside the mask the mean colour, resized to ``size``."""
    mean = torch.tensor(encoder.mean).view(3, 1, 1) * 255
    std = torch.tensor(encoder.std).view(3, 1, 1) * 255
    height, width = image.shape[:2]
    crops = []
    for m in masks:
        y0, x0, y1, x1 = m.box
        side = int(max(y1 - y0, x1 - x0) * (1 + context)) + 1
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        ys, xs = max(cy - side // 2, 0), max(cx - side // 2, 0)
        ye, xe = min(ys + side, height), min(xs + side, width)
        pixels = torch.from_numpy(image[ys:ye, xs:xe]).permute(2, 0, 1).float()
        inside = torch.from_numpy(m.paste((ye - ys, xe - xs), (ys, xs)))  # only the crop window
        pixels = torch.where(inside, (pixels - mean) / std, torch.zeros(()))
        crops.append(F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    with torch.inference_mode():
        out = [encoder.embed_image(torch.stack(crops[i : i + 16]).to(device)) for i in range(0, len(crops), 16)]
    return F.normalize(torch.cat(out).float(), dim=-1)


def classify(
    predictor: Predictor,
    image: np.ndarray,
    masks: list[Mask],
    vocabulary: Vocabulary,
    scoring: ScoreOptions,
    options: InstanceOptions,
    bank: ExampleBank | None = None,
) -> tuple[list[Instance], InstanceSummary]:
    """Give each mask on ``image`` (H, W, 3) uint8 a class and a score; drop background and unsure masks;
    mask NMS across classes. Returns the objects, best first, and where every mask went."""
    if not masks:
        return [], InstanceSummary(0, 0, 0, options.score_threshold, 0)
    shape = image.shape[:2]
    feats = pooled_features(predictor, masks, shape, options)
    crops = crop_features(predictor.encoder, image, masks, predictor.device) if options.crop_weight > 0 else None
    probs = class_probabilities(feats, predictor, vocabulary, scoring, options, bank, crops)
    score, label = probs.max(dim=1)
    keep = [i for i in range(len(masks)) if label[i] > 0 and score[i] >= options.score_threshold]
    order = mask_nms([masks[i] for i in keep], [float(score[i]) for i in keep], options.nms_iou)
    names = vocabulary.names
    background = int((label == 0).sum())
    summary = InstanceSummary(
        len(masks),
        len(order),
        len(masks) - len(keep) - background,
        options.score_threshold,
        background,
        duplicates=len(keep) - len(order),
    )
    return [
        Instance(masks[keep[k]], shape, int(label[keep[k]]), names[int(label[keep[k]]) - 1], float(score[keep[k]]))
        for k in order
    ], summary
