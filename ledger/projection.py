"""Projections: small `On<Event>` handlers that turn recorded events into view upserts.

A Projection is a named, versioned set of views fed by one checkpoint; handlers are
pure (event in, upserts out), so a replay yields the same upserts and the view
store's position check turns a redelivery into a no-op.

Every projection also declares PARKED, where its runner sets aside the events it
cannot apply (see ledger.parking).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ledger.eventstore.codec import EventCodec
from ledger.eventstore.port import RecordedEvent
from ledger.generations import Generation
from ledger.views.port import KEY, Collection, Index, Upsert, check_field_name

Ev = TypeVar("Ev")
Handler = Callable[[Any, RecordedEvent], Iterable[Upsert]]

PARKED = "parked_events"
PARKED_COLLECTION = Collection(PARKED, (Index(("projection", "resolved", "position")),))
MAX_SETTABLE = 4096
"""Field names remembered as checked: handlers use a handful; the bound is for safety."""


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
        self.collections = (*collections, PARKED_COLLECTION)
        self._names = frozenset(c.name for c in collections)
        self._handlers: dict[str, Handler] = {}
        self._settable: set[str] = set()  # field names checked already

    @property
    def first_generation(self) -> Generation:
        """Generation 0 of its views: the bare collection names (see ledger.generations)."""
        return Generation(self.name, 0, self.version)

    @property
    def checkpoint_name(self) -> str:
        """Generation 0's checkpoint (a rebuild's generations have their own)."""
        return self.first_generation.name

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
        """The event's upserts; raises if it cannot be decoded or handled, or if the
        handler asks for a write the view store would refuse (so that the runner can
        park this one event rather than fail the whole batch)."""
        handler = self._handlers.get(recorded.type)
        if handler is None:
            return []
        upserts = list(handler(self.codec.decode_recorded(recorded), recorded))
        for op in upserts:
            if op.collection not in self._names:
                raise ValueError(f"{self.name} declares no view collection {op.collection!r}")
            if not op.fields.keys() <= self._settable:  # a set lookup, not a regex, per field
                for field in op.fields:
                    if check_field_name(field) == KEY:
                        raise ValueError("a view document's key cannot be set through its fields")
                if len(self._settable) < MAX_SETTABLE:
                    self._settable.update(op.fields)
        return upserts
