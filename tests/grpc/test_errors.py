"""The one error mapping, seen from a client: store trouble is UNAVAILABLE, a bug is
INTERNAL with nothing internal in the message, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from ledger.errors import Unavailable
from ledger.v1 import account_query_service_pb2 as qry
from ledger.views.port import (
    Document,
    Scalar,
    ViewStore,
)
from tests.grpc.conftest import LedgerFactory
from tests.support import connect, expect_failure, new_id
from tests.support.views import WrappedViews

SECRET = "s3cret-path/views.sqlite3 password=hunter2"


class FailingReads(WrappedViews):
    """The real view store, except that document reads raise `error`."""

    def __init__(self, inner: ViewStore, error: Exception) -> None:
        super().__init__(inner)
        self._error = error

    async def get(self, collection: str, key: str) -> Document | None:
        raise self._error

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
        raise self._error


async def test_a_bug_is_internal_and_leaks_nothing(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger(wrap_views=lambda v: FailingReads(v, RuntimeError(SECRET)))
    async with connect(ledger.command_target, ledger.query_target) as client:
        opened = await client.open()
        for call in (
            client.account(opened.account_id, min_position=opened.position),
            client.accounts(),
        ):
            failure = await expect_failure(call, grpc.StatusCode.INTERNAL)
            assert failure.message == "internal error"
            assert (failure.reason, failure.violations) == ("", {})
        # The server is still up: other methods answer.
        status = await client.queries.GetProjectionStatus(qry.GetProjectionStatusRequest())
        assert status.checkpoint_position >= opened.position


async def test_a_store_that_is_down_is_unavailable(make_ledger: LedgerFactory) -> None:
    down = Unavailable("view store unreachable")
    ledger = await make_ledger(wrap_views=lambda v: FailingReads(v, down))
    async with connect(ledger.command_target, ledger.query_target) as client:
        failure = await expect_failure(client.account(new_id()), grpc.StatusCode.UNAVAILABLE)
        assert failure.message == "view store unreachable"
