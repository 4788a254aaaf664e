"""Awaiting a condition with a deadline: the one way tests synchronise with processes and threads."""
from __future__ import annotations

import time
from typing import Any, Callable

# A deadline only decides how long a FAILING test takes to say so: it is generous, so that a busy
# machine (a second suite on the same cores) never turns a slow success into a failure.
DEFAULT_TIMEOUT = 30.0


def wait_for(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
