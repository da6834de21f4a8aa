"""What the gRPC and end-to-end tests share: a client for both services through the
generated stubs, and a reader for rich error details (google.rpc.Status, read with
grpcio-status exactly as a client application would)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_command_service_pb2_grpc as cmd_grpc
from ledger.v1 import account_pb2
from ledger.v1 import account_query_service_pb2 as qry
from ledger.v1 import account_query_service_pb2_grpc as qry_grpc

if TYPE_CHECKING:
    from ledger.v1.account_command_service_pb2_grpc import AccountCommandServiceAsyncStub
    from ledger.v1.account_query_service_pb2_grpc import AccountQueryServiceAsyncStub

# Guards against a hung call, never a performance assertion.
CALL_TIMEOUT = 30.0
ERROR_DOMAIN = "ledger"


@dataclass(frozen=True)
class RpcFailure:
    """A failed call as a client sees it, rich details decoded."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    violations: dict[str, str]


def failure_of(error: grpc.aio.AioRpcError) -> RpcFailure:
    """Decode google.rpc.Status details (ErrorInfo, BadRequest) from a failed call."""
    status = rpc_status.from_call(error)  # also checks code and message agree with the status
    reason = domain = ""
    violations: dict[str, str] = {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain = info.reason, info.domain
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.update({v.field: v.description for v in bad.field_violations})
    return RpcFailure(error.code(), error.details() or "", reason, domain, violations)


async def expect_failure(
    call: Awaitable[object], code: grpc.StatusCode, reason: str | None = None
) -> RpcFailure:
    """Await a call that must fail with `code` (and ErrorInfo.reason `reason`, if given)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    failure = failure_of(caught.value)
    assert failure.code == code, failure
    if reason is not None:
        assert (failure.reason, failure.domain) == (reason, ERROR_DOMAIN), failure
    return failure


def new_id(prefix: str = "acc") -> str:
    """A unique, valid account id, so tests sharing a stack never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


MoveResponse = cmd.DepositFundsResponse | cmd.WithdrawFundsResponse


class LedgerClient:
    """Both services through the generated asyncio stubs, with test-friendly defaults."""

    def __init__(self, commands: grpc.aio.Channel, queries: grpc.aio.Channel) -> None:
        self.commands: AccountCommandServiceAsyncStub = cmd_grpc.AccountCommandServiceStub(commands)
        self.queries: AccountQueryServiceAsyncStub = qry_grpc.AccountQueryServiceStub(queries)

    async def open(
        self,
        account_id: str | None = None,
        *,
        owner_name: str = "Ada Lovelace",
        currency: str = "EUR",
        request_id: str | None = None,
    ) -> cmd.OpenAccountResponse:
        return await self.commands.OpenAccount(
            cmd.OpenAccountRequest(
                request_id=new_request_id() if request_id is None else request_id,
                account_id=new_id() if account_id is None else account_id,
                owner_name=owner_name,
                currency=currency,
            ),
            timeout=CALL_TIMEOUT,
        )

    async def open_shown(self) -> tuple[str, cmd.OpenAccountResponse]:
        """A new account's id and opening, once the views show it (so that a query or a
        watch finds it)."""
        opened = await self.open()
        await self.account(opened.account_id, min_position=opened.position)
        return opened.account_id, opened

    async def deposit(
        self,
        account_id: str,
        amount_minor: int,
        *,
        currency: str = "EUR",
        description: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
    ) -> cmd.DepositFundsResponse:
        request = cmd.DepositFundsRequest()
        self._fill_move(request, account_id, amount_minor, currency, description, request_id)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.commands.DepositFunds(request, timeout=CALL_TIMEOUT)

    async def withdraw(
        self,
        account_id: str,
        amount_minor: int,
        *,
        currency: str = "EUR",
        description: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
    ) -> cmd.WithdrawFundsResponse:
        request = cmd.WithdrawFundsRequest()
        self._fill_move(request, account_id, amount_minor, currency, description, request_id)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.commands.WithdrawFunds(request, timeout=CALL_TIMEOUT)

    @staticmethod
    def _fill_move(
        request: cmd.DepositFundsRequest | cmd.WithdrawFundsRequest,
        account_id: str,
        amount_minor: int,
        currency: str,
        description: str,
        request_id: str | None,
    ) -> None:
        request.request_id = new_request_id() if request_id is None else request_id
        request.account_id = account_id
        request.amount_minor = amount_minor
        request.currency = currency
        request.description = description

    async def close(
        self,
        account_id: str,
        *,
        request_id: str | None = None,
        expected_version: int | None = None,
    ) -> cmd.CloseAccountResponse:
        request = cmd.CloseAccountRequest(
            request_id=new_request_id() if request_id is None else request_id,
            account_id=account_id,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.commands.CloseAccount(request, timeout=CALL_TIMEOUT)

    async def account(
        self, account_id: str, *, min_position: int = 0, deadline: float = CALL_TIMEOUT
    ) -> account_pb2.Account:
        response = await self.queries.GetAccount(
            qry.GetAccountRequest(account_id=account_id, min_position=min_position),
            timeout=deadline,
        )
        return response.account

    async def transactions(
        self, account_id: str, *, min_position: int = 0, page_size: int = 0
    ) -> list[account_pb2.Transaction]:
        """Every transaction of the account, following next_page_token to the end."""
        found: list[account_pb2.Transaction] = []
        token = ""
        while True:
            page = await self.queries.ListTransactions(
                qry.ListTransactionsRequest(
                    account_id=account_id,
                    page_size=page_size,
                    page_token=token,
                    min_position=min_position,
                ),
                timeout=CALL_TIMEOUT,
            )
            found.extend(page.transactions)
            token = page.next_page_token
            if not token:
                return found

    async def accounts(
        self,
        *,
        owner_name: str = "",
        status: account_pb2.AccountStatus.ValueType = account_pb2.ACCOUNT_STATUS_UNSPECIFIED,
        min_position: int = 0,
        page_size: int = 0,
    ) -> list[account_pb2.Account]:
        """Every matching account, following next_page_token to the end."""
        found: list[account_pb2.Account] = []
        token = ""
        while True:
            page = await self.queries.ListAccounts(
                qry.ListAccountsRequest(
                    owner_name=owner_name,
                    status=status,
                    page_size=page_size,
                    page_token=token,
                    min_position=min_position,
                ),
                timeout=CALL_TIMEOUT,
            )
            found.extend(page.accounts)
            token = page.next_page_token
            if not token:
                return found

    async def checkpoint(self) -> int:
        status = await self.queries.GetProjectionStatus(
            qry.GetProjectionStatusRequest(), timeout=CALL_TIMEOUT
        )
        return status.checkpoint_position


# Connections of their own: gRPC shares subchannels between channels by default, so a
# new client would inherit the reconnect backoff of an old one to a restarted server.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@asynccontextmanager
async def connect(command_target: str, query_target: str) -> AsyncIterator[LedgerClient]:
    async with (
        grpc.aio.insecure_channel(command_target, options=CHANNEL_OPTIONS) as commands,
        grpc.aio.insecure_channel(query_target, options=CHANNEL_OPTIONS) as queries,
    ):
        yield LedgerClient(commands, queries)
