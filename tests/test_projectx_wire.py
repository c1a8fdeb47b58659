"""projectx_wire: gateway JSON read into the broker interface's types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from trading_daemon.broker import Bracket, OrderRequest, OrderStatus, OrderType, Side
from trading_daemon.projectx_client import GatewayError, Json, ProjectXError
from trading_daemon.projectx_wire import (
    BracketError,
    Symbols,
    active_contract,
    items,
    order,
    order_fields,
    positions,
    refusal,
    trades,
)


def test_symbols_map_alert_roots_and_contract_ids_both_ways() -> None:
    """NQ is ENQ on the gateway and back; unknown roots pass through; overrides win."""
    symbols = Symbols({"cl": "cle"})

    assert symbols.symbol_id("nq") == "F.US.ENQ"
    assert symbols.symbol_id("MNQ") == "F.US.MNQ"
    assert symbols.of_contract("CON.F.US.ENQ.H25") == "NQ"
    assert symbols.of_contract("CON.F.US.CLE.K25") == "CL"
    assert symbols.of_contract("CON.F.US.MNQ.H25") == "MNQ"
    assert symbols.of_contract("odd-id") == "odd-id"


def test_active_contract_picks_exact_root_and_active_month() -> None:
    """A text search lists MNQ for "NQ" and later months: only ENQ's active one."""
    data = {
        "contracts": [
            {"id": "CON.F.US.MNQ.H25", "symbolId": "F.US.MNQ", "activeContract": True},
            {"id": "CON.F.US.ENQ.M25", "symbolId": "F.US.ENQ", "activeContract": False},
            {
                "id": "CON.F.US.ENQ.H25",
                "name": "ENQH25",
                "symbolId": "F.US.ENQ",
                "activeContract": True,
                "tickSize": 0.25,
                "tickValue": 5.0,
            },
        ]
    }

    found = active_contract(data, "nq", Symbols())

    assert found is not None
    assert (found.id, found.symbol, found.name, found.tick_value) == (
        "CON.F.US.ENQ.H25",
        "NQ",
        "ENQH25",
        5.0,
    )
    assert active_contract({"contracts": []}, "NQ", Symbols()) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (1, OrderStatus.WORKING),
        (6, OrderStatus.WORKING),
        (2, OrderStatus.FILLED),
        (3, OrderStatus.CANCELLED),
        (4, OrderStatus.CANCELLED),
        (5, OrderStatus.REJECTED),
        (None, OrderStatus.WORKING),
    ],
)
def test_order_status_mapping(status: int | None, expected: OrderStatus) -> None:
    """Gateway order statuses map onto ours; anything that may still fill works."""
    raw = {"id": 7, "contractId": "CON.F.US.MNQ.H25", "side": 1, "size": 2}

    result = order({**raw, "status": status, "customTag": "td-x"}, Symbols())

    assert result.status is expected
    assert (result.order_id, result.client_id, result.symbol, result.side) == (
        "7",
        "td-x",
        "MNQ",
        Side.SELL,
    )


def test_order_partial_fill() -> None:
    """fillVolume below size is a partial fill at the filled price."""
    raw = {
        "id": 3,
        "contractId": "CON.F.US.MNQ.H25",
        "status": 1,
        "side": 0,
        "size": 3,
        "fillVolume": 1,
        "filledPrice": 21000.25,
    }

    result = order(raw, Symbols())

    assert (result.filled_size, result.fill_price, result.partially_filled) == (
        1,
        21000.25,
        True,
    )


def test_positions_net_a_root_held_in_two_months() -> None:
    """After a roll a root held in two months nets into one position."""
    data = {
        "positions": [
            {
                "contractId": "CON.F.US.MNQ.H25",
                "type": 1,
                "size": 3,
                "averagePrice": 100,
            },
            {
                "contractId": "CON.F.US.MNQ.M25",
                "type": 2,
                "size": 1,
                "averagePrice": 104,
            },
            {
                "contractId": "CON.F.US.ENQ.H25",
                "type": 2,
                "size": 2,
                "averagePrice": 50,
            },
        ]
    }

    found, held = positions(data, Symbols())

    assert [(p.symbol, p.size, p.average_price) for p in found] == [
        ("MNQ", 2, 101.0),
        ("NQ", -2, 50.0),
    ]
    assert held == [
        ("MNQ", "CON.F.US.MNQ.H25"),
        ("MNQ", "CON.F.US.MNQ.M25"),
        ("NQ", "CON.F.US.ENQ.H25"),
    ]


def test_trades_skip_voided_and_sort_by_id() -> None:
    """Voided trades are left out; ids sort as numbers (9 before 10)."""
    data = {
        "trades": [
            {"id": 10, "orderId": 2, "contractId": "CON.F.US.MNQ.H25", "side": 1},
            {"id": 9, "orderId": 1, "contractId": "CON.F.US.MNQ.H25", "side": 0},
            {"id": 11, "orderId": 3, "voided": True},
        ]
    }

    found = trades(data, Symbols())

    assert [(t.id, t.side) for t in found] == [("9", Side.BUY), ("10", Side.SELL)]


def test_items_refuses_a_list_that_is_not_of_objects() -> None:
    """A malformed answer is a ProjectXError naming the field."""
    assert items({"orders": None}, "orders") == []
    with pytest.raises(ProjectXError, match="'orders' is not a list of objects"):
        items({"orders": [1, 2]}, "orders")


def test_refusal_names_place_errors() -> None:
    """Order/place codes get their names; other endpoints show the code."""
    closed = GatewayError("Order/place", 5, "the market is closed")
    other = GatewayError("Order/cancel", 3, "")

    assert refusal(closed) == "OutsideTradingHours (errorCode 5): the market is closed"
    assert refusal(other) == "errorCode 3"


# -- order types and brackets (#5) ----------------------------------------------


def request(side: Side, **fields: Any) -> OrderRequest:
    return OrderRequest("MNQ", side, 1, "td-t-1", **fields)


@pytest.mark.parametrize(
    ("req", "fields"),
    [
        (
            request(Side.BUY),
            {"type": 2, "limitPrice": None, "stopPrice": None, "trailPrice": None},
        ),
        (
            request(Side.SELL, order_type=OrderType.LIMIT, limit_price=21010.25),
            {"type": 1, "limitPrice": 21010.25, "stopPrice": None, "trailPrice": None},
        ),
        (
            request(Side.BUY, order_type=OrderType.STOP, stop_price=21050),
            {"type": 4, "limitPrice": None, "stopPrice": 21050, "trailPrice": None},
        ),
    ],
)
def test_order_fields_type_and_prices(req: OrderRequest, fields: Json) -> None:
    """Market 2, limit 1 with limitPrice, stop 4 with stopPrice."""
    assert order_fields(req, 0.25) == fields


@pytest.mark.parametrize(
    ("side", "bracket", "stop_loss", "take_profit"),
    [
        (Side.BUY, Bracket(stop_loss_ticks=20, take_profit_ticks=40), -20, 40),
        (Side.SELL, Bracket(stop_loss_ticks=20, take_profit_ticks=40), 20, -40),
        (Side.BUY, Bracket(stop_loss_price=20995, take_profit_price=21010), -20, 40),
        (Side.SELL, Bracket(stop_loss_price=21005, take_profit_price=20990), 20, -40),
        # A price on the wrong side keeps its sign: the gateway refuses it.
        (Side.BUY, Bracket(stop_loss_price=21010), 40, None),
    ],
)
def test_order_fields_brackets_signed_by_side(
    side: Side, bracket: Bracket, stop_loss: int, take_profit: int | None
) -> None:
    """Bracket ticks are signed by side; prices become ticks from the entry."""
    fields = order_fields(
        request(side, bracket=bracket, reference_price=21000.0), tick_size=0.25
    )

    assert fields["stopLossBracket"] == {"ticks": stop_loss, "type": 4}
    expected = None if take_profit is None else {"ticks": take_profit, "type": 1}
    assert fields.get("takeProfitBracket") == expected


def test_order_fields_bracket_price_on_a_limit_counts_from_the_limit() -> None:
    """A limit entry's bracket prices are measured from its limit price."""
    req = request(
        Side.BUY,
        order_type=OrderType.LIMIT,
        limit_price=20990,
        bracket=Bracket(stop_loss_price=20980),
    )

    assert order_fields(req, 0.25)["stopLossBracket"] == {"ticks": -40, "type": 4}


def test_order_fields_bracket_price_without_entry_price_is_refused() -> None:
    """A market order's price bracket needs the alert's price to measure from."""
    req = request(Side.BUY, bracket=Bracket(take_profit_price=21010))

    with pytest.raises(BracketError, match="send price with a market order"):
        order_fields(req, 0.25)


def test_order_reads_type_price_and_trade_time() -> None:
    """A resting limit order keeps its type and price; trades their timestamp."""
    raw = {
        "id": 7,
        "contractId": "CON.F.US.MNQ.H25",
        "status": 1,
        "type": 1,
        "side": 0,
        "size": 1,
        "limitPrice": 20990.5,
        "customTag": "td-t-1",
    }
    traded = {
        "trades": [
            {
                "id": 1,
                "contractId": "CON.F.US.MNQ.H25",
                "creationTimestamp": "2025-01-21T16:13:52.523293+00:00",
                "price": 21000,
                "side": 0,
                "size": 1,
                "orderId": 7,
            }
        ]
    }

    found = order(raw, Symbols())
    [trade] = trades(traded, Symbols())

    assert (found.order_type, found.price) == (OrderType.LIMIT, 20990.5)
    assert trade.at == datetime(2025, 1, 21, 16, 13, 52, 523293, tzinfo=UTC)
