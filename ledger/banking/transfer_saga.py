"""The transfer process manager: after a debit, credit the destination; then settle
the source, or refund it if the destination refused the credit.

It reacts to facts in the log only (TransferDebited, TransferCredited,
TransferCreditRejected), one idempotent command each, with request ids derived from
the transfer id. The destination's stream records the credit's outcome once: racing
process managers decide on the same stream version with the same event id, so the
log keeps one of them and the others get its result back. A replay, from one process
or several, therefore never pays twice, and a crash never loses a step.

Run it in the command server (`LEDGER_TRANSFER_PROCESSOR=on`, the default) or in any
process that has an event store: `transfer_process_manager(handler).run()`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ledger.application.clock import Clock, utc_now
from ledger.application.command_handler import CommandHandler
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.domain.accounts import (
    CreditTransfer,
    RefundTransfer,
    SettleTransfer,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
)
from ledger.eventstore.port import RecordedEvent
from ledger.process_manager import ProcessManager, Step

AccountHandler = CommandHandler[accounts.State, accounts.Command, accounts.Event]
TransferCommand = CreditTransfer | SettleTransfer | RefundTransfer
NAME = "transfers"
ACCOUNT_CATEGORY = accounts.accounts.category
TRIGGERS = frozenset(
    codec.type_name_of_class(t) for t in (TransferDebited, TransferCredited, TransferCreditRejected)
)


def step_request_id(transfer_id: str, step: str) -> str:
    """A request id no client can send: request ids from the API must be printable, and
    this one holds a control character, so a client cannot pre-empt a step's outcome."""
    return f"transfer\x1f{transfer_id}\x1f{step}"


class TransferSaga:
    def __init__(self, accounts: AccountHandler, clock: Clock = utc_now) -> None:
        self._accounts = accounts
        self._clock = clock

    def react(self, recorded: RecordedEvent) -> Step | None:
        if recorded.type not in TRIGGERS:
            return None
        match codec.decode_recorded(recorded):
            case TransferDebited() as debited:
                return self._step(
                    recorded,
                    debited.transfer_id,
                    "credit",
                    debited.to_account_id,
                    lambda at: CreditTransfer(
                        debited.to_account_id,
                        debited.transfer_id,
                        debited.account_id,
                        debited.amount_minor,
                        debited.currency,
                        debited.description,
                        at,
                    ),
                )
            case TransferCredited() as credited:
                return self._step(
                    recorded,
                    credited.transfer_id,
                    "settle",
                    credited.from_account_id,
                    lambda at: SettleTransfer(credited.from_account_id, credited.transfer_id, at),
                )
            case TransferCreditRejected() as rejected:
                return self._step(
                    recorded,
                    rejected.transfer_id,
                    "refund",
                    rejected.from_account_id,
                    lambda at: RefundTransfer(
                        rejected.from_account_id,
                        rejected.transfer_id,
                        rejected.account_id,
                        rejected.amount_minor,
                        rejected.currency,
                        rejected.reason,
                        at,
                    ),
                )
        return None

    def _step(
        self,
        cause: RecordedEvent,
        transfer_id: str,
        action: str,
        account_id: str,
        command_at: Callable[[datetime], TransferCommand],
    ) -> Step:
        """`action` on `account_id`; the command is made when the step runs, with its time."""
        request_id = step_request_id(transfer_id, action)

        async def run() -> object:
            return await self._accounts.handle(
                account_id,
                command_at(self._clock()),
                request_id=request_id,
                fingerprint=request_id,
                correlation_id=f"transfer:{transfer_id}",
                causation_id=str(cause.event_id),
            )

        return Step(f"{action} transfer {transfer_id} on account {account_id}", run)


def transfer_process_manager(
    accounts: AccountHandler,
    clock: Clock = utc_now,
    *,
    name: str = NAME,
    checkpoint_interval: float = 1.0,
) -> ProcessManager:
    """The transfer process manager, on the account handler's event store.

    Instances with the same `name` share one checkpoint; another name starts from the
    beginning of the log (a full, harmless replay)."""
    return ProcessManager(
        accounts.store,
        name=name,
        stream_prefixes=(f"{ACCOUNT_CATEGORY}-",),
        event_types=sorted(TRIGGERS),  # not deposits and the like: never read, never decoded
        react=TransferSaga(accounts, clock).react,
        checkpoint_interval=checkpoint_interval,
    )
