"""Write files atomically: results appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, moved onto ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s name (GDAL's GeoPackage driver warns about
    any other extension) inside a private folder in the same directory, so the
    final rename stays on one filesystem; that folder, with any GDAL side files,
    is always removed.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"Cannot write {path}: it is a folder; give a file name.")
    if not path.parent.is_dir():
        raise InputError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as error:
        raise InputError(f"Cannot write {path}: the folder {path.parent} is not writable ({error.strerror}).") from None
    try:
        tmp = tmp_dir / path.name
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise InputError(f"Cannot write {path} ({error.strerror}); is it open in another program?") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
