"""The key range both view stores read a `key_prefix` as."""

from __future__ import annotations

import pytest

from ledger.views.port import prefix_end


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("acct-1/", "acct-10"),
        ("a", "b"),
        ("z\U0010ffff", "{"),  # the last code point cannot grow: the one before it does
        ("\ud7ff", "\ue000"),  # skipping the surrogates, which no key can hold
    ],
)
def test_the_range_ends_at_the_least_string_past_the_prefix(prefix: str, end: str) -> None:
    assert prefix_end(prefix) == end
    assert prefix < end
    assert not (prefix + "\U0010ffff" * 3 >= end)


def test_a_prefix_of_only_the_last_code_point_has_no_end() -> None:
    assert prefix_end("\U0010ffff\U0010ffff") is None
