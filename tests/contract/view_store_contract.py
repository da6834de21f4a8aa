"""The view store port's contract: every adapter subclasses `ViewStoreContract`.

    class TestSqliteViewStore(ViewStoreContract):
        @pytest.fixture
        async def views(self, tmp_path: Path, names: Names) -> AsyncIterator[ViewStore]:
            store = SqliteViewStore(tmp_path / "views.sqlite3")
            await store.open(names.collections)
            yield store
            await store.close()

`names` gives every test fresh collection and checkpoint names, so an adapter backed
by a shared, long-lived server passes too (and tests never see each other's data).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from ledger.views.port import (
    KEY,
    Checkpoint,
    Collection,
    Index,
    Scalar,
    StatusValue,
    Upsert,
    ViewStore,
)


@dataclass(frozen=True)
class Names:
    """Unique names for one test: two collections and a checkpoint prefix."""

    people: str
    other: str
    checkpoint_prefix: str

    @classmethod
    def fresh(cls) -> Names:
        run = uuid.uuid4().hex[:16]
        return cls(people=f"people_{run}", other=f"other_{run}", checkpoint_prefix=f"cp-{run}-")

    @property
    def collections(self) -> tuple[Collection, ...]:
        return (
            Collection(self.people, (Index(("status", KEY)), Index(("team", "seq")))),
            Collection(self.other),
        )

    def checkpoint(self, name: str) -> str:
        return f"{self.checkpoint_prefix}{name}"


PEOPLE: list[tuple[str, dict[str, Scalar]]] = [
    # key, fields: status and team are filters; seq orders numerically (10 after 9)
    ("p1", {"name": "Ada", "status": "OPEN", "team": "red", "seq": 10, "vip": True}),
    ("p2", {"name": "Bob", "status": "CLOSED", "team": "red", "seq": 2, "vip": False}),
    ("p3", {"name": "Zoë", "status": "OPEN", "team": "blue", "seq": 9, "vip": False}),
    ("p4", {"name": "Dan", "status": "OPEN", "team": "red", "seq": 1, "vip": True}),
    ("p5", {"name": "Eve", "status": "OPEN", "team": "red", "seq": 30, "vip": False}),
]


def rendering(key: str) -> bytes:
    """A rendering to tell by its key: any bytes, not text (NUL, 0xff, a newline)."""
    return b"\x00\xff\n" + key.encode()


class ViewStoreContract:
    """Semantics of ledger.views.port.ViewStore."""

    signals_changes = False
    """Whether the adapter's change_watcher tells of commits (else readers poll)."""

    @pytest.fixture
    def names(self) -> Names:
        return Names.fresh()

    @pytest.fixture
    def views(self, tmp_path: Path, names: Names) -> ViewStore:
        raise NotImplementedError("an adapter's test class yields a store opened on `names`")

    async def seed(self, views: ViewStore, names: Names) -> None:
        upserts = [
            Upsert(names.people, key, fields, position)
            for position, (key, fields) in enumerate(PEOPLE, start=1)
        ]
        await views.apply(upserts, Checkpoint(names.checkpoint("seed"), len(PEOPLE)))

    # Upserts

    async def test_an_upsert_creates_a_document(self, views: ViewStore, names: Names) -> None:
        fields: dict[str, Scalar] = {
            "name": "Ada",
            "balance": 2**63 - 1,
            "vip": True,
            "note": "Zoë ✓",
        }
        await views.apply(
            [Upsert(names.people, "k1", fields, 10)], Checkpoint(names.checkpoint("a"), 10)
        )
        assert await views.get(names.people, "k1") == {KEY: "k1", **fields}

    async def test_an_upsert_merges_fields_into_a_document(
        self, views: ViewStore, names: Names
    ) -> None:
        cp = names.checkpoint("a")
        await views.apply([Upsert(names.people, "k1", {"a": 1, "b": 2}, 10)], Checkpoint(cp, 10))
        await views.apply([Upsert(names.people, "k1", {"b": 3, "c": 4}, 11)], Checkpoint(cp, 11))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1, "b": 3, "c": 4}

    async def test_an_upsert_can_set_a_field_to_null(self, views: ViewStore, names: Names) -> None:
        cp = names.checkpoint("a")
        await views.apply([Upsert(names.people, "k1", {"a": 1, "b": None}, 10)], Checkpoint(cp, 10))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1, "b": None}
        await views.apply([Upsert(names.people, "k1", {"a": None}, 11)], Checkpoint(cp, 11))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": None, "b": None}

    async def test_an_upsert_at_an_old_or_equal_position_changes_nothing(
        self, views: ViewStore, names: Names
    ) -> None:
        cp = names.checkpoint("a")
        await views.apply([Upsert(names.people, "k1", {"a": 1}, 10)], Checkpoint(cp, 10))
        await views.apply([Upsert(names.people, "k1", {"a": 2, "x": 1}, 10)], Checkpoint(cp, 10))
        await views.apply([Upsert(names.people, "k1", {"a": 3, "y": 1}, 9)], Checkpoint(cp, 10))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1}
        await views.apply([Upsert(names.people, "k1", {"a": 4}, 11)], Checkpoint(cp, 11))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": 4}

    async def test_one_batch_can_change_a_document_twice(
        self, views: ViewStore, names: Names
    ) -> None:
        upserts = [
            Upsert(names.people, "k1", {"a": 1, "b": 1}, 10),
            Upsert(names.people, "k1", {"b": 2}, 11),
            Upsert(names.other, "k1", {"z": 0}, 11),
        ]
        await views.apply(upserts, Checkpoint(names.checkpoint("a"), 11))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": 1, "b": 2}
        assert await views.get(names.other, "k1") == {KEY: "k1", "z": 0}

    async def test_a_batch_has_the_effect_of_its_upserts_one_by_one(
        self, views: ViewStore, names: Names
    ) -> None:
        batch = [
            Upsert(names.people, "k1", {"a": 1, "b": 1}, 10),
            Upsert(names.people, "k2", {"a": 1}, 10),
            Upsert(names.people, "k1", {"b": None, "c": True}, 11),
            Upsert(names.people, "k1", {"a": 9, "x": 1}, 11),  # at an earlier one's position
            Upsert(names.people, "k1", {"a": 8}, 10),  # below an earlier one's position
            Upsert(names.people, "k1", {"d": "z"}, 14),
            Upsert(names.people, "k2", {"a": 2}, 12),
        ]
        await views.apply(batch, Checkpoint(names.checkpoint("a"), 14))
        assert await views.get(names.people, "k1") == {
            KEY: "k1",
            **{"a": 1, "b": None, "c": True, "d": "z"},
        }
        assert await views.get(names.people, "k2") == {KEY: "k2", "a": 2}

    async def test_a_batch_applies_only_what_a_document_does_not_reflect_yet(
        self, views: ViewStore, names: Names
    ) -> None:
        # k1 already reflects position 11 (a redelivery over views written without a
        # transaction); k2, with the same upserts in the same batch, reflects none.
        cp = names.checkpoint("a")
        await views.apply([Upsert(names.people, "k1", {"a": "kept"}, 11)], Checkpoint(cp, 11))
        batch = [
            Upsert(names.people, key, fields, position)
            for position, fields in ((10, {"a": 1, "b": 1}), (11, {"a": 2}), (12, {"c": 3}))
            for key in ("k1", "k2")
        ]
        await views.apply(batch, Checkpoint(cp, 12))
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": "kept", "c": 3}
        assert await views.get(names.people, "k2") == {KEY: "k2", "a": 2, "b": 1, "c": 3}
        await views.apply(batch, Checkpoint(cp, 12))  # again: nothing changes
        assert await views.get(names.people, "k1") == {KEY: "k1", "a": "kept", "c": 3}
        assert await views.get(names.people, "k2") == {KEY: "k2", "a": 2, "b": 1, "c": 3}

    async def test_collections_are_separate(self, views: ViewStore, names: Names) -> None:
        await views.apply(
            [Upsert(names.people, "k1", {"a": 1}, 10)], Checkpoint(names.checkpoint("a"), 10)
        )
        assert await views.get(names.other, "k1") is None

    async def test_get_a_missing_document_is_none(self, views: ViewStore, names: Names) -> None:
        assert await views.get(names.people, "nobody") is None

    # Checkpoints

    async def test_an_unknown_checkpoint_is_zero(self, views: ViewStore, names: Names) -> None:
        assert await views.checkpoint(names.checkpoint("never")) == 0

    async def test_apply_moves_the_checkpoint_forward_only(
        self, views: ViewStore, names: Names
    ) -> None:
        cp = names.checkpoint("a")
        await views.apply([], Checkpoint(cp, 5))
        assert await views.checkpoint(cp) == 5
        await views.apply([], Checkpoint(cp, 3))
        assert await views.checkpoint(cp) == 5
        await views.apply([], Checkpoint(cp, 5))
        assert await views.checkpoint(cp) == 5
        await views.apply([Upsert(names.people, "k", {"a": 1}, 7)], Checkpoint(cp, 7))
        assert await views.checkpoint(cp) == 7

    async def test_checkpoints_are_independent_and_listed(
        self, views: ViewStore, names: Names
    ) -> None:
        a, b = names.checkpoint("a"), names.checkpoint("b")
        await views.apply([], Checkpoint(a, 12))
        await views.apply([], Checkpoint(b, 3))
        assert (await views.checkpoint(a), await views.checkpoint(b)) == (12, 3)
        mine = {c.name: c for c in await views.checkpoints() if c.name in (a, b)}
        assert {name: c.position for name, c in mine.items()} == {a: 12, b: 3}
        for c in mine.values():
            if c.updated_at is not None:
                assert isinstance(c.updated_at, datetime)
                assert c.updated_at.utcoffset() is not None

    # Status records

    async def test_a_status_record_is_saved_replaced_and_listed(
        self, views: ViewStore, names: Names
    ) -> None:
        a, b = names.checkpoint("a"), names.checkpoint("b")
        first: dict[str, StatusValue] = {
            "state": "LIVE",
            "head_position": 2**53 + 1,
            "rate": 12.5,
            "ok": True,
            "last_error": None,
        }
        await views.save_status(b, {"state": "STOPPED"})
        await views.save_status(a, first)
        mine = [s for s in await views.statuses() if s[KEY] in (a, b)]
        assert mine == [{KEY: a, **first}, {KEY: b, "state": "STOPPED"}]
        # A save replaces the whole record: fields left out are gone.
        await views.save_status(a, {"state": "FAILED", "rate": 0.0})
        mine = [s for s in await views.statuses() if s[KEY] in (a, b)]
        assert mine == [{KEY: a, "state": "FAILED", "rate": 0.0}, {KEY: b, "state": "STOPPED"}]
        assert isinstance(mine[0]["rate"], float)

    async def test_status_records_are_not_checkpoints_or_views(
        self, views: ViewStore, names: Names
    ) -> None:
        name = names.checkpoint("s")
        await views.save_status(name, {"head_position": 9})
        assert name not in [c.name for c in await views.checkpoints()]
        assert await views.checkpoint(name) == 0
        assert await views.find(names.people, where={}, order_by=KEY, limit=10) == []

    @pytest.mark.parametrize("field", [KEY, "a.b", "$set", ""])
    async def test_a_status_field_named_oddly_is_refused(
        self, views: ViewStore, names: Names, field: str
    ) -> None:
        name = names.checkpoint("s")
        with pytest.raises(ValueError, match=r"field|key"):
            await views.save_status(name, {"state": "LIVE", field: 1})
        assert name not in [s[KEY] for s in await views.statuses()]

    # Queries

    async def test_find_with_one_equality_filter(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(names.people, where={"status": "OPEN"}, order_by=KEY, limit=10)
        assert [d[KEY] for d in found] == ["p1", "p3", "p4", "p5"]
        assert found[0] == {KEY: "p1", **PEOPLE[0][1]}

    async def test_find_with_several_equality_filters(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(
            names.people, where={"status": "OPEN", "team": "red"}, order_by=KEY, limit=10
        )
        assert [d[KEY] for d in found] == ["p1", "p4", "p5"]
        vips = await views.find(
            names.people, where={"team": "red", "vip": True}, order_by=KEY, limit=10
        )
        assert [d[KEY] for d in vips] == ["p1", "p4"]
        by_name = await views.find(names.people, where={"name": "Zoë"}, order_by=KEY, limit=10)
        assert [d[KEY] for d in by_name] == ["p3"]
        by_number = await views.find(names.people, where={"seq": 9}, order_by=KEY, limit=10)
        assert [d[KEY] for d in by_number] == ["p3"]

    async def test_find_nothing(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        assert await views.find(names.people, where={"team": "green"}, order_by=KEY, limit=10) == []
        assert await views.find(names.other, where={}, order_by=KEY, limit=10) == []

    async def test_find_orders_by_a_field_numerically(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(names.people, where={"team": "red"}, order_by="seq", limit=10)
        assert [d["seq"] for d in found] == [1, 2, 10, 30]
        assert [d[KEY] for d in found] == ["p4", "p2", "p1", "p5"]

    async def test_find_without_filters_lists_everything(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed(views, names)
        found = await views.find(names.people, where={}, order_by=KEY, limit=100)
        assert [d[KEY] for d in found] == ["p1", "p2", "p3", "p4", "p5"]
        assert all(KEY in d for d in found)

    async def test_find_limit(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(names.people, where={}, order_by="seq", limit=2)
        assert [d[KEY] for d in found] == ["p4", "p2"]

    async def test_find_after_a_key(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(
            names.people, where={"status": "OPEN"}, order_by=KEY, after="p3", limit=10
        )
        assert [d[KEY] for d in found] == ["p4", "p5"]

    async def test_find_after_a_field_value(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(
            names.people, where={"team": "red"}, order_by="seq", after=2, limit=10
        )
        assert [d["seq"] for d in found] == [10, 30]

    async def test_find_descending(self, views: ViewStore, names: Names) -> None:
        await self.seed(views, names)
        found = await views.find(
            names.people, where={"team": "red"}, order_by="seq", descending=True, limit=10
        )
        assert [d["seq"] for d in found] == [30, 10, 2, 1]
        by_key = await views.find(names.people, where={}, order_by=KEY, descending=True, limit=2)
        assert [d[KEY] for d in by_key] == ["p5", "p4"]

    async def test_find_descending_after_a_value_pages_downwards(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed(views, names)
        found = await views.find(
            names.people, where={"team": "red"}, order_by="seq", after=10, descending=True, limit=10
        )
        assert [d["seq"] for d in found] == [2, 1]

    async def test_find_at_most_is_an_inclusive_upper_bound(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed(views, names)
        up_to_ten = await views.find(
            names.people, where={"team": "red"}, order_by="seq", at_most=10, limit=10
        )
        assert [d["seq"] for d in up_to_ten] == [1, 2, 10]
        below_ten = await views.find(
            names.people, where={"team": "red"}, order_by="seq", at_most=9, limit=10
        )
        assert [d["seq"] for d in below_ten] == [1, 2]
        between = await views.find(
            names.people, where={"team": "red"}, order_by="seq", after=1, at_most=10, limit=10
        )
        assert [d["seq"] for d in between] == [2, 10]
        none = await views.find(
            names.people, where={"team": "red"}, order_by="seq", at_most=0, limit=10
        )
        assert none == []

    async def test_the_last_document_at_or_before_a_value(
        self, views: ViewStore, names: Names
    ) -> None:
        """descending + at_most + limit 1: the as-of lookup."""
        await self.seed(views, names)

        async def last(at_most: Scalar) -> list[Scalar]:
            found = await views.find(
                names.people,
                where={"team": "red"},
                order_by="seq",
                at_most=at_most,
                descending=True,
                limit=1,
            )
            return [d[KEY] for d in found]

        assert await last(10) == ["p1"]
        assert await last(29) == ["p1"]
        assert await last(30) == ["p5"]
        assert await last(10**12) == ["p5"]
        assert await last(1) == ["p4"]
        assert await last(0) == []
        text = await views.find(
            names.people, where={}, order_by=KEY, at_most="p3~", descending=True, limit=1
        )
        assert [d[KEY] for d in text] == ["p3"]

    async def test_keyset_paging_visits_every_match_once(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed(views, names)
        seen: list[str] = []
        after: str | None = None
        for _ in range(10):
            page = await views.find(
                names.people, where={"status": "OPEN"}, order_by=KEY, after=after, limit=2
            )
            if not page:
                break
            assert len(page) <= 2
            seen.extend(d[KEY] for d in page)
            after = page[-1][KEY]
        assert seen == ["p1", "p3", "p4", "p5"]

    async def seed_children(self, views: ViewStore, names: Names) -> None:
        """Rows keyed `<parent>/<n>`, beside parents whose ids extend another's ("a", "ab")."""
        keys = ["a/1", "a/2", "a/3", "ab/1", "a", "b/1", "a0"]
        upserts = [
            Upsert(names.other, k, {"team": "red" if k != "a/2" else "blue"}, p)
            for p, k in enumerate(keys, 1)
        ]
        await views.apply(upserts, Checkpoint(names.checkpoint("children"), len(keys)))

    async def test_a_key_prefix_finds_only_the_keys_that_start_with_it(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed_children(views, names)

        async def keys(
            prefix: str,
            *,
            after: str | None = None,
            at_most: str | None = None,
            descending: bool = False,
            limit: int = 10,
        ) -> list[str]:
            found = await views.find(
                names.other,
                where={},
                order_by=KEY,
                after=after,
                at_most=at_most,
                descending=descending,
                limit=limit,
                key_prefix=prefix,
            )
            return [d[KEY] for d in found]

        assert await keys("a/") == ["a/1", "a/2", "a/3"]
        assert await keys("a") == ["a", "a/1", "a/2", "a/3", "a0", "ab/1"]
        assert await keys("ab/") == ["ab/1"]
        assert await keys("c/") == []
        assert await keys("a/", descending=True) == ["a/3", "a/2", "a/1"]
        # With the order's bounds: the last child at or before one, and keyset paging.
        assert await keys("a/", at_most="a/2", descending=True, limit=1) == ["a/2"]
        assert await keys("ab/", at_most="ab/0", descending=True) == []
        assert await keys("a/", after="a/1") == ["a/2", "a/3"]
        assert await keys("a/", after="a/3", descending=True) == ["a/2", "a/1"]
        found = await views.find(
            names.other, where={"team": "red"}, order_by=KEY, limit=10, key_prefix="a/"
        )
        assert [d[KEY] for d in found] == ["a/1", "a/3"]

    @pytest.mark.parametrize(
        ("where", "expected"),
        [
            ({"flag": True}, ["g/1", "g/2"]),
            ({"flag": False}, ["g/3"]),
            ({"flag": None}, []),  # a null or missing field matches nothing
            ({"n": 2}, ["g/4", "g/5"]),
            ({"n": "2"}, ["g/6"]),
            ({"name": "Zoë", "flag": True}, ["g/2"]),
        ],
    )
    async def test_equalities_within_a_key_prefix_match_as_without_one(
        self, views: ViewStore, names: Names, where: dict[str, Scalar], expected: list[str]
    ) -> None:
        docs: list[tuple[str, dict[str, Scalar]]] = [
            ("g/1", {"flag": True, "name": "Ann"}),
            ("g/2", {"flag": True, "name": "Zoë"}),
            ("g/3", {"flag": False, "n": None}),
            ("g/4", {"n": 2}),
            ("g/5", {"n": 2, "flag": None}),
            ("g/6", {"n": "2"}),
            ("h/1", {"flag": True, "n": 2, "name": "Zoë"}),  # outside the prefix
        ]
        upserts = [Upsert(names.other, k, fields, p) for p, (k, fields) in enumerate(docs, 1)]
        await views.apply(upserts, Checkpoint(names.checkpoint("eq"), len(docs)))

        async def keys(*, limit: int = 10, key_prefix: str = "") -> list[str]:
            found = await views.find(
                names.other, where=where, order_by=KEY, limit=limit, key_prefix=key_prefix
            )
            return [d[KEY] for d in found]

        assert await keys(key_prefix="g/") == expected
        assert [k for k in await keys() if k.startswith("g/")] == expected
        assert await keys(key_prefix="g/", limit=1) == expected[:1]

    # Renderings

    async def test_renderings_are_served_by_key_range_and_kept_out_of_documents(
        self, views: ViewStore, names: Names
    ) -> None:
        keys = ["a/1", "a/2", "a/3", "ab/1", "a", "b/1", "a0"]
        unrendered = {"a/2", "a"}  # rendered: every other key, its name and odd bytes
        upserts = [
            Upsert(names.other, k, {"n": p}, p, None if k in unrendered else rendering(k))
            for p, k in enumerate(keys, 1)
        ]
        await views.apply(upserts, Checkpoint(names.checkpoint("r"), len(keys)))

        async def rendered(prefix: str, after: str | None = None, limit: int = 10) -> list[str]:
            found = await views.find_rendered(
                names.other, key_prefix=prefix, after=after, limit=limit
            )
            assert all(r == rendering(k) for k, r in found)
            return [k for k, _ in found]

        assert await rendered("a/") == ["a/1", "a/3"]
        assert await rendered("a") == ["a/1", "a/3", "a0", "ab/1"]
        assert await rendered("") == ["a/1", "a/3", "a0", "ab/1", "b/1"]
        assert await rendered("a/", after="a/1") == ["a/3"]
        assert await rendered("a", after="a/2", limit=2) == ["a/3", "a0"]
        assert await rendered("a", limit=0) == []
        assert await rendered("c/") == []
        # Documents read back never show a rendering.
        assert await views.get(names.other, "a/1") == {KEY: "a/1", "n": 1}
        found = await views.find(names.other, where={}, order_by=KEY, limit=10, key_prefix="a/")
        assert found == [{KEY: f"a/{n}", "n": n} for n in (1, 2, 3)]

    async def test_an_upsert_without_a_rendering_keeps_the_one_there(
        self, views: ViewStore, names: Names
    ) -> None:
        cp = names.checkpoint("r")

        async def rendered() -> list[tuple[str, bytes]]:
            return await views.find_rendered(names.other, key_prefix="k", limit=10)

        await views.apply([Upsert(names.other, "k1", {"a": 1}, 10, b"one")], Checkpoint(cp, 10))
        await views.apply([Upsert(names.other, "k1", {"a": 2}, 11)], Checkpoint(cp, 11))
        assert await rendered() == [("k1", b"one")]
        await views.apply([Upsert(names.other, "k1", {}, 12, b"two")], Checkpoint(cp, 12))
        assert await rendered() == [("k1", b"two")]
        # At an old position, a rendering changes nothing, as fields do not.
        await views.apply([Upsert(names.other, "k1", {}, 12, b"old")], Checkpoint(cp, 12))
        assert await rendered() == [("k1", b"two")]
        assert await views.get(names.other, "k1") == {KEY: "k1", "a": 2}

    async def test_a_batch_renders_as_its_upserts_one_by_one(
        self, views: ViewStore, names: Names
    ) -> None:
        # k1 already reflects position 11; k2, with the same upserts, reflects none.
        cp = names.checkpoint("r")
        await views.apply([Upsert(names.other, "k1", {}, 11, b"kept")], Checkpoint(cp, 11))
        batch = [
            Upsert(names.other, key, {"p": position}, position, rendered)
            for position, rendered in ((10, b"ten"), (11, b"eleven"), (12, None))
            for key in ("k1", "k2")
        ]
        for _ in range(2):  # and redelivered: nothing changes
            await views.apply(batch, Checkpoint(cp, 12))
            found = await views.find_rendered(names.other, key_prefix="k", limit=10)
            assert found == [("k1", b"kept"), ("k2", b"eleven")]

    async def test_put_replaces_a_document_and_its_rendering(
        self, views: ViewStore, names: Names
    ) -> None:
        await views.apply(
            [Upsert(names.other, "k1", {"a": 1}, 10, b"one")], Checkpoint(names.checkpoint("r"), 10)
        )
        await views.put(names.other, "k1", {"a": 2})
        assert await views.find_rendered(names.other, key_prefix="k", limit=10) == []
        assert await views.get(names.other, "k1") == {KEY: "k1", "a": 2}

    async def test_a_change_watcher_wakes_on_a_commit_or_there_is_none(
        self, views: ViewStore, names: Names
    ) -> None:
        watcher = views.change_watcher()
        assert (watcher is not None) == self.signals_changes
        if watcher is None:
            return
        try:
            assert await watcher.wait(0.05) is False  # nothing committed: the budget ends it
            waiting = asyncio.create_task(watcher.wait(30.0))
            await asyncio.sleep(0.05)
            await views.apply(
                [Upsert(names.other, "w1", {"a": 1}, 1)], Checkpoint(names.checkpoint("w"), 1)
            )
            async with asyncio.timeout(10):  # a guard against a hang, not a measurement
                assert await waiting is True
        finally:
            watcher.close()

    # Collections created and dropped at run time, and control documents (rebuilds)

    async def test_create_adds_collections_to_an_open_store(
        self, views: ViewStore, names: Names
    ) -> None:
        later = f"{names.other}_later"
        await views.create([Collection(later, (Index(("team", KEY)),))])
        await views.create([Collection(later, (Index(("team", KEY)),))])  # again: no-op
        await views.apply(
            [Upsert(later, "k1", {"team": "red"}, 5)], Checkpoint(names.checkpoint("l"), 5)
        )
        assert await views.find(later, where={"team": "red"}, order_by=KEY, limit=5) == [
            {KEY: "k1", "team": "red"}
        ]

    async def test_drop_removes_collections_checkpoint_and_status_only(
        self, views: ViewStore, names: Names
    ) -> None:
        await self.seed(views, names)
        kept = names.checkpoint("kept")
        await views.apply([Upsert(names.other, "o1", {"a": 1}, 7)], Checkpoint(kept, 7))
        await views.save_status(names.checkpoint("seed"), {"state": "STOPPED"})
        await views.save_status(kept, {"state": "LIVE"})

        await views.drop([names.people], names.checkpoint("seed"))

        await views.create([names.collections[0]])  # empty again, not the old documents
        assert await views.find(names.people, where={}, order_by=KEY, limit=10) == []
        assert await views.checkpoint(names.checkpoint("seed")) == 0
        statuses = [s[KEY] for s in await views.statuses()]
        assert names.checkpoint("seed") not in statuses
        assert kept in statuses
        assert await views.get(names.other, "o1") == {KEY: "o1", "a": 1}
        assert await views.checkpoint(kept) == 7

    async def test_put_replaces_a_whole_document(self, views: ViewStore, names: Names) -> None:
        await views.put(names.other, "control", {"active": 1, "note": "x", "flag": None})
        await views.put(names.other, "control", {"active": 2})
        assert await views.get(names.other, "control") == {KEY: "control", "active": 2}

    async def test_put_refuses_a_field_named_like_the_key(
        self, views: ViewStore, names: Names
    ) -> None:
        with pytest.raises(ValueError, match=r"field|key"):
            await views.put(names.other, "control", {KEY: "other", "active": 1})
        assert await views.get(names.other, "control") is None
