"""Processes starting, stopping and crashing: SIGTERM drains and exits 0, the projector
resumes from its checkpoint, a kill -9 mid-stream converges to a full rebuild, retries
stay idempotent across a command server restart, bad settings fail at start."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2
from tests.e2e.conftest import StackFactory
from tests.support import (
    LedgerClient,
    MoveResponse,
    connect,
    expect_failure,
    new_id,
    new_request_id,
)
from tests.support.processes import (
    COMMAND_SERVER,
    PROJECTOR,
    QUERY_SERVER,
    SQLITE,
    START_TIMEOUT,
    Backend,
    Stack,
    log_records,
    run_to_exit,
)

pytestmark = pytest.mark.e2e


def started_at(stack: Stack) -> list[int]:
    """The checkpoint each run of the projector reported it resumed from."""
    process = stack[PROJECTOR]
    positions = []
    for run in range(1, process.runs + 1):
        records = log_records(process.log_dir / f"{process.name}.{run}.stdout.log")
        positions += [r["position"] for r in records if r.get("msg") == "projection starting"]
    return positions


async def test_sigterm_drains_in_flight_calls_and_the_projector_resumes_from_its_checkpoint(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(LEDGER_MAX_WAIT_SECONDS="60")
    async with connect(stack.command_target, stack.query_target) as client:
        account_id = new_id()
        await client.open(account_id)
        first = await client.deposit(account_id, 100)
        await client.account(account_id, min_position=first.position)

        await asyncio.to_thread(stack[PROJECTOR].stop)  # exit code 0, asserted
        assert await client.checkpoint() >= first.position  # saved with the views
        second = await client.deposit(account_id, 50)
        await expect_failure(
            client.account(account_id, min_position=second.position, deadline=1.0),
            grpc.StatusCode.UNAVAILABLE,
            "PROJECTION_BEHIND",
        )

        # A query waiting for the projector is in flight when the query server gets SIGTERM.
        waiting = asyncio.create_task(client.account(account_id, min_position=second.position))
        done, _ = await asyncio.wait([waiting], timeout=0.5)
        assert not done, "answered although the projector is stopped"
        stack[QUERY_SERVER].terminate()
        await asyncio.to_thread(stack[PROJECTOR].start)
        account = await waiting  # the in-flight call finished during the drain
        assert (account.balance_minor, account.position) == (150, second.position)
        assert await asyncio.to_thread(stack[QUERY_SERVER].wait_exit) == 0

        # New calls are refused once it stopped; it comes back with the same views.
        await expect_failure(client.account(account_id), grpc.StatusCode.UNAVAILABLE)
        await asyncio.to_thread(stack[QUERY_SERVER].start)

    # A new channel: the old one is in reconnect backoff, as any client's would be.
    async with connect(stack.command_target, stack.query_target) as client:
        third = await client.deposit(account_id, 25)
        transactions = await client.transactions(account_id, min_position=third.position)

    assert [(t.amount_minor, t.position) for t in transactions] == [
        (100, first.position),
        (50, second.position),
        (25, third.position),
    ]
    assert len({t.transaction_id for t in transactions}) == 3
    [initial, resumed] = started_at(stack)
    assert initial == 0
    assert resumed >= first.position  # from the saved checkpoint, not from the start

    stack.close()
    for process in stack:
        records = process.records()  # every stdout line of the last run is a JSON object
        assert {r["process"] for r in records} == {process.package}
        assert all({"ts", "level", "msg"} <= r.keys() for r in records)
    assert stack[PROJECTOR].records()[-1]["msg"] == "projector stopped"
    for server in (COMMAND_SERVER, QUERY_SERVER):
        assert stack[server].records()[-1]["msg"] == f"{server} stopped"


async def test_retries_stay_idempotent_across_a_command_server_restart(
    make_stack: StackFactory,
) -> None:
    stack = make_stack()
    account_request = new_request_id()
    deposit_request = new_request_id()
    async with connect(stack.command_target, stack.query_target) as client:
        opened = await client.commands.OpenAccount(
            cmd.OpenAccountRequest(request_id=account_request, owner_name="Ann", currency="EUR")
        )
        account_id = opened.account_id  # assigned by the server
        original = await client.deposit(account_id, 400, request_id=deposit_request)

    await asyncio.to_thread(stack[COMMAND_SERVER].restart)  # SIGTERM (exit 0), start again

    async with connect(stack.command_target, stack.query_target) as client:
        reopened = await client.commands.OpenAccount(
            cmd.OpenAccountRequest(request_id=account_request, owner_name="Ann", currency="EUR")
        )
        assert reopened == opened
        assert await client.deposit(account_id, 400, request_id=deposit_request) == original
        await expect_failure(
            client.deposit(account_id, 401, request_id=deposit_request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_ID_REUSED",
        )
        await expect_failure(
            client.commands.OpenAccount(
                cmd.OpenAccountRequest(request_id=account_request, owner_name="Bob", currency="EUR")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_ID_REUSED",
        )
        after = await client.deposit(account_id, 1)
        assert (after.version, after.balance_minor) == (2, 401)
        transactions = await client.transactions(account_id, min_position=after.position)
    assert [t.amount_minor for t in transactions] == [400, 1]


Views = dict[str, tuple[account_pb2.Account, list[account_pb2.Transaction]]]


async def _views_of(client: LedgerClient, owner: str, position: int) -> Views:
    """Every account of `owner` with its transactions, once the views reach `position`."""
    accounts = await client.accounts(owner_name=owner, min_position=position, page_size=4)
    return {
        a.account_id: (a, await client.transactions(a.account_id, page_size=25)) for a in accounts
    }


async def test_projector_killed_mid_stream_converges_to_a_full_rebuild(
    make_stack: StackFactory, backend: Backend
) -> None:
    if backend.copy_event_log is None:
        pytest.fail(f"backend {backend.name} has no copy_event_log for the rebuild comparison")
    stack = make_stack()
    owner = f"Owner {new_id()}"
    accounts = [new_id() for _ in range(6)]
    acknowledged: list[MoveResponse] = []
    halfway = asyncio.Event()

    async def stream_of_commands(client: LedgerClient, seed: int, count: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(count):
                account_id, amount = rng.choice(accounts), rng.randint(1, 500)
                response: MoveResponse
                if rng.random() < 0.4:
                    try:
                        response = await client.withdraw(account_id, amount)
                    except grpc.aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                            raise
                        continue  # insufficient funds: nothing was appended
                else:
                    response = await client.deposit(account_id, amount)
                acknowledged.append(response)
                if len(acknowledged) >= 45:
                    halfway.set()
        finally:
            halfway.set()

    async with connect(stack.command_target, stack.query_target) as client:
        for account_id in accounts:
            opened = await client.open(account_id, owner_name=owner)
        await client.account(opened.account_id, min_position=opened.position)  # projecting
        workers = [asyncio.create_task(stream_of_commands(client, seed, 30)) for seed in range(4)]
        await halfway.wait()
        projector = stack[PROJECTOR]
        projector.kill()  # SIGKILL while commands keep coming
        assert projector.proc is not None
        assert projector.proc.returncode == -9
        await asyncio.to_thread(stack[PROJECTOR].start)
        await asyncio.gather(*workers)
        last = max(r.position for r in acknowledged)
        live = await _views_of(client, owner, last)

    # The views show exactly what the command responses acknowledged, once each.
    assert sorted(live) == sorted(accounts)
    for account_id in accounts:
        account, transactions = live[account_id]
        responses = sorted(
            (r for r in acknowledged if r.account_id == account_id), key=lambda r: r.version
        )
        assert [(t.version, t.position, t.balance_after_minor) for t in transactions] == [
            (r.version, r.position, r.balance_minor) for r in responses
        ]
        assert len({t.transaction_id for t in transactions}) == len(transactions)
        final = responses[-1] if responses else None
        assert account.balance_minor == (final.balance_minor if final else 0)
        assert account.version == (final.version if final else 0)
    [initial, resumed] = started_at(stack)
    assert initial == 0
    assert resumed >= opened.position  # the checkpoint survived the kill

    # A fresh projector replaying a copy of the whole log into empty views agrees exactly.
    rebuild = make_stack.new()
    backend.copy_event_log(stack, rebuild)
    await asyncio.to_thread(rebuild.start, PROJECTOR, QUERY_SERVER)
    async with connect(stack.command_target, rebuild.query_target) as rebuilt_client:
        rebuilt = await _views_of(rebuilt_client, owner, last)
    assert rebuilt == live


@pytest.mark.parametrize(
    ("package", "setting", "value"),
    [
        (COMMAND_SERVER, "LEDGER_COMMAND_PORT", "abc"),
        (QUERY_SERVER, "LEDGER_QUERY_PORT", "70000"),
        (PROJECTOR, "LEDGER_EVENT_STORE", "oracle"),
        (QUERY_SERVER, "LEDGER_VIEW_STORE", "paper"),
        (QUERY_SERVER, "LEDGER_MAX_WAIT_SECONDS", "soon"),
        (PROJECTOR, "LEDGER_VIEW_DROP_GRACE_SECONDS", "1"),  # below a reader's look
        (PROJECTOR, "LEDGER_PROJECTOR_LIVE_PACE_SECONDS", "5"),  # past the 1 s bound
        (COMMAND_SERVER, "LEDGER_LOG_LEVEL", "loud"),
        (PROJECTOR, "LEDGER_DATA_DIR", "<a file>"),
    ],
)
def test_a_bad_setting_fails_at_start_with_a_message_naming_it(
    make_stack: StackFactory, tmp_path: Path, package: str, setting: str, value: str
) -> None:
    if value == "<a file>":
        path = tmp_path / "not-a-directory"
        path.write_text("")
        value = str(path)
    stack = make_stack.new()
    result = run_to_exit(package, stack.env(**{setting: value}), stack.log_dir)
    assert result.returncode != 0, result
    assert setting in result.stderr, result
    assert "Traceback" not in result.stderr, result.stderr


def test_a_second_server_on_a_port_in_use_fails_at_start(make_stack: StackFactory) -> None:
    stack = make_stack(COMMAND_SERVER)
    taken = str(stack[COMMAND_SERVER].port)
    second = stack.add("command_server_2", COMMAND_SERVER, LEDGER_COMMAND_PORT=taken)
    proc = second.spawn()
    deadline = time.monotonic() + START_TIMEOUT  # a guard against a hang, not a measurement
    try:
        while proc.poll() is None and not any(
            str(r.get("msg", "")).endswith("serving") for r in second.records()
        ):
            assert time.monotonic() < deadline, "neither serving nor exited"
            time.sleep(0.02)
    finally:
        if second.running:
            second.stop()
    assert proc.returncode not in (0, None), "the second server started on a port in use"
    assert any(r.get("msg") == "cannot bind" for r in second.records())


async def test_servers_are_not_serving_until_their_stores_open(
    make_stack: StackFactory, backend: Backend
) -> None:
    if backend is not SQLITE:
        pytest.skip("blocks the embedded stores' files; the adapters' outage tests cover theirs")
    stack = make_stack.new()
    blockers = [stack.data_dir / "events.sqlite3", stack.data_dir / "views.sqlite3"]
    for blocker in blockers:
        blocker.mkdir(parents=True)  # a directory where the SQLite file should be
    servers = [stack[COMMAND_SERVER], stack[QUERY_SERVER]]
    for server in servers:
        server.spawn()
        await asyncio.to_thread(
            server.wait_for_record, lambda r: "unavailable, retrying" in str(r.get("msg"))
        )

    async with connect(stack.command_target, stack.query_target) as client:
        for server in servers:
            async with grpc.aio.insecure_channel(server.target) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await expect_failure(client.open(), grpc.StatusCode.UNAVAILABLE)
        await expect_failure(client.account(new_id()), grpc.StatusCode.UNAVAILABLE)

        for blocker in blockers:
            blocker.rmdir()
        for server in servers:
            await asyncio.to_thread(server.finish_start)  # retried, opened, SERVING
        opened = await client.open()
        await asyncio.to_thread(stack[PROJECTOR].start)
        account = await client.account(opened.account_id, min_position=opened.position)
    assert account.version == 0
