"""Given/when/then for deciders: `given(events).when(command).then(events)`.

    given(AccountOpened(...)).when(DepositFunds(...)).then(FundsDeposited(...))
    given(AccountOpened(...)).when(WithdrawFunds(...)).then_error(
        RuleViolated, reason="INSUFFICIENT_FUNDS"
    )

`given` folds the history with the decider's own `evolve`, so a test states only
what happened before, never the state it implies. `then` also folds the decided
events, so a decision whose events cannot be applied fails the test too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import pytest

from ledger.application.decider import Decider
from ledger.domain import accounts
from ledger.errors import LedgerError

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")
X = TypeVar("X", bound=LedgerError)


@dataclass(frozen=True)
class Given(Generic[S, C, E]):
    decider: Decider[S, C, E]
    state: S

    def when(self, command: C) -> When[S, C, E]:
        return When(self.decider, self.state, command)


@dataclass(frozen=True)
class When(Generic[S, C, E]):
    decider: Decider[S, C, E]
    state: S
    command: C

    def then(self, *expected: E) -> S:
        """Assert the command decides exactly `expected`; return the state after them."""
        events = list(self.decider.decide(self.state, self.command))
        assert events == list(expected)
        return self.decider.fold(self.state, events)

    def then_error(self, error: type[X], *, reason: str | None = None) -> X:
        """Assert the command is refused with `error` (and `reason`, when given)."""
        try:
            events = self.decider.decide(self.state, self.command)
        except error as exc:
            refused = exc
        else:
            pytest.fail(f"expected {error.__name__}, decided {events!r}")
        if reason is not None:
            assert refused.reason == reason
        return refused


def given_in(decider: Decider[S, C, E], *history: E) -> Given[S, C, E]:
    """Any context's decider, after `history`."""
    return Given(decider, decider.fold(decider.initial_state, history))


def given(
    *history: accounts.Event,
) -> Given[accounts.State, accounts.Command, accounts.Event]:
    """The account aggregate after `history` (nothing: the account does not exist)."""
    return given_in(accounts.accounts, *history)


def given_state(
    state: accounts.State,
) -> Given[accounts.State, accounts.Command, accounts.Event]:
    """The account aggregate in a state no event can produce yet (e.g. FROZEN)."""
    return Given(accounts.accounts, state)
