"""An example tradebot strategy (docs/strategies.md): a buy spends half the cash, a sell sells half
the shares available. Settings come from TRADEBOT_STRATEGY_OPTIONS (``share=0.5`` by default)."""
from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from bot.strategy import Intent, MarketView, Pass, SignalView, StrategySettings


class Half:
    name = "half"

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        share = Decimal(settings.options.get("share", "0.5"))
        if signal.side == "buy":
            cash = (market.cash * share).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
            return Intent(max_cash=cash) if cash >= market.price else Pass(f"{share} of the cash buys no share")
        shares = (market.position_available * share).to_integral_value(rounding=ROUND_FLOOR)
        return Intent(qty=shares) if shares >= 1 else Pass(f"{share} of {market.position_available} is no share")
