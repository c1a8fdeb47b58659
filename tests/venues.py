"""A running daemon on either broker, seen the same way by order-intent tests.

``paper``: the daemon's core in-process (journal, scheduler, paper brokers).
``projectx``: the whole daemon against the ProjectX simulator over loopback.
Both run on the real clock: the journal commits on a thread and the simulator
needs sockets, so outcomes are awaited with a limit (support.until).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio
from support import until

from trading_daemon.config import Settings
from trading_daemon.daemon import Daemon
from trading_daemon.paper_broker import PaperBroker
from trading_daemon.projectx_sim_state import Account, SimulatorState
from trading_daemon.projectx_simulator import serve_simulator
from trading_daemon.tasks import Task, TaskState

USER = "trader"
KEY = "pxk-test-0123456789abcdef"
SECRET = "hook-secret-0123456789"
MNQ_H25 = "CON.F.US.MNQ.H25"
SIM_ACCOUNTS = {"PRAC-A": 1001, "PRAC-B": 1002, "PRAC-C": 1003}
# The ProjectX simulator's MNQ price; paper is set to the same.
PRICE = 21000.0
# One order as the tests compare them: side, size, type and what sent it:
# "a2.4" is alert 2's step 4, "close" a broker-side close, "bracket" a leg.
Order = tuple[str, int, str, str]


class Venue:
    """A daemon trading MNQ, the orders each account got, and its positions."""

    kind = ""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.alerts: list[list[str]] = []

    async def send(self, wait: bool = True, **fields: Any) -> list[Task]:
        """Post one alert (as the webhook would) and wait until its tasks end."""
        # A fresh id each: identical bodies within seconds are duplicates.
        number = len(self.alerts) + 1
        body = {"symbol": "MNQ1!", "secret": SECRET, "id": f"a{number}", **fields}
        reply = await self.daemon.intake.accept(json.dumps(body).encode())
        assert reply.status == 202, reply.body
        ids: list[str] = reply.body["ids"]
        self.alerts.append(ids)
        return await self.finished(ids) if wait else []

    async def finished(self, ids: list[str], limit_s: float = 15) -> list[Task]:
        def ended() -> dict[str, Task]:
            return {
                t.id: t
                for t in self.daemon.scheduler.recent
                if t.id in ids and t.state in (TaskState.DONE, TaskState.DEAD)
            }

        await until(lambda: len(ended()) == len(ids), limit_s)
        found = ended()
        return [found[i] for i in ids]

    def label(self, client_id: str | None) -> str:
        if not client_id or client_id.startswith("close-"):
            return "close"
        if client_id.startswith("bracket-"):
            return "bracket"
        task, _, step = client_id.removeprefix("td-").partition("-")
        number = next(n for n, ids in enumerate(self.alerts, 1) if task in ids)
        return f"a{number}.{step}"

    def orders(self, account: str | None = None) -> list[Order]:
        raise NotImplementedError

    async def position(self, account: str | None = None) -> int:
        raise NotImplementedError

    async def set_price(self, price: float) -> None:
        raise NotImplementedError


class PaperVenue(Venue):
    kind = "paper"

    def _broker(self, account: str | None) -> PaperBroker:
        broker = self.daemon.accounts.broker(account)
        assert isinstance(broker, PaperBroker)
        return broker

    def orders(self, account: str | None = None) -> list[Order]:
        return [
            (o.side.value, o.size, o.order_type.value, self.label(o.client_id))
            for o in self._broker(account)._orders.values()
        ]

    async def position(self, account: str | None = None) -> int:
        return (await self._broker(account).position("MNQ")).size

    async def set_price(self, price: float) -> None:
        for name in self.daemon.accounts.names:
            self._broker(name).set_price("MNQ", price)
            # The paper market moves at fill checks.
            await self._broker(name).check_fills()


class ProjectXVenue(Venue):
    kind = "projectx"

    def __init__(self, daemon: Daemon, state: SimulatorState) -> None:
        super().__init__(daemon)
        self.state = state

    def _account_id(self, account: str | None) -> int:
        return SIM_ACCOUNTS[account or "PRAC-A"]

    def orders(self, account: str | None = None) -> list[Order]:
        since = datetime.now(UTC) - timedelta(days=1)
        found = self.state.search_orders(self._account_id(account), since)
        return [
            (
                "buy" if o.side == 0 else "sell",
                o.size,
                o.type.name.lower(),
                "bracket" if o.oco_group is not None else self.label(o.custom_tag),
            )
            for o in found
        ]

    async def position(self, account: str | None = None) -> int:
        held = self.state.open_positions(self._account_id(account))
        return sum(p.net_size for p in held if p.contract_id == MNQ_H25)

    async def set_price(self, price: float) -> None:
        self.state.set_price(MNQ_H25, price)


@asynccontextmanager
async def paper(tmp_path: Path, **overrides: Any) -> AsyncIterator[Venue]:
    settings = Settings(
        **{
            "state_dir": tmp_path,
            "paper_prices": {"MNQ": PRICE},
            "trading_hours": "always",
            "webhook_secret": SECRET,
            **overrides,
        }
    )
    daemon = Daemon(settings)
    async with core(daemon):
        yield PaperVenue(daemon)


@asynccontextmanager
async def core(daemon: Daemon) -> AsyncIterator[Daemon]:
    """Journal writer and scheduler running, as Daemon.run has them (no HTTP)."""
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def journal() -> None:
            await daemon.journal.run()
            done.set()

        nursery.start_soon(journal)
        daemon.recovery = daemon.recover()
        await nursery.start(daemon.scheduler.run)
        await daemon.start_brokers()
        yield daemon
        await daemon.scheduler.shutdown(0)
        await daemon.scheduler.wait_stopped()
        daemon.journal.close()
        await done.wait()


def sim_state(accounts: int = 1) -> SimulatorState:
    # Searches look back from the wall clock, so the simulated one starts now.
    listed = [Account(i, name, 50_000.0) for name, i in SIM_ACCOUNTS.items()]
    return SimulatorState(
        user_name=USER, api_key=KEY, start=datetime.now(UTC), accounts=listed[:accounts]
    )


@asynccontextmanager
async def projectx(
    tmp_path: Path, state: SimulatorState | None = None, **overrides: Any
) -> AsyncIterator[Venue]:
    state = state or sim_state()
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = partial(serve_simulator, "127.0.0.1", 0, state)
            port = await nursery.start(partial(run, shutdown_trigger=stop.wait))
            settings = Settings(
                **{
                    "webhook_port": 0,
                    "state_dir": tmp_path,
                    "broker": "projectx",
                    "project_x_base_url": f"http://127.0.0.1:{port}",
                    "project_x_username": USER,
                    "project_x_api_key": KEY,
                    "project_x_account": "PRAC-A",
                    "webhook_secret": SECRET,
                    "trading_hours": "always",
                    **overrides,
                }
            )
            daemon = Daemon(settings)
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(daemon.run)
                    try:
                        yield ProjectXVenue(daemon, state)
                    finally:
                        daemon.request_stop("test over")
            finally:
                stop.set()


VENUES: dict[str, Callable[..., Any]] = {"paper": paper, "projectx": projectx}
