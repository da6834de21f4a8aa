"""Keyset pagination with opaque page tokens, shared by every List method.

A token holds the last sort key served and a digest of the query it belongs to, so
pages stay stable while documents change and a token cannot be replayed against a
different filter.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ledger.errors import FieldViolation, InvalidArgument
from ledger.views.port import Document, Scalar, ViewStore

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def check_page_size(value: int, field: str = "page_size") -> list[FieldViolation]:
    if 0 <= value <= MAX_PAGE_SIZE:
        return []
    return [
        FieldViolation(
            field, f"must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
        )
    ]


# Made once: json.dumps with any option builds a new encoder on every call.
_SCOPE_JSON = json.JSONEncoder(default=str)
_TOKEN_JSON = json.JSONEncoder(separators=(",", ":"))


def _scope(collection: str, where: Mapping[str, Scalar], order_by: str, key_prefix: str) -> str:
    query: list[object] = [collection, sorted(where.items()), order_by]
    if key_prefix:  # (only then: tokens issued before prefixes existed stay valid)
        query.append(key_prefix)
    body = _SCOPE_JSON.encode(query)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def encode_token(after: Scalar, scope: str) -> str:
    raw = _TOKEN_JSON.encode({"a": after, "s": scope}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, scope: str, field: str = "page_token") -> Scalar:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        after, token_scope = body["a"], body["s"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(
            [FieldViolation(field, "is not a page token this server issued")]
        ) from None
    if token_scope != scope:
        raise InvalidArgument([FieldViolation(field, "belongs to a different query")])
    if not isinstance(after, str | int):
        raise InvalidArgument([FieldViolation(field, "is not a page token this server issued")])
    return after


@dataclass(frozen=True)
class Page:
    documents: list[Document]
    next_page_token: str


async def fetch_page(
    views: ViewStore,
    collection: str,
    *,
    where: Mapping[str, Scalar],
    order_by: str,
    page_size: int,
    page_token: str,
    key_prefix: str = "",
) -> Page:
    scope = _scope(collection, where, order_by, key_prefix)
    after = decode_token(page_token, scope) if page_token else None
    size = page_size or DEFAULT_PAGE_SIZE
    docs = await views.find(
        collection,
        where=where,
        order_by=order_by,
        after=after,
        limit=size + 1,
        key_prefix=key_prefix,
    )
    if len(docs) <= size:
        return Page(docs, "")
    docs = docs[:size]
    return Page(docs, encode_token(docs[-1][order_by], scope))
