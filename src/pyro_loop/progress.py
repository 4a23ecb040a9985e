"""Where a long operation is: one event type for all of them, and the callback that takes it.

Prepare and its snapshot builds, environment and tool builds, check, remote push and pull and
the MCP server's warm-up report their steps by calling `on_progress(Progress(...))`; the
library never prints. Each front renders the same events its own way: the CLI as plain
lines, a live line on a terminal, or JSON lines; the MCP server as progress notifications.
A front decides how to show an event from its fields, never by parsing its text.
"""

# No `from __future__ import annotations`: below Python 3.12 a TypedDict compiles each string
# annotation (ProgressJSON's), and this module is imported by every command.
from collections.abc import Callable
from typing import Literal, TypedDict

from pyro_loop.records import dataclass

Unit = Literal["bytes", "items"]


class ProgressJSON(TypedDict):
    """One event as `--json` progress lines carry it (one JSON object per line)."""

    phase: str
    message: str
    done: int | None
    total: int | None
    unit: Unit | None


@dataclass(frozen=True)
class Progress:
    """One step of a long operation.

    `phase` names the step ("environment", "tools", "dependencies", "baseline", "pull",
    "push", "check", "warning", ...); `message` is what a person reads. A step that moves
    through a known amount says how far it got: `done` of `total` `unit`s (bytes of a
    download, items of a list); `total` is None when unknown.
    """

    phase: str
    message: str
    done: int | None = None
    total: int | None = None
    unit: Unit | None = None

    def text(self) -> str:
        """ "phase: message", the form every front shows."""
        return f"{self.phase}: {self.message}"

    def describe(self) -> str:
        """ "phase: message (42%)": the text with how far the step got, when it counts."""
        amount = self.amount()
        return self.text() + (f" ({amount})" if amount else "")

    def amount(self) -> str:
        """ "42%" of a download, "2 of 5 done" of a list; "" when the event does not count."""
        if self.done is None or not self.total:
            return ""
        if self.unit == "bytes":
            return f"{self.fraction():.0%}"
        return f"{self.done} of {self.total} done"

    def fraction(self) -> float | None:
        """How far the step is, from 0 to 1, when it knows its total."""
        if self.done is None or not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    def to_json(self) -> ProgressJSON:
        return {
            "phase": self.phase,
            "message": self.message,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
        }


OnProgress = Callable[[Progress], None]


def ignore(_event: Progress) -> None:
    """The callback of a caller that does not follow progress."""


class Phase:
    """One phase's reporter: `report("message")`, or with how far it got, to `on_progress`
    (None: nobody follows)."""

    def __init__(self, phase: str, on_progress: OnProgress | None) -> None:
        self.phase = phase
        self.on_progress = on_progress

    def __call__(
        self,
        message: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: Unit | None = None,
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(self.phase, message, done, total, unit))
