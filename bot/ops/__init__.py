"""Operator queries and actions behind `tradebot status|signal|halt|resume|dlq|orders`.

Everything here reads or writes Redis through ``Keys`` and never shows a secret: settings go
through ``Settings.public_view()``, URLs through ``redact_url``.  Expected failures raise
``OpsError`` (exit code 1) or ``OpsInputError`` (bad input, exit code 2) with a clear message; both
are ``bot.errors.TradebotError``s, so the command line maps them with every other error of the project.

A package with one concept per module: ``errors``, ``settings`` (which Redis, a checked client),
``control`` (signal, halt, resume), ``orders`` (the journal's last entries), ``dlq`` (list, replay,
purge), ``status`` (collecting the report) with ``report`` (its data) and ``stream_status`` (groups,
lag, consumers), ``render`` (the text) and ``times`` (the lenient Unix-time reader they share).
"""
from bot.ops.control import add_signal, build_signal, halt, halt_reason, resume
from bot.ops.dlq import DlqEntry, check_entry_id, dlq_entries, dlq_newest_id, dlq_purge, dlq_replay
from bot.ops.errors import OpsError, OpsInputError
from bot.ops.orders import LAST_ORDERS, last_orders, orders_after
from bot.ops.render import render_dlq, render_orders, render_status
from bot.ops.report import ConsumerStatus, GroupStatus, ProcessStatus, StatusReport, StreamStatus
from bot.ops.settings import open_redis, operator_settings
from bot.ops.status import collect_status, fleet_status
from bot.ops.stream_status import LAG_SCAN_LIMIT, group_lag, stream_status

__all__ = [
    "LAG_SCAN_LIMIT",
    "LAST_ORDERS",
    "ConsumerStatus",
    "DlqEntry",
    "GroupStatus",
    "OpsError",
    "OpsInputError",
    "ProcessStatus",
    "StatusReport",
    "StreamStatus",
    "add_signal",
    "build_signal",
    "check_entry_id",
    "collect_status",
    "dlq_entries",
    "dlq_newest_id",
    "dlq_purge",
    "dlq_replay",
    "fleet_status",
    "group_lag",
    "halt",
    "halt_reason",
    "last_orders",
    "open_redis",
    "operator_settings",
    "orders_after",
    "render_dlq",
    "render_orders",
    "render_status",
    "resume",
    "stream_status",
]
