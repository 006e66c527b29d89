"""
Service-wide bounds on memory that clients make the service hold:

  - what waits for subscribers: a L{PendingBudget}, shared by every
    L{BoundedWriter<backplane.output.BoundedWriter>} of a service, inside
    which each subscriber's own C{max_pending} applies;
  - what publishers sent that is not yet a whole line (or message, or
    request): an L{UnfinishedBudget}, shared by every connection that reads
    lines, WebSocket messages or Redis requests (a relay's connection
    upstream included), inside which each port's (or relay's)
    C{max_line_length} (or C{max_request}) applies.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

#: The default of C{[limits] max_pending_total}: 256 MiB.
DEFAULT_MAX_PENDING_TOTAL = 256 * 1024 * 1024
#: The default of C{[limits] max_unfinished_total}: 64 MiB.
DEFAULT_MAX_UNFINISHED_TOTAL = 64 * 1024 * 1024


H = TypeVar("H")

#: The limit of a bound given none: it only counts.
_UNBOUNDED = 1 << 62


class _Bound(Generic[H]):
    """
    What both bounds share: the limit, the holders (an ordered set), and
    how many of them were cut to keep within it.
    """

    __slots__ = ("cuts", "holders", "limit")

    def __init__(self, limit: int | None = None) -> None:
        """
        @param limit: the bound in bytes; L{None}: no bound (the budget
            only counts).
        @raise ValueError: a negative limit.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"the limit must be 0 or more, not {limit}")
        self.limit: int = _UNBOUNDED if limit is None else limit
        self.holders: dict[H, None] = {}
        self.cuts = 0

    @property
    def bounded(self) -> bool:
        """
        Whether a bound was given (not only counting).
        """
        return self.limit < _UNBOUNDED


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


class PendingBudget(_Bound[BudgetHolder]):
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

    __slots__ = ("disconnects", "dropped", "pending")

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self.pending = 0
        self.dropped = 0
        self.disconnects = 0

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


class UnfinishedHolder(Protocol):
    """
    What holds bytes on an L{UnfinishedBudget}: a connection that reads
    lines (or WebSocket messages, or Redis requests) and keeps what it has
    of the one not yet finished: a port's client, or a relay's connection
    upstream.
    """

    @property
    def unfinished(self) -> int:
        """
        The bytes of its unfinished line it holds on the budget now.
        """

    def overUnfinished(self) -> None:
        """
        The service holds too much unfinished input and this holder's is the
        largest: log it, forget it (never published, counted in its port's,
        or relay's, C{discarded_bytes}), disconnect, and release it from the
        budget (L{UnfinishedBudget.update} to 0).
        """


class UnfinishedBudget(_Bound["UnfinishedHolder"]):
    """
    The bytes of unfinished lines that all the connections of a service
    hold together, and their bound (C{[limits] max_unfinished_total}).

    After each read a connection tells the budget how many bytes it holds
    now (L{update}, only when that changed: an O(1) sum, never a look at
    lines); past L{limit}, the connection holding the most is cut
    (L{UnfinishedHolder.overUnfinished}), then the next, until the total is
    within the bound.  Only that rare path looks at the holders.

    @ivar limit: the bound, in bytes.
    @ivar held: the bytes of unfinished lines held now, all connections
        together.
    @ivar holders: the connections holding some now (an ordered set).
    @ivar cuts: connections disconnected, their unfinished line forgotten,
        to keep within the bound.
    @ivar discarded: the bytes of those unfinished lines.
    """

    __slots__ = ("discarded", "held")

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self.held = 0
        self.discarded = 0

    def update(self, holder: UnfinishedHolder, before: int, after: int) -> None:
        """
        C{holder} now holds C{after} bytes of an unfinished line instead of
        C{before} (its L{UnfinishedHolder.unfinished} already says C{after}).
        If that takes the total past the bound, the holders with the most
        are cut, C{holder} included, until it is within it.
        """
        self.held += after - before
        if after:
            if not before:
                self.holders[holder] = None
            if after > before and self.held > self.limit:
                self._makeRoom()
        elif before:
            self.holders.pop(holder, None)

    def _makeRoom(self) -> None:
        holders = self.holders
        while self.held > self.limit and holders:
            largest = max(holders, key=_unfinished)
            size = largest.unfinished
            self.cuts += 1
            self.discarded += size
            largest.overUnfinished()
            if largest in holders:  # pragma: no cover - a holder that released nothing
                return

    def report(self) -> dict[str, int | None]:
        """
        The figures of C{/stats}: C{unfinished_bytes},
        C{unfinished_limit_bytes} (L{None}: no bound),
        C{unfinished_connections} (those holding bytes now), and the
        counters C{unfinished_cuts} and C{unfinished_discarded_bytes}.
        """
        return {
            "unfinished_bytes": self.held,
            "unfinished_limit_bytes": self.limit if self.bounded else None,
            "unfinished_connections": len(self.holders),
            "unfinished_cuts": self.cuts,
            "unfinished_discarded_bytes": self.discarded,
        }


def _unfinished(holder: UnfinishedHolder) -> int:
    return holder.unfinished
