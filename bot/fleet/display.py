"""What `tradebot up` prints, without secrets: the environment it sets, the summary once the fleet is up."""
from __future__ import annotations

from typing import Any

from bot.fleet.flags import redact_flags
from bot.fleet.paths import FleetPaths
from bot.fleet.plan import FleetPlan
from bot.logs import redact_url


def public_env(plan: FleetPlan) -> dict[str, str]:
    """The variables `tradebot up` sets for supervisord, fit to print (no keys, no passwords)."""
    shown = {k: redact_flags(v) if k.endswith("_FLAGS") else v
             for k, v in plan.env.items() if k.startswith("TRADEBOT_") or k in ("PYTHONUNBUFFERED",)}
    shown["REDIS_URL"] = redact_url(plan.env.get("REDIS_URL", ""))
    for name in ("ALPACA_BASE_URL", "ALPACA_DATA_URL"):
        if plan.env.get(name):
            shown[name] = plan.env[name]
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        if plan.env.get(name):
            shown[name] = "(demo pair)" if plan.paper_broker or plan.env[name].startswith("PKDEMO") else "(set)"
    return dict(sorted(shown.items()))


def summary_lines(plan: FleetPlan, pid: int | None, infos: list[dict[str, Any]], *, detach: bool,
                  problems: list[str] | None = None) -> list[str]:
    """What `tradebot up` prints once the fleet is up: where everything is, no secrets."""
    redis_note = (f"embedded redis-server, data in {plan.paths.redis_dir}" if plan.embedded_redis
                  else "external")
    if plan.paper_broker:
        broker_note = "paper broker, demo key pair" + (", market always open" if plan.demo else "")
    else:
        broker_note = "Alpaca, keys from ALPACA_API_KEY/ALPACA_SECRET_KEY"
    states = ", ".join(f"{i['name']} {i['statename']}" for i in infos) or "(none)"
    stop = "tradebot down" + var_flag(plan.paths) if detach else "Ctrl-C (stops every process gracefully)"
    headline = (f"tradebot fleet is up (supervisord pid {pid if pid else '?'})" if not problems else
                f"tradebot fleet started but is NOT healthy (supervisord pid {pid if pid else '?'}): "
                + "; ".join(problems))
    lines = [
        headline,
        f"  redis      {plan.redis_url_shown}  ({redis_note})",
        f"  broker     {plan.broker_url}  ({broker_note})",
        f"  workers    {plan.workers if 'worker' in plan.programs else 0}",
        f"  symbols    {','.join(plan.settings.symbols)}  (source streams: {','.join(plan.settings.source_streams)})",
        f"  processes  {states}",
        *([f"  dashboard  {plan.web_url}   (metrics {plan.web_url}metrics, health {plan.web_url}healthz)"]
          if plan.web_url else []),
        f"  logs       {plan.paths.log_dir}",
        f"  status     tradebot status{var_flag(plan.paths)}   (or: tradebot ctl{var_flag(plan.paths)} status)",
        f"  stop       {stop}",
    ]
    if plan.demo:
        lines.append("  demo       generator on: random signals now; inject your own with `tradebot signal NVDA b`")
    not_running = [i["name"] for i in infos if i["statename"] != "RUNNING"]
    if not_running and not problems:
        lines.append(f"  WARNING    not running: {', '.join(not_running)}; see their logs in {plan.paths.log_dir}")
    return lines


def var_flag(paths: FleetPaths) -> str:
    default = FleetPaths.of(None)
    return "" if paths == default else f" --var-dir {paths.var_dir}"
