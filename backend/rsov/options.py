"""The method options, declared once (configuration as data).

Every option a job can set is one :class:`Option` row in :data:`OPTIONS`: its name, type, default,
range, help, the stage it sets and the results it changes. The surfaces come from this table:

- ``rsov segment`` / ``rsov batch`` flags (``--name-with-dashes``), built by :func:`add_arguments`;
- the HTTP API's ``options`` object (``JobOptions`` in ``rsov.service.schemas``, one field per row);
- ``rsov eval --sweep name=v1,v2`` (``rsov.evaluation.options``);
- the QGIS plugin's defaults, tested equal to the committed API schema.

A row's ``stage`` says which part of a :class:`~rsov.engine.SegmentRequest` it sets (``request`` for
the request itself, ``features``/``scoring``/``instance`` for its option groups, ``engine`` for the
models an engine loads) and ``field`` the attribute there; :func:`by_stage` does that mapping, once.
This module imports nothing heavy, so ``rsov --help`` and the schema stay cheap.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .grid import BLOCK_SIDE
from .semantic.vocabulary import DEFAULT_BACKGROUND, DEFAULT_STUFF

STAGES = ("request", "features", "scoring", "instance", "engine")
KINDS = ("float", "int", "bool", "str", "ints", "words")
SURFACES = frozenset({"cli", "api", "eval"})
PRECISIONS = ("fp32", "fast", "bf16", "fp16", "int8")
REFINE_MODES = ("none", "sam")  # semantic mode: "sam" cleans the class map with SAM's regions (see ``refine``)
UPSAMPLERS = ("bilinear", "jbu")
ENGINES = ("clip", "sam3")  # clip: SegEarth-OV (and SAM proposals in instance mode); sam3: SAM 3 concept prompts
NONE_WORDS = ("", "none", "off")
METAVARS = {"float": "X", "int": "N", "str": "TEXT", "ints": "N,N", "words": "WORD,WORD"}  # a bool row is a bare switch


@dataclass(frozen=True)
class Option:
    """One method option.

    ``kind`` is the value's type: float, int, bool, str, ints (a list of integers) or words (a list of
    names). ``optional`` options also take None ("none"/"off" in text), meaning "not set". ``minimum``
    and ``maximum`` bound a number (``above`` makes the minimum exclusive) or the length of a list.
    """

    name: str
    kind: str
    default: Any
    help: str
    stage: str
    field: str = ""  # the attribute the stage's dataclass calls it (default: ``name``)
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False  # the minimum itself is refused
    choices: tuple[str, ...] = ()
    optional: bool = False
    tasks: tuple[str, ...] = ("semantic", "instance")  # the modes whose results it changes
    surfaces: frozenset[str] = SURFACES
    aliases: tuple[str, ...] = ()  # older names still accepted by the CLI and sweeps

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.stage not in STAGES or not self.surfaces <= SURFACES:
            raise ValueError(f"Option row {self.name}: unknown kind, stage or surface.")  # a table typo

    @property
    def attribute(self) -> str:
        return self.field or self.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` if it is in range, else an InputError naming the option and its range."""
        if value is None:
            if self.optional:
                return None
            raise InputError(f"{self.name} needs a value ({self.help}).")
        if self.choices and value not in self.choices:
            raise InputError(f"{self.name} must be one of {', '.join(self.choices)}, got '{value}'.")
        size = len(value) if self.kind in ("ints", "words") else value
        if self.kind in ("float", "int") and not math.isfinite(size):
            raise InputError(f"{self.name} must be a finite number, got {value}.")
        low = self.minimum is not None and (size <= self.minimum if self.above else size < self.minimum)
        if low or (self.maximum is not None and size > self.maximum):
            raise InputError(f"{self.name} must be {self.range_text()}, got {value}.")
        return value

    def range_text(self) -> str:
        what = "a list of " if self.kind in ("ints", "words") else ""
        low = "" if self.minimum is None else (f"> {self.minimum:g}" if self.above else f">= {self.minimum:g}")
        high = "" if self.maximum is None else f"<= {self.maximum:g}"
        return what + " and ".join(t for t in (low, high) if t) + (" items" if what else "")

    def parse(self, text: str, check: bool = True) -> Any:
        """The value of the option's text form (a flag's argument, a sweep value), checked unless
        ``check`` is False.

        Lists separate items with ',' or '+' (a sweep keeps ',' between its points).
        """
        text = text.strip()
        if self.optional and text.lower() in NONE_WORDS:
            return None
        try:
            if self.kind == "float":
                value: Any = float(text)
            elif self.kind == "int":
                value = int(text)
            elif self.kind == "bool":
                value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text.lower()]
            elif self.kind == "ints":
                value = tuple(int(v) for v in text.replace("+", ",").split(",") if v.strip())
            elif self.kind == "words":
                value = (
                    ()
                    if text.lower() == "none"
                    else tuple(w.strip() for w in text.replace("+", ",").split(",") if w.strip())
                )
            else:
                value = text
        except (ValueError, KeyError):
            raise InputError(f"'{text}' is not a valid value for {self.name} ({self.help}).") from None
        return self.check(value) if check else value


def _opt(name: str, kind: str, default: Any, help: str, stage: str, **more: Any) -> Option:
    return Option(name, kind, default, help, stage, **more)


INSTANCE = ("instance",)
CLI_EVAL = frozenset({"cli", "eval"})
OPTIONS: tuple[Option, ...] = (
    # the models an engine loads (the server keeps its own, chosen when it starts)
    _opt(
        "model",
        "str",
        "ViT-B-16-openai",
        "model name (see `rsov models`) or ARCH@/path/to/ckpt",
        "engine",
        surfaces=CLI_EVAL,
    ),  # models.DEFAULT_MODEL (a test keeps them equal; models imports torch)
    _opt("upsampler", "str", "bilinear", "feature upsampler", "engine", choices=UPSAMPLERS, surfaces=CLI_EVAL),
    _opt(
        "upsampler_checkpoint",
        "str",
        None,
        "FeatUp JBU checkpoint file (e.g. clip_jbu_stack_cocostuff.ckpt)",
        "engine",
        optional=True,
        surfaces=CLI_EVAL,
    ),
    _opt(
        "sam",
        "str",
        None,
        "Segment Anything model for instance mode and refine sam (see `rsov models`) or "
        "ARCH@/path/to/ckpt (default: sam-vit-b)",
        "engine",
        optional=True,
        surfaces=CLI_EVAL,
    ),
    _opt(
        "sam3_model",
        "str",
        None,
        "SAM 3 model for --engine sam3 (see `rsov models`) or sam3@/path/to/sam3.pt "
        "(default: sam3, or tiny-random with --model tiny-random)",
        "engine",
        optional=True,
        surfaces=CLI_EVAL,
    ),
    # the request
    _opt(
        "engine",
        "str",
        "clip",
        "clip: training-free CLIP (SegEarth-OV; SAM proposals in instance mode); sam3: SAM 3 finds every "
        "object of each class from its text (semantic mode: stuff classes from CLIP, see docs/engines.md)",
        "request",
        choices=ENGINES,
    ),
    _opt(
        "stuff",
        "words",
        DEFAULT_STUFF,
        "with --engine sam3 in semantic mode: a class with any of these words comes from CLIP's dense map, "
        "not from SAM 3's objects (none: every class from SAM 3)",
        "request",
        maximum=256,
        tasks=("semantic",),
    ),
    _opt(
        "templates",
        "str",
        "openai",
        "prompt templates: openai, remote-sensing, plain (the CLI also takes a file)",
        "request",
    ),
    _opt(
        "background",
        "words",
        DEFAULT_BACKGROUND,
        "synonyms of the implicit background class (none: no background class)",
        "request",
        maximum=64,
    ),
    _opt(
        "bands",
        "ints",
        None,
        "1-based bands used as R,G,B, e.g. 4,3,2 (default: the first three, or band 1 as grey)",
        "request",
        minimum=1,
        maximum=3,
        optional=True,
    ),
    _opt(
        "simplify",
        "float",
        1.0,
        "polygon simplification tolerance in pixels (0: none)",
        "request",
        field="simplify_px",
        minimum=0,
        maximum=100,
    ),
    _opt(
        "min_area",
        "float",
        0.0,
        "drop polygons smaller than this many square metres",
        "request",
        field="min_area_m2",
        minimum=0,
    ),
    _opt(
        "max_side",
        "int",
        None,
        "explicitly coarser output: at most this many pixels on the long side",
        "request",
        minimum=16,
        optional=True,
    ),
    _opt(
        "block_size",
        "int",
        BLOCK_SIDE,
        "output pixels per block side: memory per block, and the unit of resume and Dask tasks",
        "request",
        minimum=64,
        maximum=8192,
    ),
    _opt(
        "refine",
        "str",
        "none",
        "semantic mode: sam averages the class probabilities inside each of SAM's "
        "automatic regions, so boundaries follow them (a SAM pass per 1024 px tile)",
        "request",
        choices=REFINE_MODES,
        tasks=("semantic",),
    ),
    # the image features
    _opt(
        "resolution",
        "float",
        None,
        "working ground resolution in metres per pixel (default: the raster's own x 1024/448, the same at any extent)",
        "features",
        field="resolution_m",
        minimum=0,
        above=True,
        optional=True,
    ),
    _opt(
        "long_side",
        "int",
        None,
        "instead, the paper's per-extent rule: resize the extent to this many pixels on its long side",
        "features",
        minimum=16,
        maximum=4096,
        optional=True,
    ),
    _opt("window", "int", 224, "sliding window side in working pixels", "features", minimum=16, surfaces=CLI_EVAL),
    _opt("stride", "int", 112, "sliding window stride in working pixels", "features", minimum=1, surfaces=CLI_EVAL),
    _opt(
        "rotations",
        "ints",
        (0,),
        "rotation ensemble in degrees (multiples of 90), e.g. 0,90,180,270",
        "features",
        minimum=1,
        maximum=4,
    ),
    _opt(
        "precision",
        "str",
        "fp32",
        "fp32 reproduces the paper; fast is what is fast on this hardware: fp16 on "
        "CUDA, bf16 on CPUs with native bf16, else fp32 (or int8 where `make bench` measured it faster)",
        "features",
        choices=PRECISIONS,
    ),
    # scoring against the vocabulary
    _opt("threshold", "float", 0.3, "minimum class probability, else background", "scoring", minimum=0, maximum=1),
    _opt("cls_lambda", "float", 0.3, "global-bias subtraction strength (0: off)", "scoring", minimum=0, maximum=2),
    _opt(
        "dec_keep",
        "float",
        None,
        "ZoRI DEC: keep this fraction of embedding channels (e.g. 0.39)",
        "scoring",
        minimum=0,
        maximum=1,
        above=True,
        optional=True,
        aliases=("dec",),
    ),
    # instance mode
    _opt(
        "points_per_side",
        "int",
        16,
        "automatic SAM point grid per tile (0: prompts only)",
        "instance",
        minimum=0,
        maximum=64,
        tasks=INSTANCE,
    ),
    _opt(
        "points_per_batch",
        "int",
        64,
        "point prompts per batch (bounds memory; the decoder call size is measured per machine)",
        "instance",
        minimum=1,
        maximum=1024,
        tasks=INSTANCE,
    ),
    _opt(
        "pred_iou",
        "float",
        0.8,
        "SAM predicted-IoU threshold for grid masks (-1: keep all)",
        "instance",
        field="pred_iou_thresh",
        minimum=-1,
        maximum=1,
        tasks=INSTANCE,
    ),
    _opt(
        "stability",
        "float",
        0.9,
        "SAM stability-score threshold for grid masks (-1: keep all)",
        "instance",
        field="stability_thresh",
        minimum=-1,
        maximum=1,
        tasks=INSTANCE,
    ),
    _opt(
        "class_prompts",
        "bool",
        True,
        "extra point prompts where the semantic map is confident",
        "instance",
        tasks=INSTANCE,
    ),
    _opt("tile", "int", 1024, "SAM tile size in output pixels", "instance", minimum=64, maximum=4096, tasks=INSTANCE),
    _opt(
        "tile_overlap",
        "int",
        128,
        "overlap of SAM tiles in output pixels (seam-cut masks are merged)",
        "instance",
        minimum=0,
        maximum=2047,
        tasks=INSTANCE,
    ),
    _opt("nms_iou", "float", 0.5, "mask NMS IoU across classes", "instance", minimum=0, maximum=1, tasks=INSTANCE),
    _opt(
        "object_threshold",
        "float",
        0.3,
        'drop objects whose class probability is lower ("none of these")',
        "instance",
        field="score_threshold",
        minimum=0,
        maximum=1,
        tasks=INSTANCE,
    ),
    _opt(
        "context_weight",
        "float",
        0.0,
        "SCORE regional context weight (0: off)",
        "instance",
        minimum=0,
        maximum=1,
        tasks=INSTANCE,
    ),
    _opt(
        "context_dilation",
        "int",
        4,
        "SCORE context dilation: kernel 3 + this",
        "instance",
        minimum=0,
        maximum=10,
        tasks=INSTANCE,
    ),
    _opt(
        "crop_weight",
        "float",
        0.0,
        "weight of the cut-out CLIP score (0: off)",
        "instance",
        minimum=0,
        maximum=1,
        tasks=INSTANCE,
    ),
    _opt(
        "exemplar_alpha",
        "float",
        0.5,
        "ZoRI PIP: weight of the example bank",
        "instance",
        minimum=0,
        maximum=10,
        tasks=INSTANCE,
    ),
    _opt("fill_holes", "bool", False, "fill holes inside object masks", "instance", tasks=INSTANCE),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def options_for(surface: str, task: str | None = None) -> tuple[Option, ...]:
    """The rows a surface offers, those that change ``task``'s results when given."""
    return tuple(o for o in OPTIONS if surface in o.surfaces and (task is None or task in o.tasks))


def find(name: str, surface: str = "eval", task: str | None = None) -> Option:
    """The row called ``name`` (or one of its aliases), or an InputError listing the known ones."""
    known = options_for(surface, task)
    wanted = name.strip().replace("-", "_")
    for option in known:
        if wanted == option.name or wanted in option.aliases:
            return option
    where = f"for {task} jobs" if task else "known"
    raise InputError(f"Unknown option '{name}' {where}: choose from {', '.join(o.name for o in known)}.")


def by_stage(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Option values by name -> {stage: {dataclass attribute: value}}, the one name mapping."""
    staged: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}
    for name, value in values.items():
        option = BY_NAME[name]
        staged[option.stage][option.attribute] = tuple(value) if isinstance(value, list) else value
    return staged


def add_arguments(parser: argparse._ActionsContainer, options: Iterable[Option]) -> None:
    """One flag per row (on a parser or an argument group), parsed by the row and checked by
    :func:`values_of`, so a value out of range is an InputError like any other bad input.

    A bool row defaulting to False is ``--name``; one defaulting to True is ``--no-name``.
    """
    for option in options:
        flags = [option.flag] + ["--" + a.replace("_", "-") for a in option.aliases]
        if option.kind == "bool":
            if option.default:
                parser.add_argument(
                    "--no-" + option.flag[2:], dest=option.name, action="store_false", help=f"no {option.help}"
                )
            else:
                parser.add_argument(*flags, dest=option.name, action="store_true", help=option.help)
            continue
        default = option.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = option.help + (
            f" (default: {shown})" if default is not None and "default" not in option.help else ""
        )
        parser.add_argument(
            *flags,
            dest=option.name,
            default=default,
            type=_argparse_type(option),
            choices=option.choices or None,
            metavar=None if option.choices else METAVARS[option.kind],
            help=help_text.replace("%", "%%"),
        )


def _argparse_type(option: Option):
    def convert(text: str) -> Any:
        try:
            return option.parse(text, check=False)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.name  # argparse names the type in "invalid <name> value"
    return convert


def values_of(namespace: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The parsed flags of ``options`` as {name: value}, each checked against its row's range."""
    return {o.name: o.check(getattr(namespace, o.name)) for o in options}
