"""Tests for rsov.semantic.upsample: FeatUp's JBUStack with its real CLIP checkpoint, and the fallback."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rsov.errors import InputError
from rsov.semantic import upsample
from rsov.semantic.upsample import (
    JBUStack,
    JBUStage,
    build_upsampler,
    load_jbu_upsampler,
)

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "featup"
CLIP_JBU = WEIGHTS / "clip_jbu_stack_cocostuff.ckpt"

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(3, 1, 1)


@pytest.fixture(scope="module")
def jbu() -> JBUStack:
    assert CLIP_JBU.is_file(), f"FeatUp CLIP JBU checkpoint missing at {CLIP_JBU} (see ../shared/weights/featup)"
    return load_jbu_upsampler(CLIP_JBU)


def _peak_rss_kib() -> int:
    """Peak resident memory of this process in KiB (0 where the platform does not report it)."""
    if not sys.platform.startswith("linux"):
        return 0
    import resource  # Unix only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _edge_scene(feat_dim: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """14x14 features: vector a in patch columns 0-6, b in 7-13; a 224x224 image with its colour edge at x=112."""
    g = _gen(1)
    a, b = torch.randn(feat_dim, generator=g), torch.randn(feat_dim, generator=g)
    source = torch.empty(1, feat_dim, 14, 14)
    source[..., :7] = a[:, None, None]
    source[..., 7:] = b[:, None, None]
    image = torch.empty(3, 224, 224)
    image[:, :, :112] = torch.tensor([0.15, 0.45, 0.15])[:, None, None]  # vegetation green
    image[:, :, 112:] = torch.tensor([0.85, 0.80, 0.75])[:, None, None]  # bright roof
    guidance = ((image - CLIP_MEAN) / CLIP_STD)[None]
    return source, guidance, a, b


def _position_between_sides(features: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (W,): where each column lies from the far-left (0) to the far-right (1) features.

    Far-field references make the measure indifferent to the stack's final affine refinement.
    """
    left = features[0, :, :, :32].mean((1, 2))
    right = features[0, :, :, -32:].mean((1, 2))
    direction = right - left
    t = torch.einsum("chw,c->hw", features[0] - left[:, None, None], direction) / direction.dot(direction)
    return t.mean(0)


def _naive_stage(stage: JBUStage, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Reference JBU stage written with unfold, materialising every neighbourhood (small inputs only)."""
    r = stage.radius
    d = 2 * r + 1
    b, _, hh, ww = guidance.shape
    proj = stage.range_proj(guidance)
    neighbours = F.unfold(F.pad(proj, [r] * 4, mode="reflect"), d).reshape(b, proj.shape[1], d * d, hh, ww)
    logits = torch.einsum("bcphw,bchw->bphw", neighbours, proj)
    range_kernel = torch.softmax(stage.range_temp.exp().clamp(1e-4, 1e4) * logits, dim=1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, d), torch.linspace(-1, 1, d), indexing="ij")
    spatial = torch.exp(-(ys**2 + xs**2) / (2 * stage.sigma_spatial**2)).reshape(1, d * d, 1, 1)
    kernel = range_kernel * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
    kernel = kernel + 0.1 * stage.fixup_proj(torch.cat([kernel, guidance], 1))
    hr = F.interpolate(source, size=(hh, ww), mode="bicubic", align_corners=False)
    patches = F.unfold(F.pad(hr, [r] * 4, mode="reflect"), d).reshape(b, source.shape[1], d * d, hh, ww)
    return torch.einsum("bcphw,bphw->bchw", patches, kernel)


def test_real_checkpoint_loads_in_eval_mode(jbu: JBUStack) -> None:
    assert sum(p.numel() for p in jbu.parameters()) == 287_588
    assert jbu.feat_dim == 512
    assert not any(m.training for m in jbu.modules())
    assert not any(p.requires_grad for p in jbu.parameters())
    source = torch.randn(1, 512, 6, 5, generator=_gen())
    guidance = torch.randn(1, 3, 96, 80, generator=_gen(2))
    with torch.inference_mode():
        first, second = jbu(source, guidance), jbu(source, guidance)
    assert torch.equal(first, second)  # dropout is off


def test_224_window_runs_fast_without_huge_buffers(jbu: JBUStack) -> None:
    source = torch.randn(1, 512, 14, 14, generator=_gen())
    guidance = torch.randn(1, 3, 224, 224, generator=_gen(2))
    peak_kib = _peak_rss_kib()
    start = time.perf_counter()
    with torch.inference_mode():
        out = jbu(source, guidance)
    elapsed = time.perf_counter() - start
    peak_growth_kib = _peak_rss_kib() - peak_kib
    assert out.shape == (1, 512, 224, 224)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert elapsed < 60.0  # about 1 s on 2 idle CPU cores; generous for busy CI machines
    # A (1, 512, 224, 224, 49) float32 tensor alone would be 5 GB.
    assert peak_growth_kib < 1.5 * 2**20


def test_stage_sizes_are_exact_2x_for_16x_windows() -> None:
    assert JBUStack.stage_sizes((14, 14), (224, 224)) == [(28, 28), (56, 56), (112, 112), (224, 224)]
    sizes = JBUStack.stage_sizes((13, 11), (200, 168))
    assert sizes[-1] == (200, 168)
    for (h0, w0), (h1, w1) in zip([(13, 11), *sizes[:-1]], sizes, strict=True):
        assert 1.7 < h1 / h0 < 2.3 and 1.7 < w1 / w0 < 2.3


def test_non_multiple_guidance_size_is_returned_exactly(jbu: JBUStack) -> None:
    # A window clamped at a raster edge: 200x168 px, its features padded up to 13x11 patches.
    source = torch.randn(2, 512, 13, 11, generator=_gen())
    guidance = torch.randn(2, 3, 200, 168, generator=_gen(2))
    with torch.inference_mode():
        out = jbu(source, guidance)
        single = jbu(source[1:], guidance[1:])
    assert out.shape == (2, 512, 200, 168)
    torch.testing.assert_close(out[1:], single, rtol=1e-5, atol=1e-5)  # batch items are independent


def test_tiny_inputs_still_upsample(jbu: JBUStack) -> None:
    with torch.inference_mode():
        out = jbu(torch.randn(1, 512, 1, 2, generator=_gen()), torch.randn(1, 3, 16, 40, generator=_gen(2)))
    assert out.shape == (1, 512, 16, 40)
    assert torch.isfinite(out).all()


def test_stage_matches_naive_reference(jbu: JBUStack, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small chunk budget forces several channel chunks through the accumulation loop.
    monkeypatch.setattr(upsample, "_CHUNK_ELEMENTS", 3 * 20 * 24)
    source = torch.randn(2, 10, 10, 12, generator=_gen())
    guidance = torch.randn(2, 3, 20, 24, generator=_gen(2))
    for stage in (jbu.up1, jbu.up4):
        with torch.inference_mode():
            expected = _naive_stage(stage, source, guidance)
            actual = stage(source, guidance)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_jbu_keeps_feature_edges_on_image_edges(jbu: JBUStack) -> None:
    source, guidance, _, _ = _edge_scene()
    with torch.inference_mode():
        t_jbu = _position_between_sides(jbu(source, guidance))
        t_bilinear = _position_between_sides(
            F.interpolate(source, size=(224, 224), mode="bilinear", align_corners=False)
        )
    ideal = (torch.arange(224) >= 112).float()
    near = slice(96, 128)
    error_jbu = (t_jbu[near] - ideal[near]).abs().mean()
    error_bilinear = (t_bilinear[near] - ideal[near]).abs().mean()
    assert error_jbu < 0.7 * error_bilinear
    # Across the colour edge the JBU jumps most of the way; bilinear moves 1/16 per pixel.
    assert t_jbu[112] - t_jbu[111] > 0.4
    assert t_bilinear[112] - t_bilinear[111] < 0.1
    # Away from the edge both sides are reproduced.
    assert t_jbu[:90].abs().max() < 0.1 and (t_jbu[134:] - 1).abs().max() < 0.1


def test_stack_is_affine_and_stages_are_linear(jbu: JBUStack) -> None:
    x = torch.randn(1, 512, 7, 6, generator=_gen())
    y = torch.randn(1, 512, 7, 6, generator=_gen(3))
    guidance = torch.randn(1, 3, 112, 96, generator=_gen(2))
    with torch.inference_mode():
        stage_guidance = F.adaptive_avg_pool2d(guidance, (14, 12))
        torch.testing.assert_close(
            jbu.up1(2 * x + y, stage_guidance),
            2 * jbu.up1(x, stage_guidance) + jbu.up1(y, stage_guidance),
            rtol=1e-4,
            atol=1e-4,
        )
        # Stages are linear; the final refinement adds 0.1 * its conv bias.
        bias_effect = 0.1 * jbu.fixup_proj[1].bias.reshape(1, -1, 1, 1)
        torch.testing.assert_close(jbu(2 * x, guidance), 2 * jbu(x, guidance) - bias_effect, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            jbu(x + y, guidance), jbu(x, guidance) + jbu(y, guidance) - bias_effect, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(jbu: JBUStack, dtype: torch.dtype) -> None:
    source = torch.randn(1, 512, 5, 4, generator=_gen())
    guidance = torch.randn(1, 3, 80, 64, generator=_gen(2))
    with torch.inference_mode():
        reference = jbu(source, guidance)
        out = jbu(source.to(dtype), guidance.to(dtype))
    assert out.dtype == dtype and out.shape == reference.shape
    assert (out.float() - reference).abs().max() < 0.02 * reference.abs().max()


def test_plain_state_dict_round_trip(jbu: JBUStack, tmp_path: Path) -> None:
    path = tmp_path / "jbu_plain.pt"
    torch.save(jbu.state_dict(), path)
    reloaded = load_jbu_upsampler(path)
    assert not reloaded.training
    source = torch.randn(1, 512, 4, 4, generator=_gen())
    guidance = torch.randn(1, 3, 64, 64, generator=_gen(2))
    with torch.inference_mode():
        assert torch.equal(reloaded(source, guidance), jbu(source, guidance))


def test_feature_width_and_kernel_size_come_from_the_checkpoint(tmp_path: Path) -> None:
    model = JBUStack(64, radius=5)
    path = tmp_path / "jbu_64_11x11.pt"
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_jbu_upsampler(path)
    assert loaded.feat_dim == 64 and loaded.up1.radius == 5
    with torch.inference_mode():
        assert loaded(torch.randn(1, 64, 3, 3), torch.randn(1, 3, 48, 48)).shape == (1, 64, 48, 48)
        with pytest.raises(InputError, match="64-channel"):
            loaded(torch.randn(1, 512, 3, 3), torch.randn(1, 3, 48, 48))


def test_missing_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "jbu.ckpt"
    with pytest.raises(InputError, match="Upsampler checkpoint not found") as info:
        load_jbu_upsampler(path)
    assert str(path) in str(info.value) and "FeatUp" in str(info.value)


def test_random_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    torch.save({"encoder.weight": torch.randn(4, 4), "encoder.bias": torch.randn(4)}, path)
    with pytest.raises(InputError, match="not a FeatUp JBUStack checkpoint") as info:
        load_jbu_upsampler(path)
    message = str(info.value)
    assert "missing" in message and "more" in message and "encoder.weight" in message


def test_wrongly_shaped_checkpoint_is_rejected(tmp_path: Path) -> None:
    state = JBUStack(16).state_dict()
    state["up2.range_proj.3.weight"] = torch.randn(8, 32, 1, 1)
    path = tmp_path / "bad_shape.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match="wrong shape up2.range_proj.3.weight"):
        load_jbu_upsampler(path)


def test_non_checkpoint_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_jbu_upsampler(path)


def test_build_upsampler() -> None:
    assert build_upsampler("bilinear") is None  # the predictor resizes logits itself
    with pytest.raises(InputError, match="--upsampler-checkpoint"):
        build_upsampler("jbu")
    with pytest.raises(InputError, match="Unknown upsampler 'nearest'"):
        build_upsampler("nearest")


def test_build_jbu_upsampler_from_real_checkpoint() -> None:
    model = build_upsampler("jbu", str(CLIP_JBU))
    assert isinstance(model, JBUStack) and not model.training
    assert math.isclose(float(model.up1.range_temp), 0.3980696499347687, rel_tol=1e-6)
