"""``rsov``: the command line (segment a raster, list models)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .evaluation.cli import add_eval_parser, run_eval
from .errors import CancelledError, InputError, RsovError, WeightsMissingError
from .models import DEFAULT_MODEL, MODELS, cache_dir, download_weights, import_weights, list_models, resolve_any
from .precision import resolve_precision
from .progress import ProgressClock, describe_remaining
from .predictor import FeatureOptions, ScoreOptions
from .grid import BLOCK_SIDE
from .raster_io import parse_bands
from .vocabulary import DEFAULT_BACKGROUND, read_classes_file, split_classes

if TYPE_CHECKING:  # the engine imports torch: loaded only when a command needs it
    from .engine import SegmentRequest

EXIT_INPUT, EXIT_WEIGHTS, EXIT_CANCELLED = 2, 3, 130


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected MINX,MINY,MAXX,MAXY, got '{text}'")
    return values  # type: ignore[return-value]


def _rotations(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected degrees like 0,90,180,270, got '{text}'") from None


def _add_job_arguments(seg: argparse.ArgumentParser) -> None:
    """What ``segment`` and ``batch`` share: vocabulary, extent, model, method and scale-out options."""
    vocab = seg.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--classes", help='classes separated by ";", synonyms by ",": "building,roof; tree,forest; water"')
    vocab.add_argument("--classes-file", help="one class per line, synonyms comma-separated")
    seg.add_argument("--background", default=",".join(DEFAULT_BACKGROUND),
                     help='synonyms of the implicit background class ("" for none; default: %(default)s)')
    seg.add_argument("--bbox", type=_bbox, help="extent MINX,MINY,MAXX,MAXY (default: whole raster); write --bbox=-84.4,... for negative numbers")
    seg.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326 (default: the raster's)")
    seg.add_argument("--area", help="processing area: GeoJSON polygons (with a crs member, else EPSG:4326); "
                                    "pixels outside get no class")
    seg.add_argument("--bands", help="1-based bands used as R,G,B, e.g. 4,3,2 (default: first three, or band 1 as grey)")
    seg.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (see `rsov models`) or ARCH@/path/to/ckpt (default: {DEFAULT_MODEL})")
    seg.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    seg.add_argument("--precision", default="fp32", choices=["fp32", "fast", "bf16", "fp16", "int8"],
                     help="fp32 reproduces the paper; fast = what is fast on this hardware: fp16 on CUDA, bf16 on "
                          "CPUs with native bf16, else fp32 (or int8 where `make bench` measured it faster)")
    seg.add_argument("--threshold", type=float, default=0.3, help="minimum class probability, else background (default: 0.3)")
    seg.add_argument("--resolution", type=float,
                     help="working ground resolution in metres per pixel (default: the raster's own x 1024/448, "
                          "the same at any extent)")
    seg.add_argument("--long-side", type=int,
                     help="instead, the paper's per-extent rule: resize the extent to this many pixels on its long side")
    seg.add_argument("--window", type=int, default=224)
    seg.add_argument("--stride", type=int, default=112)
    seg.add_argument("--cls-lambda", type=float, default=0.3, help="global-bias subtraction strength (0 disables)")
    seg.add_argument("--templates", default="openai", help="prompt templates: openai, remote-sensing, plain, or a file")
    seg.add_argument("--upsampler", default="bilinear", choices=["bilinear", "jbu"], help="feature upsampler")
    seg.add_argument("--upsampler-checkpoint", help="FeatUp JBU checkpoint (e.g. clip_jbu_stack_cocostuff.ckpt)")
    seg.add_argument("--rotations", type=_rotations, default=(0,), help="rotation ensemble in degrees, e.g. 0,90,180,270")
    seg.add_argument("--dec", type=float, dest="dec_keep", help="ZoRI DEC: keep this fraction of embedding channels (e.g. 0.39)")
    seg.add_argument("--max-side", type=int, help="explicitly coarser output: at most this many pixels on the long side")
    seg.add_argument("--refine", default="none", choices=["none", "sam"],
                     help="semantic mode: sam averages the class probabilities inside each of SAM's automatic regions, "
                          "so boundaries follow them (a SAM pass per 1024 px tile; default: none)")
    seg.add_argument("--sam", help="Segment Anything model for instance mode and --refine sam (see `rsov models`) or "
                                   "ARCH@/path/to/ckpt (default: sam-vit-b)")
    seg.add_argument("--simplify", type=float, default=1.0, help="polygon simplification tolerance in pixels (0 = none)")
    seg.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this many square metres")
    seg.add_argument("--layer-per-class", action="store_true", help="one GeoPackage layer per class")
    seg.add_argument("--block-size", type=int, default=BLOCK_SIDE,
                     help="output pixels per block side: memory per block, and the unit of resume and Dask tasks")
    seg.add_argument("--cache-mb", type=int, default=256,
                     help="memory for window features, so neighbouring blocks reuse them (default: %(default)s)")
    seg.add_argument("--workers", type=int, help="run the blocks on a Dask LocalCluster of this many worker processes")
    seg.add_argument("--scheduler", help="run the blocks on an existing Dask cluster, e.g. tcp://HOST:8786")
    seg.add_argument("--max-windows", type=int, default=10000,
                     help="refuse runs that encode more windows than this unless --yes (default: %(default)s)")
    seg.add_argument("--yes", action="store_true", help="run even when the estimate is over --max-windows")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsov", description="Open-vocabulary segmentation of remote-sensing rasters.")
    parser.add_argument("--version", action="version", version=f"rsov {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment a raster extent into polygons of the given classes")
    seg.add_argument("raster", help="any raster GDAL reads (GeoTIFF, VRT, ...)")
    _add_job_arguments(seg)
    seg.add_argument("--out", default=None, help="output .gpkg or .geojson (default: ./<raster name>_rsov.gpkg)")
    seg.add_argument("--raster-out", help="also write the class map as a GeoTIFF")
    seg.add_argument("--preview", help="also write a PNG preview (image with classes overlaid, at most 2048 px)")
    inst = seg.add_argument_group("instance mode (--mode instance): every object its own polygon")
    inst.add_argument("--mode", default="semantic", choices=["semantic", "instance"])
    inst.add_argument("--examples", help="GeoJSON of example polygons with a 'class' property (ZoRI cache bank)")
    inst.add_argument("--points-per-side", type=int, default=16, help="automatic SAM point grid per tile (0: prompts only)")
    inst.add_argument("--points-per-batch", type=int, default=64,
                      help="point prompts per batch (bounds memory; the decoder call size is measured per machine)")
    inst.add_argument("--pred-iou", type=float, default=0.8, help="SAM predicted-IoU threshold for grid masks")
    inst.add_argument("--stability", type=float, default=0.9, help="SAM stability-score threshold for grid masks")
    inst.add_argument("--no-class-prompts", action="store_true", help="no point prompts from the semantic map")
    inst.add_argument("--tile", type=int, default=1024, help="SAM tile size in output pixels")
    inst.add_argument("--tile-overlap", type=int, default=128)
    inst.add_argument("--nms-iou", type=float, default=0.5, help="mask NMS IoU across classes")
    inst.add_argument("--object-threshold", type=float, default=0.3, help="drop objects whose class probability is lower")
    inst.add_argument("--context-weight", type=float, default=0.0, help="SCORE regional context weight (0 = off)")
    inst.add_argument("--context-dilation", type=int, default=4, help="context dilation: kernel 3 + this")
    inst.add_argument("--crop-weight", type=float, default=0.0, help="weight of the cut-out CLIP score (0 = off)")
    inst.add_argument("--exemplar-alpha", type=float, default=0.5)
    inst.add_argument("--fill-holes", action="store_true")
    inst.add_argument("--obb", action="store_true", help="also write oriented bounding boxes (layer rsov_obb)")

    batch = sub.add_parser("batch", help="segment whole rasters into a folder, resumably (Dask with --workers)")
    batch.add_argument("rasters", nargs="+", help="rasters (GeoTIFF, VRT, ...)")
    _add_job_arguments(batch)
    batch.add_argument("--out-dir", required=True, type=Path,
                       help="writes <raster>.gpkg and <raster>_classes.tif per raster; a rerun resumes")

    serve = sub.add_parser("serve", help="run the local HTTP backend for the QGIS plugin")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--allow-remote", action="store_true", help="required to bind an address other than loopback")
    serve.add_argument("--allowed-host", action="append", default=[], help="extra Host header name to accept (with --allow-remote)")
    serve.add_argument("--model", default=DEFAULT_MODEL, help=f"model to keep loaded (default: {DEFAULT_MODEL})")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    serve.add_argument("--sam", help="Segment Anything model for instance jobs, loaded on first use (default: sam-vit-b)")
    serve.add_argument("--upsampler", default="bilinear", choices=["bilinear", "jbu"])
    serve.add_argument("--upsampler-checkpoint")
    serve.add_argument("--token-file", type=Path, help="token file (default: ~/.config/rsov/token; created if missing)")
    serve.add_argument("--allow-dir", action="append", type=Path, default=[],
                       help="only read rasters under this directory (repeatable; default: any file you can read)")
    serve.add_argument("--results-dir", type=Path, help="where job results are kept (default: a private temp folder)")
    serve.add_argument("--results-ttl", type=float, default=3600.0, help="seconds a finished job's results are kept")
    serve.add_argument("--max-queue", type=int, default=8, help="jobs allowed to wait; more get HTTP 429")
    serve.add_argument("--max-upload-mb", type=int, default=512)
    serve.add_argument("--cache-mb", type=int, default=2048, help="memory for image features of recent extents")
    serve.add_argument("--max-pixels", type=float, default=1e10, help="refuse rasters with more pixels (from the header)")
    serve.add_argument("--max-bands", type=int, default=64, help="refuse rasters with more bands")
    serve.add_argument("--max-json-mb", type=float, default=16, help="largest job body (with its mask and examples)")
    serve.add_argument("--max-geojson-features", type=int, default=100_000,
                       help="larger results are served as GeoPackage only (default: %(default)s)")

    add_eval_parser(sub)

    models = sub.add_parser("models", help="list known models and whether their weights are on this machine")
    what = models.add_mutually_exclusive_group()
    what.add_argument("--download", metavar="NAME", help="download a model's weights into the cache, verified")
    what.add_argument("--import", dest="import_file", metavar="FILE",
                      help="copy a weights file downloaded elsewhere into the cache, after checking its digest")
    models.add_argument("--name", help="with --import: the model the file is for (default: found by its digest)")
    models.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _request(args: argparse.Namespace, raster: str) -> SegmentRequest:
    from .engine import SegmentRequest, resolve_device
    from .instances import InstanceOptions, read_examples

    classes = read_classes_file(args.classes_file) if args.classes_file else split_classes(args.classes)
    choice = resolve_precision(args.precision, resolve_device(args.device), cache_dir())
    if args.precision == "fast" and not args.quiet:
        print(f"rsov: precision fast is {choice.precision} here: {choice.reason}", file=sys.stderr)
    instance = InstanceOptions()
    if hasattr(args, "points_per_side"):  # `segment` has SAM's options (instance mode, --refine sam); `batch` not
        instance = InstanceOptions(
            points_per_side=args.points_per_side, points_per_batch=args.points_per_batch, pred_iou_thresh=args.pred_iou,
            stability_thresh=args.stability,
            class_prompts=not args.no_class_prompts, tile=args.tile, tile_overlap=args.tile_overlap,
            nms_iou=args.nms_iou, score_threshold=args.object_threshold, context_weight=args.context_weight,
            context_dilation=args.context_dilation, crop_weight=args.crop_weight, exemplar_alpha=args.exemplar_alpha,
            fill_holes=args.fill_holes, oriented_boxes=args.obb,
        )
    return SegmentRequest(
        raster=raster, classes=tuple(classes), bbox=args.bbox, bbox_crs=args.bbox_crs,
        bands=parse_bands(args.bands), background=tuple(w for w in args.background.split(",") if w.strip()),
        templates=args.templates,
        features=FeatureOptions(window=args.window, stride=args.stride, long_side=args.long_side,
                                resolution_m=args.resolution, rotations=args.rotations, precision=choice.precision),
        scoring=ScoreOptions(threshold=args.threshold, cls_lambda=args.cls_lambda, dec_keep=args.dec_keep),
        max_side=args.max_side, simplify_px=args.simplify, min_area_m2=args.min_area,
        mode=getattr(args, "mode", "semantic"), instance=instance,
        examples=read_examples(args.examples) if getattr(args, "examples", None) else (),
        area=args.area, block_size=args.block_size, refine=args.refine,
    )


def _progress(args: argparse.Namespace):
    from tqdm import tqdm

    bar = tqdm(total=100, disable=args.quiet, file=sys.stderr, unit="%", bar_format="{l_bar}{bar}| {elapsed}{postfix}")
    clock = ProgressClock()

    def stage(name: str, fraction: float) -> None:
        bar.set_description(name, refresh=False)
        left = describe_remaining(clock.remaining(fraction))
        bar.set_postfix_str(f", {left}" if left else "", refresh=False)
        bar.update(max(0, round(fraction * 100) - bar.n))
        bar.refresh()

    return bar, stage


def _check_size(args: argparse.Namespace, job_plan, name: str) -> None:
    """Refuse a run over --max-windows unless --yes, saying what it would cost."""
    from .engine import resolve_device
    from .tiled import DEFAULT_WINDOWS_PER_S, estimate

    device = resolve_device(args.device).type
    rate = DEFAULT_WINDOWS_PER_S.get(device, 4.0)
    cost = estimate(job_plan, 0, rate)
    if cost["windows"] > args.max_windows and not args.yes:
        raise InputError(
            f"{name} needs {cost['windows']} windows at {job_plan.grid.resolution_m:.3g} m/px "
            f"({cost['output_size'][1]}x{cost['output_size'][0]} px, about {cost['estimated_s'] / 60:.0f} min on "
            f"{device} at ~{rate:g} windows/s), over --max-windows {args.max_windows}: add --yes to run it, "
            "or choose a coarser --resolution or a smaller --bbox.")


@contextmanager
def _runner(args: argparse.Namespace, stage, stats):
    """The block runner the arguments ask for: this process, a LocalCluster or a Dask scheduler."""
    from .batch import EngineSpec, dask_client, dask_runner
    from .engine import FeatureCache, load_engine
    from .streaming import in_process

    if args.workers is None and args.scheduler is None:
        engine = load_engine(args.model, args.device, args.upsampler, args.upsampler_checkpoint,
                             cache=FeatureCache(args.cache_mb << 20), sam=args.sam)
        yield in_process(engine, stats, stage), engine.name, str(engine.device)
        return
    spec = EngineSpec(args.model, args.device, args.upsampler, args.upsampler_checkpoint, args.cache_mb, args.sam)
    with dask_client(args.workers, args.scheduler) as client:
        threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None
        label = args.scheduler or f"{args.workers} local Dask workers"
        yield dask_runner(client, spec, threads), f"{args.model}|{args.upsampler}|{args.upsampler_checkpoint}", label


def _segment(args: argparse.Namespace) -> int:
    if args.mode == "instance":
        return _segment_instances(args)
    from .engine import plan_request
    from .streaming import Outputs, segment_streamed
    from .tiled import WindowStats

    request = _request(args, args.raster)
    out = Path(args.out or f"{Path(args.raster).stem}_rsov.gpkg")
    started = time.perf_counter()
    job_plan = plan_request(request)
    _check_size(args, job_plan, Path(args.raster).name)
    bar, stage = _progress(args)
    stats = WindowStats()
    with bar, tempfile.TemporaryDirectory(prefix="rsov-") as tmp, _runner(args, stage, stats) as (runner, _, where):
        class_raster = Path(args.raster_out) if args.raster_out else (Path(tmp) / "classes.tif" if args.preview else None)
        outputs = Outputs(vector=out, class_raster=class_raster, layer_per_class=args.layer_per_class)
        summary = segment_streamed(request, job_plan, outputs, runner, stage=stage, stats=stats)
        if args.preview:
            _streamed_preview(request, job_plan, class_raster, summary.class_names, args.preview)
    per_class = ", ".join(f"{name}: {summary.features.get(name, 0)}" for name in summary.class_names)
    print(f"{summary.polygons} polygons ({per_class}) from {job_plan.out.width}x{job_plan.out.height} px of "
          f"{Path(args.raster).name}, {job_plan.summary()}, {summary.blocks} blocks, with {args.model} on {where} "
          f"in {time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _streamed_preview(request, job_plan, class_raster: Path, names: list[str], path: str) -> None:
    """A PNG of the extent (at most 2048 px) with the written class raster over it."""
    import rasterio
    from rasterio.enums import Resampling

    from .preview import write_preview
    from .raster_io import read_chip

    chip = read_chip(request.raster, job_plan.bounds, None, request.bands, max_side=2048)
    with rasterio.open(class_raster) as ds:
        shown = ds.read(1, out_shape=chip.image.shape[:2], resampling=Resampling.nearest)
    write_preview(chip.image, shown, names, path)


def _batch(args: argparse.Namespace) -> int:
    from .engine import plan_request
    from .streaming import BlockStore, Outputs, segment_streamed
    from .tiled import WindowStats

    if not args.out_dir.is_dir():
        args.out_dir.mkdir(parents=True)
    requests = [_request(args, str(raster)) for raster in args.rasters]
    plans = [plan_request(r) for r in requests]
    for request, job_plan in zip(requests, plans):
        _check_size(args, job_plan, Path(request.raster).name)
    bar, stage = _progress(args)
    stats = WindowStats()
    with bar, _runner(args, stage, stats) as (runner, engine_name, where):
        for request, job_plan in zip(requests, plans):
            stem = Path(request.raster).stem
            store = BlockStore.for_job(args.out_dir / ".rsov-blocks", engine_name, request, job_plan)
            outputs = Outputs(vector=args.out_dir / f"{stem}.gpkg", class_raster=args.out_dir / f"{stem}_classes.tif",
                              layer_per_class=args.layer_per_class)
            summary = segment_streamed(request, job_plan, outputs, runner, store=store, stage=stage, stats=stats)
            store.remove()
            print(f"{stem}: {summary.polygons} polygons from {job_plan.out.width}x{job_plan.out.height} px, "
                  f"{job_plan.summary()}, {summary.blocks} blocks ({summary.blocks_resumed} resumed) on {where} "
                  f"in {summary.seconds:.1f} s -> {outputs.vector}", flush=True)
    return 0


def _segment_instances(args: argparse.Namespace) -> int:
    from .engine import load_engine
    from .instances import oriented_boxes
    from .preview import write_preview
    from .vectorize import write_class_raster, write_vector

    request = _request(args, args.raster)
    out = Path(args.out or f"{Path(args.raster).stem}_rsov.gpkg")
    started = time.perf_counter()
    engine = load_engine(args.model, args.device, args.upsampler, args.upsampler_checkpoint, sam=args.sam)
    bar, stage = _progress(args)
    with bar:
        result = engine.segment(request, stage)
    extra = {"rsov_obb": oriented_boxes(result.features)} if args.obb else None
    write_vector(result.features, out, result.crs, layer_per_class=args.layer_per_class,
                 class_names=result.vocabulary.names, extra_layers=extra, instances=True)
    if args.raster_out:
        write_class_raster(result.prediction.class_map, result.transform, result.crs, args.raster_out,
                           result.vocabulary.names)
    if args.preview:
        shown = np.zeros_like(result.prediction.class_map)  # the objects, not the semantic map they were seeded from
        for instance in result.instances:
            shown[instance.full_mask] = instance.class_id
        write_preview(result.chip.image, shown, result.vocabulary.names, args.preview)
    counts = Counter(f.class_name for f in result.features)
    per_class = ", ".join(f"{name}: {counts.get(name, 0)}" for name in result.vocabulary.names)
    h, w = result.prediction.class_map.shape
    print(f"{len(result.features)} objects ({per_class}) from {w}x{h} px of {Path(args.raster).name} "
          f"with {args.model} on {engine.device} in {time.perf_counter() - started:.1f} s -> {out}")
    print(f"summary: {result.summary.text}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .engine import EngineSlot, FeatureCache, load_engine, resolve_device
    from .raster_io import SELF_CONTAINED_DRIVERS, disable_network, restrict_drivers
    from .server import LOCAL_HOSTS, ServerConfig, create_app, default_results_dir, default_token_file, load_or_create_token

    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise InputError(f"Binding {args.host} exposes the backend to the network: add --allow-remote if you mean it.")
    token_file = (args.token_file or default_token_file()).expanduser()
    token = load_or_create_token(token_file)
    results_dir = (args.results_dir or default_results_dir()).expanduser()
    results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if results_dir.stat().st_mode & 0o002:
        raise InputError(f"The results folder {results_dir} is writable by everyone: give a private one "
                         "(--results-dir, or chmod 700 it).")
    cache = FeatureCache(args.cache_mb << 20)
    engines = EngineSlot(lambda: load_engine(args.model, args.device, args.upsampler, args.upsampler_checkpoint,
                                             cache=cache, sam=args.sam, download=False), resolve_device(args.device))
    try:
        engines.get()
    except WeightsMissingError as exc:  # serve anyway: the weights can be downloaded or imported through it
        print(f"rsov: {exc} The backend starts without a model until they are there.", file=sys.stderr, flush=True)
    config = ServerConfig(
        token=token, token_file=token_file, results_dir=results_dir,
        allowed_dirs=tuple(d.expanduser().resolve() for d in args.allow_dir),
        allowed_hosts=LOCAL_HOSTS | {h.lower() for h in args.allowed_host},
        max_upload_bytes=args.max_upload_mb << 20, max_queued=args.max_queue, results_ttl_s=args.results_ttl,
        model_name=args.model, max_geojson_features=args.max_geojson_features,
        max_json_bytes=int(args.max_json_mb * 2**20), max_pixels=int(args.max_pixels), max_bands=args.max_bands,
    )
    restrict_drivers(SELF_CONTAINED_DRIVERS)  # no VRT: its sources could name any file, archive or URL
    disable_network()
    print(f"rsov {__version__}: model {args.model} on {engines.device}; token in {token_file}; "
          f"listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(engines, config), host=args.host, port=args.port, log_level="warning")
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.download or args.import_file:
        with _bytes_bar(args) as bar:
            if args.download:
                spec = resolve_any(args.download)
                path = download_weights(spec, bar.update_to)
            else:
                spec, path = import_weights(args.import_file, args.name, bar.update_to)
        print(f"{spec.name}: {path}")
        return 0
    for row in list_models():
        mark = "present" if row["weights_present"] else "missing"
        size = f"{row['size_bytes'] / 1e6:,.0f} MB" if row["size_bytes"] else "?"
        print(f"{row['kind']:<5} {row['name']:<22} {row['arch']:<10} weights {mark:<8} {size:>9}  {row['description']}")
    print(f"(aliases: {', '.join(n for n, s in MODELS.items() if n != s.name)}; any ARCH@/path/to/checkpoint also works; "
          f"cache: {cache_dir()})")
    return 0


def _bytes_bar(args: argparse.Namespace):
    """A tqdm bar in bytes whose total becomes known with the first update."""
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done: int, total: int | None) -> None:
            if total and self.total != total:
                self.total = total
            self.update(done - self.n)

    return Bar(disable=args.quiet, file=sys.stderr, unit="B", unit_scale=True, unit_divisor=1024)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.simplefilter("ignore", UserWarning)  # the tiny model's warning is repeated in our own words below
    if getattr(args, "model", None) == "tiny-random":
        print("rsov: WARNING: model tiny-random has random weights; this output is MEANINGLESS.", file=sys.stderr)
    try:
        commands = {"segment": _segment, "batch": _batch, "serve": _serve, "models": _models, "eval": run_eval}
        return commands[args.command](args)
    except WeightsMissingError as exc:
        print(f"rsov: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    except CancelledError as exc:
        print(f"rsov: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("rsov: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except (InputError, RsovError) as exc:
        print(f"rsov: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
