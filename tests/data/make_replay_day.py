"""Writes tests/data/replay-day.jsonl: the small recording tests/test_replay.py replays.

One NYSE session (Tuesday 2026-11-24, 09:30-16:00 ET) of minute quotes for NVDA and AAPL from
09:25 to 16:05, and 300 signals over 09:20-16:10: buys and sells of 1-5 shares, a few before the
open and after the close, a few with a bad direction (the DLQ's) and a few for a symbol without
prices. Seeded: running it again writes the same file.

    python tests/data/make_replay_day.py
"""
from __future__ import annotations

import json
import random
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

OUT = Path(__file__).with_name("replay-day.jsonl")
NEW_YORK = ZoneInfo("America/New_York")
DAY = (2026, 11, 24)
CENT = Decimal("0.01")


def at(hour: int, minute: int, second: float = 0.0) -> float:
    return datetime(*DAY, hour, minute, tzinfo=NEW_YORK).timestamp() + second


def prices(rng: random.Random) -> list[dict]:
    out = []
    mids = {"NVDA": 180.0, "AAPL": 230.0}
    start, end = at(9, 25), at(16, 5)
    t = start
    while t <= end:
        for symbol in mids:
            mids[symbol] *= 1 + rng.gauss(0, 0.0015)
            mid = Decimal(str(mids[symbol])).quantize(CENT)
            out.append({"kind": "price", "at": t, "symbol": symbol, "bid": str(mid - CENT), "ask": str(mid + CENT),
                        "last": str(mid)})
        t += 60
    return out


def signals(rng: random.Random) -> list[dict]:
    times = sorted(rng.uniform(at(9, 20), at(16, 10)) for _ in range(300))
    out = []
    for n, when in enumerate(times):
        fields = {"ticker": rng.choice(["NVDA", "NVDA", "AAPL"]), "direction": rng.choice("bbs"),
                  "qty": str(rng.randint(1, 5))}
        if n % 60 == 7:
            fields["direction"] = "hold"  # not a direction: dead-lettered by the router
        if n % 75 == 11:
            fields["ticker"] = "MSFT"  # a ticker the recording has no price for
        out.append({"kind": "signal", "at": round(when, 3), "stream": "nvda", "id": "", "fields": fields})
    return out


def main() -> None:
    rng = random.Random(20261124)
    records = prices(rng) + signals(rng)
    records.sort(key=lambda r: (r["at"], r["kind"] == "signal"))
    OUT.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {OUT}: {len(records)} records")


if __name__ == "__main__":
    main()
