"""`make bench --only sam3`: the SAM 3 engine on one 1008 x 1008 tile of the sample raster, random weights.

* the image encoder, per tile: the first call and a second one (another tile), at ``SAM3_FULL`` (the
  published architecture) and ``SAM3_TINY``;
* the prompt side on the kept embedding: seconds per batch of 4 prompts (one text encoding and one
  grounding pass), and a vocabulary edit (same tile, 4 new prompts: no encoder) against a cold tile
  (encoder, then 4 new prompts), measured in the same run;
* peak resident memory and parameter counts;
* on a CUDA device: the same in fp32 and in bf16 autocast, with the peak GPU memory.

Each size and device runs in a fresh process (this file run with ``--child``), so that its peak RSS is its
own and not that of the sections before it. Speed does not depend on the weights' values, but random
weights score hundreds of query slots over any usual threshold: detections are thresholded at 1.0, so the
prompt side is the network's time without mask upsampling. The full size is measured once (an encode takes
minutes on 2 cores), the tiny one and the GPU runs as medians of repeated runs (the first call: the first run's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from common import CLASSES, line
from rasterio.windows import Window

PROMPTS = [text for line_ in CLASSES for text in line_.split(",")]  # 16 texts: three batches of 4 new ones
BATCH = 4


def _rss_mib() -> float:
    """Peak resident memory of this process so far, MiB. Linux's VmHWM: ru_maxrss would count the parent's
    RSS at the fork that started this process."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")) / 1024


def _tiles(raster: Path, side: int) -> list[np.ndarray]:
    """Two ``side`` x ``side`` (h, w, 3) uint8 tiles of the raster: its top-left corner, and 8 px further."""
    with rasterio.open(raster) as src:
        return [src.read([1, 2, 3], window=Window(s, s, side, side)).transpose(1, 2, 0) for s in (0, 8)]


def measure(
    size_name: str, device_name: str, raster: Path, repeats: int = 1, precisions: tuple[str, ...] | None = None
) -> dict:
    """The figures of one SAM 3 size on one device, in this process (see the module's docstring); by default
    fp32, and bf16 autocast as well on CUDA."""
    warnings.simplefilter("ignore")  # the sam3 package's deprecation and "CUDA not available" warnings
    import torch

    from rsov.instance.concepts import ConceptPrompt, Sam3Detector
    from rsov.instance.sam3_build import SAM3_SIZES, build_sam3

    torch.set_grad_enabled(False)
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    size = SAM3_SIZES[size_name]
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_sam3(size).to(device).requires_grad_(False)
    out: dict = {
        "size": size.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "build_s": time.perf_counter() - started,
        "rss_built_mib": _rss_mib(),
        "params": sum(p.numel() for p in model.parameters()),
        "params_image": sum(p.numel() for p in model.backbone.vision_backbone.parameters()),
        "params_text": sum(p.numel() for p in model.backbone.language_backbone.parameters()),
        "image_size": size.image_size,
    }
    # Random weights score hundreds of query slots over the job's threshold, and upsampling those masks
    # would be timed as the prompt side; at 1.0 (over any score) the network alone is timed.
    threshold = 1.0
    tile, other = _tiles(raster, SAM3_SIZES["sam3"].image_size)  # 1008 px: the tiny model resizes it to its own
    batches = [[ConceptPrompt(t, i + 1) for i, t in enumerate(PROMPTS[k : k + BATCH])] for k in (0, 4, 8)]

    def call(detector: Sam3Detector, pixels: np.ndarray, key: str, prompts: list, precision: str) -> float:
        sync()
        t = time.perf_counter()
        detector.detect(pixels, key, prompts, threshold, precision)
        sync()
        return time.perf_counter() - t

    precisions = precisions or (("fp32", "bf16") if device.type == "cuda" else ("fp32",))
    for precision in precisions:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(repeats):  # a fresh detector each time: no embedding or text encoding kept
            detector = Sam3Detector(model, size, f"bench-{size.name}", device, prompts_per_call=BATCH)
            run = {"encode_first_s": call(detector, tile, "a", [], precision)}  # no prompts: the encoder alone
            run["rss_encoded_mib"] = _rss_mib()
            run["prompts_s"] = call(detector, tile, "a", batches[0], precision)  # a batch on the kept embedding
            run["edit_s"] = call(detector, tile, "a", batches[1], precision)  # vocabulary edit: 4 new prompts
            run["encode_second_s"] = call(detector, other, "b", [], precision)  # a cold tile: encoder ...
            run["cold_prompts_s"] = call(detector, other, "b", batches[2], precision)  # ... then 4 new prompts
            run["encoded_tiles"], run["prompt_calls"] = detector.encoded_tiles, detector.prompt_calls
            runs.append(run)
        # the first call of the first run (the process's first encode); medians over the runs otherwise
        fig = {name: float(np.median([r[name] for r in runs])) for name in runs[0]}
        fig["encode_first_s"], fig["rss_encoded_mib"] = runs[0]["encode_first_s"], runs[0]["rss_encoded_mib"]
        fig["repeats"] = repeats
        if device.type == "cuda":
            fig["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out[precision] = fig
    out["threshold"] = threshold
    out["rss_peak_mib"] = _rss_mib()
    return out


def _child(size_name: str, device_name: str, raster: Path, repeats: int) -> dict:
    """``measure`` in a fresh Python process; its figures as a dict."""
    run = subprocess.run(
        [sys.executable, __file__, "--child", size_name, device_name, str(raster), "--repeats", str(repeats)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if run.returncode:
        raise SystemExit(f"the SAM 3 bench ({size_name} on {device_name}) failed (exit code {run.returncode})")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _print(r: dict, digits: int = 2) -> None:
    name = f"{r['size']} {r['device'].split(':')[0]}"
    line(
        f"{name} parameters",
        f"{r['params'] / 1e6:8.1f} M   (image encoder {r['params_image'] / 1e6:.1f} M, "
        f"text encoder {r['params_text'] / 1e6:.1f} M); built in {r['build_s']:.1f} s",
    )
    for precision in ("fp32", "bf16") if "bf16" in r else ("fp32",):
        fig, tag = r[precision], f"{name} {precision}"
        how = "" if fig["repeats"] == 1 else f"; medians of {fig['repeats']} runs"
        line(
            f"{tag} image encoder per tile",
            f"{fig['encode_first_s']:8.{digits}f} s  first call, {fig['encode_second_s']:.{digits}f} s second "
            f"({r['image_size']} px input{how})",
        )
        line(
            f"{tag} batch of {BATCH} prompts",
            f"{fig['prompts_s']:8.{digits}f} s  (on the kept embedding: text encoding + grounding)",
        )
        cold = fig["encode_second_s"] + fig["cold_prompts_s"]
        line(
            f"{tag} vocabulary edit",
            f"{fig['edit_s']:8.{digits}f} s  ({BATCH} new prompts, same tile); cold tile (encoder + {BATCH} new "
            f"prompts) {cold:.{digits}f} s = x{cold / fig['edit_s']:.1f} the edit",
        )
        if "gpu_peak_mib" in fig:
            line(f"{tag} peak GPU memory", f"{fig['gpu_peak_mib']:8.0f} MiB  (torch.cuda.max_memory_allocated)")
    if "bf16" in r:
        speedup = r["fp32"]["encode_second_s"] / r["bf16"]["encode_second_s"]
        line(f"{name} bf16 encoder against fp32", f"{speedup:8.2f} x  the speed of fp32 (second calls)")
    line(
        f"{name} peak memory (process RSS)",
        f"{r['fp32']['rss_encoded_mib']:8.0f} MiB after the first encode, {r['rss_peak_mib']:.0f} MiB at the end "
        f"(after building the model: {r['rss_built_mib']:.0f} MiB)",
    )


def bench_sam3(device_type: str, raster: Path) -> None:
    """SAM 3's encoder and prompt side on CPU at both sizes, and on CUDA when there is one (see the docstring)."""
    import torch

    print(
        f"SAM 3: one 1008x1008 tile of the sample raster, random weights (timing only), batches of {BATCH} "
        f"prompts; CPU: {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    _print(_child("sam3", "cpu", raster, repeats=1))  # minutes per encode on 2 cores: once each
    _print(_child("sam3-tiny", "cpu", raster, repeats=5), digits=3)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = f" (over the {cores} cores: other processes ran, CPU timings are inflated)" if load > cores + 0.5 else ""
    line("load average after the CPU runs (1 min)", f"{load:8.1f}{busy}")
    if not torch.cuda.is_available():
        line("CUDA", "no CUDA device: the fp32 / bf16 GPU figures are not measured")
    elif device_type != "cuda":
        line("CUDA", f"a CUDA device is there but --device is {device_type}: GPU figures not measured")
    else:
        line("CUDA", torch.cuda.get_device_name(0))
        _print(_child("sam3", "cuda", raster, repeats=3), digits=3)


def main() -> int:
    parser = argparse.ArgumentParser(description="one SAM 3 measurement in a fresh process (used by bench.py)")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "DEVICE", "RASTER"), required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    size_name, device_name, raster = args.child
    print(json.dumps(measure(size_name, device_name, Path(raster), args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
