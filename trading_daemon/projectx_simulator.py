"""A local ProjectX Gateway (TopstepX) REST simulator, served over loopback.

The app speaks the gateway's wire format (field names, error codes, 401 without
an envelope, 429 with Retry-After) on top of the in-memory `SimulatorState`, so
the daemon's ProjectX adapter can be exercised without the real service.
Tests and operators steer it through `SimulatorState` or the `/_sim/...` HTTP
control endpoints: price moves, contract rolls and fault injection.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from loguru import logger
from quart import Response, request
from quart_trio import QuartTrio

from trading_daemon.projectx_sim_state import (
    Account,
    Bracket,
    Contract,
    GatewayRefusal,
    Order,
    OrderSide,
    OrderType,
    Position,
    SimulatorState,
    Trade,
)

__all__ = [
    "SimulatedConnectionDrop",
    "SimulatorState",
    "create_simulator_app",
    "serve_simulator",
    "serve_until_signal",
]

Json = dict[str, Any]

# hypercorn logs an app failure as an error with a traceback; the deliberate
# drop is not one, so its records are filtered out of the stdlib logger we
# hand to hypercorn.
_server_log = logging.getLogger(f"{__name__}.server")

# Set by a handler whose answer must be lost; the app strips it again.
_DROP_HEADER = "x-projectx-sim-drop"
_MAX_BODY_BYTES = 64 * 1024


class SimulatedConnectionDrop(Exception):
    """Ends a request whose Order/place answer is deliberately lost."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, SimulatedConnectionDrop)


_server_log.addFilter(_DropFilter())


class _BadField(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class _SimulatorApp(QuartTrio):
    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        # ASGI has no "abort" message and hypercorn answers 500 to an app that
        # fails before the response head. So send the head and swallow the
        # body: hypercorn closes a connection whose body was cut short, and
        # the client sees a transport error at once, not a late timeout. The
        # exception afterwards does the same for Quart's in-memory test
        # client, which would otherwise wait for the body forever.
        dropped = False

        async def guarded_send(message: Any) -> None:
            nonlocal dropped
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                kept = [h for h in headers if h[0].lower() != _DROP_HEADER.encode()]
                dropped = len(kept) != len(headers)
                message = {**message, "headers": kept}
            elif dropped:
                return
            await send(message)

        await super().asgi_app(scope, receive, guarded_send)
        if dropped:
            logger.info("projectx_simulator.place_answer_dropped")
            raise SimulatedConnectionDrop("simulated loss of the Order/place answer")


def create_simulator_app(state: SimulatorState) -> QuartTrio:
    """The gateway's REST API under /api and the simulator's controls under /_sim."""
    app = _SimulatorApp(__name__)
    # quart#425: Quart's own limit is the one that bounds request bodies.
    app.config["MAX_CONTENT_LENGTH"] = _MAX_BODY_BYTES

    @app.get("/api/Status/ping")
    async def ping() -> Response:
        return await _gateway(state, "Status/ping", None)

    @app.post("/api/<path:name>")
    async def api(name: str) -> Response:
        endpoint = _ENDPOINTS.get(name)
        if endpoint is None:
            return Response(f"no endpoint /api/{name}", 404, mimetype="text/plain")
        return await _gateway(state, name, endpoint)

    @app.post("/_sim/price")
    async def control_price() -> Response:
        return await _control(state, _set_price)

    @app.post("/_sim/roll")
    async def control_roll() -> Response:
        return await _control(state, _roll)

    @app.get("/_sim/faults")
    async def control_faults() -> Response:
        return _json(_faults_json(state))

    @app.post("/_sim/faults")
    async def control_set_faults() -> Response:
        return await _control(state, _set_faults)

    @app.post("/_sim/expireTokens")
    async def control_expire_tokens() -> Response:
        return _json({"expiredTokens": state.expire_all_tokens()})

    @app.get("/_sim/calls")
    async def control_calls() -> Response:
        return _json({"calls": dict(state.calls)})

    @app.post("/_sim/calls/reset")
    async def control_reset_calls() -> Response:
        state.calls.clear()
        return _json({"calls": {}})

    return app


async def serve_simulator(
    host: str,
    port: int,
    state: SimulatorState,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator until `shutdown_trigger` returns.

    Reports the bound port through `task_status` once listening, so port 0
    picks a free one.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # hypercorn's default backlog of 100 overflows silently under a burst.
    config.backlog = 1024
    config.accesslog = None
    # hypercorn replaces the handlers of loggers it creates (#120): give it ours.
    config.errorlog = _server_log
    app = create_simulator_app(state)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=shutdown_trigger)
        )
        # hypercorn reports binds as "http://127.0.0.1:PORT" or "http://[::1]:PORT".
        bound_port = int(binds[0].rsplit(":", 1)[1])
        logger.bind(host=host, port=bound_port).info("projectx_simulator.listening")
        task_status.started(bound_port)


async def serve_until_signal(host: str, port: int, state: SimulatorState) -> None:
    """Serve until SIGINT or SIGTERM (``trading-daemon simulate-projectx``)."""
    stop = trio.Event()
    # Listening before serving: a signal that arrives early still stops cleanly
    # instead of killing the process without its finally blocks.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(serve_simulator, host, port, state, shutdown_trigger=stop.wait)
            )
            async for signum in signals:
                logger.bind(signal=signal.Signals(signum).name).info(
                    "projectx_simulator.stopping"
                )
                stop.set()
                break


# -- the gateway front: counting, faults, auth, rate limit ------------------


async def _gateway(
    state: SimulatorState, name: str, endpoint: _Endpoint | None
) -> Response:
    state.calls[name] += 1
    response = await _answer(state, name, endpoint)
    # The request has taken effect; only its answer is late, which is the
    # case a client must handle without resending an order blindly.
    if state.faults.latency_s > 0:
        await trio.sleep(state.faults.latency_s)
    return response


async def _answer(
    state: SimulatorState, name: str, endpoint: _Endpoint | None
) -> Response:
    # Read the whole body before any early answer: an unread body left on a
    # kept-alive connection stalls the client's next request on it.
    await request.get_data()
    if state.draw_server_error():
        status = state.faults.server_error_status
        return Response("simulated server error", status, mimetype="text/plain")
    if endpoint is None:
        return Response("pong", 200, mimetype="text/plain")
    token: str | None = None
    if endpoint.authenticated:
        token = _bearer_token()
        if token is None or not state.token_valid(token):
            # The gateway answers a missing or stale token with a bare 401.
            return Response("", 401, {"WWW-Authenticate": "Bearer"})
        retry_after = state.admit(token)
        if retry_after is not None:
            return _too_many_requests(state, retry_after)

    body = await request.get_json(force=True, silent=True)
    if body is None and endpoint.needs_body:
        return _problem({"body": ["A non-empty JSON request body is required."]})
    if not isinstance(body, dict):
        body = {}
    try:
        payload = endpoint.handler(state, token, body)
    except _BadField as error:
        return _problem({error.name: [error.message]})
    except GatewayRefusal as refusal:
        failure = dict.fromkeys(endpoint.result_fields)
        return _json(_envelope(failure, refusal.error_code, refusal.message))

    response = _json(_envelope(payload, 0, None))
    if name == "Order/place" and state.take_place_drop():
        response.headers[_DROP_HEADER] = "1"
    return response


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _too_many_requests(state: SimulatorState, retry_after: float) -> Response:
    seconds = max(1, math.ceil(retry_after))
    message = (
        f"rate limit of {state.rate_limit} requests per"
        f" {state.rate_window_s:g} s exceeded; retry in {seconds} s"
    )
    return Response(message, 429, {"Retry-After": str(seconds)}, mimetype="text/plain")


def _envelope(payload: Json, code: int, message: str | None) -> Json:
    return {
        **payload,
        "success": code == 0,
        "errorCode": int(code),
        "errorMessage": message,
    }


def _json(payload: Json, status: int = 200) -> Response:
    return Response(json.dumps(payload), status, mimetype="application/json")


def _problem(errors: dict[str, list[str]]) -> Response:
    # Malformed requests fail in ASP.NET model binding before the gateway's
    # own code runs, so they get a validation problem, not an envelope.
    problem = {
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": errors,
    }
    return _json(problem, 400)


# -- request fields ------------------------------------------------------------


def _optional(body: Json, name: str, kind: type[Any]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    allowed: tuple[type[Any], ...] = (int, float) if kind is float else (kind,)
    # bool is an int in Python but not in JSON.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, allowed):
        raise _BadField(name, f"{name} must be a JSON {kind.__name__}, got {value!r}")
    # Python's json module reads NaN and Infinity; JSON (and .NET) has neither.
    if isinstance(value, float) and not math.isfinite(value):
        raise _BadField(name, f"{name} must be a finite number, got {value!r}")
    return value


def _required(body: Json, name: str, kind: type[Any]) -> Any:
    value = _optional(body, name, kind)
    if value is None:
        raise _BadField(name, f"The {name} field is required.")
    return value


def _int(body: Json, name: str) -> int:
    return int(_required(body, name, int))


def _opt_int(body: Json, name: str) -> int | None:
    value = _optional(body, name, int)
    return None if value is None else int(value)


def _opt_float(body: Json, name: str) -> float | None:
    value = _optional(body, name, float)
    return None if value is None else float(value)


def _str(body: Json, name: str) -> str:
    return str(_required(body, name, str))


def _timestamp_field(body: Json, name: str, *, required: bool) -> datetime | None:
    text = (_required if required else _optional)(body, name, str)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _BadField(
            name, f"{name} must be an ISO 8601 time, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_Choice = TypeVar("_Choice", OrderType, OrderSide)


def _enum_field(body: Json, name: str, kind: type[_Choice]) -> _Choice:
    value = _int(body, name)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(f"{m.value} {m.name}" for m in kind)
        raise _BadField(name, f"{name} must be one of {allowed}; got {value}") from None


def _bracket_field(body: Json, name: str) -> Bracket | None:
    value = _optional(body, name, dict)
    if value is None:
        return None
    ticks = _required(value, "ticks", int)
    order_type = _enum_field(value, "type", OrderType)
    return Bracket(int(ticks), order_type)


# -- wire format -----------------------------------------------------------------


def _stamp(moment: datetime | None) -> str | None:
    # The gateway writes "2025-01-21T16:13:52.523293+00:00".
    return None if moment is None else moment.isoformat()


def _account_json(account: Account) -> Json:
    return {
        "id": account.id,
        "name": account.name,
        "balance": account.balance,
        "canTrade": account.can_trade,
        "isVisible": account.is_visible,
        "simulated": account.simulated,
    }


def _contract_json(contract: Contract) -> Json:
    return {
        "id": contract.id,
        "name": contract.name,
        "description": contract.description,
        "tickSize": contract.tick_size,
        "tickValue": contract.tick_value,
        "activeContract": contract.active,
        "symbolId": contract.symbol_id,
    }


def _order_json(order: Order) -> Json:
    return {
        "id": order.id,
        "accountId": order.account_id,
        "contractId": order.contract_id,
        "symbolId": order.symbol_id,
        "creationTimestamp": _stamp(order.created),
        "updateTimestamp": _stamp(order.updated),
        "status": int(order.status),
        "type": int(order.type),
        "side": int(order.side),
        "size": order.size,
        "limitPrice": order.limit_price,
        "stopPrice": order.stop_price,
        "fillVolume": order.fill_volume,
        "filledPrice": order.filled_price,
        "customTag": order.custom_tag,
    }


def _position_json(position: Position) -> Json:
    return {
        "id": position.id,
        "accountId": position.account_id,
        "contractId": position.contract_id,
        "creationTimestamp": _stamp(position.created),
        "type": int(position.type),
        "size": position.size,
        "averagePrice": position.average_price,
    }


def _trade_json(trade: Trade) -> Json:
    return {
        "id": trade.id,
        "accountId": trade.account_id,
        "contractId": trade.contract_id,
        "creationTimestamp": _stamp(trade.created),
        "price": trade.price,
        "profitAndLoss": trade.profit_and_loss,
        "fees": trade.fees,
        "side": int(trade.side),
        "size": trade.size,
        "voided": trade.voided,
        "orderId": trade.order_id,
    }


# -- endpoint handlers: (state, token, body) -> payload ------------------------


def _login_key(state: SimulatorState, _token: str | None, body: Json) -> Json:
    return {"token": state.login(_str(body, "userName"), _str(body, "apiKey"))}


def _validate(state: SimulatorState, token: str | None, _body: Json) -> Json:
    assert token is not None  # authenticated endpoint
    return {"newToken": state.validate(token)}


def _logout(state: SimulatorState, token: str | None, _body: Json) -> Json:
    assert token is not None  # authenticated endpoint
    state.logout(token)
    return {}


def _search_accounts(state: SimulatorState, _token: str | None, body: Json) -> Json:
    only_active = bool(_required(body, "onlyActiveAccounts", bool))
    return {"accounts": [_account_json(a) for a in state.search_accounts(only_active)]}


def _search_contracts(state: SimulatorState, _token: str | None, body: Json) -> Json:
    _required(body, "live", bool)
    text = _optional(body, "searchText", str)
    return {"contracts": [_contract_json(c) for c in state.search_contracts(text)]}


def _place_order(state: SimulatorState, _token: str | None, body: Json) -> Json:
    order_id = state.place_order(
        _int(body, "accountId"),
        _str(body, "contractId"),
        _enum_field(body, "type", OrderType),
        _enum_field(body, "side", OrderSide),
        _int(body, "size"),
        limit_price=_opt_float(body, "limitPrice"),
        stop_price=_opt_float(body, "stopPrice"),
        custom_tag=_optional(body, "customTag", str),
        stop_loss=_bracket_field(body, "stopLossBracket"),
        take_profit=_bracket_field(body, "takeProfitBracket"),
    )
    return {"orderId": order_id}


def _cancel_order(state: SimulatorState, _token: str | None, body: Json) -> Json:
    state.cancel_order(_int(body, "accountId"), _int(body, "orderId"))
    return {}


def _modify_order(state: SimulatorState, _token: str | None, body: Json) -> Json:
    state.modify_order(
        _int(body, "accountId"),
        _int(body, "orderId"),
        size=_opt_int(body, "size"),
        limit_price=_opt_float(body, "limitPrice"),
        stop_price=_opt_float(body, "stopPrice"),
    )
    return {}


def _search_orders(state: SimulatorState, _token: str | None, body: Json) -> Json:
    start = _timestamp_field(body, "startTimestamp", required=True)
    assert start is not None  # required=True raised otherwise
    end = _timestamp_field(body, "endTimestamp", required=False)
    orders = state.search_orders(_int(body, "accountId"), start, end)
    return {"orders": [_order_json(o) for o in orders]}


def _search_open_orders(state: SimulatorState, _token: str | None, body: Json) -> Json:
    orders = state.open_orders(_int(body, "accountId"))
    return {"orders": [_order_json(o) for o in orders]}


def _search_positions(state: SimulatorState, _token: str | None, body: Json) -> Json:
    positions = state.open_positions(_int(body, "accountId"))
    return {"positions": [_position_json(p) for p in positions]}


def _close_contract(state: SimulatorState, _token: str | None, body: Json) -> Json:
    state.close_position(_int(body, "accountId"), _str(body, "contractId"))
    return {}


def _partial_close(state: SimulatorState, _token: str | None, body: Json) -> Json:
    state.partial_close_position(
        _int(body, "accountId"), _str(body, "contractId"), _int(body, "size")
    )
    return {}


def _search_trades(state: SimulatorState, _token: str | None, body: Json) -> Json:
    start = _timestamp_field(body, "startTimestamp", required=True)
    assert start is not None  # required=True raised otherwise
    end = _timestamp_field(body, "endTimestamp", required=False)
    trades = state.search_trades(_int(body, "accountId"), start, end)
    return {"trades": [_trade_json(t) for t in trades]}


_Handler = Callable[[SimulatorState, str | None, Json], Json]


@dataclass(frozen=True)
class _Endpoint:
    handler: _Handler
    # Answer fields, sent as null on a refusal as the gateway's DTOs do.
    result_fields: tuple[str, ...] = ()
    authenticated: bool = True
    needs_body: bool = True


_ENDPOINTS: dict[str, _Endpoint] = {
    "Auth/loginKey": _Endpoint(_login_key, ("token",), authenticated=False),
    "Auth/validate": _Endpoint(_validate, ("newToken",), needs_body=False),
    "Auth/logout": _Endpoint(_logout, needs_body=False),
    "Account/search": _Endpoint(_search_accounts, ("accounts",)),
    "Contract/search": _Endpoint(_search_contracts, ("contracts",)),
    "Order/place": _Endpoint(_place_order, ("orderId",)),
    "Order/cancel": _Endpoint(_cancel_order),
    "Order/modify": _Endpoint(_modify_order),
    "Order/search": _Endpoint(_search_orders, ("orders",)),
    "Order/searchOpen": _Endpoint(_search_open_orders, ("orders",)),
    "Position/searchOpen": _Endpoint(_search_positions, ("positions",)),
    "Position/closeContract": _Endpoint(_close_contract),
    "Position/partialCloseContract": _Endpoint(_partial_close),
    "Trade/search": _Endpoint(_search_trades, ("trades",)),
}


# -- control endpoints -----------------------------------------------------------


async def _control(
    state: SimulatorState, action: Callable[[SimulatorState, Json], Json]
) -> Response:
    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return _json({"error": "the request body must be a JSON object"}, 400)
    try:
        return _json(action(state, body))
    except _BadField as error:
        return _json({"error": error.message}, 400)
    except ValueError as error:
        return _json({"error": str(error)}, 400)


def _set_price(state: SimulatorState, body: Json) -> Json:
    contract_id = _str(body, "contractId")
    price = float(_required(body, "price", float))
    filled = state.set_price(contract_id, price)
    return {"contractId": contract_id, "price": price, "filledOrderIds": filled}


def _roll(state: SimulatorState, body: Json) -> Json:
    old = state.active_contract(_str(body, "symbolId"))
    new = state.roll(old.symbol_id)
    return {"previousContractId": old.id, "activeContractId": new.id}


def _set_faults(state: SimulatorState, body: Json) -> Json:
    latency = _opt_float(body, "latencySeconds")
    rate = _opt_float(body, "serverErrorRate")
    status = _opt_int(body, "serverErrorStatus")
    drops = _opt_int(body, "dropPlaceResponses")
    closed = _optional(body, "outsideTradingHours", bool)
    # Check everything before changing anything, so a bad field changes nothing.
    if latency is not None and latency < 0:
        raise ValueError(f"latencySeconds must be >= 0, got {latency}")
    if rate is not None and not 0 <= rate <= 1:
        raise ValueError(f"serverErrorRate must be between 0 and 1, got {rate}")
    if status is not None and not 500 <= status <= 599:
        raise ValueError(f"serverErrorStatus must be a 5xx status, got {status}")
    if drops is not None and drops < 0:
        raise ValueError(f"dropPlaceResponses must be >= 0, got {drops}")

    faults = state.faults
    faults.latency_s = faults.latency_s if latency is None else latency
    faults.server_error_rate = faults.server_error_rate if rate is None else rate
    faults.server_error_status = (
        faults.server_error_status if status is None else status
    )
    faults.drop_place_responses = (
        faults.drop_place_responses if drops is None else drops
    )
    faults.outside_trading_hours = (
        faults.outside_trading_hours if closed is None else bool(closed)
    )
    return _faults_json(state)


def _faults_json(state: SimulatorState) -> Json:
    faults = state.faults
    return {
        "latencySeconds": faults.latency_s,
        "serverErrorRate": faults.server_error_rate,
        "serverErrorStatus": faults.server_error_status,
        "dropPlaceResponses": faults.drop_place_responses,
        "outsideTradingHours": faults.outside_trading_hours,
    }
