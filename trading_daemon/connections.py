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
  closed connections fill the cap.

``serve`` follows ``hypercorn.trio.run.worker_serve`` step by step (lifespan,
the shutdown trigger, the graceful timeout), minus the TLS and QUIC listeners
the daemon does not use.
"""

from __future__ import annotations

import errno
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
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app
from loguru import logger


class GuardedStream(trio.abc.HalfCloseableStream):
    """A client connection whose requests must arrive within a deadline.

    A request's deadline is armed by the connection opening and by the first
    byte after each answer; sending an answer arms the idle deadline instead.
    While the app works on a request hypercorn does not read, so only the
    client's own slowness counts against it.
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

    def attach(self, scope: trio.CancelScope) -> None:
        """The scope of the task serving this connection, cancelled to end it."""
        self._scope = scope

    @property
    def socket(self) -> trio.socket.SocketType:
        # hypercorn reads the peer and local addresses from here.
        return self._stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        started = self._request_started
        if started is None:
            deadline = self._answered + self._idle_timeout
        else:
            deadline = started + self._read_timeout
        with trio.move_on_at(deadline):
            data = await self._stream.receive_some(max_bytes)
            if not data:
                # The client has gone. hypercorn only reads while no request
                # is being answered, so no answer is cut short here.
                self._hang_up()
            elif self._request_started is None:
                self._request_started = trio.current_time()
            return bytes(data)
        if started is not None:
            self._log_timeout()
        self._hang_up()
        # hypercorn's read loop treats TooSlowError as the end of the connection.
        raise trio.TooSlowError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._request_started = None
        self._answered = trio.current_time()
        await self._stream.send_all(data)

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
        return GuardedStream(
            stream,
            read_timeout=self._read_timeout,
            idle_timeout=self._idle_timeout,
            on_close=partial(self._slots.release_on_behalf_of, borrower),
        )

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
                TCPServer,
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
                server_nursery.cancel_scope.deadline = (
                    trio.current_time() + config.graceful_timeout
                )

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
