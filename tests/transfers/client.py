"""Transfer calls through the generated stubs, shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import uuid

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_query_service_pb2 as qry
from ledger.v1 import transfer_pb2
from tests.support import CALL_TIMEOUT, LedgerClient, new_id

# Bounds a wait for the background process manager; reaching it fails the test as a
# hang, never as a performance assertion.
WAIT_LIMIT = 60.0


def transfer_request(
    source: str,
    destination: str,
    amount: int,
    *,
    transfer_id: str = "",
    request_id: str | None = None,
    currency: str = "EUR",
) -> cmd.TransferFundsRequest:
    return cmd.TransferFundsRequest(
        request_id=request_id or f"req-{uuid.uuid4()}",
        transfer_id=transfer_id,
        from_account_id=source,
        to_account_id=destination,
        amount_minor=amount,
        currency=currency,
        description="rent",
    )


async def transfer(
    client: LedgerClient, source: str, destination: str, amount: int, **options: str
) -> cmd.TransferFundsResponse:
    request = transfer_request(source, destination, amount, **options)
    return await client.commands.TransferFunds(request, timeout=CALL_TIMEOUT)


async def get_transfer(
    client: LedgerClient, transfer_id: str, min_position: int = 0
) -> transfer_pb2.Transfer:
    response = await client.queries.GetTransfer(
        qry.GetTransferRequest(transfer_id=transfer_id, min_position=min_position),
        timeout=CALL_TIMEOUT,
    )
    return response.transfer


async def finished(client: LedgerClient, sent: cmd.TransferFundsResponse) -> transfer_pb2.Transfer:
    """The transfer once it is COMPLETED or FAILED (that happens in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    transfer_id = sent.transfer_id
    while True:
        found = await get_transfer(client, transfer_id, sent.position)
        if found.status != transfer_pb2.TRANSFER_STATUS_PENDING:
            return found
        assert loop.time() < deadline, f"transfer {transfer_id} still pending after {WAIT_LIMIT}s"
        await asyncio.sleep(0.01)


async def funded(client: LedgerClient, balance: int = 0, currency: str = "EUR") -> str:
    """A new account holding `balance`."""
    account_id = new_id()
    await client.open(account_id, currency=currency)
    if balance:
        await client.deposit(account_id, balance, currency=currency)
    return account_id
