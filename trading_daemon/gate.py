"""The gate: what a request must get past before any route does work.

In order: the per-source rate limit (429, before the body is read), then, for
the webhook, the source address against the allowlist (403), then, on routes
that change state or show more than health, the admin token (401; 403 when
none is configured). The rate limit comes first so that no refusal, logged or
not, can be had faster than it allows. It knows nothing of HTTP frameworks:
the raw webhook route and the quart-trio routes both call it.
"""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger

from .auth import Address, AdminAuth, AuthError, SourcePolicy, parse_address
from .config import Settings
from .ratelimit import RateLimiter
from .webhook import Reply

# Peers whose X-Forwarded-For was ignored and reported; bounded.
_MAX_REPORTED_PEERS = 64


class Gate:
    """Rate limit, source policy and admin token, shared by every route."""

    def __init__(self, settings: Settings) -> None:
        self.sources = SourcePolicy.from_settings(settings)
        self.limiter = RateLimiter(settings.rate_limit)
        self.admin = AdminAuth(settings.admin_token)
        self.max_header_bytes = settings.max_header_bytes
        self._reported_peers: set[str] = set()

    def client_address(
        self, peer: str | None, forwarded: Sequence[str]
    ) -> Address | None:
        if (
            forwarded
            and peer is not None
            and not self.sources.trusts(parse_address(peer))
            and peer not in self._reported_peers
            and len(self._reported_peers) < _MAX_REPORTED_PEERS
        ):
            # Most likely a reverse proxy missing from TRADING_TRUSTED_PROXIES:
            # every client then looks like the proxy.
            self._reported_peers.add(peer)
            logger.bind(peer=peer).warning("auth.forwarded_for_ignored")
        return self.sources.client(peer, list(forwarded))

    def screen(
        self,
        *,
        peer: str | None,
        forwarded: Sequence[str],
        authorization: str | None,
        path: str,
        webhook: bool = False,
        needs_admin: bool = False,
    ) -> Reply | None:
        """The refusal this request gets before any work, or None to go on."""
        address = self.client_address(peer, forwarded)
        source = "unknown" if address is None else str(address)
        limited = self.limiter.check(source)
        if limited is not None:
            if limited.first:
                logger.bind(
                    client=source, retry_after_s=round(limited.retry_after_s, 1)
                ).warning("ratelimit.refused")
            return Reply(
                429,
                {
                    "error": f"more than {self.limiter.per_minute} requests a minute"
                    f" from {source}; retry later"
                },
                {"Retry-After": limited.retry_after_header},
            )

        if webhook and not self.sources.allows(address):
            error = AuthError(f"source {source} is not allowed", status=403)
            return self.refused(error, path)
        if needs_admin:
            try:
                self.admin.check(authorization)
            except AuthError as exc:
                return self.refused(exc, path)
        return None

    def headers_too_large(self, size: int) -> Reply | None:
        # hypercorn's h11_max_incomplete_size only bounds headers that arrive
        # in pieces; a head that comes in one read passes it whole.
        if size <= self.max_header_bytes:
            return None
        limit = self.max_header_bytes
        error = f"request headers of {size} bytes exceed the {limit} byte limit"
        return Reply(431, {"error": error})

    def refused(self, exc: AuthError, path: str) -> Reply:
        logger.bind(status=exc.status, reason=str(exc), path=path).warning(
            "auth.rejected"
        )
        return Reply(exc.status, exc.as_json(), exc.headers)
