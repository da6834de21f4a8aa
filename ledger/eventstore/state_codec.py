"""Encodes an aggregate's state (a frozen dataclass, or None) for a snapshot, and back.

Kept out of the domain, which stays free of serialisation. The JSON carries a schema tag
derived from the class's name, field names and types plus a `revision` to bump when
`evolve` changes meaning without the class changing: a snapshot written under another
schema is refused (ValueError), never misread, and the stream is replayed instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Generic, TypeVar

from ledger.eventstore.codec import DataclassShape, dumps

T = TypeVar("T")


class JsonStateCodec(Generic[T]):
    def __init__(self, cls: type[T], *, revision: int = 1) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        self._cls = cls
        self._shape = DataclassShape(cls)
        shape = ",".join(f"{name}:{hint!r}" for name, hint in self._shape.hints.items())
        described = f"{cls.__module__}.{cls.__qualname__}:{revision}:{shape}"
        self.schema = hashlib.sha256(described.encode()).hexdigest()[:16]

    def encode(self, state: T | None) -> bytes:
        return dumps({"schema": self.schema, "state": state})

    def decode(self, data: bytes) -> T | None:
        """The state; ValueError if `data` is not a state of this schema."""
        try:
            doc = json.loads(data)
        except ValueError:
            raise ValueError("a snapshot is not JSON") from None
        if not isinstance(doc, dict) or doc.get("schema") != self.schema:
            raise ValueError("a snapshot of another schema")
        body: Any = doc.get("state")
        if body is None:
            return None
        try:
            return self._shape.from_json(body)  # type: ignore[no-any-return]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"a snapshot does not fit {self._cls.__name__}: {exc}") from None
