"""One replay from recording to report: start the fleet, drive it, read back what it did, stop it."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.alpaca.client import AlpacaClient
from bot.codec import display_fields
from bot.config import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.journal import journal_entries
from bot.recording import Recording, RecordingError
from bot.replay import report
from bot.replay.driver import Driver, ReplayRun
from bot.replay.fleet import FleetSpec, ReplayFleet


@dataclass(frozen=True)
class ReplayOptions:
    speed: float = 0.0  # market seconds per wall second; 0: as fast as the fleet goes
    strategy: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)  # TRADEBOT_* for the replay's processes
    workers: int = 1
    cash: str = "100000"
    seed: int = 1
    always_open: bool = False
    keep: Path | None = None  # copy the processes' logs here


def tickers_of(recording: Recording) -> list[str]:
    """The symbols the replay's fleet trades: those the recording has prices for. Workers wait for a
    price of every configured symbol before taking signals, so a signalled ticker without any is
    left out, and its signals are dead-lettered by the router, as a live fleet does with a ticker it
    does not trade."""
    return sorted({p.symbol for p in recording.prices})


def check(recording: Recording) -> None:
    if not recording.signals:
        raise RecordingError("the recording has no signals to replay")
    if not recording.prices:
        raise RecordingError("the recording has no prices: give --prices (a recording or a prices CSV)")


def replay(recording: Recording, options: ReplayOptions,
           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    check(recording)
    settings = dict(options.settings)
    if options.strategy:
        settings["TRADEBOT_STRATEGY"] = options.strategy
    with tempfile.TemporaryDirectory(prefix="tradebot-replay-") as temp:
        folder = Path(temp)
        path = folder / "recording.jsonl"
        recording.write(path)
        spec = FleetSpec(recording=path, symbols=tickers_of(recording),
                         source_streams=sorted({s.stream for s in recording.signals}), workers=options.workers,
                         cash=options.cash, seed=options.seed, always_open=options.always_open, settings=settings)
        fleet = ReplayFleet(spec, folder)
        try:
            fleet.start()
            driver = Driver(fleet, options.speed, progress)
            try:
                run = driver.run(recording)
            finally:
                driver.close()
            return _report(fleet, run, recording, options, settings)
        finally:
            fleet.stop()
            if options.keep is not None:
                options.keep.mkdir(parents=True, exist_ok=True)
                for log in folder.glob("*.log"):
                    shutil.copy(log, options.keep / log.name)


SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "URL", "NOTIFY")  # TRADEBOT_NOTIFY: apprise URLs


def shown_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings as the report shows them: a value whose name suggests a secret (a token, a
    notifier URL) is masked, since reports get shared."""
    return {k: "***" if any(word in k for word in SECRET_WORDS) else v for k, v in settings.items()
            if k != "TRADEBOT_STRATEGY"}


def _report(fleet: ReplayFleet, run: ReplayRun, recording: Recording, options: ReplayOptions,
            settings: Mapping[str, str]) -> dict[str, Any]:
    stats = httpx.get(f"{fleet.broker_url}/_paper/stats", timeout=10.0).json()  # before our own reads add to it
    client = AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url=fleet.broker_url,
                          data_url=fleet.broker_url)
    r = fleet.client()
    try:
        journal = [entry for _id, entry in journal_entries(r, fleet.keys)]
        dead = [display_fields(fields or {}) for _id, fields in r.xrange(fleet.keys.dlq) or []]
        orders = client.list_orders(status="all", direction="asc")
    finally:
        r.close()
        client.close()
    meta = {"speed": options.speed, "strategy": options.strategy or settings.get("TRADEBOT_STRATEGY", "all-in"),
            "settings": shown_settings(settings), "workers": options.workers,
            "cash": options.cash, "seed": options.seed}
    return report.build(run, recording, journal, dead, orders, stats, meta)
