"""auth: webhook credentials, client addresses behind proxies, the admin token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time

import pytest

from trading_daemon.auth import (
    TRADINGVIEW_ADDRESSES,
    AdminAuth,
    AuthError,
    SourcePolicy,
    WebhookAuth,
    bearer_token,
    parse_address,
    parse_networks,
    sender_headers,
    signature_headers,
    signing_key,
    take_passphrases,
)
from trading_daemon.config import Settings

PASSPHRASE = "tv-passphrase-7Hq2-marker"
TOKEN = "bearer-token-Zk81-marker-value"
# Standard Webhooks secrets: whsec_ + base64 of 24 to 64 random bytes.
KEY_OLD = base64.b64encode(b"old-signing-key-32-bytes-long!!!").decode()
KEY_NEW = base64.b64encode(b"new-signing-key-32-bytes-long!!!").decode()
SIGNING_OLD = "whsec_" + KEY_OLD
SIGNING_NEW = "whsec_" + KEY_NEW
BODY = b'{"action":"buy","symbol":"MNQ1!","quantity":"1"}'
SECRETS = (PASSPHRASE, TOKEN, SIGNING_OLD, SIGNING_NEW, KEY_OLD, KEY_NEW)


def sign(secret: str, body: bytes, *, msg_id: str = "msg_1", at: float = 0) -> dict:
    """Standard Webhooks headers, computed here independently of the daemon."""
    stamp = str(int(at or time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def refusal(auth: WebhookAuth, headers: dict, presented: list | None = None) -> str:
    """The reason ``auth`` refuses the request; fails if it admits it."""
    with pytest.raises(AuthError) as caught:
        auth.check(BODY, headers, presented or [])
    reason = str(caught.value)
    assert caught.value.status == 401
    for secret in SECRETS:
        assert secret not in reason
    return reason


# --- passphrase in the body -------------------------------------------------


def test_passphrase_correct_is_admitted() -> None:
    """The configured passphrase in the body admits the request."""
    WebhookAuth(passphrase=PASSPHRASE).check(BODY, {}, [PASSPHRASE])


@pytest.mark.parametrize(
    "presented",
    [
        ["wrong-passphrase-0000000000"],
        [PASSPHRASE[:-1]],
        [PASSPHRASE + "x"],
        [PASSPHRASE.upper()],
        [PASSPHRASE + "\x00"],
        [12345],
        [None],
        [[PASSPHRASE]],
        [{"value": PASSPHRASE}],
        ["\ud800"],
    ],
    ids=[
        "wrong",
        "prefix",
        "longer",
        "case",
        "nul",
        "number",
        "null",
        "list",
        "object",
        "lone-surrogate",
    ],
)
def test_passphrase_wrong_or_wrong_type_is_refused(presented: list) -> None:
    """Anything but the exact string is refused, without an exception escaping."""
    auth = WebhookAuth(passphrase=PASSPHRASE)

    assert refusal(auth, {}, presented) == "passphrase does not match"


def test_passphrase_either_field_admits() -> None:
    """`passphrase` and `secret` are both read; one match is enough."""
    auth = WebhookAuth(passphrase=PASSPHRASE)
    data = {"action": "buy", "passphrase": "nope-nope-nope-nope", "secret": PASSPHRASE}

    presented = take_passphrases(data)
    auth.check(BODY, {}, presented)

    assert data == {"action": "buy"}


def test_passphrase_missing_names_what_to_send() -> None:
    """No credential at all: the reason says which kinds are accepted."""
    auth = WebhookAuth(passphrase=PASSPHRASE, token=TOKEN)

    reason = refusal(auth, {})

    assert reason.startswith("authentication required: send a passphrase field")
    assert "Authorization: Bearer" in reason


def test_take_passphrases_removes_both_fields() -> None:
    """The passphrase fields leave the alert; other fields stay."""
    data = {"passphrase": 1, "secret": 2, "symbol": "MNQ", "Passphrase": 3}

    assert take_passphrases(data) == [1, 2]
    assert data == {"symbol": "MNQ", "Passphrase": 3}


# --- bearer token -----------------------------------------------------------


def test_bearer_token_correct_is_admitted() -> None:
    """`Authorization: Bearer <token>` admits; the scheme is case-insensitive."""
    auth = WebhookAuth(token=TOKEN)

    auth.check(BODY, {"authorization": f"Bearer {TOKEN}"}, [])
    auth.check(BODY, {"authorization": f"bearer   {TOKEN} "}, [])


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer another-token-0000000000"],
)
def test_bearer_token_wrong_is_refused(header: str) -> None:
    """A different token is refused."""
    auth = WebhookAuth(token=TOKEN)

    assert refusal(auth, {"authorization": header}) == "bearer token does not match"


@pytest.mark.parametrize(
    "header", [TOKEN, f"Basic {TOKEN}", "Bearer", "Bearer    ", ""]
)
def test_bearer_token_malformed_header_counts_as_absent(header: str) -> None:
    """No Bearer scheme, no token: as if no credential was sent."""
    auth = WebhookAuth(token=TOKEN)

    assert refusal(auth, {"authorization": header}).startswith(
        "authentication required"
    )


def test_bearer_token_parsing() -> None:
    """bearer_token takes the token of a Bearer header only."""
    assert bearer_token(f"Bearer {TOKEN}") == TOKEN
    assert bearer_token(None) is None
    assert bearer_token("Token abc") is None


# --- Standard Webhooks signatures ------------------------------------------


def test_signature_valid_is_admitted() -> None:
    """A signature made with the configured key admits the request."""
    WebhookAuth(signing_secrets=[SIGNING_OLD]).check(BODY, sign(SIGNING_OLD, BODY), [])


def test_signature_made_by_sender_headers_verifies() -> None:
    """The daemon's own signing (used by `send`) matches its verification."""
    auth = WebhookAuth(signing_secrets=[SIGNING_NEW])

    auth.check(BODY, signature_headers(SIGNING_NEW, BODY), [])


def test_signature_over_another_body_is_refused() -> None:
    """A valid signature of a different body does not admit this one."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])
    headers = sign(SIGNING_OLD, BODY.replace(b"buy", b"sell"))

    assert refusal(auth, headers) == "webhook-signature does not match"


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-id", "msg_2"), ("webhook-timestamp", None)],
    ids=["id", "timestamp"],
)
def test_signature_covers_id_and_timestamp(field: str, value: str | None) -> None:
    """Changing the signed id or timestamp breaks the signature."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])
    headers = sign(SIGNING_OLD, BODY)
    headers[field] = value or str(int(headers[field]) - 1)

    assert refusal(auth, headers) == "webhook-signature does not match"


@pytest.mark.parametrize(
    ("offset", "word"), [(-301, "old"), (301, "in the future"), (-3600, "old")]
)
def test_signature_outside_tolerance_is_refused(offset: int, word: str) -> None:
    """A correctly signed replay more than 5 minutes off is refused."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])
    headers = sign(SIGNING_OLD, BODY, at=time.time() + offset)

    reason = refusal(auth, headers)

    assert reason.startswith("webhook-timestamp is")
    assert word in reason
    assert reason.endswith("the tolerance is 300 s")


@pytest.mark.parametrize("offset", [-290, 290])
def test_signature_inside_tolerance_is_admitted(offset: int) -> None:
    """Clock skew up to 5 minutes either way is tolerated."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])

    auth.check(BODY, sign(SIGNING_OLD, BODY, at=time.time() + offset), [])


def test_signature_rotation_accepts_old_and_new_keys() -> None:
    """During a rotation both keys verify; once the old is removed, it does not."""
    rotating = WebhookAuth(signing_secrets=[SIGNING_NEW, SIGNING_OLD])
    rotated = WebhookAuth(signing_secrets=[SIGNING_NEW])

    rotating.check(BODY, sign(SIGNING_OLD, BODY), [])
    rotating.check(BODY, sign(SIGNING_NEW, BODY), [])
    rotated.check(BODY, sign(SIGNING_NEW, BODY), [])

    assert refusal(rotated, sign(SIGNING_OLD, BODY)) == (
        "webhook-signature does not match"
    )


def test_signature_list_with_one_valid_entry_is_admitted() -> None:
    """A sender mid-rotation may send several signatures, space-separated."""
    auth = WebhookAuth(signing_secrets=[SIGNING_NEW])
    headers = sign(SIGNING_NEW, BODY)
    old = sign(SIGNING_OLD, BODY)["webhook-signature"]
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"

    auth.check(BODY, headers, [])


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("webhook-id", "", "signed webhooks need"),
        ("webhook-timestamp", "", "signed webhooks need"),
        ("webhook-timestamp", "nan", "whole seconds"),
        ("webhook-timestamp", "1.7e9", "whole seconds"),
        ("webhook-timestamp", "-5", "whole seconds"),
        ("webhook-timestamp", "9" * 40, "whole seconds"),
        ("webhook-signature", "v1", "does not match"),
        ("webhook-signature", "v1,not base64!", "does not match"),
        ("webhook-signature", "v1,a,b", "does not match"),
        ("webhook-signature", "v2,AAAA", "does not match"),
        ("webhook-signature", "v1," + "A" * 5000, "does not match"),
        ("webhook-signature", "  ", "does not match"),
    ],
)
def test_signature_malformed_headers_are_refused(
    field: str, value: str, reason: str
) -> None:
    """Broken signature headers are refused with a reason, never an exception."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])
    headers = sign(SIGNING_OLD, BODY)
    headers[field] = value

    assert reason in refusal(auth, headers)


def test_signature_non_utf8_body_is_refused() -> None:
    """A body that is not UTF-8 cannot be verified and is refused."""
    auth = WebhookAuth(signing_secrets=[SIGNING_OLD])
    body = b"\xff\xfe" + BODY

    with pytest.raises(AuthError, match="UTF-8"):
        auth.check(body, sign(SIGNING_OLD, body), [])


@pytest.mark.parametrize(
    "secret",
    ["whsec_", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_signing_key_rejects_bad_secrets_without_showing_them(secret: str) -> None:
    """A bad whsec_ secret is a ValueError whose message does not quote it."""
    with pytest.raises(ValueError) as caught:
        signing_key(secret)

    key_text = secret.removeprefix("whsec_")
    assert not key_text or key_text not in str(caught.value)


def test_signing_key_accepts_unpadded_and_unprefixed() -> None:
    """Padding and the whsec_ prefix are optional."""
    key = b"k" * 32

    assert signing_key("whsec_" + base64.b64encode(key).decode().rstrip("=")) == key
    assert signing_key(base64.b64encode(key).decode()) == key


# --- several kinds, and none -------------------------------------------------


def test_any_one_valid_credential_admits() -> None:
    """With all kinds configured, a wrong token plus a right passphrase passes."""
    auth = WebhookAuth(
        passphrase=PASSPHRASE, token=TOKEN, signing_secrets=[SIGNING_OLD]
    )

    auth.check(BODY, {"authorization": "Bearer wrong-token-000000000"}, [PASSPHRASE])
    auth.check(BODY, sign(SIGNING_OLD, BODY), ["wrong"])
    auth.check(BODY, {"authorization": f"Bearer {TOKEN}"}, [])


def test_all_failures_are_reported_together() -> None:
    """When every presented credential fails, the reason lists each failure."""
    auth = WebhookAuth(
        passphrase=PASSPHRASE, token=TOKEN, signing_secrets=[SIGNING_OLD]
    )
    headers = {**sign(SIGNING_NEW, BODY), "authorization": "Bearer nope-nope-nope-00"}

    reason = refusal(auth, headers, ["wrong"])

    assert reason == (
        "bearer token does not match; webhook-signature does not match;"
        " passphrase does not match"
    )


def test_unconfigured_kinds_are_ignored() -> None:
    """A token sent to a daemon that only knows a passphrase does not count."""
    auth = WebhookAuth(passphrase=PASSPHRASE)

    reason = refusal(auth, {"authorization": f"Bearer {TOKEN}"})

    assert reason == "authentication required: send a passphrase field in the body"


def test_no_credentials_configured_admits_everything() -> None:
    """Paper mode without authentication: every request passes."""
    auth = WebhookAuth()

    auth.check(b"anything", {}, [])

    assert auth.methods == ()


def test_redact_replaces_every_secret() -> None:
    """redact hides configured secrets (longest first) in text meant for clients."""
    auth = WebhookAuth(
        passphrase=PASSPHRASE,
        token=TOKEN,
        signing_secrets=[SIGNING_OLD],
        redacted=["x1x1x1"],
    )

    text = auth.redact(f"a {PASSPHRASE} b {TOKEN} c {SIGNING_OLD} d x1x1x1")

    assert text == "a *** b *** c *** d ***"


def test_sender_headers_prefer_token_then_signature() -> None:
    """`trading-daemon send` uses the token, else a signature, else nothing."""
    both = Settings(webhook_token=TOKEN, webhook_signing_secrets=(SIGNING_OLD,))
    signing = Settings(webhook_signing_secrets=(SIGNING_OLD,))

    assert sender_headers(both, BODY) == {"Authorization": f"Bearer {TOKEN}"}
    WebhookAuth(signing_secrets=[SIGNING_OLD]).check(
        BODY, sender_headers(signing, BODY), []
    )
    assert sender_headers(Settings(webhook_secret=PASSPHRASE), BODY) == {}


# --- admin token ------------------------------------------------------------


def test_admin_token_checks() -> None:
    """Right token passes; missing or wrong is 401; none configured is 403."""
    admin = AdminAuth("admin-token-0123456789")
    admin.check("Bearer admin-token-0123456789")

    with pytest.raises(AuthError, match="admin token required") as missing:
        admin.check(None)
    with pytest.raises(AuthError, match="does not match") as wrong:
        admin.check("Bearer admin-token-0123456780")
    with pytest.raises(AuthError, match="TRADING_ADMIN_TOKEN is not set") as off:
        AdminAuth("").check("Bearer admin-token-0123456789")

    assert (missing.value.status, wrong.value.status, off.value.status) == (
        401,
        401,
        403,
    )
    assert missing.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert off.value.headers == {}


# --- addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("52.89.214.238", "52.89.214.238"),
        (" 52.89.214.238 ", "52.89.214.238"),
        ("52.89.214.238:443", "52.89.214.238"),
        ("::1", "::1"),
        ("[2001:db8::1]:8080", "2001:db8::1"),
        ("::ffff:52.89.214.238", "52.89.214.238"),
        ("unknown", None),
        ("", None),
        ("1.2.3.4.5", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    """Peers and forwarded hops parse; IPv4-mapped IPv6 becomes IPv4."""
    address = parse_address(text)

    assert (None if address is None else str(address)) == expected


def test_parse_networks_tradingview_preset_and_cidrs() -> None:
    """The `tradingview` keyword expands to TradingView's four addresses."""
    networks = parse_networks(["TradingView", "10.0.0.0/8", " 2001:db8::/32 ", ""])

    assert [str(n) for n in networks] == [
        *(f"{a}/32" for a in TRADINGVIEW_ADDRESSES),
        "10.0.0.0/8",
        "2001:db8::/32",
    ]


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "example.com", "10.0.0.0/33"])
def test_parse_networks_rejects_bad_entries(entry: str) -> None:
    """Host bits set, names and bad prefixes are errors naming the entry."""
    with pytest.raises(ValueError, match="IP addresses or networks"):
        parse_networks([entry])


def test_parse_networks_preset_off_for_proxies() -> None:
    """`tradingview` is no proxy: refused where presets are off."""
    with pytest.raises(ValueError, match="got 'tradingview'"):
        parse_networks(["tradingview"], presets=False)


TV = TRADINGVIEW_ADDRESSES[0]
LOCAL_PROXY = SourcePolicy(
    parse_networks(["tradingview"]), parse_networks(["127.0.0.1", "10.1.0.0/16"])
)
NO_PROXY = SourcePolicy(parse_networks(["tradingview"]))


@pytest.mark.parametrize(
    ("policy", "peer", "forwarded", "client", "allowed"),
    [
        # TradingView straight to the daemon.
        (NO_PROXY, TV, [], TV, True),
        (NO_PROXY, "203.0.113.9", [], "203.0.113.9", False),
        # Without a trusted proxy, X-Forwarded-For is the client's own claim.
        (NO_PROXY, "203.0.113.9", [TV], "203.0.113.9", False),
        # Behind a trusted proxy the proxy's appended hop is the client.
        (LOCAL_PROXY, "127.0.0.1", [TV], TV, True),
        (LOCAL_PROXY, "127.0.0.1", ["203.0.113.9"], "203.0.113.9", False),
        # A forged hop left of the real one is ignored (read right to left).
        (LOCAL_PROXY, "127.0.0.1", [f"{TV}, 203.0.113.9"], "203.0.113.9", False),
        # Two trusted proxies in a row are skipped.
        (LOCAL_PROXY, "127.0.0.1", [f"203.0.113.9, {TV}, 10.1.2.3"], TV, True),
        # Several header lines read as one list.
        (LOCAL_PROXY, "127.0.0.1", ["203.0.113.9", f"{TV}"], TV, True),
        # The proxy itself, with no header: the proxy is the client.
        (LOCAL_PROXY, "127.0.0.1", [], "127.0.0.1", False),
        # Every hop trusted: the first one began the request.
        (LOCAL_PROXY, "127.0.0.1", ["10.1.0.5, 10.1.0.6"], "10.1.0.5", False),
        # A hop that is no address ends the search: unknown, refused.
        (LOCAL_PROXY, "127.0.0.1", [f"{TV}, garbage"], None, False),
        (LOCAL_PROXY, "127.0.0.1", [" , "], "127.0.0.1", False),
        # A dual-stack listener shows IPv4 peers as IPv4-mapped IPv6.
        (NO_PROXY, f"::ffff:{TV}", [], TV, True),
        (LOCAL_PROXY, "::ffff:127.0.0.1", [TV], TV, True),
        # No peer known (an ASGI server that does not say).
        (NO_PROXY, None, [], None, False),
    ],
)
def test_source_policy_client_and_allowlist(
    policy: SourcePolicy,
    peer: str | None,
    forwarded: list[str],
    client: str | None,
    allowed: bool,
) -> None:
    """The client is found right to left behind trusted proxies only."""
    found = policy.client(peer, forwarded)

    assert (None if found is None else str(found)) == client
    assert policy.allows(found) is allowed


def test_source_policy_without_allowlist_allows_all() -> None:
    """No allowlist configured: every address, even an unknown one, passes."""
    policy = SourcePolicy()

    assert policy.allows(ipaddress.ip_address("203.0.113.9"))
    assert policy.allows(None)
