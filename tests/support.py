"""Helpers shared by tests that cannot use the mock clock."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Wait on the real clock until ``condition()`` holds, failing after ``limit_s``.

    For outcomes that finish on worker threads (journal commits), which the
    autojump clock would treat as idle time and skip past.
    """
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110 - the change happens on a thread
            await trio.sleep(0.002)
