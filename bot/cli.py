"""The `tradebot` command: one click group; each process's command lives in processes/."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from bot import __version__, fleet
from bot.errors import InputError, TradebotError

# fleet.COMMANDS: command name -> "module:attribute" of a click command in processes/, imported
# lazily so that `tradebot worker` does not pay for importing the paper broker's web stack.
COMMANDS = fleet.COMMANDS


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return fleet.load_command(self.lazy[name])
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="tradebot")
def cli() -> None:
    """tradebot: turns trading signals on Redis streams into Alpaca orders, exactly once."""


# --------------------------------------------------------------------------- the fleet and the operator
# Heavy imports (redis, supervisor, bot.ops) stay inside the commands, so `tradebot worker` and the
# other processes start without them.


@functools.cache
def command_error(exit_code: int) -> type[click.ClickException]:
    """The click exception for a project error: click shows "Error: <message>" and exits with
    ``exit_code`` (2 for bad input, 1 otherwise), no usage dump, no traceback. A class per code:
    click reads exit_code as a class attribute."""

    class CommandError(click.ClickException):
        pass

    CommandError.exit_code = exit_code
    return CommandError


F = TypeVar("F", bound=Callable[..., Any])


def expected_errors(func: F) -> F:
    """Turn the errors an operator can cause or meet (bad input, Redis away, no fleet) into
    messages and exit codes instead of tracebacks: every ``bot.errors.TradebotError`` carries both."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        from bot.logs import redact_url

        try:
            return func(*args, **kwargs)
        except TradebotError as exc:
            raise command_error(exc.exit_code)(str(exc)) from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {redact_url(str(exc))}") from None

    return cast(F, wrapper)


redis_url_option = click.option("--redis-url", envvar="REDIS_URL", default=None,
                                help="Redis of the fleet [env REDIS_URL; default: the local fleet's].")
var_dir_option = click.option("--var-dir", envvar="TRADEBOT_VAR", default=None, type=click.Path(file_okay=False),
                              help="The fleet's var folder [env TRADEBOT_VAR; default ./var].")


@cli.command("up")
@click.option("--workers", type=int, envvar="TRADEBOT_WORKERS", default=None,
              help="Worker processes [env TRADEBOT_WORKERS; default 2].")
@click.option("--demo", is_flag=True, help="Paper broker's market always open and the generator on: trades now.")
@click.option("--symbols", default=None, help="Tickers, comma separated [env TRADEBOT_SYMBOLS; default NVDA].")
@var_dir_option
@click.option("--redis-url", default=None, help="Use this Redis instead of the embedded one [env REDIS_URL].")
@click.option("--detach", is_flag=True, help="Run in the background (stop with `tradebot down`).")
@click.option("--only", "only", multiple=True, type=click.Choice(fleet.ONLY_CHOICES),
              help="Start only these programs against a shared REDIS_URL (e.g. more workers on another host).")
@click.option("--redis-port", type=click.IntRange(1, 65535), envvar="TRADEBOT_REDIS_PORT", default=None,
              help="Port of the embedded Redis [default: first free of 6390-6399].")
@click.option("--web-port", type=click.IntRange(1, 65535), envvar="TRADEBOT_WEB_PORT", default=None,
              help="Port of the dashboard [default: 8770 when free, else a free port].")
@click.option("--paper-port", type=click.IntRange(1, 65535), envvar="TRADEBOT_PAPER_PORT", default=None,
              help="Port of the paper broker [default: a free port].")
@click.option("--probability", type=float, default=None,
              help="Generator's signal probability per second per ticker [demo default 0.05].")
@click.option("--worker-flags", default=None, metavar="FLAGS",
              help='Extra worker flags, e.g. "--strategy fixed --fixed-qty 1" [env TRADEBOT_WORKER_FLAGS].')
@click.option("--router-flags", default=None, metavar="FLAGS", help="Extra router flags [env TRADEBOT_ROUTER_FLAGS].")
@click.option("--poller-flags", default=None, metavar="FLAGS", help="Extra poller flags [env TRADEBOT_POLLER_FLAGS].")
@click.option("--listener-flags", default=None, metavar="FLAGS",
              help="Extra order-updates listener flags [env TRADEBOT_LISTENER_FLAGS].")
@click.option("--paper-flags", default=None, metavar="FLAGS",
              help='Extra paper-broker flags, e.g. "--latency 0.05" [env TRADEBOT_PAPER_FLAGS].')
@click.option("--generator-flags", default=None, metavar="FLAGS",
              help="Extra generator flags [env TRADEBOT_GENERATOR_FLAGS].")
@click.option("--dry-run", is_flag=True, help="Print what would start and supervisord's environment; start nothing.")
@expected_errors
def up_command(workers: int | None, demo: bool, symbols: str | None, var_dir: str | None, redis_url: str | None,
               detach: bool, only: tuple[str, ...], redis_port: int | None, paper_port: int | None,
               web_port: int | None,
               probability: float | None, worker_flags: str | None, router_flags: str | None,
               poller_flags: str | None, listener_flags: str | None, paper_flags: str | None,
               generator_flags: str | None, dry_run: bool) -> None:
    """Start the fleet under supervisord: Redis (embedded unless REDIS_URL), the paper broker
    (unless Alpaca credentials are set), poller, order-updates listener, router, workers (and the
    generator with --demo)."""
    from bot.logs import configure_logging

    configure_logging()
    plan = fleet.plan_fleet(var_dir=var_dir, workers=workers, demo=demo, symbols=symbols, redis_url=redis_url,
                            only=only, redis_port=redis_port, paper_port=paper_port, web_port=web_port,
                            probability=probability,
                            extra_flags={"worker": worker_flags, "router": router_flags, "poller": poller_flags,
                                         "listener": listener_flags, "paper-broker": paper_flags,
                                         "generator": generator_flags})
    if dry_run:
        click.echo(f"would run: {' '.join(fleet.supervisord_command(plan, detach=detach))}")
        click.echo(f"processes: {', '.join(plan.process_names())}")
        for name, value in fleet.public_env(plan).items():
            click.echo(f"{name}={value}")
        return
    code = fleet.up(plan, detach=detach, echo=click.echo)
    if code:
        raise SystemExit(code)


@cli.command("down")
@var_dir_option
@click.option("--timeout", type=float, default=90.0, show_default=True, help="Seconds to wait for the stop.")
@expected_errors
def down_command(var_dir: str | None, timeout: float) -> None:
    """Stop a fleet started with `tradebot up --detach` (gracefully) and wait for it to exit."""
    fleet.down(fleet.FleetPaths.of(var_dir), timeout=timeout, echo=click.echo)


@cli.command("ctl", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@var_dir_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@expected_errors
def ctl_command(var_dir: str | None, args: tuple[str, ...]) -> None:
    """supervisorctl ARGS against the fleet: `tradebot ctl status`, `tradebot ctl restart tradebot:worker-00`
    (no ARGS: its shell). Options of ctl go before ARGS; the exit code is supervisorctl's."""
    code = fleet.run_ctl(fleet.FleetPaths.of(var_dir), args)
    if code:
        raise SystemExit(code)


@cli.command("logs")
@click.argument("program", required=False)
@click.option("-n", "--lines", type=click.IntRange(min=0), default=fleet.DEFAULT_LOG_LINES, show_default=True,
              help="How many of the last lines of each log.")
@click.option("-f", "--follow", is_flag=True, help="Then print what is appended, until Ctrl-C (like tail -f).")
@var_dir_option
@expected_errors
def logs_command(program: str | None, lines: int, follow: bool, var_dir: str | None) -> None:
    """The last lines of PROGRAM's log (worker-00, poller, listener, router, paper-broker, redis,
    generator, supervisord), or of every log, each line prefixed with its program."""
    import contextlib

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to end --follow
        fleet.show_logs(fleet.FleetPaths.of(var_dir), program, lines=lines, follow=follow, echo=click.echo)


@cli.command("embedded-redis")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--dir", "data_dir", type=click.Path(file_okay=False), required=True)
@expected_errors
def embedded_redis_command(port: int, data_dir: str) -> None:
    """(used by supervisord) exec the pip-shipped redis-server: loopback, AOF, data in --dir."""
    from pathlib import Path

    fleet.exec_embedded_redis(port, Path(data_dir))


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="A live view, refreshed every --every seconds (Ctrl-C stops).")
@click.option("--every", type=click.FloatRange(min=0.2), default=2.0, show_default=True, metavar="SECONDS")
@click.option("--times", type=click.IntRange(min=1), default=None, hidden=True, help="Stop --watch after N views.")
@redis_url_option
@var_dir_option
@expected_errors
def status_command(as_json: bool, watch: bool, every: float, times: int | None, redis_url: str | None,
                   var_dir: str | None) -> None:
    """Processes, heartbeats, streams, groups, prices, account, positions, P&L, last orders, DLQ, halt."""
    import json

    from bot import ops

    settings = ops.operator_settings(redis_url, var_dir)
    if watch:
        from bot.ops.watch import watch_status

        watch_status(lambda: ops.render_status(ops.collect_status(settings, var_dir)), every, times)
        return
    report = ops.collect_status(settings, var_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(ops.render_status(report))
    if not report.redis["ok"]:
        raise SystemExit(1)


@cli.command("signal")
@click.argument("ticker")
@click.argument("direction", metavar="b|s")
@click.option("--qty", default=None,
              help="Quantity (shares); used by workers running --strategy fixed (all-in sizes every order itself).")
@click.option("--stream", default=None, help="Source stream [default: first of TRADEBOT_SOURCE_STREAMS].")
@redis_url_option
@var_dir_option
@expected_errors
def signal_command(ticker: str, direction: str, qty: str | None, stream: str | None, redis_url: str | None,
                   var_dir: str | None) -> None:
    """Inject a signal: XADD ticker=TICKER direction=b|s to a source stream."""
    from bot import ops

    settings = ops.operator_settings(redis_url, var_dir)
    target, fields = ops.build_signal(settings, ticker, direction, qty, stream)
    r = ops.open_redis(settings)
    try:
        entry_id = ops.add_signal(r, target, fields)
        halted = ops.halt_reason(r, settings.keys)
    finally:
        r.close()
    shown = " ".join(f"{k}={v}" for k, v in fields.items())
    click.echo(f"added {entry_id} to {target}: {shown}")
    if halted is not None:
        click.echo(f"note: trading is {halted}: orders are held back until `tradebot resume`")


@cli.command("halt")
@click.option("--reason", default=None, help="Why (shown by status and journaled with skipped signals).")
@click.option("--reduce-only", is_flag=True,
              help="Only orders that shrink a position (sells, flatten); buys are journaled as skipped.")
@redis_url_option
@var_dir_option
@expected_errors
def halt_command(reason: str | None, reduce_only: bool, redis_url: str | None, var_dir: str | None) -> None:
    """Halt trading: workers send no new orders (signals are journaled as skipped); with
    --reduce-only, only orders that shrink a position."""
    import getpass
    import time

    from bot import ops

    if reason is None:
        reason = (f"{'reduce-only' if reduce_only else 'halted'} by {getpass.getuser()} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    elif not reason.strip():
        raise InputError("--reason must not be empty")
    settings = ops.operator_settings(redis_url, var_dir)
    r = ops.open_redis(settings)
    try:
        ops.halt(r, settings.keys, reason, reduce_only=reduce_only)
    finally:
        r.close()
    if reduce_only:
        click.echo(f"REDUCE-ONLY: {reason.strip()}\nsells and exits only, no buys, until `tradebot resume`")
    else:
        click.echo(f"HALTED: {reason.strip()}\nno new orders until `tradebot resume`")


@cli.command("flatten")
@click.argument("symbols", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every configured symbol (TRADEBOT_SYMBOLS).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="How long to wait for each round's journal entries.")
@click.option("--rounds", type=click.IntRange(min=1), default=20, show_default=True,
              help="Orders per symbol at most (the max order notional splits a large position).")
@click.option("--no-wait", is_flag=True, help="Queue the control signals and return.")
@redis_url_option
@var_dir_option
@expected_errors
def flatten_command(symbols: tuple[str, ...], every: bool, timeout: float, rounds: int, no_wait: bool,
                    redis_url: str | None, var_dir: str | None) -> None:
    """Sell every share of SYMBOL... (or --all) through the fleet, in any trading state: control
    signals, journaled exactly once; never more than the shares available."""
    from bot import ops
    from bot.ops import exits
    from bot.signals import FLATTEN

    settings = ops.operator_settings(redis_url, var_dir)
    tickers = _control_tickers(settings, symbols, every)
    r = ops.open_redis(settings)
    try:
        if no_wait:
            for ticker in tickers:
                click.echo(f"queued flatten {ticker}: {exits.send(r, settings.keys, FLATTEN, ticker)}")
            return
        reports = exits.flatten(r, settings.keys, tickers, timeout=timeout, rounds=rounds,
                                max_price_age=settings.max_price_age)
    finally:
        r.close()
    for report in reports:
        click.echo(report.describe(FLATTEN))
    if any(report.dead or report.left for report in reports):
        raise SystemExit(1)


@cli.command("cancel-all")
@click.argument("symbols", nargs=-1)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the journal entries.")
@click.option("--no-wait", is_flag=True, help="Queue the control signals and return.")
@redis_url_option
@var_dir_option
@expected_errors
def cancel_all_command(symbols: tuple[str, ...], timeout: float, no_wait: bool, redis_url: str | None,
                       var_dir: str | None) -> None:
    """Cancel every open order of SYMBOL... (default: every configured symbol) through the fleet."""
    from bot import ops
    from bot.ops import exits
    from bot.signals import CANCEL_ALL

    settings = ops.operator_settings(redis_url, var_dir)
    tickers = _control_tickers(settings, symbols, every=not symbols)
    r = ops.open_redis(settings)
    try:
        if no_wait:
            for ticker in tickers:
                click.echo(f"queued cancel-all {ticker}: {exits.send(r, settings.keys, CANCEL_ALL, ticker)}")
            return
        reports = exits.cancel_all(r, settings.keys, tickers, timeout=timeout)
    finally:
        r.close()
    for report in reports:
        click.echo(report.describe(CANCEL_ALL))
    if any(report.dead for report in reports):
        raise SystemExit(1)


def _control_tickers(settings: Any, symbols: tuple[str, ...], every: bool) -> list[str]:
    if every and symbols:
        raise InputError("give SYMBOL... or --all, not both")
    if not every and not symbols:
        raise InputError("give SYMBOL... or --all")
    tickers = list(settings.symbols) if every else [s.strip().upper() for s in symbols]
    unknown = [t for t in tickers if t not in settings.symbols]
    if unknown:
        raise InputError(f"unknown symbol {', '.join(unknown)} (configured: {','.join(settings.symbols)})")
    return list(dict.fromkeys(tickers))


@cli.command("record")
@click.option("--since", default=None, metavar="TIME", help="From TIME (ISO, Unix seconds, or 30m / 12h / 7d ago).")
@click.option("--until", default=None, metavar="TIME", help="Up to TIME [default: now].")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The recording to write (JSONL).")
@click.option("--signals-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Import signals instead: time,ticker,direction[,qty,...] (e.g. a TradingView alert log).")
@click.option("--prices-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Import prices instead: time,symbol,bid,ask,last (bars: close as last).")
@redis_url_option
@var_dir_option
@expected_errors
def record_command(since: str | None, until: str | None, out_path: Path, signals_csv: Path | None,
                   prices_csv: Path | None, redis_url: str | None, var_dir: str | None) -> None:
    """Write a recording for replay: the source streams' entries and the polled prices (kept while
    TRADEBOT_PRICE_HISTORY is set) between --since and --until, or signals and prices from CSV files."""
    import time

    from bot import ops
    from bot.ops.orders import parse_since
    from bot.recording import Recording, load_prices_csv, load_signals_csv, record_from_redis

    if signals_csv or prices_csv:
        if since or until:
            raise InputError("--since/--until read a fleet's Redis; with --signals-csv/--prices-csv give neither")
        recording = Recording(signals=load_signals_csv(signals_csv) if signals_csv else [],
                              prices=load_prices_csv(prices_csv) if prices_csv else [])
    else:
        if since is None:
            raise InputError("give --since (and maybe --until), or --signals-csv / --prices-csv")
        start, end = parse_since(since), parse_since(until) if until else time.time()
        if end <= start:
            raise InputError("--until must be after --since")
        settings = ops.operator_settings(redis_url, var_dir)
        r = ops.open_redis(settings)
        try:
            recording = record_from_redis(r, settings.keys, settings.source_streams, start, end)
        finally:
            r.close()
    written = recording.write(out_path)
    click.echo(f"wrote {out_path}: {len(recording.signals)} signals, {len(recording.prices)} prices "
               f"({written} records)" + ("" if recording.prices else "; no prices: set TRADEBOT_PRICE_HISTORY "
                                         "for the poller to keep them, or give --prices-csv"))


@cli.command("replay")
@click.argument("signals", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prices", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Prices: a recording (JSONL) or a CSV time,symbol,bid,ask,last [default: SIGNALS' own].")
@click.option("--speed", default="max", show_default=True, metavar="N|max",
              help="Market seconds per wall second (60: an hour a minute); max: as fast as the fleet goes.")
@click.option("--strategy", default=None, help="The workers' TRADEBOT_STRATEGY (all-in, fixed, NVDA=fixed,*=all-in).")
@click.option("--settings", "settings", multiple=True, metavar="KEY=VALUE|FILE",
              help="A TRADEBOT_* setting for the replay's fleet, or a file of KEY=VALUE lines; repeatable.")
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Workers (more than one may order the signals of one instant differently run to run).")
@click.option("--cash", default="100000", show_default=True, help="The paper account's starting cash.")
@click.option("--seed", type=int, default=1, show_default=True, help="The paper broker's seed (account and order ids).")
@click.option("--always-open", is_flag=True, help="Ignore the NYSE session: the market is open at every instant.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as JSON here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as an HTML page (with the equity and exposure charts) here.")
@click.option("--compare", "compare_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A report from another replay (--json): print the two side by side.")
@click.option("--keep-logs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the replay fleet's process logs into this folder.")
@expected_errors
def replay_command(signals: Path, prices: Path | None, speed: str, strategy: str | None, settings: tuple[str, ...],
                   workers: int, cash: str, seed: int, always_open: bool, json_path: Path | None,
                   html_path: Path | None, compare_path: Path | None, keep_logs: Path | None) -> None:
    """Run recorded signals and prices through a fleet of its own (embedded Redis, the paper broker in
    replay mode, poller, listener, router, workers; nothing touches a live fleet) and report what
    it did: orders, fills, skips, DLQ, P&L and equity over market time, latency, broker requests."""
    import json

    from bot.replay.options import load_inputs, parse_settings, parse_speed
    from bot.replay.page import html_page, print_report
    from bot.replay.report import compare
    from bot.replay.run import ReplayOptions, replay

    recording = load_inputs(signals, prices)
    other = json.loads(compare_path.read_text(encoding="utf-8")) if compare_path else None
    if other is not None and not isinstance(other, dict):
        raise InputError(f"{compare_path}: not a replay report (--json)")
    options = ReplayOptions(speed=parse_speed(speed), strategy=strategy, settings=parse_settings(settings),
                            workers=workers, cash=cash, seed=seed, always_open=always_open, keep=keep_logs)
    click.echo(f"replaying {len(recording.signals)} signals and {len(recording.prices)} prices ...", err=True)
    result = replay(recording, options)
    print_report(result, compared=compare(result, other) if other is not None else None)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if html_path:
        html_path.write_text(html_page(result), encoding="utf-8")
    if result["signals"]["missing"]:
        raise TradebotError(f"{result['signals']['missing']} signals ended neither journaled nor dead-lettered")


@cli.command("resume")
@redis_url_option
@var_dir_option
@expected_errors
def resume_command(redis_url: str | None, var_dir: str | None) -> None:
    """Trading active again (from halted or reduce-only): orders flow."""
    from bot import ops

    settings = ops.operator_settings(redis_url, var_dir)
    r = ops.open_redis(settings)
    try:
        previous = ops.resume(r, settings.keys)
    finally:
        r.close()
    click.echo("resumed: orders allowed" + (f" (was {previous})" if previous else " (was active)"))


@cli.command("pnl")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@redis_url_option
@var_dir_option
@expected_errors
def pnl_command(as_json: bool, redis_url: str | None, var_dir: str | None) -> None:
    """Realized and unrealized P&L per symbol and in total (average cost from the journal)."""
    import json

    from bot import ops
    from bot.ops.render import pnl_lines
    from bot.pnl import journal_pnl

    settings = ops.operator_settings(redis_url, var_dir)
    r = ops.open_redis(settings)
    try:
        report = journal_pnl(r, settings.keys).to_dict()
    finally:
        r.close()
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(pnl_lines(report)))


@cli.command("reconcile")
@click.option("--apply", is_flag=True,
              help="Fix what is found: adopt, record external orders, release, correct the cache.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--since", "since_seconds", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Read broker orders submitted this many seconds ago [default: since the last reconciliation].")
@click.option("--settle", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Judge only orders final this long (a worker may be journaling a younger one) [default 30].")
@click.option("--set-baseline", is_flag=True,
              help="Take today's broker positions, less what the books explain, as the account's own from "
                   "before the fleet.")
@redis_url_option
@var_dir_option
@expected_errors
def reconcile_command(apply: bool, as_json: bool, since_seconds: float | None, settle: float | None,
                      set_baseline: bool, redis_url: str | None, var_dir: str | None) -> None:
    """The broker's orders and positions against the journal, ledger and cache; exit 1 on drift."""
    import json

    from bot import ops
    from bot.ops.reconcile import reconcile, render_reconcile, report_json

    settings = ops.operator_settings(redis_url, var_dir)
    report, baseline = reconcile(settings, apply=apply, since_seconds=since_seconds, settle=settle,
                                 set_baseline=set_baseline)
    click.echo(json.dumps(report_json(report, baseline), indent=2) if as_json else render_reconcile(report, baseline))
    if report.position_drift or report.unadoptable:
        raise SystemExit(1)


@cli.command("orders")
@click.option("--last", "last", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="How many journal entries, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines with --follow).")
@click.option("--follow", "-f", is_flag=True, help="Then print each new journal entry as it is written (Ctrl-C stops).")
@click.option("--since", default=None, metavar="TIME",
              help="Every entry since TIME, oldest first (ISO time, Unix seconds, or 30m / 12h / 7d ago).")
@click.option("--format", "fmt", type=click.Choice(("table", "json", "csv", "jsonl")), default=None,
              help="Output format [default: table; json with --json].")
@redis_url_option
@var_dir_option
@expected_errors
def orders_command(last: int, as_json: bool, follow: bool, since: str | None, fmt: str | None,
                   redis_url: str | None, var_dir: str | None) -> None:
    """The last journal entries (one per handled signal), newest first; --follow: then the new ones;
    --since: every entry since then, to export (--format csv|jsonl) before the journal is trimmed."""
    import json
    import time

    from bot import ops
    from bot.ops.orders import export_orders, orders_since, parse_since

    settings = ops.operator_settings(redis_url, var_dir)
    if since is not None:
        start = parse_since(since)  # bad input: one line, exit 2, before Redis is asked
    r = ops.open_redis(settings)
    try:
        if since is not None:
            rows = list(orders_since(r, settings.keys, start))
            chosen = fmt or ("json" if as_json else "table")
            click.echo(ops.render_orders(reversed(rows)) if chosen == "table" else export_orders(rows, chosen))
            return
        if fmt not in (None, "table", "json") and not follow:
            entries = ops.last_orders(r, settings.keys, last)
            click.echo(export_orders(list(reversed(entries)), fmt))
            return
        as_json = as_json or fmt in ("json", "jsonl")
        entries = ops.last_orders(r, settings.keys, last)
        if not follow:
            click.echo(json.dumps(entries, indent=2) if as_json else ops.render_orders(entries))
            return
        for entry in reversed(entries):  # oldest first, then what comes
            click.echo(json.dumps(entry) if as_json else ops.render_orders([entry]))
        after = entries[0]["id"] if entries else "0-0"
        try:
            while True:
                fresh = ops.orders_after(r, settings.keys, after)
                for entry in fresh:
                    click.echo(json.dumps(entry) if as_json else ops.render_orders([entry]))
                    after = entry["id"]
                if not fresh:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return
    finally:
        r.close()


@cli.group("dlq")
def dlq_group() -> None:
    """The dead-letter queue: rejected or poisoned signals."""


@dlq_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many (oldest first).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@redis_url_option
@var_dir_option
@expected_errors
def dlq_list_command(limit: int | None, as_json: bool, redis_url: str | None, var_dir: str | None) -> None:
    """Show DLQ entries with their reason and original fields."""
    import json
    from dataclasses import asdict

    from bot import ops

    settings = ops.operator_settings(redis_url, var_dir)
    rb = ops.open_redis(settings, decode=False)
    try:
        entries = ops.dlq_entries(rb, settings.keys, limit)
    finally:
        rb.close()
    click.echo(json.dumps([asdict(e) for e in entries], indent=2) if as_json else ops.render_dlq(entries))


@dlq_group.command("replay")
@click.argument("entry_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--stream", default=None, help="Put them on this source stream instead of their own.")
@redis_url_option
@var_dir_option
@expected_errors
def dlq_replay_command(entry_ids: tuple[str, ...], stream: str | None, redis_url: str | None,
                       var_dir: str | None) -> None:
    """Put DLQ entries' original fields back on their source stream and delete them from the DLQ."""
    from bot import ops

    for entry_id in entry_ids:
        ops.check_entry_id(entry_id)
    settings = ops.operator_settings(redis_url, var_dir)
    rb = ops.open_redis(settings, decode=False)
    try:
        for entry_id in entry_ids:
            target, new_id = ops.dlq_replay(rb, settings.keys, entry_id, settings, stream)
            click.echo(f"replayed {entry_id} as {new_id} on {target}")
    finally:
        rb.close()


@dlq_group.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@redis_url_option
@var_dir_option
@expected_errors
def dlq_purge_command(yes: bool, redis_url: str | None, var_dir: str | None) -> None:
    """Delete every DLQ entry (entries dead-lettered after you confirm are kept)."""
    from bot import ops

    settings = ops.operator_settings(redis_url, var_dir)
    rb = ops.open_redis(settings, decode=False)
    try:
        # the newest id is taken before asking: entries dead-lettered while the prompt is open are kept
        newest = ops.dlq_newest_id(rb, settings.keys)
        if newest is None:
            click.echo("DLQ is empty")
            return
        count = rb.xlen(settings.keys.dlq)
        if not yes and not click.confirm(f"Delete {count} DLQ entries for good?", default=False):
            raise click.ClickException("nothing deleted")
        deleted = ops.dlq_purge(rb, settings.keys, newest)
    finally:
        rb.close()
    click.echo(f"deleted {deleted} DLQ entries")


def main() -> None:
    cli(prog_name="tradebot")


if __name__ == "__main__":
    main()
