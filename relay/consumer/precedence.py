"""Transaction status precedence, so a consumer can ignore stale events that arrive out of order.

MyTPE documents no ordering, and retries can deliver `pending` after `completed` for the same
transaction. Ranks: pending < processing < completed | failed | refused (the three are final).
"""

from __future__ import annotations

from enum import Enum

TRANSACTION_RANK = {"pending": 0, "processing": 1, "completed": 2, "failed": 2, "refused": 2}
FINAL = frozenset(status for status, rank in TRANSACTION_RANK.items() if rank == 2)


class Verdict(Enum):
    APPLY = "apply"
    """The incoming status is later than the current one (or there is no current one)."""
    STALE = "stale"
    """Earlier than the current status: an out-of-order event, ignore it."""
    SAME = "same"
    """The same status again: nothing changes."""
    CONFLICT = "conflict"
    """A different final status after a final one (completed then refused): needs a human, not a rule."""
    UNKNOWN = "unknown"
    """A status this version does not know (a newer API generation): decide explicitly."""


def compare(current: str | None, incoming: str) -> Verdict:
    """How `incoming` relates to the `current` status of the same transaction."""
    rank = TRANSACTION_RANK.get(incoming)
    if rank is None or (current is not None and current not in TRANSACTION_RANK):
        return Verdict.UNKNOWN
    if current is None:
        return Verdict.APPLY
    if incoming == current:
        return Verdict.SAME
    held = TRANSACTION_RANK[current]
    if rank > held:
        return Verdict.APPLY
    if rank < held:
        return Verdict.STALE
    return Verdict.CONFLICT if current in FINAL else Verdict.APPLY


def should_apply(current: str | None, incoming: str) -> bool:
    return compare(current, incoming) is Verdict.APPLY
