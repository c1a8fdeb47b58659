"""The ProjectX Gateway simulator over HTTP: wire format, auth, limits, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from quart.typing import TestClientProtocol as Client
from trio.testing import MockClock

from trading_daemon.projectx_simulator import (
    SimulatedConnectionDrop,
    SimulatorState,
    create_simulator_app,
    serve_simulator,
)

MNQ = "CON.F.US.MNQ.H25"
ACCOUNT = 1001
SINCE = {"accountId": ACCOUNT, "startTimestamp": "2025-01-01T00:00:00Z"}
Json = dict[str, Any]


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState(user_name="trader", api_key="key-123")


@pytest.fixture
def client(state: SimulatorState) -> Client:
    return create_simulator_app(state).test_client()


async def login(client: Client) -> dict[str, str]:
    response = await client.post(
        "/api/Auth/loginKey", json={"userName": "trader", "apiKey": "key-123"}
    )
    body = await response.get_json()
    return {"Authorization": f"Bearer {body['token']}"}


async def call(client: Client, path: str, auth: dict[str, str], body: Json) -> Json:
    """POST to /api/<path> and return the JSON envelope of a 200 answer."""
    response = await client.post(f"/api/{path}", json=body, headers=auth)
    assert response.status_code == 200, await response.get_data(as_text=True)
    answer: Json = await response.get_json()
    return answer


def market(side: int, size: int, **extra: Any) -> Json:
    return {
        "accountId": ACCOUNT,
        "contractId": MNQ,
        "type": 2,
        "side": side,
        "size": size,
        **extra,
    }


async def test_ping_answers_pong(client: Client) -> None:
    """GET /api/Status/ping answers "pong" without a token."""
    response = await client.get("/api/Status/ping")

    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "pong"


async def test_login_good_credentials_return_token(
    client: Client,
) -> None:
    """loginKey with the configured credentials returns a token in the envelope."""
    response = await client.post(
        "/api/Auth/loginKey", json={"userName": "trader", "apiKey": "key-123"}
    )

    body = await response.get_json()
    assert body["success"] is True
    assert body["errorCode"] == 0 and body["errorMessage"] is None
    assert isinstance(body["token"], str) and len(body["token"]) > 20


async def test_login_bad_key_is_http_200_failure(client: Client) -> None:
    """A wrong API key is HTTP 200, success false, errorCode 3, token null."""
    response = await client.post(
        "/api/Auth/loginKey", json={"userName": "trader", "apiKey": "wrong"}
    )

    body = await response.get_json()
    assert response.status_code == 200
    assert (body["success"], body["errorCode"], body["token"]) == (False, 3, None)
    assert body["errorMessage"]


async def test_login_unknown_user_is_error_code_1(client: Client) -> None:
    """An unknown userName is HTTP 200 with errorCode 1 (UserNotFound)."""
    body = await call(
        client, "Auth/loginKey", {}, {"userName": "nobody", "apiKey": "key-123"}
    )

    assert (body["success"], body["errorCode"]) == (False, 1)


async def test_auth_missing_token_is_bare_401(client: Client) -> None:
    """Without a token an endpoint answers 401 with no JSON envelope."""
    response = await client.post("/api/Account/search", json={})

    assert response.status_code == 401
    assert await response.get_data(as_text=True) == ""


async def test_auth_unknown_token_is_401(client: Client) -> None:
    """A token the simulator never issued is refused with 401."""
    response = await client.post(
        "/api/Account/search",
        json={"onlyActiveAccounts": True},
        headers={"Authorization": "Bearer made-up"},
    )

    assert response.status_code == 401


async def test_auth_token_expires_after_24h(
    client: Client, autojump_clock: MockClock
) -> None:
    """A token stops working after 24 h of trio time."""
    auth = await login(client)
    body = {"onlyActiveAccounts": True}
    await trio.sleep(24 * 3600 - 5)
    ok = await client.post("/api/Account/search", json=body, headers=auth)

    await trio.sleep(10)
    expired = await client.post("/api/Account/search", json=body, headers=auth)

    assert ok.status_code == 200
    assert expired.status_code == 401


async def test_auth_validate_returns_working_new_token(
    client: Client, autojump_clock: MockClock
) -> None:
    """Auth/validate returns a newToken that outlives the first one."""
    auth = await login(client)
    await trio.sleep(23 * 3600)
    body = await call(client, "Auth/validate", auth, {})
    fresh = {"Authorization": f"Bearer {body['newToken']}"}

    await trio.sleep(2 * 3600)
    old = await client.post("/api/Account/search", json={}, headers=auth)
    new = await client.post(
        "/api/Account/search", json={"onlyActiveAccounts": True}, headers=fresh
    )

    assert old.status_code == 401
    assert new.status_code == 200


async def test_fault_forced_token_expiry_gives_401(
    client: Client,
) -> None:
    """POST /_sim/expireTokens invalidates every token; a new login works."""
    auth = await login(client)

    control = await client.post("/_sim/expireTokens")
    refused = await client.post("/api/Account/search", json={}, headers=auth)
    again = await login(client)
    accepted = await client.post(
        "/api/Account/search", json={"onlyActiveAccounts": True}, headers=again
    )

    assert (await control.get_json())["expiredTokens"] == 1
    assert refused.status_code == 401
    assert accepted.status_code == 200


async def test_account_search_lists_default_account(
    client: Client,
) -> None:
    """Account/search returns account 1001 with the gateway's field names."""
    auth = await login(client)

    body = await call(client, "Account/search", auth, {"onlyActiveAccounts": True})

    assert body["accounts"] == [
        {
            "id": 1001,
            "name": "PRAC-V2-SIM-1",
            "balance": 50000.0,
            "canTrade": True,
            "isVisible": True,
            "simulated": True,
        }
    ]


async def test_contract_search_includes_inactive_later_month(
    client: Client,
) -> None:
    """Contract/search "NQ" returns MNQ and ENQ, the later months inactive."""
    auth = await login(client)

    body = await call(
        client, "Contract/search", auth, {"searchText": "NQ", "live": False}
    )

    by_id = {c["id"]: c for c in body["contracts"]}
    assert by_id[MNQ] == {
        "id": MNQ,
        "name": "MNQH25",
        "description": "Micro E-mini Nasdaq-100: March 2025",
        "tickSize": 0.25,
        "tickValue": 0.5,
        "activeContract": True,
        "symbolId": "F.US.MNQ",
    }
    assert by_id["CON.F.US.MNQ.M25"]["activeContract"] is False
    assert by_id["CON.F.US.ENQ.H25"]["tickValue"] == 5.0


async def test_contract_roll_via_control_moves_active_month(
    client: Client,
) -> None:
    """POST /_sim/roll makes M25 the active MNQ month and H25 inactive."""
    auth = await login(client)

    rolled = await client.post("/_sim/roll", json={"symbolId": "F.US.MNQ"})
    body = await call(
        client, "Contract/search", auth, {"searchText": "MNQ", "live": False}
    )

    assert (await rolled.get_json())["activeContractId"] == "CON.F.US.MNQ.M25"
    active = {c["id"]: c["activeContract"] for c in body["contracts"]}
    assert active == {
        MNQ: False,
        "CON.F.US.MNQ.M25": True,
        "CON.F.US.MNQ.U25": False,
    }


async def test_market_order_fills_into_position_and_trades(
    client: Client,
) -> None:
    """A market buy then sell gives a position, then two trades with P&L on exit."""
    auth = await login(client)

    placed = await call(client, "Order/place", auth, market(0, 2))
    positions = await call(client, "Position/searchOpen", auth, {"accountId": ACCOUNT})
    await client.post("/_sim/price", json={"contractId": MNQ, "price": 21012.5})
    await call(client, "Order/place", auth, market(1, 2))
    trades = await call(client, "Trade/search", auth, SINCE)

    assert placed["success"] is True and isinstance(placed["orderId"], int)
    [position] = positions["positions"]
    assert (position["type"], position["size"], position["averagePrice"]) == (
        1,
        2,
        21000.0,
    )
    opening, closing = trades["trades"]
    assert opening["profitAndLoss"] is None and opening["orderId"] == placed["orderId"]
    assert closing["profitAndLoss"] == 50 * 0.5 * 2
    assert closing["fees"] == 0.74 and closing["voided"] is False
    assert closing["creationTimestamp"].endswith("+00:00")


async def test_limit_order_rests_then_fills_on_price_move(
    client: Client,
) -> None:
    """A sell limit above the market stays Open until /_sim/price crosses it."""
    auth = await login(client)
    limit = {**market(1, 1), "type": 1, "limitPrice": 21010.0}
    order_id = (await call(client, "Order/place", auth, limit))["orderId"]
    resting = await call(client, "Order/searchOpen", auth, {"accountId": ACCOUNT})

    moved = await client.post("/_sim/price", json={"contractId": MNQ, "price": 21011})
    orders = await call(client, "Order/search", auth, SINCE)

    assert [(o["id"], o["status"]) for o in resting["orders"]] == [(order_id, 1)]
    assert (await moved.get_json())["filledOrderIds"] == [order_id]
    [order] = orders["orders"]
    assert (order["status"], order["fillVolume"], order["filledPrice"]) == (
        2,
        1,
        21010.0,
    )


async def test_cancel_order_gives_status_3(client: Client) -> None:
    """Order/cancel turns a resting order's status to 3 (Cancelled)."""
    auth = await login(client)
    limit = {**market(0, 1), "type": 1, "limitPrice": 20900.0}
    order_id = (await call(client, "Order/place", auth, limit))["orderId"]

    cancelled = await call(
        client, "Order/cancel", auth, {"accountId": ACCOUNT, "orderId": order_id}
    )
    again = await call(
        client, "Order/cancel", auth, {"accountId": ACCOUNT, "orderId": order_id}
    )
    orders = await call(client, "Order/search", auth, SINCE)

    assert cancelled["success"] is True
    assert (again["success"], again["errorCode"]) == (False, 3)
    assert orders["orders"][0]["status"] == 3


async def test_modify_order_changes_limit_price(client: Client) -> None:
    """Order/modify moves a resting limit and updates updateTimestamp."""
    auth = await login(client)
    limit = {**market(0, 1), "type": 1, "limitPrice": 20900.0}
    order_id = (await call(client, "Order/place", auth, limit))["orderId"]

    body = {"accountId": ACCOUNT, "orderId": order_id, "limitPrice": 20950.0}
    modified = await call(client, "Order/modify", auth, body)
    [order] = (await call(client, "Order/searchOpen", auth, {"accountId": ACCOUNT}))[
        "orders"
    ]

    assert modified["success"] is True
    assert order["limitPrice"] == 20950.0 and order["updateTimestamp"] is not None


async def test_custom_tag_duplicate_refused_with_code_2(
    client: Client,
) -> None:
    """A reused customTag is HTTP 200, success false, errorCode 2, with a message."""
    auth = await login(client)
    await call(client, "Order/place", auth, market(0, 1, customTag="tv-42"))

    body = await call(client, "Order/place", auth, market(0, 1, customTag="tv-42"))

    assert (body["success"], body["errorCode"], body["orderId"]) == (False, 2, None)
    assert "tv-42" in body["errorMessage"]


async def test_brackets_place_protective_orders(client: Client) -> None:
    """stopLossBracket and takeProfitBracket leave a stop and a limit resting."""
    auth = await login(client)
    order = market(
        0,
        1,
        stopLossBracket={"ticks": -10, "type": 4},
        takeProfitBracket={"ticks": 20, "type": 1},
    )

    await call(client, "Order/place", auth, order)
    open_orders = await call(client, "Order/searchOpen", auth, {"accountId": ACCOUNT})

    summary = [
        (o["type"], o["side"], o["stopPrice"], o["limitPrice"])
        for o in open_orders["orders"]
    ]
    assert summary == [(4, 1, 20997.5, None), (1, 1, None, 21005.0)]


async def test_outside_trading_hours_refuses_place(
    client: Client,
) -> None:
    """With outsideTradingHours on, Order/place answers errorCode 5."""
    auth = await login(client)
    await client.post("/_sim/faults", json={"outsideTradingHours": True})

    body = await call(client, "Order/place", auth, market(0, 1))

    assert (body["success"], body["errorCode"]) == (False, 5)
    orders = await call(client, "Order/search", auth, SINCE)
    assert orders["orders"] == []


async def test_partial_close_reduces_position(client: Client) -> None:
    """partialCloseContract takes 1 off a 3-lot and returns no order id."""
    auth = await login(client)
    await call(client, "Order/place", auth, market(0, 3))
    close = {"accountId": ACCOUNT, "contractId": MNQ, "size": 1}

    body = await call(client, "Position/partialCloseContract", auth, close)
    positions = await call(client, "Position/searchOpen", auth, {"accountId": ACCOUNT})

    assert body == {"success": True, "errorCode": 0, "errorMessage": None}
    assert positions["positions"][0]["size"] == 2


async def test_close_contract_flattens(client: Client) -> None:
    """closeContract flattens the position; a second close is PositionNotFound."""
    auth = await login(client)
    await call(client, "Order/place", auth, market(1, 2))
    close = {"accountId": ACCOUNT, "contractId": MNQ}

    first = await call(client, "Position/closeContract", auth, close)
    second = await call(client, "Position/closeContract", auth, close)
    positions = await call(client, "Position/searchOpen", auth, {"accountId": ACCOUNT})

    assert first == {"success": True, "errorCode": 0, "errorMessage": None}
    assert (second["success"], second["errorCode"]) == (False, 2)
    assert positions["positions"] == []


async def test_rate_limit_429_past_200_in_60s(
    client: Client, autojump_clock: MockClock
) -> None:
    """The 201st request within 60 s gets 429 with Retry-After; later ones pass."""
    auth = await login(client)
    body = {"accountId": ACCOUNT}
    statuses = []
    for _ in range(200):
        response = await client.post("/api/Order/searchOpen", json=body, headers=auth)
        statuses.append(response.status_code)
        await trio.sleep(0.1)

    limited = await client.post("/api/Order/searchOpen", json=body, headers=auth)
    await trio.sleep(int(limited.headers["Retry-After"]))
    after_wait = await client.post("/api/Order/searchOpen", json=body, headers=auth)

    assert statuses == [200] * 200
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert after_wait.status_code == 200


async def test_rate_limit_is_per_token(
    client: Client, autojump_clock: MockClock
) -> None:
    """One token's exhausted budget does not limit another token."""
    first, second = await login(client), await login(client)
    body = {"accountId": ACCOUNT}
    for _ in range(200):
        await client.post("/api/Order/searchOpen", json=body, headers=first)

    limited = await client.post("/api/Order/searchOpen", json=body, headers=first)
    other = await client.post("/api/Order/searchOpen", json=body, headers=second)

    assert limited.status_code == 429
    assert other.status_code == 200


async def test_fault_latency_delays_answer(
    client: Client, autojump_clock: MockClock
) -> None:
    """latencySeconds delays every gateway answer by that much trio time."""
    await client.post("/_sim/faults", json={"latencySeconds": 2.5})

    started = trio.current_time()
    response = await client.get("/api/Status/ping")

    assert response.status_code == 200
    assert trio.current_time() - started == pytest.approx(2.5)


async def test_fault_server_errors_follow_seed() -> None:
    """A 30% 5xx share gives the same answers for the same seed."""

    async def statuses(seed: int) -> list[int]:
        state = SimulatorState(seed=seed)
        state.faults.server_error_rate = 0.3
        client = create_simulator_app(state).test_client()
        return [(await client.get("/api/Status/ping")).status_code for _ in range(50)]

    first, second = await statuses(7), await statuses(7)

    assert first == second
    assert set(first) == {200, 503}
    assert 5 <= first.count(503) <= 30


async def test_fault_server_error_status_configurable(
    client: Client,
) -> None:
    """serverErrorRate 1 with status 502 answers every call with 502."""
    await client.post(
        "/_sim/faults", json={"serverErrorRate": 1.0, "serverErrorStatus": 502}
    )

    response = await client.post(
        "/api/Auth/loginKey", json={"userName": "trader", "apiKey": "key-123"}
    )

    assert response.status_code == 502


async def test_fault_drop_after_place_keeps_order(
    client: Client, state: SimulatorState, autojump_clock: MockClock
) -> None:
    """With a drop armed the order is placed but the answer is lost, once."""
    auth = await login(client)
    state.faults.drop_place_responses = 1

    # fail_after turns a hang (an answer neither sent nor cut) into a failure.
    with trio.fail_after(60), pytest.RaisesGroup(SimulatedConnectionDrop):
        await client.post(
            "/api/Order/place", json=market(0, 1, customTag="lost"), headers=auth
        )
    orders = await call(client, "Order/search", auth, SINCE)
    retry = await call(client, "Order/place", auth, market(0, 1, customTag="next"))

    assert [o["customTag"] for o in orders["orders"]] == ["lost"]
    assert retry["success"] is True
    assert state.call_count("Order/place") == 2


async def test_fault_control_rejects_bad_values(client: Client) -> None:
    """/_sim/faults refuses a bad value with 400 and changes nothing."""
    response = await client.post(
        "/_sim/faults", json={"latencySeconds": 1.0, "serverErrorRate": 1.5}
    )
    current = await (await client.get("/_sim/faults")).get_json()

    assert response.status_code == 400
    assert "serverErrorRate" in (await response.get_json())["error"]
    assert current["latencySeconds"] == 0.0


async def test_fault_control_rejects_non_finite_latency(client: Client) -> None:
    """/_sim/faults refuses NaN latency, which JSON cannot carry, with 400."""
    response = await client.post(
        "/_sim/faults",
        data='{"latencySeconds": NaN}',
        headers={"Content-Type": "application/json"},
    )
    current = await (await client.get("/_sim/faults")).get_json()

    assert response.status_code == 400
    assert current["latencySeconds"] == 0.0


async def test_call_counts_per_endpoint(client: Client, state: SimulatorState) -> None:
    """Each endpoint's calls are counted, refusals included."""
    auth = await login(client)
    await call(client, "Order/place", auth, market(0, 1))
    await client.post("/api/Account/search", json={})

    calls = await (await client.get("/_sim/calls")).get_json()

    assert state.call_count("Order/place") == 1
    assert state.call_count("Order/cancel") == 0
    assert calls["calls"] == {
        "Auth/loginKey": 1,
        "Order/place": 1,
        "Account/search": 1,
    }


async def test_validation_missing_field_is_400_problem(
    client: Client,
) -> None:
    """A request without a required field gets a 400 naming the field."""
    auth = await login(client)

    response = await client.post(
        "/api/Order/place", json={"accountId": ACCOUNT}, headers=auth
    )

    body = await response.get_json()
    assert response.status_code == 400
    assert "contractId" in body["errors"]


async def test_unknown_endpoint_is_404(client: Client) -> None:
    """An endpoint the gateway does not have answers 404 and is not counted."""
    response = await client.post("/api/Order/teleport", json={})

    assert response.status_code == 404


@asynccontextmanager
async def running_simulator(state: SimulatorState) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 port 0, yield the base URL, then shut down cleanly."""
    stop = trio.Event()
    finished = trio.Event()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        await serve_simulator(
            "127.0.0.1", 0, state, shutdown_trigger=stop.wait, task_status=task_status
        )
        finished.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(run)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                stop.set()
    assert finished.is_set()


async def test_serve_simulator_loopback_round_trip(state: SimulatorState) -> None:
    """Over a real socket: login, place a market order, see the position."""
    async with (
        running_simulator(state) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        login = await http.post(
            "/api/Auth/loginKey", json={"userName": "trader", "apiKey": "key-123"}
        )
        auth = {"Authorization": f"Bearer {login.json()['token']}"}
        placed = await http.post("/api/Order/place", json=market(0, 1), headers=auth)
        unauthorised = await http.post("/api/Position/searchOpen", json={})

    assert placed.json()["success"] is True
    assert unauthorised.status_code == 401
    assert state.open_positions(ACCOUNT)[0].size == 1


async def test_serve_simulator_drop_after_place_is_transport_error(
    state: SimulatorState,
) -> None:
    """Over a real socket a dropped answer is a prompt transport error."""
    state.faults.drop_place_responses = 1
    async with (
        running_simulator(state) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        token = state.login("trader", "key-123")
        auth = {"Authorization": f"Bearer {token}"}
        started = trio.current_time()
        with pytest.raises(httpx.TransportError) as error:
            await http.post(
                "/api/Order/place", json=market(0, 1, customTag="x"), headers=auth
            )
        elapsed = trio.current_time() - started
        lookup = await http.post("/api/Order/search", json=SINCE, headers=auth)

    # A cut connection, not the client's 5 s timeout running out.
    assert not isinstance(error.value, httpx.TimeoutException)
    assert elapsed < 2
    assert [o["customTag"] for o in lookup.json()["orders"]] == ["x"]
    assert state.call_count("Order/place") == 1


async def test_serve_simulator_keeps_connection_usable_after_5xx(
    state: SimulatorState,
) -> None:
    """Injected 5xx answers leave a kept-alive connection usable for the next call."""
    state.faults.server_error_rate = 1.0
    async with (
        running_simulator(state) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=2) as http,
    ):
        statuses = [
            (await http.post("/api/Order/place", json=market(0, 1))).status_code
            for _ in range(5)
        ]

    assert statuses == [state.faults.server_error_status] * 5
    assert state.faults.server_error_status >= 500
