"""The in-process ledger of the gRPC tests, shared with the history tests."""

from tests.grpc.conftest import client, ledger, make_ledger

__all__ = ["client", "ledger", "make_ledger"]
