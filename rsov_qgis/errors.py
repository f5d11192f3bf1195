# SPDX-License-Identifier: GPL-2.0-or-later
"""The plugin's one exception root (standard library only: the installer imports it outside QGIS).

Every error the plugin raises for the user derives from :class:`RsovPluginError`, and ``str(error)``
is the message to show, so a caller catches one class.
"""


class RsovPluginError(Exception):
    """A failure to report to the user; ``str(error)`` is the message."""
