"""The banking domain: pure functions and immutable values, no I/O, no protobuf."""
