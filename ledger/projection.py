"""Projections: small `On<Event>` handlers that turn recorded events into view upserts.

A Projection is a named, versioned set of views fed by one checkpoint; handlers are
pure (event in, upserts out), so a replay yields the same upserts and the view
store's position check turns a redelivery into a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ledger.eventstore.codec import EventCodec
from ledger.eventstore.port import RecordedEvent
from ledger.views.port import Collection, Upsert

Ev = TypeVar("Ev")
Handler = Callable[[Any, RecordedEvent], Iterable[Upsert]]


class Projection:
    def __init__(
        self,
        *,
        name: str,
        version: int,
        codec: EventCodec,
        categories: Sequence[str],
        collections: Sequence[Collection],
    ) -> None:
        self.name = name
        self.version = version
        self.codec = codec
        self.stream_prefixes = tuple(f"{c}-" for c in categories)
        self.collections = tuple(collections)
        self._handlers: dict[str, Handler] = {}

    @property
    def checkpoint_name(self) -> str:
        return f"{self.name}-v{self.version}"

    def on(
        self, event_type: type[Ev]
    ) -> Callable[
        [Callable[[Ev, RecordedEvent], Iterable[Upsert]]],
        Callable[[Ev, RecordedEvent], Iterable[Upsert]],
    ]:
        type_name = self.codec.type_name_of_class(event_type)

        def register(
            handler: Callable[[Ev, RecordedEvent], Iterable[Upsert]],
        ) -> Callable[[Ev, RecordedEvent], Iterable[Upsert]]:
            self._handlers[type_name] = handler
            return handler

        return register

    def upserts_for(self, recorded: RecordedEvent) -> list[Upsert]:
        handler = self._handlers.get(recorded.type)
        if handler is None:
            return []
        return list(handler(self.codec.decode_recorded(recorded), recorded))
