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
from .errors import CancelledError, InputError, RsovError, WeightsMissingError
from .evaluation.cli import add_eval_parser, run_eval
from .models import MODELS, cache_dir, download_weights, import_weights, list_models, resolve_any
from .options import BY_NAME, add_arguments, options_for, values_of
from .precision import resolve_precision
from .progress import ProgressClock, describe_remaining
from .semantic.vocabulary import read_classes_file, split_classes

if TYPE_CHECKING:  # the engine imports torch: loaded only when a command needs it
    from .engine import SegmentRequest

EXIT_INPUT, EXIT_WEIGHTS, EXIT_CANCELLED = 2, 3, 130
# The options table's rows as flags: those of every job, and instance mode's (``segment`` only).
JOB_OPTIONS = tuple(o for o in options_for("cli") if o.stage != "instance")
INSTANCE_OPTIONS = tuple(o for o in options_for("cli") if o.stage == "instance")
ENGINE_OPTIONS = tuple(BY_NAME[n] for n in ("model", "sam", "sam3_model", "upsampler", "upsampler_checkpoint"))


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected MINX,MINY,MAXX,MAXY, got '{text}'")
    return values  # type: ignore[return-value]


def _add_job_arguments(seg: argparse.ArgumentParser) -> None:
    """What ``segment`` and ``batch`` share: vocabulary, extent, models, method and scale-out options."""
    vocab = seg.add_mutually_exclusive_group(required=True)
    vocab.add_argument(
        "--classes", help='classes separated by ";", synonyms by ",": "building,roof; tree,forest; water"'
    )
    vocab.add_argument("--classes-file", help="one class per line, synonyms comma-separated")
    seg.add_argument(
        "--bbox",
        type=_bbox,
        help="extent MINX,MINY,MAXX,MAXY (default: whole raster); write --bbox=-84.4,... for negative numbers",
    )
    seg.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326 (default: the raster's)")
    seg.add_argument(
        "--area",
        help="processing area: GeoJSON polygons (with a crs member, else EPSG:4326); pixels outside get no class",
    )
    seg.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_arguments(seg, JOB_OPTIONS)
    seg.add_argument("--layer-per-class", action="store_true", help="one GeoPackage layer per class")
    seg.add_argument(
        "--cache-mb",
        type=int,
        default=256,
        help="memory for window features, so neighbouring blocks reuse them (default: %(default)s)",
    )
    seg.add_argument("--workers", type=int, help="run the blocks on a Dask LocalCluster of this many worker processes")
    seg.add_argument("--scheduler", help="run the blocks on an existing Dask cluster, e.g. tcp://HOST:8786")
    seg.add_argument(
        "--max-windows",
        type=int,
        default=10000,
        help="refuse runs that encode more windows than this unless --yes (default: %(default)s)",
    )
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
    add_arguments(inst, INSTANCE_OPTIONS)
    inst.add_argument("--obb", action="store_true", help="also write oriented bounding boxes (layer rsov_obb)")

    batch = sub.add_parser("batch", help="segment whole rasters into a folder, resumably (Dask with --workers)")
    batch.add_argument("rasters", nargs="+", help="rasters (GeoTIFF, VRT, ...)")
    _add_job_arguments(batch)
    batch.add_argument(
        "--out-dir",
        required=True,
        type=Path,
        help="writes <raster>.gpkg and <raster>_classes.tif per raster; a rerun resumes",
    )

    serve = sub.add_parser("serve", help="run the local HTTP backend for the QGIS plugin")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--allow-remote", action="store_true", help="required to bind an address other than loopback")
    serve.add_argument(
        "--allowed-host", action="append", default=[], help="extra Host header name to accept (with --allow-remote)"
    )
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_arguments(serve, ENGINE_OPTIONS)
    serve.add_argument("--token-file", type=Path, help="token file (default: ~/.config/rsov/token; created if missing)")
    serve.add_argument(
        "--allow-dir",
        action="append",
        type=Path,
        default=[],
        help="only read rasters under this directory (repeatable; default: any file you can read)",
    )
    serve.add_argument("--results-dir", type=Path, help="where job results are kept (default: a private temp folder)")
    serve.add_argument("--results-ttl", type=float, default=3600.0, help="seconds a finished job's results are kept")
    serve.add_argument("--max-queue", type=int, default=8, help="jobs allowed to wait; more get HTTP 429")
    serve.add_argument("--max-upload-mb", type=int, default=512)
    serve.add_argument("--cache-mb", type=int, default=2048, help="memory for image features of recent extents")
    serve.add_argument(
        "--max-pixels", type=float, default=1e10, help="refuse rasters with more pixels (from the header)"
    )
    serve.add_argument("--max-bands", type=int, default=64, help="refuse rasters with more bands")
    serve.add_argument("--max-json-mb", type=float, default=16, help="largest job body (with its mask and examples)")
    serve.add_argument(
        "--max-geojson-features",
        type=int,
        default=100_000,
        help="larger results are served as GeoPackage only (default: %(default)s)",
    )

    add_eval_parser(sub)

    api_schema = sub.add_parser(
        "api-schema", help="print the HTTP API's OpenAPI schema (the contract, docs/api/openapi.json)"
    )
    api_schema.add_argument("--out", type=Path, help="write it to this file instead of standard output")

    models = sub.add_parser("models", help="list known models and whether their weights are on this machine")
    what = models.add_mutually_exclusive_group()
    what.add_argument("--download", metavar="NAME", help="download a model's weights into the cache, verified")
    what.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        help="copy a weights file downloaded elsewhere into the cache, after checking its digest",
    )
    models.add_argument("--name", help="with --import: the model the file is for (default: found by its digest)")
    models.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _request(args: argparse.Namespace, raster: str) -> SegmentRequest:
    from .engine import request_from_options, resolve_device
    from .geo.instance_io import read_examples

    classes = read_classes_file(args.classes_file) if args.classes_file else split_classes(args.classes)
    choice = resolve_precision(args.precision, resolve_device(args.device), cache_dir())
    if args.precision == "fast" and not args.quiet:
        print(f"rsov: precision fast is {choice.precision} here: {choice.reason}", file=sys.stderr)
    values = values_of(args, JOB_OPTIONS + (INSTANCE_OPTIONS if hasattr(args, "tile") else ()))
    values["precision"] = choice.precision
    engine_options = [o.name for o in JOB_OPTIONS if o.stage == "engine"]
    return request_from_options(
        {k: v for k, v in values.items() if k not in engine_options},
        raster=raster,
        classes=tuple(classes),
        bbox=args.bbox,
        bbox_crs=args.bbox_crs,
        mode=getattr(args, "mode", "semantic"),
        examples=read_examples(args.examples) if getattr(args, "examples", None) else (),
        area=args.area,
    )


def _progress(args: argparse.Namespace):
    from tqdm import tqdm

    bar = tqdm(total=100, disable=args.quiet, file=sys.stderr, unit="%", bar_format="{l_bar}{bar}| {elapsed}{postfix}")
    clock = ProgressClock()

    def stage(name: str, fraction: float) -> None:
        bar.set_description(name, refresh=False)
        left = describe_remaining(clock.remaining(fraction))
        bar.set_postfix_str(left or "", refresh=False)  # tqdm puts the ", " before it
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
            "or choose a coarser --resolution or a smaller --bbox."
        )


@contextmanager
def _runner(args: argparse.Namespace, stage, stats):
    """The block runner the arguments ask for: this process, a LocalCluster or a Dask scheduler."""
    from .batch import EngineSpec, dask_client, dask_runner
    from .engine import FeatureCache, load_engine
    from .streaming import in_process

    if args.workers is None and args.scheduler is None:
        engine = load_engine(
            args.model,
            args.device,
            args.upsampler,
            args.upsampler_checkpoint,
            cache=FeatureCache(args.cache_mb << 20),
            sam=args.sam,
        )
        yield in_process(engine, stats, stage), engine.name, str(engine.device)
        return
    spec = EngineSpec(args.model, args.device, args.upsampler, args.upsampler_checkpoint, args.cache_mb, args.sam)
    with dask_client(args.workers, args.scheduler) as client:
        threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None
        label = args.scheduler or f"{args.workers} local Dask workers"
        yield dask_runner(client, spec, threads), f"{args.model}|{args.upsampler}|{args.upsampler_checkpoint}", label


def _segment(args: argparse.Namespace) -> int:
    if args.mode == "instance" or args.engine == "sam3":
        return _segment_in_memory(args)
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
        class_raster = (
            Path(args.raster_out) if args.raster_out else (Path(tmp) / "classes.tif" if args.preview else None)
        )
        outputs = Outputs(vector=out, class_raster=class_raster, layer_per_class=args.layer_per_class)
        summary = segment_streamed(request, job_plan, outputs, runner, stage=stage, stats=stats)
        if args.preview and class_raster is not None:  # --preview always has a class raster
            _streamed_preview(request, job_plan, class_raster, summary.class_names, args.preview)
    per_class = ", ".join(f"{name}: {summary.features.get(name, 0)}" for name in summary.class_names)
    print(
        f"{summary.polygons} polygons ({per_class}) from {job_plan.out.width}x{job_plan.out.height} px of "
        f"{Path(args.raster).name}, {job_plan.summary()}, {summary.blocks} blocks, with {args.model} on {where} "
        f"in {time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def _streamed_preview(request, job_plan, class_raster: Path, names: list[str], path: str) -> None:
    """A PNG of the extent (at most 2048 px) with the written class raster over it."""
    import rasterio

    with rasterio.open(class_raster) as ds:
        _preview_of(request, job_plan.bounds, ds, names, path)


def _preview_of(request, bounds, classes, names: list[str], path: str) -> None:
    """The preview PNG of ``bounds`` with ``classes`` (an open class raster, or an array) over it."""
    from PIL import Image

    from .geo.preview import write_preview
    from .geo.raster_io import read_chip

    chip = read_chip(request.raster, bounds, None, request.bands, max_side=2048)
    h, w = chip.image.shape[:2]
    if isinstance(classes, np.ndarray):
        shown = np.asarray(Image.fromarray(classes.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST))
    else:
        from rasterio.enums import Resampling

        shown = classes.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    write_preview(chip.image, shown, names, path)


def _batch(args: argparse.Namespace) -> int:
    from .engine import plan_request
    from .streaming import BlockStore, Outputs, segment_streamed
    from .tiled import WindowStats

    if args.engine != "clip":
        raise InputError(
            f"rsov batch streams whole rasters block by block with the clip engine; --engine {args.engine} "
            "runs an extent at a time: use `rsov segment --engine sam3` per raster."
        )
    if not args.out_dir.is_dir():
        args.out_dir.mkdir(parents=True)
    requests = [_request(args, str(raster)) for raster in args.rasters]
    plans = [plan_request(r) for r in requests]
    for request, job_plan in zip(requests, plans, strict=False):
        _check_size(args, job_plan, Path(request.raster).name)
    bar, stage = _progress(args)
    stats = WindowStats()
    with bar, _runner(args, stage, stats) as (runner, engine_name, where):
        for request, job_plan in zip(requests, plans, strict=False):
            stem = Path(request.raster).stem
            store = BlockStore.for_job(args.out_dir / ".rsov-blocks", engine_name, request, job_plan)
            outputs = Outputs(
                vector=args.out_dir / f"{stem}.gpkg",
                class_raster=args.out_dir / f"{stem}_classes.tif",
                layer_per_class=args.layer_per_class,
            )
            summary = segment_streamed(request, job_plan, outputs, runner, store=store, stage=stage, stats=stats)
            store.remove()
            print(
                f"{stem}: {summary.polygons} polygons from {job_plan.out.width}x{job_plan.out.height} px, "
                f"{job_plan.summary()}, {summary.blocks} blocks ({summary.blocks_resumed} resumed) on {where} "
                f"in {summary.seconds:.1f} s -> {outputs.vector}",
                flush=True,
            )
    return 0


def _segment_in_memory(args: argparse.Namespace) -> int:
    """Instance mode, and the sam3 engine in either mode: one extent held in memory."""
    from .engine import load_engine
    from .geo.instance_io import oriented_boxes
    from .geo.preview import write_preview
    from .geo.vectorize import write_class_raster, write_vector

    request = _request(args, args.raster)
    out = Path(args.out or f"{Path(args.raster).stem}_rsov.gpkg")
    started = time.perf_counter()
    engine = load_engine(
        args.model, args.device, args.upsampler, args.upsampler_checkpoint, sam=args.sam, sam3_model=args.sam3_model
    )
    instances = request.mode == "instance"
    bar, stage = _progress(args)
    with bar:
        result = engine.segment(request, stage)
    extra = {"rsov_obb": oriented_boxes(result.features)} if args.obb and instances else None
    write_vector(
        result.features,
        out,
        result.crs,
        layer_per_class=args.layer_per_class,
        class_names=result.vocabulary.names,
        extra_layers=extra,
        instances=instances,
    )
    if args.raster_out:
        write_class_raster(
            result.prediction.class_map, result.transform, result.crs, args.raster_out, result.vocabulary.names
        )
    if args.preview and result.chip is not None:  # an instance result holds its chip
        shown = np.zeros_like(result.prediction.class_map)  # the objects, not the semantic map they were seeded from
        for instance in result.instances:
            shown[instance.full_mask] = instance.class_id
        write_preview(result.chip.image, shown, result.vocabulary.names, args.preview)
    elif args.preview:
        _preview_of(request, result.bounds, result.prediction.class_map, result.vocabulary.names, args.preview)
    counts = Counter(f.class_name for f in result.features)
    per_class = ", ".join(f"{name}: {counts.get(name, 0)}" for name in result.vocabulary.names)
    h, w = result.prediction.class_map.shape
    what = "objects" if instances else "polygons"
    print(
        f"{len(result.features)} {what} ({per_class}) from {w}x{h} px of {Path(args.raster).name} "
        f"with {args.model if args.engine == 'clip' else 'SAM 3'} on {engine.device} in "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )
    if result.summary is not None:
        print(f"summary: {result.summary.text}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .engine import EngineSlot, FeatureCache, load_engine, resolve_device
    from .geo.raster_io import SELF_CONTAINED_DRIVERS, disable_network, restrict_drivers
    from .service.app import (
        LOCAL_HOSTS,
        ServerConfig,
        create_app,
        default_results_dir,
        default_token_file,
        load_or_create_token,
    )

    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise InputError(f"Binding {args.host} exposes the backend to the network: add --allow-remote if you mean it.")
    token_file = (args.token_file or default_token_file()).expanduser()
    token = load_or_create_token(token_file)
    results_dir = (args.results_dir or default_results_dir()).expanduser()
    results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if results_dir.stat().st_mode & 0o002:
        raise InputError(
            f"The results folder {results_dir} is writable by everyone: give a private one "
            "(--results-dir, or chmod 700 it)."
        )
    cache = FeatureCache(args.cache_mb << 20)
    engines = EngineSlot(
        lambda: load_engine(
            args.model,
            args.device,
            args.upsampler,
            args.upsampler_checkpoint,
            cache=cache,
            sam=args.sam,
            download=False,
            sam3_model=args.sam3_model,
        ),
        resolve_device(args.device),
    )
    try:
        engines.get()
    except WeightsMissingError as exc:  # serve anyway: the weights can be downloaded or imported through it
        print(f"rsov: {exc} The backend starts without a model until they are there.", file=sys.stderr, flush=True)
    config = ServerConfig(
        token=token,
        token_file=token_file,
        results_dir=results_dir,
        allowed_dirs=tuple(d.expanduser().resolve() for d in args.allow_dir),
        allowed_hosts=LOCAL_HOSTS | {h.lower() for h in args.allowed_host},
        max_upload_bytes=args.max_upload_mb << 20,
        max_queued=args.max_queue,
        results_ttl_s=args.results_ttl,
        model_name=args.model,
        max_geojson_features=args.max_geojson_features,
        max_json_bytes=int(args.max_json_mb * 2**20),
        max_pixels=int(args.max_pixels),
        max_bands=args.max_bands,
    )
    restrict_drivers(SELF_CONTAINED_DRIVERS)  # no VRT: its sources could name any file, archive or URL
    disable_network()
    print(
        f"rsov {__version__}: model {args.model} on {engines.device}; token in {token_file}; "
        f"listening on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(engines, config), host=args.host, port=args.port, log_level="warning")
    return 0


def _api_schema(args: argparse.Namespace) -> int:
    from .service.api_schema import write_api_schema

    write_api_schema(args.out)
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
    print(
        f"(aliases: {', '.join(n for n, s in MODELS.items() if n != s.name)}; any ARCH@/path/to/checkpoint also works; "
        f"cache: {cache_dir()})"
    )
    return 0


def _bytes_bar(args: argparse.Namespace):
    """A tqdm bar in bytes whose total becomes known with the first update."""
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done: int, total: int | None) -> None:
            if total and self.total != total:
                self.total: int | None = total
            self.update(done - self.n)

    return Bar(disable=args.quiet, file=sys.stderr, unit="B", unit_scale=True, unit_divisor=1024)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.simplefilter("ignore", UserWarning)  # the tiny model's warning is repeated in our own words below
    if getattr(args, "model", None) == "tiny-random":
        print("rsov: WARNING: model tiny-random has random weights; this output is MEANINGLESS.", file=sys.stderr)
    try:
        commands = {
            "segment": _segment,
            "batch": _batch,
            "serve": _serve,
            "models": _models,
            "eval": run_eval,
            "api-schema": _api_schema,
        }
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
