"""Transport to the ProjectX Gateway: login, token refresh, rate limit, retries.

Every gateway endpoint is a JSON POST under ``/api`` that answers an envelope
with ``success``, ``errorCode`` and ``errorMessage``; business failures come
back as HTTP 200 with ``success: false``, so answers are judged by the body.
A missing or stale token is a bare 401, too many requests a 429.

Three kinds of failure leave this module:

- ``GatewayError``: the gateway refused (``success: false``). Never retried here;
  the broker decides what the refusal means.
- ``AuthenticationError``: the login was refused, or a call was refused with 401
  even after a fresh login. Retrying will not help until someone fixes the key.
- transient failures: transport errors and timeouts (httpx), ``ServerError``
  (5xx) and ``RateLimited`` (429). ``request`` retries these a bounded number of
  times; ``request_once`` leaves that to the caller, which is what
  ``Order/place`` needs (a lost answer must be looked up, not resent).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import tenacity
import trio
from loguru import logger

from .broker import BrokerSetupError
from .logs import register_secret

Json = dict[str, Any]

# Whether the call in progress in this task may pass ahead in the rate limit.
_urgent: ContextVar[bool] = ContextVar("projectx_urgent", default=False)

# One in this many rate-limit slots is kept for urgent calls.
URGENT_SHARE = 20
TOKEN_LIFETIME_S = 24 * 3600.0
# Tokens last 24 h; renewing an hour early leaves room for a quiet night.
TOKEN_REFRESH_S = TOKEN_LIFETIME_S - 3600.0

LOGIN_ERRORS = {
    1: "UserNotFound",
    2: "PasswordVerificationFailed",
    3: "InvalidCredentials",
    4: "AppNotFound",
    5: "AppVerificationFailed",
    6: "InvalidDevice",
    7: "AgreementsNotSigned",
    8: "UnknownError",
    9: "ApiSubscriptionNotFound",
    10: "ApiKeyAuthenticationDisabled",
}


class ProjectXError(Exception):
    """The gateway answered something this client cannot use."""


class GatewayError(ProjectXError):
    """The gateway refused a request: HTTP 200 with ``success: false``."""

    def __init__(self, endpoint: str, code: int, message: str | None) -> None:
        self.endpoint = endpoint
        self.code = code
        self.message = message or ""
        super().__init__(f"{endpoint} refused with errorCode {code}: {self.message}")


class AuthenticationError(ProjectXError, BrokerSetupError):
    """The credentials were refused, or a fresh token still got 401.

    A setup error too: at start, retrying with the same key cannot help.
    """


class ServerError(ProjectXError):
    """The gateway answered 5xx: transient."""

    def __init__(self, endpoint: str, status: int) -> None:
        self.status = status
        super().__init__(f"{endpoint} answered HTTP {status}")


class RateLimited(ProjectXError):
    """The gateway answered 429; ``retry_after`` is its stated delay, if any."""

    def __init__(self, endpoint: str, retry_after: float | None) -> None:
        self.retry_after = retry_after
        shown = "" if retry_after is None else f"; retry after {retry_after:g} s"
        super().__init__(f"{endpoint} answered HTTP 429{shown}")


TRANSIENT: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    ServerError,
    RateLimited,
)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def is_transient(exc: BaseException) -> bool:
    """True when every error in ``exc`` is worth another attempt.

    A positive test naming the retryable errors: a negative one would retry
    trio.Cancelled (tenacity#529). Groups are unwrapped because tenacity's own
    type predicates do not look inside them (tenacity PR 501).
    """
    found = leaves(exc)
    return bool(found) and all(isinstance(leaf, TRANSIENT) for leaf in found)


class RateLimiter:
    """At most ``limit`` requests in any ``window_s`` as the gateway counts them.

    The gateway counts a request when it arrives, which the client never sees:
    anywhere between sending and the answer. Counting sends would let jitter
    put a burst at a window's edge over the limit. So a request holds its slot
    from the moment it is sent until ``window_s`` after its answer: if every
    request that the gateway can still count was in flight or answered within
    the window when the next one was sent, the gateway can never count more
    than ``limit``, whatever the latency.

    Callers queue in arrival order (trio's Lock is fair), except urgent ones
    (the fill check): a burst of alerts must not hold back the job that sees
    their fills. They queue apart, go first, and may use the last ``reserve``
    slots, which others may not; without that, a burst that fills the window
    would make them wait for most of it. A 429 pauses everyone for the delay
    the gateway states.
    """

    def __init__(self, limit: int, window_s: float, *, reserve: int = 0) -> None:
        if limit < 1 or window_s <= 0 or not 0 <= reserve < limit:
            raise ValueError(
                f"a rate limit needs limit >= 1, window > 0 and 0 <= reserve <"
                f" limit, got {limit} per {window_s} s, reserve {reserve}"
            )
        self.limit = limit
        self.window_s = window_s
        self.reserve = reserve
        self._answered: deque[float] = deque()
        self._in_flight = 0
        self._lock = trio.Lock()
        self._urgent_lock = trio.Lock()
        self._urgent_waiting = 0
        self._urgent_served = trio.Event()
        self._answer_arrived = trio.Event()
        self._paused_until = -math.inf
        self.waited_s = 0.0

    @asynccontextmanager
    async def slot(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """Hold one request's place from sending until its answer has arrived."""
        await self._acquire(urgent)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._answered.append(trio.current_time())
            self._answer_arrived.set()
            self._answer_arrived = trio.Event()

    async def _acquire(self, urgent: bool) -> None:
        if urgent:
            self._urgent_waiting += 1
        try:
            async with self._urgent_lock if urgent else self._lock:
                started = trio.current_time()
                while not self._admit(trio.current_time(), urgent):
                    await self._wait_for_room(urgent)
                self.waited_s += trio.current_time() - started
        finally:
            if urgent:
                self._urgent_waiting -= 1
                if not self._urgent_waiting:
                    self._urgent_served.set()
                    self._urgent_served = trio.Event()

    def _admit(self, now: float, urgent: bool) -> bool:
        if now < self._paused_until or (self._urgent_waiting and not urgent):
            return False
        while self._answered and self._answered[0] <= now - self.window_s:
            self._answered.popleft()
        room = self.limit if urgent else self.limit - self.reserve
        return self._in_flight + len(self._answered) < room

    async def _wait_for_room(self, urgent: bool) -> None:
        now = trio.current_time()
        if now < self._paused_until:
            await trio.sleep_until(self._paused_until)
        elif self._urgent_waiting and not urgent:
            await self._urgent_served.wait()
        elif self._answered:
            await trio.sleep_until(self._answered[0] + self.window_s)
        else:
            # Every slot is in flight: its window starts at its answer.
            await self._answer_arrived.wait()

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (a 429's Retry-After)."""
        self._paused_until = max(self._paused_until, trio.current_time() + seconds)


class SharedFetch:
    """One read answers every caller that was already waiting when it began.

    For questions such as "is my customTag there yet?": a read that started
    after a caller arrived answers that caller, so a burst of N askers costs
    about two reads instead of N (the gateway allows 200 calls a minute).
    A failed read answers nobody; the next caller in line reads again.
    """

    def __init__(self, fetch: Callable[[], Awaitable[list[Json]]]) -> None:
        self._fetch = fetch
        self._lock = trio.Lock()
        self._started = 0
        self._answered = 0
        self._result: list[Json] = []

    async def get(self) -> list[Json]:
        arrived_after = self._started
        async with self._lock:
            if self._answered > arrived_after:
                return self._result
            self._started += 1
            number = self._started
            self._result = await self._fetch()
            self._answered = number
            return self._result


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    username: str
    # Kept out of every repr, so out of tracebacks and debug logs.
    api_key: str = field(repr=False)
    timeout: float = 10.0
    rate_limit: int = 190
    rate_window_s: float = 60.0
    # Attempts per call, the first included; then the task's own retry takes over.
    attempts: int = 3
    retry_base_delay: float = 0.5
    token_refresh_s: float = TOKEN_REFRESH_S


class ProjectXClient:
    """One authenticated session with the gateway, shared by all workers."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.limiter = RateLimiter(
            config.rate_limit,
            config.rate_window_s,
            # 9 of 190 a minute: room for the fill check's three calls per run.
            reserve=config.rate_limit // URGENT_SHARE,
        )
        self.calls: Counter[str] = Counter()
        # Failures by kind ("gateway_5", "http_503", "timeout"...), for /metrics.
        self.errors: Counter[str] = Counter()
        self.logins = 0
        self.refreshes = 0
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/api/",
            timeout=config.timeout,
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._token: str | None = None
        self._token_at = -math.inf
        self._auth_lock = trio.Lock()
        self._backoff = tenacity.wait_exponential(
            multiplier=config.retry_base_delay, max=30 * config.retry_base_delay
        ) + tenacity.wait_random(0, config.retry_base_delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- calls -------------------------------------------------------------

    async def request(
        self, endpoint: str, body: Json | None = None, *, urgent: bool = False
    ) -> Json:
        """Call ``endpoint``, retrying transient failures a bounded number of times.

        ``urgent`` calls (the fill check, the risk update) pass ahead of others
        waiting for the rate limit.
        """
        async for attempt in self.retrying(endpoint):
            with attempt:
                return await self.request_once(endpoint, body, urgent=urgent)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def retrying(self, endpoint: str) -> tenacity.AsyncRetrying:
        """Tenacity's loop over attempts at ``endpoint``, for transient failures."""
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_transient),
            # Attempts, not elapsed time: stop_after_delay reads the real
            # monotonic clock, not trio's.
            stop=tenacity.stop_after_attempt(self.config.attempts),
            wait=self._wait,
            before_sleep=lambda state: _log_retry(endpoint, state),
            reraise=True,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        delay = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome else None
        for leaf in leaves(error) if error is not None else []:
            if isinstance(leaf, RateLimited) and leaf.retry_after is not None:
                # The gateway said how long; the limiter holds everyone back
                # as long, so this only keeps the caller's own order of events.
                return leaf.retry_after
        return delay

    async def request_once(
        self, endpoint: str, body: Json | None = None, *, urgent: bool = False
    ) -> Json:
        """One call: on a 401, log in again once and repeat it once; no retries."""
        # A login or refresh on the way is as urgent as the call that needs it.
        reset = _urgent.set(urgent)
        try:
            return await self._call(endpoint, body)
        except Exception as exc:
            self.errors[error_code(exc)] += 1
            raise
        finally:
            _urgent.reset(reset)

    async def _call(self, endpoint: str, body: Json | None) -> Json:
        token = await self._current_token()
        response = await self._post(endpoint, body, token)
        if response.status_code == 401:
            logger.bind(endpoint=endpoint).warning("projectx.token_refused")
            await self._login_again(token)
            token = await self._current_token()
            response = await self._post(endpoint, body, token)
            if response.status_code == 401:
                raise AuthenticationError(
                    f"{endpoint} answered 401 even with a token from a fresh login"
                )
        return _envelope(endpoint, response, self.limiter)

    async def _post(
        self, endpoint: str, body: Json | None, token: str | None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.limiter.slot(urgent=_urgent.get()):
            self.calls[endpoint] += 1
            return await self._http.post(endpoint, json=body, headers=headers)

    # -- session -----------------------------------------------------------

    async def login(self) -> None:
        """Log in now (at start); later calls log in and refresh by themselves."""
        async for attempt in self.retrying("Auth/loginKey"):
            with attempt:
                async with self._auth_lock:
                    await self._login()

    async def _current_token(self) -> str:
        if self._token is None or self._token_age() >= self.config.token_refresh_s:
            async with self._auth_lock:
                if self._token is None:
                    await self._login()
                elif self._token_age() >= self.config.token_refresh_s:
                    await self._refresh()
        assert self._token is not None  # _login raised otherwise
        return self._token

    def _token_age(self) -> float:
        return trio.current_time() - self._token_at

    async def _login_again(self, refused: str) -> None:
        async with self._auth_lock:
            # Several calls may see the same dead token; one login serves all.
            if self._token == refused:
                self._token = None
                await self._login()

    async def _login(self) -> None:
        body = {"userName": self.config.username, "apiKey": self.config.api_key}
        response = await self._post("Auth/loginKey", body, None)
        try:
            data = _envelope("Auth/loginKey", response, self.limiter)
        except GatewayError as exc:
            name = LOGIN_ERRORS.get(exc.code, "unknown")
            raise AuthenticationError(
                f"ProjectX login refused for user {self.config.username!r}:"
                f" errorCode {exc.code} ({name}) {exc.message}".rstrip()
            ) from None
        self._set_token(data.get("token"), "Auth/loginKey")
        self.logins += 1
        logger.bind(logins=self.logins).info("projectx.logged_in")

    async def _refresh(self) -> None:
        assert self._token is not None
        try:
            response = await self._post("Auth/validate", None, self._token)
            data = (
                None
                if response.status_code == 401
                else _envelope("Auth/validate", response, self.limiter)
            )
        except GatewayError:
            data = None
        if data is None or not data.get("newToken"):
            # The old token is gone or unrenewable: start a new session.
            await self._login()
            return
        self._set_token(data["newToken"], "Auth/validate")
        self.refreshes += 1
        logger.bind(refreshes=self.refreshes).info("projectx.token_refreshed")

    def _set_token(self, token: object, endpoint: str) -> None:
        if not isinstance(token, str) or not token:
            raise ProjectXError(f"{endpoint} succeeded without a token, got {token!r}")
        register_secret(token)
        self._token = token
        self._token_at = trio.current_time()


def _envelope(endpoint: str, response: httpx.Response, limiter: RateLimiter) -> Json:
    """The JSON answer of a successful call; raise for everything else."""
    status = response.status_code
    if status == 429:
        retry_after = retry_after_s(response.headers.get("Retry-After"))
        if retry_after is not None:
            limiter.pause(retry_after)
        logger.bind(endpoint=endpoint, retry_after_s=retry_after).warning(
            "projectx.rate_limited"
        )
        raise RateLimited(endpoint, retry_after)
    if status >= 500:
        raise ServerError(endpoint, status)
    if status != 200:
        raise ProjectXError(
            f"{endpoint} answered HTTP {status}: {response.text[:200]!r}"
        )
    try:
        data = response.json()
    except ValueError:
        raise ProjectXError(
            f"{endpoint} answered non-JSON text {response.text[:200]!r}"
        ) from None
    if not isinstance(data, dict):
        raise ProjectXError(f"{endpoint} answered JSON that is not an object")
    if data.get("success") is not True:
        code = data.get("errorCode")
        raise GatewayError(
            endpoint, code if isinstance(code, int) else -1, data.get("errorMessage")
        )
    return data


def error_code(exc: BaseException) -> str:
    """A short, bounded label for a failed call (no messages: they vary)."""
    if isinstance(exc, GatewayError):
        return f"gateway_{exc.code}"
    if isinstance(exc, ServerError):
        return f"http_{exc.status}"
    if isinstance(exc, RateLimited):
        return "http_429"
    if isinstance(exc, AuthenticationError):
        return "auth"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "transport"
    return "other"


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _log_retry(endpoint: str, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.bind(
        endpoint=endpoint,
        attempt=state.attempt_number,
        delay_s=round(delay, 3),
        error=f"{type(error).__name__}: {error}" if error else None,
    ).warning("projectx.retry")
