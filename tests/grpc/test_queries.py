"""AccountQueryService through the real stubs: the views, pagination, and
read-your-writes with min_position against a real ProjectionRunner."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import pytest

from ledger.banking.views import projection
from ledger.v1 import account_pb2
from ledger.v1 import account_query_service_pb2 as qry
from query_server.servicer import RENDERED_LAYOUT
from tests.grpc.conftest import InProcessLedger, LedgerFactory
from tests.support import LedgerClient, MoveResponse, connect, expect_failure, new_id
from tests.support.views import WrappedViews

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OPEN, CLOSED = account_pb2.ACCOUNT_STATUS_OPEN, account_pb2.ACCOUNT_STATUS_CLOSED
FAR_AHEAD = 10**12


async def test_get_account_shows_the_view(client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id, owner_name="Ada", currency="GBP")
    deposited = await client.deposit(account_id, 1_234, currency="GBP")
    account = await client.account(account_id, min_position=deposited.position)

    assert (account.account_id, account.owner_name, account.currency) == (account_id, "Ada", "GBP")
    assert (account.balance_minor, account.status) == (1_234, OPEN)
    assert (account.version, account.position) == (1, deposited.position)
    assert opened.position < deposited.position
    assert account.opened_at.ToDatetime() <= account.updated_at.ToDatetime()


async def test_unknown_or_malformed_account_ids(client: LedgerClient) -> None:
    opened = await client.open()
    missing = new_id()
    # min_position: the views are known to be current, so NOT_FOUND is not just lag.
    await expect_failure(
        client.account(missing, min_position=opened.position), grpc.StatusCode.NOT_FOUND
    )
    await expect_failure(
        client.transactions(missing, min_position=opened.position), grpc.StatusCode.NOT_FOUND
    )
    for bad in ("", "x" * 65, "a b"):
        failure = await expect_failure(client.account(bad), INVALID)
        assert set(failure.violations) == {"account_id"}
        failure = await expect_failure(client.transactions(bad), INVALID)
        assert set(failure.violations) == {"account_id"}


async def test_read_your_writes_without_sleeping(client: LedgerClient) -> None:
    account_id = new_id()
    await client.open(account_id)
    for amount in range(1, 26):
        deposited = await client.deposit(account_id, amount)
        account = await client.account(account_id, min_position=deposited.position)
        assert (account.balance_minor, account.version) == (
            deposited.balance_minor,
            deposited.version,
        )
    transactions = await client.transactions(account_id, min_position=deposited.position)
    assert [t.amount_minor for t in transactions] == list(range(1, 26))


async def test_a_query_waits_for_the_projector_to_reach_min_position(
    ledger: InProcessLedger, client: LedgerClient
) -> None:
    account_id, _ = await client.open_shown()
    await ledger.stop_projector()
    deposited = await client.deposit(account_id, 99)

    # Without min_position the (stale) view is served at once.
    assert (await client.account(account_id)).balance_minor == 0
    waiting = asyncio.create_task(client.account(account_id, min_position=deposited.position))
    done, _ = await asyncio.wait([waiting], timeout=0.3)
    assert not done, "answered although the projector is stopped"

    await ledger.start_projector()
    account = await waiting
    assert (account.balance_minor, account.position) == (99, deposited.position)


async def test_min_position_out_of_reach_is_projection_behind_within_the_deadline(
    client: LedgerClient,
) -> None:
    opened = await client.open()
    failure = await expect_failure(
        client.account(opened.account_id, min_position=FAR_AHEAD, deadline=1.0),
        grpc.StatusCode.UNAVAILABLE,
        "PROJECTION_BEHIND",
    )
    assert str(FAR_AHEAD) in failure.message
    for call in (
        client.queries.ListAccounts(qry.ListAccountsRequest(min_position=FAR_AHEAD), timeout=1.0),
        client.queries.ListTransactions(
            qry.ListTransactionsRequest(account_id=opened.account_id, min_position=FAR_AHEAD),
            timeout=1.0,
        ),
        client.queries.GetProjectionStatus(
            qry.GetProjectionStatusRequest(min_position=FAR_AHEAD), timeout=1.0
        ),
    ):
        await expect_failure(call, grpc.StatusCode.UNAVAILABLE, "PROJECTION_BEHIND")


async def test_without_a_deadline_the_server_maximum_bounds_the_wait(
    make_ledger: LedgerFactory,
) -> None:
    ledger = await make_ledger(max_wait=0.2)
    async with connect(ledger.command_target, ledger.query_target) as client:
        opened = await client.open()
        await expect_failure(
            client.queries.GetAccount(  # no timeout: only the server's maximum applies
                qry.GetAccountRequest(account_id=opened.account_id, min_position=FAR_AHEAD)
            ),
            grpc.StatusCode.UNAVAILABLE,
            "PROJECTION_BEHIND",
        )


async def test_projection_status_reports_the_checkpoint(client: LedgerClient) -> None:
    opened = await client.open()
    status = await client.queries.GetProjectionStatus(
        qry.GetProjectionStatusRequest(min_position=opened.position)
    )
    assert status.checkpoint_position >= opened.position
    assert [p.name for p in status.projections] == [projection.checkpoint_name]
    assert status.projections[0].checkpoint_position == status.checkpoint_position
    assert status.projections[0].HasField("updated_at")


async def test_list_accounts_pages_in_account_id_order_with_filters(client: LedgerClient) -> None:
    owner, other = f"Owner {new_id()}", f"Other {new_id()}"
    ids = [f"{new_id('pg')}-{i}" for i in range(7)]
    for account_id in ids:
        await client.open(account_id, owner_name=owner)
    await client.open(owner_name=other)
    for account_id in ids[:2]:
        last = await client.close(account_id)

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await client.queries.ListAccounts(
            qry.ListAccountsRequest(
                owner_name=owner, page_size=3, page_token=token, min_position=last.position
            )
        )
        pages.append([a.account_id for a in page.accounts])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [a for p in pages for a in p] == sorted(ids)

    opened = await client.accounts(owner_name=owner, status=OPEN, page_size=2)
    closed = await client.accounts(owner_name=owner, status=CLOSED, page_size=2)
    assert [a.account_id for a in opened] == sorted(ids[2:])
    assert [a.account_id for a in closed] == sorted(ids[:2])
    assert {a.status for a in closed} == {CLOSED}
    everyone = await client.accounts(page_size=1000)
    assert {a.owner_name for a in everyone} == {owner, other}
    assert [a.account_id for a in everyone] == sorted(a.account_id for a in everyone)
    assert await client.accounts(owner_name="nobody at all") == []


async def test_a_page_token_stays_valid_while_accounts_are_added(client: LedgerClient) -> None:
    owner = f"Owner {new_id()}"
    prefix = new_id("keyset")
    for suffix in ("1", "2", "3", "4"):
        opened = await client.open(f"{prefix}-{suffix}", owner_name=owner)
    first = await client.queries.ListAccounts(
        qry.ListAccountsRequest(owner_name=owner, page_size=2, min_position=opened.position)
    )
    before = await client.open(f"{prefix}-0", owner_name=owner)
    await client.open(f"{prefix}-9", owner_name=owner)
    rest = await client.queries.ListAccounts(
        qry.ListAccountsRequest(
            owner_name=owner,
            page_size=10,
            page_token=first.next_page_token,
            min_position=before.position + 1,
        )
    )
    assert [a.account_id[-1] for a in first.accounts] == ["1", "2"]
    assert [a.account_id[-1] for a in rest.accounts] == ["3", "4", "9"]
    assert rest.next_page_token == ""


async def test_list_transactions_pages_oldest_first(client: LedgerClient) -> None:
    account_id = new_id()
    await client.open(account_id)
    responses: list[MoveResponse] = []
    for n in range(1, 9):
        if n % 3 == 0:
            responses.append(await client.withdraw(account_id, n, description=f"w{n}"))
        else:
            responses.append(await client.deposit(account_id, 10 * n, description=f"d{n}"))
    last = responses[-1].position

    sizes: list[int] = []
    transactions: list[account_pb2.Transaction] = []
    token = ""
    while True:
        page = await client.queries.ListTransactions(
            qry.ListTransactionsRequest(
                account_id=account_id, page_size=3, page_token=token, min_position=last
            )
        )
        sizes.append(len(page.transactions))
        transactions.extend(page.transactions)
        token = page.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 2]
    assert [(t.version, t.position, t.balance_after_minor) for t in transactions] == [
        (r.version, r.position, r.balance_minor) for r in responses
    ]
    assert [t.description for t in transactions] == [
        f"w{n}" if n % 3 == 0 else f"d{n}" for n in range(1, 9)
    ]
    assert [t.kind for t in transactions] == [
        account_pb2.TRANSACTION_KIND_WITHDRAWAL
        if n % 3 == 0
        else account_pb2.TRANSACTION_KIND_DEPOSIT
        for n in range(1, 9)
    ]
    assert {t.account_id for t in transactions} == {account_id}
    assert len({t.transaction_id for t in transactions}) == 8
    assert all(t.HasField("occurred_at") for t in transactions)


def _forged(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    ["garbage!", "bm90IGpzb24", _forged([1, 2]), _forged({"a": 1}), _forged({"a": [1], "s": "x"})],
)
async def test_a_bad_page_token_is_invalid_argument(client: LedgerClient, token: str) -> None:
    opened = await client.open()
    for call in (
        client.queries.ListAccounts(qry.ListAccountsRequest(page_token=token)),
        client.queries.ListTransactions(
            qry.ListTransactionsRequest(
                account_id=opened.account_id, page_token=token, min_position=opened.position
            )
        ),
    ):
        failure = await expect_failure(call, INVALID)
        assert set(failure.violations) == {"page_token"}


async def test_a_page_token_is_refused_by_a_different_query(client: LedgerClient) -> None:
    owner = f"Owner {new_id()}"
    account_id, other_account_id = new_id(), new_id()
    await client.open(account_id, owner_name=owner)
    await client.open(other_account_id, owner_name=owner)
    for _ in range(3):
        await client.open(owner_name=owner)
        last = await client.deposit(account_id, 5)
        await client.deposit(other_account_id, 5)
    accounts_token = (
        await client.queries.ListAccounts(
            qry.ListAccountsRequest(owner_name=owner, page_size=1, min_position=last.position)
        )
    ).next_page_token
    transactions_token = (
        await client.queries.ListTransactions(
            qry.ListTransactionsRequest(
                account_id=account_id, page_size=1, min_position=last.position
            )
        )
    ).next_page_token
    assert accounts_token
    assert transactions_token
    for call in (
        client.queries.ListAccounts(
            qry.ListAccountsRequest(owner_name="someone else", page_token=accounts_token)
        ),
        client.queries.ListAccounts(
            qry.ListAccountsRequest(owner_name=owner, status=OPEN, page_token=accounts_token)
        ),
        client.queries.ListAccounts(qry.ListAccountsRequest(page_token=transactions_token)),
        client.queries.ListTransactions(
            qry.ListTransactionsRequest(account_id=other_account_id, page_token=transactions_token)
        ),
    ):
        failure = await expect_failure(call, INVALID)
        assert set(failure.violations) == {"page_token"}


@pytest.mark.parametrize("page_size", [-1, 1001, 2**31 - 1])
async def test_page_size_out_of_range_is_invalid_argument(
    client: LedgerClient, page_size: int
) -> None:
    opened = await client.open()
    for call in (
        client.queries.ListAccounts(qry.ListAccountsRequest(page_size=page_size)),
        client.queries.ListTransactions(
            qry.ListTransactionsRequest(
                account_id=opened.account_id, page_size=page_size, min_position=opened.position
            )
        ),
    ):
        failure = await expect_failure(call, INVALID)
        assert set(failure.violations) == {"page_size"}


async def test_an_unknown_status_filter_is_invalid_argument(client: LedgerClient) -> None:
    failure = await expect_failure(
        client.queries.ListAccounts(qry.ListAccountsRequest(status=99)),  # type: ignore[arg-type]
        INVALID,
    )
    assert set(failure.violations) == {"status"}


async def test_the_largest_page_size_and_the_default(client: LedgerClient) -> None:
    owner = f"Owner {new_id()}"
    for _ in range(3):
        last = await client.open(owner_name=owner)
    for page_size in (0, 1000):
        page = await client.queries.ListAccounts(
            qry.ListAccountsRequest(
                owner_name=owner, page_size=page_size, min_position=last.position
            )
        )
        assert (len(page.accounts), page.next_page_token) == (3, "")


class WithoutRenderings(WrappedViews):
    """Views as a projection before renderings left them: no document has one."""

    async def find_rendered(
        self, collection: str, *, key_prefix: str, after: str | None = None, limit: int
    ) -> list[tuple[str, bytes]]:
        return []


async def all_transactions(
    ledger: InProcessLedger, client: LedgerClient, account_id: str, versions: list[int]
) -> list[account_pb2.Transaction]:
    """Every transaction, two a page, each page read with the views at the next of
    `versions` (as when readers move to a rebuilt generation between pages)."""
    listed: list[account_pb2.Transaction] = []
    token = ""
    for version in versions:
        ledger.views_version = version
        page = await client.queries.ListTransactions(
            qry.ListTransactionsRequest(account_id=account_id, page_size=2, page_token=token)
        )
        listed.extend(page.transactions)
        token = page.next_page_token
        if not token:
            return listed
    raise AssertionError(f"more pages than {versions}")


async def test_transactions_are_built_from_documents_in_views_without_renderings(
    make_ledger: LedgerFactory,
) -> None:
    """Served from renderings or built from documents (views of an older version, still
    active while the projector builds newer ones), the transactions are the same, and a
    page token from either way pages on in the other."""
    ledger = await make_ledger()
    older = await make_ledger(views_version=RENDERED_LAYOUT - 1, wrap_views=WithoutRenderings)
    async with (
        connect(ledger.command_target, ledger.query_target) as client,
        connect(older.command_target, older.query_target) as older_client,
    ):
        account_id = new_id()
        last = 0
        for each in (client, older_client):
            await each.open(account_id)
            for n in range(1, 6):
                move = each.withdraw if n == 3 else each.deposit
                last = (await move(account_id, 10 * n, description=f"m{n}")).position
            await each.transactions(account_id, min_position=last)  # projected
        new, old = RENDERED_LAYOUT, RENDERED_LAYOUT - 1
        rendered = await all_transactions(ledger, client, account_id, [new] * 3)
        assert [t.description for t in rendered] == [f"m{n}" for n in range(1, 6)]
        for versions in ([old] * 3, [old, new, old], [new, old, new]):
            listed = await all_transactions(ledger, client, account_id, versions)
            assert listed == rendered
        built = await all_transactions(older, older_client, account_id, [old] * 3)
        assert [(t.description, t.amount_minor, t.kind) for t in built] == [
            (t.description, t.amount_minor, t.kind) for t in rendered
        ]


async def test_reads_that_need_newer_views_are_unavailable_until_they_are_rebuilt(
    make_ledger: LedgerFactory,
) -> None:
    """A query server newer than the views (the projector still building them) refuses
    the reads whose layout changed, retryably, instead of answering them wrongly."""
    ledger = await make_ledger(views_version=2)
    async with connect(ledger.command_target, ledger.query_target) as client:
        account_id, _ = await client.open_shown()
        deposited = await client.deposit(account_id, 250)
        for call in (
            client.queries.ListTransactions(qry.ListTransactionsRequest(account_id=account_id)),
            client.queries.GetAccountAsOf(
                qry.GetAccountAsOfRequest(account_id=account_id, as_of_version=0)
            ),
            client.queries.WatchAccount(qry.WatchAccountRequest(account_id=account_id)).read(),
        ):
            failure = await expect_failure(call, grpc.StatusCode.UNAVAILABLE)
            assert "version 3" in failure.message
        shown = await client.queries.GetAccount(
            qry.GetAccountRequest(account_id=account_id, min_position=deposited.position)
        )
        assert shown.account.balance_minor == 250  # reads whose layout did not change work
        ledger.views_version = projection.version
        listed = await client.queries.ListTransactions(
            qry.ListTransactionsRequest(account_id=account_id)
        )
        assert [t.amount_minor for t in listed.transactions] == [250]
