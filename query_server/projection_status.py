"""GetProjectionStatus's entries: checkpoints joined with the projector's status records.

The checkpoint is read fresh; the rest is what the projector last published (at most
about a second old while it runs). Lag is taken against the fresh checkpoint, so it
never shows a batch as missing once the batch has landed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from ledger.v1 import account_query_service_pb2 as pb
from ledger.views.port import KEY, Checkpoint, StatusValue, status_count

STATES = {
    "CATCHING_UP": pb.PROJECTION_STATE_CATCHING_UP,
    "LIVE": pb.PROJECTION_STATE_LIVE,
    "REBUILDING": pb.PROJECTION_STATE_REBUILDING,
    "STOPPED": pb.PROJECTION_STATE_STOPPED,
    "FAILED": pb.PROJECTION_STATE_FAILED,
}


def _float(record: Mapping[str, StatusValue], name: str) -> float:
    value = record.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def projection_statuses(
    checkpoints: Sequence[Checkpoint], records: Sequence[Mapping[str, StatusValue]]
) -> list[pb.ProjectionStatus]:
    by_name = {str(r.get(KEY)): r for r in records}
    positions = {c.name: c for c in checkpoints}
    statuses = []
    for name in sorted(positions.keys() | by_name.keys()):
        checkpoint = positions.get(name)
        record = by_name.get(name, {})
        position = (
            checkpoint.position if checkpoint else status_count(record, "checkpoint_position")
        )
        head = max(status_count(record, "head_position"), position)
        state = record.get("state")
        status = pb.ProjectionStatus(
            name=name,
            checkpoint_position=position,
            version=status_count(record, "version"),
            head_position=head,
            lag_events=head - position,
            lag_seconds=_float(record, "lag_seconds"),
            events_per_second=_float(record, "events_per_second"),
            state=STATES.get(state, pb.PROJECTION_STATE_UNSPECIFIED)
            if isinstance(state, str)
            else pb.PROJECTION_STATE_UNSPECIFIED,
            last_error=str(record.get("last_error") or ""),
            parked_events=status_count(record, "parked_events"),
        )
        updated_at: datetime | None = checkpoint.updated_at if checkpoint else None
        if updated_at is not None:
            status.updated_at.FromDatetime(updated_at)
        statuses.append(status)
    return statuses
