"""The engine reproduces SegEarth-OV number for number (checked against a plain re-implementation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsov.errors import CancelledError, InputError
from rsov.models import TINY_MODEL, load_model
from rsov.semantic.encoder import SegEarthCLIP, resize_positional_embedding
from rsov.semantic.predictor import (
    FeatureOptions,
    Predictor,
    ScoreOptions,
    bilinear_matrix,
    dec_channels,
    sliding_windows,
)
from rsov.semantic.text import TEMPLATE_SETS, ClipTextEmbedder
from rsov.semantic.vocabulary import build_vocabulary


@pytest.fixture(scope="module")
def tiny():
    with pytest.warns(UserWarning):
        return load_model(TINY_MODEL)


@pytest.fixture(scope="module")
def predictor(tiny, tmp_path_factory):
    text = ClipTextEmbedder(tiny, TEMPLATE_SETS["remote-sensing"], cache_root=tmp_path_factory.mktemp("text"))
    return Predictor(SegEarthCLIP(tiny.model, tiny.mean, tiny.std), text)


def reference_tokens(model, crop):
    """SegEarth-OV's encoder written out plainly: explicit per-head softmaxes, no SDPA."""
    v = model.visual
    x = v.conv1(crop)
    gh, gw = x.shape[-2:]
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = v.positional_embedding
    if (gh, gw) != (14, 14):
        grid = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    x = v.ln_pre(x + pos)
    for block in v.transformer.resblocks[:-1]:
        x = block(x)
    last = v.transformer.resblocks[-1]
    y = last.ln_1(x)[0]
    d = y.shape[-1]
    w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    q, k, val = (y @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i in range(3))
    heads = last.attn.num_heads
    hd = d // heads
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        attn = sum(torch.softmax(hd**-0.5 * t[:, sl] @ t[:, sl].T, dim=-1) for t in (q, k, val))
        outs.append(attn @ val[:, sl])
    out = last.attn.out_proj(torch.cat(outs, dim=-1))  # no residual, no FFN
    out = v.ln_post(out) @ v.proj
    return out[1:].T.reshape(-1, gh, gw), out[0]


def reference_logits(model, mean, std, image, text, lam=0.3, long_side=448, window=224, stride=112):
    """mmseg slide inference as SegEarth-OV runs it; returns (Q, Hw, Ww) logits before the x50 softmax."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    x = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=size, mode="bilinear", align_corners=False
    )
    x = (x - torch.tensor(mean).view(1, 3, 1, 1) * 255) / (torch.tensor(std).view(1, 3, 1, 1) * 255)
    H, W = size
    preds = torch.zeros(text.shape[0], H, W)
    count = torch.zeros(H, W)
    text = F.normalize(text, dim=-1)
    for hi in range(max(H - window + stride - 1, 0) // stride + 1):
        for wi in range(max(W - window + stride - 1, 0) // stride + 1):
            y2, x2 = min(hi * stride + window, H), min(wi * stride + window, W)
            y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
            ch, cw = y2 - y1, x2 - x1
            pad_h, pad_w = -ch % 16, -cw % 16  # zero padding to the patch size, split evenly
            t, left = pad_h // 2, pad_w // 2
            crop = F.pad(x[:, :, y1:y2, x1:x2], (left, pad_w - left, t, pad_h - t))
            patches, cls = reference_tokens(model, crop)
            logits = torch.einsum("chw,qc->qhw", F.normalize(patches, dim=0), text)
            logits = logits - lam * (F.normalize(cls, dim=0) @ text.T)[:, None, None]
            logits = F.interpolate(logits[None], size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]
            logits = logits[:, t : t + ch, left : left + cw]
            preds[:, y1:y2, x1:x2] += logits
            count[y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def test_encoder_matches_plain_reimplementation(tiny):
    encoder = SegEarthCLIP(tiny.model, tiny.mean, tiny.std)
    for size in [(224, 224), (160, 288)]:  # native grid, and a resized positional embedding
        crop = torch.randn(1, 3, *size)
        patches, cls = encoder(crop)
        ref_patches, ref_cls = reference_tokens(tiny.model, crop)
        assert patches.shape == (1, 64, size[0] // 16, size[1] // 16)
        assert torch.allclose(patches[0], ref_patches, atol=1e-5)
        assert torch.allclose(cls[0], ref_cls, atol=1e-5)


def test_positional_embedding_unchanged_at_native_size(tiny):
    pos = tiny.model.visual.positional_embedding
    assert resize_positional_embedding(pos, (14, 14)) is pos
    assert resize_positional_embedding(pos, (10, 18)).shape == (1 + 180, pos.shape[1])


@pytest.mark.parametrize("shape", [(300, 500), (448, 448), (90, 700)])
def test_query_logits_match_reference_number_for_number(tiny, predictor, shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    queries = ["building", "roof", "tree", "water"]
    predictor.set_image(image)
    got = predictor.query_logits(queries)
    with torch.no_grad():
        expected = reference_logits(tiny.model, tiny.mean, tiny.std, image, predictor.text.embed(queries))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-5), (got - expected).abs().max()


def test_predict_matches_reference_postprocessing(tiny, predictor):
    image = np.random.default_rng(1).integers(0, 256, (250, 380, 3), dtype=np.uint8)
    vocab = build_vocabulary(["building,roof,house", "tree,forest", "water"], background=("background",))
    queries, owners = vocab.queries()
    predictor.set_image(image)
    pred = predictor.predict(vocab, ScoreOptions(threshold=0.5))
    logits = predictor.query_logits(queries)
    full = F.interpolate(logits[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(50 * full, dim=0)
    per_class = torch.stack([probs[[i for i, o in enumerate(owners) if o == c]].max(0).values for c in range(4)])
    best, label = per_class.max(0)
    label[best < 0.5] = 0
    agree = (torch.from_numpy(pred.class_map.astype(np.int64)) == label).float().mean()
    assert agree > 0.999
    assert np.allclose(pred.score_map, best.numpy(), atol=1e-4)


def test_rescoring_reuses_features(predictor):
    image = np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    features = predictor.set_image(image)
    first = predictor.query_logits(["a", "b"])
    other = Predictor(predictor.encoder, predictor.text)
    other.set_features(features)
    assert torch.equal(other.query_logits(["a", "b"]), first)


def test_progress_and_cancel(predictor):
    image = np.zeros((448, 448, 3), dtype=np.uint8)
    seen = []
    predictor.set_image(image, FeatureOptions(batch_size=2), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(CancelledError):
        predictor.set_image(image, cancelled=lambda: True)


def test_ground_resolution_sets_working_size(predictor):
    image = np.zeros((400, 600, 3), dtype=np.uint8)
    feats = predictor.set_image(image, FeatureOptions(resolution_m=1.0), pixel_size_m=0.5)
    assert feats.working_size == (200, 300)
    with pytest.raises(InputError, match="over the limit"):
        predictor.set_image(image, FeatureOptions(resolution_m=0.01), pixel_size_m=0.5)


def test_rotation_ensemble_and_precision_options_run(predictor):
    image = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    base = predictor.set_image(image)
    rot = predictor.set_image(image, FeatureOptions(rotations=(0, 90, 180, 270)))
    assert not torch.allclose(base.patches[0], rot.patches[0])
    fast = predictor.set_image(image, FeatureOptions(precision="bf16"))
    assert fast.patches[0].dtype == torch.bfloat16
    assert next(predictor._models("bf16")[0].parameters()).dtype == torch.bfloat16  # a cast copy, kept
    assert next(predictor.encoder.parameters()).dtype == torch.float32
    with pytest.raises(InputError):
        FeatureOptions(rotations=(45,))


def test_sliding_windows_cover_and_clamp():
    wins = sliding_windows(300, 500, 224, 112)
    assert (0, 0, 224, 224) in wins and (76, 276, 300, 500) in wins
    cover = np.zeros((300, 500), int)
    for y0, x0, y1, x1 in wins:
        assert (y1 - y0, x1 - x0) == (224, 224)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert sliding_windows(100, 90, 224, 112) == [(0, 0, 100, 90)]


@pytest.mark.parametrize("out_n,in_n", [(500, 37), (37, 500), (64, 64), (7, 3)])
def test_bilinear_matrix_equals_torch(out_n, in_n):
    x = torch.randn(1, 1, in_n, 5)
    expected = F.interpolate(x, size=(out_n, 5), mode="bilinear", align_corners=False)[0, 0]
    # equal up to float32 rounding of the source positions (torch fuses the index arithmetic)
    assert torch.allclose(bilinear_matrix(out_n, in_n) @ x[0, 0], expected, atol=1e-4)


def test_dec_keeps_discriminative_channels():
    # channel 0 is shared by all classes (useless), channel 1 separates them.
    text = F.normalize(torch.tensor([[1.0, 1.0, 0.1], [1.0, -1.0, 0.1], [1.0, 0.9, 0.1]]), dim=-1)
    assert dec_channels(text, keep=1 / 3).tolist() == [1]
    assert dec_channels(text[:1], keep=0.5).tolist() == [0, 1, 2]
