"""Task priorities: lower value runs first."""

from __future__ import annotations

import enum


class Priority(enum.IntEnum):
    """How urgent a task is; the scheduler always starts the lowest value first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4

    @property
    def label(self) -> str:
        return self.name.lower()
