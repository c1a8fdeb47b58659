"""alerts: every alert form TradingView and friends send, good and bad."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_daemon.alerts import (
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    Action,
    AlertError,
    Signal,
    normalise_symbol,
    parse_alert,
    parse_signal,
)
from trading_daemon.broker import Bracket, OrderType


def body(**fields: Any) -> bytes:
    """A JSON alert body with ``fields``."""
    return json.dumps(fields).encode()


def alert(**fields: Any) -> dict[str, Any]:
    """A decoded alert: buy 1 MNQ unless ``fields`` say otherwise."""
    return {"action": "buy", "symbol": "MNQ1!", "quantity": 1, **fields}


# -- good alerts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("buy", Action.BUY),
        ("BUY", Action.BUY),
        ("Buy", Action.BUY),
        ("long", Action.BUY),
        ("LONG", Action.BUY),
        ("sell", Action.SELL),
        ("SeLl", Action.SELL),
        ("short", Action.SELL),
        ("Short", Action.SELL),
        ("close", Action.CLOSE),
        ("CLOSE", Action.CLOSE),
        ("exit", Action.CLOSE),
        ("Exit", Action.CLOSE),
        ("flat", Action.CLOSE),
        ("FLAT", Action.CLOSE),
        (" buy ", Action.BUY),
    ],
)
def test_parse_signal_action_any_case(text: str, expected: Action) -> None:
    """Every action word, in any case, maps to buy, sell or close."""
    signal = parse_signal(alert(action=text))

    assert signal.action is expected


@pytest.mark.parametrize(
    ("raw", "root"),
    [
        ("MNQ", "MNQ"),
        ("MNQ1!", "MNQ"),
        ("MNQZ2025", "MNQ"),
        ("MNQZ25", "MNQ"),
        ("MNQZ5", "MNQ"),
        ("CME_MINI:MNQ1!", "MNQ"),
        ("mnq1!", "MNQ"),
        ("ES1!", "ES"),
        ("ESH2026", "ES"),
        ("M2K1!", "M2K"),
        ("M2KU25", "M2K"),
        ("6E1!", "6E"),
        ("CME:6EZ2025", "6E"),
        ("NQ", "NQ"),
        (" MNQ1! ", "MNQ"),
    ],
)
def test_parse_signal_symbol_maps_to_root(raw: str, root: str) -> None:
    """Continuous, dated and exchange-prefixed tickers map to their root symbol."""
    signal = parse_signal(alert(symbol=raw))

    assert signal.symbol == root
    assert signal.raw_symbol == raw
    assert normalise_symbol(raw) == root


def test_parse_signal_ticker_key_is_accepted() -> None:
    """``ticker`` works as a synonym of ``symbol`` and is not kept in extra."""
    data = {"action": "sell", "ticker": "ES1!", "quantity": 2}

    signal = parse_signal(data)

    assert (signal.symbol, signal.quantity) == ("ES", 2)
    assert signal.extra == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        ("1", 1),
        ("1.0", 1),
        ("2.0", 2),
        (3.0, 3),
        (" 4 ", 4),
        (MAX_QUANTITY, MAX_QUANTITY),
    ],
)
def test_parse_signal_quantity_forms(value: Any, expected: int) -> None:
    """Quantities as ints, whole floats or (padded) strings become an int."""
    signal = parse_signal(alert(quantity=value))

    assert signal.quantity == expected
    assert isinstance(signal.quantity, int)


def test_parse_signal_qty_key_is_accepted() -> None:
    """``qty`` works as a synonym of ``quantity``."""
    signal = parse_signal({"action": "buy", "symbol": "MNQ", "qty": "3"})

    assert signal.quantity == 3


@pytest.mark.parametrize("word", ["close", "exit", "flat", "FLAT"])
def test_parse_signal_close_without_quantity(word: str) -> None:
    """A close needs no quantity: it means the whole position."""
    signal = parse_signal({"action": word, "symbol": "MNQ1!"})

    assert signal.action is Action.CLOSE
    assert signal.quantity is None


def test_parse_alert_tradingview_bytes() -> None:
    """The body TradingView sends for a quoted contracts placeholder parses."""
    raw = b'{"action":"buy","symbol":"MNQ1!","quantity":"1"}'

    signal = parse_alert(raw)

    assert signal == Signal(
        action=Action.BUY, symbol="MNQ", quantity=1, raw_symbol="MNQ1!"
    )


def test_parse_alert_unknown_fields_kept_in_extra() -> None:
    """Fields the daemon does not know survive in ``extra``, known ones do not."""
    raw = body(
        action="sell",
        symbol="ES1!",
        quantity=1,
        id="a1",
        comment="6012.25",
        strategy={"name": "orb", "position": "short"},
    )

    signal = parse_alert(raw)

    assert signal.extra == {
        "comment": "6012.25",
        "strategy": {"name": "orb", "position": "short"},
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc-123", "abc-123"),
        ("  padded  ", "padded"),
        (42, "42"),
        (0, "0"),
        ("x" * MAX_ID_LENGTH, "x" * MAX_ID_LENGTH),
    ],
)
def test_parse_signal_id_string_or_int(value: Any, expected: str) -> None:
    """An id may be a string or an integer and is kept as stripped text."""
    signal = parse_signal(alert(id=value))

    assert signal.alert_id == expected


def test_parse_signal_without_id() -> None:
    """An alert without an id has alert_id None."""
    assert parse_signal(alert()).alert_id is None


def test_signal_payload_round_trip() -> None:
    """A signal survives to_payload/from_payload, as the journal stores it."""
    signal = parse_alert(body(action="short", symbol="CME_MINI:MNQZ2025", qty=2, x=1))

    payload = json.loads(json.dumps(signal.to_payload()))

    assert Signal.from_payload(payload) == signal


# -- bad alerts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.5", "'0.5'"),
        (0.5, "0.5"),
        (0, "0"),
        ("0", "'0'"),
        (-1, "-1"),
        ("-1", "'-1'"),
        ("abc", "'abc'"),
        ("", "''"),
        (True, "True"),
        (False, "False"),
        ([1], "[1]"),
        ({"n": 1}, "{'n': 1}"),
        ("inf", "'inf'"),
        (MAX_QUANTITY + 1, str(MAX_QUANTITY + 1)),
        ("10001", "'10001'"),
        (1e20, "1e+20"),
        (-(10**400), "-10000000000"),
        ("1" * 40, "'1111111111"),
    ],
)
def test_parse_signal_bad_quantity(value: Any, shown: str) -> None:
    """A quantity that is no positive whole number up to the limit is refused."""
    with pytest.raises(AlertError) as info:
        parse_signal(alert(quantity=value))

    assert info.value.field == "quantity"
    assert "quantity must be" in str(info.value)
    assert shown in str(info.value)


@pytest.mark.parametrize("action", ["buy", "sell", "long", "short"])
@pytest.mark.parametrize("present", [True, False], ids=["null", "missing"])
def test_parse_signal_quantity_required_to_open(action: str, present: bool) -> None:
    """Buy and sell without a quantity (missing or null) are refused."""
    data: dict[str, Any] = {"action": action, "symbol": "MNQ"}
    if present:
        data["quantity"] = None

    with pytest.raises(AlertError) as info:
        parse_signal(data)

    assert info.value.field == "quantity"
    assert "quantity is required" in str(info.value)


def test_parse_alert_quantity_400_digits() -> None:
    """A 400-digit quantity gets the 'at most' message, not an overflow."""
    raw = b'{"action":"buy","symbol":"MNQ","quantity":1' + b"0" * 400 + b"}"

    with pytest.raises(AlertError) as info:
        parse_alert(raw)

    assert info.value.field == "quantity"
    assert info.value.value == 10**400
    assert f"at most {MAX_QUANTITY}" in str(info.value)
    assert "1000000000000000" in str(info.value)
    # The shown value is cut short so a hostile body cannot flood the logs.
    assert len(str(info.value)) < 120


def test_parse_alert_quantity_float_overflow() -> None:
    """A float quantity that overflows to infinity is refused."""
    with pytest.raises(AlertError) as info:
        parse_alert(b'{"action":"buy","symbol":"MNQ","quantity":1e400}')

    assert info.value.field == "quantity"
    assert "inf" in str(info.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_parse_alert_non_json_constant(constant: str) -> None:
    """NaN and Infinity, which Python's json accepts by default, are refused."""
    raw = f'{{"action":"buy","symbol":"MNQ","quantity":{constant}}}'.encode()

    with pytest.raises(AlertError) as info:
        parse_alert(raw)

    # Refused while decoding the body, before any field is looked at.
    assert info.value.field is None
    assert constant in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"symbol": "MNQ", "quantity": 1}, "action is required"),
        ({"action": None, "symbol": "MNQ", "quantity": 1}, "action is required"),
        ({"action": "hold", "symbol": "MNQ", "quantity": 1}, "'hold'"),
        ({"action": "", "symbol": "MNQ", "quantity": 1}, "''"),
        ({"action": "buy!", "symbol": "MNQ", "quantity": 1}, "'buy!'"),
        ({"action": 1, "symbol": "MNQ", "quantity": 1}, "must be a string, got 1"),
        ({"action": ["buy"], "symbol": "MNQ", "quantity": 1}, "['buy']"),
        ({"action": True, "symbol": "MNQ", "quantity": 1}, "got True"),
    ],
)
def test_parse_signal_bad_action(data: dict[str, Any], fragment: str) -> None:
    """A missing, unknown or non-string action is refused, naming the value."""
    with pytest.raises(AlertError) as info:
        parse_signal(data)

    assert info.value.field == "action"
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("symbol", "fragment"),
    [
        (None, "symbol is required"),
        ("???", "'???'"),
        ("", "''"),
        ("123", "'123'"),
        ("MNQ 1!", "'MNQ 1!'"),
        ("TOOLONGROOT", "'TOOLONGROOT'"),
        ("CME_MINI:", "'CME_MINI:'"),
        (123, "must be a string, got 123"),
        (["MNQ"], "['MNQ']"),
    ],
)
def test_parse_signal_bad_symbol(symbol: Any, fragment: str) -> None:
    """A missing, malformed or non-string symbol is refused, naming the value."""
    data: dict[str, Any] = {"action": "buy", "quantity": 1}
    if symbol is not None:
        data["symbol"] = symbol

    with pytest.raises(AlertError) as info:
        parse_signal(data)

    assert info.value.field == "symbol"
    assert fragment in str(info.value)


def test_parse_signal_missing_symbol_and_ticker() -> None:
    """An alert naming neither symbol nor ticker is refused."""
    with pytest.raises(AlertError, match="symbol is required") as info:
        parse_signal({"action": "close"})

    assert info.value.field == "symbol"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("x" * (MAX_ID_LENGTH + 1), f"got {MAX_ID_LENGTH + 1}"),
        ("", "got 0"),
        ("   ", "got 0"),
        (10 ** (MAX_ID_LENGTH + 1), f"got {MAX_ID_LENGTH + 2}"),
        (1.5, "got 1.5"),
        (True, "got True"),
        ({"a": 1}, "{'a': 1}"),
        (["a"], "['a']"),
    ],
)
def test_parse_signal_bad_id(value: Any, fragment: str) -> None:
    """An id that is empty, too long or neither string nor integer is refused."""
    with pytest.raises(AlertError) as info:
        parse_signal(alert(id=value))

    assert info.value.field == "id"
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"buy MNQ 1", "not valid JSON"),
        (b'{"action": "buy",}', "not valid JSON"),
        (b'{"action": "{{strategy.order.action}}", }', "not valid JSON"),
        (b"", "body is empty"),
        (b"   \n\t ", "body is empty"),
        (b"[]", "got a JSON array"),
        (b'[{"action": "buy"}]', "got a JSON array"),
        (b'"buy"', "got a JSON string"),
        (b"1", "got a JSON number"),
        (b"null", "got a JSON null"),
        (b"true", "got a JSON boolean"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"action": "b\xe9"}', "UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
        (b'{"quantity": 1' + b"0" * 5000 + b"}", "more than 4300 digits"),
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else None,
)
def test_parse_alert_bad_body(raw: bytes, fragment: str) -> None:
    """A body that is no UTF-8 JSON object is refused with a body-level error."""
    with pytest.raises(AlertError) as info:
        parse_alert(raw)

    assert info.value.field is None
    assert fragment in str(info.value)
    assert info.value.as_json() == {"error": str(info.value)}


def test_alert_error_as_json_names_field() -> None:
    """AlertError.as_json carries the message and the field, as the 400 body does."""
    with pytest.raises(AlertError) as info:
        parse_signal(alert(quantity="0.5"))

    assert info.value.as_json() == {
        "error": "quantity must be a positive whole number of contracts, got '0.5'",
        "field": "quantity",
    }


# -- property ------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["buy", "SELL", "flat", "MNQ1!", "MNQZ2025", "1", "2.0", " 4 "]),
)
_alert_like = st.fixed_dictionaries(
    {},
    optional={
        "action": _json_leaf,
        "symbol": _json_leaf,
        "ticker": _json_leaf,
        "quantity": _json_leaf,
        "qty": _json_leaf,
        "id": _json_leaf,
    },
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=256), _alert_like))
def test_parse_alert_total_on_arbitrary_bytes(raw: bytes) -> None:
    """parse_alert on any bytes returns a Signal or raises AlertError, nothing else."""
    try:
        result = parse_alert(raw)
    except AlertError as exc:
        assert str(exc)
        return

    assert isinstance(result, Signal)
    assert result.action in set(Action)
    assert result.quantity is None or 1 <= result.quantity <= MAX_QUANTITY


def test_parse_body_refuses_duplicate_fields() -> None:
    """A body naming a field twice is refused rather than silently taking the last."""
    body = b'{"action":"buy","symbol":"MNQ","quantity":1,"action":"sell"}'

    with pytest.raises(AlertError) as caught:
        parse_alert(body)

    assert caught.value.field == "action"
    assert "more than once" in str(caught.value)


# -- what an alert says about orders and positions (#5) ------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("reverse", Action.REVERSE), ("Cancel", Action.CANCEL), ("EXIT", Action.CLOSE)],
)
def test_parse_signal_reverse_and_cancel_actions(text: str, expected: Action) -> None:
    """reverse and cancel are actions too, in any case; neither needs a quantity."""
    signal = parse_signal({"action": text, "symbol": "MNQ"})

    assert (signal.action, signal.quantity) == (expected, None)


@pytest.mark.parametrize(
    ("fields", "target"),
    [
        ({"market_position": "long", "market_position_size": "2"}, 2),
        ({"market_position": "Short", "market_position_size": 1.0}, -1),
        ({"market_position": "flat", "market_position_size": "0"}, 0),
        ({"market_position": "flat"}, 0),
        ({"position_size": "-3.0"}, -3),
        ({"position_size": 0}, 0),
        ({"market_position": "long", "market_position_size": 2, "position_size": 2}, 2),
    ],
)
def test_parse_signal_target_position(fields: dict[str, Any], target: int) -> None:
    """TradingView's market_position(_size) or a signed position_size is the target."""
    signal = parse_signal({"action": "buy", "symbol": "MNQ1!", **fields})

    assert signal.target == target
    assert signal.quantity is None
    assert signal.extra == {}


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"market_position": "up"}, "market_position", "long, short or flat"),
        ({"market_position": "long"}, "market_position_size", "1 or more"),
        (
            {"market_position": "flat", "market_position_size": 1},
            "market_position_size",
            "needs market_position_size 0",
        ),
        ({"market_position_size": 1}, "market_position", "needs market_position"),
        ({"position_size": "1.5"}, "position_size", "whole number"),
        (
            {"market_position": "long", "market_position_size": 1, "position_size": -1},
            "position_size",
            "contradicts",
        ),
        ({"mode": "target"}, "mode", "mode target needs market_position"),
        ({"mode": "auto"}, "mode", "signal or target, got 'auto'"),
    ],
)
def test_parse_signal_bad_target_is_refused(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    """A target that cannot be read is a 400 naming the field."""
    with pytest.raises(AlertError, match=fragment) as info:
        parse_signal(alert(**fields))

    assert info.value.field == field


def test_parse_signal_signal_mode_with_target_still_needs_quantity() -> None:
    """mode signal reads quantity, so buy without one is refused."""
    with pytest.raises(AlertError, match="quantity is required for buy"):
        parse_signal(
            {"action": "buy", "symbol": "MNQ", "mode": "signal", "position_size": 1}
        )


@pytest.mark.parametrize(
    ("fields", "kind", "limit", "stop", "reference"),
    [
        ({}, OrderType.MARKET, None, None, None),
        ({"price": "21000.25"}, OrderType.MARKET, None, None, 21000.25),
        ({"limit_price": 21000}, OrderType.LIMIT, 21000.0, None, None),
        (
            {"order_type": "LIMIT", "price": "20990"},
            OrderType.LIMIT,
            20990,
            None,
            20990,
        ),
        ({"stop_price": "21050.5"}, OrderType.STOP, None, 21050.5, None),
        (
            {"order_type": "stop", "stop_price": 21050},
            OrderType.STOP,
            None,
            21050,
            None,
        ),
    ],
)
def test_parse_signal_order_types(
    fields: dict[str, Any],
    kind: OrderType,
    limit: float | None,
    stop: float | None,
    reference: float | None,
) -> None:
    """market, limit (price or limit_price), stop (stop_price); inferred if unnamed."""
    signal = parse_signal(alert(**fields))

    assert (signal.order_type, signal.limit_price, signal.stop_price) == (
        kind,
        limit,
        stop,
    )
    assert signal.reference_price == reference


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"order_type": "trailing"}, "order_type", "market, limit or stop"),
        ({"order_type": "limit"}, "limit_price", "needs limit_price"),
        ({"order_type": "stop"}, "stop_price", "needs stop_price"),
        ({"limit_price": 1, "stop_price": 2}, "stop_price", "stop-limit"),
        ({"order_type": "market", "limit_price": 1}, "limit_price", "does not go"),
        ({"limit_price": "-5"}, "limit_price", "positive price, got '-5'"),
        ({"stop_price": "nan"}, "stop_price", "positive price"),
    ],
)
def test_parse_signal_bad_order_is_refused(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    """An order type or price that does not fit is a 400 naming the field."""
    with pytest.raises(AlertError, match=fragment) as info:
        parse_signal(alert(**fields))

    assert info.value.field == field


@pytest.mark.parametrize(
    ("fields", "bracket"),
    [
        ({"stop_loss_ticks": "20"}, Bracket(stop_loss_ticks=20)),
        ({"take_profit_ticks": 40.0}, Bracket(take_profit_ticks=40)),
        (
            {"stop_loss": "20950", "take_profit_price": 21100},
            Bracket(stop_loss_price=20950, take_profit_price=21100),
        ),
        ({}, None),
    ],
)
def test_parse_signal_bracket(fields: dict[str, Any], bracket: Bracket | None) -> None:
    """Stop loss and take profit, each in ticks or as a price."""
    assert parse_signal(alert(**fields)).bracket == bracket


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"stop_loss_ticks": 0}, "from 1 to"),
        ({"stop_loss_ticks": 2.5}, "whole number of ticks"),
        ({"stop_loss_ticks": 5, "stop_loss": 100}, "in ticks and as a price"),
        ({"take_profit": 1, "take_profit_price": 2}, "not both"),
    ],
)
def test_parse_signal_bad_bracket_is_refused(
    fields: dict[str, Any], fragment: str
) -> None:
    """A bracket leg must be whole positive ticks or one price."""
    with pytest.raises(AlertError, match=fragment):
        parse_signal(alert(**fields))


@pytest.mark.parametrize(
    ("value", "expected"), [("main", "main"), (" eval2 ", "eval2"), (1002, "1002")]
)
def test_parse_signal_account(value: Any, expected: str) -> None:
    """An alert may name its account by name or id."""
    assert parse_signal(alert(account=value)).account == expected


@pytest.mark.parametrize("value", ["", "x" * 65, True, ["main"]])
def test_parse_signal_bad_account_is_refused(value: Any) -> None:
    """An empty, overlong or non-text account is refused."""
    with pytest.raises(AlertError) as info:
        parse_signal(alert(account=value))

    assert info.value.field == "account"


def test_signal_payload_round_trip_with_order_fields() -> None:
    """Target, order type, bracket and account survive the journal's JSON."""
    signal = parse_signal(
        alert(
            account="main",
            market_position="short",
            market_position_size=2,
            limit_price=21010,
            stop_loss_ticks=12,
            mode="target",
        )
    )

    payload = json.loads(json.dumps(signal.to_payload()))

    assert Signal.from_payload(payload) == signal


def test_signal_from_payload_of_an_older_journal() -> None:
    """A payload written before #5 reads as a market order without target."""
    old = {
        "action": "buy",
        "symbol": "MNQ",
        "quantity": 1,
        "alert_id": None,
        "raw_symbol": "MNQ",
        "extra": {},
    }

    signal = Signal.from_payload(old)

    assert (signal.order_type, signal.target, signal.account) == (
        OrderType.MARKET,
        None,
        None,
    )
