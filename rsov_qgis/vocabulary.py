# SPDX-License-Identifier: GPL-2.0-or-later
"""Vocabularies: classes with synonyms and a display colour (no QGIS needed).

Text format (the backend's ``--classes-file`` format, which ignores ``#`` comments): one class
per line, synonyms comma-separated, the first synonym names the class; an optional colour as a
trailing comment::

    # preset: Buildings
    building, roof, house   # #e31a1c

One-line format (Processing, the CLI's ``--classes``): ``"building,roof; tree,forest"``.

Colours: class k (its 1-based place in the vocabulary) has ``palette.class_colour(k)`` unless its
colour was chosen (by the analyst, or a ``# #rrggbb`` comment of a preset or file), so the dock,
Processing and the backend colour the same vocabulary alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import RsovPluginError
from .palette import class_colour

_COLOUR = re.compile(r"#[0-9a-fA-F]{6}(?![0-9a-fA-F])")
_PRESET_HEADER = re.compile(r"^\s*#\s*preset\s*:\s*(.+?)\s*$", re.IGNORECASE)
MAX_CLASSES = 256  # the backend's limit


class VocabularyError(RsovPluginError):
    """The vocabulary cannot be sent: the message says what to fix."""


@dataclass
class VocabularyClass:
    """One class: its text queries (the first names it) and its colour as ``#rrggbb``; ``chosen``
    when that colour was chosen rather than given by the class's place (a given colour is chosen
    unless told otherwise)."""

    synonyms: list[str]
    color: str = ""
    chosen: bool | None = None

    def __post_init__(self):
        if self.chosen is None:
            self.chosen = bool(self.color)

    @property
    def name(self) -> str:
        """The class name: its first synonym."""
        return self.synonyms[0] if self.synonyms else ""

    @property
    def query(self) -> str:
        """The class as the backend wants it: ``"building,roof,house"``."""
        return ",".join(self.synonyms)


@dataclass(frozen=True)
class Preset:
    """A vocabulary file shipped in ``resources/presets``."""

    title: str
    path: Path

    def load(self) -> list[VocabularyClass]:
        """The preset's classes, with colours."""
        return parse_vocabulary(self.path.read_text(encoding="utf-8"))


def parse_synonyms(text: str) -> list[str]:
    """``" building, roof ,,house"`` -> ``["building", "roof", "house"]`` (deduplicated)."""
    words = (" ".join(part.split()) for part in text.split(","))
    return list(dict.fromkeys(w for w in words if w))


def _parse_lines(text: str, split_on_semicolons: bool) -> list[VocabularyClass]:
    """Classes of the text format's lines, without palette colours; a ``# #rrggbb`` comment
    colours the class it follows."""
    classes = []
    for line in text.splitlines():
        content, _, comment = line.partition("#")
        parts = content.split(";") if split_on_semicolons else [content]
        line_classes = [VocabularyClass(s) for s in (parse_synonyms(p) for p in parts) if s]
        colour = _COLOUR.search("#" + comment) if comment else None
        if line_classes and colour:
            line_classes[-1] = VocabularyClass(line_classes[-1].synonyms, colour.group(0).lower())
        classes += line_classes
    return classes


def parse_vocabulary(text: str) -> list[VocabularyClass]:
    """Parse the text format; blank lines and pure comments are skipped."""
    return assign_colors(_parse_lines(text, split_on_semicolons=False))


def parse_typed_classes(text: str) -> list[VocabularyClass]:
    """Classes typed or pasted into a vocabulary row: one per line or ``;`` between them (the
    one-line format), a line's ``# #rrggbb`` comment kept; without palette colours (their place
    in the table gives them)."""
    return _parse_lines(text, split_on_semicolons=True)


def format_vocabulary(classes: list[VocabularyClass], title: str = "") -> str:
    """The text format of ``classes`` (readable back by :func:`parse_vocabulary` and the CLI):
    chosen colours as comments, palette colours left to the class's place."""
    lines = [f"# preset: {title}"] if title else []
    lines += [f"{', '.join(c.synonyms)}  # {c.color}" if c.chosen else ", ".join(c.synonyms) for c in classes]
    return "\n".join(lines) + "\n"


def parse_classes_string(text: str) -> list[VocabularyClass]:
    """``"building,roof; tree,forest"`` (or one class per line) -> classes with palette colours."""
    parts = text.replace("\n", ";").split(";")
    return assign_colors([VocabularyClass(s) for s in (parse_synonyms(p) for p in parts) if s])


def assign_colors(classes: list[VocabularyClass]) -> list[VocabularyClass]:
    """Give every class whose colour was not chosen the palette colour of its class id (in
    place). Classes without words (rows still empty) come after the others: they take no class
    id from them and still get colours of their own."""
    named = [c for c in classes if c.synonyms]
    for class_id, cls in enumerate(named + [c for c in classes if not c.synonyms], start=1):
        if not cls.chosen:
            cls.color = class_colour(class_id)
    return classes


def legend_order(classes: list[VocabularyClass], present: Iterable[str]) -> list[tuple[int, VocabularyClass]]:
    """``(class id, class)`` of ``classes``: those named in ``present`` first, then the others,
    each part in vocabulary order."""
    present = set(present)
    return sorted(enumerate(classes, start=1), key=lambda item: item[1].name not in present)


def validate(classes: list[VocabularyClass]) -> list[str]:
    """The ``classes`` field of a backend request; raises VocabularyError with what to fix."""
    named = [c for c in classes if c.synonyms]
    if not named:
        raise VocabularyError("The vocabulary is empty: add at least one class, e.g. 'building, roof'.")
    if len(named) > MAX_CLASSES:
        raise VocabularyError(f"{len(named)} classes is more than the backend's limit of {MAX_CLASSES}.")
    names = [c.name.lower() for c in named]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise VocabularyError(f"Class names must be unique; repeated: {', '.join(repeated)}.")
    return [c.query for c in named]


def list_presets(folder: Path) -> list[Preset]:
    """The presets in ``folder`` (``*.txt``), titled by their ``# preset:`` header, sorted by title."""
    presets = []
    for path in sorted(folder.glob("*.txt")):
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        header = _PRESET_HEADER.match(first[0]) if first else None
        presets.append(Preset(header.group(1) if header else path.stem.replace("_", " "), path))
    return sorted(presets, key=lambda p: p.title.lower())
