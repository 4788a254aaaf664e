from decimal import Decimal

import pytest

from bot.signals import MAX_FIELDS, Signal, SignalError, parse_raw

SYMBOLS = ("NVDA", "AAPL")


def parse(fields: dict, symbols=SYMBOLS) -> Signal:
    return parse_raw(fields, source_stream="nvda", source_id="1700000000123-4", symbols=symbols, routed_at=1700000001.5)


@pytest.mark.parametrize("direction,side", [
    (b"b", "buy"), (b"s", "sell"), (b"buy", "buy"), (b"SELL", "sell"), (b" B ", "buy"), (b"Sell\n", "sell"),
])
def test_directions_are_normalised(direction, side):
    signal = parse({b"ticker": b"nvda", b"direction": direction})
    assert (signal.ticker, signal.side, signal.qty) == ("NVDA", side, None)


def test_ticker_is_trimmed_and_upper_cased_and_extra_fields_ignored():
    signal = parse({b"ticker": b"  aapl\t", b"direction": b"b", b"note": b"from webhook", b"\xff": b"x"})
    assert signal.ticker == "AAPL"
    assert signal.source_stream == "nvda" and signal.source_id == "1700000000123-4"
    assert signal.routed_at == 1700000001.5
    assert signal.source_at == pytest.approx(1700000000.123)


@pytest.mark.parametrize("text,qty", [
    (b"1", Decimal("1")), (b"2.50", Decimal("2.5")), (b" 0.000000001 ", Decimal("0.000000001")),
    (b"1000000", Decimal("1000000")), (b"+3", Decimal("3")), (b"100.000", Decimal("100")),
])
def test_quantities(text, qty):
    signal = parse({b"ticker": b"NVDA", b"direction": b"b", b"qty": text})
    assert signal.qty == qty
    assert "E" not in signal.to_fields()["qty"]


@pytest.mark.parametrize("fields,reason", [
    ({b"direction": b"b"}, "missing field 'ticker'"),
    ({b"ticker": b"NVDA"}, "missing field 'direction'"),
    ({}, "missing field 'ticker'"),
    ({b"ticker": b"  ", b"direction": b"b"}, "field 'ticker' is empty"),
    ({b"ticker": b"tsla", b"direction": b"b"}, "unknown ticker 'TSLA' (configured: NVDA,AAPL)"),
    ({b"ticker": b"NVDA", b"direction": b"x"}, "direction 'x' is not b/s/buy/sell"),
    ({b"ticker": b"NVDA", b"direction": b""}, "direction '' is not b/s/buy/sell"),
    ({b"ticker": b"NVDA", b"direction": b"bs"}, "direction 'bs' is not b/s/buy/sell"),
    ({b"ticker": b"\xffNVDA", b"direction": b"b"}, "field 'ticker' is not UTF-8"),
    ({b"ticker": b"NVDA", b"direction": b"\xc3"}, "field 'direction' is not UTF-8"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"-1"}, "qty '-1' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"0"}, "qty '0' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b""}, "qty '' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"ten"}, "qty 'ten' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"NaN"}, "qty 'NaN' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"Infinity"}, "qty 'Infinity' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"1e3"}, "qty '1e3' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"1_000"}, "qty '1_000' must be a positive number"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"1000000.5"}, "qty '1000000.5' exceeds the maximum 1000000"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"0.0000000001"},
     "qty '0.0000000001' has more than 9 decimals"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"1.00000000000000000000000000000001"},
     "qty '1.00000000000000000000000000000001' has more than 9 decimals"),
    ({b"ticker": b"NVDA", b"direction": b"b", b"note": b"x" * 65}, "field 'note' is 65 bytes (max 64)"),
    ({b"ticker": b"NVDA" + b" " * 61, b"direction": b"b"}, "field 'ticker' is 65 bytes (max 64)"),
    ({b"n" * 65: b"", b"ticker": b"NVDA", b"direction": b"b"}, f"field name '{'n' * 65}' is 65 bytes (max 64)"),
    ({b"\xfe" * 2: b"y" * 100, b"ticker": b"NVDA", b"direction": b"b"}, "field b'\\xfe\\xfe' is 100 bytes (max 64)"),
    ({f"f{i}".encode(): b"v" for i in range(MAX_FIELDS + 1)}, f"entry has {MAX_FIELDS + 1} fields (max {MAX_FIELDS})"),
])
def test_bad_inputs_have_precise_reasons(fields, reason):
    with pytest.raises(SignalError) as caught:
        parse(fields)
    assert caught.value.reason == reason
    assert str(caught.value) == reason


def test_exactly_max_fields_and_max_value_size_are_accepted():
    fields = {b"ticker": b"NVDA".ljust(64), b"direction": b"b"}
    fields.update({f"extra{i}".encode(): b"v" for i in range(MAX_FIELDS - 2)})
    assert parse(fields).ticker == "NVDA"


def test_str_fields_are_accepted_too():
    assert parse({"ticker": "nvda", "direction": "s"}).side == "sell"


def test_to_fields_and_back():
    signal = parse({b"ticker": b"NVDA", b"direction": b"b", b"qty": b"1.50"})
    fields = signal.to_fields()
    assert fields == {"ticker": "NVDA", "side": "buy", "qty": "1.5", "source_stream": "nvda",
                      "source_id": "1700000000123-4", "routed_at": "1700000001.5"}
    assert Signal.from_fields(fields) == signal
    assert Signal.from_fields({k.encode(): v.encode() for k, v in fields.items()}) == signal


def test_qty_is_omitted_when_none():
    signal = parse({b"ticker": b"NVDA", b"direction": b"s"})
    assert "qty" not in signal.to_fields()
    assert Signal.from_fields(signal.to_fields()).qty is None


@pytest.mark.parametrize("change,reason", [
    ({"side": None}, "missing field 'side'"),
    ({"side": "hold"}, "side 'hold' is not buy/sell"),
    ({"source_id": "abc"}, "source_id 'abc' is not a stream id"),
    ({"routed_at": "soon"}, "routed_at 'soon' is not a number"),
    ({"qty": "-2"}, "qty '-2' must be a positive number"),
    ({"ticker": ""}, "ticker is empty"),
])
def test_from_fields_refuses_bad_signals(change, reason):
    fields = {"ticker": "NVDA", "side": "buy", "source_stream": "nvda", "source_id": "1-0", "routed_at": "2.0"}
    fields.update(change)
    fields = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(SignalError) as caught:
        Signal.from_fields(fields)
    assert caught.value.reason == reason


def test_signal_is_frozen_and_validates_on_construction():
    signal = Signal("nvda", "buy", Decimal("2"), "nvda", "5-1", 1.0)
    assert signal.ticker == "NVDA" and signal.source_at == 0.005
    with pytest.raises(AttributeError):
        signal.side = "sell"  # type: ignore[misc]
    with pytest.raises(SignalError, match="must be a positive number"):
        Signal("NVDA", "buy", Decimal("-2"), "nvda", "5-1", 1.0)


# ----------------------------------------------------------------------------- optional order fields

def _raw(**fields: str) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in {"ticker": "NVDA", "direction": "b", **fields}.items()}


def test_a_signal_carries_notional_limit_price_legs_and_strategy() -> None:
    from bot.signals import Signal, parse_raw

    signal = parse_raw(_raw(notional="250.50", limit_price="101.25", stop_loss="95", take_profit="110",
                            strategy="target-weight"), source_stream="nvda", source_id="1-1", symbols=("NVDA",),
                       routed_at=0.001)
    assert (signal.notional, signal.limit_price, signal.stop_loss, signal.take_profit, signal.strategy) == (
        Decimal("250.50"), Decimal("101.25"), Decimal(95), Decimal(110), "target-weight")
    assert Signal.from_fields(signal.to_fields()) == signal


@pytest.mark.parametrize("fields,message", [
    ({"notional": "0"}, "notional 0 must be a positive number"),
    ({"notional": "1.005"}, "more than 2 decimals"),
    ({"qty": "1", "notional": "100"}, "give qty or notional, not both"),
    ({"limit_price": "101.255"}, "more than 2 decimals"),
    ({"limit_price": "abc"}, "limit_price 'abc' must be a positive number"),
    ({"stop_loss": "110", "take_profit": "100"}, "stop_loss 110 must be below take_profit 100"),
    ({"limit_price": "90", "stop_loss": "95"}, "limit_price 90 must lie between stop_loss and take_profit"),
    ({"direction": "s", "stop_loss": "95"}, "stop_loss and take_profit go with a buy"),
    ({"strategy": "Not A Name"}, "is not a strategy name"),
])
def test_bad_order_fields_are_refused_with_the_reason(fields: dict[str, str], message: str) -> None:
    from bot.signals import SignalError, parse_raw

    with pytest.raises(SignalError) as caught:
        parse_raw(_raw(**fields), source_stream="nvda", source_id="1-1", symbols=("NVDA",), routed_at=0.001)
    assert message in caught.value.reason
