"""What --precision fast resolves to: from the hardware, never assumed (faked both ways, and a real run)."""

import numpy as np
import pytest
import torch

from rsov.errors import InputError
from rsov.models import TINY_MODEL, load_model
from rsov.precision import (
    MIN_AGREEMENT,
    Calibration,
    CpuCapability,
    calibration_key,
    choose_fast,
    cpu_capability,
    load_calibration,
    resolve_precision,
    save_calibration,
)
from rsov.semantic.encoder import SegEarthCLIP
from rsov.semantic.predictor import FeatureOptions, Predictor, _quantized
from rsov.semantic.text import TEMPLATE_SETS, ClipTextEmbedder

AVX2 = CpuCapability("AVX2", native_bf16=False, amx=False)  # the AMD EPYC where bf16 ran 9x slower
BF16 = CpuCapability("AVX512", native_bf16=True, amx=False)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    with pytest.warns(UserWarning):
        tiny = load_model(TINY_MODEL)
    text = ClipTextEmbedder(tiny, TEMPLATE_SETS["openai"], cache_root=tmp_path_factory.mktemp("text"))
    return Predictor(SegEarthCLIP(tiny.model, tiny.mean, tiny.std), text)


def test_fast_is_fp16_on_cuda_and_bf16_only_with_native_bf16():
    assert choose_fast(torch.device("cuda")).precision == "fp16"
    assert choose_fast(torch.device("cpu"), BF16).precision == "bf16"
    assert choose_fast(torch.device("cpu"), CpuCapability("AVX512", False, amx=True)).precision == "bf16"
    choice = choose_fast(torch.device("cpu"), AVX2)
    assert choice.precision == "fp32" and "no native bf16" in choice.reason and "not calibrated" in choice.reason


def test_int8_only_where_it_measured_faster_at_the_agreement():
    key = calibration_key(AVX2)
    fast = Calibration(key, fp32_s=2.6, int8_s=2.0, agreement=0.998)
    assert choose_fast(torch.device("cpu"), AVX2, fast).precision == "int8"
    assert "1.30x" in choose_fast(torch.device("cpu"), AVX2, fast).reason
    sloppy = Calibration(key, fp32_s=2.6, int8_s=2.0, agreement=MIN_AGREEMENT - 0.01)
    slow = Calibration(key, fp32_s=2.6, int8_s=3.0, agreement=1.0)
    assert choose_fast(torch.device("cpu"), AVX2, sloppy).precision == "fp32"
    assert choose_fast(torch.device("cpu"), AVX2, slow).precision == "fp32"
    assert choose_fast(torch.device("cpu"), BF16, fast).precision == "bf16"  # native bf16 wins


def test_a_calibration_holds_only_for_the_machine_it_was_measured_on(tmp_path):
    save_calibration(tmp_path, Calibration(calibration_key(AVX2), 2.6, 2.0, 0.999))
    assert load_calibration(tmp_path, AVX2).int8_s == 2.0
    assert load_calibration(tmp_path, BF16) is None
    (tmp_path / "precision.json").write_text("{broken")
    assert load_calibration(tmp_path, AVX2) is None


def test_fast_on_this_machine_follows_its_real_capability(tmp_path, predictor):
    capability = cpu_capability()
    choice = resolve_precision("fast", torch.device("cpu"), tmp_path)
    assert choice.precision == ("bf16" if capability.native_bf16 or capability.amx else "fp32")
    assert resolve_precision("fp16", torch.device("cpu"), tmp_path).precision == "fp16"
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    exact = predictor.set_image(image).patches[0]
    chosen = predictor.set_image(image, FeatureOptions(precision=choice.precision)).patches[0]
    assert torch.nn.functional.cosine_similarity(exact.float(), chosen.float(), dim=0).mean() > 0.99


def test_int8_quantizes_the_linear_layers_of_a_copy(predictor):
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    exact = predictor.set_image(image).patches[0]
    quantized = predictor.set_image(image, FeatureOptions(precision="int8")).patches[0]
    encoder = predictor._models("int8")[0]
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in encoder.modules())
    assert not any("quantized" in type(m).__module__ for m in predictor.encoder.modules())
    assert quantized.dtype == torch.float32 and not torch.equal(exact, quantized)
    assert torch.nn.functional.cosine_similarity(exact, quantized, dim=0).mean() > 0.98
    with pytest.raises(InputError, match="CPU only"):
        _quantized(predictor.encoder, torch.device("cuda"))
