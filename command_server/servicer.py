"""AccountCommandService: validates requests, runs them through the account decider.

Status codes are not chosen here: errors propagate to the one mapping table in
ledger.grpc.errors.
"""

from __future__ import annotations

import uuid

from ledger.application.clock import Clock, utc_now
from ledger.application.command_handler import CommandHandler
from ledger.banking.transfers import TransferService
from ledger.domain import accounts
from ledger.domain.transfers import RequestTransfer
from ledger.domain.values import (
    check_account_id,
    check_amount,
    check_currency,
    check_description,
    check_different_accounts,
    check_expected_version,
    check_owner_name,
)
from ledger.errors import require
from ledger.grpc.requests import check_request_id, fingerprint
from ledger.grpc.types import Context
from ledger.v1 import account_command_service_pb2 as pb
from ledger.v1 import account_command_service_pb2_grpc as pb_grpc
from ledger.v1 import transfer_pb2

AccountHandler = CommandHandler[accounts.State, accounts.Command, accounts.Event]
ACCOUNT_ID_NAMESPACE = uuid.UUID("0b5f4a1e-6c0d-4d5e-8f8a-1d2c3b4a5e6f")
TRANSFER_ID_NAMESPACE = uuid.UUID("7d0e3c52-9a4b-4f1e-b6c8-2e5a9d3f1c07")
MoveFundsRequest = pb.DepositFundsRequest | pb.WithdrawFundsRequest
AccountChangeRequest = pb.CloseAccountRequest | pb.FreezeAccountRequest | pb.UnfreezeAccountRequest


def assigned_id(namespace: uuid.UUID, request_id: str) -> str:
    """Derived from the request id, so a retry lands on the same id."""
    if request_id:
        return str(uuid.uuid5(namespace, request_id))
    return str(uuid.uuid4())


def assigned_account_id(request_id: str) -> str:
    return assigned_id(ACCOUNT_ID_NAMESPACE, request_id)


def _expected_version(request: MoveFundsRequest | pb.CloseAccountRequest) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


class AccountCommandServicer(pb_grpc.AccountCommandServiceServicer):
    def __init__(
        self,
        handler: AccountHandler,
        clock: Clock = utc_now,
        transfers: TransferService | None = None,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._transfers = transfers or TransferService.on(handler)

    async def OpenAccount(
        self, request: pb.OpenAccountRequest, context: Context
    ) -> pb.OpenAccountResponse:
        require(
            [
                *check_request_id(request.request_id),
                *(check_account_id(request.account_id) if request.account_id else []),
                *check_owner_name(request.owner_name),
                *check_currency(request.currency),
            ]
        )
        account_id = request.account_id or assigned_account_id(request.request_id)
        command = accounts.OpenAccount(
            account_id, request.owner_name, request.currency, self._clock()
        )
        outcome = await self._handler.handle(
            account_id, command, request_id=request.request_id, fingerprint=fingerprint(request)
        )
        return pb.OpenAccountResponse(
            account_id=account_id, version=outcome.version, position=outcome.position
        )

    async def _move_funds(
        self,
        request: MoveFundsRequest,
        command_type: type[accounts.DepositFunds] | type[accounts.WithdrawFunds],
    ) -> tuple[int, int, int]:
        require(
            [
                *check_request_id(request.request_id),
                *check_account_id(request.account_id),
                *check_amount(request.amount_minor),
                *check_currency(request.currency),
                *check_description(request.description),
                *check_expected_version(_expected_version(request)),
            ]
        )
        command = command_type(
            request.account_id,
            request.amount_minor,
            request.currency,
            request.description,
            self._clock(),
        )
        outcome = await self._handler.handle(
            request.account_id,
            command,
            request_id=request.request_id,
            fingerprint=fingerprint(request),
            expected_version=_expected_version(request),
        )
        moved = outcome.events[-1]
        assert isinstance(moved, accounts.FundsDeposited | accounts.FundsWithdrawn)
        return outcome.version, outcome.position, moved.balance_after_minor

    async def DepositFunds(
        self, request: pb.DepositFundsRequest, context: Context
    ) -> pb.DepositFundsResponse:
        version, position, balance = await self._move_funds(request, accounts.DepositFunds)
        return pb.DepositFundsResponse(
            account_id=request.account_id, version=version, position=position, balance_minor=balance
        )

    async def WithdrawFunds(
        self, request: pb.WithdrawFundsRequest, context: Context
    ) -> pb.WithdrawFundsResponse:
        version, position, balance = await self._move_funds(request, accounts.WithdrawFunds)
        return pb.WithdrawFundsResponse(
            account_id=request.account_id, version=version, position=position, balance_minor=balance
        )

    async def _change_account(
        self,
        request: AccountChangeRequest,
        command: accounts.Command,
        expected_version: int | None = None,
    ) -> tuple[int, int]:
        """Close, freeze or unfreeze; (version, position) after it, or now if nothing changed."""
        outcome = await self._handler.handle(
            request.account_id,
            command,
            request_id=request.request_id,
            fingerprint=fingerprint(request),
            expected_version=expected_version,
        )
        return outcome.version, outcome.position

    async def CloseAccount(
        self, request: pb.CloseAccountRequest, context: Context
    ) -> pb.CloseAccountResponse:
        require(
            [
                *check_request_id(request.request_id),
                *check_account_id(request.account_id),
                *check_expected_version(_expected_version(request)),
            ]
        )
        command = accounts.CloseAccount(request.account_id, self._clock())
        version, position = await self._change_account(request, command, _expected_version(request))
        return pb.CloseAccountResponse(
            account_id=request.account_id, version=version, position=position
        )

    async def FreezeAccount(
        self, request: pb.FreezeAccountRequest, context: Context
    ) -> pb.FreezeAccountResponse:
        require(
            [
                *check_request_id(request.request_id),
                *check_account_id(request.account_id),
                *check_description(request.reason, "reason"),
            ]
        )
        command = accounts.FreezeAccount(request.account_id, request.reason, self._clock())
        version, position = await self._change_account(request, command)
        return pb.FreezeAccountResponse(
            account_id=request.account_id, version=version, position=position
        )

    async def UnfreezeAccount(
        self, request: pb.UnfreezeAccountRequest, context: Context
    ) -> pb.UnfreezeAccountResponse:
        require([*check_request_id(request.request_id), *check_account_id(request.account_id)])
        command = accounts.UnfreezeAccount(request.account_id, self._clock())
        version, position = await self._change_account(request, command)
        return pb.UnfreezeAccountResponse(
            account_id=request.account_id, version=version, position=position
        )

    async def TransferFunds(
        self, request: pb.TransferFundsRequest, context: Context
    ) -> pb.TransferFundsResponse:
        require(
            [
                *check_request_id(request.request_id),
                *(
                    check_account_id(request.transfer_id, "transfer_id")
                    if request.transfer_id
                    else []
                ),
                *check_account_id(request.from_account_id, "from_account_id"),
                *check_account_id(request.to_account_id, "to_account_id"),
                *check_different_accounts(request.from_account_id, request.to_account_id),
                *check_amount(request.amount_minor),
                *check_currency(request.currency),
                *check_description(request.description),
            ]
        )
        command = RequestTransfer(
            request.transfer_id or assigned_id(TRANSFER_ID_NAMESPACE, request.request_id),
            request.from_account_id,
            request.to_account_id,
            request.amount_minor,
            request.currency,
            request.description,
            self._clock(),
        )
        accepted = await self._transfers.transfer(
            command, request_id=request.request_id, fingerprint=fingerprint(request)
        )
        return pb.TransferFundsResponse(
            transfer_id=accepted.transfer_id,
            position=accepted.position,
            status=transfer_pb2.TRANSFER_STATUS_PENDING,
        )
