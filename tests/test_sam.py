"""The SAM proposer's speed choices, checked for what they must not change: the masks."""

import json

import numpy as np
import pytest
import torch

from rsov.instance import sam as sam_adapter
from rsov.instance.sam import DECODER_FILE, SamProposer, decode_masks, fastest_chunk
from rsov.instance.types import InstanceOptions
from rsov.models import load_sam

FEW = InstanceOptions(points_per_side=4, points_per_batch=8, pred_iou_thresh=-1.0, stability_thresh=-1.0)


@pytest.fixture(scope="module")
def tiny_sam():
    with pytest.warns(UserWarning, match="MEANINGLESS"):
        sam, _ = load_sam("tiny-random", "cpu")
    return sam


def tile() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = np.full((300, 260, 3), 90, np.uint8)
    image[40:140, 30:200] = (200, 40, 40)
    image[180:280, 100:240] = rng.integers(0, 255, (100, 140, 3))
    return image


def test_the_image_is_decoded_once_for_all_prompts_with_the_same_answer(tiny_sam):
    torch.manual_seed(0)
    image, pe = torch.randn(1, 256, 64, 64), tiny_sam.prompt_encoder.get_dense_pe()
    points = (torch.rand(6, 1, 2) * 1024, torch.ones(6, 1, dtype=torch.int64))
    with torch.inference_mode():
        sparse, dense = tiny_sam.prompt_encoder(points=points, boxes=None, masks=None)
        want = tiny_sam.mask_decoder(
            image_embeddings=image,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        got = decode_masks(tiny_sam.mask_decoder, image, pe, sparse, dense[:1])
    assert got[0].shape == want[0].shape == (6, 3, 256, 256)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-6)


def test_the_fastest_call_size_is_the_least_time_per_prompt(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(sam_adapter.time, "perf_counter", lambda: clock[0])
    calls = []

    def decode(n):  # a fixed cost per call, and a steep one per prompt past 4 (caches spilled)
        calls.append(n)
        clock[0] += 0.01 + (0.002 if n <= 4 else 0.006) * n

    best, seconds = fastest_chunk(decode, limit=64, prompts=16)
    assert best == 4 and seconds[4] == pytest.approx(0.0045)
    assert max(calls) == 8  # 8 was 1.6x slower than 4 per prompt: larger sizes were not tried
    assert fastest_chunk(decode, limit=2, prompts=4)[0] == 2  # never past the batch the caller allows


def test_decoding_in_calls_of_any_size_gives_the_same_masks(tiny_sam):
    masks = {}
    for chunk in (1, 3, 8):
        proposer = SamProposer(tiny_sam, "tiny", chunk=chunk)
        masks[chunk] = proposer.propose(tile(), "t", np.array([[50.0, 60.0, 1], [150.0, 220.0, 2]]), FEW)
    assert len(masks[1]) == len(masks[3]) == len(masks[8]) > 0
    for a, b in zip(masks[1], masks[8], strict=False):
        assert a.box == b.box and (a.crop == b.crop).all() and a.quality == pytest.approx(b.quality, abs=1e-5)


def test_the_call_size_is_measured_once_per_machine_and_kept(tiny_sam, tmp_path, monkeypatch):
    first = SamProposer(tiny_sam, "tiny", calibration_dir=tmp_path)
    first.propose(tile(), "t", np.zeros((0, 3)), FEW)
    kept = json.loads((tmp_path / DECODER_FILE).read_text())
    ((key, size),) = kept.items()
    assert "fp32" in key and "MaskDecoder" in key and size in (1, 2, 4, 8, 16, 32, 64)
    assert first.chunk_seconds and size == min(first.chunk_seconds, key=first.chunk_seconds.get)

    def measure(*_args, **_kw):
        raise AssertionError("measured again")

    monkeypatch.setattr(sam_adapter, "fastest_chunk", measure)
    SamProposer(tiny_sam, "tiny", calibration_dir=tmp_path).propose(tile(), "t", np.zeros((0, 3)), FEW)


def test_progress_follows_the_prompts_and_bf16_keeps_its_own_embedding(tiny_sam):
    proposer = SamProposer(tiny_sam, "tiny", chunk=4)
    seen = []
    points = np.array([[50.0, 60.0, 1]] * 5)
    proposer.propose(tile(), "t", points, FEW, progress=lambda fraction, text: seen.append((fraction, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert seen[0][1] == "encoding the tile" and seen[-1][1] == "prompts 21/21"  # 16 grid points + 5 prompts
    assert [t for _, t in seen[2:4]] == ["prompts 8/21", "prompts 16/21"]  # one report per batch of 8
    fast = proposer.propose(tile(), "t", points, FEW, precision="bf16")
    assert proposer.encoded_tiles == 2 and proposer.cached("t", "bf16") and proposer.cached("t", "fp32")
    assert fast and all(m.crop.dtype == bool for m in fast)
