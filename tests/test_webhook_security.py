"""Webhook security end to end: authentication, sources, limits, hostile input, leaks.

Most tests use quart's in-memory test client over a running daemon core (journal
and scheduler), with the real clock because the journal commits on a thread.
The leak test runs the whole daemon on a loopback socket, so that hypercorn's
and the access log's lines are part of what it checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import until
from venues import core

from trading_daemon.auth import TRADINGVIEW_ADDRESSES
from trading_daemon.cli import main
from trading_daemon.config import ConfigError, Settings, load_settings
from trading_daemon.daemon import Daemon
from trading_daemon.http_app import create_app

HOSTILE = Path(__file__).parent / "hostile"
CORPUS_PASSPHRASE = "corpus-passphrase-0123456789"

PASSPHRASE = "tv-passphrase-security-0042"
TOKEN = "bearer-token-security-0042"
ADMIN = "admin-token-security-0042"
KEY_OLD = base64.b64encode(b"old-key-for-webhook-security-00").decode()
KEY_NEW = base64.b64encode(b"new-key-for-webhook-security-00").decode()
SIGNING_OLD, SIGNING_NEW = "whsec_" + KEY_OLD, "whsec_" + KEY_NEW
SECURED: dict[str, Any] = {
    "webhook_secret": PASSPHRASE,
    "webhook_token": TOKEN,
    "webhook_signing_secrets": (SIGNING_NEW, SIGNING_OLD),
    "admin_token": ADMIN,
}

TV = TRADINGVIEW_ADDRESSES[0]
OUTSIDER = "203.0.113.50"
ALERT = {"action": "buy", "symbol": "MNQ1!", "quantity": "1"}


def body(**fields: Any) -> bytes:
    return json.dumps({**ALERT, **fields}).encode()


def sign(secret: str, data: bytes, *, at: float = 0, msg_id: str = "msg_1") -> dict:
    """Standard Webhooks headers, computed independently of the daemon."""
    stamp = str(int(at or time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + data, hashlib.sha256)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Daemon]:
    """A daemon's journal and scheduler, without its HTTP server."""
    async with core(Daemon(settings)) as daemon:
        yield daemon


class Client:
    """The in-memory test client, posting as a given peer address."""

    def __init__(self, daemon: Daemon) -> None:
        self._client = create_app(daemon).test_client()

    async def send(
        self,
        method: str,
        path: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        peer: str | None = "198.51.100.7",
    ) -> tuple[int, dict[str, Any], Any]:
        response = await self._client.open(
            path,
            method=method,
            data=data,
            headers={"Content-Type": "text/plain", **(headers or {})},
            scope_base={"client": (peer, 40000)} if peer else None,
        )
        return (
            response.status_code,
            json.loads(await response.get_data()),
            response.headers,
        )

    async def post(self, data: bytes, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        return await self.send("POST", "/webhook", data, **kwargs)


def assert_refused(answer: tuple[int, dict[str, Any], Any], status: int) -> str:
    code, data, headers = answer
    assert code == status, data
    assert set(data) == {"error"}
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    for secret in (PASSPHRASE, TOKEN, ADMIN, KEY_OLD, KEY_NEW):
        assert secret not in data["error"]
    error: str = data["error"]
    return error


# --- each authentication mode over HTTP ------------------------------------


async def test_webhook_passphrase_admits_and_refuses(tmp_path: Path) -> None:
    """Right passphrase: 202 and one task; wrong or missing: 401 and none."""
    async with running(Settings(state_dir=tmp_path, webhook_secret=PASSPHRASE)) as d:
        client = Client(d)
        good = await client.post(body(passphrase=PASSPHRASE))
        wrong = await client.post(body(passphrase="tv-passphrase-security-0043"))
        missing = await client.post(body(id="other"))

    assert good[0] == 202
    assert assert_refused(wrong, 401) == "unauthorized: passphrase does not match"
    assert assert_refused(missing, 401).startswith(
        "unauthorized: authentication required"
    )
    assert d.scheduler.stats.submitted == 1


async def test_webhook_passphrase_never_reaches_journal_or_signal(
    tmp_path: Path,
) -> None:
    """The passphrase is removed before dedup, journal and the signal's extras."""
    settings = Settings(state_dir=tmp_path, webhook_secret=PASSPHRASE)
    async with running(settings) as d:
        client = Client(d)
        first = await client.post(body(passphrase=PASSPHRASE, note="kept"))
        # Same alert, passphrase in the other field: one alert, so a duplicate.
        again = await client.post(body(secret=PASSPHRASE, note="kept"))
        await until(lambda: d.scheduler.stats.completed >= 1)
        task = await d.journal.load_task(first[1]["id"])

    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    dump = "\n".join(conn.iterdump())
    conn.close()

    assert (first[0], again[0], again[1]["status"]) == (202, 200, "duplicate")
    assert task is not None
    assert task.payload["signal"]["extra"] == {"note": "kept"}
    assert PASSPHRASE not in dump
    assert "kept" in dump


async def test_webhook_unreadable_body_is_401_unless_authenticated(
    tmp_path: Path,
) -> None:
    """Broken JSON cannot carry a passphrase: 401; with a bearer token it is 400."""
    async with running(Settings(state_dir=tmp_path, **SECURED)) as d:
        client = Client(d)
        anonymous = await client.post(b"{{strategy.order.action}}")
        with_token = await client.post(
            b"{{strategy.order.action}}", headers={"Authorization": f"Bearer {TOKEN}"}
        )

    assert_refused(anonymous, 401)
    assert with_token[0] == 400
    assert "not valid JSON" in with_token[1]["error"]


async def test_webhook_bearer_token_admits_and_refuses(tmp_path: Path) -> None:
    """Right bearer token: 202; wrong token: 401; no task for the refusal."""
    async with running(Settings(state_dir=tmp_path, webhook_token=TOKEN)) as d:
        client = Client(d)
        good = await client.post(body(), headers={"Authorization": f"Bearer {TOKEN}"})
        wrong = await client.post(
            body(id="x"), headers={"Authorization": f"Bearer {TOKEN}0"}
        )

    assert good[0] == 202
    assert assert_refused(wrong, 401) == "unauthorized: bearer token does not match"
    assert d.scheduler.stats.submitted == 1


async def test_webhook_signature_modes(tmp_path: Path) -> None:
    """Signed: valid 202, tampered 401, replay outside 5 min 401, rotation works."""
    settings = Settings(state_dir=tmp_path, webhook_signing_secrets=(SIGNING_NEW,))
    rotating = Settings(
        state_dir=tmp_path / "rotating",
        webhook_signing_secrets=(SIGNING_NEW, SIGNING_OLD),
    )
    data = body(id="signed-1")
    async with running(settings) as d:
        client = Client(d)
        valid = await client.post(data, headers=sign(SIGNING_NEW, data))
        tampered = await client.post(
            data.replace(b'"1"', b'"9"'), headers=sign(SIGNING_NEW, data)
        )
        replayed = await client.post(
            body(id="signed-2"),
            headers=sign(SIGNING_NEW, body(id="signed-2"), at=time.time() - 360),
        )
        early = await client.post(
            body(id="signed-3"),
            headers=sign(SIGNING_NEW, body(id="signed-3"), at=time.time() + 360),
        )
        retired = await client.post(
            body(id="signed-4"), headers=sign(SIGNING_OLD, body(id="signed-4"))
        )
    (tmp_path / "rotating").mkdir()
    async with running(rotating) as r:
        client = Client(r)
        old = await client.post(body(id="o"), headers=sign(SIGNING_OLD, body(id="o")))
        new = await client.post(body(id="n"), headers=sign(SIGNING_NEW, body(id="n")))

    assert valid[0] == 202
    assert "does not match" in assert_refused(tampered, 401)
    assert "old; the tolerance is 300 s" in assert_refused(replayed, 401)
    assert "in the future" in assert_refused(early, 401)
    assert "does not match" in assert_refused(retired, 401)
    assert d.scheduler.stats.submitted == 1
    assert (old[0], new[0]) == (202, 202)


# --- source addresses -------------------------------------------------------


async def test_tradingview_preset_without_proxy(tmp_path: Path) -> None:
    """Direct peers: TradingView's addresses pass, others get 403, XFF is ignored."""
    settings = Settings(state_dir=tmp_path, allowed_sources=("tradingview",))
    async with running(settings) as d:
        client = Client(d)
        answers = [
            await client.post(body(id=f"tv-{index}"), peer=address)
            for index, address in enumerate(TRADINGVIEW_ADDRESSES)
        ]
        outsider = await client.post(body(id="o1"), peer=OUTSIDER)
        spoofed = await client.post(
            body(id="o2"), peer=OUTSIDER, headers={"X-Forwarded-For": TV}
        )

    assert [a[0] for a in answers] == [202] * 4
    assert (
        assert_refused(outsider, 403) == f"forbidden: source {OUTSIDER} is not allowed"
    )
    assert (
        assert_refused(spoofed, 403) == f"forbidden: source {OUTSIDER} is not allowed"
    )
    assert d.scheduler.stats.submitted == 4


async def test_tradingview_preset_behind_trusted_proxy(tmp_path: Path) -> None:
    """Behind a trusted proxy the client is the proxy's last appended hop."""
    settings = Settings(
        state_dir=tmp_path,
        allowed_sources=("tradingview",),
        trusted_proxies=("127.0.0.1",),
    )
    proxy = "127.0.0.1"
    async with running(settings) as d:
        client = Client(d)
        via_proxy = await client.post(
            body(id="p1"), peer=proxy, headers={"X-Forwarded-For": TV}
        )
        outsider = await client.post(
            body(id="p2"), peer=proxy, headers={"X-Forwarded-For": OUTSIDER}
        )
        forged = await client.post(
            body(id="p3"), peer=proxy, headers={"X-Forwarded-For": f"{TV}, {OUTSIDER}"}
        )
        no_header = await client.post(body(id="p4"), peer=proxy)

    assert via_proxy[0] == 202
    assert OUTSIDER in assert_refused(outsider, 403)
    assert OUTSIDER in assert_refused(forged, 403)
    assert "127.0.0.1" in assert_refused(no_header, 403)
    assert d.scheduler.stats.submitted == 1


async def test_allowlist_does_not_replace_credentials(tmp_path: Path) -> None:
    """From an allowed address, a request still needs its credential."""
    settings = Settings(
        state_dir=tmp_path, allowed_sources=("tradingview",), webhook_secret=PASSPHRASE
    )
    async with running(settings) as d:
        answer = await Client(d).post(body(), peer=TV)

    assert_refused(answer, 401)


# --- limits -----------------------------------------------------------------


async def test_webhook_body_over_limit_is_413(tmp_path: Path) -> None:
    """64 KiB + 1 with Content-Length is refused with 413 and makes no task."""
    pad = body(pad="")
    big = pad[:-2] + b"x" * (65537 - len(pad)) + b'"}'
    async with running(Settings(state_dir=tmp_path)) as d:
        answer = await Client(d).post(big)

    assert len(big) == 65537
    assert answer[0] == 413
    assert "65536 byte limit" in answer[1]["error"]
    assert d.scheduler.stats.submitted == 0


async def test_webhook_rate_limit_429_with_retry_after(tmp_path: Path) -> None:
    """Past the per-source limit: 429 and Retry-After, before the body is read."""
    settings = Settings(state_dir=tmp_path, rate_limit=3, webhook_secret=PASSPHRASE)
    async with running(settings) as d:
        client = Client(d)
        first = [await client.post(b"not json", peer=OUTSIDER) for _ in range(3)]
        limited = await client.post(b"x" * 70_000, peer=OUTSIDER)
        other = await client.post(body(passphrase=PASSPHRASE), peer=TV)

    assert [a[0] for a in first] == [401] * 3
    # 429, not 413: refused before the (oversized) body was looked at.
    assert limited[0] == 429
    assert limited[2]["Retry-After"] == "20"
    assert "more than 3 requests a minute from 203.0.113.50" in limited[1]["error"]
    assert other[0] == 202
    assert d.scheduler.stats.submitted == 1


# --- admin endpoints and /status --------------------------------------------


async def test_admin_endpoints_need_the_admin_token(tmp_path: Path) -> None:
    """Replay: 403 without a configured token; 401 without or with a wrong one."""
    async with running(Settings(state_dir=tmp_path / "a")) as open_daemon:
        disabled = await Client(open_daemon).send("POST", "/dead-letters/t1/replay")
    (tmp_path / "b").mkdir()
    async with running(Settings(state_dir=tmp_path / "b", admin_token=ADMIN)) as d:
        client = Client(d)
        anonymous = await client.send("POST", "/dead-letters/t1/replay")
        wrong = await client.send(
            "POST",
            "/dead-letters/t1/replay",
            headers={"Authorization": f"Bearer {ADMIN}x"},
        )
        webhook_token = await client.send(
            "POST",
            "/dead-letters/t1/replay",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        right = await client.send(
            "POST",
            "/dead-letters/t1/replay",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )

    assert "TRADING_ADMIN_TOKEN is not set" in assert_refused(disabled, 403)
    assert "admin token required" in assert_refused(anonymous, 401)
    assert "does not match" in assert_refused(wrong, 401)
    assert "does not match" in assert_refused(webhook_token, 401)
    assert right[0] == 404  # authorised; there is no such dead letter


async def test_every_state_changing_route_needs_the_admin_token(
    tmp_path: Path,
) -> None:
    """Any route taking more than GET (the webhook aside) refuses without the token."""
    checked = []
    async with running(Settings(state_dir=tmp_path, admin_token=ADMIN)) as d:
        app = create_app(d)
        client = app.test_client()
        for rule in app.url_map.iter_rules():
            methods = set(rule.methods or ()) - {"GET", "HEAD", "OPTIONS"}
            if rule.rule == "/webhook":
                continue
            path = re.sub(r"<[^>]+>", "x", rule.rule)
            for method in sorted(methods):
                response = await client.open(path, method=method)
                checked.append((method, path, response.status_code))

    assert ("POST", "/dead-letters/x/replay", 401) in checked
    assert {status for _, _, status in checked} == {401}, checked


async def test_status_public_or_token_protected(tmp_path: Path) -> None:
    """Public /status answers anyone; protected needs the admin token. /health never."""
    (tmp_path / "public").mkdir()
    async with running(Settings(state_dir=tmp_path / "public")) as public:
        open_status = await Client(public).send("GET", "/status")
    settings = Settings(state_dir=tmp_path, admin_token=ADMIN, status_public=False)
    async with running(settings) as d:
        client = Client(d)
        anonymous = await client.send("GET", "/status")
        letters = await client.send("GET", "/dead-letters")
        health = await client.send("GET", "/health")
        allowed = await client.send(
            "GET", "/status", headers={"Authorization": f"Bearer {ADMIN}"}
        )

    assert open_status[0] == 200
    assert_refused(anonymous, 401)
    assert_refused(letters, 401)
    assert health[0] == 200
    assert allowed[0] == 200
    assert "task_queue_stats" in allowed[1]


# --- hostile input ----------------------------------------------------------


def corpus(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("case", corpus(HOSTILE), ids=lambda p: p.name)
async def test_hostile_corpus_open(tmp_path: Path, case: Path) -> None:
    """Each corpus file gets the status its name starts with, and no stray task."""
    await replay_case(Settings(state_dir=tmp_path, rate_limit=0), case)


@pytest.mark.parametrize("case", corpus(HOSTILE / "secured"), ids=lambda p: p.name)
async def test_hostile_corpus_secured(tmp_path: Path, case: Path) -> None:
    """The passphrase cases against a daemon that requires one."""
    settings = Settings(state_dir=tmp_path, webhook_secret=CORPUS_PASSPHRASE)
    await replay_case(settings, case)


async def replay_case(settings: Settings, case: Path) -> None:
    expected = int(case.name.split("-", 1)[0])
    async with running(settings) as d:
        status, data, _ = await Client(d).post(await trio.Path(case).read_bytes())
        submitted = d.scheduler.stats.submitted

    assert status == expected, data
    assert submitted == (1 if expected == 202 else 0)
    assert isinstance(data.get("error", data.get("id")), str)
    assert CORPUS_PASSPHRASE not in json.dumps(data)


def test_hostile_corpus_is_large_enough() -> None:
    """The corpus keeps at least 30 cases, each named after its status."""
    cases = corpus(HOSTILE) + corpus(HOSTILE / "secured")

    assert len(cases) >= 30
    assert {c.name[:4] for c in cases} <= {"202-", "400-", "401-", "413-"}


_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**20, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["buy", "sell", "close", "MNQ1!", "1", "2.0", "0.5", PASSPHRASE]),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = ["action", "symbol", "ticker", "quantity", "qty", "id", "passphrase", "secret"]
_ALERTS = st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8)
# Mostly valid alerts, so that the accepting path is fuzzed too.
_NEAR_VALID = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["buy", "SELL", "long", "close", "hold", ""]),
        "symbol": st.sampled_from(["MNQ1!", "CME_MINI:ES1!", "MNQZ2025", "1!", ""]),
        "quantity": st.sampled_from(["1", "2.0", 3, "0", -1, "1e3", 1.5, None]),
    },
    optional={
        "id": st.text(max_size=140),
        "passphrase": st.sampled_from([PASSPHRASE, PASSPHRASE + " ", "", 0]),
        "note": _JSON,
    },
)


def _dump(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: lone surrogates become the invalid UTF-8 a sender could send.
    text = json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def _splice(data: bytes, at: int, junk: bytes) -> bytes:
    at %= len(data) + 1
    return data[:at] + junk + data[at:]


_BODIES = st.one_of(
    st.builds(_dump, _ALERTS, st.booleans()),
    st.builds(_dump, _NEAR_VALID, st.booleans()),
    st.builds(_dump, _NEAR_VALID, st.booleans()),
    st.builds(_dump, _JSON, st.booleans()),
    st.builds(
        _splice,
        st.builds(_dump, _ALERTS, st.booleans()),
        st.integers(),
        st.binary(max_size=4),
    ),
    st.binary(max_size=600),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 8_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(65_000, 66_000).map(lambda n: b'{"pad":"' + b"x" * n + b'"}'),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"\x00" * 16,
            b"\xef\xbb\xbf{}",
            b"NaN",
            b"1e999",
            b"-0",
            b"[]",
            b"null",
            b'"buy"',
            b"{{strategy.order.action}}",
            b'{"action":"{{strategy.order.action}}","symbol":"{{ticker}}"}',
            b'{"action":"buy","symbol":"MNQ1!","quantity":"1"',
        ]
    ),
)
_HEADER_TEXT = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"
    ),
    max_size=60,
)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            [
                "text/plain",
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=utf-16",
            ]
        )
        | _HEADER_TEXT,
        "Authorization": st.sampled_from(
            [f"Bearer {TOKEN}", "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer"]
        )
        | _HEADER_TEXT,
        "webhook-id": _HEADER_TEXT,
        "webhook-timestamp": st.integers().map(str) | _HEADER_TEXT,
        "webhook-signature": st.sampled_from(["v1,AAAA", "v1", "v1,a,b"])
        | _HEADER_TEXT,
        "X-Forwarded-For": st.sampled_from([TV, OUTSIDER, f"{OUTSIDER}, {TV}"])
        | _HEADER_TEXT,
        "Content-Encoding": st.sampled_from(["gzip", "br", "identity"]),
    },
)


@pytest.mark.parametrize("mode", ["open", "secured"])
async def test_webhook_fuzzed_input_never_5xx_never_a_stray_task(
    tmp_path: Path, mode: str
) -> None:
    """>= 500 generated bodies and headers each: no 5xx, no crash, no stray task.

    Hypothesis drives the examples from a worker thread; each one is a request
    made on this test's Trio loop, so one daemon serves them all.
    """
    extra: dict[str, Any] = {}
    allowed = {200, 202, 400, 413}
    if mode == "secured":
        extra = {**SECURED, "allowed_sources": ("tradingview", "127.0.0.1")}
        extra["trusted_proxies"] = ("127.0.0.1",)
        allowed |= {401, 403}
    settings = Settings(state_dir=tmp_path, rate_limit=0, max_queue=5000, **extra)
    statuses: Counter[int] = Counter()

    async with running(settings) as d:
        client = Client(d)

        async def attempt(data: bytes, headers: dict[str, str]) -> tuple[int, Any, int]:
            before = d.scheduler.stats.submitted
            status, answer, _ = await client.post(
                data, headers=headers, peer="127.0.0.1"
            )
            return status, answer, d.scheduler.stats.submitted - before

        @hypothesis_settings(
            max_examples=520,
            deadline=None,
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(data=_BODIES, headers=_HEADERS)
        def fuzz(data: bytes, headers: dict[str, str]) -> None:
            status, answer, made = trio.from_thread.run(attempt, data, headers)
            statuses[status] += 1
            assert status in allowed, (status, answer)
            assert made == (1 if status == 202 else 0), (status, answer)
            assert isinstance(answer.get("error", answer.get("id")), str)

        await trio.to_thread.run_sync(fuzz)

        # Still serving after all that.
        after = await client.post(
            body(id="after-fuzz", passphrase=PASSPHRASE), peer="127.0.0.1"
        )

    assert sum(statuses.values()) >= 500
    assert len(statuses) >= 3  # the strategies reached several outcomes
    assert after[0] == 202


# --- startup ----------------------------------------------------------------


async def test_paper_mode_without_auth_warns_at_start(
    tmp_path: Path, log_sink: io.StringIO
) -> None:
    """Paper mode with no webhook credential starts, with an auth.disabled warning."""
    daemon = Daemon(Settings(webhook_port=0, state_dir=tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        daemon.request_stop("test over")

    assert "<4>WARNING auth.disabled broker=paper" in log_sink.getvalue()


def test_live_broker_without_auth_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve` with a live broker and no webhook credential exits 2 with one line."""
    for name in list(os.environ):
        if name.startswith(("TRADING_", "WEBHOOK_", "PROJECT_X_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRADING_BROKER", "projectx")
    monkeypatch.setenv("PROJECT_X_USERNAME", "trader")
    monkeypatch.setenv("PROJECT_X_API_KEY", "pxk-live-Secret-0042")

    code = main(["serve"])
    err = capsys.readouterr().err

    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "webhook authentication is required" in err
    assert "pxk-live-Secret-0042" not in err


@pytest.mark.parametrize(
    "variable",
    [
        "TRADING_WEBHOOK_SECRET",
        "TRADING_WEBHOOK_TOKEN",
        "TRADING_WEBHOOK_SIGNING_SECRETS",
    ],
)
async def test_cli_send_presents_the_configured_credential(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
) -> None:
    """`trading-daemon send` authenticates with whichever credential is configured."""
    value = SIGNING_NEW if variable.endswith("SIGNING_SECRETS") else PASSPHRASE
    for name in list(os.environ):
        if name.startswith(("TRADING_", "WEBHOOK_", "PROJECT_X_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    settings = load_settings({variable: value, "TRADING_STATE_DIR": str(tmp_path)})
    daemon = Daemon(replace(settings, webhook_port=0))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.run)
        url = f"http://127.0.0.1:{port}"
        code = await trio.to_thread.run_sync(main, ["send", "--url", url])
        refused = await trio.to_thread.run_sync(
            main, ["send", "--url", url, "--body", '{"action":"buy"}']
        )
        daemon.request_stop("test over")
    out = capsys.readouterr().out

    assert code == 0, out
    assert out.startswith("202 ")
    # A raw --body carries no passphrase; only header credentials still apply.
    assert refused == 1
    assert ("401 " in out) is variable.endswith("_SECRET")


# --- no leaks ----------------------------------------------------------------

MARK = {
    "webhook_secret": "PASSPHRASE-MARK-4f1c9e",
    "webhook_token": "TOKEN-MARK-77b0d2a61c",
    "admin_token": "ADMIN-MARK-0a93cc51e8",
    "project_x_api_key": "APIKEY-MARK-b5d8e0f3",
}
MARK_KEY = base64.b64encode(b"SIGNING-MARK-KEY-3e5a91c07d24bb").decode()
MARKERS = [*MARK.values(), MARK_KEY]


async def test_secrets_absent_from_logs_answers_and_state(
    tmp_path: Path,
    log_sink: io.StringIO,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After every error path, no secret, token or signature is in any output.

    The secrets are deliberately not registered for log masking, so this shows
    the code never writes them, rather than that a mask hides them.
    """
    settings = Settings(
        webhook_port=0,
        state_dir=tmp_path,
        rate_limit=3,
        allowed_sources=("tradingview", "198.51.100.0/24"),
        trusted_proxies=("127.0.0.1",),
        status_public=False,
        webhook_signing_secrets=("whsec_" + MARK_KEY,),
        max_header_bytes=4096,
        **MARK,
    )
    daemon = Daemon(settings)
    answers: list[str] = []
    statuses: list[int] = []
    signatures: list[str] = []
    sources = iter(f"198.51.100.{n}" for n in range(1, 250))
    passphrase = MARK["webhook_secret"]
    admin = {"Authorization": f"Bearer {MARK['admin_token']}"}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(daemon.run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def call(
                method: str,
                path: str,
                content: bytes = b"",
                headers: dict[str, str] | None = None,
                source: str | None = None,
            ) -> None:
                sent = {"X-Forwarded-For": source or next(sources), **(headers or {})}
                if "webhook-signature" in sent:
                    signatures.append(sent["webhook-signature"])
                response = await http.request(
                    method, path, content=content, headers=sent
                )
                statuses.append(response.status_code)
                answers.append(response.text + "\n" + str(response.headers))

            ok = body(id="leak-ok", passphrase=passphrase)
            await call("POST", "/webhook", body(id="a"))  # no credential
            await call("POST", "/webhook", body(passphrase=passphrase + "-wrong"))
            await call("POST", "/webhook", body(passphrase=passphrase[:-1]))
            await call(
                "POST",
                "/webhook",
                body(),
                {"Authorization": f"Bearer {MARK['webhook_token']}x"},
            )
            await call("POST", "/webhook", body(), sign("whsec_" + MARK_KEY, b"other"))
            old = sign("whsec_" + MARK_KEY, body(id="b"), at=time.time() - 900)
            await call("POST", "/webhook", body(id="b"), old)
            await call("POST", "/webhook", ok)  # accepted
            await call("POST", "/webhook", ok)  # duplicate
            # Authenticated but invalid, with secrets in the wrong fields.
            await call(
                "POST",
                "/webhook",
                json.dumps(
                    {
                        "action": MARK["admin_token"],
                        "symbol": MARK["webhook_token"],
                        "passphrase": passphrase,
                    }
                ).encode(),
            )
            await call(
                "POST",
                "/webhook",
                b"{not json " + MARK["project_x_api_key"].encode(),
                {"Authorization": f"Bearer {MARK['webhook_token']}"},
            )
            await call(
                "POST", "/webhook", body(passphrase=passphrase, pad="x" * 70_000)
            )
            await call("POST", "/webhook", body(passphrase=passphrase), source=OUTSIDER)
            for _ in range(4):  # the last is over the rate limit
                await call(
                    "POST",
                    "/webhook",
                    body(passphrase=passphrase),
                    source="198.51.100.250",
                )
            await call(
                "POST",
                "/webhook",
                ok,
                {"X-Padding": MARK["admin_token"] * 300},
            )
            await call("POST", "/dead-letters/x/replay")
            await call(
                "POST",
                "/dead-letters/x/replay",
                headers={"Authorization": f"Bearer {MARK['admin_token']}x"},
            )
            await call("POST", "/dead-letters/x/replay", headers=admin)
            await call("GET", "/dead-letters", headers=admin)
            await call("GET", "/status")
            await call("GET", "/status", headers=admin)
            await call("GET", "/metrics")
            await call("GET", "/metrics?format=json")
            await call("GET", "/health")
            await call("GET", "/nope")
            await call("DELETE", "/webhook")
            await until(lambda: daemon.scheduler.stats.completed >= 6)
        daemon.request_stop("test over")

    assert statuses == [
        *[401] * 6,  # no credential, bad passphrases, token, signature, replay
        202,
        200,  # the same alert again: a duplicate
        400,  # secrets in the wrong fields
        400,  # broken JSON behind a good token
        413,
        403,
        202,  # a new source: three allowed (one new, two duplicates) ...
        200,
        200,
        429,  # ... and the fourth refused
        431,
        401,  # replay without the admin token
        401,  # with a wrong one
        404,  # with the right one: no such dead letter
        200,
        401,  # /status is token-protected here
        200,
        200,
        200,
        200,
        404,
        405,
    ]

    # check-config and configuration errors are outputs too.
    for name in list(os.environ):
        if name.startswith(("TRADING_", "WEBHOOK_", "PROJECT_X_")):
            monkeypatch.delenv(name)
    env = {
        "TRADING_WEBHOOK_SECRET": MARK["webhook_secret"],
        "TRADING_WEBHOOK_TOKEN": MARK["webhook_token"],
        "TRADING_WEBHOOK_SIGNING_SECRETS": "whsec_" + MARK_KEY,
        "TRADING_ADMIN_TOKEN": MARK["admin_token"],
        "PROJECT_X_API_KEY": MARK["project_x_api_key"],
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    errors = []
    for broken in (
        {**env, "TRADING_ADMIN_TOKEN": MARK["webhook_secret"]},
        {**env, "TRADING_WEBHOOK_SIGNING_SECRETS": "whsec_" + MARK["webhook_token"]},
        {**env, "TRADING_WORKERS": "many"},
        {**env, "TRADING_STATUS_PUBLIC": MARK["admin_token"]},
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(broken)
        errors.append(str(caught.value))

    state = b"".join(
        [await trio.Path(p).read_bytes() for p in await trio.Path(tmp_path).iterdir()]
    )
    outputs = {
        "log": log_sink.getvalue(),
        "answers": "\n".join(answers),
        "stdout": capsys.readouterr().out,
        "config errors": "\n".join(errors),
        "settings repr": repr(settings),
    }
    for secret in [*MARKERS, *signatures]:
        for where, text in outputs.items():
            assert secret not in text, f"{secret!r} leaked into {where}"
        assert secret.encode() not in state, f"{secret!r} leaked into the journal"
    # The error paths were really taken and logged.
    log = outputs["log"]
    for event in (
        "auth.rejected",
        "alert.rejected",
        "ratelimit.refused",
        "http.access",
    ):
        assert event in log
