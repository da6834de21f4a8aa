"""Transfers and freezing: domain, application service, process manager, end to end."""

import pytest

# The helper lives outside test_*.py modules: have pytest explain its failing asserts.
pytest.register_assert_rewrite("tests.given_when_then")
