"""projectx_broker and projectx_client against the simulator over real loopback.

These tests need real sockets, so they run on the real clock (the autojump
clock with real sockets gives false timeouts); the simulator's rate limit and
the client's retry delays are scaled down to keep each test quick. Only the
rate limiter's own tests use the mock clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support import until
from trading_daemon.broker import (
    BrokerRefusal,
    BrokerSetupError,
    OrderRequest,
    OrderStatus,
    Side,
)
from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.projectx_broker import ProjectXBroker
from trading_daemon.projectx_client import (
    AuthenticationError,
    ClientConfig,
    ProjectXClient,
    ServerError,
)
from trading_daemon.projectx_sim_state import Account, Order, OrderSide, OrderType
from trading_daemon.projectx_simulator import SimulatorState, serve_simulator
from trading_daemon.tasks import Task, TaskState

USER = "trader"
KEY = "pxk-test-0123456789abcdef"
WEBHOOK_SECRET = "hook-secret-0123456789"
ACCOUNT = 1001
MNQ_H25 = "CON.F.US.MNQ.H25"
MNQ_M25 = "CON.F.US.MNQ.M25"


class ScriptedState(SimulatorState):
    """The simulator with scripted 5xx answers and a count of its 429s."""

    def __init__(self, **kwargs: Any) -> None:
        # Searches look back from the wall clock, so the simulated one starts now.
        super().__init__(user_name=USER, api_key=KEY, start=datetime.now(UTC), **kwargs)
        self.server_errors_left = 0
        self.refused_429 = 0
        self.revoked = False

    def draw_server_error(self) -> bool:
        if self.server_errors_left > 0:
            self.server_errors_left -= 1
            return True
        return super().draw_server_error()

    def admit(self, token: str) -> float | None:
        wait = super().admit(token)
        if wait is not None:
            self.refused_429 += 1
        return wait

    def token_valid(self, token: str) -> bool:
        return not self.revoked and super().token_valid(token)

    def orders(self) -> list[Order]:
        return self.search_orders(ACCOUNT, datetime.now(UTC) - timedelta(days=1))


class SlowPlaceAnswer(ScriptedState):
    """The first Order/place takes effect at once but answers after 1 s."""

    def place_order(self, *args: Any, **kwargs: Any) -> int:
        order_id = super().place_order(*args, **kwargs)
        if self.call_count("Order/place") == 1:
            self.faults.latency_s = 1.0
        return order_id

    def search_orders(self, *args: Any, **kwargs: Any) -> list[Order]:
        self.faults.latency_s = 0.0
        return super().search_orders(*args, **kwargs)


class RestingMarketOrders(ScriptedState):
    """Market orders wait in the book instead of filling (a halted market)."""

    def _execute_if_marketable(self, order: Order) -> None:
        if order.type is not OrderType.MARKET:
            super()._execute_if_marketable(order)


@asynccontextmanager
async def serving(state: SimulatorState, limit_s: float = 20) -> AsyncIterator[str]:
    """Serve ``state`` on 127.0.0.1, port 0; yield the base URL; shut down cleanly."""
    stop = trio.Event()
    with trio.fail_after(limit_s):
        async with trio.open_nursery() as nursery:
            run = partial(serve_simulator, "127.0.0.1", 0, state)
            port = await nursery.start(partial(run, shutdown_trigger=stop.wait))
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                stop.set()


def client_for(url: str, *, key: str = KEY, **overrides: Any) -> ProjectXClient:
    options: dict[str, Any] = {"timeout": 2.0, "retry_base_delay": 0.01, **overrides}
    return ProjectXClient(ClientConfig(url, USER, key, **options))


@asynccontextmanager
async def started(
    state: SimulatorState, *, account: str = "", **overrides: Any
) -> AsyncIterator[ProjectXBroker]:
    """A started broker against ``state`` served over loopback."""
    async with serving(state) as url:
        broker = ProjectXBroker(client_for(url, **overrides), account=account)
        try:
            await broker.start()
            yield broker
        finally:
            await broker.aclose()


def order(side: Side, size: int, client_id: str, symbol: str = "MNQ") -> OrderRequest:
    return OrderRequest(symbol, side, size, client_id)


# -- start: login, account, what the broker holds -----------------------------


def two_accounts(*extra: Account) -> list[Account]:
    return [
        Account(1001, "PRAC-V2-ALPHA", 50_000.0),
        Account(1002, "PRAC-V2-BETA", 25_000.0),
        *extra,
    ]


async def test_start_selects_account_by_id() -> None:
    """PROJECT_X_ACCOUNT as an id picks that account after one login."""
    state = ScriptedState(accounts=two_accounts())

    async with started(state, account="1002") as broker:
        assert broker.account is not None
        assert (broker.account.id, broker.account.name) == ("1002", "PRAC-V2-BETA")

    assert state.call_count("Auth/loginKey") == 1


async def test_start_selects_account_by_name_any_case() -> None:
    """PROJECT_X_ACCOUNT as a name picks that account, whatever its case."""
    state = ScriptedState(accounts=two_accounts())

    async with started(state, account="prac-v2-alpha") as broker:
        assert broker.account is not None
        assert broker.account.id == "1001"


async def test_start_refuses_account_that_cannot_trade() -> None:
    """An account with canTrade false stops the start with a clear reason."""
    locked = Account(1003, "PRAC-V2-LOCKED", 40_000.0, can_trade=False)
    state = ScriptedState(accounts=two_accounts(locked))

    async with serving(state) as url:
        broker = ProjectXBroker(client_for(url), account="PRAC-V2-LOCKED")
        with pytest.raises(BrokerSetupError, match="canTrade is false"):
            await broker.start()
        await broker.aclose()

    assert state.call_count("Order/place") == 0


@pytest.mark.parametrize(
    ("account", "message"),
    [("", "must name the account"), ("PRAC-V2-GAMMA", "got 'PRAC-V2-GAMMA'")],
)
async def test_start_refuses_unknown_or_unnamed_account(
    account: str, message: str
) -> None:
    """Several accounts and none named, or an unknown name: refused, listing them."""
    state = ScriptedState(accounts=two_accounts())

    async with serving(state) as url:
        broker = ProjectXBroker(client_for(url), account=account)
        with pytest.raises(BrokerSetupError, match=message) as info:
            await broker.start()
        await broker.aclose()

    assert "'PRAC-V2-BETA' (id 1002)" in str(info.value)


async def test_start_bad_api_key_is_authentication_error() -> None:
    """A refused login names the user and error code, never the key."""
    state = ScriptedState()
    wrong = "pxk-wrong-9999999999999"

    async with serving(state) as url:
        broker = ProjectXBroker(client_for(url, key=wrong))
        with pytest.raises(AuthenticationError, match="InvalidCredentials") as info:
            await broker.start()
        await broker.aclose()

    assert "'trader'" in str(info.value)
    assert wrong not in str(info.value)
    assert state.call_count("Auth/loginKey") == 1


async def test_start_reads_positions_and_open_orders() -> None:
    """The broker is the truth: what the account holds is read at start."""
    state = ScriptedState()
    state.place_order(ACCOUNT, MNQ_H25, OrderType.MARKET, OrderSide.BID, 2)
    resting = state.place_order(
        ACCOUNT, MNQ_H25, OrderType.LIMIT, OrderSide.BID, 1, limit_price=20_000.0
    )

    async with started(state) as broker:
        positions = await broker.positions()
        working = await broker.open_orders()
        report = await broker.check_fills()

    assert [(p.symbol, p.size, p.average_price) for p in positions] == [
        ("MNQ", 2, 21_000.0)
    ]
    assert [o.order_id for o in working] == [str(resting)]
    # The cached read from start served positions(); fills before start are
    # the baseline, not news.
    assert state.call_count("Position/searchOpen") == 2
    assert report.fills == () and report.trades == ()


# -- contracts -------------------------------------------------------------------


async def test_resolve_contract_active_month_cached() -> None:
    """The active month of F.US.<ROOT> is resolved once and served from cache."""
    state = ScriptedState()

    async with started(state) as broker:
        first = await broker.resolve_contract("MNQ")
        again = await broker.resolve_contract("mnq")
        nq = await broker.resolve_contract("NQ")

    assert first == again
    assert (first.id, first.symbol, first.tick_size, first.tick_value) == (
        MNQ_H25,
        "MNQ",
        0.25,
        0.5,
    )
    # "NQ" is ENQ on ProjectX, and the text search for it also lists MNQ.
    assert (nq.id, nq.symbol) == ("CON.F.US.ENQ.H25", "NQ")
    assert state.call_count("Contract/search") == 2


async def test_resolve_contract_unknown_root_is_refusal() -> None:
    """A root with no active contract is a business refusal naming it."""
    async with started(ScriptedState()) as broker:
        with pytest.raises(BrokerRefusal, match=r"no active contract for ZZQ"):
            await broker.resolve_contract("ZZQ")


async def test_place_order_follows_contract_roll() -> None:
    """After a roll the refused old month is dropped and the new one traded."""
    state = ScriptedState()

    async with started(state) as broker:
        before = await broker.place_order(order(Side.BUY, 1, "td-roll-1"))
        state.roll("F.US.MNQ")
        after = await broker.place_order(order(Side.BUY, 1, "td-roll-2"))
        contract = await broker.resolve_contract("MNQ")

    placed = {o.custom_tag: o.contract_id for o in state.orders()}
    assert placed == {"td-roll-1": MNQ_H25, "td-roll-2": MNQ_M25}
    assert before.order_id != after.order_id
    assert contract.id == MNQ_M25
    assert state.call_count("Contract/search") == 2
    # The old month was refused once (ContractNotActive), then the new one took it.
    assert state.call_count("Order/place") == 3


# -- orders ------------------------------------------------------------------------


async def test_place_order_market_fill_position_and_fill_check() -> None:
    """A market order fills; the position and the fill check both show it."""
    state = ScriptedState()

    async with started(state) as broker:
        placed = await broker.place_order(order(Side.BUY, 2, "td-fill"))
        position = await broker.position("MNQ")
        report = await broker.check_fills()
        quiet = await broker.check_fills()

    assert (placed.status, placed.client_id) == (OrderStatus.WORKING, "td-fill")
    assert (position.size, position.average_price) == (2, 21_000.0)
    assert [(o.order_id, o.status, o.filled_size) for o in report.fills] == [
        (placed.order_id, OrderStatus.FILLED, 2)
    ]
    assert [(t.order_id, t.size, t.price) for t in report.trades] == [
        (placed.order_id, 2, 21_000.0)
    ]
    assert quiet.fills == () and quiet.trades == () and quiet.ended == ()


async def test_find_order_by_custom_tag_after_restart() -> None:
    """A fresh broker (a restart) finds an order by its customTag, or None."""
    state = ScriptedState()

    async with serving(state) as url:
        first = ProjectXBroker(client_for(url))
        await first.start()
        placed = await first.place_order(order(Side.SELL, 1, "td-find"))
        await first.aclose()

        second = ProjectXBroker(client_for(url))
        await second.start()
        found = await second.find_order("td-find")
        missing = await second.find_order("td-never")
        await second.aclose()

    assert found is not None
    assert (found.order_id, found.side, found.status) == (
        placed.order_id,
        Side.SELL,
        OrderStatus.FILLED,
    )
    assert missing is None


async def test_place_order_dropped_answer_gives_exactly_one_order() -> None:
    """The answer to Order/place is lost: the tag is found, nothing is resent."""
    state = ScriptedState()

    async with started(state) as broker:
        state.faults.drop_place_responses = 1
        result = await broker.place_order(order(Side.BUY, 1, "td-dropped"))

    assert [o.custom_tag for o in state.orders()] == ["td-dropped"]
    assert result.order_id == str(state.orders()[0].id)
    assert state.call_count("Order/place") == 1
    assert state.call_count("Order/search") >= 2  # the baseline, then the lookup


async def test_place_order_timeout_looks_up_before_resending() -> None:
    """A place that times out (yet took effect) is found by tag, not resent."""
    state = SlowPlaceAnswer()

    async with started(state, timeout=0.3) as broker:
        result = await broker.place_order(order(Side.BUY, 1, "td-slow"))

    assert [o.custom_tag for o in state.orders()] == ["td-slow"]
    assert result.order_id == str(state.orders()[0].id)
    assert state.call_count("Order/place") == 1


async def test_place_order_5xx_searches_then_places_once() -> None:
    """A 5xx on Order/place: the tag is looked up, absent, then placed once."""
    state = ScriptedState()

    async with started(state) as broker:
        await broker.resolve_contract("MNQ")
        searches = state.call_count("Order/search")
        state.server_errors_left = 1
        await broker.place_order(order(Side.BUY, 1, "td-5xx"))

    assert [o.custom_tag for o in state.orders()] == ["td-5xx"]
    assert state.call_count("Order/place") == 2
    assert state.call_count("Order/search") == searches + 1


async def test_place_order_reused_tag_returns_the_existing_order() -> None:
    """A tag the gateway already holds (errorCode 2) gives back that order."""
    state = ScriptedState()

    async with started(state) as broker:
        # Placed after start by an attempt this broker never heard back from.
        existing = state.place_order(
            ACCOUNT, MNQ_H25, OrderType.MARKET, OrderSide.BID, 1, custom_tag="td-again"
        )
        result = await broker.place_order(order(Side.BUY, 1, "td-again"))

    assert result.order_id == str(existing)
    assert len(state.orders()) == 1
    assert state.call_count("Order/place") == 1


async def test_business_refusal_is_not_retried() -> None:
    """OutsideTradingHours: one attempt, refused with the gateway's reason."""
    state = ScriptedState()
    state.faults.outside_trading_hours = True

    async with started(state) as broker:
        with pytest.raises(BrokerRefusal) as info:
            await broker.place_order(order(Side.BUY, 1, "td-closed"))

    assert str(info.value) == (
        "OutsideTradingHours (errorCode 5): the market is closed for trading"
    )
    assert state.call_count("Order/place") == 1
    assert state.orders() == []


async def test_cancel_order_and_fill_check_reports_it_ended() -> None:
    """A cancelled working order is reported once by the fill check as ended."""
    state = ScriptedState()

    async with started(state) as broker:
        resting = state.place_order(
            ACCOUNT,
            MNQ_H25,
            OrderType.LIMIT,
            OrderSide.BID,
            2,
            limit_price=20_000.0,
            custom_tag="td-resting",
        )
        assert (await broker.check_fills()).ended == ()
        await broker.cancel_order(str(resting))
        report = await broker.check_fills()
        with pytest.raises(BrokerRefusal, match="only an open order"):
            await broker.cancel_order(str(resting))
        quiet = await broker.check_fills()

    assert [(o.client_id, o.status) for o in report.ended] == [
        ("td-resting", OrderStatus.CANCELLED)
    ]
    assert quiet.ended == ()


async def test_fill_check_records_partial_then_full_fill() -> None:
    """fillVolume below size is a partial fill; the rest shows as a full fill."""
    state = ScriptedState()

    async with started(state) as broker:
        resting = state.place_order(
            ACCOUNT,
            MNQ_H25,
            OrderType.LIMIT,
            OrderSide.BID,
            3,
            limit_price=20_000.0,
            custom_tag="td-partial",
        )
        sim_order = state.find_order(resting)
        assert sim_order is not None
        sim_order.fill_volume = 1
        partial = await broker.check_fills()
        state.set_price(MNQ_H25, 20_000.0)
        full = await broker.check_fills()

    assert [(o.filled_size, o.partially_filled) for o in partial.fills] == [(1, True)]
    assert [(o.filled_size, o.status) for o in full.fills] == [(3, OrderStatus.FILLED)]
    assert [(t.size, t.price) for t in full.trades] == [(3, 20_000.0)]


async def test_close_position_flattens_every_month_of_the_root() -> None:
    """close_position flattens the root, old month included; flat is a no-op."""
    state = ScriptedState()

    async with started(state) as broker:
        await broker.place_order(order(Side.BUY, 2, "td-long"))
        state.roll("F.US.MNQ")
        await broker.place_order(order(Side.BUY, 1, "td-long-2"))
        await broker.close_position("MNQ")
        await broker.close_position("MNQ")
        flat = await broker.position("MNQ")

    assert flat.size == 0
    assert state.open_positions(ACCOUNT) == []
    assert state.call_count("Position/closeContract") == 2


# -- transport: retries, 401, token refresh, rate limits ---------------------------


async def test_request_retries_5xx_then_succeeds() -> None:
    """Two 503s, then the answer: three attempts, no error."""
    state = ScriptedState()

    async with started(state) as broker:
        before = state.call_count("Account/search")
        state.server_errors_left = 2
        accounts = await broker.accounts()

    assert [a.id for a in accounts] == ["1001"]
    assert state.call_count("Account/search") == before + 3


async def test_request_gives_up_after_bounded_5xx_attempts() -> None:
    """Persistent 5xx: the last ServerError after the configured attempts."""
    state = ScriptedState()

    async with started(state, attempts=3) as broker:
        before = state.call_count("Account/search")
        state.server_errors_left = 10
        with pytest.raises(ServerError, match="HTTP 503"):
            await broker.accounts()

    assert state.call_count("Account/search") == before + 3


async def test_401_logs_in_again_once_then_repeats_the_call() -> None:
    """Every token expires mid-run: one fresh login, the call repeated once."""
    state = ScriptedState()

    async with started(state) as broker:
        before = state.call_count("Account/search")
        state.expire_all_tokens()
        accounts = await broker.accounts()

    assert [a.id for a in accounts] == ["1001"]
    assert state.call_count("Auth/loginKey") == 2
    assert state.call_count("Account/search") == before + 2


async def test_401_after_fresh_login_gives_up() -> None:
    """A 401 that survives the one re-login is an AuthenticationError, no loop."""
    state = ScriptedState()

    async with started(state) as broker:
        before = state.call_count("Account/search")
        state.revoked = True
        with pytest.raises(AuthenticationError, match="fresh login"):
            await broker.accounts()

    assert state.call_count("Auth/loginKey") == 2
    assert state.call_count("Account/search") == before + 2


async def test_token_refreshed_before_it_expires() -> None:
    """A token near its end is renewed with Auth/validate, never left to 401."""
    state = ScriptedState(token_lifetime_s=0.6)

    async with started(state, token_refresh_s=0.3) as broker:
        await trio.sleep(0.35)
        await broker.accounts()
        await trio.sleep(0.35)
        await broker.accounts()

    assert state.call_count("Auth/validate") == 2
    assert state.call_count("Auth/loginKey") == 1
    assert broker.client.refreshes == 2


async def test_429_is_retried_after_the_stated_delay() -> None:
    """Past the gateway's limit the 429's Retry-After is honoured, then it works."""
    state = ScriptedState(rate_limit=8, rate_window_s=0.5)

    async with started(state, rate_limit=1000) as broker:
        started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(broker.accounts)
        elapsed = trio.current_time() - started_at

    assert state.refused_429 >= 1
    # The simulator says "retry in 1 s" (whole seconds, rounded up).
    assert elapsed >= 0.9


async def test_client_rate_limit_keeps_a_burst_under_the_gateway_limit() -> None:
    """A burst larger than the limit is spread out by the client: no 429."""
    state = ScriptedState(rate_limit=10, rate_window_s=0.5)

    async with started(state, rate_limit=9, rate_window_s=0.5) as broker:
        started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(broker.accounts)
        elapsed = trio.current_time() - started_at

    assert state.refused_429 == 0
    assert state.call_count("Account/search") == 21
    # 20 calls plus start's five at 9 per 0.5 s need two more windows.
    assert elapsed >= 1.0


async def test_cancellation_is_never_retried() -> None:
    """A call cancelled mid-flight ends at once; the retry loop does not resend."""
    state = ScriptedState()

    async with started(state) as broker:
        before = state.call_count("Account/search")
        state.faults.latency_s = 1.0
        with trio.move_on_after(0.2) as scope:
            await broker.accounts()
        state.faults.latency_s = 0.0

    assert scope.cancelled_caught
    assert state.call_count("Account/search") == before + 1


# -- the whole daemon on the simulator -----------------------------------------------


@asynccontextmanager
async def running_daemon(
    state: SimulatorState, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """A Daemon trading on ``state`` over loopback, and an HTTP client for it."""
    async with serving(state, limit_s=30) as url:
        settings = Settings(
            **{
                "webhook_port": 0,
                "state_dir": tmp_path,
                "broker": "projectx",
                "project_x_base_url": url,
                "project_x_username": USER,
                "project_x_api_key": KEY,
                "webhook_secret": WEBHOOK_SECRET,
                "trading_hours": "always",
                **overrides,
            }
        )
        daemon = Daemon(settings)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            try:
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                    yield daemon, http
            finally:
                daemon.request_stop("test over")


async def post_alert(http: httpx.AsyncClient, **fields: Any) -> str:
    body = {
        "action": "buy",
        "symbol": "MNQ1!",
        "quantity": "1",
        "secret": WEBHOOK_SECRET,
        **fields,
    }
    answer = await http.post(
        "/webhook", content=json.dumps(body), headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["id"]
    return task_id


async def finished(daemon: Daemon, task_id: str, limit_s: float = 10) -> Task:
    """The task once it is done or dead (real clock: sockets are involved)."""

    def find() -> Task | None:
        return next(
            (
                t
                for t in daemon.scheduler.recent
                if t.id == task_id and t.state in (TaskState.DONE, TaskState.DEAD)
            ),
            None,
        )

    await until(lambda: find() is not None, limit_s)
    task = find()
    assert task is not None
    return task


async def status(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get("/status")
    assert answer.status_code == 200
    data: dict[str, Any] = answer.json()
    return data


async def test_daemon_alert_order_fill_position(tmp_path: Path) -> None:
    """alert -> order -> fill -> position, through the daemon over loopback."""
    state = ScriptedState()

    async with running_daemon(state, tmp_path, fill_check_interval=0.1) as (
        daemon,
        http,
    ):
        task_id = await post_alert(http, quantity="2")
        task = await finished(daemon, task_id)
        broker = daemon.broker
        assert isinstance(broker, ProjectXBroker)
        await until(lambda: any(f.client_id == f"td-{task_id}-1" for f in broker.fills))
        shown = await status(http)
        metrics = (await http.get("/metrics")).text

    assert task.state is TaskState.DONE
    [placed] = state.orders()
    assert (placed.custom_tag, placed.contract_id, placed.size) == (
        f"td-{task_id}-1",
        MNQ_H25,
        2,
    )
    assert [(p.contract_id, p.net_size) for p in state.open_positions(ACCOUNT)] == [
        (MNQ_H25, 2)
    ]
    assert shown["broker"] == "projectx"
    # Fills are counted when the fill check records the broker's trades.
    assert 'trading_daemon_fills_total{broker="projectx",symbol="MNQ"} 2.0' in metrics
    assert [(p["symbol"], p["size"], p["side"]) for p in shown["positions"]] == [
        ("MNQ", 2, "long")
    ]


async def test_daemon_token_expiry_mid_run(tmp_path: Path) -> None:
    """Every token dies between two alerts: one re-login, both orders placed."""
    state = ScriptedState()

    async with running_daemon(state, tmp_path, pyramiding=True) as (daemon, http):
        first = await finished(daemon, await post_alert(http, id="a1"))
        state.expire_all_tokens()
        second = await finished(daemon, await post_alert(http, id="a2"))

    assert (first.state, second.state) == (TaskState.DONE, TaskState.DONE)
    assert second.attempts == 1
    assert len(state.orders()) == 2
    assert state.call_count("Auth/loginKey") == 2


async def test_daemon_dropped_place_answer_gives_exactly_one_order(
    tmp_path: Path,
) -> None:
    """The place answer is lost after the order exists: one order, task done."""
    state = ScriptedState()
    state.faults.drop_place_responses = 1

    async with running_daemon(state, tmp_path) as (daemon, http):
        task = await finished(daemon, await post_alert(http))

    assert task.state is TaskState.DONE
    assert [o.custom_tag for o in state.orders()] == [f"td-{task.id}-1"]
    assert state.call_count("Order/place") == 1


async def test_daemon_burst_over_rate_limit_no_429_no_lost_alert(
    tmp_path: Path,
) -> None:
    """A burst needing more calls than the limit allows: spread out, all placed."""
    state = ScriptedState(rate_limit=20, rate_window_s=2.0)
    count = 30

    async with running_daemon(
        state,
        tmp_path,
        project_x_rate_limit=18,
        project_x_rate_window=2.0,
        pyramiding=True,
        max_pyramid=count,
    ) as (daemon, http):
        ids = [await post_alert(http, id=f"burst-{i}") for i in range(count)]
        tasks = [await finished(daemon, task_id, limit_s=20) for task_id in ids]
        shown = await status(http)
        broker = daemon.broker
        assert isinstance(broker, ProjectXBroker)

    # More calls than one window allows, so the client had to hold some back.
    assert sum(state.calls.values()) > 2 * 20
    assert broker.client.limiter.waited_s > 0

    assert [t.state for t in tasks] == [TaskState.DONE] * count
    assert sorted(o.custom_tag or "" for o in state.orders()) == sorted(
        f"td-{i}-1" for i in ids
    )
    assert state.refused_429 == 0
    assert shown["dead_letters"] == []


async def test_daemon_outside_trading_hours_is_a_dead_letter(tmp_path: Path) -> None:
    """OutsideTradingHours is not retried: a dead letter with the broker's words."""
    state = ScriptedState()
    state.faults.outside_trading_hours = True

    async with running_daemon(state, tmp_path) as (daemon, http):
        task = await finished(daemon, await post_alert(http))
        letters: list[dict[str, Any]] = []

        async def load() -> None:
            letters[:] = (await status(http))["dead_letters"]

        with trio.fail_after(5):
            while not letters:
                await load()
                await trio.sleep(0.01)

    assert (task.state, task.attempts) == (TaskState.DEAD, 1)
    assert [d["id"] for d in letters] == [task.id]
    assert letters[0]["last_error"] == (
        "broker refused: OutsideTradingHours (errorCode 5):"
        " the market is closed for trading"
    )
    assert state.call_count("Order/place") == 1


async def test_daemon_follows_contract_roll(tmp_path: Path) -> None:
    """The active month changes between alerts: the second trades the new one."""
    state = ScriptedState()

    async with running_daemon(state, tmp_path, pyramiding=True) as (daemon, http):
        await finished(daemon, await post_alert(http, id="before-roll"))
        state.roll("F.US.MNQ")
        task = await finished(daemon, await post_alert(http, id="after-roll"))

    assert task.state is TaskState.DONE
    assert [o.contract_id for o in state.orders()] == [MNQ_H25, MNQ_M25]


async def test_daemon_marks_task_whose_order_the_broker_cancelled(
    tmp_path: Path,
) -> None:
    """The fill check turns a task whose order was cancelled into a dead letter."""
    state = RestingMarketOrders()

    async with running_daemon(state, tmp_path, fill_check_interval=0.1) as (
        daemon,
        http,
    ):
        task = await finished(daemon, await post_alert(http))
        [resting] = state.orders()
        state.cancel_order(ACCOUNT, resting.id)
        await until(lambda: task.state is TaskState.DEAD)

    assert task.last_error == (
        f"order {resting.id} was cancelled by the broker after 0 of 1 contracts filled"
    )


async def test_daemon_refuses_to_start_on_account_that_cannot_trade(
    tmp_path: Path,
) -> None:
    """canTrade false: Daemon.run fails at start, nothing is placed."""
    state = ScriptedState(accounts=[Account(1001, "PRAC", 100.0, can_trade=False)])

    async with serving(state) as url:
        settings = Settings(
            webhook_port=0,
            state_dir=tmp_path,
            broker="projectx",
            project_x_base_url=url,
            project_x_username=USER,
            project_x_api_key=KEY,
        )
        daemon = Daemon(settings)
        with pytest.RaisesGroup(
            pytest.RaisesExc(BrokerSetupError, match="canTrade is false"),
            flatten_subgroups=True,
        ):
            await daemon.run()

    assert state.call_count("Order/place") == 0


async def test_daemon_waits_for_a_gateway_down_at_boot(tmp_path: Path) -> None:
    """Gateway down at start: alerts are still acknowledged, and trade once it is up."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        gateway_port = probe.getsockname()[1]
    state = sim_state_for_boot()
    settings = Settings(
        webhook_port=0,
        state_dir=tmp_path,
        broker="projectx",
        project_x_base_url=f"http://127.0.0.1:{gateway_port}",
        project_x_username=USER,
        project_x_api_key=KEY,
        project_x_timeout=1.0,
        webhook_secret=WEBHOOK_SECRET,
        trading_hours="always",
    )
    daemon = Daemon(settings)
    stop_gateway = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                task_id = await post_alert(http)
                # Real clock: the first retry of the start comes 2 s later.
                await trio.sleep(0.5)
                waiting = not daemon.brokers_ready.is_set()
                await nursery.start(
                    partial(
                        serve_simulator,
                        "127.0.0.1",
                        gateway_port,
                        state,
                        shutdown_trigger=stop_gateway.wait,
                    )
                )
                task = await finished(daemon, task_id, limit_s=20)
            daemon.request_stop("test over")
            await daemon.scheduler.wait_stopped()
            stop_gateway.set()

    assert waiting
    assert task.state is TaskState.DONE
    assert state.call_count("Order/place") == 1


def sim_state_for_boot() -> SimulatorState:
    return SimulatorState(user_name=USER, api_key=KEY, start=datetime.now(UTC))
