"""Checks of the values commands carry; each returns the violations it finds.

Returning violations (instead of raising on the first) lets the edge report every
problem in one INVALID_ARGUMENT, as google.rpc.BadRequest intends.
"""

from __future__ import annotations

import functools
import re

import pycountry

from ledger.errors import FieldViolation

MAX_AMOUNT_MINOR = 10**15
INT64_MAX = 2**63 - 1
ACCOUNT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_OWNER_NAME = 200
MAX_DESCRIPTION = 500


@functools.lru_cache(maxsize=512)
def is_iso_currency(code: str) -> bool:
    """Cached: pycountry's lookup is a noticeable share of a deposit's CPU time."""
    return len(code) == 3 and code.isupper() and pycountry.currencies.get(alpha_3=code) is not None


def check_account_id(value: str, field: str = "account_id") -> list[FieldViolation]:
    if ACCOUNT_ID.fullmatch(value):
        return []
    return [FieldViolation(field, "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]


def check_different_accounts(
    from_account_id: str, to_account_id: str, field: str = "to_account_id"
) -> list[FieldViolation]:
    if from_account_id != to_account_id:
        return []
    return [FieldViolation(field, "must differ from from_account_id")]


def check_owner_name(value: str, field: str = "owner_name") -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field, "must not be empty")]
    if len(value) > MAX_OWNER_NAME:
        return [FieldViolation(field, f"must be at most {MAX_OWNER_NAME} characters")]
    if not value.isprintable():
        return [FieldViolation(field, "must contain printable characters only")]
    return []


def check_currency(value: str, field: str = "currency") -> list[FieldViolation]:
    if is_iso_currency(value):
        return []
    return [FieldViolation(field, f"{value!r} is not an ISO 4217 currency code (e.g. 'EUR')")]


def check_amount(value: int, field: str = "amount_minor") -> list[FieldViolation]:
    if 1 <= value <= MAX_AMOUNT_MINOR:
        return []
    return [FieldViolation(field, f"must be between 1 and {MAX_AMOUNT_MINOR} minor units")]


def check_description(value: str, field: str = "description") -> list[FieldViolation]:
    if len(value) <= MAX_DESCRIPTION:
        return []
    return [FieldViolation(field, f"must be at most {MAX_DESCRIPTION} characters")]


def check_expected_version(
    value: int | None, field: str = "expected_version"
) -> list[FieldViolation]:
    if value is None or value >= 0:
        return []
    return [FieldViolation(field, "must be a stream version (0 or more)")]
