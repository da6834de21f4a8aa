"""Pure-domain tests: given(events) / when(command) / then(events | error)."""

import pytest

# The helper lives outside test_*.py modules: have pytest explain its failing asserts.
pytest.register_assert_rewrite("tests.given_when_then")
