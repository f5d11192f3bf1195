"""Weights files on disk: digests, verified downloads with progress, and imports.

A weights file enters the cache only whole and verified: it is written under a
temporary name beside its target, its sha256 is compared with the known digest
(from the model registry, or the Hugging Face hub's own digest of the file), and
only then renamed into place. A file whose digest does not match is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_output
from .errors import RsovError, WeightsMissingError

Progress = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None)
CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DigestMismatchError(RsovError):
    """A weights file is not the one it claims to be (damaged, truncated or another file)."""


def sha256_file(path: str | os.PathLike, progress: Progress | None = None) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def check_digest(actual: str, expected: str | None, what: str) -> None:
    """Refuse ``what`` unless its sha256 is ``expected`` (no known digest: accepted)."""
    if expected and actual.lower() != expected.lower():
        raise DigestMismatchError(
            f"{what} has sha256 {actual}, not the {expected} of the real file: it is damaged, "
            "truncated or another file, and was not used."
        )


def install_copy(source: str | os.PathLike, target: Path) -> None:
    """Copy ``source`` onto ``target`` whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as partial:
        shutil.copyfile(source, partial)


def _hub_digest(response) -> str | None:
    """The Hugging Face hub sends the sha256 of a large (LFS) file as its linked ETag."""
    etag = response.headers.get("X-Linked-Etag") or ""
    etag = etag.strip('"').removeprefix("W/").strip('"')
    return etag if len(etag) == 64 else None


class AccessRefusedError(WeightsMissingError):
    """The server refused the download (HTTP 401 or 403): a gated model whose licence is not accepted."""


def download(
    url: str, target: Path, sha256: str | None = None, progress: Progress | None = None, token: str | None = None
) -> str:
    """Download ``url`` to ``target``, verified against ``sha256`` (or the hub's digest); returns the digest.

    ``token`` is sent as a bearer token (gated Hugging Face repositories need one)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:  # the URL comes from the model registry, never from a request
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # nosec B310
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise AccessRefusedError(f"{url} refused the download (HTTP {exc.code}).") from None
        raise WeightsMissingError(
            f"Downloading {url} failed (HTTP {exc.code}); "
            f"download it elsewhere and import it with `rsov models --import FILE`."
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsMissingError(
            f"Downloading {url} failed ({getattr(exc, 'reason', exc)}); "
            f"download it elsewhere and import it with `rsov models --import FILE`."
        ) from None
    expected = sha256 or _hub_digest(response)
    total = int(response.headers.get("Content-Length") or 0) or None
    digest, done = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with response, atomic_output(target) as partial:
        with open(partial, "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise WeightsMissingError(f"Downloading {url} stopped after {done} of {total} bytes; run it again.")
        check_digest(digest.hexdigest(), expected, f"The download of {url}")
    return digest.hexdigest()
