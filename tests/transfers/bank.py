"""A bank on real stores for the transfer tests: the SQLite event store in tmp_path, the
real CommandHandler and TransferService, and readers that answer from the log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ledger.application.command_handler import CommandHandler
from ledger.banking.transfer_saga import transfer_process_manager
from ledger.banking.transfers import TransferAccepted, TransferService
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.domain.accounts import (
    Account,
    CloseAccount,
    Command,
    DepositFunds,
    OpenAccount,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
)
from ledger.domain.transfers import RequestTransfer
from ledger.eventstore.port import EventStore, RecordedEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.process_manager import ProcessManager

AT = datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC)
AccountHandler = CommandHandler[accounts.State, accounts.Command, accounts.Event]
TransferEvent = (
    TransferDebited | TransferCredited | TransferCreditRejected | TransferSettled | TransferRefunded
)
# Bounds a wait for background work; reaching it fails the test as a hang, not as slowness.
WAIT_LIMIT = 60.0


def clock() -> datetime:
    return AT


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds (a hang guard, never a performance assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not await condition():
        assert loop.time() < deadline, f"still waiting after {WAIT_LIMIT}s for {what}"
        await asyncio.sleep(0.01)


@dataclass
class Bank:
    store: EventStore
    accounts: AccountHandler = field(init=False)
    service: TransferService = field(init=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.accounts = CommandHandler(self.store, accounts.accounts, codec)
        self.service = TransferService.on(self.accounts)

    async def run(self, account_id: str, command: Command) -> None:
        request_id = f"test-{next(self._ids)}"
        await self.accounts.handle(
            account_id, command, request_id=request_id, fingerprint=request_id
        )

    async def open(self, account_id: str, balance: int = 0, currency: str = "EUR") -> None:
        await self.run(account_id, OpenAccount(account_id, "Owner", currency, AT))
        if balance:
            await self.run(account_id, DepositFunds(account_id, balance, currency, "", AT))

    async def close(self, account_id: str) -> None:
        await self.run(account_id, CloseAccount(account_id, AT))

    async def transfer(
        self,
        from_account_id: str,
        to_account_id: str,
        amount: int,
        *,
        transfer_id: str | None = None,
        request_id: str | None = None,
        currency: str = "EUR",
        fingerprint: str | None = None,
    ) -> TransferAccepted:
        request_id = request_id or f"transfer-request-{uuid.uuid4()}"
        command = RequestTransfer(
            transfer_id or str(uuid.uuid4()),
            from_account_id,
            to_account_id,
            amount,
            currency,
            "test",
            AT,
        )
        return await self.service.transfer(
            command, request_id=request_id, fingerprint=fingerprint or request_id
        )

    async def account(self, account_id: str) -> Account:
        state, _version = await self.accounts.state_of(account_id)
        assert state is not None, account_id
        return state

    async def log(self) -> list[RecordedEvent]:
        assert isinstance(self.store, SqliteEventStore)
        return await self.store.read_all(0, 1_000_000)

    async def transfer_events(self) -> dict[str, list[TransferEvent]]:
        """Every transfer's events on the account streams, in log order."""
        found: dict[str, list[TransferEvent]] = {}
        for recorded in await self.log():
            if recorded.stream.startswith("account-"):
                event = codec.decode_recorded(recorded)
                if isinstance(event, TransferEvent):
                    found.setdefault(event.transfer_id, []).append(event)
        return found

    async def all_finished(self) -> bool:
        """Every debited transfer was settled or refunded."""
        return all(
            any(isinstance(e, TransferSettled | TransferRefunded) for e in events)
            for events in (await self.transfer_events()).values()
        )

    def process_manager(self, name: str = "transfers") -> ProcessManager:
        return transfer_process_manager(self.accounts, clock, name=name, checkpoint_interval=0.05)


@contextlib.asynccontextmanager
async def sqlite_bank(path: Path) -> AsyncIterator[Bank]:
    store = SqliteEventStore(path, poll_interval=0.001)
    await store.open()
    try:
        yield Bank(store)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def running(*managers: ProcessManager) -> AsyncIterator[None]:
    """Run process managers in the background; stop them (as SIGTERM would) on exit."""
    tasks = [asyncio.create_task(m.run()) for m in managers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
