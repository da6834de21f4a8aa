"""Keyset pagination with opaque page tokens, shared by every List method.

A token holds the last sort key served and a digest of the query it belongs to, so
pages stay stable while documents change and a token cannot be replayed against a
different filter.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ledger.errors import FieldViolation, InvalidArgument
from ledger.views.port import KEY, Document, Scalar, ViewStore

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


def _foreign(field: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, "is not a page token this server issued")])


def decode_token(token: str, scope: str, field: str = "page_token") -> str | int:
    """The sort key a token holds, if this server issued it for query `scope`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        after, token_scope = body["a"], body["s"]
    except (ValueError, KeyError, TypeError):
        raise _foreign(field) from None
    if token_scope != scope:
        raise InvalidArgument([FieldViolation(field, "belongs to a different query")])
    if not isinstance(after, str | int):
        raise _foreign(field)
    return after


T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    documents: list[Document]
    next_page_token: str


@dataclass(frozen=True)
class RenderedPage:
    renderings: list[bytes]
    next_page_token: str


def _after(page_token: str, scope: str) -> str | int | None:
    return decode_token(page_token, scope) if page_token else None


def _trimmed(
    found: list[T], size: int, sort_key: Callable[[T], Scalar], scope: str
) -> tuple[list[T], str]:
    """A page from `size` + 1 rows read: its rows, and a token if there was one more."""
    if len(found) <= size:
        return found, ""
    found = found[:size]
    return found, encode_token(sort_key(found[-1]), scope)


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
    docs = await views.find(
        collection,
        where=where,
        order_by=order_by,
        after=_after(page_token, scope),
        limit=(size := page_size or DEFAULT_PAGE_SIZE) + 1,
        key_prefix=key_prefix,
    )
    return Page(*_trimmed(docs, size, lambda doc: doc[order_by], scope))


async def fetch_rendered_page(
    views: ViewStore,
    collection: str,
    *,
    rendered_where: Mapping[str, Scalar],
    page_size: int,
    page_token: str,
    key_prefix: str,
) -> RenderedPage:
    """A page of renderings (`ViewStore.find_rendered`), in key order.

    `rendered_where` is the filter whose matches are the documents with a rendering:
    tokens name that query, so one `fetch_page` issued for it (ordered by key) pages on
    here and the reverse, as when readers move to views that have renderings."""
    scope = _scope(collection, rendered_where, KEY, key_prefix)
    after = _after(page_token, scope)
    if isinstance(after, int):  # keys are text
        raise _foreign("page_token")
    rows = await views.find_rendered(
        collection,
        key_prefix=key_prefix,
        after=after,
        limit=(size := page_size or DEFAULT_PAGE_SIZE) + 1,
    )
    page, token = _trimmed(rows, size, lambda row: row[0], scope)
    return RenderedPage([rendering for _, rendering in page], token)
