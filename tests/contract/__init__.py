"""Contract suites, one per port; each adapter's test module subclasses them."""

import pytest

# The suites live outside test_*.py modules: have pytest explain their failing asserts.
pytest.register_assert_rewrite(
    "tests.contract.event_store_contract", "tests.contract.view_store_contract"
)
