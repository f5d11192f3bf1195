"""`make bench`: speed and memory of the engine, its precisions, the server and instance mode on 1024 x 1024
extents, 10 classes; SAM 3's encoder and prompt side (`--only sam3`, about 5 minutes on 2 cores); the scale
figures; and the plugin's backend installer.

Uses the real ViT-B/16 architecture. If its OpenAI weights are in the cache they are used; otherwise
random weights are saved to a checkpoint and loaded the real way (speed does not depend on weight
values; the figures say which). The raster is the OpenEarthMap sample mirrored out to 1100 x 1100
and written as a GeoTIFF, so every run goes through reading, encoding, scoring and vectorizing
exactly as `rsov segment` and `rsov serve` do. Ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import rasterio
import torch
from common import CLASSES, JBU, SHARED, SIZE, extent, line, make_raster, timed
from instances_bench import bench_dedup, bench_instances, bench_refine, bench_tiny_job
from sam3_bench import bench_sam3
from scale import bench_scale

from rsov.engine import FeatureCache, SegmentRequest, load_engine, resolve_device
from rsov.models import DEFAULT_MODEL, cache_dir, find_weights, resolve_spec
from rsov.precision import Calibration, calibration_key, cpu_capability, resolve_precision, save_calibration
from rsov.semantic.predictor import FeatureOptions
from rsov.semantic.vocabulary import build_vocabulary
from rsov.service.client import Client, ClientError


def bench_model(folder: Path) -> tuple[str, str]:
    """The model name to load and a label saying whether its weights are real."""
    spec = resolve_spec(DEFAULT_MODEL)
    if find_weights(spec) is not None:
        return DEFAULT_MODEL, f"{DEFAULT_MODEL} (real weights)"
    torch.manual_seed(0)
    path = folder / "vit_b16_random.pt"
    arch = f"{spec.arch}-quickgelu"  # what OpenAI's weights run on
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)
    return f"{arch}@{path}", f"{arch} (random weights: timing only)"


def best_query(engine, request: SegmentRequest) -> torch.Tensor:
    """Per working pixel, the index of the best query (before thresholds) over the request's extent."""
    job = engine.plan(request)
    grid = engine.grid_predictor(request.templates)
    queries = build_vocabulary(list(request.classes), request.background).queries()[0]
    rows, cols = [(w[0], w[2]) for w in job.windows()], [(w[1], w[3]) for w in job.windows()]
    with rasterio.open(request.raster) as ds:
        grid.set_raster(ds, job, request.features)
        span = (min(r[0] for r in rows), max(r[1] for r in rows)), (min(c[0] for c in cols), max(c[1] for c in cols))
        return grid.working_logits(queries, request.scoring, *span).argmax(0)


def bench_engine(args: argparse.Namespace, model: str, device: torch.device, raster: Path) -> None:
    """In-process engine: cold, warm, edited vocabulary, JBU upsampler."""
    engine = load_engine(model, str(device))
    options = FeatureOptions(long_side=args.long_side)
    request = SegmentRequest(str(raster), CLASSES, bbox=extent(raster, 0), features=options)

    cold, t_cold = timed(lambda: engine.segment(request))  # text tower: 10 classes x synonyms x 80 templates
    n_windows = cold.windows_encoded
    engine.cache = FeatureCache()
    warm, t_warm = timed(lambda: engine.segment(request))  # new image features, text from the cache
    edited = replace(request, classes=CLASSES[:-1] + ("solar panel",))
    rescored, t_edit = timed(lambda: engine.segment(edited))  # one new class; image features from the cache
    assert rescored.features_cached
    fp32_bytes = engine.cache.nbytes

    h, w = cold.prediction.class_map.shape
    print(
        f"engine: {w}x{h} px extent, working long side {options.long_side} px, {n_windows} windows 224/112, "
        f"{len(CLASSES)} classes"
    )
    line("cold run (text embeddings + image + scoring)", f"{t_cold:8.2f} s")
    line(
        "warm run (image encode + scoring)",
        f"{t_warm:8.2f} s  ({n_windows / warm.timings['segment_s']:.2f} windows/s; "
        f"vectorize {warm.timings['vectorize_s']:.2f} s)",
    )
    line("re-run after editing one class", f"{t_edit:8.2f} s  (x{t_warm / t_edit:.1f} faster than the warm run)")
    if not args.no_jbu and JBU.is_file():
        engine_jbu = load_engine(model, str(device), "jbu", str(JBU))
        _, t_jbu = timed(lambda: engine_jbu.segment(request))
        line(
            "with FeatUp JBU upsampler",
            f"{t_jbu:8.2f} s  (features kept {engine_jbu.cache.nbytes / 2**20:.0f} MiB "
            f"vs {fp32_bytes / 2**20:.1f} MiB without)",
        )
    line("peak memory (process RSS)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")
    if device.type == "cuda":
        line("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB")


def bench_precision(args: argparse.Namespace, model: str, device: torch.device, raster: Path, cache: Path) -> None:
    """fp32 against every low precision this device runs, with label agreement; saves the int8
    calibration that lets ``--precision fast`` choose int8 on CPUs without native bf16."""
    engine = load_engine(model, str(device))
    options = FeatureOptions(long_side=args.long_side)
    request = SegmentRequest(str(raster), CLASSES, bbox=extent(raster, 0), features=options)
    engine.segment(request)  # text embeddings, so that every timed run is image encode + scoring
    precisions = ("fp32", "fp16") if device.type == "cuda" else ("fp32", "bf16", "int8")
    seconds, labels = {}, {}
    for precision in precisions:
        engine.cache = FeatureCache()
        timed_request = replace(request, features=replace(options, precision=precision))
        _, seconds[precision] = timed(partial(engine.segment, timed_request))
        # per-pixel best query, before thresholds: a stricter test than class maps that one class may fill
        labels[precision] = best_query(engine, timed_request)
    print(
        f"precision: {SIZE}x{SIZE} px extent, working long side {options.long_side} px; CPU "
        f"{cpu_capability().describe()}"
        if device.type == "cpu"
        else f"precision on {device}"
    )
    for precision in precisions:
        agree = float((labels[precision] == labels["fp32"]).float().mean())
        line(
            f"{precision} run (image encode + scoring)",
            f"{seconds[precision]:8.2f} s  "
            f"(x{seconds['fp32'] / seconds[precision]:.2f} the speed of fp32; label agreement {agree * 100:.2f} %)",
        )
        if precision == "int8":
            save_calibration(
                cache, Calibration(calibration_key(cpu_capability()), seconds["fp32"], seconds["int8"], agree)
            )
    choice = resolve_precision("fast", device, cache)
    line("--precision fast on this machine", f"{choice.precision}: {choice.reason}")


REPO = Path(__file__).resolve().parents[1]


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def bench_install(folder: Path) -> None:
    """The plugin's backend installer, from `make package`'s zip, with pip's cache as it is."""
    subprocess.run(["make", "-s", "package"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    plugin = folder / "plugin"
    shutil.unpack_archive(REPO / "dist" / "rsov_qgis.zip", plugin)
    prefix = folder / "backend-env"
    command = ["python3", "-m", "rsov_qgis.install_backend", "--prefix", str(prefix), "--torch", "auto"]
    print("installer: python3 -m rsov_qgis.install_backend --torch auto, from dist/rsov_qgis.zip")
    for label in ("fresh install (warm pip cache)", "rerun into the installed environment"):
        run, seconds = timed(lambda: subprocess.run(command, cwd=plugin, capture_output=True, text=True))
        if run.returncode:
            print(run.stdout[-2000:])
            raise SystemExit(f"the installer failed (exit code {run.returncode})")
        line(label, f"{seconds:8.1f} s")
    line("environment size", f"{_folder_size(prefix) / 2**30:8.1f} GiB")


def start_server(model: str, device: torch.device, folder: Path, port: int = 18765) -> tuple[subprocess.Popen, Client]:
    token_file = folder / "token"
    proc = subprocess.Popen(
        [
            Path(sys.executable).parent / "rsov",
            "serve",
            "--model",
            model,
            "--device",
            device.type,
            "--port",
            str(port),
            "--token-file",
            str(token_file),
            "--results-dir",
            str(folder / "jobs"),
        ],
        stderr=subprocess.DEVNULL,
    )
    client = Client(f"http://127.0.0.1:{port}", timeout=600)
    deadline = time.monotonic() + 300
    while True:
        try:
            client.health()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rsov serve did not start") from None
            time.sleep(0.5)
    client.token = token_file.read_text().strip()
    return proc, client


def bench_server(args: argparse.Namespace, model: str, device: torch.device, raster: Path, folder: Path) -> None:
    """Back-to-back jobs on a warm `rsov serve`, against the same jobs on the in-process engine."""
    extents = [extent(raster, 8 * i) for i in range(args.jobs + 1)]
    paper = {"long_side": args.long_side}  # per-extent grids: no job reuses another's window features
    proc, client = start_server(model, device, folder)
    try:
        client.wait(client.submit(str(raster), list(CLASSES), bbox=extents[0], **paper))  # warm-up: text cache
        latencies = []
        started = time.perf_counter()
        for bbox in extents[1:]:
            t = time.perf_counter()
            job = client.submit(str(raster), list(CLASSES), bbox=bbox, **paper)
            client.wait(job, poll_s=0.02)
            client.result(job)
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = load_engine(model, str(device))
    features = FeatureOptions(long_side=args.long_side)
    engine.segment(SegmentRequest(str(raster), CLASSES, bbox=extents[0], features=features))  # the same warm-up
    direct = [
        timed(lambda b=b: engine.segment(SegmentRequest(str(raster), CLASSES, bbox=b, features=features)))[1]
        for b in extents[1:]
    ]
    http_s, direct_s = float(np.median(latencies)), float(np.median(direct))
    print(f"server: {args.jobs} back-to-back {SIZE}x{SIZE} jobs, {len(CLASSES)} classes, warm")
    line("throughput", f"{60 * args.jobs / total:8.1f} jobs/min")
    line("latency POST -> result (median)", f"{http_s:8.2f} s")
    line("in-process engine, same jobs (median)", f"{direct_s:8.2f} s")
    line("HTTP path overhead", f"{http_s - direct_s:8.2f} s ({100 * (http_s / direct_s - 1):+.1f} %)")


def health_p99(client: Client, seconds: float) -> tuple[float, int]:
    """p99 latency (ms) of GET /v1/health, polled for ``seconds``, and the number of polls."""
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        client.health()
        latencies.append(time.perf_counter() - t)
    return 1000 * float(np.percentile(latencies, 99)), len(latencies)


def bench_responsiveness(
    args: argparse.Namespace, model: str, device: torch.device, raster: Path, folder: Path
) -> None:
    """Health latency while hostile requests are validated and while a job runs; 4 concurrent clients."""
    import threading

    hostile = folder / "hostile"
    hostile.mkdir()
    with rasterio.open(
        hostile / "huge.tif",
        "w",
        driver="GTiff",
        width=200_000,
        height=200_000,
        count=3,
        dtype="uint8",
        tiled=True,
        sparse_ok=True,
    ):
        pass
    os.mkfifo(hostile / "fifo.tif")
    (hostile / "vrt.tif").write_text(
        f'<VRTDataset rasterXSize="10" rasterYSize="10"><VRTRasterBand dataType="Byte" '
        f'band="1"><SimpleSource><SourceFilename>{raster}</SourceFilename></SimpleSource>'
        f"</VRTRasterBand></VRTDataset>"
    )
    proc, client = start_server(model, device, folder, port=18766)
    try:
        idle, _ = health_p99(client, 2.0)
        stop = threading.Event()

        def attack() -> None:
            paths = [hostile / "huge.tif", hostile / "fifo.tif", hostile / "vrt.tif"]
            i = 0
            while not stop.is_set():
                try:
                    client.submit(str(paths[i % 3]), ["a"], bbox=(-1e300, -1e300, 1e300, 1e300), bbox_crs="EPSG:3857")
                except (ClientError, OSError):
                    pass  # refused, as it should be
                i += 1

        attacker = threading.Thread(target=attack)
        attacker.start()
        under_attack, polls = health_p99(client, 5.0)
        stop.set()
        attacker.join()
        job = client.submit(str(raster), list(CLASSES), bbox=extent(raster, 24), long_side=args.long_side)
        while client.status(job)["state"] == "queued":
            time.sleep(0.01)
        during_job, job_polls = health_p99(client, 2.0)
        client.wait(job)
        results = []

        def one_client(k: int) -> None:
            for j in range(3):
                job_id = client.submit(
                    str(raster), list(CLASSES), bbox=extent(raster, 40 + 8 * (3 * k + j)), long_side=args.long_side
                )
                results.append(client.wait(job_id)["state"])

        started = time.perf_counter()
        threads = [threading.Thread(target=one_client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("responsiveness: GET /v1/health p99 latency (goal under 100 ms), and 4 concurrent clients")
    line("idle", f"{idle:8.1f} ms")
    line("while hostile requests are validated", f"{under_attack:8.1f} ms ({polls} polls)")
    line("while a job runs", f"{during_job:8.1f} ms ({job_polls} polls)")
    line("4 clients x 3 jobs", f"{60 * len(results) / total:8.1f} jobs/min ({results.count('done')} done)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--long-side", type=int, default=448, help="working size (448 = paper default)")
    parser.add_argument("--no-jbu", action="store_true", help="skip the FeatUp JBU run")
    parser.add_argument("--jobs", type=int, default=5, help="back-to-back jobs for the server figures")
    parser.add_argument(
        "--only",
        choices=["engine", "precision", "server", "instances", "sam3", "scale", "install"],
        help="run one part",
    )
    parser.add_argument("--full", action="store_true", help="scale: whole rasters at 1 m and 0.5 m (hours on a CPU)")
    parser.add_argument("--coarse", default="8.0", help="scale: resolution (m) of the whole-raster runs without --full")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    user_cache = cache_dir()  # where the int8 calibration is kept for later runs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["RSOV_CACHE_DIR"] = str(folder / "cache")  # cold text cache, for us and the server
        raster = make_raster(folder)
        model, label = bench_model(folder)
        gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
        print(
            f"rsov bench: {label}; device {device} (GPU: {gpu}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        if args.only in (None, "engine"):
            bench_engine(args, model, device, raster)
        if args.only in (None, "precision"):
            bench_precision(args, model, device, raster, user_cache)
        if args.only in (None, "server"):
            bench_server(args, model, device, raster, folder)
            bench_responsiveness(args, model, device, raster, folder)
        if args.only in (None, "instances"):
            bench_dedup()
            bench_instances(args, model, device, raster, folder)
            bench_tiny_job(device, folder)
            bench_refine(args, model, device, raster, folder)
        if args.only in (None, "sam3"):
            bench_sam3(device.type, raster)
        if args.only in (None, "scale"):
            bench_scale(args, model, device.type, SHARED / "data" / "openearthmap" / "oem_koeln_50.tif", folder)
        if args.only in (None, "install"):
            bench_install(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
