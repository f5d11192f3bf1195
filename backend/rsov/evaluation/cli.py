"""``rsov eval semantic|instance``: score the engine on a labelled dataset, optionally over a sweep.

Wire it into the main parser with ``add_eval_parser(subparsers)`` and dispatch ``run_eval(args)``;
user errors are raised as ``InputError`` for the main CLI to print (exit 2).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..engine import SegmentRequest
from ..errors import InputError
from ..semantic.predictor import FeatureOptions
from ..semantic.vocabulary import ClassSpec
from .datasets import (
    PRESETS,
    DatasetPreset,
    LabelSpec,
    class_index,
    get_preset,
    load_classes,
    load_coco,
    pair_images,
    parse_label_map,
    preset_classes_path,
)
from .options import EngineSpec, Variant, apply_option, expand_sweeps, options_for, parse_sweep
from .report import Report, RunSummary, images_text, instance_summary, semantic_summary, write_report
from .runner import EngineSegmenter, ResultCache, Segmenter, evaluate_instances, evaluate_semantic, output_folder

EXIT_CANCELLED = 130
LabelMap = dict[int, int | None] | None  # raw value or category id -> class index (None: ignored)
DEFAULT_IGNORE_INDEX = 255  # mmseg's convention


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return int(text)


def _add_common(parser: argparse.ArgumentParser, task: str) -> None:
    presets = [name for name, p in PRESETS.items() if p.task == task]
    parser.add_argument(
        "--dataset",
        choices=presets,
        help="benchmark preset: its classes file, label map, ignore "
        "index, threshold and background class (each can still be overridden)",
    )
    parser.add_argument(
        "--classes-file",
        type=Path,
        help="one class per line, synonyms comma-separated; line order gives the class indexes (default: the preset's)",
    )
    parser.add_argument(
        "--label-map",
        help='raw value (or COCO category id) to class: "1:0,2:1" or "1:building", '
        '"0:ignore" (default: the preset\'s, else value k = class k / COCO names)',
    )
    parser.add_argument(
        "--unseen",
        help="comma-separated unseen class names: adds seen/unseen scores and their "
        "harmonic mean (default: the preset's split)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    for option in options_for(task):
        # text, parsed by the option when applied: only the flags given override the benchmark defaults
        parser.add_argument(
            option.flag, *("--" + a.replace("_", "-") for a in option.aliases), dest=option.name, help=option.help
        )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="OPTION=V1,V2",
        help="compare values of an option, e.g. threshold=0.1,0.3 (repeat for a grid of every "
        "combination; items of a list value joined by +, e.g. rotations=0,0+90+180+270)",
    )
    parser.add_argument("--limit", type=_positive_int, help="evaluate only the first N images (sorted by name)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("rsov_eval"),
        help="folder for results.json/.md, the charts and the per-image cache (default: rsov_eval)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute every image instead of reusing cached results"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(
        eval_flags={a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    )


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval semantic`` and ``eval instance`` to the main parser's subcommands."""
    evaluate = subparsers.add_parser(
        "eval",
        help="score the engine on labelled images (mIoU, mask AP), with sweeps",
        description="Score the engine on a labelled dataset, as the papers report it.",
    )
    tasks = evaluate.add_subparsers(dest="eval_task", required=True)
    semantic = tasks.add_parser("semantic", help="per-class IoU, mIoU, pixel accuracy (+ seen/unseen/h-mIoU)")
    semantic.add_argument("--images", type=Path, required=True, help="folder of images (GeoTIFF, PNG, JPG, ...)")
    semantic.add_argument(
        "--labels", type=Path, required=True, help="folder of one-band label rasters, same file stems"
    )
    semantic.add_argument("--label-suffix", help="label stem = image stem + this (default: the preset's, else none)")
    semantic.add_argument(
        "--ignore-index",
        type=int,
        help=f"label value never scored (default: the preset's, else {DEFAULT_IGNORE_INDEX}; -1 for none)",
    )
    semantic.add_argument(
        "--background-class",
        help="class that takes pixels matching none of the classes (under the "
        "threshold); default: the preset's, else (or with 'none') such pixels count as misses",
    )
    _add_common(semantic, "semantic")
    instance = tasks.add_parser("instance", help="mask AP@0.5, Recall@100 at IoU 0.4/0.5/0.6 (+ seen/unseen/HM)")
    instance.add_argument("--images", type=Path, required=True, help="folder holding the annotated images")
    instance.add_argument("--annotations", type=Path, required=True, help="COCO instance annotations (JSON)")
    _add_common(instance, "instance")
    return evaluate


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    parts = ["rsov", "eval", args.eval_task]
    for dest, flag in args.eval_flags.items():
        value = getattr(args, dest, None)
        if value is None or value is False or value == []:
            continue
        if value is True:
            parts.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                parts += [flag, str(item)]
    return shlex.join(parts)


def _base_variant(args: argparse.Namespace, classes: tuple[ClassSpec, ...], preset: DatasetPreset | None) -> Variant:
    """Benchmark defaults (no implicit background, the preset's threshold), then the options given."""
    # the paper's per-image rule (long side 448), as the published benchmarks were run
    request = SegmentRequest(
        raster="",
        classes=tuple(",".join(c.synonyms) for c in classes),
        background=(),
        features=FeatureOptions(long_side=448),
    )
    variant = Variant(EngineSpec(), request)
    if preset is not None and preset.threshold is not None:
        variant = apply_option(variant, "threshold", str(preset.threshold))
    for option in options_for(args.eval_task):
        if getattr(args, option.name) is not None:
            variant = apply_option(variant, option.name, getattr(args, option.name))
    return variant


def _semantic(
    args: argparse.Namespace,
    preset: DatasetPreset | None,
    classes: tuple[ClassSpec, ...],
    label_map: LabelMap,
    unseen: list[int],
    variants: list[Variant],
    segmenter: Segmenter,
    cache: ResultCache,
) -> tuple[list[RunSummary], int, list[str]]:
    """Pair images with labels, score every variant: (run summaries, images evaluated, notes)."""
    suffix = args.label_suffix if args.label_suffix is not None else (preset.label_suffix if preset else "")
    pairs, unpaired = pair_images(args.images, args.labels, suffix)
    notes = (
        [
            f"{len(unpaired)} images have no label and were skipped: "
            + ", ".join(p.name for p in unpaired[:10])
            + (" ..." if len(unpaired) > 10 else "")
        ]
        if unpaired
        else []
    )
    pairs = pairs[: args.limit] if args.limit else pairs
    ignore = (
        args.ignore_index
        if args.ignore_index is not None
        else (preset.ignore_index if preset else DEFAULT_IGNORE_INDEX)
    )
    background = args.background_class or (preset.background_class if preset else None)
    background = None if background and background.lower() == "none" else background
    labels = LabelSpec(
        tuple(c.name for c in classes),
        label_map,
        ignore if ignore is None or ignore >= 0 else None,
        class_index(background, classes) if background else None,
    )
    runs = evaluate_semantic(pairs, labels, variants, segmenter, cache, unseen, not args.quiet)
    return [semantic_summary(r) for r in runs], len(pairs), notes


def _instance(
    args: argparse.Namespace,
    classes: tuple[ClassSpec, ...],
    label_map: LabelMap,
    unseen: list[int],
    variants: list[Variant],
    segmenter: Segmenter,
    cache: ResultCache,
) -> tuple[list[RunSummary], int, list[str]]:
    """Read the COCO annotations, score every variant: (run summaries, images evaluated, notes)."""
    dataset = load_coco(args.annotations, args.images, classes, label_map)
    notes = (
        [f"{len(dataset.missing)} annotated images are not in {args.images} and were skipped."]
        if dataset.missing
        else []
    )
    if args.limit:
        dataset = replace(dataset, images=dataset.images[: args.limit])
    runs = evaluate_instances(dataset, len(classes), variants, segmenter, cache, unseen, not args.quiet)
    return [instance_summary(r) for r in runs], len(dataset.images), notes


def _require_eval_extra(task: str) -> None:
    """``rsov eval`` draws with matplotlib and scores instances with pycocotools: the ``eval`` extra."""
    needed = ("matplotlib", "pycocotools") if task == "instance" else ("matplotlib",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(
            f"rsov eval {task} needs {' and '.join(missing)}: install the backend with its eval extra "
            "(pip install 'rsov[eval]', or -e 'backend[eval]' in a checkout)."
        )


def run_eval(args: argparse.Namespace, segmenter: Segmenter | None = None) -> int:
    """Run ``rsov eval``; ``segmenter`` replaces the real engine (tests). Returns the exit code."""
    _require_eval_extra(args.eval_task)
    preset = get_preset(args.dataset, args.eval_task) if args.dataset else None
    classes_path = args.classes_file or (preset_classes_path(preset) if preset else None)
    if classes_path is None:
        raise InputError("Give the classes with --classes-file, or a benchmark with --dataset.")
    classes = load_classes(classes_path)
    map_text = args.label_map or (preset.label_map if preset else None)
    label_map = parse_label_map(map_text, classes) if map_text else None
    unseen_names = (
        [n for n in args.unseen.split(",") if n.strip()] if args.unseen else list(preset.unseen if preset else ())
    )
    unseen = [class_index(n, classes) for n in unseen_names]
    base = _base_variant(args, classes, preset)
    variants = expand_sweeps(base, [parse_sweep(s, args.eval_task) for s in args.sweep]) if args.sweep else [base]
    out = output_folder(args.out)
    cache = ResultCache(None if args.no_cache else out / "cache")
    segmenter = segmenter or EngineSegmenter(args.device)
    try:
        if args.eval_task == "semantic":
            runs, count, notes = _semantic(args, preset, classes, label_map, unseen, variants, segmenter, cache)
        else:
            runs, count, notes = _instance(args, classes, label_map, unseen, variants, segmenter, cache)
    except KeyboardInterrupt:
        kept = (
            f"finished images are cached in {cache.folder}: run the same command again to continue"
            if cache.folder
            else "nothing was kept (--no-cache)"
        )
        print(f"rsov: interrupted; {kept}.", file=sys.stderr)
        return EXIT_CANCELLED
    for note in notes:
        print(f"rsov: {note}", file=sys.stderr)
    names = [c.name for c in classes]
    title = preset.title if preset else Path(classes_path).stem
    report = Report(args.eval_task, title, names, [names[k] for k in unseen], count, _command(args), runs, notes)
    written = write_report(report, out)
    for run in runs:
        scores = ", ".join(f"{k} {v:.1f}" for k, v in run.metrics.items() if v is not None)
        print(f"{run.name}: {scores}")
    reused = f"; {cache.hits} of {count * len(variants)} image results from the cache" if cache.hits else ""
    print(f"{images_text(count)} of {title}{reused} -> {', '.join(str(p) for p in written)}")
    return 0
