"""Evaluation variants: an engine and request options, from the options table (``rsov.options``).

A ``Variant`` is one point of a comparison: the engine to load and the request options. Every
option of the table's "eval" surface can be set with its flag (``--cls-lambda 0``) or swept
(``--sweep cls_lambda=0,0.3``); several sweeps form a grid (every combination). Values of
list-like options separate their items with ``+`` inside a sweep (``rotations=0,0+90+180+270``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .. import options as table
from ..engine import SegmentRequest
from ..errors import InputError
from ..models import DEFAULT_MODEL


@dataclass(frozen=True)
class EngineSpec:
    """What ``load_engine`` builds; variants with equal specs share one loaded engine."""

    model: str = DEFAULT_MODEL
    upsampler: str = "bilinear"
    upsampler_checkpoint: str | None = None
    sam: str | None = None  # instance mode's Segment Anything model (None: the engine's default)
    sam3_model: str | None = None  # the sam3 engine's SAM 3 model (None: the engine's default)


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


def options_for(task: str) -> tuple[table.Option, ...]:
    """The options that change ``task``'s results (instance-mode options only matter to instances)."""
    return table.options_for("eval", task)


def apply_option(variant: Variant, name: str, text: str) -> Variant:
    """The variant with option ``name`` set from its text form; bad values are input errors."""
    option = table.find(name, "eval")
    value = option.parse(text)
    if option.stage == "engine":
        return replace(variant, engine=replace(variant.engine, **{option.attribute: value}))
    if option.stage == "request":
        return replace(variant, request=replace(variant.request, **{option.attribute: value}))
    group = getattr(variant.request, option.stage)
    return replace(
        variant, request=replace(variant.request, **{option.stage: replace(group, **{option.attribute: value})})
    )


def option_values(variant: Variant, task: str) -> dict[str, object]:
    """Current value of every option that matters to ``task``, for reports."""
    values: dict[str, object] = {}
    for option in options_for(task):
        holder: object
        if option.stage == "engine":
            holder = variant.engine
        elif option.stage == "request":
            holder = variant.request
        else:
            holder = getattr(variant.request, option.stage)
        value = getattr(holder, option.attribute)
        values[option.name] = list(value) if isinstance(value, tuple) else value
    return values


def parse_sweep(text: str, task: str) -> tuple[str, list[str]]:
    """``"threshold=0.1,0.3"`` -> ("threshold", ["0.1", "0.3"])."""
    name, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not items:
        raise InputError(f"Sweep '{text}' is not OPTION=V1,V2,..., e.g. threshold=0.1,0.3.")
    return table.find(name, "eval", task).name, items


def expand_sweeps(base: Variant, sweeps: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination of the swept values (a grid), in the order the sweeps were given."""
    names = [name for name, _ in sweeps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"Option {', '.join(repeated)} is swept twice: give all its values in one --sweep.")
    variants = []
    for combination in itertools.product(*(values for _, values in sweeps)):
        variant = base
        for name, text in zip(names, combination, strict=True):
            variant = apply_option(variant, name, text)
        variants.append(replace(variant, swept=tuple(zip(names, combination, strict=True))))
    return variants
