"""The MongoDB view store against the port contract, plus what only it has to prove.

Runs on nx-27017 (a MongoDB wire-protocol server, one per module, a fresh database
per test) and, when MONGODB_URI is set, on that real MongoDB as well (a fresh
database per test, dropped afterwards).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo import MongoClient

from ledger.errors import Unavailable
from ledger.paging import fetch_page
from ledger.views.mongodb import POSITION, RENDERED, MongoViewStore, collection_name
from ledger.views.port import KEY, Checkpoint, Document, Scalar, Upsert, ViewStore
from tests.conftest import free_port
from tests.contract.view_store_contract import Names, ViewStoreContract
from tests.standins.mongo import MongoStandIn, nx_27017

MONGODB_URI = os.environ.get("MONGODB_URI", "").strip()
needs_real_mongodb = pytest.mark.skipif(
    not MONGODB_URI, reason="set MONGODB_URI to run against a real MongoDB"
)
T = TypeVar("T")


def database_name() -> str:
    return f"ledger_test_{uuid.uuid4().hex[:16]}"


def drop_database(uri: str, name: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture(scope="module")
def nx_server() -> Iterator[MongoStandIn]:
    with nx_27017() as server:
        yield server


@asynccontextmanager
async def opened(uri: str, database: str, names: Names) -> AsyncIterator[MongoViewStore]:
    store = MongoViewStore(uri, database)
    await store.open(names.collections)
    try:
        yield store
    finally:
        await store.close()


class TestMongoViewStoreOnNx(ViewStoreContract):
    @pytest.fixture
    async def views(self, nx_server: MongoStandIn, names: Names) -> AsyncIterator[ViewStore]:
        async with opened(nx_server.uri, database_name(), names) as store:
            yield store


@needs_real_mongodb
class TestMongoViewStoreOnRealMongo(ViewStoreContract):
    @pytest.fixture
    async def views(self, names: Names) -> AsyncIterator[ViewStore]:
        database = database_name()
        try:
            async with opened(MONGODB_URI, database, names) as store:
                yield store
        finally:
            drop_database(MONGODB_URI, database)


# Adapter-specific tests: on nx-27017, and on the real MongoDB when MONGODB_URI is set.


@pytest.fixture(params=["nx-27017", pytest.param("mongodb", marks=needs_real_mongodb)])
def server_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "mongodb":
        return MONGODB_URI
    server: MongoStandIn = request.getfixturevalue("nx_server")
    return server.uri


@pytest.fixture
def names() -> Names:
    return Names.fresh()


@pytest.fixture
def database(server_uri: str) -> Iterator[str]:
    name = database_name()
    yield name
    drop_database(server_uri, name)


@pytest.fixture
async def views(server_uri: str, database: str, names: Names) -> AsyncIterator[MongoViewStore]:
    async with opened(server_uri, database, names) as store:
        yield store


async def everything(views: ViewStore, collection: str) -> list[Document]:
    return await views.find(collection, where={}, order_by=KEY, limit=1000)


def batch(names: Names) -> list[Upsert]:
    """Positions 11..14: two changes to one document, two collections, a null."""
    return [
        Upsert(names.people, "k1", {"a": 2, "b": 1}, 11),
        Upsert(names.other, "k2", {"b": 2}, 11),
        Upsert(names.people, "k3", {"c": 1, "d": "x"}, 12),
        Upsert(names.people, "k1", {"b": 5, "e": None}, 13),
        Upsert(names.people, "k3", {"d": None}, 14),
    ]


async def test_redelivery_after_a_lost_checkpoint_changes_nothing(
    views: MongoViewStore, names: Names
) -> None:
    cp = names.checkpoint("projector")
    await views.apply(
        [Upsert(names.people, "k1", {"a": 1}, 10), Upsert(names.other, "k2", {"b": 1}, 10)],
        Checkpoint(cp, 10),
    )
    # The batch's documents landed, its checkpoint write did not (a crash in between).
    await views.apply(batch(names), Checkpoint(cp, 10))
    assert await views.checkpoint(cp) == 10
    people, other = await everything(views, names.people), await everything(views, names.other)
    assert people == [
        {KEY: "k1", "a": 2, "b": 5, "e": None},
        {KEY: "k3", "c": 1, "d": None},
    ]
    assert other == [{KEY: "k2", "b": 2}]
    # The restarted projector reads checkpoint 10 and gets the whole batch again.
    await views.apply(batch(names), Checkpoint(cp, 14))
    assert await everything(views, names.people) == people
    assert await everything(views, names.other) == other
    assert await views.checkpoint(cp) == 14
    # And a redelivery that ends with new events applies just the new ones.
    await views.apply(
        [*batch(names)[2:], Upsert(names.people, "k3", {"c": 2}, 15)], Checkpoint(cp, 15)
    )
    assert await everything(views, names.people) == [people[0], {**people[1], "c": 2}]
    assert await views.checkpoint(cp) == 15


class Reference:
    """The port's semantics, one upsert at a time: what every adapter must end up with."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], tuple[int, dict[str, Scalar]]] = {}

    def apply(self, op: Upsert) -> None:
        position, fields = self.docs.get((op.collection, op.key), (0, {}))
        if op.position > position:
            self.docs[(op.collection, op.key)] = (op.position, {**fields, **op.fields})

    def collection(self, name: str) -> list[Document]:
        found = [{KEY: k, **f} for (c, k), (_, f) in self.docs.items() if c == name]
        return sorted(found, key=lambda d: str(d[KEY]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gaps", [False, True], ids=["contiguous", "with-gaps"])
async def test_redeliveries_equal_applying_each_upsert_in_turn(
    views: MongoViewStore, names: Names, seed: int, gaps: bool
) -> None:
    """Batches cut anywhere and redelivered from anywhere behind the furthest one
    applied leave the documents as applying each upsert one at a time would. With gaps,
    batches also skip events (no projector does that, but the port's per-upsert rule
    still holds, and it tells apart merging a document's upserts from skipping them)."""
    rng = random.Random(seed)
    log: list[list[Upsert]] = []
    for position in range(1, 61):
        upserts = []
        for _ in range(rng.randint(1, 3)):  # sometimes one document twice per event
            collection = rng.choice([names.people, names.other])
            fields = {
                f: rng.choice([None, rng.randint(0, 9), "s"]) for f in "abc" if rng.random() < 0.6
            }
            upserts.append(Upsert(collection, f"k{rng.randint(0, 4)}", fields, position))
        log.append(upserts)
    cp = names.checkpoint("projector")
    reference = Reference()
    delivered = 0
    while delivered < len(log):
        start = rng.randint(max(0, delivered - 12), delivered)
        end = min(len(log), max(delivered + 1, start + rng.randint(1, 15)))
        events = log[start:end]
        if gaps:
            events = [e for e in events if rng.random() < 0.6]
        upserts = [u for event in events for u in event]
        await views.apply(upserts, Checkpoint(cp, end))
        for op in upserts:
            reference.apply(op)
        delivered = max(delivered, end)
        for collection in (names.people, names.other):
            assert await everything(views, collection) == reference.collection(collection)
        assert await views.checkpoint(cp) == delivered


async def test_upserts_a_document_already_passed_are_skipped_within_a_batch(
    views: MongoViewStore, names: Names
) -> None:
    cp = names.checkpoint("projector")
    await views.apply([Upsert(names.people, "k1", {"a": 12}, 12)], Checkpoint(cp, 12))
    await views.apply(
        [
            Upsert(names.people, "k1", {"a": 11, "b": 11}, 11),
            Upsert(names.people, "k1", {"a": 12, "b": 12}, 12),
            Upsert(names.people, "k1", {"c": 13}, 13),
        ],
        Checkpoint(cp, 13),
    )
    assert await views.get(names.people, "k1") == {KEY: "k1", "a": 12, "c": 13}


async def test_two_instances_see_each_others_writes(
    server_uri: str, database: str, names: Names
) -> None:
    """Like the projector and the query server: separate clients on one database."""
    cp = names.checkpoint("projector")
    async with (
        opened(server_uri, database, names) as projector,
        opened(server_uri, database, names) as query_server,
    ):
        assert await query_server.checkpoint(cp) == 0
        await projector.apply(batch(names), Checkpoint(cp, 14))
        assert await query_server.checkpoint(cp) == 14
        assert await query_server.get(names.people, "k1") == {KEY: "k1", "a": 2, "b": 5, "e": None}
        found = await query_server.find(names.people, where={"c": 1}, order_by=KEY, limit=10)
        assert [d[KEY] for d in found] == ["k3"]
        # A stale writer on the other instance cannot move anything back.
        await query_server.apply([Upsert(names.people, "k1", {"a": 0}, 12)], Checkpoint(cp, 12))
        assert (await projector.get(names.people, "k1") or {})["a"] == 2
        assert await projector.checkpoint(cp) == 14


async def test_open_against_a_closed_port_raises_unavailable(names: Names) -> None:
    port = free_port()  # nothing listens there
    store = MongoViewStore(f"mongodb://127.0.0.1:{port}/?directConnection=true", "x", timeout=0.3)
    with pytest.raises(Unavailable, match=f"cannot reach MongoDB at mongodb://127.0.0.1:{port}/"):
        await store.open(names.collections)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get(names.people, "k1")
    await store.close()


async def test_the_message_never_shows_credentials(names: Names) -> None:
    uri = f"mongodb://ledger:s3cret@127.0.0.1:{free_port()}/?directConnection=true"
    store = MongoViewStore(uri, "x", timeout=0.3)
    assert "s3cret" not in repr(store)
    with pytest.raises(Unavailable) as raised:
        await store.open(names.collections)
    assert "s3cret" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("http://127.0.0.1:1", "ledger"),
        ("mongodb://127.0.0.1:99999", "ledger"),
        ("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=soon", "ledger"),
        ("mongodb://127.0.0.1:1", "led.ger"),
        ("mongodb://127.0.0.1:1", ""),
    ],
)
def test_a_malformed_setting_fails_at_construction(uri: str, database: str) -> None:
    with pytest.raises(ValueError, match="invalid MongoDB"):
        MongoViewStore(uri, database)


async def retrying(call: Callable[[], Awaitable[T]], attempts: int = 30) -> T:
    """The first calls after a server comes back may still see the outage."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except Unavailable:
            continue
    return await call()


async def test_an_outage_raises_unavailable_and_the_store_recovers(
    tmp_path: Path, names: Names
) -> None:
    data = tmp_path / "nx-data"
    data.mkdir()
    cp = names.checkpoint("projector")
    with nx_27017(data_dir=data) as server:
        port = server.port
        store = MongoViewStore(server.uri, database_name(), timeout=0.5)
        await store.open(names.collections)
        await store.apply([Upsert(names.people, "k1", {"a": 1}, 10)], Checkpoint(cp, 10))
    try:
        with pytest.raises(Unavailable, match="unavailable"):
            await store.get(names.people, "k1")
        with pytest.raises(Unavailable):
            await store.checkpoint(cp)
        with pytest.raises(Unavailable):
            await store.find(names.people, where={}, order_by=KEY, limit=10)
        with pytest.raises(Unavailable):
            await store.apply(batch(names), Checkpoint(cp, 14))
        with nx_27017(data_dir=data, port=port):
            assert await retrying(lambda: store.checkpoint(cp)) == 10
            assert await store.get(names.people, "k1") == {KEY: "k1", "a": 1}
            await store.apply(batch(names), Checkpoint(cp, 14))
            assert await store.checkpoint(cp) == 14
            assert (await store.get(names.people, "k1") or {})["b"] == 5
    finally:
        await store.close()


async def test_a_batch_naming_an_undeclared_collection_changes_nothing(
    views: MongoViewStore, names: Names
) -> None:
    cp = names.checkpoint("projector")
    await views.apply([Upsert(names.people, "k1", {"a": 1}, 10)], Checkpoint(cp, 10))
    with pytest.raises(ValueError, match="not declared"):
        await views.apply(
            [Upsert(names.people, "k1", {"a": 2}, 11), Upsert("never_declared", "k", {}, 12)],
            Checkpoint(cp, 12),
        )
    with pytest.raises(ValueError, match="invalid view field name"):
        await views.apply([Upsert('x"; $where', "k", {}, 12)], Checkpoint(cp, 12))
    assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1}
    assert await views.checkpoint(cp) == 10


@pytest.mark.parametrize("field", [POSITION, RENDERED, KEY, "a.b", "$set"])
async def test_reserved_or_odd_field_names_are_refused(
    views: MongoViewStore, names: Names, field: str
) -> None:
    cp = names.checkpoint("projector")
    with pytest.raises(ValueError, match="field"):
        await views.apply(
            [Upsert(names.people, "k1", {"a": 1}, 10), Upsert(names.people, "k2", {field: 1}, 10)],
            Checkpoint(cp, 10),
        )
    assert await everything(views, names.people) == []
    assert await views.checkpoint(cp) == 0
    if field != KEY:  # filtering on the key is fine
        with pytest.raises(ValueError, match="field"):
            await views.find(names.people, where={field: 1}, order_by=KEY, limit=1)
        with pytest.raises(ValueError, match="field"):
            await views.find(names.people, where={}, order_by=field, limit=1)


async def test_documents_keep_their_position_out_of_sight(
    views: MongoViewStore, server_uri: str, database: str, names: Names
) -> None:
    await views.apply(
        [Upsert(names.people, "k1", {"n": 2**40}, 7)], Checkpoint(names.checkpoint("p"), 7)
    )
    doc = await views.get(names.people, "k1")
    assert doc == {KEY: "k1", "n": 2**40}
    assert type(doc["n"]) is int  # not bson.Int64
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, serverSelectionTimeoutMS=5000)
    try:
        raw = client[database][collection_name(names.people)].find_one({KEY: "k1"})
    finally:
        client.close()
    assert raw is not None
    assert raw[POSITION] == 7


async def test_open_creates_the_declared_indexes(
    views: MongoViewStore, server_uri: str, database: str, names: Names
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, serverSelectionTimeoutMS=5000)
    try:
        info = client[database][collection_name(names.people)].index_information()
    finally:
        client.close()
    keys = {tuple(f for f, _ in spec["key"]) for spec in info.values()}
    assert ("team", "seq") in keys
    # nx-27017 cannot take _id in a compound index; the adapter leaves it out there.
    assert ("status", KEY) in keys or ("status",) in keys


async def test_limit_zero_finds_nothing_and_a_null_filter_matches_nothing(
    views: MongoViewStore, names: Names
) -> None:
    """MongoDB reads limit 0 as "no limit", and {f: null} as "f is missing"; the port
    (and SQLite) mean no rows and never-equal."""
    await views.apply(
        [Upsert(names.people, "k1", {"a": 1}, 1), Upsert(names.people, "k2", {"b": None}, 2)],
        Checkpoint(names.checkpoint("p"), 2),
    )
    assert await views.find(names.people, where={}, order_by=KEY, limit=0) == []
    assert await views.find(names.people, where={"b": None}, order_by=KEY, limit=10) == []


async def test_find_after_on_the_filtered_field(views: MongoViewStore, names: Names) -> None:
    await views.apply(
        [Upsert(names.people, f"k{n}", {"seq": n % 3}, n) for n in range(1, 7)],
        Checkpoint(names.checkpoint("p"), 6),
    )
    found = await views.find(names.people, where={"seq": 2}, order_by="seq", after=1, limit=10)
    assert sorted(d[KEY] for d in found) == ["k2", "k5"]
    assert await views.find(names.people, where={"seq": 2}, order_by="seq", after=2, limit=10) == []


async def test_page_tokens_stay_stable_while_documents_change(
    views: MongoViewStore, names: Names
) -> None:
    """ledger.paging's keyset tokens over this store: every document present for the
    whole listing is served exactly once, in key order, whatever changes meanwhile."""
    cp = names.checkpoint("p")
    keys = [f"acct-{n:02d}" for n in range(10)]
    await views.apply(
        [Upsert(names.people, k, {"status": "OPEN"}, i) for i, k in enumerate(keys, 1)],
        Checkpoint(cp, 10),
    )
    served: list[str] = []
    token = ""
    position = 10
    while True:
        page = await fetch_page(
            views,
            names.people,
            where={"status": "OPEN"},
            order_by=KEY,
            page_size=3,
            page_token=token,
        )
        served.extend(str(d[KEY]) for d in page.documents)
        position += 1  # meanwhile: a new account sorts first, a served one changes
        await views.apply(
            [
                Upsert(names.people, f"acct-00-{position}", {"status": "OPEN"}, position),
                Upsert(names.people, served[-1], {"status": "OPEN", "n": position}, position),
            ],
            Checkpoint(cp, position),
        )
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert [k for k in served if k in keys] == keys
    assert len(served) == len(set(served))


async def test_a_document_written_by_someone_else_is_reported_not_overwritten(
    views: MongoViewStore, server_uri: str, database: str, names: Names
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, serverSelectionTimeoutMS=5000)
    try:
        client[database][collection_name(names.people)].insert_one({KEY: "k1", "a": "foreign"})
    finally:
        client.close()
    cp = names.checkpoint("projector")
    with pytest.raises(RuntimeError, match="no applied position"):
        await views.apply([Upsert(names.people, "k1", {"a": 1}, 10)], Checkpoint(cp, 10))
    assert await views.get(names.people, "k1") == {KEY: "k1", "a": "foreign"}
    assert await views.checkpoint(cp) == 0
