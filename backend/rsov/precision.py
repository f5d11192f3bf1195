"""What ``--precision fast`` means on this machine, and why.

Speed-ups do not carry over between machines: bf16 ran 1.7x faster than fp32 on a CPU with
native bf16 and 9x *slower* on an AMD EPYC with AVX2 only, where it is emulated. So ``fast``
is chosen from what the hardware can do:

* CUDA: fp16;
* a CPU with native bf16 (AVX512-BF16 or AMX): bf16;
* any other CPU: fp32, or int8 dynamic quantization of the Linear layers where a
  calibration on this machine (``make bench``) measured it faster than fp32 at a label
  agreement of at least ``MIN_AGREEMENT``.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .atomic import atomic_output

MIN_AGREEMENT = 0.995  # of pixel labels, int8 against fp32
CALIBRATION_FILE = "precision.json"  # in the rsov cache folder


@dataclass(frozen=True)
class CpuCapability:
    """What this CPU offers for low-precision matmuls, as torch sees it."""

    vector: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...
    native_bf16: bool  # AVX512-BF16 instructions
    amx: bool  # Intel AMX tiles

    def describe(self) -> str:
        extras = [name for name, present in (("AVX512-BF16", self.native_bf16), ("AMX", self.amx)) if present]
        return self.vector + (f" with {', '.join(extras)}" if extras else ", no native bf16")


def cpu_capability() -> CpuCapability:
    """This CPU's capability (torch's own query)."""
    return CpuCapability(
        torch.backends.cpu.get_cpu_capability(),
        bool(torch.cpu._is_avx512_bf16_supported()),
        bool(torch.cpu._is_amx_tile_supported()),
    )


@dataclass(frozen=True)
class Calibration:
    """int8 against fp32 on one machine, same weights, same image, one run."""

    machine: str  # calibration_key(): the CPU and the torch build it holds for
    fp32_s: float
    int8_s: float
    agreement: float  # fraction of pixels with the same label

    def int8_qualifies(self) -> bool:
        return self.int8_s < self.fp32_s and self.agreement >= MIN_AGREEMENT


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision ``fast`` resolved to, and the sentence that says why."""

    precision: str  # fp32, bf16, fp16 or int8
    reason: str  # why, e.g. "this CPU has native bf16 (AVX512 with AVX512-BF16)"


def calibration_key(capability: CpuCapability) -> str:
    return f"{platform.machine()} {capability.describe()}; torch {torch.__version__}"


def _calibration_path(cache: Path) -> Path:
    return cache / CALIBRATION_FILE


def load_calibration(cache: Path, capability: CpuCapability) -> Calibration | None:
    """The calibration measured on this machine and torch build, if any."""
    try:
        data = json.loads(_calibration_path(cache).read_text())
        calibration = Calibration(**data)
    except (OSError, ValueError, TypeError):
        return None
    return calibration if calibration.machine == calibration_key(capability) else None


def save_calibration(cache: Path, calibration: Calibration) -> None:
    """Keep a calibration for later runs (written whole, then renamed)."""
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_output(_calibration_path(cache)) as partial:
        partial.write_text(json.dumps(asdict(calibration), indent=1))


def choose_fast(
    device: torch.device, capability: CpuCapability | None = None, calibration: Calibration | None = None
) -> PrecisionChoice:
    """The precision ``fast`` means on ``device`` (see the module doc)."""
    if device.type == "cuda":
        return PrecisionChoice("fp16", "CUDA runs fp16 natively")
    capability = capability or cpu_capability()
    if capability.native_bf16 or capability.amx:
        return PrecisionChoice("bf16", f"this CPU has native bf16 ({capability.describe()})")
    why = f"this CPU has no native bf16 ({capability.describe()}), where bf16 is emulated and slower than fp32"
    if calibration is None:
        return PrecisionChoice("fp32", f"{why}; int8 is not calibrated here (`make bench` measures it)")
    measured = (
        f"int8 measured {calibration.fp32_s / calibration.int8_s:.2f}x the speed of fp32 "
        f"at {calibration.agreement:.2%} label agreement"
    )
    if calibration.int8_qualifies():
        return PrecisionChoice("int8", f"{why}; {measured}")
    return PrecisionChoice("fp32", f"{why}; {measured} (int8 needs to be faster, at >= {MIN_AGREEMENT:.1%})")


def resolve_precision(precision: str, device: torch.device, cache: Path) -> PrecisionChoice:
    """``fast`` resolved for this machine; any other precision as asked."""
    if precision != "fast":
        return PrecisionChoice(precision, "as asked")
    capability = None if device.type == "cuda" else cpu_capability()
    calibration = load_calibration(cache, capability) if capability is not None else None
    return choose_fast(device, capability, calibration)
