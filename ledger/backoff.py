"""Exponential backoff for riding out an outage, shared by every retry loop."""

from __future__ import annotations


class Backoff:
    """Delays that double from `first` up to `cap`; `reset()` after progress starts over."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self._first = first
        self._cap = cap
        self.delay = first
        """The delay the next `take()` returns (for log lines before the wait)."""

    def take(self) -> float:
        """The delay to wait now; the next one is twice as long, up to the cap."""
        current = self.delay
        self.delay = min(current * 2, self._cap)
        return current

    def reset(self) -> None:
        self.delay = self._first
