"""Maps domain events (frozen dataclasses) to stored events and back.

Bodies are JSON (readable in the EventStoreDB UI and by other languages); datetimes
travel as ISO-8601 strings and enums by value. Metadata carries the request id and
command fingerprint that make retries idempotent, plus correlation and causation ids.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_type_hints

from ledger.eventstore.port import NewEvent, RecordedEvent

EVENT_ID_NAMESPACE = uuid.UUID("6f1c8f0e-2b7a-4f6e-9a57-3f0d8c1b2e44")


@dataclass(frozen=True, slots=True)
class EventMetadata:
    request_id: str = ""
    fingerprint: str = ""
    correlation_id: str = ""
    causation_id: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EventMetadata:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(**{f.name: str(data.get(f.name, "")) for f in dataclasses.fields(cls)})


def event_id_for(stream: str, request_id: str, index: int) -> uuid.UUID:
    """Deterministic per (stream, request, index): a retried command re-creates the same ids."""
    if not request_id:
        return uuid.uuid4()
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{stream}\x1f{request_id}\x1f{index}")


class UnknownEventType(Exception):
    pass


class EventCodec:
    """A registry of event types: `type_name -> dataclass`, e.g. 'V1.FundsDeposited'."""

    def __init__(self, types: Mapping[str, type[Any]]) -> None:
        self._by_name = dict(types)
        self._by_class = {cls: name for name, cls in types.items()}
        self._hints = {cls: get_type_hints(cls) for cls in types.values()}

    def type_name(self, event: object) -> str:
        return self.type_name_of_class(type(event))

    def type_name_of_class(self, cls: type[Any]) -> str:
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnknownEventType(cls.__name__) from None

    def encode(self, event: object) -> tuple[str, bytes]:
        name = self.type_name(event)
        body = {f.name: _to_json(getattr(event, f.name)) for f in dataclasses.fields(event)}  # type: ignore[arg-type]
        return name, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, type_name: str, data: bytes) -> object:
        cls = self._by_name.get(type_name)
        if cls is None:
            raise UnknownEventType(type_name)
        body = json.loads(data)
        hints = self._hints[cls]
        return cls(**{name: _from_json(hints[name], value) for name, value in body.items()})

    def knows(self, type_name: str) -> bool:
        return type_name in self._by_name

    def new_events(
        self, stream: str, events: Iterable[object], metadata: EventMetadata
    ) -> list[NewEvent]:
        raw = metadata.to_bytes()
        out = []
        for index, event in enumerate(events):
            name, data = self.encode(event)
            event_id = event_id_for(stream, metadata.request_id, index)
            out.append(NewEvent(event_id=event_id, type=name, data=data, metadata=raw))
        return out

    def decode_recorded(self, recorded: RecordedEvent) -> object:
        return self.decode(recorded.type, recorded.data)


def _to_json(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _from_json(hint: Any, value: object) -> object:
    if hint is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    return value
