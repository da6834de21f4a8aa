"""Maps domain events (frozen dataclasses) to stored events and back.

Bodies are JSON (readable in the EventStoreDB UI and by other languages); datetimes
travel as ISO-8601 strings, enums by value and frozensets as sorted lists. Metadata
carries the request id and command fingerprint that make retries idempotent, plus
correlation and causation ids.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_origin, get_type_hints

import orjson

from ledger.eventstore.port import NewEvent, RecordedEvent

EVENT_ID_NAMESPACE = uuid.UUID("6f1c8f0e-2b7a-4f6e-9a57-3f0d8c1b2e44")


@dataclass(frozen=True, slots=True)
class EventMetadata:
    request_id: str = ""
    fingerprint: str = ""
    correlation_id: str = ""
    causation_id: str = ""

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)  # {"request_id": ..., ...}, fields in order

    @classmethod
    def from_bytes(cls, raw: bytes) -> EventMetadata:
        try:
            data = orjson.loads(raw or b"{}")
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(*(str(data.get(name, "")) for name in _METADATA_FIELDS))


_METADATA_FIELDS = tuple(f.name for f in dataclasses.fields(EventMetadata))


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
        self._shapes = {cls: DataclassShape(cls) for cls in types.values()}

    def type_name(self, event: object) -> str:
        return self.type_name_of_class(type(event))

    def type_name_of_class(self, cls: type[Any]) -> str:
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnknownEventType(cls.__name__) from None

    def encode(self, event: object) -> tuple[str, bytes]:
        return self.type_name(event), dumps(event)

    def decode(self, type_name: str, data: bytes) -> object:
        cls = self._by_name.get(type_name)
        if cls is None:
            raise UnknownEventType(type_name)
        return self._shapes[cls].from_json(orjson.loads(data))

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


class DataclassShape:
    """How one dataclass travels as a JSON object. Which fields need converting back
    (datetimes, enums, frozensets) is worked out once per class, not once per value:
    decoding is on the projector's and every cold load's hot path."""

    def __init__(self, cls: type[Any]) -> None:
        hints = get_type_hints(cls)
        self.cls = cls
        self.fields = tuple(f.name for f in dataclasses.fields(cls))
        self.hints = {name: hints[name] for name in self.fields}
        self._decoders = {
            name: decoder for name in self.fields if (decoder := _decoder(hints[name])) is not None
        }

    def from_json(self, body: dict[str, Any]) -> Any:
        """The instance; TypeError (or ValueError) if `body` does not fit the class."""
        for name, decode in self._decoders.items():
            if name in body:
                body[name] = decode(body[name])
        return self.cls(**body)


def _decoder(hint: Any) -> Callable[[Any], object] | None:
    if hint is datetime:
        return lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if get_origin(hint) is frozenset:
        return lambda v: frozenset(v) if isinstance(v, list) else v
    return None


def dumps(value: object) -> bytes:
    """JSON of a dataclass (or of a dict or list holding them) as DataclassShape reads it
    back: fields in order, datetimes in ISO 8601, enums by value, frozensets as sorted
    lists. orjson writes dataclasses itself, in C; only frozensets need `_as_json`."""
    return orjson.dumps(value, default=_as_json)


def _as_json(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
