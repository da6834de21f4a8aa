"""The embedded view store: one SQLite file shared by the projector and the query server.

Each collection is a table of JSON documents with the position of the last event that
changed them and their rendering (a BLOB, or NULL). Each field an index names is also kept
in a column of its own (`f_<field>`, equal to the document's value), set only by the
writes that name the field, and the index is on those columns: a write that changes other
fields leaves the index alone, where an index on an expression of the document would be
rewritten with every change to it (two of the three pages an account's update dirtied).
Tables made before this keep their expression indexes (`_create_collection`).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import orjson

from ledger.commit_signals import CommitSignaller
from ledger.errors import Unavailable
from ledger.sqlite_support import ChangeWatcher, SqliteThreads, write_transaction
from ledger.views.coalesce import folded, rendering, runs
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

INLINE_ROWS = 100
"""Pages of up to this many documents (the default page size) are read on the event
loop's thread (ledger.sqlite_support.SqliteThreads.read_now); larger ones in a thread."""
OWN_PREFIX = "f_"
"""How a column of the table's own for an indexed field is named: `f_<field>`."""
T = TypeVar("T")

CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statuses (
    name   TEXT PRIMARY KEY,
    fields TEXT NOT NULL
) WITHOUT ROWID;
"""


@functools.lru_cache(maxsize=256)
def _table(collection: str) -> str:
    return f'"view_{check_field_name(collection)}"'


Columns = frozenset[str]
"""The fields a table keeps in columns of their own (`f_<field>`)."""


def _own_column(field: str) -> str:
    return f'"{OWN_PREFIX}{check_field_name(field)}"'


def _column(field: str, columns: Columns = frozenset()) -> str:
    """How a statement reads `field`: the key, its own column, or from the document."""
    if field == KEY:
        return "key"
    if field in columns:
        return _own_column(field)
    return f"json_extract(doc, '$.{check_field_name(field)}')"


def _indexed(collection: Collection) -> list[str]:
    """The fields the collection's indexes name (but the key), each once, in order."""
    return list(dict.fromkeys(f for i in collection.indexes for f in i.fields if f != KEY))


def _table_columns(conn: sqlite3.Connection, table: str) -> set[str] | None:
    """The table's columns; None if there is no such table."""
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")} or None


def _own_fields(names: set[str]) -> Columns:
    """The fields kept in columns of their own, among a table's column `names`."""
    return frozenset(n.removeprefix(OWN_PREFIX) for n in names if n.startswith(OWN_PREFIX))


def _create_collection(conn: sqlite3.Connection, collection: Collection) -> Columns:
    """The collection's table and indexes, made if missing; the fields it keeps in
    columns. An existing table with indexes on expressions (made before own columns)
    keeps them and none: code from before then may still write it, setting no column.
    Otherwise a field a newly declared index names gets its column, filled from the
    documents, before the index is made."""
    table = _table(collection.name)
    indexed = _indexed(collection)
    existing = _table_columns(conn, table)
    if existing is None:
        own = "".join(f", {_own_column(f)}" for f in indexed)
        conn.execute(
            f"CREATE TABLE {table} (key TEXT PRIMARY KEY, position INTEGER NOT NULL,"
            f" doc TEXT NOT NULL, rendered BLOB{own}) WITHOUT ROWID"
        )
        existing = {"rendered", *(OWN_PREFIX + f for f in indexed)}
    if "rendered" not in existing:  # a table from before renderings: none yet
        conn.execute(f"ALTER TABLE {table} ADD COLUMN rendered BLOB")
    present = _own_fields(existing)
    legacy = (
        not present
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table.strip('"'),),
        ).fetchone()
    )
    columns: Columns = frozenset() if legacy else frozenset(indexed)
    for field in columns - present:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {_own_column(field)}")
        conn.execute(f"UPDATE {table} SET {_own_column(field)} = {_column(field)}")
    for index in collection.indexes:
        name = f'"ix_{collection.name}_{"_".join(f.strip("_") for f in index.fields)}"'
        on = ", ".join(_column(f, columns) for f in index.fields)
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({on})")
    return columns


@functools.lru_cache(maxsize=256)
def _upsert_sql(collection: str, fields: tuple[str, ...], columns: Columns) -> str:
    """Insert (key ?1, position ?2, doc ?3, rendered ?5, then the values of those of
    `fields` kept in `columns`), or set just these fields (and their columns), the
    position and the rendering if ?5 has one, unless the document is already at position
    ?4 or later (?4 is ?2 for one upsert, the first one's position for coalesced ones:
    ledger.views.coalesce).

    json_set with the `->` operator keeps JSON types (null and booleans included),
    unlike json_patch, which would delete a field set to null.
    """
    updates = ", ".join(f"'$.{check_field_name(f)}', excluded.doc -> '$.{f}'" for f in fields)
    new_doc = f"json_set(doc, {updates})" if fields else "doc"
    own = [_own_column(f) for f in fields if f in columns]
    names = "".join(f", {c}" for c in own)
    values = "".join(f", ?{n}" for n in range(6, 6 + len(own)))
    sets = "".join(f", {c} = excluded.{c}" for c in own)
    return (
        f"INSERT INTO {_table(collection)} (key, position, doc, rendered{names})"
        f" VALUES (?1, ?2, ?3, ?5{values}) ON CONFLICT (key) DO UPDATE SET doc = {new_doc},"
        f" position = excluded.position, rendered = coalesce(excluded.rendered, rendered){sets}"
        " WHERE position < ?4"
    )


UpsertParams = tuple[str | int | bytes | None, ...]


def _upsert_params(
    key: str,
    position: int,
    fields: Mapping[str, Scalar],
    since: int,
    rendered: bytes | None,
    columns: Columns,
) -> UpsertParams:
    """`_upsert_sql`'s parameters, in its order: after ?5, those of `fields` kept in
    columns."""
    own = (v for f, v in fields.items() if f in columns) if columns else ()
    return (key, position, _json(fields), since, rendered, *own)


@functools.lru_cache(maxsize=256)
def _find_sql(
    collection: str,
    columns: Columns,
    fields: tuple[str, ...],
    order_by: str,
    descending: bool,
    *bounds: bool,
) -> str:
    """`find`'s statement for one shape of query, built once: its parameters are the
    `fields`' values, then those of the bounds present (key >= prefix, key < its end,
    past `after`, up to `at_most`), then the limit."""
    has_prefix, has_end, has_after, has_at_most = bounds
    order = _column(order_by, columns)
    clauses = [f"{_column(field, columns)} = ?" for field in fields]
    clauses += ["key >= ?"] if has_prefix else []
    clauses += ["key < ?"] if has_end else []
    clauses += [f"{order} {'<' if descending else '>'} ?"] if has_after else []
    clauses += [f"{order} <= ?"] if has_at_most else []
    return (
        f"SELECT key, doc FROM {_table(collection)}"
        f"{' WHERE ' + ' AND '.join(clauses) if clauses else ''}"
        f" ORDER BY {order}{' DESC' if descending else ''} LIMIT ?"
    )


@functools.lru_cache(maxsize=256)
def _find_rendered_sql(collection: str, has_end: bool, has_after: bool) -> str:
    """`find_rendered`'s statement: its parameters are the prefix, its end and `after`
    (those present), then the limit."""
    clauses = ["key >= ?", *(["key < ?"] if has_end else []), *(["key > ?"] if has_after else [])]
    return (
        f"SELECT key, rendered FROM {_table(collection)} WHERE {' AND '.join(clauses)}"
        " AND rendered IS NOT NULL ORDER BY key LIMIT ?"
    )


def _create(
    conn: sqlite3.Connection, collections: Sequence[Collection], *, checkpoints: bool = False
) -> dict[str, Columns]:
    """Every collection's table (and the checkpoints' and statuses'), in one
    transaction; the fields each keeps in columns."""
    with write_transaction(conn):
        if checkpoints:
            for statement in CHECKPOINTS.split(";"):
                conn.execute(statement)
        return {c.name: _create_collection(conn, c) for c in collections}


def _read_columns(conn: sqlite3.Connection, collection: str) -> Columns | None:
    """The fields an existing table keeps in columns; None if there is no such table."""
    names = _table_columns(conn, _table(collection))
    return None if names is None else _own_fields(names)


def _json(fields: Mapping[str, Scalar]) -> str:
    """Every document is written by orjson, which refuses integers beyond 64 bits (as BSON
    does): orjson.loads would read them back as floats."""
    return orjson.dumps(fields if isinstance(fields, dict) else dict(fields)).decode()


def _write_upserts(
    conn: sqlite3.Connection, upserts: Sequence[Upsert], columns: Mapping[str, Columns]
) -> None:
    """One row write per document (coalesced), one executemany per (collection, fields).

    Documents are independent, so grouping reorders nothing that matters. A group
    that changed fewer rows than it has documents met a document already at or past
    some upsert: its coalesced documents are then replayed one upsert at a time,
    which is exact (see ledger.views.coalesce) and, with transactional batches, only
    happens to upserts applied again outside the projector (e.g. a parked retry).
    """
    groups: dict[tuple[str, tuple[str, ...], Columns], list[list[Upsert]]] = {}
    rows: dict[tuple[str, tuple[str, ...], Columns], list[UpsertParams]] = {}
    for run in runs(upserts):
        first, fields = run[0], folded(run)
        own = columns.get(first.collection, frozenset())
        group = (first.collection, tuple(fields), own)
        if group not in rows:
            groups[group], rows[group] = [], []
        groups[group].append(run)
        rows[group].append(
            _upsert_params(first.key, run[-1].position, fields, first.position, rendering(run), own)
        )
    for group, params in rows.items():
        if conn.executemany(_upsert_sql(*group), params).rowcount == len(params):
            continue
        own = group[2]
        for op in (op for run in groups[group] if len(run) > 1 for op in run):
            conn.execute(
                _upsert_sql(op.collection, tuple(op.fields), own),
                _upsert_params(op.key, op.position, op.fields, op.position, op.rendered, own),
            )


def _record_field(name: str) -> str:
    """A field of a status record or put document: its name or key is not one of them."""
    if check_field_name(name) == KEY:
        raise ValueError("a record's name (or a document's key) is not one of its fields")
    return name


def _document(key: str, raw: str) -> Document:
    doc: Document = orjson.loads(raw)  # as `_json` wrote it; json.loads took twice as long
    doc[KEY] = key
    return doc


class SqliteViewStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._threads: SqliteThreads | None = None
        self._signaller = CommitSignaller(path)
        self._columns: dict[str, Columns] = {}
        """Per collection, the fields its table keeps in columns: learnt when this
        store makes the table, or when it first uses one another process made."""

    @property
    def _db(self) -> SqliteThreads:
        if self._threads is None:
            raise Unavailable("the view store is not open")
        return self._threads

    async def open(self, collections: Sequence[Collection]) -> None:
        # NORMAL is enough here: in WAL mode it never corrupts or half-applies a
        # transaction, and views lost to a power cut are rebuilt from the log.
        threads = SqliteThreads(self._path, synchronous="NORMAL", readers=4)
        try:
            columns = await threads.write(lambda conn: _create(conn, collections, checkpoints=True))
        except BaseException:
            threads.close()  # a retried open must not leak threads and connections
            raise
        self._threads = threads
        self._columns.update(columns)

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        self._signaller.close()

    def change_watcher(self) -> ChangeWatcher:
        """Wakes when another connection commits here (a projector's batch, its status)."""
        return ChangeWatcher(self._path)

    async def create(self, collections: Sequence[Collection]) -> None:
        self._columns.update(await self._db.write(lambda conn: _create(conn, collections)))

    def _columns_of(self, collection: str) -> Columns:
        """The fields the collection's table keeps in columns (none if it has no table)."""
        columns = self._columns.get(collection)
        if columns is None:
            columns = self._db.read_now(lambda conn: _read_columns(conn, collection))
            if columns is None:
                return frozenset()
            self._columns[collection] = columns
        return columns

    async def drop(self, collections: Sequence[str], checkpoint: str) -> None:
        tables = [_table(c) for c in collections]

        def write(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                for table in tables:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")  # its indexes go with it
                conn.execute("DELETE FROM checkpoints WHERE name = ?", (checkpoint,))
                conn.execute("DELETE FROM statuses WHERE name = ?", (checkpoint,))

        await self._db.write(write)
        for collection in collections:
            self._columns.pop(collection, None)

    async def put(self, collection: str, key: str, fields: Mapping[str, Scalar]) -> None:
        raw = _json({_record_field(f): v for f, v in fields.items()})  # as every document
        own = sorted(self._columns_of(collection))  # all of them: the whole document goes
        names = "".join(f", {_own_column(f)}" for f in own)
        sets = "".join(f", {_own_column(f)} = excluded.{_own_column(f)}" for f in own)
        sql = (
            f"INSERT INTO {_table(collection)} (key, position, doc{names})"
            f" VALUES (?, 0, ?{', ?' * len(own)}) ON CONFLICT (key) DO UPDATE"
            f" SET doc = excluded.doc, position = 0, rendered = NULL{sets}"
        )
        params = (key, raw, *(fields.get(f) for f in own))
        await self._db.write(lambda conn: conn.execute(sql, params))

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        now = datetime.now(UTC).isoformat()
        columns = {c: self._columns_of(c) for c in {op.collection for op in upserts}}

        def write(conn: sqlite3.Connection) -> None:
            with write_transaction(conn):
                _write_upserts(conn, upserts, columns)
                conn.execute(
                    "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                    " updated_at = excluded.updated_at WHERE excluded.position >= position",
                    (checkpoint.name, checkpoint.position, now),
                )

        await self._db.write(write)
        self._signaller.send()  # readers waiting for this checkpoint wake

    async def checkpoint(self, name: str) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT position FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return self._db.read_now(read)

    async def checkpoints(self) -> list[Checkpoint]:
        def read(conn: sqlite3.Connection) -> list[Checkpoint]:
            rows = conn.execute(
                "SELECT name, position, updated_at FROM checkpoints ORDER BY name"
            ).fetchall()
            return [Checkpoint(n, int(p), datetime.fromisoformat(u)) for n, p, u in rows]

        return self._db.read_now(read)

    async def save_status(self, name: str, fields: Mapping[str, StatusValue]) -> None:
        raw = json.dumps({_record_field(f): v for f, v in fields.items()})

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO statuses (name, fields) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET fields = excluded.fields",
                (name, raw),
            )

        await self._db.write(write)

    async def statuses(self) -> list[dict[str, StatusValue]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, StatusValue]]:
            rows = conn.execute("SELECT name, fields FROM statuses ORDER BY name").fetchall()
            return [{**json.loads(f), KEY: n} for n, f in rows]

        return self._db.read_now(read)

    async def get(self, collection: str, key: str) -> Document | None:
        def read(conn: sqlite3.Connection) -> Document | None:
            row = conn.execute(
                f"SELECT doc FROM {_table(collection)} WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else _document(key, row[0])

        return self._db.read_now(read)

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
        end = prefix_end(key_prefix) if key_prefix else None
        bounds = (key_prefix or None, end, after, at_most)
        params = [*where.values(), *(b for b in bounds if b is not None), limit]
        present = (b is not None for b in bounds)
        columns = self._columns_of(collection)
        sql = _find_sql(collection, columns, tuple(where), order_by, descending, *present)

        def read(conn: sqlite3.Connection) -> list[Document]:
            return [_document(k, d) for k, d in conn.execute(sql, params).fetchall()]

        return await self._page(read, limit)

    async def find_rendered(
        self, collection: str, *, key_prefix: str, after: str | None = None, limit: int
    ) -> list[tuple[str, bytes]]:
        end = prefix_end(key_prefix)
        bounds = [b for b in (end, after) if b is not None]
        sql = _find_rendered_sql(collection, end is not None, after is not None)
        params = (key_prefix, *bounds, limit)

        def read(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return conn.execute(sql, params).fetchall()

        return await self._page(read, limit)

    async def _page(self, read: Callable[[sqlite3.Connection], T], limit: int) -> T:
        """A read of at most `limit` rows: on the loop's thread if that is a small page."""
        return self._db.read_now(read) if limit <= INLINE_ROWS else await self._db.read(read)
