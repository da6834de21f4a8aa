"""Protobuf's wire format, for answers assembled from messages encoded ahead of time."""

from __future__ import annotations

import functools
from collections.abc import Iterable

LENGTH_DELIMITED = 2
"""The wire type of an embedded message."""


def varint(value: int) -> bytes:
    """`value` (not negative) as a base-128 varint, low groups first."""
    if value < 0:
        raise ValueError(f"a varint here is never negative, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=4096)
def _header(number: int, length: int) -> bytes:
    return varint(number << 3 | LENGTH_DELIMITED) + varint(length)


def repeated_field(number: int, encodings: Iterable[bytes]) -> bytes:
    """The encoding of a message whose repeated message field `number` holds these
    encoded messages, in order: what a parse then reads in C, instead of each one being
    built field by field."""
    return b"".join([_header(number, len(encoding)) + encoding for encoding in encodings])
