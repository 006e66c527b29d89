"""
One service-wide bound on what waits for subscribers: a L{PendingBudget},
shared by every L{BoundedWriter<backplane.output.BoundedWriter>} of a
service, inside which each subscriber's own C{max_pending} applies.
"""

from __future__ import annotations

from typing import Protocol

#: The default of C{[limits] max_pending_total}: 256 MiB.
DEFAULT_MAX_PENDING_TOTAL = 256 * 1024 * 1024


class BudgetHolder(Protocol):
    """
    What holds bytes on a L{PendingBudget}: a subscriber's writer.
    """

    @property
    def pending(self) -> int:
        """
        The bytes it holds on the budget now.
        """

    def overBudget(self) -> None:
        """
        The service holds too much and this is the holder furthest behind:
        apply its C{slow} policy to everything it holds (forget it, missing
        those messages, or abort its connection), and release it from the
        budget.
        """


class PendingBudget:
    """
    The bytes that wait for all the subscribers of a service together, and
    their bound (C{[limits] max_pending_total}).

    Each writer adds to L{pending} what it keeps for its consumer and
    subtracts what leaves (an O(1) sum a chunk); when a chunk would take
    L{pending} past L{limit}, L{makeRoom} makes the writers furthest behind
    (holding the most) apply their C{slow} policy, one at a time, until the
    chunk fits.  Only that rare path looks at the holders.

    Pending bytes are counted once for each subscriber they wait for, even
    where subscribers share one chunk in memory: L{pending} is an upper
    bound of the memory they take.

    @ivar limit: the bound, in bytes.
    @ivar pending: the bytes waiting now, all subscribers together.
    @ivar holders: the writers holding bytes now (an ordered set).
    @ivar dropped: messages subscribers with C{slow = "drop"} missed
        because the service was past its bound.
    @ivar disconnects: subscribers with C{slow = "disconnect"} disconnected
        because the service was past its bound.
    @ivar cuts: times a subscriber furthest behind was cut (dropped its
        backlog, or was disconnected) to keep within the bound.
    """

    __slots__ = ("cuts", "disconnects", "dropped", "holders", "limit", "pending")

    def __init__(self, limit: int | None = None) -> None:
        """
        @param limit: the bound in bytes; L{None}: no bound (the budget
            only counts).
        @raise ValueError: a negative limit.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"the limit must be 0 or more, not {limit}")
        self.limit: int = (1 << 62) if limit is None else limit
        self.pending = 0
        self.holders: dict[BudgetHolder, None] = {}
        self.dropped = 0
        self.disconnects = 0
        self.cuts = 0

    @property
    def bounded(self) -> bool:
        """
        Whether a bound was given (not only counting).
        """
        return self.limit < (1 << 62)

    def makeRoom(self, size: int, asking: BudgetHolder) -> bool:
        """
        Make room for C{size} more bytes that C{asking} is to keep: while
        they do not fit, the holder furthest behind, if it is not
        C{asking}, applies its policy (L{BudgetHolder.overBudget}).

        @return: C{True} once they fit; C{False} if C{asking} is itself the
            furthest behind, or if nothing else holds anything: then
            C{asking} must apply its own policy.
        """
        holders = self.holders
        while self.pending + size > self.limit:
            if not holders:
                return False
            furthest = max(holders, key=_pending)
            if furthest is asking:
                return False
            before = self.pending
            self.cuts += 1
            furthest.overBudget()
            holders.pop(furthest, None)
            if self.pending >= before:  # pragma: no cover - a holder that released nothing
                return False
        return True

    def report(self) -> dict[str, int | None]:
        """
        The figures of C{/stats}: C{pending_bytes}, C{pending_limit_bytes}
        (L{None}: no bound), C{pending_subscribers} (those holding bytes
        now), and the counters C{pending_cuts}, C{pending_dropped},
        C{pending_disconnects}.
        """
        return {
            "pending_bytes": self.pending,
            "pending_limit_bytes": self.limit if self.bounded else None,
            "pending_subscribers": len(self.holders),
            "pending_cuts": self.cuts,
            "pending_dropped": self.dropped,
            "pending_disconnects": self.disconnects,
        }


def _pending(holder: BudgetHolder) -> int:
    return holder.pending
