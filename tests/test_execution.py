"""execution: alert sequences end in the intended position with the exact orders.

Each table runs against the paper broker and the ProjectX simulator (#5).
"""

from __future__ import annotations

import io
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from support import until
from venues import (
    PRICE,
    SIM_ACCOUNTS,
    VENUES,
    Order,
    PaperVenue,
    core,
    paper,
    sim_state,
)

from trading_daemon.broker import OrderRequest, OrderResult, Side
from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.execution import FLATTEN_ALL
from trading_daemon.http_app import create_app
from trading_daemon.jobs import FILL_CHECK
from trading_daemon.paper_broker import PaperBroker
from trading_daemon.priority import Priority
from trading_daemon.risk import CHICAGO, RiskGuard, RiskLimits
from trading_daemon.tasks import Task, TaskState

BROKERS = pytest.mark.parametrize("kind", ["paper", "projectx"])

# (alert, the orders it sends, the position after it, its result begins with)
BUY_BUY_SELL_FLAT: list[tuple[dict[str, Any], list[Order], int, str]] = [
    ({"action": "buy", "quantity": 1}, [("buy", 1, "market", "a1.1")], 1, "buy 1"),
    ({"action": "buy", "quantity": 1}, [], 1, "refused: MNQ long 1; adding is off"),
    (
        {"action": "sell", "quantity": 1},
        [("sell", 1, "market", "close"), ("sell", 1, "market", "a3.4")],
        -1,
        "cancelled 0 working MNQ orders; closed MNQ; MNQ flat; sell 1",
    ),
    ({"action": "flat"}, [("buy", 1, "market", "close")], 0, "cancelled 0"),
]


@BROKERS
async def test_signal_mode_buy_buy_sell_flat(kind: str, tmp_path: Path) -> None:
    """buy opens, buy again is refused, sell reverses via flat, flat closes."""
    async with VENUES[kind](tmp_path) as venue:
        for fields, orders, position, result in BUY_BUY_SELL_FLAT:
            before = len(venue.orders())
            [task] = await venue.send(**fields)

            assert task.state is TaskState.DONE, task.last_error
            assert (task.result or "").startswith(result), task.result
            assert venue.orders()[before:] == orders
            assert await venue.position() == position
            assert task.intent is not None


@BROKERS
async def test_close_and_reversal_300_ms_apart_keep_their_order(
    kind: str, tmp_path: Path
) -> None:
    """A slow close and a sell 300 ms later: close first, then the sell opens."""
    slow = {"paper_fill_delay": 0.5} if kind == "paper" else {}
    async with VENUES[kind](tmp_path, **slow) as venue:
        await venue.send(action="buy", quantity=1)
        if kind == "projectx":
            venue.state.faults.latency_s = 0.2
        await venue.send(wait=False, action="close")
        await trio.sleep(0.3)
        await venue.send(wait=False, action="sell", quantity=1)
        close, sell = await venue.finished([*venue.alerts[1], *venue.alerts[2]])

    # Reordered, the sell would have reversed (a3.4) and the close flattened.
    assert venue.orders() == [
        ("buy", 1, "market", "a1.1"),
        ("sell", 1, "market", "close"),
        ("sell", 1, "market", "a3.1"),
    ]
    assert await venue.position() == -1
    assert close.finished_wall is not None and sell.finished_wall is not None
    assert close.finished_wall < sell.finished_wall


# TradingView strategy alerts: the order, and the position after it.
TARGET_SEQUENCE: list[tuple[dict[str, Any], list[Order], int] | None] = [
    (
        {"action": "buy", "quantity": 1, "market_position": "long",
         "market_position_size": 1},
        [("buy", 1, "market", "a1.1")],
        1,
    ),
    None,  # sell 1 -> flat: lost on the way
    (
        {"action": "buy", "quantity": 2, "market_position": "long",
         "market_position_size": 2},
        [("buy", 1, "market", "a2.1")],
        2,
    ),
    (
        {"action": "sell", "quantity": 3, "market_position": "short",
         "market_position_size": 1},
        [("sell", 2, "market", "close"), ("sell", 1, "market", "a3.4")],
        -1,
    ),
]  # fmt: skip


@BROKERS
async def test_target_mode_heals_a_lost_alert(kind: str, tmp_path: Path) -> None:
    """With the flat alert lost, 'long 2' buys 1 and the sequence ends short 1."""
    async with VENUES[kind](tmp_path, default_mode="target") as venue:
        for step in TARGET_SEQUENCE:
            if step is None:
                continue
            fields, orders, position = step
            before = len(venue.orders())
            [task] = await venue.send(**fields)

            assert task.state is TaskState.DONE, task.last_error
            assert venue.orders()[before:] == orders
            assert await venue.position() == position


@BROKERS
async def test_daily_loss_breach_halts_entries_not_exits(
    kind: str, tmp_path: Path
) -> None:
    """Past the daily loss an exit still goes out; entries are refused."""
    async with VENUES[kind](tmp_path, max_daily_loss=150) as venue:
        await venue.send(action="buy", quantity=2)
        await venue.set_price(PRICE - 100)  # MNQ: $200 a contract
        [reduce] = await venue.send(action="close", quantity=1)
        before = len(venue.orders())
        [reverse] = await venue.send(action="sell", quantity=2)
        [entry] = await venue.send(action="buy", quantity=1)
        refusals = list(venue.daemon.risk.refusals)

    assert reduce.result is not None and reduce.result.startswith("sell 1")
    # The reversal closes (an exit) but does not enter.
    assert venue.orders()[before:] == [("sell", 1, "market", "close")]
    assert await venue.position() == 0
    assert "entry refused: realised P&L today -" in (reverse.result or "")
    assert (entry.result or "").startswith("refused: realised P&L today")
    assert [r.guard for r in refusals] == ["max_daily_loss", "max_daily_loss"]
    assert [r.task_id for r in refusals] == [reverse.id, entry.id]


async def test_daily_loss_realised_by_the_close_refuses_the_entry_after_it(
    tmp_path: Path,
) -> None:
    """The limit is checked again as the entry goes out, after its own close."""
    async with paper(tmp_path, max_daily_loss=150) as venue:
        await venue.send(action="buy", quantity=1)
        await venue.set_price(PRICE - 100)
        [reverse] = await venue.send(action="sell", quantity=1)

    assert venue.orders() == [
        ("buy", 1, "market", "a1.1"),
        ("sell", 1, "market", "close"),
    ]
    assert (reverse.result or "").endswith(
        "entry refused: realised P&L today -200.00 has reached"
        " TRADING_MAX_DAILY_LOSS 150; entries resume next trading day"
    )


@BROKERS
async def test_fan_out_to_three_accounts(kind: str, tmp_path: Path) -> None:
    """An alert without account trades every account, each at its multiplier."""
    names = list(SIM_ACCOUNTS) if kind == "projectx" else ["main", "eval2", "eval3"]
    options: dict[str, Any] = {
        "accounts": tuple(zip(names, (1.0, 0.5, 2.0), strict=True))
    }
    if kind == "projectx":
        options["state"] = sim_state(accounts=3)
    async with VENUES[kind](tmp_path, **options) as venue:
        tasks = await venue.send(action="buy", quantity=2)
        [one] = await venue.send(action="close", account=names[1].lower())
        positions = [await venue.position(name) for name in names]
        orders = {name: venue.orders(name) for name in names}
        lanes = [t.lane for t in tasks]

    assert [t.payload["account"] for t in tasks] == names
    assert [t.state for t in tasks] == [TaskState.DONE] * 3
    assert lanes == [f"{name}:MNQ" for name in names]
    assert one.payload["account"] == names[1]
    assert positions == [2, 0, 4]
    assert orders == {
        names[0]: [("buy", 2, "market", "a1.1")],
        names[1]: [("buy", 1, "market", "a1.1"), ("sell", 1, "market", "close")],
        names[2]: [("buy", 4, "market", "a1.1")],
    }


async def test_fan_out_is_one_journal_write_and_lists_every_task(
    tmp_path: Path,
) -> None:
    """The 202 lists each account's task; all were committed before it."""
    accounts = (("main", 1.0), ("eval2", 0.5), ("eval3", 2.0))
    async with paper(tmp_path, accounts=accounts) as venue:
        daemon = venue.daemon
        commits = daemon.journal.commits
        reply = await daemon.intake.accept(
            b'{"action":"buy","symbol":"MNQ","quantity":1,'
            b'"secret":"hook-secret-0123456789"}'
        )
        written = daemon.journal.commits - commits
        bad = await daemon.intake.accept(
            b'{"action":"buy","symbol":"MNQ","quantity":1,"account":"other",'
            b'"secret":"hook-secret-0123456789"}'
        )
        await venue.finished(reply.body["ids"])

    assert reply.status == 202
    assert reply.body["id"] == reply.body["ids"][0]
    assert len(set(reply.body["ids"])) == 3
    assert written == 1
    assert bad.status == 400
    assert bad.body == {
        "error": "account must be one of main, eval2, eval3, got 'other'",
        "field": "account",
    }


@BROKERS
async def test_bracket_refused_means_no_entry(kind: str, tmp_path: Path) -> None:
    """A stop loss above a buy's entry is refused: dead letter, nothing placed."""
    async with VENUES[kind](tmp_path) as venue:
        [task] = await venue.send(
            action="buy", quantity=1, price=PRICE, stop_loss=PRICE + 10
        )

    assert task.state is TaskState.DEAD
    assert task.attempts == 1
    expected = {
        "paper": "broker refused: paper order rejected: stop loss 21010 must be"
        " below the entry price 21000 for a buy",
        "projectx": "broker refused: OrderRejected (errorCode 2):"
        " stopLossBracket.ticks must be negative for a buy order, got 40",
    }
    assert task.last_error == expected[kind]
    assert venue.orders() == []
    assert await venue.position() == 0


@BROKERS
async def test_bracket_legs_protect_the_entry_and_go_with_a_reversal(
    kind: str, tmp_path: Path
) -> None:
    """Entry with stop loss and take profit; a reversal cancels both legs first."""
    async with VENUES[kind](tmp_path, fill_check_interval=0.1) as venue:
        [entry] = await venue.send(
            action="buy", quantity=1, stop_loss_ticks=20, take_profit_ticks=40
        )
        legs = venue.orders()[1:]
        [reverse] = await venue.send(action="sell", quantity=1)
        working = await venue.daemon.broker.open_orders()
        await venue.daemon.jobs.fill_check(Task("fill_check", entry.priority))

    assert legs == [
        ("sell", 1, "stop", "bracket"),
        ("sell", 1, "limit", "bracket"),
    ]
    assert (reverse.result or "").startswith("cancelled 2 working MNQ orders")
    assert working == []
    assert await venue.position() == -1
    # The daemon cancelled the legs itself: no task is marked dead for them.
    assert entry.state is TaskState.DONE


async def test_close_cancels_a_resting_limit_and_its_task_stays_done(
    tmp_path: Path,
) -> None:
    """A resting limit entry cancelled by a later close is not a broker refusal."""
    async with paper(tmp_path) as venue:
        [limit] = await venue.send(action="buy", quantity=1, limit_price=PRICE - 20)
        [close] = await venue.send(action="close")
        await venue.daemon.jobs.fill_check(Task("fill_check", limit.priority))
        await venue.set_price(PRICE - 30)

    assert "buy 1 MNQ limit 20980 working" in (limit.result or "")
    assert close.result == "cancelled 1 working MNQ orders"
    assert limit.state is TaskState.DONE
    assert await venue.position() == 0


class EntryHangs(PaperBroker):
    """The process dies (here: the test stops it) while the entry is sent."""

    async def place_order(self, request: OrderRequest) -> OrderResult:
        if request.client_id.endswith("-4"):
            await trio.sleep_forever()
        return await super().place_order(request)


async def test_rerun_of_a_reversal_after_its_close_does_the_entry_only(
    tmp_path: Path,
) -> None:
    """Killed between close and entry, the rerun places the entry, not a 2nd close."""
    settings = Settings(
        state_dir=tmp_path, paper_prices={"MNQ": PRICE}, trading_hours="always"
    )
    first = Daemon(settings)
    broker = EntryHangs({"MNQ": PRICE}, journal=first.journal)
    first.brokers["paper"] = first.broker = broker
    async with core(first):
        venue = PaperVenue(first)
        await venue.send(action="buy", quantity=1)
        await venue.send(wait=False, action="sell", quantity=1)
        await until(
            lambda: (broker._books["MNQ"].size, first.executor._entering) == (0, 1)
        )
    [task_id] = venue.alerts[1]

    second = Daemon(settings)
    async with core(second):
        again = PaperVenue(second)
        again.alerts = venue.alerts
        [task] = await again.finished([task_id])

    assert task.attempts == 2
    assert again.orders() == [
        ("buy", 1, "market", "a1.1"),
        ("sell", 1, "market", "close"),
        ("sell", 1, "market", "a2.4"),
    ]
    assert await again.position() == -1
    # Cancel, close and confirm found nothing left to do; the entry went out.
    assert (task.result or "").endswith(
        "MNQ flat; sell 1 MNQ filled @ 21000 (order P3)"
    )


async def test_fill_check_not_blocked_by_a_slow_task_of_another_contract(
    tmp_path: Path,
) -> None:
    """While MNQ's slow orders run one by one, MES and the fill check go ahead."""
    async with paper(tmp_path, paper_fill_delay=0.5) as venue:
        await venue.send(wait=False, action="buy", quantity=1)
        await venue.send(wait=False, action="sell", quantity=1)
        await venue.send(wait=False, action="buy", quantity=1, symbol="MES1!")
        await until(lambda: venue.daemon.scheduler.active == 2)
        check = venue.daemon.scheduler.submit(
            Task(FILL_CHECK, Priority.CRITICAL), internal=True
        )
        await until(lambda: check.state is TaskState.DONE, 0.4)
        running = [
            t.payload["signal"]["symbol"] for t in venue.daemon.scheduler._running
        ]
        first, second, mes = await venue.finished([ids[0] for ids in venue.alerts])

    # The fill check ran while both slow orders were still on their way.
    assert sorted(running) == ["MES", "MNQ"]
    assert None not in (first.finished_wall, second.finished_wall, mes.finished_wall)
    # MES ran beside MNQ's first order; MNQ's second waited for its first.
    assert mes.finished_wall < second.finished_wall  # type: ignore[operator]
    assert first.finished_wall <= second.finished_wall  # type: ignore[operator]


async def test_outside_trading_hours_entries_refused_exits_allowed(
    tmp_path: Path,
) -> None:
    """On a Saturday (CME closed) an entry is refused and a close goes out."""
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=CHICAGO)
    settings = Settings(state_dir=tmp_path, paper_prices={"MNQ": PRICE})
    daemon = Daemon(settings, risk=RiskGuard(RiskLimits(), clock=lambda: saturday))
    async with core(daemon):
        await daemon.broker.place_order(OrderRequest("MNQ", Side.BUY, 1, "before"))
        venue = PaperVenue(daemon)
        [entry] = await venue.send(action="sell", quantity=1)

    assert entry.result == (
        "cancelled 0 working MNQ orders; closed MNQ; MNQ flat; entry refused:"
        " MNQ is outside its trading hours (cme-globex) at Sat 12:00 Central"
    )
    assert await venue.position() == 0
    assert [r.guard for r in daemon.risk.refusals] == ["trading_hours"]


ADMIN = "admin-token-for-halt-0042"
HALTED = "trading is halted (POST /resume to trade again)"
# Twelve contracts, twelve lanes: a backlog the workers cannot clear at once.
CONTRACTS = (
    "M2K1!", "MGC1!", "MYM1!", "MCL1!", "M6E1!", "MBT1!",
    "MET1!", "SIL1!", "QM1!", "HG1!", "ZB1!", "ZF1!",
)  # fmt: skip


async def test_halt_under_a_queue_full_of_normal_work_flattens_first(
    tmp_path: Path,
) -> None:
    """POST /halt jumps a backlog of alerts, flattens, and refuses what follows."""
    options: dict[str, Any] = {
        "paper_fill_delay": 0.2,
        "workers": 3,
        "max_concurrent": 3,
        "critical_reserve": 1,
        "admin_token": ADMIN,
    }
    async with paper(tmp_path, **options) as venue:
        daemon = venue.daemon
        client = create_app(daemon).test_client()
        started: set[str] = set()

        async def flatten(task: Task) -> str:
            scheduler = daemon.scheduler
            started.update(t.id for t in [*scheduler.recent, *scheduler._running])
            return await daemon.executor.flatten_all(task)

        daemon.scheduler.register(FLATTEN_ALL, flatten)
        await venue.send(action="buy", quantity=1)
        await venue.send(action="sell", quantity=2, symbol="MES1!")
        # A resting entry (ZN at 100 on paper): the halt cancels it.
        await venue.send(action="buy", quantity=1, limit_price=50, symbol="ZN1!")
        for symbol in CONTRACTS:
            await venue.send(wait=False, action="buy", quantity=1, symbol=symbol)

        unauthorised = await client.post("/halt")
        answer = await client.post(
            "/halt", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        flatten_id = (await answer.get_json())["id"]
        backlog = [ids[0] for ids in venue.alerts[2:]]
        [halt] = await venue.finished([flatten_id])
        tasks = await venue.finished(backlog)
        status = await (await client.get("/status")).get_json()
        held = {p.symbol: p.size for p in await daemon.broker.positions() if p.size}
        working = await daemon.broker.open_orders()
        assert isinstance(daemon.broker, PaperBroker)
        placed = list(daemon.broker._orders)

    assert unauthorised.status_code == 401
    assert answer.status_code == 202
    assert halt.priority is Priority.CRITICAL and halt.lane is None
    # The flatten started while most of the alerts were still waiting, and
    # each of those was refused when its turn came.
    waiting = [t for t in tasks if t.id not in started]
    assert len(waiting) >= 6
    assert {t.result for t in waiting} == {f"refused: {HALTED}"}
    assert not [c for c in placed if c.split("-")[1] in {t.id for t in waiting}]
    # Closed: the two positions, and any entry that was already on its way.
    assert (halt.result or "").startswith("paper: cancelled 1 orders, closed ")
    assert {"MES", "MNQ"} <= set((halt.result or "").split("closed ")[1].split(", "))
    assert held == {}
    assert working == []
    assert status["halted"] is True
    assert {r["guard"] for r in status["risk_refusals"]} == {"halted"}
    assert {t["id"] for t in status["recent_tasks"]} >= {t.id for t in waiting}


async def test_halt_holds_across_restart_until_resume(tmp_path: Path) -> None:
    """The kill switch is journaled: a restart stays halted; /resume lifts it."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with paper(tmp_path, admin_token=ADMIN) as venue:
        answer = (
            await create_app(venue.daemon).test_client().post("/halt", headers=admin)
        )
        await venue.finished([(await answer.get_json())["id"]])

    async with paper(tmp_path, admin_token=ADMIN) as venue:
        halted_at_start = venue.daemon.risk.halted
        [refused] = await venue.send(action="buy", quantity=1)
        client = create_app(venue.daemon).test_client()
        resumed = await client.post("/resume", headers=admin)
        [entry] = await venue.send(action="buy", quantity=1)
        status = await (await client.get("/status")).get_json()

    assert halted_at_start is True
    assert refused.result == "refused: trading is halted (POST /resume to trade again)"
    assert (resumed.status_code, await resumed.get_json()) == (200, {"halted": False})
    assert (entry.result or "").startswith("buy 1 MNQ filled")
    assert status["halted"] is False


async def test_status_shows_intents_and_refusals(tmp_path: Path) -> None:
    """/status lists each task's intent and the recent refusals with reasons."""
    async with paper(tmp_path) as venue:
        [opened] = await venue.send(action="buy", quantity=1)
        [refused] = await venue.send(action="buy", quantity=1)
        client = create_app(venue.daemon).test_client()
        status = await (await client.get("/status")).get_json()

    shown = {t["id"]: t for t in status["recent_tasks"]}
    assert shown[opened.id]["account"] == "paper"
    assert shown[opened.id]["intent"] == {
        "account": "paper",
        "symbol": "MNQ",
        "mode": "signal",
        "position": 0,
        "target": 1,
        "reason": "MNQ flat; open MNQ long 1",
        "refused": None,
        "guard": None,
        "steps": [{"kind": "enter", "side": "buy", "size": 1, "order_type": "market"}],
    }
    assert shown[refused.id]["intent"]["guard"] == "pyramiding"
    [refusal] = status["risk_refusals"]
    assert (refusal["task_id"], refusal["guard"]) == (refused.id, "pyramiding")
    assert refusal["reason"] == "MNQ long 1; adding is off (TRADING_PYRAMIDING)"
    assert status["halted"] is False
    assert status["accounts"]["paper"]["multiplier"] == 1.0


async def test_refused_intent_is_not_journaled_but_explained(tmp_path: Path) -> None:
    """An intent that sends no order costs no journal write; its result says why."""
    async with paper(tmp_path) as venue:
        [opened] = await venue.send(action="buy", quantity=1)
        [refused] = await venue.send(action="buy", quantity=1)
        conn = sqlite3.connect(venue.daemon.journal.path)
        try:
            recorded = {
                task_id for (task_id,) in conn.execute("SELECT task_id FROM intents")
            }
        finally:
            conn.close()

    assert recorded == {opened.id}
    assert refused.state is TaskState.DONE
    assert refused.result == "refused: MNQ long 1; adding is off (TRADING_PYRAMIDING)"


async def test_intent_logged_at_info_only_when_it_sends_orders(
    tmp_path: Path, log_sink: io.StringIO
) -> None:
    """An order-sending intent is an INFO line; a refusal is told by risk.refused."""
    async with paper(tmp_path) as venue:
        [opened] = await venue.send(action="buy", quantity=1)
        [refused] = await venue.send(action="buy", quantity=1)

    def lines(task_id: str) -> list[str]:
        return [
            line.split(" task_id=")[0]
            for line in log_sink.getvalue().splitlines()
            if f"task_id={task_id}" in line and "task." not in line
        ]

    assert lines(opened.id) == ["<6>INFO alert.accepted", "<6>INFO intent.decided"]
    assert lines(refused.id) == [
        "<6>INFO alert.accepted",
        "<4>WARNING risk.refused",
        "<7>DEBUG intent.decided",
    ]


class SeesTheJournal(PaperBroker):
    """Notes, for each order, whether its task's intent was on disk already."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intent_on_disk: list[bool] = []

    async def place_order(self, request: OrderRequest) -> OrderResult:
        if not request.client_id.startswith("td-"):  # the close of a reversal
            return await super().place_order(request)
        task_id = request.client_id.removeprefix("td-").split("-")[0]
        conn = sqlite3.connect(self._journal.path)  # type: ignore[union-attr]
        try:
            row = conn.execute(
                "SELECT body FROM intents WHERE task_id = ?", (task_id,)
            ).fetchone()
        finally:
            conn.close()
        self.intent_on_disk.append(row is not None)
        return await super().place_order(request)


async def test_intent_is_durable_before_the_first_order(tmp_path: Path) -> None:
    """Another connection sees the intent when the order is sent."""
    settings = Settings(
        state_dir=tmp_path, paper_prices={"MNQ": PRICE}, trading_hours="always"
    )
    daemon = Daemon(settings)
    broker = SeesTheJournal({"MNQ": PRICE}, journal=daemon.journal)
    daemon.brokers["paper"] = daemon.broker = broker
    async with core(daemon):
        venue = PaperVenue(daemon)
        await venue.send(action="buy", quantity=1)
        await venue.send(action="sell", quantity=1)

    assert broker.intent_on_disk == [True, True]
