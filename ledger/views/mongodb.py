"""The production view store: MongoDB through PyMongo's native async API.

Each view is a collection `view_<name>` of documents keyed by `_id`; each document
carries `_pos`, the log position of the last event applied to it, and every write is
conditional on it; a document's rendering, if it has one, is binary data in
`_rendered`. A projector batch becomes one unordered `bulk_write` per collection followed
by a checkpoint update that never moves backwards, so no transaction is needed: a
batch redelivered after a crash between the two (or anywhere inside them) changes
nothing that already reflects it.

Upserts of one document within a batch are merged into a single update whose filter
requires the document to predate the first of them. When the document turns out to
be further along (a redelivery: the upsert then fails with a duplicate `_id`, E11000),
the adapter reads the document's position and re-sends only the upserts that come
after it, so the result is always that of applying every upsert one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
)
from pymongo.uri_parser import parse_uri

from ledger.errors import Unavailable
from ledger.views.coalesce import folded, rendering
from ledger.views.port import (
    KEY,
    Checkpoint,
    Collection,
    Document,
    Scalar,
    StatusValue,
    Upsert,
    check_field_name,
    prefix_end,
)

SRV_SCHEME = "mongodb+srv://"
POSITION = "_pos"
RENDERED = "_rendered"
CHECKPOINTS = "checkpoints"
STATUSES = "statuses"
DUPLICATE_KEY = 11000
MAX_ROUNDS = 16
HIDDEN = {POSITION: 0, RENDERED: 0}
RawDocument = dict[str, Any]


def collection_name(collection: str) -> str:
    return f"view_{check_field_name(collection)}"


def _conjunction(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """One filter matching every term: merged, unless two constrain the same field."""
    fields = [field for term in terms for field in term]
    if len(fields) == len(set(fields)):
        return {field: value for term in terms for field, value in term.items()}
    return {"$and": terms}


def _field(name: str) -> str:
    """A field a caller may set, filter on or sort by; `_pos` and `_rendered` belong to
    the adapter."""
    if check_field_name(name) in (POSITION, RENDERED):
        raise ValueError(f"view field name {name!r} is reserved by the MongoDB view store")
    return name


def _settable(name: str) -> str:
    if _field(name) == KEY:
        raise ValueError("the key of a view document cannot be changed through its fields")
    return name


def _document(raw: RawDocument) -> Document:
    """A stored document as the port returns it: no position, plain ints (not Int64)."""
    raw.pop(POSITION, None)
    raw.pop(RENDERED, None)
    return {
        k: int(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in raw.items()
    }


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")


def _key_range(prefix: str) -> dict[str, Scalar]:
    """The keys that start with `prefix`, as a range of `_id` (as in the SQLite store)."""
    keys: dict[str, Scalar] = {"$gte": prefix}
    if (end := prefix_end(prefix)) is not None:
        keys["$lt"] = end
    return keys


def _utc(value: object) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None


def _redacted(uri: str) -> str:
    """The URI without credentials or options, for messages."""
    return re.sub(r"(?<=://)[^@/]*@", "", uri).split("?", 1)[0]


def _reason(exc: Exception) -> str:
    # PyMongo appends timeouts and a whole topology description; keep the first part.
    return str(exc).split(", Timeout:", 1)[0].split(", full error:", 1)[0]


class _Pending:
    """The upserts of one document in a batch not yet known to be reflected by it."""

    __slots__ = ("key", "ops")

    def __init__(self, key: str) -> None:
        self.key = key
        self.ops: list[Upsert] = []

    def add(self, op: Upsert) -> None:
        # Applied one by one, an upsert at or below an earlier one's position is a
        # no-op whatever the stored document holds, so it is dropped here.
        if not self.ops or op.position > self.ops[-1].position:
            self.ops.append(op)

    def after(self, position: int) -> None:
        self.ops = [op for op in self.ops if op.position > position]

    def update(self) -> UpdateOne:
        merged: dict[str, Scalar | bytes] = {**folded(self.ops)}
        if (rendered := rendering(self.ops)) is not None:
            merged[RENDERED] = rendered
        # A field set to None is stored as null, as the port's contract specifies.
        changes = {"$set": {**merged, POSITION: self.ops[-1].position}}
        return UpdateOne(
            {KEY: self.key, POSITION: {"$lt": self.ops[0].position}}, changes, upsert=True
        )


class MongoViewStore:
    def __init__(self, uri: str, database: str, *, timeout: float = 2.0) -> None:
        """`timeout` bounds server selection and connecting (seconds), unless the URI
        sets serverSelectionTimeoutMS / connectTimeoutMS itself."""
        if not database or re.search(r"[/\\. \"$\x00]", database):
            raise ValueError(f"invalid MongoDB database name {database!r}")
        if not uri.startswith(SRV_SCHEME):  # an SRV URI is resolved (DNS) when connecting
            try:
                parse_uri(uri)
            except (ValueError, ConfigurationError) as exc:
                raise ValueError(f"invalid MongoDB URI {_redacted(uri)!r}: {exc}") from None
        self._uri = uri
        self._database_name = database
        self._timeout = timeout
        self._client: AsyncMongoClient[RawDocument] | None = None
        self._db: AsyncDatabase[RawDocument] | None = None
        self._declared: frozenset[str] = frozenset()
        self._keep_id_in_indexes = True

    def __repr__(self) -> str:
        return f"MongoViewStore({_redacted(self._uri)!r}, {self._database_name!r})"

    @property
    def _database(self) -> AsyncDatabase[RawDocument]:
        if self._db is None:
            raise RuntimeError("view store is not open")
        return self._db

    def _collection(self, collection: str) -> AsyncCollection[RawDocument]:
        return self._database[collection_name(collection)]

    @contextlib.asynccontextmanager
    async def _available(self) -> AsyncIterator[None]:
        try:
            yield
        except ConnectionFailure as exc:  # includes AutoReconnect, ServerSelectionTimeoutError
            raise Unavailable(
                f"MongoDB view store {_redacted(self._uri)} unavailable: {_reason(exc)}"
            ) from exc

    def _client_options(self) -> dict[str, Any]:
        query = self._uri.split("?", 1)[1].lower() if "?" in self._uri else ""
        options: dict[str, Any] = {"tz_aware": True, "appname": "ledger-views"}
        millis = max(1, round(self._timeout * 1000))
        for name in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
            if f"{name.lower()}=" not in query:
                options[name] = millis
        return options

    async def open(self, collections: Sequence[Collection]) -> None:
        await self.close()
        for c in collections:  # validate before connecting
            collection_name(c.name)
        try:
            client: AsyncMongoClient[RawDocument] = AsyncMongoClient(
                self._uri, **self._client_options()
            )
        except ConnectionFailure as exc:
            raise Unavailable(f"cannot reach MongoDB at {_redacted(self._uri)}: {exc}") from exc
        try:
            db = client[self._database_name]
            try:
                await client.admin.command("ping")
                build = await client.admin.command("buildInfo")
            except ConnectionFailure as exc:
                raise Unavailable(
                    f"cannot reach MongoDB at {_redacted(self._uri)}"
                    f" (database {self._database_name!r}): {_reason(exc)}"
                ) from exc
            # nx-27017 (the wire-protocol stand-in used by the tests) breaks every
            # insert into a collection with a compound index that names _id; there the
            # _id part is left out (its _id is a separate unique SQLite column anyway).
            self._keep_id_in_indexes = build.get("process") != "nx_27017"
            self._client, self._db, self._declared = client, db, frozenset()
            await self.create(collections)
        except BaseException:
            self._client, self._db = None, None
            await client.close()
            raise

    async def create(self, collections: Sequence[Collection]) -> None:
        db = self._database
        names = [collection_name(c.name) for c in collections]
        async with self._available():
            for collection, name in zip(collections, names, strict=True):
                for index in collection.indexes:
                    fields = [_field(f) for f in index.fields]
                    if not self._keep_id_in_indexes:
                        fields = [f for f in fields if f != KEY]
                    if fields and fields != [KEY]:
                        await db[name].create_index([(f, ASCENDING) for f in fields])
        self._declared |= frozenset(names)

    async def drop(self, collections: Sequence[str], checkpoint: str) -> None:
        db = self._database
        names = [collection_name(c) for c in collections]
        async with self._available():
            for name in names:
                await db.drop_collection(name)  # its indexes go with it
            await db[CHECKPOINTS].delete_one({KEY: checkpoint})
            await db[STATUSES].delete_one({KEY: checkpoint})
        self._declared -= frozenset(names)

    async def put(self, collection: str, key: str, fields: Mapping[str, Scalar]) -> None:
        for field in fields:
            _settable(field)
        async with self._available():
            # The replacement names its _id too: the nx-27017 stand-in would not take it
            # from the filter on an upsert.
            await self._collection(collection).replace_one(
                {KEY: key}, {KEY: key, **fields, POSITION: 0}, upsert=True
            )

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await client.close()

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        db = self._database
        pending: dict[str, dict[str, _Pending]] = {}
        for op in upserts:
            for field in op.fields:
                _settable(field)
            name = collection_name(op.collection)
            if name not in self._declared:
                raise ValueError(f"view collection {op.collection!r} was not declared at open()")
            docs = pending.setdefault(name, {})
            docs.setdefault(op.key, _Pending(op.key)).add(op)
        async with self._available():
            results = await asyncio.gather(
                *(self._upsert(db[name], docs) for name, docs in pending.items()),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            await self._move_checkpoint(checkpoint)

    async def _upsert(
        self, collection: AsyncCollection[RawDocument], docs: Mapping[str, _Pending]
    ) -> None:
        todo = [d for d in docs.values() if d.ops]
        for _ in range(MAX_ROUNDS):
            if not todo:
                return
            try:
                await collection.bulk_write([d.update() for d in todo], ordered=False)
                return
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                # The document exists and its position is not below the first upsert:
                # find out how far it is and re-send what comes after.
                behind = [todo[e["index"]] for e in errors]
            positions = {
                raw[KEY]: raw.get(POSITION)
                async for raw in collection.find(
                    {KEY: {"$in": [d.key for d in behind]}}, {POSITION: 1}
                )
            }
            for doc in behind:
                if doc.key in positions:
                    position = positions[doc.key]
                    if not isinstance(position, int) or isinstance(position, bool):
                        raise RuntimeError(
                            f"document {doc.key!r} in {collection.name} has no applied"
                            f" position ({POSITION}); it was not written by this view store"
                        )
                    doc.after(position)
            todo = [d for d in behind if d.ops]
        raise RuntimeError(
            f"upserts into {collection.name} kept conflicting after {MAX_ROUNDS} rounds"
        )

    async def _move_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Set the checkpoint unless it is already further along (never backwards)."""
        with contextlib.suppress(DuplicateKeyError):
            await self._database[CHECKPOINTS].update_one(
                {KEY: checkpoint.name, "position": {"$lte": checkpoint.position}},
                {"$set": {"position": checkpoint.position, "updated_at": datetime.now(UTC)}},
                upsert=True,
            )

    async def checkpoint(self, name: str) -> int:
        async with self._available():
            raw = await self._database[CHECKPOINTS].find_one({KEY: name}, {"position": 1})
        return 0 if raw is None else int(raw["position"])

    async def checkpoints(self) -> list[Checkpoint]:
        async with self._available():
            raws = await self._database[CHECKPOINTS].find({}).sort(KEY, ASCENDING).to_list()
        return [Checkpoint(r[KEY], int(r["position"]), _utc(r.get("updated_at"))) for r in raws]

    async def save_status(self, name: str, fields: Mapping[str, StatusValue]) -> None:
        for field in fields:
            _settable(field)
        async with self._available():
            # The replacement names its _id too: the nx-27017 stand-in would not take it
            # from the filter on an upsert.
            await self._database[STATUSES].replace_one(
                {KEY: name}, {KEY: name, **fields}, upsert=True
            )

    async def statuses(self) -> list[dict[str, StatusValue]]:
        async with self._available():
            raws = await self._database[STATUSES].find({}).sort(KEY, ASCENDING).to_list()
        return [_document(r) for r in raws]

    async def get(self, collection: str, key: str) -> Document | None:
        async with self._available():
            raw = await self._collection(collection).find_one({KEY: key}, HIDDEN)
        return None if raw is None else _document(raw)

    def change_watcher(self) -> None:
        """None: readers poll. (A change stream could tell, but needs a replica set.)"""
        return None

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
        _check_limit(limit)
        terms: list[dict[str, Any]] = [{_field(f): v} for f, v in where.items()]
        _field(order_by)
        # As in SQLite, where None is never equal to anything; and limit 0 is no rows
        # (MongoDB would read limit 0 as "no limit").
        if limit == 0 or any(v is None for v in where.values()):
            return []
        if key_prefix:
            terms.append({KEY: _key_range(key_prefix)})
        condition: dict[str, Scalar] = {}
        if after is not None:
            condition["$lt" if descending else "$gt"] = after
        if at_most is not None:
            condition["$lte"] = at_most
        if condition:
            terms.append({order_by: condition})
        query = _conjunction(terms)
        cursor = self._collection(collection).find(query, HIDDEN)
        direction = DESCENDING if descending else ASCENDING
        async with self._available():
            raws = await cursor.sort(order_by, direction).limit(limit).to_list()
        return [_document(r) for r in raws]

    async def find_rendered(
        self, collection: str, *, key_prefix: str, after: str | None = None, limit: int
    ) -> list[tuple[str, bytes]]:
        _check_limit(limit)
        if limit == 0:  # MongoDB would read limit 0 as "no limit"
            return []
        keys = _key_range(key_prefix)
        if after is not None:
            keys["$gt"] = after
        query = {KEY: keys, RENDERED: {"$exists": True}}
        cursor = self._collection(collection).find(query, {RENDERED: 1})
        async with self._available():
            raws = await cursor.sort(KEY, ASCENDING).limit(limit).to_list()
        return [(raw[KEY], bytes(raw[RENDERED])) for raw in raws]
