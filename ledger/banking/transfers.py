"""TransferFunds: everything about a transfer that is decided while the client waits.

The debit is the only synchronous step; the credit and what follows it are the
process manager's (ledger.banking.transfer_saga). In order:

1. A retry (this request id already on the source stream) gets the original answer,
   whatever happened since.
2. The destination must exist and accept the credit now (open, same currency, room
   under the balance limit), and a dry run of the debit on the source must pass: a
   refusal appends nothing, anywhere.
3. The transfer id is claimed (stream `transfer-<id>`, ALREADY_EXISTS if another
   request owns it), then the source is debited for real.

A race between the dry run and the real debit (the source spent or frozen meanwhile)
refuses the debit after the claim: that claim is an orphan, shown by no view, and
its transfer id stays taken. The destination can likewise change before the credit;
then the process manager records the refusal there and refunds the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.application.command_handler import CommandHandler, Outcome
from ledger.banking.views import codec
from ledger.domain import accounts, transfers
from ledger.domain.transfers import RequestTransfer

AccountHandler = CommandHandler[accounts.State, accounts.Command, accounts.Event]
ClaimHandler = CommandHandler[transfers.State, RequestTransfer, transfers.TransferRequested]


@dataclass(frozen=True, slots=True)
class TransferAccepted:
    transfer_id: str
    position: int
    """Event-log position of the debit."""


class TransferService:
    def __init__(self, accounts: AccountHandler, claims: ClaimHandler) -> None:
        self._accounts = accounts
        self._claims = claims

    @classmethod
    def on(cls, accounts: AccountHandler) -> TransferService:
        """Claims go to the account handler's event store."""
        return cls(accounts, CommandHandler(accounts.store, transfers.transfers, codec))

    async def transfer(
        self, command: RequestTransfer, *, request_id: str, fingerprint: str
    ) -> TransferAccepted:
        source = command.from_account_id
        debit = accounts.DebitTransfer(
            source,
            command.transfer_id,
            command.to_account_id,
            command.amount_minor,
            command.currency,
            command.description,
            command.at,
        )
        outcome = await self._accounts.replayed(
            source, request_id=request_id, fingerprint=fingerprint
        )
        if outcome is None:
            await self._check_destination(command)
            await self._accounts.check(source, debit)
            await self._claims.handle(
                command.transfer_id, command, request_id=request_id, fingerprint=fingerprint
            )
            outcome = await self._accounts.handle(
                source, debit, request_id=request_id, fingerprint=fingerprint
            )
        return _accepted(outcome)

    async def _check_destination(self, command: RequestTransfer) -> None:
        state, _version = await self._accounts.state_of(command.to_account_id)
        destination = accounts.must_exist(state, command.to_account_id)
        accounts.must_accept(destination, command.currency, command.amount_minor)


def _accepted(outcome: Outcome[accounts.Event]) -> TransferAccepted:
    debited = outcome.events[-1]
    assert isinstance(debited, accounts.TransferDebited)
    return TransferAccepted(debited.transfer_id, outcome.position)
