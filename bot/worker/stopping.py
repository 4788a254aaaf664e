"""The stop grace: from a stop request (SIGTERM) the order in hand has ``grace`` seconds to finish."""
from __future__ import annotations

import threading
import time

# How long the watcher thread waits on the stop event at a time. It notes a stop the moment it is
# set whatever this is (the wait returns then); this only bounds how long the thread outlives
# ``close``. It was 0.1 s: ten wake-ups a second, each taking the GIL from an order in hand.
WATCH_SLICE = 5.0


class StopGrace:
    """Counts the grace from the moment the stop event is set, not from when a stage next looks
    (a SIGTERM may come during a broker call): ``watch`` notes that moment from a thread."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.event: threading.Event | None = None
        self._stop_at: float | None = None
        self._closed = threading.Event()

    def use(self, stop: threading.Event) -> None:
        """Count the grace from ``stop`` from now on."""
        if stop is not self.event:
            self.event, self._stop_at = stop, None

    def watch(self, stop: threading.Event) -> None:
        """``use(stop)`` and note the moment it is set from a daemon thread (until ``close``)."""
        self.use(stop)

        def note_stop() -> None:
            while not stop.wait(WATCH_SLICE):
                if self._closed.is_set():
                    return
            if self._stop_at is None:
                self._stop_at = time.monotonic()

        threading.Thread(target=note_stop, name="stop-grace", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    @property
    def stopping(self) -> bool:
        return self.event is not None and self.event.is_set()

    def left(self) -> float | None:
        """Seconds left of the grace (negative once past it); None while not stopping."""
        if not self.stopping:
            return None
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        return self._stop_at + self.grace - time.monotonic()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a stop comes meanwhile."""
        if self.event is not None:
            self.event.wait(seconds)
        else:
            time.sleep(seconds)
