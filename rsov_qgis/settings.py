# SPDX-License-Identifier: GPL-2.0-or-later
"""The plugin's settings, stored with QgsSettings under ``rsov/``.

The backend URL and token file may also come from the environment (``RSOV_BACKEND_URL``,
``RSOV_TOKEN_FILE``); a set environment variable wins over the stored setting.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from .backend_client import DEFAULT_TOKEN_FILE, DEFAULT_URL, ENGINE_CLIP, BackendClient, InstanceOptions
from .install_backend import Request, default_prefix

PREFIX = "rsov/"
# setting -> environment variable that overrides it
ENVIRONMENT = dict((("backend_url", "RSOV_BACKEND_URL"), ("token_file", "RSOV_TOKEN_FILE")))


def default_output_dir() -> str:
    """Where results go when the project is not saved: beside the QGIS profile, else the temp dir."""
    base = QgsApplication.qgisSettingsDirPath() or tempfile.gettempdir()
    return str(Path(base) / "rsov_results")


def _typed(value, default):
    """A stored value (QgsSettings may give text) as the type of ``default``; empty: the default."""
    if value in (None, ""):
        return default
    if isinstance(default, bool):
        return str(value).lower() in ("true", "1")
    return type(default)(value)


@dataclass
class Settings:
    """Everything the plugin remembers between sessions."""

    backend_url: str = DEFAULT_URL
    token_file: str = str(DEFAULT_TOKEN_FILE)
    backend_executable: str = ""  # `rsov` or the python of the backend's environment
    model: str = ""  # empty: the backend's default
    output_dir: str = ""  # empty: default_output_dir()
    threshold: float = 0.3
    resolution: float = 0.0  # metres per pixel; 0: auto (from the raster's own resolution)
    area: str = "visible"  # the processing area: "visible" (extent), "layer" (whole) or "mask" (selected polygons)
    vocabulary: str = ""  # the last vocabulary, in the text format
    mode: str = "semantic"  # or "instance"
    engine: str = ENGINE_CLIP  # or "sam3": SAM 3 finds every object of each class
    refine: bool = False  # semantic mode: clean the map with SAM's regions (refine "sam")
    # instance mode (InstanceOptions' fields)
    object_threshold: float = InstanceOptions.object_threshold
    points_per_side: int = InstanceOptions.points_per_side
    pred_iou: float = InstanceOptions.pred_iou
    stability: float = InstanceOptions.stability
    class_prompts: bool = InstanceOptions.class_prompts
    points_per_batch: int = InstanceOptions.points_per_batch
    # the backend installer (install_backend's options)
    install_prefix: str = ""  # empty: install_backend.default_prefix()
    install_python: str = ""  # empty: a Python 3.10+ found on PATH
    install_torch: str = "auto"  # or "cpu", "cuda"
    install_wheelhouse: str = ""  # a folder of wheels for pip (--find-links)
    install_offline: bool = False  # the wheelhouse only

    @classmethod
    def load(cls) -> Settings:
        """Stored values over the defaults, environment variables over both."""
        store = QgsSettings()
        settings = cls(**{f.name: _typed(store.value(PREFIX + f.name, f.default), f.default) for f in fields(cls)})
        for name, variable in ENVIRONMENT.items():
            if os.environ.get(variable):
                setattr(settings, name, os.environ[variable])
        return settings

    def save(self) -> None:
        """Store every value (those set by the environment are stored as they were)."""
        store = QgsSettings()
        for f in fields(self):
            if not (f.name in ENVIRONMENT and os.environ.get(ENVIRONMENT[f.name])):
                store.setValue(PREFIX + f.name, getattr(self, f.name))

    @staticmethod
    def from_environment(name: str) -> str:
        """The environment variable that sets ``name``, or "" when it is not set that way."""
        variable = ENVIRONMENT.get(name, "")
        return variable if variable and os.environ.get(variable) else ""

    def client(self, timeout: float = 30.0) -> BackendClient:
        """A client for the configured backend (BackendError ``bad_url`` for a malformed URL)."""
        return BackendClient(self.backend_url, self.token_file, timeout)

    def instance_options(self) -> InstanceOptions:
        """The remembered instance options."""
        return InstanceOptions(**{f.name: getattr(self, f.name) for f in fields(InstanceOptions)})

    def install_request(self) -> Request:
        """What the backend installer is asked to do."""
        offline = self.install_offline and bool(self.install_wheelhouse)  # without a wheelhouse there is no offline
        return Request(
            Path(self.install_prefix or default_prefix()),
            self.install_torch,
            self.install_python,
            self.install_wheelhouse,
            offline,
        )

    def results_dir(self) -> Path:
        """The output folder for results of an unsaved project."""
        return Path(self.output_dir or default_output_dir())
