"""A projection rebuild while the system serves: `python -m projector rebuild` builds a
new generation of the views beside the live one and switches the query server over,
while clients keep writing and reading.

Every read made during the rebuild is checked: no call fails, a read with min_position
sees at least the acknowledged write, a read without it never goes back in time, and
transactions are never missing, duplicated or out of order.
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import dataclass, field

from ledger.banking.views import projection
from ledger.generations import MIN_DROP_GRACE
from ledger.v1 import account_query_service_pb2 as qry
from tests.e2e.conftest import StackFactory
from tests.support import CALL_TIMEOUT, LedgerClient, connect, new_id
from tests.support.processes import QUERY_SERVER, REPO_ROOT

ACCOUNTS = 8
SEED_DEPOSITS = 120
G0 = f"{projection.name}-v{projection.version}"
G1 = f"{G0}-g1"
GUARD = 120.0
"""Guards against hangs only."""


@dataclass
class Ledger:
    """What the writers had acknowledged, per account: (position, balance after)."""

    acked: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    observed: list[tuple[str, int]] = field(default_factory=list)
    """Balances reads returned; checked against `acked` once the writers are done (a
    read may see a deposit before its writer has noted the acknowledgement)."""

    def latest(self, account_id: str) -> tuple[int, int]:
        return self.acked[account_id][-1]


async def write(client: LedgerClient, ledger: Ledger, account_id: str, count: int) -> None:
    for _ in range(count):
        done = await client.deposit(account_id, random.randint(1, 500))
        ledger.acked[account_id].append((done.position, done.balance_minor))


async def check_reads(client: LedgerClient, ledger: Ledger, stop: asyncio.Event) -> int:
    """Read and check until `stop`; returns how many reads were checked."""
    last_seen = dict.fromkeys(ledger.acked, 0)
    reads = 0
    while not stop.is_set():
        account_id = random.choice(list(ledger.acked))
        position, balance = ledger.latest(account_id)

        fresh = await client.account(account_id, min_position=position)
        assert fresh.balance_minor >= balance, (account_id, fresh.balance_minor, balance)
        plain = await client.account(account_id)
        assert plain.balance_minor >= last_seen[account_id], "a read went back in time"
        last_seen[account_id] = plain.balance_minor
        ledger.observed += [(account_id, fresh.balance_minor), (account_id, plain.balance_minor)]

        history = await client.transactions(account_id, min_position=position)
        versions = [t.version for t in history]
        assert versions == sorted(set(versions)), "transactions duplicated or out of order"
        assert versions == list(range(1, len(versions) + 1)), "a transaction is missing"
        deposits = ledger.acked[account_id][1:]  # the first entry is the opening
        assert len(history) >= len([p for p, _ in deposits if p <= position])
        assert history[-1].balance_after_minor >= balance
        reads += 3
    return reads


async def watch_states(client: LedgerClient, stop: asyncio.Event) -> set[tuple[str, int]]:
    """Every (projection name, state) GetProjectionStatus showed until `stop`."""
    seen: set[tuple[str, int]] = set()
    while not stop.is_set():
        status = await client.queries.GetProjectionStatus(
            qry.GetProjectionStatusRequest(), timeout=CALL_TIMEOUT
        )
        seen.update((p.name, p.state) for p in status.projections)
        await asyncio.sleep(0.02)
    return seen


async def test_queries_keep_answering_correctly_through_a_rebuild(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(LEDGER_VIEW_DROP_GRACE_SECONDS=str(MIN_DROP_GRACE))
    ledger = Ledger()
    async with connect(stack.command_target, stack.query_target) as client:
        for _ in range(ACCOUNTS):
            opened = await client.open(new_id())
            ledger.acked[opened.account_id] = [(opened.position, 0)]
        await asyncio.gather(*(write(client, ledger, a, SEED_DEPOSITS) for a in list(ledger.acked)))

        stop = asyncio.Event()
        readers = [asyncio.create_task(check_reads(client, ledger, stop)) for _ in range(3)]
        states = asyncio.create_task(watch_states(client, stop))
        writers = [asyncio.create_task(write(client, ledger, a, 40)) for a in list(ledger.acked)]
        rebuild = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projector",
            "rebuild",
            cwd=REPO_ROOT,
            env=stack.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(GUARD):
            output, _ = await rebuild.communicate()
            await asyncio.gather(*writers)
            # Readers go on until the old views are gone (dropped after the grace period).
            while True:
                status = await client.queries.GetProjectionStatus(
                    qry.GetProjectionStatusRequest(), timeout=CALL_TIMEOUT
                )
                if [p.name for p in status.projections] == [G1]:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            reads = await asyncio.gather(*readers)
            seen = await states

        text = output.decode()
        assert rebuild.returncode == 0, text
        assert f"the projector is building {G1} beside {G0}" in text
        assert f"switched: readers now use {G1}" in text
        assert (G1, qry.PROJECTION_STATE_REBUILDING) in seen, seen
        assert all(r > 0 for r in reads)
        for account_id, balance in ledger.observed:  # each one a state that really was
            assert balance in {b for _, b in ledger.acked[account_id]}, (account_id, balance)

        # The query server started afresh reads the new generation straight away.
        stack[QUERY_SERVER].restart()
    async with connect(stack.command_target, stack.query_target) as client:
        for account_id in ledger.acked:
            position, balance = ledger.latest(account_id)
            account = await client.account(account_id, min_position=position)
            assert account.balance_minor == balance
            transactions = await client.transactions(account_id, min_position=position)
            assert len(transactions) == SEED_DEPOSITS + 40
        status = await client.queries.GetProjectionStatus(
            qry.GetProjectionStatusRequest(), timeout=CALL_TIMEOUT
        )
        assert [(p.name, p.state) for p in status.projections] == [(G1, qry.PROJECTION_STATE_LIVE)]
