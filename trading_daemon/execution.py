"""Trade execution: the handler that turns a signal into a broker order."""

from __future__ import annotations

from .alerts import Action, Signal
from .broker import Broker, BrokerRefusal, OrderRequest, OrderResult, Side
from .metrics import Metrics
from .tasks import PermanentTaskError, Task

EXECUTE_SIGNAL = "execute_signal"
# Marks the daemon's orders among the account's (ProjectX: their customTag).
CLIENT_ID_PREFIX = "td-"


def client_id_for(task: Task) -> str:
    """The order's client id: fixed by the task, so a rerun finds its order."""
    return f"{CLIENT_ID_PREFIX}{task.id}"


def task_id_for(client_id: str) -> str | None:
    """The task that placed the order with ``client_id``; None if not the daemon."""
    if not client_id.startswith(CLIENT_ID_PREFIX):
        return None
    return client_id.removeprefix(CLIENT_ID_PREFIX) or None


class Executor:
    """Places the order a signal asks for, netting against the current position."""

    def __init__(self, broker: Broker, metrics: Metrics | None = None) -> None:
        self._broker = broker
        self._metrics = metrics

    async def execute_signal(self, task: Task) -> str:
        signal = Signal.from_payload(task.payload["signal"])
        client_id = client_id_for(task)

        # A rerun (retry after a lost answer, restart mid-task) must not place
        # a second order: ask the broker for this task's order first.
        earlier = await self._broker.find_order(client_id)
        if earlier is not None:
            return _describe(earlier) + " (found from an earlier attempt)"

        request = await self._order_for(signal, client_id)
        if request is None:
            return f"{signal.symbol} already flat; nothing to close"

        try:
            result = await self._broker.place_order(request)
        except BrokerRefusal as exc:
            # A business refusal (outside trading hours, no funds) will not
            # change on retry: give up at once with the broker's reason.
            raise PermanentTaskError(f"broker refused: {exc}") from exc
        self._count(result)

        return _describe(result)

    async def _order_for(self, signal: Signal, client_id: str) -> OrderRequest | None:
        if signal.action is Action.CLOSE:
            position = await self._broker.position(signal.symbol)
            if position.size == 0:
                return None
            size = abs(position.size)
            if signal.quantity is not None:
                size = min(size, signal.quantity)
            side = Side.SELL if position.size > 0 else Side.BUY
            return OrderRequest(signal.symbol, side, size, client_id)

        assert signal.quantity is not None  # parse_signal requires it for entries
        side = Side.BUY if signal.action is Action.BUY else Side.SELL
        return OrderRequest(signal.symbol, side, signal.quantity, client_id)

    def _count(self, result: OrderResult) -> None:
        if self._metrics is None:
            return
        broker = self._broker.name
        self._metrics.orders.labels(broker, result.side.value, result.status).inc()
        if result.filled_size:
            self._metrics.fills.labels(broker, result.symbol).inc(result.filled_size)


def _describe(result: OrderResult) -> str:
    price = f" @ {result.fill_price:g}" if result.fill_price is not None else ""
    return (
        f"{result.side.value} {result.size} {result.symbol} {result.status.value}"
        f"{price} (order {result.order_id})"
    )
