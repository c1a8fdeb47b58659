"""paper_broker: netting, realised P&L, idempotent client ids, account figures."""

from __future__ import annotations

import itertools
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from trading_daemon.broker import (
    Bracket,
    BrokerRefusal,
    FillReport,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Side,
)
from trading_daemon.journal import Journal
from trading_daemon.paper_broker import POINT_VALUE, PaperBroker

_ids = itertools.count(1)


def order(
    side: Side, size: int, symbol: str = "MNQ", client_id: str = ""
) -> OrderRequest:
    """A market order with a fresh client id unless one is given."""
    return OrderRequest(symbol, side, size, client_id or f"c{next(_ids)}")


async def test_paper_broker_buy_while_flat_opens_long() -> None:
    """A buy while flat opens a long at the configured price and fills at once."""
    broker = PaperBroker({"mnq": 21000.25})

    result = await broker.place_order(order(Side.BUY, 2))

    assert result.status is OrderStatus.FILLED
    assert (result.filled_size, result.fill_price) == (2, 21000.25)
    assert result.order_id == "P1"
    assert await broker.position("MNQ") == Position("MNQ", 2, 21000.25, 0.0)


async def test_paper_broker_unknown_symbol_uses_default_price() -> None:
    """A symbol without a configured price fills at the default price."""
    broker = PaperBroker({"MNQ": 21000}, default_price=55.5)

    result = await broker.place_order(order(Side.SELL, 1, "CL"))

    assert result.fill_price == 55.5
    assert (await broker.position("CL")).size == -1


async def test_paper_broker_sell_reduces_then_closes_long() -> None:
    """Selling a long in parts realises P&L: MNQ 2 @ 100, then 2 @ 110 = +40."""
    broker = PaperBroker({"MNQ": 100})
    await broker.place_order(order(Side.BUY, 2))
    broker.set_price("MNQ", 110)

    await broker.place_order(order(Side.SELL, 1))
    half = await broker.position("MNQ")
    await broker.place_order(order(Side.SELL, 1))
    flat = await broker.position("MNQ")

    assert half == Position("MNQ", 1, 100.0, 20.0)
    assert flat == Position("MNQ", 0, 0.0, 40.0)


async def test_paper_broker_sell_whole_long_realises_pnl() -> None:
    """One sell of the whole long closes it: MNQ buy 2 @ 100, sell 2 @ 110 = +40."""
    broker = PaperBroker({"MNQ": 100})
    await broker.place_order(order(Side.BUY, 2))
    broker.set_price("MNQ", 110)

    await broker.place_order(order(Side.SELL, 2))

    assert await broker.position("MNQ") == Position("MNQ", 0, 0.0, 40.0)


@pytest.mark.parametrize(
    ("symbol", "point_value"),
    [("ES", 50.0), ("MES", 5.0), ("NQ", 20.0), ("CL", 1000.0), ("6E", 1.0)],
)
async def test_paper_broker_pnl_uses_point_value(
    symbol: str, point_value: float
) -> None:
    """Realised P&L is points x contracts x the root's dollar value per point."""
    broker = PaperBroker({symbol: 50})
    await broker.place_order(order(Side.BUY, 3, symbol))
    broker.set_price(symbol, 52)

    await broker.place_order(order(Side.SELL, 3, symbol))

    assert POINT_VALUE.get(symbol, 1.0) == point_value
    assert (await broker.position(symbol)).realized_pnl == 2 * 3 * point_value


async def test_paper_broker_buy_while_short_covers() -> None:
    """A buy while short covers it; a fall in price is a profit for the short."""
    broker = PaperBroker({"MNQ": 200})
    await broker.place_order(order(Side.SELL, 3))
    broker.set_price("MNQ", 190)

    await broker.place_order(order(Side.BUY, 2))
    partial = await broker.position("MNQ")
    await broker.place_order(order(Side.BUY, 1))

    assert partial == Position("MNQ", -1, 200.0, 40.0)
    assert await broker.position("MNQ") == Position("MNQ", 0, 0.0, 60.0)


async def test_paper_broker_adding_averages_price() -> None:
    """Adding to a position in the same direction averages the entry price."""
    broker = PaperBroker({"MNQ": 100})
    await broker.place_order(order(Side.BUY, 1))
    broker.set_price("MNQ", 130)

    await broker.place_order(order(Side.BUY, 2))

    assert await broker.position("MNQ") == Position("MNQ", 3, 120.0, 0.0)


async def test_paper_broker_sell_bigger_than_long_reverses() -> None:
    """Sell 3 while long 1 goes short 2 at the new price, realising P&L on the 1."""
    broker = PaperBroker({"MNQ": 100})
    await broker.place_order(order(Side.BUY, 1))
    broker.set_price("MNQ", 110)

    result = await broker.place_order(order(Side.SELL, 3))

    assert (result.filled_size, result.fill_price) == (3, 110.0)
    assert await broker.position("MNQ") == Position("MNQ", -2, 110.0, 20.0)


async def test_paper_broker_buy_bigger_than_short_reverses() -> None:
    """Buy 5 while short 2 goes long 3 at the new price, realising P&L on the 2."""
    broker = PaperBroker({"ES": 6000})
    await broker.place_order(order(Side.SELL, 2, "ES"))
    broker.set_price("ES", 6010)

    await broker.place_order(order(Side.BUY, 5, "ES"))

    # Short 2 ES losing 10 points: -10 x 2 x $50.
    assert await broker.position("ES") == Position("ES", 3, 6010.0, -1000.0)


async def test_paper_broker_same_client_id_fills_once() -> None:
    """A second order with the same client id returns the first; one fill only."""
    broker = PaperBroker({"MNQ": 100})
    first = await broker.place_order(order(Side.BUY, 1, client_id="task-7:0"))
    broker.set_price("MNQ", 120)

    again = await broker.place_order(order(Side.BUY, 1, client_id="task-7:0"))

    assert again == first
    assert again.fill_price == 100.0
    assert len(broker.fills) == 1
    assert (await broker.position("MNQ")).size == 1
    assert await broker.find_order("task-7:0") == first
    assert await broker.find_order("task-8:0") is None


async def test_paper_broker_concurrent_same_client_id_fills_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two attempts racing through the fill delay with one client id fill once."""
    broker = PaperBroker({"MNQ": 100}, fill_delay=1.0)
    request = order(Side.BUY, 2, client_id="task-9:0")
    results = []

    async def place() -> None:
        results.append(await broker.place_order(request))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(place)
        nursery.start_soon(place)

    assert len(results) == 2
    assert results[0] == results[1]
    assert len(broker.fills) == 1
    assert (await broker.position("MNQ")).size == 2


@pytest.mark.parametrize("size", [0, -1])
async def test_paper_broker_rejects_non_positive_size(size: int) -> None:
    """An order for zero or fewer contracts is refused and changes nothing."""
    broker = PaperBroker()

    with pytest.raises(ValueError, match=f"got {size}"):
        await broker.place_order(order(Side.BUY, size))

    assert broker.fills == []
    assert await broker.positions() == []


async def test_paper_broker_positions_sorted_with_figures() -> None:
    """positions() lists every traded symbol, sorted, with size, price and P&L."""
    broker = PaperBroker({"MNQ": 100, "ES": 6000, "CL": 70})
    await broker.place_order(order(Side.BUY, 2, "MNQ"))
    await broker.place_order(order(Side.SELL, 1, "ES"))
    await broker.place_order(order(Side.BUY, 1, "CL"))
    broker.set_price("CL", 71)
    await broker.place_order(order(Side.SELL, 1, "CL"))

    positions = await broker.positions()

    assert positions == [
        Position("CL", 0, 0.0, 1000.0),
        Position("ES", -1, 6000.0, 0.0),
        Position("MNQ", 2, 100.0, 0.0),
    ]
    assert [p.as_dict()["side"] for p in positions] == ["flat", "short", "long"]


async def test_paper_broker_account_summary_figures() -> None:
    """account_summary adds realised P&L to the balance and marks open positions."""
    broker = PaperBroker({"MNQ": 100, "ES": 6000}, balance=10_000)
    await broker.place_order(order(Side.BUY, 2, "MNQ"))
    broker.set_price("MNQ", 110)
    await broker.place_order(order(Side.SELL, 1, "MNQ"))  # realises +20
    await broker.place_order(order(Side.SELL, 1, "ES"))
    broker.set_price("MNQ", 115)  # open long 1 @ 100: +15 x $2
    broker.set_price("ES", 6004)  # open short 1 @ 6000: -4 x $50

    summary = await broker.account_summary()

    assert summary == {
        "broker": "paper",
        "account_name": "paper",
        "balance": 10_020.0,
        "realized_pnl": 20.0,
        "unrealized_pnl": 30.0 - 200.0,
        "open_positions": 2,
        "orders": 3,
    }


async def test_paper_broker_account_summary_fresh() -> None:
    """A fresh account shows its starting balance and nothing else."""
    summary = await PaperBroker(balance=50_000).account_summary()

    assert summary["balance"] == 50_000
    assert summary["realized_pnl"] == summary["unrealized_pnl"] == 0
    assert summary["open_positions"] == summary["orders"] == 0


async def test_paper_broker_check_fills_nothing_working() -> None:
    """Market orders fill at once, so a fill check finds nothing new."""
    broker = PaperBroker()
    await broker.place_order(order(Side.BUY, 1))

    assert await broker.check_fills() == FillReport()


def test_paper_broker_set_price_updates_price() -> None:
    """set_price changes the price for that root, case-insensitively."""
    broker = PaperBroker(default_price=100)

    broker.set_price("mnq", 21000)

    assert broker.price("MNQ") == 21000.0
    assert broker.price("ES") == 100.0


@pytest.mark.parametrize("price", [0, 0.0, -1, -0.25, -math.inf])
def test_paper_broker_set_price_rejects_non_positive(price: float) -> None:
    """set_price refuses a zero or negative price and keeps the old one."""
    broker = PaperBroker({"MNQ": 100})

    with pytest.raises(ValueError, match=f"positive.*got {price!r}"):
        broker.set_price("MNQ", price)

    assert broker.price("MNQ") == 100.0


def test_paper_broker_set_price_rejects_nan() -> None:
    """set_price refuses NaN, which would poison every later P&L figure."""
    broker = PaperBroker({"MNQ": 100})

    with pytest.raises(ValueError, match="positive"):
        broker.set_price("MNQ", math.nan)

    assert broker.price("MNQ") == 100.0


async def test_paper_broker_close_position_flattens() -> None:
    """close_position sells a long at the market and leaves the symbol flat."""
    broker = PaperBroker({"MNQ": 21000})
    await broker.place_order(order(Side.BUY, 3))

    await broker.close_position("mnq")
    await broker.close_position("MES")  # flat: nothing happens

    assert (await broker.position("MNQ")).size == 0
    assert [t.side for t in await broker.trades()] == [Side.BUY, Side.SELL]
    assert [o.size for o in broker.fills] == [3, 3]


async def test_paper_broker_interface_extras() -> None:
    """Paper answers the rest of the interface: contract, account, no open orders."""
    broker = PaperBroker(balance=1000)
    await broker.start()

    contract = await broker.resolve_contract("mnq")
    accounts = await broker.accounts()

    # MNQ moves in quarter points of $2 each: a tick is worth $0.50.
    assert (contract.id, contract.symbol, contract.tick_size, contract.tick_value) == (
        "PAPER.MNQ",
        "MNQ",
        0.25,
        0.5,
    )
    assert [(a.name, a.balance, a.can_trade) for a in accounts] == [
        ("paper", 1000, True)
    ]
    assert await broker.open_orders() == []
    with pytest.raises(BrokerRefusal, match="not open"):
        await broker.cancel_order("P1")


# -- order types, brackets, accounts (#5) ---------------------------------------


def limit(side: Side, size: int, price: float, **extra: Any) -> OrderRequest:
    return OrderRequest(
        "MNQ",
        side,
        size,
        f"c{next(_ids)}",
        order_type=OrderType.LIMIT,
        limit_price=price,
        **extra,
    )


def stop(side: Side, size: int, price: float) -> OrderRequest:
    return OrderRequest(
        "MNQ", side, size, f"c{next(_ids)}", order_type=OrderType.STOP, stop_price=price
    )


async def test_paper_limit_rests_until_price_reaches_it() -> None:
    """A buy limit under the market rests; the fill check fills it at its price."""
    broker = PaperBroker({"MNQ": 21000})
    placed = await broker.place_order(limit(Side.BUY, 1, 20990))

    nothing = await broker.check_fills()
    broker.set_price("MNQ", 20985)
    report = await broker.check_fills()

    assert placed.status is OrderStatus.WORKING
    assert (placed.order_type, placed.price) == (OrderType.LIMIT, 20990)
    assert nothing == FillReport()
    [filled] = report.fills
    assert (filled.order_id, filled.fill_price) == (placed.order_id, 20990)
    assert [t.price for t in report.trades] == [20990]
    assert await broker.position("MNQ") == Position("MNQ", 1, 20990, 0.0)
    assert await broker.open_orders() == []


async def test_paper_marketable_limit_fills_at_the_market() -> None:
    """A limit the market already beats fills at once at the better price."""
    broker = PaperBroker({"MNQ": 21000})

    result = await broker.place_order(limit(Side.BUY, 2, 21005))

    assert (result.status, result.fill_price) == (OrderStatus.FILLED, 21000)


async def test_paper_stop_triggers_at_the_market_and_refuses_a_passed_stop() -> None:
    """A buy stop above rests and fills where the market is; one below is refused."""
    broker = PaperBroker({"MNQ": 21000})
    resting = await broker.place_order(stop(Side.BUY, 1, 21010))
    with pytest.raises(BrokerRefusal, match="a buy stop must be above the market"):
        await broker.place_order(stop(Side.BUY, 1, 20990))

    broker.set_price("MNQ", 21012.5)
    report = await broker.check_fills()

    assert resting.status is OrderStatus.WORKING
    assert [(o.order_id, o.fill_price) for o in report.fills] == [
        (resting.order_id, 21012.5)
    ]


async def test_paper_cancel_working_order() -> None:
    """cancel_order ends a resting order; a second cancel is refused."""
    broker = PaperBroker({"MNQ": 21000})
    placed = await broker.place_order(limit(Side.SELL, 1, 21050))

    await broker.cancel_order(placed.order_id)

    assert await broker.open_orders() == []
    found = await broker.find_order(placed.client_id)
    assert found is not None and found.status is OrderStatus.CANCELLED
    with pytest.raises(BrokerRefusal, match="not open"):
        await broker.cancel_order(placed.order_id)


async def test_paper_bracket_in_ticks_take_profit_cancels_stop_loss() -> None:
    """A filled entry gets its two legs; one filling cancels the other (OCO)."""
    broker = PaperBroker({"MNQ": 21000})
    entry = OrderRequest(
        "MNQ",
        Side.BUY,
        2,
        "entry",
        bracket=Bracket(stop_loss_ticks=20, take_profit_ticks=40),
    )
    await broker.place_order(entry)
    legs = {o.order_type: o for o in await broker.open_orders()}

    broker.set_price("MNQ", 21010)
    report = await broker.check_fills()

    # MNQ ticks are quarter points: 20 ticks is 5 points, 40 ticks 10.
    assert {k: (o.side, o.size, o.price) for k, o in legs.items()} == {
        OrderType.STOP: (Side.SELL, 2, 20995),
        OrderType.LIMIT: (Side.SELL, 2, 21010),
    }
    assert [o.order_type for o in report.fills] == [OrderType.LIMIT]
    assert await broker.open_orders() == []
    position = await broker.position("MNQ")
    assert (position.size, position.realized_pnl) == (0, 40.0)
    assert [t.profit_and_loss for t in await broker.trades()] == [None, 40.0]


async def test_paper_bracket_stop_loss_gap_fills_at_the_market() -> None:
    """A stop loss triggered by a gap fills at the market, not at its stop."""
    broker = PaperBroker({"MNQ": 21000})
    bracket = Bracket(stop_loss_price=20990, take_profit_price=21020)
    await broker.place_order(OrderRequest("MNQ", Side.BUY, 1, "e", bracket=bracket))

    broker.set_price("MNQ", 20980)
    report = await broker.check_fills()

    assert [(o.order_type, o.fill_price) for o in report.fills] == [
        (OrderType.STOP, 20980)
    ]
    assert (await broker.position("MNQ")).size == 0


@pytest.mark.parametrize(
    ("side", "bracket", "message"),
    [
        (Side.BUY, Bracket(stop_loss_price=21001), "stop loss 21001 must be below"),
        (Side.BUY, Bracket(take_profit_price=20999), "take profit 20999 must be above"),
        (Side.SELL, Bracket(stop_loss_price=20999), "stop loss 20999 must be above"),
    ],
)
async def test_paper_bracket_on_the_wrong_side_is_refused_with_no_entry(
    side: Side, bracket: Bracket, message: str
) -> None:
    """A bracket that would fill at once is refused, and no entry is made."""
    broker = PaperBroker({"MNQ": 21000})

    with pytest.raises(BrokerRefusal, match=message):
        await broker.place_order(OrderRequest("MNQ", side, 1, "x", bracket=bracket))

    assert broker.fills == []
    assert await broker.open_orders() == []
    assert await broker.find_order("x") is None


async def test_paper_bracket_legs_shrink_with_the_position_and_go_when_flat() -> None:
    """A partial exit trims the legs; closing the rest cancels them."""
    broker = PaperBroker({"MNQ": 21000})
    bracket = Bracket(stop_loss_ticks=8, take_profit_ticks=8)
    await broker.place_order(OrderRequest("MNQ", Side.BUY, 3, "e", bracket=bracket))

    await broker.place_order(order(Side.SELL, 2))
    trimmed = [o.size for o in await broker.open_orders()]
    await broker.close_position("MNQ")

    assert trimmed == [1, 1]
    assert await broker.open_orders() == []


async def test_paper_accounts_and_working_orders_survive_restart(
    tmp_path: Path,
) -> None:
    """Each account's book and resting orders come back from the journal."""
    async with trio.open_nursery() as nursery:
        journal = Journal(tmp_path)
        nursery.start_soon(journal.run)
        main = PaperBroker({"MNQ": 21000}, journal=journal, account="main")
        side = PaperBroker({"MNQ": 21000}, journal=journal, account="side")
        await main.place_order(order(Side.BUY, 2))
        await side.place_order(order(Side.SELL, 1))
        resting = await main.place_order(limit(Side.SELL, 1, 21100))
        journal.close()

    async with trio.open_nursery() as nursery:
        journal = Journal(tmp_path)
        nursery.start_soon(journal.run)
        main = PaperBroker({"MNQ": 21000}, journal=journal, account="main")
        side = PaperBroker({"MNQ": 21000}, journal=journal, account="side")
        main.set_price("MNQ", 21100)
        report = await main.check_fills()
        trades = await main.trades()
        journal.close()

    assert [o.order_id for o in report.fills] == [resting.order_id]
    assert (await main.position("MNQ")).size == 1
    assert (await side.position("MNQ")).size == -1
    assert [t.profit_and_loss for t in trades] == [None, 200.0]
    assert all(t.at is not None for t in trades)


def test_journal_migrates_paper_books_to_the_paper_account(tmp_path: Path) -> None:
    """A journal from before accounts keeps its paper book, as account 'paper'."""
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.executescript(
        """
        CREATE TABLE paper_orders (client_id TEXT PRIMARY KEY, body TEXT NOT NULL,
                                   created REAL NOT NULL);
        CREATE TABLE paper_books (symbol TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                  average_price REAL NOT NULL,
                                  realized_pnl REAL NOT NULL);
        INSERT INTO paper_books VALUES ('MNQ', 2, 21000.0, 15.0);
        """
    )
    conn.execute(
        "INSERT INTO paper_orders VALUES (?, ?, 1.0)",
        (
            "td-old",
            '{"order_id": "P1", "client_id": "td-old", "symbol": "MNQ",'
            ' "side": "buy", "size": 2, "status": "filled", "filled_size": 2,'
            ' "fill_price": 21000.0}',
        ),
    )
    conn.commit()
    conn.close()

    broker = PaperBroker(journal=Journal(tmp_path))

    assert broker.account == "paper"
    assert broker._books["MNQ"].size == 2
    assert [f.client_id for f in broker.fills] == ["td-old"]
