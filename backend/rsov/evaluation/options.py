"""Method options, one table for command-line flags and sweeps (configuration as data).

A ``Variant`` is one point of a comparison: the engine to load and the request options. Every
option in ``METHOD_OPTIONS`` can be set with its flag (``--cls-lambda 0``) or swept
(``--sweep cls_lambda=0,0.3``); several sweeps form a grid (every combination). Values of
list-like options separate their items with ``+`` inside a sweep (``rotations=0,0+90+180+270``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..engine import SegmentRequest
from ..errors import InputError
from ..models import DEFAULT_MODEL
from ..refine import REFINE_MODES


@dataclass(frozen=True)
class EngineSpec:
    """What ``load_engine`` builds; variants with equal specs share one loaded engine."""

    model: str = DEFAULT_MODEL
    upsampler: str = "bilinear"
    upsampler_checkpoint: str | None = None
    sam: str | None = None  # instance mode's Segment Anything model (None: the engine's default)


@dataclass(frozen=True)
class Variant:
    """One evaluated configuration; ``request`` has no raster yet (the runner fills it per image)."""

    engine: EngineSpec
    request: SegmentRequest
    swept: tuple[tuple[str, str], ...] = ()  # (option, value as typed) of this sweep point

    @property
    def name(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.swept) or "default"

    def fingerprint(self) -> str:
        """Everything that changes the result (the device does not, by design)."""
        return repr((self.engine, self.request))


@dataclass(frozen=True)
class MethodOption:
    name: str  # flag --name-with-dashes; sweep name_with_underscores
    target: str  # "engine", "request", or the SegmentRequest field holding it: "features", "scoring", "instance"
    field: str
    parse: Callable[[str], object]
    help: str
    tasks: tuple[str, ...] = ("semantic", "instance")  # the evaluations whose results it changes


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "off") else float(text)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("+", ",").split(",") if v.strip())


def _words(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    return tuple(w.strip() for w in text.replace("+", ",").split(",") if w.strip())


def _upsampler(text: str) -> str:
    if text not in ("bilinear", "jbu"):
        raise ValueError(text)
    return text


def _refine(text: str) -> str:
    if text not in REFINE_MODES:
        raise ValueError(text)
    return text


INSTANCE = ("instance",)
METHOD_OPTIONS: tuple[MethodOption, ...] = (
    MethodOption("model", "engine", "model", str,
                 f"model name (see `rsov models`) or ARCH@/path/to/ckpt (default {DEFAULT_MODEL})"),
    MethodOption("upsampler", "engine", "upsampler", _upsampler, "feature upsampler: bilinear or jbu"),
    MethodOption("upsampler_checkpoint", "engine", "upsampler_checkpoint", str, "FeatUp JBU checkpoint file"),
    MethodOption("templates", "request", "templates", str, "prompt templates: openai, remote-sensing, plain, or a file"),
    MethodOption("background", "request", "background", _words,
                 "implicit background synonyms (default none: benchmark class files name their own background)"),
    MethodOption("bands", "request", "bands", _ints, "1-based bands used as R,G,B, e.g. 4,3,2"),
    MethodOption("long_side", "features", "long_side", int, "working size long side in pixels (default 448)"),
    MethodOption("resolution", "features", "resolution_m", _optional_float, "working ground resolution, metres per pixel"),
    MethodOption("window", "features", "window", int, "sliding window (default 224)"),
    MethodOption("stride", "features", "stride", int, "sliding window stride (default 112)"),
    MethodOption("rotations", "features", "rotations", _ints, "rotation ensemble in degrees, e.g. 0,90,180,270"),
    MethodOption("precision", "features", "precision", str, "fp32 (the paper's), bf16 or fp16"),
    MethodOption("threshold", "scoring", "threshold", float, "minimum class probability (default: the preset's, else 0.3)"),
    MethodOption("cls_lambda", "scoring", "cls_lambda", float, "global-bias subtraction strength (default 0.3)"),
    MethodOption("dec", "scoring", "dec_keep", _optional_float, "ZoRI DEC: fraction of embedding channels kept, or none"),
    MethodOption("refine", "request", "refine", _refine, "clean the semantic map with SAM's regions: none or sam",
                 ("semantic",)),
    MethodOption("sam", "engine", "sam", str, "Segment Anything model for instance mode (see `rsov models`)",
                 INSTANCE),
    MethodOption("points_per_side", "instance", "points_per_side", int, "SAM point grid per tile (0: prompts only)",
                 INSTANCE),
    MethodOption("pred_iou", "instance", "pred_iou_thresh", float, "SAM predicted-IoU threshold", INSTANCE),
    MethodOption("stability", "instance", "stability_thresh", float, "SAM stability-score threshold", INSTANCE),
    MethodOption("tile", "instance", "tile", int, "SAM tile size in pixels", INSTANCE),
    MethodOption("nms_iou", "instance", "nms_iou", float, "mask NMS IoU across classes", INSTANCE),
    MethodOption("object_threshold", "instance", "score_threshold", float, "drop objects under this class probability",
                 INSTANCE),
    MethodOption("context_weight", "instance", "context_weight", float, "SCORE regional context weight (0 = off)",
                 INSTANCE),
    MethodOption("context_dilation", "instance", "context_dilation", int, "SCORE context dilation: kernel 3 + this",
                 INSTANCE),
    MethodOption("crop_weight", "instance", "crop_weight", float, "weight of the cut-out CLIP score (0 = off)", INSTANCE),
)


def options_for(task: str) -> tuple[MethodOption, ...]:
    """The options that change ``task``'s results (instance-mode options only matter to instances)."""
    return tuple(o for o in METHOD_OPTIONS if task in o.tasks)


def find_option(name: str, task: str | None = None) -> MethodOption:
    """The option called ``name``, among those that matter to ``task`` (None: any)."""
    known = {o.name: o for o in (options_for(task) if task else METHOD_OPTIONS)}
    option = known.get(name.strip().replace("-", "_"))
    if option is None:
        where = f"for {task} evaluation" if task else "known"
        raise InputError(f"Unknown option '{name}' {where}: choose from {', '.join(known)}.")
    return option


def apply_option(variant: Variant, name: str, text: str) -> Variant:
    """The variant with option ``name`` set from its text form; bad values are input errors."""
    option = find_option(name)
    try:
        value = option.parse(text)
    except ValueError:
        raise InputError(f"'{text}' is not a valid value for {option.name} ({option.help}).") from None
    if option.target == "engine":
        return replace(variant, engine=replace(variant.engine, **{option.field: value}))
    if option.target == "request":
        return replace(variant, request=replace(variant.request, **{option.field: value}))
    group = getattr(variant.request, option.target)
    return replace(variant, request=replace(variant.request, **{option.target: replace(group, **{option.field: value})}))


def option_values(variant: Variant, task: str) -> dict[str, object]:
    """Current value of every option that matters to ``task``, for reports."""
    values: dict[str, object] = {}
    for option in options_for(task):
        if option.target == "engine":
            holder = variant.engine
        elif option.target == "request":
            holder = variant.request
        else:
            holder = getattr(variant.request, option.target)
        value = getattr(holder, option.field)
        values[option.name] = list(value) if isinstance(value, tuple) else value
    return values


def parse_sweep(text: str, task: str) -> tuple[str, list[str]]:
    """``"threshold=0.1,0.3"`` -> ("threshold", ["0.1", "0.3"])."""
    name, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not items:
        raise InputError(f"Sweep '{text}' is not OPTION=V1,V2,..., e.g. threshold=0.1,0.3.")
    return find_option(name, task).name, items


def expand_sweeps(base: Variant, sweeps: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination of the swept values (a grid), in the order the sweeps were given."""
    names = [name for name, _ in sweeps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"Option {', '.join(repeated)} is swept twice: give all its values in one --sweep.")
    variants = []
    for combination in itertools.product(*(values for _, values in sweeps)):
        variant = base
        for name, text in zip(names, combination):
            variant = apply_option(variant, name, text)
        variants.append(replace(variant, swept=tuple(zip(names, combination))))
    return variants
