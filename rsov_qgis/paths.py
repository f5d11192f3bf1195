# SPDX-License-Identifier: GPL-2.0-or-later
"""Where the plugin's resources and the backend source are: inside the package when installed
from the zip, beside it (``<repo>/resources``, ``<repo>/backend``) when run from a checkout."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# the folder to run ``python -m rsov_qgis.install_backend`` in
PACKAGE_PARENT = _PACKAGE.parent


def _inside_or_beside(name: str) -> Path:
    return next((p for p in (_PACKAGE / name, PACKAGE_PARENT / name) if p.is_dir()), _PACKAGE / name)


RESOURCES = _inside_or_beside("resources")
PRESETS = RESOURCES / "presets"
ICON = RESOURCES / "icon.svg"
BACKEND_SOURCE = _inside_or_beside("backend")  # the backend's pyproject.toml and rsov/ package
