# SPDX-License-Identifier: GPL-2.0-or-later
"""Where the plugin's resources are: inside the package when installed from the zip, beside it
(``<repo>/resources``) when run from a checkout."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
RESOURCES = next((p for p in (_PACKAGE / "resources", _PACKAGE.parent / "resources") if p.is_dir()),
                 _PACKAGE / "resources")
PRESETS = RESOURCES / "presets"
ICON = RESOURCES / "icon.svg"
