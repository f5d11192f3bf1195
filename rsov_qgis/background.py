# SPDX-License-Identifier: GPL-2.0-or-later
"""Backend calls off QGIS's main thread: the answers come back as a signal on the main thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qgis.PyQt.QtCore import QObject, pyqtSignal

from .backend_client import BackendError


class BackgroundCalls(QObject):
    """Runs functions in worker threads; each answer arrives as ``done(key, result)`` on the
    thread this object lives in (queued), a :class:`BackendError` (any exception, as one) being
    the result of a call that failed. The workers touch no widget.

    One long-lived object carries every answer: a signal of a short-lived sender may be lost when
    the sender is deleted before its queued answer is delivered.
    """

    done = pyqtSignal(object, object)

    def start(self, key: Any, function: Callable[[], Any]) -> None:
        """Call ``function()`` in a new worker thread; ``key`` comes back with its answer."""
        threading.Thread(target=self._run, args=(key, function), name="rsov-call", daemon=True).start()

    def _run(self, key: Any, function: Callable[[], Any]) -> None:  # worker thread
        try:
            result = function()
        except BackendError as exc:
            result = exc
        except Exception as exc:  # a malformed answer must not kill the thread silently
            result = BackendError("unexpected", f"Unexpected error: {exc}")
        try:
            self.done.emit(key, result)
        except RuntimeError:
            pass  # the owner (and this object with it) was deleted meanwhile: nobody is waiting
