"""The paper broker's asset table: which symbols exist, for GET /v2/assets and /v2/assets/{id}.

A default set of common US symbols ships as package data (bot/paper/data/assets.csv); a CSV of
the same columns given with --assets-csv adds to it (a row for a known symbol replaces it). The
symbols configured with `symbols=` always exist too (tests and benches trade made-up tickers),
as plain NASDAQ stocks. Asset ids are the same name-based UUIDs the exchange puts on orders and
positions, so an id read from one answer finds the asset in another.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bot.paper.orders import CODE_NOT_FOUND, BrokerError, asset_id

COLUMNS = ("symbol", "name", "exchange", "class", "tradable", "shortable", "marginable", "easy_to_borrow",
           "fractionable")
EXCHANGES = ("AMEX", "ARCA", "BATS", "NYSE", "NASDAQ", "NYSEARCA", "OTC")


@dataclass(frozen=True)
class Asset:
    symbol: str
    name: str
    exchange: str = "NASDAQ"
    asset_class: str = "us_equity"
    status: str = "active"
    tradable: bool = True
    shortable: bool = True
    marginable: bool = True
    easy_to_borrow: bool = True
    fractionable: bool = True

    @property
    def id(self) -> str:
        return asset_id(self.symbol)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "class": self.asset_class, "exchange": self.exchange, "symbol": self.symbol,
            "name": self.name, "status": self.status, "tradable": self.tradable, "marginable": self.marginable,
            "maintenance_margin_requirement": 100, "margin_requirement_long": "100",
            "margin_requirement_short": "100", "shortable": self.shortable, "easy_to_borrow": self.easy_to_borrow,
            "borrow_status": "easy_to_borrow" if self.easy_to_borrow else "hard_to_borrow",
            "fractionable": self.fractionable,
            "attributes": ["fractional_eh_enabled"] if self.fractionable else [],
        }


def _flag(row: dict[str, str], name: str, where: str) -> bool:
    text = (row.get(name) or "true").strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{where}: {name} must be true or false, got {text!r}")
    return text in ("true", "1", "yes")


def _row_asset(row: dict[str, str], where: str) -> Asset:
    symbol = (row.get("symbol") or "").strip().upper()
    if not symbol:
        raise ValueError(f"{where}: a row without a symbol")
    exchange = (row.get("exchange") or "NASDAQ").strip().upper()
    if exchange not in EXCHANGES:
        raise ValueError(f"{where}: {symbol}: exchange must be one of {', '.join(EXCHANGES)}")
    return Asset(symbol=symbol, name=(row.get("name") or symbol).strip(), exchange=exchange,
                 asset_class=(row.get("class") or "us_equity").strip(), tradable=_flag(row, "tradable", where),
                 shortable=_flag(row, "shortable", where), marginable=_flag(row, "marginable", where),
                 easy_to_borrow=_flag(row, "easy_to_borrow", where),
                 fractionable=_flag(row, "fractionable", where))


def parse_csv(text: str, where: str) -> list[Asset]:
    """Assets of a CSV with a header row (COLUMNS; only `symbol` is required); # lines are comments."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if reader.fieldnames is None or "symbol" not in reader.fieldnames:
        raise ValueError(f"{where}: the header row must name a `symbol` column")
    return [_row_asset(row, f"{where} line {number}") for number, row in enumerate(reader, start=2)]


def default_assets() -> list[Asset]:
    text = resources.files("bot.paper").joinpath("data/assets.csv").read_text(encoding="utf-8")
    return parse_csv(text, "bot/paper/data/assets.csv")


class AssetTable:
    """Symbol and id lookups over a fixed set of assets (built once: read-only afterwards)."""

    def __init__(self, assets: Iterable[Asset]) -> None:
        self._by_symbol: dict[str, Asset] = {}
        for asset in assets:
            self._by_symbol[asset.symbol] = asset  # later rows (the extra CSV) win
        self._by_id = {asset.id: asset for asset in self._by_symbol.values()}

    @classmethod
    def build(cls, extra_csv: str | None = None, symbols: Iterable[str] = ()) -> AssetTable:
        assets = default_assets()
        if extra_csv:
            assets += parse_csv(Path(extra_csv).read_text(encoding="utf-8"), extra_csv)
        known = {asset.symbol for asset in assets}
        assets += [Asset(symbol=s, name=f"{s} (paper broker)") for s in symbols if s not in known]
        return cls(assets)

    def __len__(self) -> int:
        return len(self._by_symbol)

    def has(self, symbol: str) -> bool:
        return symbol.upper() in self._by_symbol

    def find(self, symbol_or_id: str) -> Asset:
        asset = self._by_symbol.get(symbol_or_id.upper()) or self._by_id.get(symbol_or_id.lower())
        if asset is None:
            raise BrokerError(404, f"asset not found for {symbol_or_id}", CODE_NOT_FOUND)
        return asset

    def select(self, status: str | None = None, asset_class: str | None = "us_equity",
               exchange: str | None = None) -> list[Asset]:
        """GET /v2/assets: sorted by class, exchange and symbol like Alpaca's list."""
        chosen = [a for a in self._by_symbol.values()
                  if (status is None or a.status == status)
                  and (asset_class is None or a.asset_class == asset_class)
                  and (exchange is None or a.exchange == exchange.upper())]
        return sorted(chosen, key=lambda a: (a.asset_class, a.exchange, a.symbol))
