"""Connections: how many the daemon holds at once, and how long a request may take.

hypercorn 0.18 has neither a cap on simultaneous connections nor a deadline for
a whole request. Its ``read_timeout`` bounds one silent gap between two reads,
so a client that trickles a byte a second never meets it (and setting it would
also cut idle keep-alive connections early); its keep-alive timer stops as soon
as a request's headers are complete. So the daemon runs hypercorn's own
connection handler (``TCPServer``) over a listener of its own that

- accepts only while fewer than ``max_connections`` connections are open;
  beyond that, new connections wait in the kernel's listen backlog until one
  closes, so a burst is served late rather than refused;
- gives each request ``read_timeout`` seconds, counted from its first byte (or
  from the moment the connection opened) to the start of its answer, and then
  closes the connection: a slow-loris client holds a slot that long at most;
- closes a connection idle for ``keep_alive_timeout`` after an answer. hypercorn
  does too, except after a ``Connection: close`` answer: it then waits for the
  client to hang up, however long that takes;
- ends a connection's task as soon as the client has gone. hypercorn keeps the
  task of a connection that ended between requests (and, until then, its
  socket) until the keep-alive timer runs out, 75 s here, which would let
  closed connections fill the cap;
- keeps the idle time itself. hypercorn's connection handler stops and restarts
  a timer task around every request (a lock and a ``nursery.start`` each time,
  about a tenth of the webhook's cost under load); the stream already bounds the
  wait between requests, so it takes the timer's place (``_IdleSignal``), and
  closes idle connections at shutdown as the timer would have.

``serve`` follows ``hypercorn.trio.run.worker_serve`` step by step (lifespan,
the shutdown trigger, the graceful timeout), minus the TLS and QUIC listeners
the daemon does not use.
"""

from __future__ import annotations

import errno
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app
from loguru import logger


class GuardedStream(trio.abc.HalfCloseableStream):
    """A client connection whose requests must arrive within a deadline.

    A request's deadline is armed by the connection opening and by the first
    byte after each answer, and runs until its answer starts; sending an answer
    arms the idle deadline instead. hypercorn keeps a read pending while the
    app answers (whenever h11's buffer is empty), so a read's deadline is
    re-armed when the answer starts and again when it ends; otherwise an idle
    keep-alive connection would meet its request's deadline, and be cut as a
    slow client, seconds after the answer.

    The deadline sits on the connection's own cancel scope rather than on a
    new scope per read (a measurable cost per request): when it passes, the
    connection ends, which is what a timeout means here anyway.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        read_timeout: float,
        idle_timeout: float,
        on_close: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._on_close: Callable[[], None] | None = on_close
        self._request_started: float | None = trio.current_time()
        self._answered = self._request_started
        self._scope: trio.CancelScope | None = None
        self._hung_up = False
        self._reading = False
        # Between requests, as hypercorn's protocol reports it (_IdleSignal).
        self.idle = True

    def attach(self, scope: trio.CancelScope) -> None:
        """The scope of the task serving this connection, cancelled to end it."""
        self._scope = scope
        if self._hung_up:
            scope.cancel()

    def mark_idle(self, idle: bool) -> None:
        """hypercorn's protocol says a request began (False) or ended (True)."""
        self.idle = idle
        if idle:
            # The answer is complete: the wait for the next request starts now.
            # (At shutdown hypercorn closes after the answer instead of getting
            # here, and close_idle ends the connections that were idle.)
            self._answered = trio.current_time()
            self._arm()

    def close_if_idle(self) -> None:
        """At shutdown: end the connection unless a request is being answered.

        A connection accepted but not yet served counts as idle: it ends as
        soon as its task starts (``attach``).
        """
        if self.idle:
            self._hang_up()

    @property
    def socket(self) -> trio.socket.SocketType:
        # hypercorn reads the peer and local addresses from here.
        return self._stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        scope = self._scope
        assert scope is not None, "attach() comes before hypercorn reads"
        self._reading = True
        self._arm()
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.Cancelled:
            started = self._request_started
            if started is not None and trio.current_time() >= (
                started + self._read_timeout
            ):
                self._log_timeout()
            raise
        finally:
            self._reading = False
            scope.deadline = math.inf
        if not data:
            if self.idle:
                # The client has gone between requests: end the connection now
                # rather than hold its slot until the idle deadline.
                self._hang_up()
            # Otherwise a request is being answered, and a client that only
            # half-closed still waits for its answer: hypercorn sees the end of
            # the stream and closes after the answer.
        elif self._request_started is None:
            self._request_started = trio.current_time()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._request_started = None
        self._answered = trio.current_time()
        self._arm()
        await self._stream.send_all(data)

    def _arm(self) -> None:
        """Put the deadline of the pending read, if any, on the connection."""
        if not self._reading or self._scope is None:
            return
        started = self._request_started
        if started is None:
            self._scope.deadline = self._answered + self._idle_timeout
        else:
            self._scope.deadline = started + self._read_timeout

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        # Free the slot first: the close itself may be cancelled.
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
        await self._stream.aclose()

    def _hang_up(self) -> None:
        self._hung_up = True
        if self._scope is not None:
            self._scope.cancel()

    def _log_timeout(self) -> None:
        try:
            peer = self._stream.socket.getpeername()
            client = str(peer[0]) if isinstance(peer, tuple) else "-"
        except OSError:
            client = "-"
        logger.bind(client=client, read_timeout_s=self._read_timeout).warning(
            "http.read_timeout"
        )


class _IdleSignal(TrioSingleTask):
    """Stands in for hypercorn's per-connection idle timer task.

    hypercorn calls ``restart`` when a connection becomes idle (opened, or an
    answer finished) and ``stop`` when a request arrives. Neither starts a
    task here: the stream enforces the idle timeout in its own reads.
    """

    def __init__(self, stream: GuardedStream) -> None:
        super().__init__()
        self._stream = stream

    async def restart(self, task_group: Any, action: Any) -> None:
        self._stream.mark_idle(True)

    async def stop(self) -> None:
        self._stream.mark_idle(False)


class _Connection(TCPServer):
    """hypercorn's connection handler with ``_IdleSignal`` as its idle timer."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: ConnectionState,
        stream: GuardedStream,
    ) -> None:
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self.idle_task = _IdleSignal(stream)


class CappedListener(trio.abc.Listener[GuardedStream]):
    """Accepts only while fewer than ``max_connections`` connections are open.

    ``trio.SocketListener`` takes one connection per scheduler pass; under load
    a pass is long, and a burst of new connections then waits seconds in the
    kernel queue (PITFALLS.md measured about 30 a second). This listener takes
    every connection the kernel has ready in one pass and hands them out
    without yielding, so ``trio.serve_listeners`` starts all their handlers
    in that same pass.
    """

    def __init__(
        self,
        sock: socket.socket,
        slots: trio.CapacityLimiter,
        *,
        read_timeout: float,
        idle_timeout: float,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._slots = slots
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._ready: deque[trio.SocketStream] = deque()
        self._full = False
        self._open: set[GuardedStream] = set()

    async def accept(self) -> GuardedStream:
        borrower = object()
        try:
            self._slots.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            if not self._full:
                self._full = True
                logger.bind(max_connections=self._slots.total_tokens).warning(
                    "http.connections_full"
                )
            await self._slots.acquire_on_behalf_of(borrower)
        self._full = False
        try:
            stream = self._ready.popleft() if self._ready else await self._wait_ready()
        except BaseException:
            self._slots.release_on_behalf_of(borrower)
            raise

        def closed() -> None:
            self._open.discard(guarded)
            self._slots.release_on_behalf_of(borrower)

        guarded = GuardedStream(
            stream,
            read_timeout=self._read_timeout,
            idle_timeout=self._idle_timeout,
            on_close=closed,
        )
        self._open.add(guarded)
        return guarded

    def close_idle(self) -> None:
        """End every connection that is between requests (shutdown).

        Called once no more are accepted, so every connection is in ``_open``.
        """
        for stream in list(self._open):
            stream.close_if_idle()

    async def _wait_ready(self) -> trio.SocketStream:
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            self._take_all()
            if self._ready:
                return self._ready.popleft()

    def _take_all(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # The client gave up between SYN and accept: not our problem.
                if exc.errno in _IGNORED_ACCEPT_ERRORS:
                    continue
                raise
            self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))

    async def aclose(self) -> None:
        while self._ready:
            self._ready.popleft().socket.close()
        self._sock.close()
        await trio.lowlevel.checkpoint()


# Most connections taken from the kernel in one pass; the rest wait for the next.
_ACCEPT_BATCH = 512
_IGNORED_ACCEPT_ERRORS = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENOPROTOOPT,
    errno.EOPNOTSUPP,
}


async def _serve_connection(
    handler: Callable[[GuardedStream], Awaitable[None]], stream: GuardedStream
) -> None:
    with trio.CancelScope() as scope:
        stream.attach(scope)
        await handler(stream)
    # hypercorn closes the stream itself, unless it was cancelled on the way.
    await stream.aclose()


async def serve(
    app: Any,
    config: Config,
    *,
    max_connections: int,
    read_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` like ``hypercorn.trio.serve``, with the limits above.

    Stops only through ``shutdown_trigger``: cancelling around this leaves
    clients hanging and skips lifespan shutdown (hypercorn#106, #238).
    """
    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    slots = trio.CapacityLimiter(max_connections)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(
                    CappedListener(
                        sock,
                        slots,
                        read_timeout=read_timeout,
                        idle_timeout=config.keep_alive_timeout,
                    )
                )
                binds.append(
                    f"http://{repr_socket_addr(sock.family, sock.getsockname())}"
                )
            handler = partial(
                _Connection,
                wrapped,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
            )
            task_status.started(binds)

            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(_serve_connection, handler),
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as group:
                _, others = group.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                # Idle keep-alive connections close now; requests in flight get
                # the graceful timeout.
                await context.terminated.set()
                for listener in listeners:
                    listener.close_idle()
                server_nursery.cancel_scope.deadline = (
                    trio.current_time() + config.graceful_timeout
                )

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
