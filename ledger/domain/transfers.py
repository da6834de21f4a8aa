"""The transfer-id claim: stream `transfer-<id>` holds the one request that owns the id.

Appended before the debit, with the request's deterministic event id: the same
request retried re-appends nothing, and another request with the same transfer id is
refused (ALREADY_EXISTS). The money itself moves on the account streams.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.application.decider import Decider
from ledger.errors import AlreadyExists


class TransferStatus(enum.Enum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class RequestTransfer:
    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class TransferRequested:
    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    description: str
    requested_at: datetime


State = TransferRequested | None

EVENT_TYPES: dict[str, type[TransferRequested]] = {"V1.TransferRequested": TransferRequested}


def decide(state: State, command: RequestTransfer) -> Sequence[TransferRequested]:
    if state is not None:
        raise AlreadyExists(f"transfer {command.transfer_id!r} already exists")
    return [
        TransferRequested(
            command.transfer_id,
            command.from_account_id,
            command.to_account_id,
            command.amount_minor,
            command.currency,
            command.description,
            command.at,
        )
    ]


def evolve(state: State, event: TransferRequested) -> State:
    return event


transfers: Decider[State, RequestTransfer, TransferRequested] = Decider(
    category="transfer", initial_state=None, decide=decide, evolve=evolve
)
