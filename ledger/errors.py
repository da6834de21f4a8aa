"""The error vocabulary every layer raises and one table (ledger.grpc.errors) maps to gRPC.

Kept free of gRPC and of any bounded context, so a domain can raise these and the
infrastructure can surface them without either knowing the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class LedgerError(Exception):
    """Base for errors that are part of the API (they map to a status code)."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class InvalidArgument(LedgerError):
    """Malformed input: nothing was changed."""

    def __init__(
        self,
        violations: list[FieldViolation] | tuple[FieldViolation, ...],
        *,
        reason: str = "",
        message: str = "",
    ) -> None:
        self.violations = tuple(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument", reason=reason)


class NotFound(LedgerError):
    pass


class AlreadyExists(LedgerError):
    pass


class RuleViolated(LedgerError):
    """A business rule refused the command; `reason` names the rule for clients."""


class ConcurrencyConflict(LedgerError):
    """The stream moved on: a stale expected_version, or retries could not settle."""

    def __init__(self, message: str, *, reason: str = "CONCURRENCY_CONFLICT") -> None:
        super().__init__(message, reason=reason)


class Unavailable(LedgerError):
    """A backing store or the projection cannot serve now; the call may be retried."""


class WrongExpectedVersion(Exception):
    """Raised by an event store when an append's expected version does not match."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


def require(violations: list[FieldViolation]) -> None:
    """Raise one InvalidArgument listing every violation, so clients fix all at once."""
    if violations:
        raise InvalidArgument(violations)
