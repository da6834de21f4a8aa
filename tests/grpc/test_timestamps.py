"""The query server's stored-text-to-Timestamp conversion agrees with protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.banking.messages import set_time
from ledger.banking.views import timestamp

INSTANTS = [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2026, 12, 5, 8, 30, 1, 654_321, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch: seconds < 0
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7))),
]


@pytest.mark.parametrize("at", INSTANTS, ids=str)
def test_a_stored_timestamp_reads_as_protobuf_converts_it(at: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(at)

    stamp = Timestamp()
    set_time(stamp, timestamp(at))

    assert stamp == expected


def test_a_timestamp_stored_without_an_offset_is_utc() -> None:
    expected = Timestamp()
    expected.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))

    stamp = Timestamp()
    set_time(stamp, "2026-01-02T03:04:05.000006")

    assert stamp == expected
