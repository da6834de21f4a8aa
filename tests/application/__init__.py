"""Shared by the command-handler tests: one account, its stream and commands, a codec.

The fixtures (`path`, `store`, `second_store`: the real SQLite event store on a
temporary file, and a second store on the same file as another process would have)
are in conftest.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.application.command_handler import CommandHandler
from ledger.domain import accounts
from ledger.domain.accounts import DepositFunds, WithdrawFunds
from ledger.eventstore.codec import EventCodec

Handler = CommandHandler[accounts.State, accounts.Command, accounts.Event]
AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
ID = "acc-1"
STREAM = f"account-{ID}"
codec = EventCodec(accounts.EVENT_TYPES)


def deposit(amount: int) -> DepositFunds:
    return DepositFunds(ID, amount, "EUR", "salary", AT)


def withdraw(amount: int) -> WithdrawFunds:
    return WithdrawFunds(ID, amount, "EUR", "rent", AT)
