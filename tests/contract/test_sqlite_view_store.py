"""The SQLite view store against the port contract, plus its transactional guarantees."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from ledger.errors import Unavailable
from ledger.sqlite_support import SqliteThreads
from ledger.views.port import KEY, Checkpoint, Collection, Index, Scalar, Upsert, ViewStore
from ledger.views.sqlite import SqliteViewStore
from tests.contract.view_store_contract import Names, ViewStoreContract


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "views.sqlite3"


class TestSqliteViewStore(ViewStoreContract):
    signals_changes = True

    @pytest.fixture
    async def views(self, tmp_path: Path, names: Names) -> AsyncIterator[ViewStore]:
        store = SqliteViewStore(db_path(tmp_path))
        await store.open(names.collections)
        yield store
        await store.close()


@pytest.fixture
def names() -> Names:
    return Names.fresh()


@pytest.fixture
async def views(tmp_path: Path, names: Names) -> AsyncIterator[SqliteViewStore]:
    store = SqliteViewStore(db_path(tmp_path))
    await store.open(names.collections)
    yield store
    await store.close()


async def start(views: SqliteViewStore, names: Names) -> str:
    cp = names.checkpoint("projector")
    await views.apply(
        [Upsert(names.people, "k1", {"a": 1}, 10), Upsert(names.other, "k2", {"b": 1}, 10)],
        Checkpoint(cp, 10),
    )
    return cp


async def assert_unchanged(views: SqliteViewStore, names: Names, cp: str) -> None:
    assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1}
    assert await views.get(names.other, "k2") == {KEY: "k2", "b": 1}
    assert await views.get(names.people, "k3") is None
    assert await views.checkpoint(cp) == 10


async def test_a_batch_with_an_undeclared_collection_changes_nothing(
    views: SqliteViewStore, names: Names
) -> None:
    cp = await start(views, names)
    batch = [
        Upsert(names.people, "k1", {"a": 2}, 11),
        Upsert(names.people, "k3", {"c": 1}, 11),
        Upsert("never_declared", "k9", {"x": 1}, 12),
        Upsert(names.other, "k2", {"b": 2}, 12),
    ]
    # a programming error, not an outage: never disguised as a retryable Unavailable
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await views.apply(batch, Checkpoint(cp, 12))
    await assert_unchanged(views, names, cp)


async def test_a_batch_with_an_invalid_collection_name_changes_nothing(
    views: SqliteViewStore, names: Names
) -> None:
    cp = await start(views, names)
    batch = [
        Upsert(names.people, "k1", {"a": 2}, 11),
        Upsert('x"; DROP TABLE checkpoints; --', "k9", {"x": 1}, 12),
    ]
    with pytest.raises(ValueError, match="invalid view field name"):
        await views.apply(batch, Checkpoint(cp, 12))
    await assert_unchanged(views, names, cp)


async def test_documents_and_checkpoints_survive_a_reopen(tmp_path: Path, names: Names) -> None:
    store = SqliteViewStore(db_path(tmp_path))
    await store.open(names.collections)
    try:
        cp = names.checkpoint("projector")
        await store.apply([Upsert(names.people, "k1", {"a": 1}, 4)], Checkpoint(cp, 4))
    finally:
        await store.close()
    reopened = SqliteViewStore(db_path(tmp_path))
    await reopened.open(names.collections)  # declaring again is harmless
    try:
        assert await reopened.get(names.people, "k1") == {KEY: "k1", "a": 1}
        assert await reopened.checkpoint(cp) == 4
        await reopened.apply([Upsert(names.people, "k1", {"a": 9}, 4)], Checkpoint(cp, 4))
        assert await reopened.get(names.people, "k1") == {KEY: "k1", "a": 1}
    finally:
        await reopened.close()


async def test_a_table_from_before_renderings_gains_their_column(
    tmp_path: Path, names: Names
) -> None:
    """A file whose tables predate renderings opens, keeps its documents, and renders."""
    with sqlite3.connect(db_path(tmp_path)) as old:
        old.execute(
            f'CREATE TABLE "view_{names.other}" (key TEXT PRIMARY KEY,'
            " position INTEGER NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID"
        )
        old.execute(f'INSERT INTO "view_{names.other}" VALUES (?, 3, ?)', ("k1", '{"a": 1}'))
    old.close()
    store = SqliteViewStore(db_path(tmp_path))
    await store.open(names.collections)
    try:
        assert await store.find_rendered(names.other, key_prefix="k", limit=10) == []
        cp = Checkpoint(names.checkpoint("projector"), 4)
        await store.apply([Upsert(names.other, "k1", {"b": 2}, 4, b"r")], cp)
        assert await store.get(names.other, "k1") == {KEY: "k1", "a": 1, "b": 2}
        assert await store.find_rendered(names.other, key_prefix="k", limit=10) == [("k1", b"r")]
    finally:
        await store.close()


def own_columns_agree(path: Path, collection: str) -> list[tuple[str, str]]:
    """(key, field) of every own column that differs from its document's value."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        table = f'"view_{collection}"'
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        own = [c for c in columns if c.startswith("f_")]
        assert own, "the table keeps no field in a column of its own"
        return [
            (key, column)
            for column in own
            for (key,) in conn.execute(
                f"SELECT key FROM {table} WHERE {column} IS NOT json_extract(doc, '$.{column[2:]}')"
            )
        ]


def plan(path: Path, sql: str, *params: object) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_indexed_fields_live_in_columns_that_follow_their_documents(
    views: SqliteViewStore, names: Names, tmp_path: Path
) -> None:
    """Only writes that name an indexed field set its column (so others leave the index
    alone); whatever the writes, each column equals its document's field, and the
    indexes are on the columns."""
    cp = names.checkpoint("a")
    await views.apply(
        [
            Upsert(names.people, "p1", {"status": "OPEN", "team": "red", "seq": 1}, 1),
            Upsert(names.people, "p2", {"status": "OPEN", "name": "Bob"}, 1),
            Upsert(names.people, "p3", {"name": "Zoë"}, 1),
        ],
        Checkpoint(cp, 1),
    )
    await views.apply(
        [
            Upsert(names.people, "p1", {"name": "Ada"}, 2),  # no indexed field
            Upsert(names.people, "p2", {"status": "CLOSED"}, 2),
            Upsert(names.people, "p2", {"seq": 5, "status": None}, 3),  # coalesced with it
            Upsert(names.people, "p3", {"team": True}, 2),
        ],
        Checkpoint(cp, 3),
    )
    await views.put(names.people, "p4", {"status": "OPEN", "seq": "4"})
    await views.put(names.people, "p1", {"team": "blue"})  # the whole document goes
    assert own_columns_agree(db_path(tmp_path), names.people) == []

    async def keys(**where: Scalar) -> list[str]:
        found = await views.find(names.people, where=where, order_by=KEY, limit=10)
        return [d[KEY] for d in found]

    assert await keys(status="OPEN") == ["p4"]
    assert await keys(status=None) == []
    assert await keys(team="blue") == ["p1"]
    assert await keys(team=True) == ["p3"]
    assert await keys(seq=5) == ["p2"]
    assert await keys(seq="4") == ["p4"]
    table = f'"view_{names.people}"'
    used = plan(db_path(tmp_path), f"SELECT key FROM {table} WHERE f_status = ? ORDER BY key", 1)
    assert f"ix_{names.people}_status" in used


async def test_a_table_with_indexes_on_expressions_keeps_them(tmp_path: Path, names: Names) -> None:
    """A table made before own columns is read and written as it was: code from before
    them may still write it, setting no column."""
    table = f'"view_{names.people}"'
    with contextlib.closing(sqlite3.connect(db_path(tmp_path))) as old:
        old.execute(
            f"CREATE TABLE {table} (key TEXT PRIMARY KEY, position INTEGER NOT NULL,"
            " doc TEXT NOT NULL) WITHOUT ROWID"
        )
        old.execute(
            f'CREATE INDEX "ix_{names.people}_status" ON {table}'
            " (json_extract(doc, '$.status'), key)"
        )
        old.execute(f"INSERT INTO {table} VALUES ('p1', 1, '{{\"status\": \"OPEN\"}}')")
        old.commit()
    store = SqliteViewStore(db_path(tmp_path))
    await store.open(names.collections)
    try:
        cp = Checkpoint(names.checkpoint("a"), 2)
        await store.apply([Upsert(names.people, "p2", {"status": "OPEN", "team": "red"}, 2)], cp)
        await store.apply([Upsert(names.people, "p1", {"status": "CLOSED"}, 3)], cp)
        found = await store.find(names.people, where={"status": "OPEN"}, order_by=KEY, limit=9)
        assert [d[KEY] for d in found] == ["p2"]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db_path(tmp_path))) as conn:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    assert not [c for c in columns if c.startswith("f_")]
    sql = f"SELECT key FROM {table} WHERE json_extract(doc, '$.status') = ? ORDER BY key"
    assert f"ix_{names.people}_status" in plan(db_path(tmp_path), sql, "OPEN")


async def test_an_index_declared_later_gets_its_column_filled(tmp_path: Path, names: Names) -> None:
    store = SqliteViewStore(db_path(tmp_path))
    await store.open([Collection(names.other)])
    try:
        cp = Checkpoint(names.checkpoint("a"), 1)
        await store.apply([Upsert(names.other, "o1", {"team": "red"}, 1)], cp)
        await store.create([Collection(names.other, (Index(("team", KEY)),))])
        found = await store.find(names.other, where={"team": "red"}, order_by=KEY, limit=9)
        assert [d[KEY] for d in found] == ["o1"]
    finally:
        await store.close()
    assert own_columns_agree(db_path(tmp_path), names.other) == []


async def test_checkpoints_record_an_aware_update_time(
    views: SqliteViewStore, names: Names
) -> None:
    cp = names.checkpoint("projector")
    await views.apply([], Checkpoint(cp, 1))
    (stored,) = [c for c in await views.checkpoints() if c.name == cp]
    assert stored.position == 1
    assert stored.updated_at is not None
    assert stored.updated_at.utcoffset() is not None


async def test_an_empty_store_lists_no_checkpoints(views: SqliteViewStore) -> None:
    assert await views.checkpoints() == []


FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["x", "ÿ"]))
UPSERTS = st.lists(
    st.tuples(
        st.sampled_from(["k1", "k2", "k3"]),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), FIELD_VALUES, max_size=3),
        st.integers(1, 12),
    ),
    max_size=12,
)


def _rows(path: Path, table: str) -> dict[str, tuple[int, object]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f'SELECT key, position, doc FROM "view_{table}"').fetchall()
        return {key: (position, json.loads(doc)) for key, position, doc in rows}
    finally:
        conn.close()


@settings(max_examples=60, deadline=None)
@for_all(before=UPSERTS, batch=UPSERTS)
def test_a_batch_leaves_documents_and_positions_as_its_upserts_one_by_one(
    before: list[tuple[str, dict[str, Scalar], int]],
    batch: list[tuple[str, dict[str, Scalar], int]],
) -> None:
    """Whatever the stored documents and the order of positions in the batch (coalescing
    and its replay of documents caught in between: ledger.views.coalesce)."""
    names = Names.fresh()

    async def apply_all(path: Path, one_by_one: bool) -> None:
        store = SqliteViewStore(path)
        await store.open(names.collections)
        try:
            cp = names.checkpoint("p")
            for key, fields, position in before:
                await store.apply([Upsert(names.people, key, fields, position)], Checkpoint(cp, 0))
            upserts = [Upsert(names.people, k, f, p) for k, f, p in batch]
            for group in [[op] for op in upserts] if one_by_one else [upserts]:
                await store.apply(group, Checkpoint(cp, 0))
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        batched, single = Path(tmp) / "batched.sqlite3", Path(tmp) / "single.sqlite3"
        asyncio.run(apply_all(batched, one_by_one=False))
        asyncio.run(apply_all(single, one_by_one=True))
        assert _rows(batched, names.people) == _rows(single, names.people)


async def test_a_read_of_an_undeclared_collection_is_a_bug_not_an_outage(
    views: SqliteViewStore,
) -> None:
    # read on the event loop's thread (read_now): the same rule as the writer's
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await views.get("never_declared", "k1")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await views.find("never_declared", where={}, order_by=KEY, limit=1)


@pytest.mark.parametrize("message", ["database is locked", "disk I/O error"])
def test_an_outage_during_a_read_on_the_loop_thread_is_unavailable(
    tmp_path: Path, message: str
) -> None:
    threads = SqliteThreads(db_path(tmp_path), synchronous="NORMAL")

    def read(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchone()  # a real connection, then the outage
        raise sqlite3.OperationalError(message)

    try:
        with pytest.raises(Unavailable, match="unavailable") as raised:
            threads.read_now(read)
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    finally:
        threads.close()
