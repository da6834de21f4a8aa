"""Stand-ins for servers that cannot be installed where the tests run.

Each speaks enough of the real server's wire protocol for the official client library
to work against it unchanged, and follows the real server's documented semantics, so
an adapter tested against a stand-in is tested against the protocol, not a mock.
"""
