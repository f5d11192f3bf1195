"""Time left in a job, from the fraction done and the time it took: one rule for the CLI, the API and
the plugin (which shows the ``eta_s`` the API reports).

The engine keeps its fractions proportional to time (semantic windows and SAM tiles are weighted by
their measured speeds), so a constant-rate extrapolation is honest once a little work is done.
"""

from __future__ import annotations

import time

MIN_FRACTION = 0.02  # before this much is done, the rate says nothing yet
MIN_ELAPSED_S = 0.5


def remaining_s(elapsed_s: float, fraction: float) -> float | None:
    """Seconds left at the rate so far; None while too little is done to tell, or once all is done."""
    if fraction < MIN_FRACTION or elapsed_s < MIN_ELAPSED_S or fraction >= 1.0:
        return None
    return elapsed_s * (1.0 - fraction) / fraction


def describe_remaining(seconds: float | None) -> str:
    """'about 40 s left', 'about 3 min left', 'about 1 h 5 min left'; '' when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60} min left"


class ProgressClock:
    """Started when the work starts; ``remaining(fraction)`` is the time left."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def remaining(self, fraction: float) -> float | None:
        return remaining_s(time.monotonic() - self.started, fraction)
