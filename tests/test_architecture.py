"""The layering rule: ``rsov.semantic`` and ``rsov.instance`` compute only; they never import the geodata
I/O (``rsov.geo``), the service, or the modules that compose them (engine, tiled, refine, streaming, batch)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "backend" / "rsov"
FORBIDDEN = ("rsov.geo", "rsov.service", "rsov.engine", "rsov.tiled", "rsov.refine", "rsov.streaming", "rsov.batch")
MODULES = sorted(p for folder in ("semantic", "instance") for p in (PACKAGE / folder).rglob("*.py"))


def imported(source: str, package: tuple[str, ...]) -> set[str]:
    """Absolute names of every module that ``source``, a module of ``package`` (e.g. ("rsov", "instance")),
    imports anywhere in it: relative imports resolved, and ``from X import y`` naming both X and X.y."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join(base + (tuple(node.module.split(".")) if node.module else ()))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_semantic_and_instance_import_no_io_service_or_composition(path):
    package = path.parent.relative_to(PACKAGE.parent).parts
    bad = forbidden(imported(path.read_text(encoding="utf-8"), package))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {', '.join(bad)}"


def test_the_check_sees_every_form_of_import():
    assert len(MODULES) >= 10  # both packages were found
    here = ("rsov", "instance")
    for bad in (
        "from ..geo.raster_io import read_chip",
        "from ..geo import vectorize",
        "from .. import engine",
        "import rsov.service.app",
        "from rsov.tiled import plan",
        "from rsov import batch, errors",
        "def f():\n    from ..streaming import BlockRunner\n",
    ):
        assert forbidden(imported(bad, here)), bad
    for fine in (
        "from ..semantic.predictor import Predictor",
        "from .masks import crop_mask",
        "from ..errors import InputError",
        "import rasterio.features",
        "from ..geometry import x",
        "from . import refine",
    ):
        assert not forbidden(imported(fine, here)), fine
