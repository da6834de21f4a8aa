"""The view store port: keyed documents in named collections, plus checkpoints.

Projections only ever *upsert* documents conditionally on the log position of the
event that caused the change: a document that already reflects that position (or a
later one) is left alone. Redelivered events are therefore no-ops in every adapter,
with or without transactions, and a batch written with its checkpoint in one
transaction (where the store has them) can never be half-applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Scalar = str | int | bool | None
StatusValue = Scalar | float
"""A field of a status record: a scalar, or a float (rates and durations, never money)."""
Document = dict[str, Any]


def status_count(record: Mapping[str, StatusValue], name: str) -> int:
    """A count or position from a status record; 0 if it is missing, odd or negative
    (records are read across processes and versions: never trusted to be well formed)."""
    value = record.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


KEY = "_id"
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_field_name(name: str) -> str:
    """Field names come from code, never from clients; refuse anything odd all the same."""
    if not FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid view field name {name!r}")
    return name


def prefix_end(prefix: str) -> str | None:
    """The least string after every string that starts with `prefix` (None: there is
    none), so `prefix <= key < prefix_end(prefix)` is a range scan of the keys. Stores
    compare keys by code point (SQLite's BINARY, MongoDB's default), as this does."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    after = ord(stripped[-1]) + 1
    return stripped[:-1] + chr(0xE000 if 0xD800 <= after <= 0xDFFF else after)  # no surrogates


@dataclass(frozen=True, slots=True)
class Index:
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Collection:
    name: str
    indexes: tuple[Index, ...] = ()


@dataclass(frozen=True, slots=True)
class Upsert:
    """Create `key` or merge `fields` into it, unless it already reflects `position`.

    `rendered`, if set, replaces the document's rendering: the document as its readers
    serve it (an encoded API message, say), made once by the projection so that a read
    serves stored bytes instead of building its answer field by field. Opaque to the
    store, and never part of the document `get` and `find` return; an upsert without one
    leaves the rendering as it was."""

    collection: str
    key: str
    fields: Mapping[str, Scalar]
    position: int
    rendered: bytes | None = None


class Changes(Protocol):
    """Tells when a store may have changed: what a reader waits on instead of polling."""

    async def wait(self, budget: float | None = None) -> bool:
        """Return once the store may have changed (True), or after `budget` (False)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    position: int
    updated_at: datetime | None = None


class ViewStore(Protocol):
    async def open(self, collections: Sequence[Collection]) -> None:
        """Connect and create the collections and indexes the queries need."""

    async def close(self) -> None: ...

    async def create(self, collections: Sequence[Collection]) -> None:
        """Create more collections and their indexes on an open store (existing ones stay).

        A rebuild creates the collections of a new generation of views this way."""

    async def drop(self, collections: Sequence[str], checkpoint: str) -> None:
        """Delete these collections with every document and index, and the checkpoint and
        status record named `checkpoint`: a retired generation of views, gone for good."""

    async def put(self, collection: str, key: str, fields: Mapping[str, Scalar]) -> None:
        """Replace one document outright (with no rendering), outside any projector batch
        (last write wins).

        For small control documents with a single writer, such as which generation of
        views readers use; projected documents only ever change through `apply`."""

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        """Apply a projector batch and move the checkpoint forward, atomically where possible."""

    async def checkpoint(self, name: str) -> int:
        """The stored position of checkpoint `name`, 0 if there is none."""

    async def checkpoints(self) -> list[Checkpoint]: ...

    async def save_status(self, name: str, fields: Mapping[str, StatusValue]) -> None:
        """Replace the status record `name` with `fields` (last write wins).

        A small record a long-running writer (the projector) publishes about itself
        for readers (the query server), kept apart from the views and checkpoints."""

    async def statuses(self) -> list[dict[str, StatusValue]]:
        """Every status record, ordered by name, each with its name under `_id`."""

    async def get(self, collection: str, key: str) -> Document | None: ...

    def change_watcher(self) -> Changes | None:
        """A new watcher that wakes when a commit (by any process) may have changed the
        store, for the caller to close; None where the store has none (readers poll)."""

    async def find(
        self,
        collection: str,
        *,
        where: Mapping[str, Scalar],
        order_by: str,
        after: Scalar = None,
        at_most: Scalar = None,
        descending: bool = False,
        limit: int,
        key_prefix: str = "",
    ) -> list[Document]:
        """Documents matching every `where` equality, ordered by `order_by` (a field
        unique within the match; ascending unless `descending`), starting after the
        value `after` in that order (keyset paging: greater when ascending, less when
        descending), and with `order_by` at most `at_most` (inclusive) when it is set.

        `descending=True, at_most=x, limit=1` finds the last document at or before x
        with one indexed lookup (as-of queries).

        `key_prefix` keeps only the documents whose key starts with it, read as a range
        of the primary key: keys built as `<parent>/<sequence>` then serve a parent's
        rows in order (with `order_by=KEY`) without a secondary index to maintain."""

    async def find_rendered(
        self, collection: str, *, key_prefix: str, after: str | None = None, limit: int
    ) -> list[tuple[str, bytes]]:
        """The renderings (see `Upsert`) of the documents whose key starts with
        `key_prefix` and that have one, in key order, after the key `after`: (key,
        rendering) pairs, at most `limit`. A page served as stored: no document is
        decoded and no field is compared, so a view marks the documents a query serves
        this way by rendering just those."""
