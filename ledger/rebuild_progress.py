"""What an operator sees while a rebuild runs: events done, rate and time to finish.

The command that asks for a rebuild follows it through the view store alone (the
control document and the building generation's status record), so it works against
a projector in another process, container or host.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from ledger.generations import Generation, load
from ledger.views.port import KEY, ViewStore, status_count

WINDOW = 5.0
"""Seconds over which the rate is measured."""


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    applied: int
    position: int
    head: int


class Progress:
    """Rate and estimate from the samples of the last WINDOW seconds.

    The estimate divides what is left of the log (in positions, the only unit every
    event store shares) by the rate positions have been advancing at."""

    def __init__(self) -> None:
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at - self._samples[1].at >= WINDOW:
            self._samples.popleft()

    def events_per_second(self) -> float:
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at - first.at
        return (last.applied - first.applied) / elapsed if elapsed > 0 else 0.0

    def seconds_left(self) -> float | None:
        first, last = self._samples[0], self._samples[-1]
        elapsed, advanced = last.at - first.at, last.position - first.position
        if elapsed <= 0 or advanced <= 0:
            return None
        return max(0, last.head - last.position) / (advanced / elapsed)

    def line(self, name: str) -> str:
        last = self._samples[-1]
        share = f" ({100 * last.position / last.head:.0f}%)" if last.head else ""
        left = self.seconds_left()
        eta = "estimating" if left is None else f"about {left:.0f} s to go"
        return (
            f"rebuilding {name}: {last.applied:,} events applied, position {last.position:,}"
            f" of {last.head:,}{share}, {self.events_per_second():,.0f} events/s, {eta}"
        )


class Terminal:
    """One line redrawn in place on a terminal; a line every few seconds elsewhere (logs)."""

    def __init__(self, out: TextIO, *, every: float = 2.0) -> None:
        self._out = out
        self._tty = out.isatty()
        self._every = every
        self._last = float("-inf")
        self._drawn = False

    def show(self, text: str) -> None:
        if self._tty:
            self._out.write(f"\r{text}\x1b[K")
            self._drawn = True
        elif time.monotonic() - self._last >= self._every:
            self._out.write(f"{text}\n")
            self._last = time.monotonic()
        self._out.flush()

    def say(self, text: str) -> None:
        if self._drawn:
            self._out.write("\n")
            self._drawn = False
        self._out.write(f"{text}\n")
        self._out.flush()


async def follow_rebuild(
    views: ViewStore,
    projection: str,
    version: int,
    request: str,
    out: Terminal,
    *,
    pickup_timeout: float,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Show the rebuild that `request` asked for until readers use it: 0 once switched,
    1 if it failed or no projector took the request up in `pickup_timeout` seconds."""
    started = clock()
    target: Generation | None = None
    progress = Progress()
    while True:
        generations, _ = await load(views, projection, version)
        if target is None and generations.handled_request == request:
            target = generations.building or generations.active
            out.say(f"the projector is building {target.name} beside {generations.active.name}")
        if target is None:
            if clock() - started > pickup_timeout:
                out.say(
                    f"no projector took the request up in {pickup_timeout:.0f} s; the projector"
                    " will when it runs (is it running, with the same view store?)"
                )
                return 1
        elif generations.active == target:
            out.say(
                f"switched: readers now use {target.name}"
                + (
                    f"; {generations.retired.name} is dropped after the grace period"
                    if generations.retired
                    else ""
                )
            )
            return 0
        else:
            record = next((r for r in await views.statuses() if r.get(KEY) == target.name), {})
            if record.get("state") == "FAILED":
                out.say(f"the rebuild of {target.name} failed: {record.get('last_error')}")
                return 1
            if record:
                progress.add(
                    Sample(
                        clock(),
                        status_count(record, "applied_events"),
                        status_count(record, "checkpoint_position"),
                        status_count(record, "head_position"),
                    )
                )
                out.show(progress.line(target.name))
        await asyncio.sleep(interval)
