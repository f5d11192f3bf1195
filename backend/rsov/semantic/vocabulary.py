"""What the analyst typed: classes, each with synonyms.

``"building,roof,house; tree,forest; water"`` holds three classes; each
comma-separated synonym is its own text query, and a class scores the max over
its synonyms (SegEarth-OV's class renaming). The first synonym names the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

MAX_CLASSES = 256  # 80 templates x 256 classes is already ~20 min of text encoding on a CPU
MAX_QUERIES = 1024
BACKGROUND = "background"
# Generic land-cover words that absorb whatever the analyst did not ask for, so a
# one-class vocabulary ("swimming pool") does not paint the whole map.
DEFAULT_BACKGROUND = ("background", "bare land", "grass", "tree", "road", "pavement", "water", "shadow")
# Land cover without countable objects ("stuff"): with the SAM 3 engine in semantic mode, a class with one of
# these words among its synonyms comes from CLIP's dense map, since SAM 3 finds objects, not surfaces.
DEFAULT_STUFF = (
    "grass",
    "meadow",
    "rangeland",
    "low vegetation",
    "forest",
    "water",
    "river",
    "lake",
    "sea",
    "road",
    "pavement",
    "impervious surface",
    "bare land",
    "bareland",
    "barren",
    "soil",
    "sand",
    "cropland",
    "farmland",
    "agriculture",
    "snow",
    "background",
)


@dataclass(frozen=True)
class ClassSpec:
    """One output class: a display name and the text queries that stand for it."""

    name: str
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """The classes of one request, plus the synonyms of the implicit background (class id 0)."""

    classes: tuple[ClassSpec, ...]
    background: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """Class names; class id k (1-based) is ``names[k - 1]``."""
        return [c.name for c in self.classes]

    def stuff_ids(self, words: tuple[str, ...] | list[str]) -> list[int]:
        """Class ids (1-based) of the classes with any synonym among ``words`` (case-insensitive)."""
        wanted = {w.lower() for w in words}
        return [k for k, c in enumerate(self.classes, start=1) if any(s.lower() in wanted for s in c.synonyms)]

    def queries(self) -> tuple[list[str], list[int]]:
        """All text queries and, for each, its class id (0 for background queries)."""
        queries: list[str] = []
        owners: list[int] = []
        for class_id, spec in enumerate(self.classes, start=1):
            queries += spec.synonyms
            owners += [class_id] * len(spec.synonyms)
        queries += self.background
        owners += [0] * len(self.background)
        return queries, owners


def _clean(word: str) -> str:
    return " ".join(word.split())


def parse_class(line: str) -> ClassSpec:
    """``"building, roof,house"`` -> ClassSpec("building", ("building", "roof", "house"))."""
    synonyms = tuple(dict.fromkeys(w for w in (_clean(p) for p in line.split(",")) if w))
    if not synonyms:
        raise InputError(f"Class '{line.strip()}' is empty: give at least one word per class.")
    return ClassSpec(synonyms[0], synonyms)


def build_vocabulary(
    class_lines: list[str], background: tuple[str, ...] | list[str] = DEFAULT_BACKGROUND
) -> Vocabulary:
    """Validate the class lines and attach background synonyms that the classes do not already use."""
    if not class_lines or all(not line.strip() for line in class_lines):
        raise InputError("The vocabulary is empty: type at least one class, e.g. 'building,roof; tree'.")
    classes = tuple(parse_class(line) for line in class_lines)
    if len(classes) > MAX_CLASSES:
        raise InputError(
            f"{len(classes)} classes is more than the limit of {MAX_CLASSES}; split the vocabulary into several runs."
        )
    names = [c.name.lower() for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"Class names must be unique; repeated: {', '.join(duplicates)}.")
    used = {s.lower() for c in classes for s in c.synonyms}
    bg = tuple(w for w in dict.fromkeys(_clean(b) for b in background if b.strip()) if w.lower() not in used)
    vocab = Vocabulary(classes, bg)
    if len(vocab.queries()[0]) > MAX_QUERIES:
        raise InputError(f"The vocabulary has more than {MAX_QUERIES} synonyms in all; use fewer synonyms per class.")
    return vocab


def split_classes(text: str) -> list[str]:
    """``"a,b; c"`` -> ``["a,b", "c"]`` (semicolons or new lines separate classes)."""
    return [part for part in text.replace("\n", ";").split(";") if part.strip()]


def read_classes_file(path: str | Path) -> list[str]:
    """One class per line, synonyms comma-separated; blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"Cannot read the classes file {path}: {exc.strerror}.") from exc
    return [line for line in (raw.split("#", 1)[0] for raw in text.splitlines()) if line.strip()]
