"""The benchmark floor: a bare ASGI callable on hypercorn's trio worker.

It does what the daemon's webhook must do at the least (read the body, validate
the alert with the daemon's own parser, enqueue with ``send_nowait``, answer
202 with a JSON id) and nothing else: no framework, no journal, no logs. The
daemon's webhook throughput is measured as a share of this one's.

With ``--own-connections`` the same app is served by the daemon's connection
layer (trading_daemon/connections.py) instead of ``hypercorn.trio.serve``: the
daemon replaces hypercorn's per-request idle timer there, so this variant
shows how much of the daemon's standing against the floor comes from that and
how much its own webhook work costs.

Usage: python scripts/bench_floor.py PORT [--own-connections]
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trading_daemon.alerts import AlertError, parse_alert

_ids = itertools.count()


def make_app(queue: trio.MemorySendChannel[Any]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            signal = parse_alert(body)
            queue.send_nowait(signal)
            status, answer = 202, {"id": f"{next(_ids):016x}", "status": "queued"}
        except AlertError as exc:
            status, answer = 400, {"error": str(exc)}
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json")]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": payload})

    return app


async def main(port: int, own_connections: bool = False) -> None:
    send, receive = trio.open_memory_channel[Any](math.inf)

    async def drain() -> None:
        async for _ in receive:
            pass

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 1024
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        if not own_connections:
            await serve(make_app(send), config)  # type: ignore[arg-type]
            return
        from trading_daemon.config import Settings
        from trading_daemon.connections import serve as serve_capped

        defaults = Settings()
        config.keep_alive_timeout = defaults.keep_alive_timeout
        await serve_capped(
            make_app(send),
            config,
            max_connections=defaults.max_connections,
            read_timeout=defaults.read_timeout,
            shutdown_trigger=trio.sleep_forever,
        )


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), "--own-connections" in sys.argv[2:])
