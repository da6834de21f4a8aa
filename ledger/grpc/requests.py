"""What every command request shares: its request_id and a fingerprint of its content."""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message

from ledger.errors import FieldViolation

MAX_REQUEST_ID = 128


def check_request_id(value: str, field: str = "request_id") -> list[FieldViolation]:
    if len(value) <= MAX_REQUEST_ID and value.isprintable():
        return []
    return [FieldViolation(field, f"must be at most {MAX_REQUEST_ID} printable characters")]


def fingerprint(request: Message, *, request_id_field: str = "request_id") -> str:
    """A digest of everything the client sent except the request id itself.

    A retry carries the same fingerprint; the same request id on a different command
    does not, which is how reuse is told apart from a retry.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(request_id_field)
    body = (
        type(request).DESCRIPTOR.full_name.encode()
        + b"\0"
        + copy.SerializeToString(deterministic=True)
    )
    return hashlib.sha256(body).hexdigest()[:32]
