"""The ProjectX Gateway (TopstepX) broker: the daemon's orders on a real account.

The broker is the truth: positions, orders and fills are read from the
gateway, never kept as a private book. On top of the transport in
``projectx_client`` and the wire format in ``projectx_wire`` this adds:

- the account, chosen by id or name and refused at start unless it may trade;
- contracts resolved from the root symbol at run time (the active month of
  ``F.US.<ROOT>``) and cached until the gateway says the month is no longer
  active, after which the order goes to the new month;
- at most one order per task: every order carries the task's customTag, and
  after an answer that may have been lost (timeout, dropped connection, 5xx)
  the tag is looked up before anything is sent again. The gateway refuses a
  reused customTag too (observed), which backs this up across restarts;
- business refusals become ``BrokerRefusal`` with the gateway's reason;
- the fill check: orders, positions and trades read back and compared with
  what the previous check saw.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import trio
from loguru import logger

from . import projectx_wire as wire
from .broker import (
    Account,
    BrokerRefusal,
    BrokerSetupError,
    Contract,
    FillReport,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Position,
    Trade,
)
from .projectx_client import (
    ClientConfig,
    GatewayError,
    Json,
    ProjectXClient,
    ProjectXError,
    ServerError,
    SharedFetch,
    leaves,
)

if TYPE_CHECKING:
    from .config import Settings

# How far back order and trade searches reach. The daemon looks an order up by
# its customTag within this window; an older tag is still refused by the
# gateway if reused, so the window bounds the answer size, not the safety.
LOOKBACK = timedelta(days=2)
# A cached contract is checked again after this long even if no order was
# refused for it; a roll happens once a quarter.
CONTRACT_MAX_AGE_S = 3600.0
# /status may ask for positions often; one gateway read per second serves it.
POSITIONS_MAX_AGE_S = 1.0

_ENDED_UNFILLED = (OrderStatus.CANCELLED, OrderStatus.REJECTED)
# Failures that prove the request never reached the gateway: no lookup needed.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_T = TypeVar("_T")


def answer_lost(exc: BaseException) -> bool:
    """True if Order/place may have taken effect although no answer arrived."""
    return any(
        isinstance(leaf, httpx.TransportError | ServerError)
        and not isinstance(leaf, _NOT_SENT)
        for leaf in leaves(exc)
    )


class ProjectXBroker:
    """Orders, positions and fills on one ProjectX account."""

    name = "projectx"

    def __init__(
        self,
        client: ProjectXClient,
        *,
        account: str = "",
        symbols: Mapping[str, str] | None = None,
        live: bool = False,
    ) -> None:
        self.client = client
        # Failed gateway calls by kind, read by /metrics.
        self.errors = client.errors
        self.account: Account | None = None
        self.fills: deque[OrderResult] = deque(maxlen=1000)
        self._wanted_account = account.strip()
        self._symbols = wire.Symbols(symbols)
        self._live = live
        self._account_id: int | None = None
        self._contracts: dict[str, tuple[Contract, float]] = {}
        self._contract_lock = trio.Lock()
        # Every order with a customTag seen so far: placed, or found by a search.
        self._by_tag: dict[str, OrderResult] = {}
        self._search = SharedFetch(self._fetch_orders)
        # Order id -> (status, filled size) as the last fill check saw it.
        self._seen: dict[str, tuple[OrderStatus, int]] = {}
        self._trade_ids: set[str] = set()
        self._positions: list[Position] = []
        self._held: list[tuple[str, str]] = []
        self._positions_at = -math.inf

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        account: str | None = None,
        client: ProjectXClient | None = None,
    ) -> ProjectXBroker:
        """A broker for ``account`` (default PROJECT_X_ACCOUNT).

        Brokers for several accounts of one user share one ``client``: one
        session and one rate limit, which the gateway counts per user.
        """
        if client is None:
            config = ClientConfig(
                base_url=settings.project_x_base_url,
                username=settings.project_x_username,
                api_key=settings.project_x_api_key,
                timeout=settings.project_x_timeout,
                rate_limit=settings.project_x_rate_limit,
                rate_window_s=settings.project_x_rate_window,
            )
            client = ProjectXClient(config)
        return cls(
            client,
            account=settings.project_x_account if account is None else account,
            symbols=settings.project_x_symbols,
        )

    # -- start -------------------------------------------------------------

    async def start(self) -> None:
        """Log in, choose and check the account, read what the broker holds.

        May be called again after a transient failure; the daemon closes the
        broker when it stops, whether or not this ever succeeded.
        """
        if not self.client.logins:
            # Another account's broker on this client may have logged in.
            await self.client.login()
        account = await self._choose_account()
        self.account = account
        self._account_id = int(account.id)
        positions = await self._read_positions()
        working = await self.open_orders()
        # The baseline for fill checks: what exists now is not news.
        for raw in await self._retried("Order/search", self._search.get):
            known = wire.order(raw, self._symbols)
            self._seen[known.order_id] = (known.status, known.filled_size)
        for order in working:
            self._seen[order.order_id] = (order.status, order.filled_size)
        self._trade_ids = {trade.id for trade in await self.trades()}

        logger.bind(
            broker=self.name,
            account_id=account.id,
            account=account.name,
            balance=account.balance,
            positions=len(positions),
            open_orders=len(working),
        ).info("broker.started")
        for position in positions:
            logger.bind(
                symbol=position.symbol,
                size=position.size,
                average_price=position.average_price,
            ).info("broker.position")
        for order in working:
            _log_order(order, "broker.open_order")

    async def accounts(self) -> list[Account]:
        return await self._accounts()

    async def _accounts(self, *, urgent: bool = False) -> list[Account]:
        data = await self.client.request(
            "Account/search", {"onlyActiveAccounts": True}, urgent=urgent
        )
        return [wire.account(raw) for raw in wire.items(data, "accounts")]

    async def _choose_account(self) -> Account:
        accounts = await self.accounts()
        listing = ", ".join(f"{a.name!r} (id {a.id})" for a in accounts) or "none"
        wanted = self._wanted_account
        if wanted:
            matches = [a for a in accounts if a.id == wanted] or [
                a for a in accounts if a.name.casefold() == wanted.casefold()
            ]
            if len(matches) != 1:
                raise BrokerSetupError(
                    "PROJECT_X_ACCOUNT must name one active account by id or name,"
                    f" got {wanted!r}; active accounts: {listing}"
                )
        elif len(accounts) == 1:
            matches = accounts
        else:
            raise BrokerSetupError(
                "PROJECT_X_ACCOUNT must name the account to trade when the user"
                f" has other than one active account; active accounts: {listing}"
            )
        account = matches[0]
        if not account.can_trade:
            raise BrokerSetupError(
                f"ProjectX account {account.name!r} (id {account.id}) may not"
                " trade (canTrade is false)"
            )
        return account

    def _body(self, **fields: Any) -> Json:
        if self._account_id is None:
            raise RuntimeError("the ProjectX broker must be started before use")
        return {"accountId": self._account_id, **fields}

    # -- contracts ---------------------------------------------------------

    async def resolve_contract(self, symbol: str) -> Contract:
        """The active month of ``symbol``'s root, from cache while it lasts."""
        symbol = symbol.upper()
        async with self._contract_lock:
            cached = self._contracts.get(symbol)
            if cached is not None:
                contract, resolved_at = cached
                if trio.current_time() - resolved_at < CONTRACT_MAX_AGE_S:
                    return contract
            root = self._symbols.gateway_root(symbol)
            data = await self.client.request(
                "Contract/search", {"searchText": root, "live": self._live}
            )
            found = wire.active_contract(data, symbol, self._symbols)
            if found is None:
                symbol_id = self._symbols.symbol_id(symbol)
                raise BrokerRefusal(
                    f"no active contract for {symbol} (symbolId {symbol_id})"
                )
            self._contracts[symbol] = (found, trio.current_time())

        if cached is None or cached[0].id != found.id:
            logger.bind(symbol=symbol, contract_id=found.id).info("contract.resolved")
        return found

    # -- orders ------------------------------------------------------------

    async def place_order(self, request: OrderRequest) -> OrderResult:
        if request.size < 1:
            raise ValueError(f"order size must be positive, got {request.size}")
        earlier = self._by_tag.get(request.client_id)
        if earlier is not None:
            logger.bind(client_id=request.client_id, order_id=earlier.order_id).info(
                "order.duplicate_suppressed"
            )
            return earlier

        for attempt in (1, 2):
            contract = await self.resolve_contract(request.symbol)
            try:
                return await self._place(request, contract)
            except GatewayError as exc:
                gone = exc.code in (wire.CONTRACT_NOT_ACTIVE, wire.CONTRACT_NOT_FOUND)
                if gone and attempt == 1:
                    # The month rolled under the cache. A refusal created no
                    # order, so sending to the new month is safe.
                    self._contracts.pop(contract.symbol, None)
                    logger.bind(symbol=contract.symbol, contract_id=contract.id).info(
                        "contract.expired"
                    )
                    continue
                if exc.code == wire.ORDER_REJECTED:
                    # Also the answer to a reused customTag: our own order,
                    # placed by an attempt whose answer never arrived.
                    found = await self.find_order(request.client_id)
                    if found is not None:
                        return found
                raise BrokerRefusal(wire.refusal(exc)) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _place(self, request: OrderRequest, contract: Contract) -> OrderResult:
        try:
            fields = wire.order_fields(request, contract.tick_size)
        except wire.BracketError as exc:
            raise BrokerRefusal(str(exc)) from None
        body = self._body(
            contractId=contract.id,
            side=wire.side_code(request.side),
            size=request.size,
            customTag=request.client_id,
            **fields,
        )
        lost = False
        async for attempt in self.client.retrying("Order/place"):
            with attempt:
                if lost:
                    # Never resend blindly: the order may exist already.
                    found = await self._lookup(request.client_id)
                    if found is not None:
                        logger.bind(
                            client_id=request.client_id, order_id=found.order_id
                        ).warning("order.found_after_lost_answer")
                        return found
                    lost = False
                try:
                    data = await self.client.request_once("Order/place", body)
                except Exception as exc:
                    lost = answer_lost(exc)
                    raise
                return self._placed(request, contract, data)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _placed(
        self, request: OrderRequest, contract: Contract, data: Json
    ) -> OrderResult:
        order_id = data.get("orderId")
        if not isinstance(order_id, int):
            raise ProjectXError(f"Order/place succeeded without an orderId: {data!r}")
        result = OrderResult(
            order_id=str(order_id),
            client_id=request.client_id,
            symbol=contract.symbol,
            side=request.side,
            size=request.size,
            status=OrderStatus.WORKING,
            order_type=request.order_type,
            price=request.limit_price or request.stop_price,
        )
        self._by_tag[request.client_id] = result
        self._positions_at = -math.inf
        logger.bind(
            order_id=result.order_id,
            client_id=request.client_id,
            symbol=result.symbol,
            contract_id=contract.id,
            side=request.side.value,
            size=request.size,
        ).info("order.placed")
        return result

    async def find_order(self, client_id: str) -> OrderResult | None:
        known = self._by_tag.get(client_id)
        if known is not None:
            return known
        return await self._retried("Order/search", lambda: self._lookup(client_id))

    async def _lookup(self, client_id: str) -> OrderResult | None:
        """One search (shared with concurrent lookups) for ``client_id``."""
        await self._search.get()
        return self._by_tag.get(client_id)

    async def _fetch_orders(self, *, urgent: bool = False) -> list[Json]:
        since = datetime.now(UTC) - LOOKBACK
        data = await self.client.request_once(
            "Order/search", self._body(startTimestamp=wire.stamp(since)), urgent=urgent
        )
        orders = wire.items(data, "orders")
        for raw in orders:
            if raw.get("customTag"):
                found = wire.order(raw, self._symbols)
                self._by_tag[found.client_id] = found
        return orders

    async def open_orders(self) -> list[OrderResult]:
        data = await self.client.request("Order/searchOpen", self._body())
        return [wire.order(raw, self._symbols) for raw in wire.items(data, "orders")]

    async def cancel_order(self, order_id: str) -> None:
        try:
            await self.client.request("Order/cancel", self._body(orderId=int(order_id)))
        except GatewayError as exc:
            raise BrokerRefusal(wire.refusal(exc)) from exc
        logger.bind(order_id=order_id).info("order.cancel_requested")

    # -- positions and trades ------------------------------------------------

    async def positions(self, *, fresh: bool = False) -> list[Position]:
        """The account's positions, at most a second old (this feeds /status).

        ``fresh`` (the kill switch) reads the gateway now and raises if it
        cannot: a stale list could leave a position open.
        """
        if fresh:
            return await self._read_positions()
        if trio.current_time() - self._positions_at > POSITIONS_MAX_AGE_S:
            try:
                await self._read_positions()
            except Exception as exc:
                # /status must answer while the gateway is away; trading
                # decisions use position(), which never falls back.
                logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                    "broker.positions_stale"
                )
        return list(self._positions)

    async def position(self, symbol: str) -> Position:
        # A trading decision (how much to close) reads the broker afresh.
        symbol = symbol.upper()
        for position in await self._read_positions():
            if position.symbol == symbol:
                return position
        return Position(symbol, 0, 0.0)

    async def _read_positions(self, *, urgent: bool = False) -> list[Position]:
        data = await self.client.request(
            "Position/searchOpen", self._body(), urgent=urgent
        )
        self._positions, self._held = wire.positions(data, self._symbols)
        self._positions_at = trio.current_time()
        return list(self._positions)

    async def close_position(self, symbol: str) -> None:
        symbol = symbol.upper()
        await self._read_positions()
        for held, contract_id in self._held:
            if held != symbol:
                continue
            try:
                await self.client.request(
                    "Position/closeContract", self._body(contractId=contract_id)
                )
            except GatewayError as exc:
                # After a lost answer the retry finds the position already gone.
                if exc.code != wire.POSITION_NOT_FOUND:
                    raise BrokerRefusal(wire.refusal(exc)) from exc
            logger.bind(symbol=symbol, contract_id=contract_id).info(
                "position.close_requested"
            )
        self._positions_at = -math.inf

    async def trades(self) -> list[Trade]:
        return await self._trades()

    async def _trades(self, *, urgent: bool = False) -> list[Trade]:
        since = datetime.now(UTC) - LOOKBACK
        data = await self.client.request(
            "Trade/search", self._body(startTimestamp=wire.stamp(since)), urgent=urgent
        )
        return wire.trades(data, self._symbols)

    # -- the fill check ------------------------------------------------------

    async def check_fills(self) -> FillReport:
        """Read orders, positions and trades back; report what is new.

        Its calls are urgent: they pass ahead of alerts waiting for the rate
        limit, so a burst cannot starve the CRITICAL job.
        """
        orders = await self._retried(
            "Order/search", partial(self._fetch_orders, urgent=True)
        )
        fills: list[OrderResult] = []
        ended: list[OrderResult] = []
        seen: dict[str, tuple[OrderStatus, int]] = {}
        for raw in orders:
            order = wire.order(raw, self._symbols)
            status, filled = self._seen.get(order.order_id, (OrderStatus.WORKING, 0))
            seen[order.order_id] = (order.status, order.filled_size)
            if order.filled_size > filled:
                fills.append(order)
                self.fills.append(order)
                event = "order.partially_filled"
                _log_order(order, event if order.partially_filled else "order.filled")
            if order.status in _ENDED_UNFILLED and not status.final:
                ended.append(order)
                _log_order(order, "order.ended_unfilled", warning=True)
        self._seen = seen

        await self._read_positions(urgent=True)
        trades = await self._trades(urgent=True)
        new = [trade for trade in trades if trade.id not in self._trade_ids]
        self._trade_ids = {trade.id for trade in trades}
        for trade in new:
            logger.bind(
                trade_id=trade.id,
                order_id=trade.order_id,
                symbol=trade.symbol,
                side=trade.side.value,
                size=trade.size,
                price=trade.price,
                pnl=trade.profit_and_loss,
                fees=trade.fees,
            ).info("trade.recorded")

        return FillReport(tuple(fills), tuple(ended), tuple(new))

    async def account_summary(self) -> dict[str, Any]:
        if self.account is None:
            raise RuntimeError("the ProjectX broker must be started before use")
        accounts = await self._accounts(urgent=True)
        current = next((a for a in accounts if a.id == self.account.id), None)
        # As the last fill check (or /status) read them: no call of its own.
        positions = self._positions
        summary: dict[str, Any] = {
            "broker": self.name,
            "account_id": self.account.id,
            "account_name": self.account.name,
            "balance": None if current is None else current.balance,
            "can_trade": current is not None and current.can_trade,
            "open_positions": sum(1 for p in positions if p.size),
            "orders": len(self._by_tag),
        }
        if not summary["can_trade"]:
            logger.bind(account_id=self.account.id).error("broker.account_cannot_trade")
        return summary

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _retried(self, endpoint: str, call: Callable[[], Awaitable[_T]]) -> _T:
        async for attempt in self.client.retrying(endpoint):
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")


def _log_order(order: OrderResult, event: str, *, warning: bool = False) -> None:
    log = logger.bind(
        order_id=order.order_id,
        client_id=order.client_id,
        symbol=order.symbol,
        side=order.side.value,
        size=order.size,
        filled=order.filled_size,
        price=order.fill_price,
        status=order.status.value,
    )
    if warning:
        log.warning(event)
    else:
        log.info(event)
