"""The server's settings (``ServerConfig``, from ``rsov serve``'s flags) and its token file."""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .jobs import GEOJSON_MAX_FEATURES

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass
class ServerConfig:
    token: str
    token_file: Path
    results_dir: Path
    allowed_dirs: tuple[Path, ...] = ()  # empty: any file the user can read (but never the token file)
    allowed_hosts: frozenset[str] = LOCAL_HOSTS
    max_upload_bytes: int = 512 << 20
    max_queued: int = 8
    results_ttl_s: float = 3600.0
    model_name: str = "custom"
    max_geojson_features: int = GEOJSON_MAX_FEATURES  # larger results: GeoPackage only
    max_json_bytes: int = 16 << 20  # a job body (with its mask and examples)
    max_pixels: int = 10_000_000_000  # per raster, checked from its header
    max_bands: int = 64
    validation_timeout_s: float = 10.0


def default_token_file() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return config_home / "rsov" / "token"


def load_or_create_token(path: Path) -> str:
    """Read the token file, or create it with a fresh random token, readable by this user only."""
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # never leave a readable token behind
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise InputError(
                f"The token file {path} holds no usable token (16+ characters); delete it to make a new one."
            ) from None
        return token
    except OSError as exc:
        raise InputError(f"Cannot create the token file {path}: {exc.strerror}.") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def default_results_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"rsov-jobs-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
