"""``rsov``: the command line (segment a raster, list models)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__
from .evaluation.cli import add_eval_parser, run_eval
from .errors import CancelledError, InputError, RsovError, WeightsMissingError
from .models import DEFAULT_MODEL, MODELS, download_weights, list_models, resolve_sam_spec, resolve_spec
from .predictor import FeatureOptions, ScoreOptions
from .raster_io import parse_bands
from .vocabulary import DEFAULT_BACKGROUND, read_classes_file, split_classes

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsov", description="Open-vocabulary segmentation of remote-sensing rasters.")
    parser.add_argument("--version", action="version", version=f"rsov {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment a raster extent into polygons of the given classes")
    seg.add_argument("raster", help="any raster GDAL reads (GeoTIFF, VRT, ...)")
    vocab = seg.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--classes", help='classes separated by ";", synonyms by ",": "building,roof; tree,forest; water"')
    vocab.add_argument("--classes-file", help="one class per line, synonyms comma-separated")
    seg.add_argument("--background", default=",".join(DEFAULT_BACKGROUND),
                     help='synonyms of the implicit background class ("" for none; default: %(default)s)')
    seg.add_argument("--bbox", type=_bbox, help="extent MINX,MINY,MAXX,MAXY (default: whole raster); write --bbox=-84.4,... for negative numbers")
    seg.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326 (default: the raster's)")
    seg.add_argument("--bands", help="1-based bands used as R,G,B, e.g. 4,3,2 (default: first three, or band 1 as grey)")
    seg.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (see `rsov models`) or ARCH@/path/to/ckpt (default: {DEFAULT_MODEL})")
    seg.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    seg.add_argument("--precision", default="fp32", choices=["fp32", "fast", "bf16", "fp16"],
                     help="fp32 reproduces the paper; fast = bf16 on CPU, fp16 on GPU")
    seg.add_argument("--threshold", type=float, default=0.3, help="minimum class probability, else background (default: 0.3)")
    seg.add_argument("--resolution", type=float, help="working ground resolution in metres per pixel (default: long side 448 px)")
    seg.add_argument("--long-side", type=int, default=448, help="working size long side in pixels when --resolution is not given")
    seg.add_argument("--window", type=int, default=224)
    seg.add_argument("--stride", type=int, default=112)
    seg.add_argument("--cls-lambda", type=float, default=0.3, help="global-bias subtraction strength (0 disables)")
    seg.add_argument("--templates", default="openai", help="prompt templates: openai, remote-sensing, plain, or a file")
    seg.add_argument("--upsampler", default="bilinear", choices=["bilinear", "jbu"], help="feature upsampler")
    seg.add_argument("--upsampler-checkpoint", help="FeatUp JBU checkpoint (e.g. clip_jbu_stack_cocostuff.ckpt)")
    seg.add_argument("--rotations", type=_rotations, default=(0,), help="rotation ensemble in degrees, e.g. 0,90,180,270")
    seg.add_argument("--dec", type=float, dest="dec_keep", help="ZoRI DEC: keep this fraction of embedding channels (e.g. 0.39)")
    seg.add_argument("--max-side", type=int, default=2048, help="longest output side in pixels; larger extents are read decimated")
    seg.add_argument("--simplify", type=float, default=1.0, help="polygon simplification tolerance in pixels (0 = none)")
    seg.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this many square metres")
    seg.add_argument("--out", default=None, help="output .gpkg or .geojson (default: ./<raster name>_rsov.gpkg)")
    seg.add_argument("--layer-per-class", action="store_true", help="one GeoPackage layer per class")
    seg.add_argument("--raster-out", help="also write the class map as a GeoTIFF")
    seg.add_argument("--preview", help="also write a PNG preview (image with classes overlaid)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    inst = seg.add_argument_group("instance mode (--mode instance): every object its own polygon")
    inst.add_argument("--mode", default="semantic", choices=["semantic", "instance"])
    inst.add_argument("--sam", help="Segment Anything model (see `rsov models`) or ARCH@/path/to/ckpt (default: sam-vit-b)")
    inst.add_argument("--examples", help="GeoJSON of example polygons with a 'class' property (ZoRI cache bank)")
    inst.add_argument("--points-per-side", type=int, default=16, help="automatic SAM point grid per tile (0: prompts only)")
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

    add_eval_parser(sub)

    models = sub.add_parser("models", help="list known models and whether their weights are on this machine")
    models.add_argument("--download", metavar="NAME", help="download a model's weights into the cache")
    return parser


def _segment(args: argparse.Namespace) -> int:
    from .engine import SegmentRequest, load_engine, resolve_device
    from .instances import InstanceOptions, oriented_boxes, read_examples
    from .preview import write_preview
    from .vectorize import write_class_raster, write_vector

    classes = read_classes_file(args.classes_file) if args.classes_file else split_classes(args.classes)
    precision = args.precision
    if precision == "fast":
        precision = "fp16" if resolve_device(args.device).type == "cuda" else "bf16"
    request = SegmentRequest(
        raster=args.raster, classes=tuple(classes), bbox=args.bbox, bbox_crs=args.bbox_crs,
        bands=parse_bands(args.bands), background=tuple(w for w in args.background.split(",") if w.strip()),
        templates=args.templates,
        features=FeatureOptions(window=args.window, stride=args.stride, long_side=args.long_side,
                                resolution_m=args.resolution, rotations=args.rotations, precision=precision),
        scoring=ScoreOptions(threshold=args.threshold, cls_lambda=args.cls_lambda, dec_keep=args.dec_keep),
        max_side=args.max_side, simplify_px=args.simplify, min_area_m2=args.min_area,
        mode=args.mode,
        instance=InstanceOptions(
            points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou, stability_thresh=args.stability,
            class_prompts=not args.no_class_prompts, tile=args.tile, tile_overlap=args.tile_overlap,
            nms_iou=args.nms_iou, score_threshold=args.object_threshold, context_weight=args.context_weight,
            context_dilation=args.context_dilation, crop_weight=args.crop_weight, exemplar_alpha=args.exemplar_alpha,
            fill_holes=args.fill_holes, oriented_boxes=args.obb,
        ),
        examples=read_examples(args.examples) if args.examples else (),
    )
    out = Path(args.out or f"{Path(args.raster).stem}_rsov.gpkg")
    started = time.perf_counter()
    engine = load_engine(args.model, args.device, args.upsampler, args.upsampler_checkpoint, sam=args.sam)
    from tqdm import tqdm

    with tqdm(total=100, disable=args.quiet, file=sys.stderr, unit="%", bar_format="{l_bar}{bar}| {elapsed}") as bar:
        def stage(name: str, fraction: float) -> None:
            bar.set_description(name)
            bar.update(max(0, round(fraction * 100) - bar.n))

        result = engine.segment(request, stage)
    extra = {"rsov_obb": oriented_boxes(result.features)} if args.mode == "instance" and args.obb else None
    write_vector(result.features, out, result.chip.crs, layer_per_class=args.layer_per_class,
                 class_names=result.vocabulary.names, extra_layers=extra, instances=args.mode == "instance")
    if args.raster_out:
        write_class_raster(result.prediction.class_map, result.chip.transform, result.chip.crs, args.raster_out,
                           result.vocabulary.names)
    if args.preview:
        shown = result.prediction.class_map
        if args.mode == "instance":  # show the objects, not the semantic map they were seeded from
            shown = np.zeros_like(shown)
            for instance in result.instances:
                shown[instance.full_mask] = instance.class_id
        write_preview(result.chip.image, shown, result.vocabulary.names, args.preview)
    counts = Counter(f.class_name for f in result.features)
    per_class = ", ".join(f"{name}: {counts.get(name, 0)}" for name in result.vocabulary.names)
    h, w = result.prediction.class_map.shape
    kind = "objects" if args.mode == "instance" else "polygons"
    print(f"{len(result.features)} {kind} ({per_class}) from {w}x{h} px of {Path(args.raster).name} "
          f"with {args.model} on {engine.device} in {time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .engine import FeatureCache, load_engine
    from .server import LOCAL_HOSTS, ServerConfig, create_app, default_results_dir, default_token_file, load_or_create_token

    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise InputError(f"Binding {args.host} exposes the backend to the network: add --allow-remote if you mean it.")
    token_file = (args.token_file or default_token_file()).expanduser()
    token = load_or_create_token(token_file)
    results_dir = (args.results_dir or default_results_dir()).expanduser()
    results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = load_engine(args.model, args.device, args.upsampler, args.upsampler_checkpoint,
                         cache=FeatureCache(args.cache_mb << 20), sam=args.sam)
    config = ServerConfig(
        token=token, token_file=token_file, results_dir=results_dir,
        allowed_dirs=tuple(d.expanduser().resolve() for d in args.allow_dir),
        allowed_hosts=LOCAL_HOSTS | {h.lower() for h in args.allowed_host},
        max_upload_bytes=args.max_upload_mb << 20, max_queued=args.max_queue, results_ttl_s=args.results_ttl,
        model_name=args.model,
    )
    print(f"rsov {__version__}: model {args.model} on {engine.device}; token in {token_file}; "
          f"listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(engine, config), host=args.host, port=args.port, log_level="warning")
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.download:
        spec = resolve_sam_spec(args.download) if args.download.startswith("sam-") else resolve_spec(args.download)
        print(f"{spec.name}: {download_weights(spec)}")
        return 0
    for row in list_models():
        mark = "present" if row["weights_present"] else "missing"
        print(f"{row['kind']:<5} {row['name']:<22} {row['arch']:<10} weights {mark:<8} {row['description']}")
    print(f"(aliases: {', '.join(n for n, s in MODELS.items() if n != s.name)}; any ARCH@/path/to/checkpoint also works)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.simplefilter("ignore", UserWarning)  # the tiny model's warning is repeated in our own words below
    if getattr(args, "model", None) == "tiny-random":
        print("rsov: WARNING: model tiny-random has random weights; this output is MEANINGLESS.", file=sys.stderr)
    try:
        return {"segment": _segment, "serve": _serve, "models": _models, "eval": run_eval}[args.command](args)
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
