"""One write per document for a batch of upserts, with the effect of applying them one by one.

Applied one by one, the upserts of one document (in the order given) leave it:

- unchanged if it already reflects the last one's position;
- as their fold (later fields over earlier ones, the last one's position) if it predates
  the first one, since then each one finds the document behind it and applies in turn.

So a store may write the fold once, conditional on the document predating the *first*
upsert. A document found in between (past the first upsert, short of the last) needs
the upserts one by one; replaying them after the folded write is exact, as that write
either applied (leaving each of them a no-op) or changed nothing. The projector never
meets that case with a transactional store: its batch is a contiguous run of the log
after a checkpoint that was written with the views, so every document predates the
batch or (redelivered) reflects all of it. Without transactions, or for a parked
event's retry, it can happen.

An upsert at or below the position of an earlier one of its document is dropped: one
by one it is a no-op whatever the document holds, as the earlier one either applied or
found the document further along already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ledger.views.port import Scalar, Upsert


def runs(upserts: Iterable[Upsert]) -> Iterable[list[Upsert]]:
    """Each document's upserts (same collection and key) in order, without the ones
    dropped above; documents in order of first appearance."""
    by_document: dict[tuple[str, str], list[Upsert]] = {}
    for op in upserts:
        run = by_document.get((op.collection, op.key))
        if run is None:
            by_document[(op.collection, op.key)] = [op]
        elif op.position > run[-1].position:
            run.append(op)
    return by_document.values()


def folded(run: list[Upsert]) -> Mapping[str, Scalar]:
    """A run's fields, later over earlier: to be written at the last one's position if
    the document predates the first one."""
    if len(run) == 1:
        return run[0].fields
    fields: dict[str, Scalar] = {}
    for op in run:
        fields.update(op.fields)
    return fields


def rendering(run: list[Upsert]) -> bytes | None:
    """A run's last rendering (None: the run leaves the stored one alone), written
    with its fold."""
    return next((op.rendered for op in reversed(run) if op.rendered is not None), None)
