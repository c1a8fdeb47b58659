"""The in-memory ProjectX model: contracts, orders, fills, positions, P&L."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from trading_daemon.projectx_sim_state import (
    DEFAULT_START,
    Account,
    Bracket,
    CancelOrderErrorCode,
    ClosePositionErrorCode,
    GatewayRefusal,
    LoginErrorCode,
    ModifyOrderErrorCode,
    OrderSide,
    OrderStatus,
    OrderType,
    PartialCloseErrorCode,
    PlaceOrderErrorCode,
    PositionType,
    SimulatorState,
    Trade,
)

MNQ = "CON.F.US.MNQ.H25"
ACCOUNT = 1001
BUY, SELL = OrderSide.BID, OrderSide.ASK


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState()


def all_trades(state: SimulatorState) -> list[Trade]:
    return state.search_trades(ACCOUNT, DEFAULT_START)


def refusal_code(error: pytest.ExceptionInfo[GatewayRefusal]) -> int:
    return error.value.error_code


async def test_accounts_default_practice_account(state: SimulatorState) -> None:
    """The default simulator has one tradable simulated account 1001."""
    [account] = state.search_accounts(only_active=True)

    assert (account.id, account.name, account.balance) == (
        1001,
        "PRAC-V2-SIM-1",
        50000.0,
    )
    assert account.can_trade and account.simulated


async def test_accounts_only_active_filter() -> None:
    """onlyActiveAccounts leaves out inactive accounts, false lists them too."""
    state = SimulatorState(
        accounts=[Account(1, "A", 100.0), Account(2, "B", 100.0, active=False)]
    )

    assert [a.id for a in state.search_accounts(only_active=True)] == [1]
    assert [a.id for a in state.search_accounts(only_active=False)] == [1, 2]


async def test_login_unknown_user_refused(state: SimulatorState) -> None:
    """An unknown userName is refused with UserNotFound."""
    with pytest.raises(GatewayRefusal) as error:
        state.login("someone-else", state.api_key)

    assert refusal_code(error) == LoginErrorCode.USER_NOT_FOUND


async def test_login_wrong_key_refused(state: SimulatorState) -> None:
    """A wrong API key is refused with InvalidCredentials."""
    with pytest.raises(GatewayRefusal) as error:
        state.login(state.user_name, "not-the-key")

    assert refusal_code(error) == LoginErrorCode.INVALID_CREDENTIALS


async def test_token_valid_until_lifetime_ends(
    state: SimulatorState, autojump_clock: trio.testing.MockClock
) -> None:
    """A token works for 24 h of trio time and not after."""
    token = state.login(state.user_name, state.api_key)
    await trio.sleep(24 * 3600 - 1)
    assert state.token_valid(token)

    await trio.sleep(2)

    assert not state.token_valid(token)


async def test_contracts_search_text_matches_micro_and_mini(
    state: SimulatorState,
) -> None:
    """Searching "NQ" returns MNQ and ENQ, each with an active and a later month."""
    found = {c.id: c for c in state.search_contracts("NQ")}

    assert set(found) == {
        "CON.F.US.MNQ.H25",
        "CON.F.US.MNQ.M25",
        "CON.F.US.ENQ.H25",
        "CON.F.US.ENQ.M25",
    }
    mnq = found["CON.F.US.MNQ.H25"]
    assert (mnq.symbol_id, mnq.tick_size, mnq.tick_value) == ("F.US.MNQ", 0.25, 0.5)
    assert mnq.active and not found["CON.F.US.MNQ.M25"].active


async def test_contracts_roll_activates_next_month(state: SimulatorState) -> None:
    """A roll makes M25 active, keeps H25 listed inactive and lists U25."""
    new = state.roll("F.US.MNQ")
    listed = {c.id: c.active for c in state.search_contracts("MNQ")}

    assert new.id == "CON.F.US.MNQ.M25"
    assert listed == {
        "CON.F.US.MNQ.H25": False,
        "CON.F.US.MNQ.M25": True,
        "CON.F.US.MNQ.U25": False,
    }
    assert state.price(new.id) == state.price(MNQ)


async def test_place_inactive_month_refused(state: SimulatorState) -> None:
    """An order on a listed but inactive month is refused with ContractNotActive."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, "CON.F.US.MNQ.M25", OrderType.MARKET, BUY, 1)

    assert refusal_code(error) == PlaceOrderErrorCode.CONTRACT_NOT_ACTIVE


async def test_place_unknown_contract_refused(state: SimulatorState) -> None:
    """An order on an unknown contract is refused with ContractNotFound."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, "CON.F.US.XYZ.H25", OrderType.MARKET, BUY, 1)

    assert refusal_code(error) == PlaceOrderErrorCode.CONTRACT_NOT_FOUND


async def test_place_unknown_account_refused(state: SimulatorState) -> None:
    """An order for an unknown account is refused with AccountNotFound."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(9999, MNQ, OrderType.MARKET, BUY, 1)

    assert refusal_code(error) == PlaceOrderErrorCode.ACCOUNT_NOT_FOUND


async def test_market_order_opens_position_and_opening_trade(
    state: SimulatorState,
) -> None:
    """A market buy fills at the market, opens a long and books a trade sans P&L."""
    state.set_price(MNQ, 21000.25)

    order_id = state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 2)

    order = state.find_order(order_id)
    assert order is not None
    assert (order.status, order.fill_volume, order.filled_price) == (
        OrderStatus.FILLED,
        2,
        21000.25,
    )
    [position] = state.open_positions(ACCOUNT)
    assert (position.type, position.size, position.average_price) == (
        PositionType.LONG,
        2,
        21000.25,
    )
    [trade] = all_trades(state)
    assert trade.profit_and_loss is None
    assert trade.fees == 0.74


async def test_closing_fill_realises_pnl_from_tick_value(
    state: SimulatorState,
) -> None:
    """Selling a 2-lot long 10 points higher books 40 ticks x $0.50 x 2 = $40."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 2)
    state.set_price(MNQ, 21010.0)

    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, SELL, 2)

    opening, closing = all_trades(state)
    assert opening.profit_and_loss is None
    assert closing.profit_and_loss == 40.0
    assert state.open_positions(ACCOUNT) == []
    assert state.accounts[ACCOUNT].balance == 50000.0 + 40.0 - 4 * 0.37


async def test_short_position_loses_when_price_rises(state: SimulatorState) -> None:
    """A short covered 2 points higher loses 8 ticks x $0.50."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, SELL, 1)
    [position] = state.open_positions(ACCOUNT)
    assert position.type is PositionType.SHORT
    state.set_price(MNQ, 21002.0)

    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1)

    assert all_trades(state)[-1].profit_and_loss == -4.0


async def test_fill_through_flat_reverses_position(state: SimulatorState) -> None:
    """Buying 3 against a 1-lot short closes it and opens a 2-lot long."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, SELL, 1)
    state.set_price(MNQ, 20999.0)

    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 3)

    [position] = state.open_positions(ACCOUNT)
    assert (position.type, position.size, position.average_price) == (
        PositionType.LONG,
        2,
        20999.0,
    )
    assert all_trades(state)[-1].profit_and_loss == 2.0


async def test_limit_order_rests_then_fills_at_limit(state: SimulatorState) -> None:
    """A buy limit below the market rests until the price trades down to it."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20990.0
    )
    assert state.set_price(MNQ, 20995.0) == []
    assert [o.id for o in state.open_orders(ACCOUNT)] == [order_id]

    filled = state.set_price(MNQ, 20985.0)

    order = state.find_order(order_id)
    assert filled == [order_id]
    assert order is not None
    assert (order.status, order.filled_price) == (OrderStatus.FILLED, 20990.0)
    assert state.open_orders(ACCOUNT) == []


async def test_marketable_limit_fills_at_market(state: SimulatorState) -> None:
    """A buy limit above the market fills at once at the better market price."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=21005.0
    )

    order = state.find_order(order_id)
    assert order is not None
    assert (order.status, order.filled_price) == (OrderStatus.FILLED, 21000.0)


async def test_stop_order_fills_at_market_after_gap(state: SimulatorState) -> None:
    """A sell stop triggered by a gap fills where the market is, not at the stop."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.STOP, SELL, 1, stop_price=20990.0
    )

    state.set_price(MNQ, 20980.0)

    order = state.find_order(order_id)
    assert order is not None
    assert (order.status, order.filled_price) == (OrderStatus.FILLED, 20980.0)


async def test_stop_order_on_wrong_side_refused(state: SimulatorState) -> None:
    """A buy stop at or below the market is refused with OrderRejected."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.STOP, BUY, 1, stop_price=20990.0)

    assert refusal_code(error) == PlaceOrderErrorCode.ORDER_REJECTED
    assert "above the market" in error.value.message


async def test_limit_price_off_tick_refused(state: SimulatorState) -> None:
    """A limit price that is not a multiple of tickSize is refused."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20990.1)

    assert refusal_code(error) == PlaceOrderErrorCode.ORDER_REJECTED
    assert "20990.1" in error.value.message


async def test_size_zero_refused(state: SimulatorState) -> None:
    """A size below one contract is refused and records no order."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 0)

    assert refusal_code(error) == PlaceOrderErrorCode.ORDER_REJECTED
    assert state.search_orders(ACCOUNT, DEFAULT_START) == []


async def test_custom_tag_reuse_refused(state: SimulatorState) -> None:
    """A customTag already used on the account is refused with errorCode 2."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1, custom_tag="alert-7")

    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1, custom_tag="alert-7")

    assert refusal_code(error) == PlaceOrderErrorCode.ORDER_REJECTED
    assert "alert-7" in error.value.message
    assert len(state.search_orders(ACCOUNT, DEFAULT_START)) == 1


async def test_custom_tag_unique_per_account_only() -> None:
    """The same customTag is accepted on two different accounts."""
    state = SimulatorState(accounts=[Account(1, "A", 1000.0), Account(2, "B", 1000.0)])
    state.place_order(1, MNQ, OrderType.MARKET, BUY, 1, custom_tag="t")

    order_id = state.place_order(2, MNQ, OrderType.MARKET, BUY, 1, custom_tag="t")

    assert order_id > 0


async def test_outside_trading_hours_refuses_place(state: SimulatorState) -> None:
    """With the market closed Order/place answers OutsideTradingHours."""
    state.faults.outside_trading_hours = True

    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1)

    assert refusal_code(error) == PlaceOrderErrorCode.OUTSIDE_TRADING_HOURS
    assert state.open_positions(ACCOUNT) == []


async def test_insufficient_funds_refused(state: SimulatorState) -> None:
    """An account with no balance left is refused with InsufficientFunds."""
    state.accounts[ACCOUNT].balance = 0.0

    with pytest.raises(GatewayRefusal) as error:
        state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1)

    assert refusal_code(error) == PlaceOrderErrorCode.INSUFFICIENT_FUNDS


async def test_cancel_order_sets_cancelled(state: SimulatorState) -> None:
    """Cancelling a resting order gives it status 3 and removes it from open."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20900.0
    )

    state.cancel_order(ACCOUNT, order_id)

    order = state.find_order(order_id)
    assert order is not None
    assert order.status is OrderStatus.CANCELLED
    assert int(order.status) == 3
    assert state.open_orders(ACCOUNT) == []
    assert state.set_price(MNQ, 20800.0) == []


async def test_cancel_twice_refused(state: SimulatorState) -> None:
    """A second cancel is Rejected; an unknown order id is OrderNotFound."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20900.0
    )
    state.cancel_order(ACCOUNT, order_id)

    with pytest.raises(GatewayRefusal) as again:
        state.cancel_order(ACCOUNT, order_id)
    with pytest.raises(GatewayRefusal) as unknown:
        state.cancel_order(ACCOUNT, 424242)

    assert refusal_code(again) == CancelOrderErrorCode.REJECTED
    assert refusal_code(unknown) == CancelOrderErrorCode.ORDER_NOT_FOUND


async def test_modify_limit_into_market_fills(state: SimulatorState) -> None:
    """Moving a resting buy limit above the market fills it at once."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20900.0
    )

    state.modify_order(ACCOUNT, order_id, limit_price=21000.0)

    order = state.find_order(order_id)
    assert order is not None
    assert order.status is OrderStatus.FILLED


async def test_modify_stop_price_on_limit_refused(state: SimulatorState) -> None:
    """A stopPrice on a limit order is Rejected and leaves the order unchanged."""
    order_id = state.place_order(
        ACCOUNT, MNQ, OrderType.LIMIT, BUY, 1, limit_price=20900.0
    )

    with pytest.raises(GatewayRefusal) as error:
        state.modify_order(ACCOUNT, order_id, stop_price=20950.0)

    order = state.find_order(order_id)
    assert refusal_code(error) == ModifyOrderErrorCode.REJECTED
    assert order is not None and order.stop_price is None


async def test_brackets_rest_as_stop_and_limit(state: SimulatorState) -> None:
    """A bracketed market buy leaves a stop 20 ticks below and a limit 40 above."""
    entry = state.place_order(
        ACCOUNT,
        MNQ,
        OrderType.MARKET,
        BUY,
        2,
        stop_loss=Bracket(-20, OrderType.STOP),
        take_profit=Bracket(40, OrderType.LIMIT),
    )

    stop, target = state.open_orders(ACCOUNT)
    assert (stop.type, stop.side, stop.size, stop.stop_price) == (
        OrderType.STOP,
        SELL,
        2,
        20995.0,
    )
    assert (target.type, target.limit_price) == (OrderType.LIMIT, 21010.0)
    assert stop.oco_group == target.oco_group == entry


async def test_brackets_take_profit_cancels_stop(state: SimulatorState) -> None:
    """When the take profit fills the position is flat and the stop is cancelled."""
    state.place_order(
        ACCOUNT,
        MNQ,
        OrderType.MARKET,
        BUY,
        1,
        stop_loss=Bracket(-20, OrderType.STOP),
        take_profit=Bracket(40, OrderType.LIMIT),
    )
    stop, target = state.open_orders(ACCOUNT)

    assert state.set_price(MNQ, 21012.0) == [target.id]

    assert stop.status is OrderStatus.CANCELLED
    assert state.open_positions(ACCOUNT) == []
    assert all_trades(state)[-1].profit_and_loss == 20.0


async def test_brackets_cancelled_when_position_closed(
    state: SimulatorState,
) -> None:
    """Flattening a bracketed position cancels its protective orders."""
    state.place_order(
        ACCOUNT,
        MNQ,
        OrderType.MARKET,
        SELL,
        1,
        stop_loss=Bracket(8, OrderType.STOP),
        take_profit=Bracket(-8, OrderType.LIMIT),
    )
    assert len(state.open_orders(ACCOUNT)) == 2

    state.close_position(ACCOUNT, MNQ)

    assert state.open_orders(ACCOUNT) == []


async def test_brackets_with_wrong_sign_refused(state: SimulatorState) -> None:
    """A buy's stop loss with positive ticks is refused and nothing is placed."""
    with pytest.raises(GatewayRefusal) as error:
        state.place_order(
            ACCOUNT,
            MNQ,
            OrderType.MARKET,
            BUY,
            1,
            stop_loss=Bracket(20, OrderType.STOP),
        )

    assert refusal_code(error) == PlaceOrderErrorCode.ORDER_REJECTED
    assert "stopLossBracket.ticks must be negative" in error.value.message
    assert state.open_positions(ACCOUNT) == []


async def test_close_position_flattens_with_market_fill(
    state: SimulatorState,
) -> None:
    """closeContract sells the whole long at the market and books the P&L."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 2)
    state.set_price(MNQ, 20999.0)

    result = state.close_position(ACCOUNT, MNQ)  # type: ignore[func-returns-value]

    assert result is None
    assert state.open_positions(ACCOUNT) == []
    closing = all_trades(state)[-1]
    assert (closing.side, closing.size, closing.profit_and_loss) == (SELL, 2, -4.0)


async def test_close_without_position_refused(state: SimulatorState) -> None:
    """closeContract with no open position answers PositionNotFound."""
    with pytest.raises(GatewayRefusal) as error:
        state.close_position(ACCOUNT, MNQ)

    assert refusal_code(error) == ClosePositionErrorCode.POSITION_NOT_FOUND


async def test_partial_close_reduces_position(state: SimulatorState) -> None:
    """partialCloseContract of 1 leaves 2 of 3 contracts at the same average."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 3)
    state.set_price(MNQ, 21001.0)

    state.partial_close_position(ACCOUNT, MNQ, 1)

    [position] = state.open_positions(ACCOUNT)
    assert (position.size, position.average_price) == (2, 21000.0)
    assert all_trades(state)[-1].profit_and_loss == 2.0


async def test_partial_close_larger_than_position_refused(
    state: SimulatorState,
) -> None:
    """Closing more than the position holds answers InvalidCloseSize."""
    state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1)

    with pytest.raises(GatewayRefusal) as error:
        state.partial_close_position(ACCOUNT, MNQ, 2)

    assert refusal_code(error) == PartialCloseErrorCode.INVALID_CLOSE_SIZE
    assert state.open_positions(ACCOUNT)[0].size == 1


async def test_partial_close_trims_brackets(state: SimulatorState) -> None:
    """After a partial close no bracket is larger than the remaining position."""
    state.place_order(
        ACCOUNT,
        MNQ,
        OrderType.MARKET,
        BUY,
        3,
        stop_loss=Bracket(-20, OrderType.STOP),
    )

    state.partial_close_position(ACCOUNT, MNQ, 2)

    [stop] = state.open_orders(ACCOUNT)
    assert stop.size == 1


async def test_search_orders_filters_by_time(
    state: SimulatorState, autojump_clock: trio.testing.MockClock
) -> None:
    """Order search keeps orders created between start and end, inclusive."""
    first = state.place_order(ACCOUNT, MNQ, OrderType.MARKET, BUY, 1)
    await trio.sleep(60)
    middle = state.now() - timedelta(seconds=30)
    second = state.place_order(ACCOUNT, MNQ, OrderType.MARKET, SELL, 1)

    assert [o.id for o in state.search_orders(ACCOUNT, middle)] == [second]
    found = state.search_orders(ACCOUNT, DEFAULT_START, middle)
    assert [o.id for o in found] == [first]


async def test_set_price_off_tick_rejected(state: SimulatorState) -> None:
    """Moving the market to a price off the tick grid is a programming error."""
    with pytest.raises(ValueError, match=r"tickSize 0\.25"):
        state.set_price(MNQ, 21000.1)


async def test_set_price_not_finite_rejected(state: SimulatorState) -> None:
    """NaN or infinity is refused as a market price and the price stays put."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive multiple"):
            state.set_price(MNQ, bad)

    assert state.price(MNQ) == 21000.0
