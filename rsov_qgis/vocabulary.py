# SPDX-License-Identifier: GPL-2.0-or-later
"""Vocabularies: classes with synonyms and a display colour (no QGIS needed).

Text format (the backend's ``--classes-file`` format, which ignores ``#`` comments): one class
per line, synonyms comma-separated, the first synonym names the class; an optional colour as a
trailing comment::

    # preset: Buildings
    building, roof, house   # #e31a1c

One-line format (Processing, the CLI's ``--classes``): ``"building,roof; tree,forest"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Distinct colours for classes that come without one (ColorBrewer Set1/Dark2-like).
PALETTE = (
    "#e31a1c", "#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928",
    "#a6cee3", "#fb9a99", "#b2df8a", "#fdbf6f", "#cab2d6", "#ffff99",
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
)
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}(?![0-9a-fA-F])")
_PRESET_HEADER = re.compile(r"^\s*#\s*preset\s*:\s*(.+?)\s*$", re.IGNORECASE)
MAX_CLASSES = 256  # the backend's limit


class VocabularyError(ValueError):
    """The vocabulary cannot be sent: the message says what to fix."""


@dataclass
class VocabularyClass:
    """One class: its text queries (the first names it) and its colour as ``#rrggbb``."""

    synonyms: list[str]
    color: str = ""

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


def parse_vocabulary(text: str) -> list[VocabularyClass]:
    """Parse the text format; blank lines and pure comments are skipped."""
    classes = []
    for line in text.splitlines():
        content, _, comment = line.partition("#")
        synonyms = parse_synonyms(content)
        if synonyms:
            colour = _COLOUR.search("#" + comment) if comment else None
            classes.append(VocabularyClass(synonyms, colour.group(0).lower() if colour else ""))
    return assign_colors(classes)


def format_vocabulary(classes: list[VocabularyClass], title: str = "") -> str:
    """The text format of ``classes`` (readable back by :func:`parse_vocabulary` and the CLI)."""
    lines = [f"# preset: {title}"] if title else []
    lines += [f"{', '.join(c.synonyms)}  # {c.color}" if c.color else ", ".join(c.synonyms) for c in classes]
    return "\n".join(lines) + "\n"


def parse_classes_string(text: str) -> list[VocabularyClass]:
    """``"building,roof; tree,forest"`` (or one class per line) -> classes with palette colours."""
    parts = text.replace("\n", ";").split(";")
    return assign_colors([VocabularyClass(s) for s in (parse_synonyms(p) for p in parts) if s])


def assign_colors(classes: list[VocabularyClass]) -> list[VocabularyClass]:
    """Give every class without a colour the next palette colour not used yet (in place)."""
    used = {c.color for c in classes if c.color}
    free = [c for c in PALETTE if c not in used] or list(PALETTE)
    for index, cls in enumerate(c for c in classes if not c.color):
        cls.color = free[index % len(free)]
    return classes


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
