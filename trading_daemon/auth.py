"""Who may talk to us: webhook credentials, client addresses, the admin token.

TradingView can set no header, so its shared secret travels inside the alert
body (a ``passphrase`` or ``secret`` field) and is taken out of the alert before
anything is hashed, stored or logged. Other senders may use a bearer token or
Standard Webhooks signatures. Any one valid credential admits a request.

The address allowlist is checked on top of that, never instead of it: anyone
with a TradingView account can make TradingView's servers post to any URL, so
those four addresses prove nothing about who wrote the alert.

Secrets are compared as SHA-256 digests with ``hmac.compare_digest``, so neither
their content nor their length shows in the timing, and no reason this module
gives back contains a secret, a token or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from standardwebhooks import Webhook, WebhookVerificationError

if TYPE_CHECKING:
    from .config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TRADINGVIEW = "tradingview"
# TradingView's documented webhook source addresses (IPv4 only).
TRADINGVIEW_ADDRESSES = (
    "52.89.214.238",
    "34.212.75.30",
    "54.218.53.128",
    "52.32.178.7",
)

PASSPHRASE_FIELDS = ("passphrase", "secret")
MIN_SECRET_LENGTH = 16
SIGNING_PREFIX = "whsec_"
# The Standard Webhooks specification asks for keys of 24 to 64 random bytes.
MIN_SIGNING_KEY_BYTES = 24
SIGNATURE_TOLERANCE_S = 5 * 60
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trading-daemon"'}


class AuthError(Exception):
    """A request may not pass. The message is safe to show: it holds no secret."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__(reason)
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        return dict(CHALLENGE) if self.status == 401 else {}

    def as_json(self) -> dict[str, str]:
        kind = "unauthorized" if self.status == 401 else "forbidden"
        return {"error": f"{kind}: {self}"}


def _digest(value: str) -> bytes:
    # surrogatepass: a JSON string may hold a lone surrogate ("\ud800"), which
    # plain UTF-8 encoding refuses with an exception.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def _matches(presented: object, expected: bytes) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(
        _digest(presented), expected
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def take_passphrases(data: dict[str, Any]) -> list[Any]:
    """Remove every passphrase field from an alert; return what they held."""
    return [data.pop(name) for name in PASSPHRASE_FIELDS if name in data]


def signing_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; ValueError (naming no secret) if bad."""
    text = secret.strip().removeprefix(SIGNING_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(
            f"must hold at least {MIN_SIGNING_KEY_BYTES} bytes of key, got {len(key)}"
        )
    return key


def signature_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers that sign ``body`` with ``secret`` (for senders)."""
    msg_id = msg_id or "msg_" + secrets.token_hex(12)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signed = f"{msg_id}.{stamp}.".encode() + body
    mac = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def sender_headers(settings: Settings, body: bytes) -> dict[str, str]:
    """The credential headers ``trading-daemon send`` presents for ``body``.

    Empty when only a passphrase is configured: that goes into the body.
    """
    if settings.webhook_token:
        return {"Authorization": f"Bearer {settings.webhook_token}"}
    if settings.webhook_signing_secrets:
        return signature_headers(settings.webhook_signing_secrets[0], body)
    return {}


class SignatureVerifier:
    """Standard Webhooks: HMAC-SHA256 over ``id.timestamp.body``, several keys.

    The ``standardwebhooks`` package computes and compares the signatures; the
    header checks before it give precise reasons and refuse what it would
    stumble on (a non-UTF-8 body, a fractional or "nan" timestamp).
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        # Several keys accepted at once is what makes rotation possible: add
        # the new key, move the senders over, remove the old one.
        self._hooks = [Webhook(signing_key(secret)) for secret in secrets]

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Return if one key signed this request; raise AuthError if none did."""
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signature = headers.get("webhook-signature", "")
        if not (msg_id and stamp and signature):
            raise AuthError(
                "signed webhooks need webhook-id, webhook-timestamp and"
                " webhook-signature headers"
            )
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise AuthError("webhook-timestamp must be whole seconds since 1970")
        skew = int(stamp) - time.time()
        if abs(skew) > SIGNATURE_TOLERANCE_S:
            when = "in the future" if skew > 0 else "old"
            raise AuthError(
                f"webhook-timestamp is {abs(skew):.0f} s {when}; the tolerance is"
                f" {SIGNATURE_TOLERANCE_S} s"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError("a signed body must be UTF-8 text") from None

        checked = {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        for hook in self._hooks:
            try:
                hook.verify(text, checked, json_parse=False)
            except (WebhookVerificationError, ValueError):
                # ValueError: a malformed entry in the signature list, which
                # the package does not turn into its own error.
                continue
            return
        raise AuthError("webhook-signature does not match")


class WebhookAuth:
    """Decides whether a webhook request presents one valid credential."""

    def __init__(
        self,
        *,
        passphrase: str = "",
        token: str = "",
        signing_secrets: Sequence[str] = (),
        redacted: Iterable[str] = (),
    ) -> None:
        self._passphrase = _digest(passphrase) if passphrase else None
        self._token = _digest(token) if token else None
        self._signatures = (
            SignatureVerifier(signing_secrets) if signing_secrets else None
        )
        hidden = {passphrase, token, *signing_secrets, *redacted}
        self._redacted = sorted((s for s in hidden if s), key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookAuth:
        return cls(
            passphrase=settings.webhook_secret,
            token=settings.webhook_token,
            signing_secrets=settings.webhook_signing_secrets,
            redacted=settings.secret_values(),
        )

    @property
    def methods(self) -> tuple[str, ...]:
        """The configured credential kinds; empty means every request passes."""
        kinds = (
            ("passphrase", self._passphrase),
            ("bearer", self._token),
            ("signature", self._signatures),
        )
        return tuple(name for name, configured in kinds if configured is not None)

    def check(
        self, body: bytes, headers: Mapping[str, str], passphrases: Sequence[object]
    ) -> None:
        """Return if any configured credential is valid, else raise AuthError.

        ``headers`` has lower-case names; ``passphrases`` are the values
        ``take_passphrases`` removed from the alert.
        """
        if not self.methods:
            return

        failures: list[str] = []
        if self._token is not None:
            token = bearer_token(headers.get("authorization"))
            if token is not None:
                if _matches(token, self._token):
                    return
                failures.append("bearer token does not match")
        if self._signatures is not None and headers.get("webhook-signature"):
            try:
                self._signatures.verify(body, headers)
                return
            except AuthError as exc:
                failures.append(str(exc))
        if self._passphrase is not None and passphrases:
            if any(_matches(value, self._passphrase) for value in passphrases):
                return
            failures.append("passphrase does not match")

        if failures:
            raise AuthError("; ".join(failures))
        raise AuthError(f"authentication required: send {self._expected()}")

    def redact(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        for secret in self._redacted:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _expected(self) -> str:
        wanted = {
            "passphrase": "a passphrase field in the body",
            "bearer": "an Authorization: Bearer token",
            "signature": "Standard Webhooks signature headers",
        }
        return " or ".join(wanted[name] for name in self.methods)


class AdminAuth:
    """The admin token that guards every endpoint that changes state."""

    def __init__(self, token: str) -> None:
        self._token = _digest(token) if token else None

    @property
    def configured(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        """Return if the header carries the admin token, else raise AuthError."""
        if self._token is None:
            raise AuthError(
                "admin endpoints are disabled: TRADING_ADMIN_TOKEN is not set",
                status=403,
            )
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("admin token required: send Authorization: Bearer <token>")
        if not _matches(token, self._token):
            raise AuthError("admin token does not match")


def parse_address(text: str) -> Address | None:
    """An address from a socket peer or a forwarded hop; None if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:port``, ``::1`` and ``[::1]:port``; an
    IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client)
    becomes the IPv4 address, so IPv4 rules match it.
    """
    host = text.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def parse_networks(
    entries: Iterable[str], *, presets: bool = True
) -> tuple[Network, ...]:
    """Addresses and networks (``10.0.0.0/8``), or ``tradingview`` for its four.

    Raises ValueError naming the first bad entry.
    """
    networks: list[Network] = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        if presets and text.lower() == TRADINGVIEW:
            networks.extend(ipaddress.ip_network(a) for a in TRADINGVIEW_ADDRESSES)
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError:
            preset = " or 'tradingview'" if presets else ""
            raise ValueError(
                f"entries must be IP addresses or networks such as 10.0.0.0/8{preset},"
                f" got {text!r}"
            ) from None
    return tuple(networks)


class SourcePolicy:
    """Finds the client behind trusted proxies and checks it against an allowlist."""

    def __init__(
        self, allowed: Sequence[Network] = (), trusted_proxies: Sequence[Network] = ()
    ) -> None:
        self.allowed = tuple(allowed)
        self.trusted_proxies = tuple(trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings) -> SourcePolicy:
        return cls(
            parse_networks(settings.allowed_sources),
            parse_networks(settings.trusted_proxies, presets=False),
        )

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(
            address in net for net in self.trusted_proxies
        )

    def client(
        self, peer: str | None, forwarded_for: Sequence[str] = ()
    ) -> Address | None:
        """The client's address: the peer, or X-Forwarded-For read behind a proxy.

        The header is read right to left, because each proxy appends the
        address it saw; the first hop that is not a trusted proxy is the
        client. Anything left of it was written by the client itself and
        proves nothing. A hop that is no address ends the search: None.
        """
        direct = parse_address(peer) if peer else None
        if not self.trusts(direct):
            return direct
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        hops = [hop for hop in hops if hop.strip()]
        if not hops:
            return direct
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None or not self.trusts(address):
                return address
        # Every hop was one of our proxies: the request began at the first.
        return parse_address(hops[0])

    def allows(self, address: Address | None) -> bool:
        """True when there is no allowlist or ``address`` is on it."""
        if not self.allowed:
            return True
        return address is not None and any(address in net for net in self.allowed)
