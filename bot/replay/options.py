"""`tradebot replay`'s inputs: the recording files, --settings and --speed, each checked with a
one-line error (InputError, exit code 2)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from bot.errors import InputError
from bot.recording import Recording, load, load_prices_csv, load_signals_csv
from bot.replay.fleet import FOREIGN


def load_inputs(signals: Path, prices: Path | None) -> Recording:
    """SIGNALS (a recording, or a signals CSV) and --prices (a recording, or a prices CSV) as one
    recording; the prices of SIGNALS' own recording when --prices is not given."""
    csv = signals.suffix.lower() == ".csv"
    recording = Recording(signals=load_signals_csv(signals)) if csv else load(signals)
    if prices is not None:
        recording.prices = load_prices_csv(prices) if prices.suffix.lower() == ".csv" else load(prices).prices
    return recording


def parse_speed(text: str) -> float:
    if text.strip().lower() in ("max", "0"):
        return 0.0
    try:
        speed = float(text)
    except ValueError:
        raise InputError(f"--speed {text!r}: give a number of market seconds per wall second, or max") from None
    if not math.isfinite(speed) or speed <= 0:
        raise InputError(f"--speed {text!r} must be > 0 (or max)")
    return speed


def parse_settings(given: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE pairs and files of them (blank lines and # comments skipped). Only TRADEBOT_*
    settings, and none that would point the replay at a live fleet's keys or streams."""
    settings: dict[str, str] = {}
    for item in given:
        path = Path(item)
        if "=" not in item and path.is_file():
            lines = [(f"{item}:{n}", line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8")
                                                                            .splitlines(), 1)]
        elif "=" in item:
            lines = [("--settings", item.strip())]
        else:
            raise InputError(f"--settings {item!r}: give KEY=VALUE or a file of such lines")
        for where, line in lines:
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if not sep or not key:
                raise InputError(f"{where}: {line!r} is not KEY=VALUE")
            if not key.startswith("TRADEBOT_") or key in FOREIGN:
                raise InputError(f"{where}: {key} cannot be set for a replay (TRADEBOT_* settings only, "
                                 "and not the prefix, streams, symbols or var folder the replay chooses)")
            settings[key] = value.strip().strip('"').strip("'")
    return settings
