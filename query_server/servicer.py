"""AccountQueryService: reads the banking views, honouring min_position."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC

from ledger.banking.messages import (
    STATUS_FROM_PROTO,
    account_message,
    transaction_message,
    transfer_message,
)
from ledger.banking.views import (
    ACCOUNT_HISTORY,
    ACCOUNT_TRANSFERS,
    ACCOUNTS,
    AT_KEY,
    STATUS_HISTORY,
    TRANSACTION,
    TRANSFER_ORDER,
    TRANSFERS,
    at_key,
    history_key,
    history_rows,
    timestamp,
)
from ledger.banking.views import projection as banking
from ledger.consistency import CheckpointFollower, Watch
from ledger.domain.values import check_account_id
from ledger.errors import FieldViolation, NotFound, Unavailable, require
from ledger.grpc.types import Context
from ledger.grpc.wire import repeated_field
from ledger.paging import check_page_size, fetch_page, fetch_rendered_page
from ledger.v1 import account_query_service_pb2 as pb
from ledger.v1 import account_query_service_pb2_grpc
from ledger.views.port import KEY, Document, Scalar, ViewStore
from query_server.projection_status import projection_statuses

# The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
HISTORY_LAYOUT = 3
"""The banking views' version from which transactions and balances live on the
account_history rows: ListTransactions, GetAccountAsOf and WatchAccount need it."""
RENDERED_LAYOUT = 5
"""The banking views' version from which transaction rows carry their rendered
`Transaction`: ListTransactions serves those; before it, it builds them field by field."""
TRANSACTIONS_FIELD = pb.ListTransactionsResponse.DESCRIPTOR.fields_by_name["transactions"].number
LAST_VERSION = 10**20 - 1
"""Sorts after every version in an `at_key` (versions are written with 20 digits)."""
WATCH_BATCH = 100
"""History rows a watcher reads per query: its memory stays bounded however far behind."""
TRANSFER_DONE = ("COMPLETED", "FAILED")


def check_as_of(request: pb.GetAccountAsOfRequest) -> list[FieldViolation]:
    which = request.WhichOneof("as_of")
    if which is None:
        return [FieldViolation("as_of", "set as_of_time or as_of_version")]
    if which == "as_of_version" and request.as_of_version < 0:
        return [FieldViolation("as_of_version", "must not be negative")]
    if which == "as_of_time":
        stamp = request.as_of_time
        if not MIN_SECONDS <= stamp.seconds <= MAX_SECONDS or not 0 <= stamp.nanos < 10**9:
            return [FieldViolation("as_of_time", "is not a valid timestamp")]
    return []


# The fields every `account_history` row carries.
EVENT_FIELDS = ("version", "position", "updated_at")


def _after_event(before: Document, event: Document, values: dict[str, Scalar]) -> Document:
    """`before` with the state `values` the event set and the event's own fields."""
    return {**before, **values, **{field: event[field] for field in EVENT_FIELDS}}


def _up_to(checkpoint: int, rows: list[Document]) -> list[Document]:
    """The leading rows (in log order) at or before the checkpoint."""
    return list(itertools.takewhile(lambda r: r["position"] <= checkpoint, rows))


class AccountQueryServicer(account_query_service_pb2_grpc.AccountQueryServiceServicer):
    def __init__(
        self,
        views: ViewStore,
        follower: CheckpointFollower,
        *,
        max_wait: float,
        checkpoint_name: Callable[[], str] = lambda: banking.checkpoint_name,
        views_version: Callable[[], int] = lambda: banking.version,
    ) -> None:
        """`checkpoint_name` names the checkpoint of the views being read (the active
        generation's, which a rebuild changes); `views_version` is the projection version
        that built them (older while a new version's views are still being built)."""
        self._views = views
        self._follower = follower
        self._max_wait = max_wait
        self._checkpoint_name = checkpoint_name
        self._views_version = views_version

    async def _caught_up(self, min_position: int, context: Context) -> None:
        remaining = context.time_remaining()
        budget = (
            self._max_wait if remaining is None else min(self._max_wait, remaining * 0.9 - 0.05)
        )
        await self._follower.require(min_position, budget)

    def _require_history_layout(self) -> None:
        """Until the projector has rebuilt older views, the reads that need the newer
        layout answer Unavailable (retryable) rather than wrongly (e.g. no transactions)."""
        version = self._views_version()
        if version < HISTORY_LAYOUT:
            raise Unavailable(
                f"the views are version {version}; this query server needs"
                f" version {HISTORY_LAYOUT} or later, which the projector is building"
            )

    async def _account(self, account_id: str) -> Document:
        doc = await self._views.get(ACCOUNTS, account_id)
        if doc is None:
            raise NotFound(f"account {account_id!r} does not exist")
        return doc

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: Context
    ) -> pb.GetAccountResponse:
        require(check_account_id(request.account_id))
        await self._caught_up(request.min_position, context)
        return pb.GetAccountResponse(
            account=account_message(await self._account(request.account_id))
        )

    async def GetAccountAsOf(
        self, request: pb.GetAccountAsOfRequest, context: Context
    ) -> pb.GetAccountAsOfResponse:
        require([*check_account_id(request.account_id), *check_as_of(request)])
        self._require_history_layout()
        await self._caught_up(request.min_position, context)
        account_id = request.account_id
        current = await self._account(account_id)
        event: Document | None
        if request.WhichOneof("as_of") == "as_of_version":
            version = min(request.as_of_version, LAST_VERSION)
            event = await self._last_at_or_before(ACCOUNT_HISTORY, account_id, version)
        else:
            # Microseconds, as the views store them: nanoseconds beyond are truncated.
            at = request.as_of_time.ToDatetime(tzinfo=UTC)
            found = await self._views.find(
                ACCOUNT_HISTORY,
                where={"account_id": account_id},
                order_by=AT_KEY,
                at_most=at_key(timestamp(at), LAST_VERSION),
                descending=True,
                limit=1,
            )
            event = found[0] if found else None
        if event is None:
            raise NotFound(f"account {account_id!r} did not exist yet at that point")
        state = await self._state_after(current, event)
        return pb.GetAccountAsOfResponse(account=account_message(state))

    async def _history(
        self,
        collection: str,
        account_id: str,
        *,
        after: int | None = None,
        at_most: int | None = None,
        descending: bool = False,
        limit: int,
        where: Mapping[str, Scalar] | None = None,
    ) -> list[Document]:
        """The account's rows of a history collection (matching `where`) in version
        order, after version `after` (before it, descending) and at most `at_most`: a
        range of the keys, which sort by account, then version."""
        return await self._views.find(
            collection,
            where=where or {},
            order_by=KEY,
            after=None if after is None else history_key(account_id, after),
            at_most=None if at_most is None else history_key(account_id, at_most),
            descending=descending,
            limit=limit,
            key_prefix=history_rows(account_id),
        )

    async def _last_at_or_before(
        self,
        collection: str,
        account_id: str,
        version: int,
        where: Mapping[str, Scalar] | None = None,
    ) -> Document | None:
        """The account's last row of `collection` (matching `where`) at or before
        `version`: one step down the key range from that version."""
        rows = await self._history(
            collection, account_id, at_most=version, descending=True, limit=1, where=where
        )
        return rows[0] if rows else None

    async def _state_after(self, current: Document, event: Document) -> Document:
        """The account right after the event of an `account_history` row: its balance
        from the last row at or before it that set one (the last transaction, else the
        opening), its status from the last status change."""
        account_id, version = current["account_id"], event["version"]
        balance_row = event if "balance_minor" in event else None
        if balance_row is None:
            balance_row = await self._last_at_or_before(
                ACCOUNT_HISTORY, account_id, version, {TRANSACTION: True}
            ) or await self._views.get(ACCOUNT_HISTORY, history_key(account_id, 0))
        status_row = await self._last_at_or_before(STATUS_HISTORY, account_id, version)
        if balance_row is None or status_row is None:  # the opening sets both
            raise RuntimeError(f"no opening in the history of {account_id!r}")
        values = {"balance_minor": balance_row["balance_minor"], "status": status_row["status"]}
        return _after_event(current, event, values)

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        violations = check_page_size(request.page_size)
        if request.status and request.status not in STATUS_FROM_PROTO:
            violations.append(FieldViolation("status", "is not a known AccountStatus"))
        require(violations)
        await self._caught_up(request.min_position, context)
        where: dict[str, Scalar] = {}
        if request.owner_name:
            where["owner_name"] = request.owner_name
        if request.status:
            where["status"] = STATUS_FROM_PROTO[request.status]
        page = await fetch_page(
            self._views,
            ACCOUNTS,
            where=where,
            order_by="_id",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        answer = pb.ListAccountsResponse(next_page_token=page.next_page_token)
        account_message.page(answer.accounts, page.documents)
        return answer

    async def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: Context
    ) -> pb.ListTransactionsResponse:
        require([*check_account_id(request.account_id), *check_page_size(request.page_size)])
        self._require_history_layout()
        await self._caught_up(request.min_position, context)
        if self._views_version() < RENDERED_LAYOUT:
            answer = await self._transactions_built(request)
        else:
            answer = await self._transactions_rendered(request)
        if not answer.transactions:  # else the account has a history, so it exists
            await self._account(request.account_id)
        return answer

    async def _transactions_rendered(
        self, request: pb.ListTransactionsRequest
    ) -> pb.ListTransactionsResponse:
        """A page of the rows' renderings, each an encoded `Transaction`: the answer is
        parsed from them (in C) instead of built field by field."""
        page = await fetch_rendered_page(
            self._views,
            ACCOUNT_HISTORY,
            rendered_where={TRANSACTION: True},
            page_size=request.page_size,
            page_token=request.page_token,
            key_prefix=history_rows(request.account_id),
        )
        answer = pb.ListTransactionsResponse.FromString(
            repeated_field(TRANSACTIONS_FIELD, page.renderings)
        )
        answer.next_page_token = page.next_page_token
        return answer

    async def _transactions_built(
        self, request: pb.ListTransactionsRequest
    ) -> pb.ListTransactionsResponse:
        """A page built field by field from the rows' documents: views from before
        renderings, still active while the projector builds newer ones."""
        page = await fetch_page(
            self._views,
            ACCOUNT_HISTORY,
            where={TRANSACTION: True},
            order_by=KEY,
            page_size=request.page_size,
            page_token=request.page_token,
            key_prefix=history_rows(request.account_id),
        )
        answer = pb.ListTransactionsResponse(next_page_token=page.next_page_token)
        transaction_message.page(answer.transactions, page.documents)
        return answer

    async def GetProjectionStatus(
        self, request: pb.GetProjectionStatusRequest, context: Context
    ) -> pb.GetProjectionStatusResponse:
        await self._caught_up(request.min_position, context)
        checkpoints = await self._views.checkpoints()
        name = self._checkpoint_name()
        mine = next((c for c in checkpoints if c.name == name), None)
        statuses = projection_statuses(checkpoints, await self._views.statuses())
        return pb.GetProjectionStatusResponse(
            checkpoint_position=mine.position if mine else 0, projections=statuses
        )

    async def GetTransfer(
        self, request: pb.GetTransferRequest, context: Context
    ) -> pb.GetTransferResponse:
        require(check_account_id(request.transfer_id, "transfer_id"))
        await self._caught_up(request.min_position, context)
        doc = await self._views.get(TRANSFERS, request.transfer_id)
        if doc is None:
            raise NotFound(f"transfer {request.transfer_id!r} does not exist")
        return pb.GetTransferResponse(transfer=transfer_message(doc))

    async def ListTransfers(
        self, request: pb.ListTransfersRequest, context: Context
    ) -> pb.ListTransfersResponse:
        require([*check_account_id(request.account_id), *check_page_size(request.page_size)])
        await self._caught_up(request.min_position, context)
        await self._account(request.account_id)
        page = await fetch_page(
            self._views,
            ACCOUNT_TRANSFERS,
            where={"account_id": request.account_id},
            order_by=TRANSFER_ORDER,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        answer = pb.ListTransfersResponse(next_page_token=page.next_page_token)
        transfer_message.page(answer.transfers, page.documents)
        return answer

    async def WatchAccount(
        self, request: pb.WatchAccountRequest, context: Context
    ) -> AsyncIterator[pb.WatchAccountResponse]:
        require(check_account_id(request.account_id))
        self._require_history_layout()
        await self._caught_up(request.from_position, context)
        async with self._follower.watching() as watch:
            checkpoint = await self._follower.refresh()
            current = await self._account(request.account_id)
            state: Document | None
            if request.from_position == 0:
                state = current
                yield pb.WatchAccountResponse(
                    account=account_message(state), position=state["position"]
                )
            else:
                state = await self._state_at_position(current, request.from_position)
            async for change in self._account_changes(watch, current, state, checkpoint):
                yield change

    async def _state_at_position(self, current: Document, position: int) -> Document | None:
        """The account after its last event at or before `position` (None: not opened yet).

        Versions and positions grow together, so that row is found stepping down from the
        latest: the rows passed on the way are the ones the watcher is about to be sent."""
        account_id, before = current["account_id"], None
        while True:
            rows = await self._history(
                ACCOUNT_HISTORY, account_id, after=before, descending=True, limit=WATCH_BATCH
            )
            event = next((row for row in rows if row["position"] <= position), None)
            if event is not None:
                return await self._state_after(current, event)
            if len(rows) < WATCH_BATCH:
                return None
            before = rows[-1]["version"]

    async def _account_changes(
        self, watch: Watch, current: Document, state: Document | None, checkpoint: int
    ) -> AsyncIterator[pb.WatchAccountResponse]:
        """Every change after `state`, forever: each wake-up reads the history rows
        after the last version sent, up to the checkpoint (rows past it may belong to a
        batch the projector is still writing), in batches of WATCH_BATCH."""
        account_id = current["account_id"]
        version = None if state is None else int(state["version"])
        while True:
            rows = await self._history(
                ACCOUNT_HISTORY, account_id, after=version, limit=WATCH_BATCH
            )
            complete = _up_to(checkpoint, rows)
            if complete:
                statuses = await self._history(
                    STATUS_HISTORY,
                    account_id,
                    after=version,
                    at_most=complete[-1]["version"],
                    limit=WATCH_BATCH,
                )
                status_at = {d["version"]: d["status"] for d in statuses}
                for row in complete:
                    v = row["version"]
                    values: dict[str, Scalar] = {}
                    if "balance_minor" in row:
                        values["balance_minor"] = row["balance_minor"]
                    if v in status_at:
                        values["status"] = status_at[v]
                    state = _after_event(current if state is None else state, row, values)
                    yield pb.WatchAccountResponse(
                        account=account_message(state),
                        transaction=transaction_message(row) if row[TRANSACTION] else None,
                        position=row["position"],
                    )
                    version = v
            if len(complete) < WATCH_BATCH:
                checkpoint = await watch.next(checkpoint)

    async def WatchTransfer(
        self, request: pb.WatchTransferRequest, context: Context
    ) -> AsyncIterator[pb.WatchTransferResponse]:
        require(check_account_id(request.transfer_id, "transfer_id"))
        await self._caught_up(request.min_position, context)
        async with self._follower.watching() as watch:
            checkpoint = await self._follower.refresh()
            sent = 0
            while True:
                doc = await self._views.get(TRANSFERS, request.transfer_id)
                if doc is None:
                    raise NotFound(f"transfer {request.transfer_id!r} does not exist")
                if doc["position"] > sent:
                    sent = doc["position"]
                    yield pb.WatchTransferResponse(transfer=transfer_message(doc), position=sent)
                if doc["status"] in TRANSFER_DONE:
                    return
                checkpoint = await watch.next(checkpoint)

    async def close_watches(self) -> None:
        """End every watch stream: the server is shutting down."""
        await self._follower.close_watches()
