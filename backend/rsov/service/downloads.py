"""Weights downloads and imports that run beside the server's jobs, with their progress.

One background thread per model at a time; ``GET /v1/models`` reports each one's bytes,
so the dock can draw a progress bar while the backend downloads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..errors import RsovError
from ..models import ModelSpec, download_weights, import_weights


@dataclass
class Transfer:
    """A download or import of one model's weights, as ``/v1/models`` shows it."""

    kind: str  # "download" or "import"
    state: str = "running"  # running, done or failed
    done_bytes: int = 0
    total_bytes: int | None = None
    path: str | None = None  # the weights file in the cache, when done
    error: str | None = None

    def progress(self, done: int, total: int | None) -> None:
        self.done_bytes, self.total_bytes = done, total

    def as_dict(self) -> dict:
        return asdict(self)


class Transfers:
    """The weights transfers of one server, by model name."""

    def __init__(self, on_done: Callable[[ModelSpec], None] = lambda spec: None) -> None:
        self._on_done = on_done  # runs in the transfer's thread before it reports done
        self._lock = threading.Lock()
        self._by_name: dict[str, Transfer] = {}

    def get(self, name: str) -> Transfer | None:
        return self._by_name.get(name)

    def download(self, spec: ModelSpec, token: str | None = None) -> Transfer:
        """Start downloading ``spec``'s weights unless a transfer for it is running (``token``: a hub
        token for a gated model)."""
        return self._start(spec, "download", lambda t: download_weights(spec, t.progress, token))

    def import_file(self, spec: ModelSpec, path: str) -> Transfer:
        """Start importing the file at ``path`` as ``spec``'s weights (verified, then copied)."""
        return self._start(spec, "import", lambda t: import_weights(path, spec.name, t.progress)[1])

    def _start(self, spec: ModelSpec, kind: str, work: Callable[[Transfer], object]) -> Transfer:
        with self._lock:
            running = self._by_name.get(spec.name)
            if running is not None and running.state == "running":
                return running
            transfer = self._by_name[spec.name] = Transfer(kind)
        threading.Thread(
            target=self._run, args=(spec, transfer, work), name=f"rsov-{kind}-{spec.name}", daemon=True
        ).start()
        return transfer

    def _run(self, spec: ModelSpec, transfer: Transfer, work: Callable[[Transfer], object]) -> None:
        try:
            transfer.path = str(work(transfer))
            self._on_done(spec)
            transfer.state = "done"
        except RsovError as exc:
            transfer.error, transfer.state = str(exc), "failed"
        except OSError as exc:  # a full disk, a folder that cannot be written
            transfer.error, transfer.state = f"The weights could not be stored: {exc}", "failed"
