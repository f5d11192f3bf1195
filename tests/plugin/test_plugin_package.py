"""The plugin zip: layout, metadata, licence, and no Bandit findings."""

import ast
import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

import rsov_qgis

REQUIRED = (
    "name",
    "qgisMinimumVersion",
    "qgisMaximumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
    "homepage",
    "category",
    "icon",
    "hasProcessingProvider",
    "tags",
)


def _metadata(text: str) -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return dict(parser["general"])


def test_zip_layout(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        assert {n.split("/")[0] for n in names} == {"rsov_qgis"}
        for required in (
            "rsov_qgis/__init__.py",
            "rsov_qgis/metadata.txt",
            "rsov_qgis/LICENSE",
            "rsov_qgis/README.md",
            "rsov_qgis/resources/icon.png",
            "rsov_qgis/resources/icon.svg",
            "rsov_qgis/resources/presets/buildings.txt",
            # the backend's source, which the installer installs (so versions always match)
            "rsov_qgis/backend/pyproject.toml",
            "rsov_qgis/backend/rsov/cli.py",
            "rsov_qgis/backend/rsov/model_configs/rsov-tiny.json",
        ):
            assert required in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "test" in n.lower()]
        assert archive.read("rsov_qgis/metadata.txt") == (REPO / "metadata.txt").read_bytes()


def test_metadata_is_complete():
    meta = _metadata((REPO / "metadata.txt").read_text(encoding="utf-8"))
    assert [key for key in REQUIRED if not meta.get(key)] == []
    assert meta["qgisMinimumVersion"] == "3.22" and meta["qgisMaximumVersion"] == "4.99"
    assert meta["category"] == "Raster" and meta["hasProcessingProvider"] == "yes"
    assert meta["version"] == rsov_qgis.__version__
    assert (REPO / "resources" / Path(meta["icon"]).name).is_file()
    assert "<" not in meta["about"] and "<" not in meta["description"]  # no HTML


def test_license_is_gpl():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "SPDX-License-Identifier: GPL-2.0-or-later" in text and "GNU GENERAL PUBLIC LICENSE" in text


def test_bandit_finds_nothing(plugin_zip, tmp_path):
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(tmp_path)
    bandit = Path(sys.executable).parent / "bandit"
    run = subprocess.run([str(bandit), "-q", "-r", str(tmp_path / "rsov_qgis")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_plugin_imports_only_qgis_and_the_standard_library():
    """QGIS's Python must not need torch, numpy, requests, or the backend package; Qt via qgis.PyQt only.
    GDAL's bindings (osgeo) ship with every QGIS: its own Processing tools use them."""
    for path in (REPO / "rsov_qgis").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in ("qgis", "osgeo") or top in sys.stdlib_module_names, f"{path.name} imports {module}"
