"""Answers assembled from encoded messages are the answers protobuf itself encodes."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

from ledger.grpc.wire import repeated_field, varint
from ledger.v1 import account_pb2
from ledger.v1 import account_query_service_pb2 as qry


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**35, 2**64 - 1])
def test_a_varint_is_protobufs(value: int) -> None:
    assert varint(value) == _VarintBytes(value)


def test_a_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        varint(-1)


@pytest.mark.parametrize("lengths", [[], [0], [1, 30], [126, 127, 128, 20_000]])
def test_a_repeated_field_of_encoded_messages_parses_as_those_messages(lengths: list[int]) -> None:
    """Descriptions of these lengths put each row's encoding on either side of the one
    byte length's bound (127), and the empty message is encoded as no bytes at all."""
    rows = [
        account_pb2.Transaction(description="x" * n, version=i) if n else account_pb2.Transaction()
        for i, n in enumerate(lengths, 1)
    ]
    encodings = [row.SerializeToString() for row in rows]
    number = qry.ListTransactionsResponse.DESCRIPTOR.fields_by_name["transactions"].number
    assembled = repeated_field(number, encodings)
    expected = qry.ListTransactionsResponse(transactions=rows)
    assert assembled == expected.SerializeToString()
    assert qry.ListTransactionsResponse.FromString(assembled) == expected
