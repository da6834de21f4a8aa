"""Runs a process manager: reacts to events from the log by running commands.

A context supplies `react(recorded) -> Step | None`; each step is one idempotent
command (deterministic request and event ids), so the runner may replay any event
any number of times, from any number of processes at once, without an effect twice.

Progress is a checkpoint kept in the event store itself, on the stream
`processmanager-<name>`: a checkpoint at P means every step for every event up to P
has run (by this process or another one sharing the name, which is why several
command servers may share it). It is written at most about once per
`checkpoint_interval` seconds when steps ran, after `checkpoint_every` log positions
without any, and on stop; a crash merely replays the steps since the last one. The
stream grows by one small event per write while there is work, and the start reads
it whole for its last event (the port has no backward read yet; EventStoreDB can cap
the stream with `$maxCount` metadata).

Steps of one batch run concurrently (up to `concurrency` at a time); the next batch
starts when all of them are done. A step that fails with Unavailable or
ConcurrencyConflict is retried with backoff; any other failure is logged as an error
and skipped, so one poisoned step cannot stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ledger.backoff import Backoff
from ledger.errors import ConcurrencyConflict, LedgerError, Unavailable
from ledger.eventstore.codec import EventCodec, EventMetadata
from ledger.eventstore.pacing import LIVE_PACE, paced
from ledger.eventstore.port import ANY_VERSION, EventStore, RecordedEvent

log = logging.getLogger("ledger.processmanager")

CHECKPOINT_CATEGORY = "processmanager"
RETRYABLE = (Unavailable, ConcurrencyConflict)


@dataclass(frozen=True, slots=True)
class Step:
    """One idempotent command to run in reaction to an event."""

    name: str
    """What the step does, for the logs (e.g. "credit transfer t-1")."""
    run: Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    position: int


checkpoint_codec = EventCodec({"V1.CheckpointSaved": CheckpointSaved})


class ProcessManager:
    def __init__(
        self,
        store: EventStore,
        *,
        name: str,
        stream_prefixes: Sequence[str],
        event_types: Sequence[str] = (),
        react: Callable[[RecordedEvent], Step | None],
        concurrency: int = 32,
        checkpoint_interval: float = 1.0,
        checkpoint_every: int = 1000,
        max_delay: float = 5.0,
        live_pace: float = LIVE_PACE,
    ) -> None:
        self._store = store
        self._name = name
        self._stream_prefixes = tuple(stream_prefixes)
        self._event_types = tuple(event_types)  # what `react` may act on: the store skips the rest
        self._react = react
        self._live_pace = live_pace  # see LIVE_PACE: most commits hold nothing it acts on
        self._slots = asyncio.Semaphore(concurrency)
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_every = checkpoint_every
        self._max_delay = max_delay
        self.checkpoint_stream = f"{CHECKPOINT_CATEGORY}-{name}"
        self.position = 0
        """Every step for every event up to here has run."""
        self._saved = 0
        self._saved_at = 0.0
        self._saved_steps = 0
        self.steps = 0
        """Steps run since start (a replayed step counts again)."""

    async def run(self) -> None:
        """Run until cancelled; save the checkpoint on the way out."""
        backoff = Backoff(cap=self._max_delay)
        try:
            while True:
                position_before = self.position
                try:
                    await self._follow()
                except Exception as exc:
                    if self.position != position_before:
                        backoff.reset()
                    self._log_failure("process manager interrupted", exc, delay=backoff.delay)
                    await asyncio.sleep(backoff.take())
        except asyncio.CancelledError:
            await self._save_on_stop()
            raise

    async def _follow(self) -> None:
        self.position = self._saved = await self.load_checkpoint()
        self._saved_at = time.monotonic()
        log.info(
            "process manager starting",
            extra={"process_manager": self._name, "position": self.position},
        )
        subscription = self._store.subscribe(
            self.position, stream_prefixes=self._stream_prefixes, event_types=self._event_types
        )
        async for batch in paced(subscription, self._live_pace):
            steps = [s for r in batch.events if (s := self._react(r)) is not None]
            if steps:
                async with asyncio.TaskGroup() as group:
                    for step in steps:
                        group.create_task(self._run_step(step))
            self.steps += len(steps)
            self.position = batch.position
            if self._checkpoint_due():
                await self._save(self.position)

    async def _run_step(self, step: Step) -> None:
        backoff = Backoff(first=0.01, cap=self._max_delay)
        async with self._slots:
            while True:
                try:
                    await step.run()
                    return
                except RETRYABLE as exc:
                    log.warning(
                        f"step failed, retrying in {backoff.delay:.2f}s",
                        extra={
                            "process_manager": self._name,
                            "step": step.name,
                            "error": exc.message,
                        },
                    )
                except Exception as exc:
                    self._log_failure("step failed, skipped", exc, step=step.name)
                    return
                await asyncio.sleep(backoff.take() * random.uniform(0.5, 1.0))

    def _log_failure(self, message: str, exc: Exception, **extra: object) -> None:
        fields = {"process_manager": self._name, **extra}
        if isinstance(exc, Unavailable):
            log.warning(message, extra={**fields, "error": exc.message})
        elif isinstance(exc, LedgerError):
            log.error(message, extra={**fields, "error": exc.message, "reason": exc.reason})
        else:
            log.error(message, extra=fields, exc_info=exc)

    def _checkpoint_due(self) -> bool:
        if self.position - self._saved >= self._checkpoint_every:
            return True
        elapsed = time.monotonic() - self._saved_at
        return self.steps > self._saved_steps and elapsed >= self._checkpoint_interval

    async def load_checkpoint(self) -> int:
        last = await self._store.read_last(self.checkpoint_stream)
        if last is None:
            return 0
        saved = checkpoint_codec.decode_recorded(last)
        assert isinstance(saved, CheckpointSaved)
        return saved.position

    async def _save(self, position: int) -> None:
        event = checkpoint_codec.new_events(
            self.checkpoint_stream, [CheckpointSaved(position)], EventMetadata()
        )
        await self._store.append(self.checkpoint_stream, event, ANY_VERSION)
        self._saved, self._saved_at, self._saved_steps = position, time.monotonic(), self.steps

    async def _save_on_stop(self) -> None:
        if self.position != self._saved:
            try:
                await self._save(self.position)
            except Exception as exc:  # the next start replays a little more, no harm done
                self._log_failure("checkpoint not saved on stop", exc)
        log.info(
            "process manager stopped",
            extra={"process_manager": self._name, "position": self.position},
        )
