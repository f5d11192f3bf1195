# SPDX-License-Identifier: GPL-2.0-or-later
"""rsov QGIS plugin: open-vocabulary segmentation of rasters through a local rsov backend.

QGIS imports this package and calls :func:`classFactory`. Nothing here imports torch or
the backend package: the plugin talks to ``rsov serve`` over HTTP only.
"""

__version__ = "0.1.0"


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """QGIS entry point: build the plugin for this QGIS interface."""
    from .plugin import RsovPlugin

    return RsovPlugin(iface)
