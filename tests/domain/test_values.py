"""The checks of command values: each returns every violation it finds, named by field."""

from __future__ import annotations

import pytest

from ledger.domain.values import (
    MAX_AMOUNT_MINOR,
    MAX_DESCRIPTION,
    MAX_OWNER_NAME,
    check_account_id,
    check_amount,
    check_currency,
    check_description,
    check_different_accounts,
    check_expected_version,
    check_owner_name,
    is_iso_currency,
)
from ledger.errors import FieldViolation, InvalidArgument, require


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


# account_id: 1 to 64 of [A-Za-z0-9._-]


@pytest.mark.parametrize(
    "value",
    ["a", "Z", "0", "acc-1", "ACC_2.x", "a" * 64, "-._", "0123456789"],
)
def test_valid_account_ids(value: str) -> None:
    assert check_account_id(value) == []


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 65,
        "a b",
        "a/b",
        "a:b",
        "acc\n",
        "\nacc",
        "zoë",
        "a\x00",
        "\uff41",  # fullwidth letter a: not ASCII
        "a" * 64 + "\n",
    ],
)
def test_invalid_account_ids(value: str) -> None:
    violations = check_account_id(value)
    assert fields(violations) == ["account_id"]
    assert "64" in violations[0].description


def test_account_id_violation_names_the_given_field() -> None:
    assert fields(check_account_id("", field="source_account_id")) == ["source_account_id"]


def test_a_transfer_needs_two_different_accounts() -> None:
    assert check_different_accounts("acc-1", "acc-2") == []
    assert fields(check_different_accounts("acc-1", "acc-1")) == ["to_account_id"]


# owner_name: not blank, at most 200 characters, printable


@pytest.mark.parametrize(
    "value",
    ["A", "Ada Lovelace", "Zoë Ünal-Østergård", "李小龍", "A" * MAX_OWNER_NAME, " padded "],
)
def test_valid_owner_names(value: str) -> None:
    assert check_owner_name(value) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\t\n", "empty"),
        ("A" * (MAX_OWNER_NAME + 1), "200"),
        ("Ada\x00Lovelace", "printable"),
        ("Ada\nLovelace", "printable"),
        ("Ada\u200bLovelace", "printable"),
        ("Ada\x1b[31m", "printable"),
    ],
)
def test_invalid_owner_names(value: str, problem: str) -> None:
    violations = check_owner_name(value)
    assert fields(violations) == ["owner_name"]
    assert problem in violations[0].description


def test_max_owner_name_is_200() -> None:
    assert MAX_OWNER_NAME == 200


# currency: an upper-case ISO 4217 code known to pycountry


@pytest.mark.parametrize("value", ["EUR", "USD", "JPY", "GBP", "CHF"])
def test_valid_currencies(value: str) -> None:
    assert is_iso_currency(value)
    assert check_currency(value) == []


@pytest.mark.parametrize("value", ["eur", "Eur", "XXY", "EU", "EURO", "", "E R", "978"])
def test_invalid_currencies(value: str) -> None:
    assert not is_iso_currency(value)
    violations = check_currency(value)
    assert fields(violations) == ["currency"]
    assert repr(value) in violations[0].description


# amount_minor: 1 to 10**15


@pytest.mark.parametrize("value", [1, 2, 10**15])
def test_valid_amounts(value: int) -> None:
    assert check_amount(value) == []


@pytest.mark.parametrize("value", [0, -1, 10**15 + 1, 2**63 - 1, -(2**63)])
def test_invalid_amounts(value: int) -> None:
    assert fields(check_amount(value)) == ["amount_minor"]


def test_max_amount_is_ten_to_the_fifteen() -> None:
    assert MAX_AMOUNT_MINOR == 10**15


# description: at most 500 characters (empty is fine)


@pytest.mark.parametrize("value", ["", "rent", "x" * MAX_DESCRIPTION, "é" * 500])
def test_valid_descriptions(value: str) -> None:
    assert check_description(value) == []


@pytest.mark.parametrize("value", ["x" * (MAX_DESCRIPTION + 1), "é" * 501])
def test_invalid_descriptions(value: str) -> None:
    violations = check_description(value)
    assert fields(violations) == ["description"]
    assert "500" in violations[0].description


# expected_version: absent, or a stream version


@pytest.mark.parametrize("value", [None, 0, 1, 2**62])
def test_valid_expected_versions(value: int | None) -> None:
    assert check_expected_version(value) == []


@pytest.mark.parametrize("value", [-1, -2])
def test_invalid_expected_versions(value: int) -> None:
    assert fields(check_expected_version(value)) == ["expected_version"]


# require: one InvalidArgument listing every violation


def test_require_lists_every_violation() -> None:
    violations = check_account_id("") + check_currency("eur") + check_amount(0)
    with pytest.raises(InvalidArgument) as info:
        require(violations)
    assert [v.field for v in info.value.violations] == ["account_id", "currency", "amount_minor"]
    assert "account_id" in info.value.message
    assert "amount_minor" in info.value.message


def test_require_accepts_no_violations() -> None:
    require(check_account_id("acc-1") + check_currency("EUR") + check_amount(1))
