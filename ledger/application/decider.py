"""The shape a bounded context gives each aggregate: pure decide and evolve functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")


@dataclass(frozen=True)
class Decider(Generic[S, C, E]):
    """`decide(state, command) -> events`, `evolve(state, event) -> state`, both pure."""

    category: str
    initial_state: S
    decide: Callable[[S, C], Sequence[E]]
    evolve: Callable[[S, E], S]

    def stream_for(self, entity_id: str) -> str:
        return f"{self.category}-{entity_id}"

    def fold(self, state: S, events: Sequence[E]) -> S:
        for event in events:
            state = self.evolve(state, event)
        return state
