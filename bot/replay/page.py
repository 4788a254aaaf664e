"""The replay report as a terminal table (rich) and as one self-contained HTML page.

The page draws its two charts (equity, gross exposure over market time) as inline SVG polylines:
one line chart each does not justify a plotting library in the runtime dependencies, and the page
then opens anywhere without scripts or network."""
from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

NEW_YORK = ZoneInfo("America/New_York")


def market_clock(at: float) -> str:
    return datetime.fromtimestamp(at, NEW_YORK).strftime("%Y-%m-%d %H:%M ET")


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    signals, orders, pnl = report["signals"], report["orders"], report["pnl"]
    requests, replay = report["requests"], report["replay"]
    rows = [
        ("market time", f"{market_clock(replay['market_start'])} .. {market_clock(replay['market_end'])}"),
        ("wall time", f"{replay['wall_seconds']} s (speed {replay.get('speed') or 'max'})"),
        ("strategy", str(replay.get("strategy") or "all-in")),
        ("signals", f"{signals['total']}: {signals['journaled']} journaled, {signals['dead_lettered']} dead-lettered"
                    + (f", {signals['missing']} MISSING" if signals["missing"] else "")),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in signals["outcomes"].items())),
        ("orders", f"{orders['placed']} placed, {orders['filled']} filled "
                   f"(bought {orders['shares_bought']}, sold {orders['shares_sold']} shares)"),
        ("P&L", f"total {pnl['total']} (realized {pnl['realized']}, unrealized {pnl['unrealized']})"),
        ("equity", f"{pnl['start_equity']} -> {pnl['final_equity']}, max drawdown {pnl['max_drawdown']}"),
        ("max gross exposure", f"{report['exposure']['max_gross']:.2f}"),
        ("broker requests", f"{requests['total']} in all; order routes {requests['order_requests']} "
                            f"({requests['order_requests_per_order']} per order), peak "
                            f"{requests['peak_order_requests_per_market_minute']} in one market minute "
                            f"(budget {requests['budget_per_minute']}/min)"),
    ]
    changes = report["controls"]["state_changes"]
    if len(changes) > 1 or (changes and changes[0]["state"] != "active"):
        rows.append(("trading state", "; ".join(f"{market_clock(c['market_at'])} {c['state']}"
                                                + (f" ({c['reason']})" if c["reason"] else "") for c in changes)))
    return rows


def print_report(report: Mapping[str, Any], console: Console | None = None,
                 compared: Sequence[tuple[str, str, str]] | None = None) -> None:
    console = console or Console()
    table = Table(title="replay", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console.print(table)
    for title, counts in (("skipped, by reason", report["skips"]), ("dead-lettered, by reason", report["dlq"])):
        if counts:
            kinds = Table(title=title)
            kinds.add_column("reason")
            kinds.add_column("signals", justify="right")
            for kind, count in counts.items():
                kinds.add_row(kind, str(count))
            console.print(kinds)
    if report["latency_ms"]:
        stages = Table(title="latency per stage (wall ms)")
        for column in ("stage", "n", "p50", "p99", "max"):
            stages.add_column(column, justify="left" if column == "stage" else "right")
        for stage, figures in report["latency_ms"].items():
            stages.add_row(stage, *(str(figures[k]) for k in ("n", "p50", "p99", "max")))
        console.print(stages)
    if compared:
        side = Table(title="compared")
        for column in ("figure", "this replay", "the other"):
            side.add_column(column)
        for row in compared:
            side.add_row(*row)
        console.print(side)


def svg_chart(points: Sequence[Sequence[float]], title: str, width: int = 760, height: int = 220) -> str:
    if len(points) < 2:
        return f"<p>{html.escape(title)}: not enough points</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 40
    def sx(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)
    def sy(y: float) -> float:
        return height - pad + (y0 - y) / (y1 - y0) * (height - 2 * pad)
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
    labels = [f'<text x="{pad}" y="{height - 10}" font-size="11">{market_clock(x0)}</text>',
              f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">{market_clock(x1)}</text>',
              f'<text x="4" y="{sy(y1) + 4:.0f}" font-size="11">{y1:,.0f}</text>',
              f'<text x="4" y="{sy(y0) + 4:.0f}" font-size="11">{y0:,.0f}</text>']
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}"><rect width="100%" height="100%" fill="#fafafa"/>'
            f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{line}"/>{"".join(labels)}</svg>'
            f'</figure>')


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(report: Mapping[str, Any]) -> str:
    latency = [(stage, *(f[k] for k in ("n", "p50", "p99", "max"))) for stage, f in report["latency_ms"].items()]
    symbols = [(s["symbol"], s["qty"], s["avg_cost"], s["mark"], s["realized"], s["unrealized"], s["total"])
               for s in report["pnl"]["symbols"]]
    parts = [
        "<h1>tradebot replay</h1>",
        _table(summary_rows(report), ("figure", "value")),
        svg_chart(report["equity"], "equity over market time"),
        svg_chart(report["exposure"]["curve"], "gross exposure over market time"),
        "<h2>P&amp;L by symbol</h2>",
        _table(symbols, ("symbol", "qty", "avg cost", "mark", "realized", "unrealized", "total")),
        "<h2>Skipped, by reason</h2>", _table(list(report["skips"].items()), ("reason", "signals")),
        "<h2>Dead-lettered, by reason</h2>", _table(list(report["dlq"].items()), ("reason", "signals")),
        "<h2>Latency per stage (wall ms)</h2>", _table(latency, ("stage", "n", "p50", "p99", "max")),
        "<p>Latency and queueing are measured in wall time at the replay's pace; they are not the live "
        "ones (docs/replay.md).</p>",
        f'<script type="application/json" id="report">{html.escape(json.dumps(report))}</script>',
    ]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}figcaption{font-weight:bold}")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tradebot replay</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
