"""Stacks of the three real processes for the end-to-end tests.

`stack` is started once per module and shared by its tests (each test works on its own
uuid-named accounts and owners); tests that restart or kill processes use `make_stack`
for stacks of their own. Both are parametrized by `backend`: every entry of BACKENDS
(the embedded stores, and each production adapter on its stand-in) unless
LEDGER_E2E_BACKENDS (comma-separated names) picks some. A failing test shows the logs
of the processes it used.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from tests.support import LedgerClient, connect
from tests.support.backends import BACKENDS
from tests.support.processes import Backend, Stack


def _selected_backends() -> list[str]:
    chosen = os.environ.get("LEDGER_E2E_BACKENDS", ",".join(BACKENDS))
    names = [n.strip() for n in chosen.split(",")]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"LEDGER_E2E_BACKENDS names unknown backends {unknown}; known: {sorted(BACKENDS)}"
        )
    return [n for n in names if n]


@pytest.fixture(scope="module", params=_selected_backends())
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture(scope="module")
def stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All three processes, shared by the tests of a module; stopped with SIGTERM (exit 0)."""
    shared = Stack(tmp_path_factory.mktemp(f"stack-{backend.name}"), backend)
    try:
        shared.start()
        yield shared
    finally:
        shared.close()


class StackFactory:
    """Stacks of a test's own, on the test's backend, closed (exit 0 asserted) after it."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.stacks: list[Stack] = []

    def new(self, **env: str) -> Stack:
        """A stack with nothing started yet."""
        made = Stack(self.root / f"stack-{len(self.stacks)}", self.backend, extra_env=env)
        self.stacks.append(made)
        return made

    def __call__(self, *names: str, **env: str) -> Stack:
        """A stack with `names` started (all three by default), `env` added to their settings."""
        return self.new(**env).start(*names)

    def close(self) -> None:
        errors = []
        for made in self.stacks:
            try:
                made.close()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n".join(errors)


@pytest.fixture
def make_stack(backend: Backend, tmp_path: Path) -> Iterator[StackFactory]:
    factory = StackFactory(backend, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[LedgerClient]:
    async with connect(stack.command_target, stack.query_target) as connected:
        yield connected


def _stacks_of(item: pytest.Item) -> list[Stack]:
    found: list[Stack] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Stack):
            found.append(value)
        elif isinstance(value, StackFactory):
            found.extend(value.stacks)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for number, failed_stack in enumerate(_stacks_of(item)):
            report.sections.append((f"ledger processes, stack {number}", failed_stack.describe()))
    return report
