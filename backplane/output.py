"""
The output side of a network subscriber: a writer kept within
C{max_pending} that knows when its consumer is too slow (L{BoundedWriter}).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from backplane.budget import PendingBudget
from backplane.interfaces import ILineSink

if TYPE_CHECKING:
    from backplane.protocols import Limits


class OutputTransport(Protocol):
    """
    What a L{BoundedWriter} writes to: a connection's transport, or a
    streaming HTTP response wrapped to look like one.
    """

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: list[bytes]) -> None: ...

    def abortConnection(self) -> None: ...


class SlowCounters(Protocol):
    """
    Counters a L{BoundedWriter} adds to when its consumer is too slow: a
    L{PortStats<backplane.protocols.PortStats>}, a
    L{BackplaneStats<backplane.service.BackplaneStats>}.
    """

    dropped: int
    slow_disconnects: int


class OutputOwner(Protocol):
    """
    What a L{BoundedWriter} needs of the subscriber that holds it.
    """

    @property
    def peer(self) -> str | None:
        """
        Who the consumer is, for log lines.
        """

    def outputTooSlow(self) -> None:
        """
        More than C{max_pending} bytes wait and C{slow} is C{"disconnect"}:
        stop handing the writer lines (cancel the subscription).  The writer
        then forgets what waits and aborts the connection.
        """

    def outputCaughtUp(self, missed: int) -> None:
        """
        With C{slow = "drop"}, the consumer has caught up after missing
        C{missed} messages (logged already).
        """


def _directSocket(transport: object) -> socket.socket | None:
    """
    The socket of a plain TCP or UNIX connection, or L{None} for any other
    transport (TLS, a test's), or if Twisted's C{FileDescriptor} no longer
    keeps its buffers where L{_drained} looks (then the transport does every
    write; C{tests/test_protocols.py} fails loudly).

    A subscriber writes to that socket itself while its transport's buffer
    is empty: a write through the transport costs a round through the
    reactor (register for writability, poll, send, unregister), twice the
    CPU of the C{send} alone for the small chunks a clock tick or a
    fixed-rate publisher makes (see docs/performance.md).  Whatever the
    socket does not take at once goes through the transport, which then
    holds it and everything after it, in order.
    """
    if (isinstance(transport, tcp.Connection) and not transport.TLS
            and hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataBuffer")):
        handle: socket.socket = transport.getHandle()
        return handle
    return None


def _drained(transport: Any) -> bool:
    """
    Whether a plain TCP or UNIX transport holds nothing unsent and is not
    closing.

    The one use of Twisted's internals: no public API tells whether a
    C{FileDescriptor}'s buffer is empty; it keeps unsent data in
    C{dataBuffer} and C{_tempDataBuffer}.  C{DirectSocketTests} in
    C{tests/test_protocols.py} checks that it still does.
    """
    return not (transport.dataBuffer or transport._tempDataBuffer or transport.disconnecting)


def _release(transport: Any) -> None:
    """
    Let go of what a closed plain TCP or UNIX transport still buffers.

    Twisted leaves a connection's unsent data in C{dataBuffer} and
    C{_tempDataBuffer} once it is lost; a subscriber that stopped reading
    leaves 64 KiB or more there, and its transport lives on, with the
    protocol's reference cycles, until Python's cyclic collector runs.  The
    same internals as L{_drained}, checked by the same tests.
    """
    transport.dataBuffer = b""
    transport._tempDataBuffer = []
    transport._tempDataLen = 0


def _sendNow(sock: socket.socket, data: bytes) -> bytes:
    """
    Send what the socket takes without blocking; return the rest.
    """
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        return data
    except OSError:
        return data  # the transport meets the error too, and closes
    return data[sent:]


@implementer(ILineSink, IPushProducer)
class BoundedWriter:
    """
    Writes chunks of lines to one consumer, keeping at most C{max_pending}
    bytes for it while its transport's buffer is full.

    Its transport pauses it (L{pauseProducing}, on every write while the
    buffer is full) and resumes it (L{resumeProducing}) once the buffer has
    drained: register the writer, or an owner that passes those calls on, as
    the transport's streaming producer.  While paused, what L{deliver} is
    given waits here and goes to the transport as it empties; past
    C{limits.max_pending}, C{limits.slow} applies: the consumer is aborted
    (C{"disconnect"}), or it misses whole chunks until it catches up
    (C{"drop"}), counted in C{counters} and logged once each time.

    What waits here also counts on the service's L{PendingBudget}: when a
    chunk would take all subscribers together past its bound, the
    subscribers furthest behind apply their C{slow} policy first, to
    everything they hold (L{overBudget}): the connection is aborted, or the
    messages waiting are forgotten and counted as missed.

    On a plain TCP or UNIX connection a chunk goes straight to the socket
    while the transport holds nothing (see L{_directSocket}).

    @ivar dropped: messages this consumer missed, all told.
    """

    log = Logger()

    # One a subscriber: slots keep each small (see docs/performance.md, idle).
    __slots__ = ("_aborted", "_budget", "_maxPending", "_missed", "_paused", "_socket",
                 "_waiting", "_waitingBytes", "counters", "dropped", "limits", "name", "owner",
                 "transport")

    def __init__(self, owner: OutputOwner, transport: OutputTransport, limits: Limits, *,
                 name: str, counters: Sequence[SlowCounters] = (),
                 budget: PendingBudget | None = None) -> None:
        """
        @param owner: the subscriber: told when its consumer is too slow,
            or has caught up.
        @param transport: where the chunks go.
        @param limits: C{max_pending} and C{slow} apply.
        @param name: the backplane the chunks come from, for log lines.
        @param counters: what counts messages dropped (C{dropped}) and
            consumers disconnected (C{slow_disconnects}).
        @param budget: the service's bound on what waits for all its
            subscribers (L{Backplane.budget<backplane.service.Backplane.budget>});
            L{None}: an unbounded one of its own.
        """
        self.owner = owner
        self.transport = transport
        self.limits = limits
        self.name = name
        self.counters = tuple(counters)
        self.dropped = 0
        self._maxPending = limits.max_pending
        self._socket = _directSocket(transport)
        self._paused = False
        self._budget = PendingBudget() if budget is None else budget
        # Chunks waiting, with their number of messages; made on the first pause.
        self._waiting: deque[tuple[bytes, int]] | None = None
        self._waitingBytes = 0
        self._aborted = False
        self._missed = 0  # messages dropped since the consumer fell behind

    @property
    def paused(self) -> bool:
        """
        Whether the transport's buffer is full (what is delivered waits).
        """
        return self._paused

    @property
    def pending(self) -> int:
        """
        Bytes waiting here for the transport to drain.
        """
        return self._waitingBytes

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write C{data} (C{count} messages) to the consumer, or keep it while
        the transport's buffer is full, within C{max_pending}.
        """
        if not self._paused:
            if self._socket is not None and _drained(self.transport):
                data = _sendNow(self._socket, data)
                if not data:
                    return
            self.transport.write(data)
        elif self._aborted:
            return
        elif self._waitingBytes + len(data) > self._maxPending:
            self._tooSlow(count)
        else:
            size = len(data)
            budget = self._budget
            if budget.pending + size > budget.limit and not budget.makeRoom(size, self):
                self._tooSlow(count, furthest=True)
                return
            assert self._waiting is not None
            if not self._waitingBytes:
                budget.holders[self] = None
            self._waiting.append((data, count))
            self._waitingBytes += size
            budget.pending += size

    def flush(self) -> None:
        """
        Hand everything that waits to the transport at once (before closing:
        the transport then sends it before it closes).
        """
        if self._waiting:
            self.transport.writeSequence([data for data, _ in self._waiting])
        self.discard()

    def discard(self) -> int:
        """
        Forget everything that waits (the connection is gone), and release
        it from the budget; once a plain TCP or UNIX connection is lost,
        what its transport still buffers too (L{_release}).

        @return: the number of messages forgotten.
        """
        if self._socket is not None and self.transport.disconnected:  # type: ignore[attr-defined]
            _release(self.transport)
        missed = 0
        if self._waiting:
            missed = sum(count for _, count in self._waiting)
            self._waiting.clear()
        if self._waitingBytes:
            budget = self._budget
            budget.pending -= self._waitingBytes
            budget.holders.pop(self, None)
            self._waitingBytes = 0
        return missed

    def overBudget(self) -> None:
        """
        All subscribers together hold more than the service's bound, and
        this one is furthest behind: apply C{slow} to what waits for it
        (abort the connection, or forget the messages, counted as missed).
        """
        self._tooSlow(0, furthest=True)

    def _tooSlow(self, count: int, furthest: bool = False) -> None:
        """
        Apply C{slow}: to the chunk of C{count} messages that does not fit
        within C{max_pending}; or, with C{furthest}, to that chunk (if any)
        and everything that waits, past the service's bound.
        """
        budget = self._budget
        if self.limits.slow == "drop":
            if furthest:
                count += self.discard()
                budget.dropped += count
            if not self._missed:
                if furthest:
                    self.log.warn(
                        "Subscriber {peer} of backplane {name} is the furthest behind while "
                        "all subscribers hold more than max_pending_total ({limit} bytes): "
                        "it misses messages until it catches up",
                        peer=self.owner.peer, name=self.name, limit=budget.limit,
                    )
                else:
                    self.log.warn(
                        "Subscriber {peer} of backplane {name} is more than max_pending "
                        "({limit} bytes) behind: it misses messages until it catches up",
                        peer=self.owner.peer, name=self.name, limit=self._maxPending,
                    )
            self._missed += count
            self.dropped += count
            for counters in self.counters:
                counters.dropped += count
            return
        for counters in self.counters:
            counters.slow_disconnects += 1
        if furthest:
            budget.disconnects += 1
            self.log.warn(
                "Disconnecting slow subscriber {peer} of backplane {name}: the furthest "
                "behind ({pending} bytes) while all subscribers hold more than "
                "max_pending_total ({limit} bytes)",
                peer=self.owner.peer, name=self.name, pending=self._waitingBytes,
                limit=budget.limit,
            )
        else:
            self.log.warn(
                "Disconnecting slow subscriber {peer} of backplane {name}: more than "
                "max_pending ({limit} bytes) waiting to be sent",
                peer=self.owner.peer, name=self.name, limit=self._maxPending,
            )
        self._aborted = True
        self.owner.outputTooSlow()
        self.discard()
        # Not loseConnection: that would wait, holding the backlog, for a
        # consumer that is not reading.
        self.transport.abortConnection()

    # IPushProducer: the transport tells us when its buffer is full (on every
    # write while it is), and when it is empty again.

    def pauseProducing(self) -> None:
        self._paused = True
        if self._waiting is None:
            self._waiting = deque()

    def resumeProducing(self) -> None:
        self._paused = False
        waiting = self._waiting
        if waiting:
            budget = self._budget
            while waiting and not self._paused:
                data = waiting.popleft()[0]
                self._waitingBytes -= len(data)
                budget.pending -= len(data)
                self.transport.write(data)  # pauses us again once the buffer is full
            if not self._waitingBytes:
                budget.holders.pop(self, None)
        missed = self._missed
        if missed and not self._paused:
            self.log.info(
                "Subscriber {peer} of backplane {name} caught up, having missed {missed} "
                "messages", peer=self.owner.peer, name=self.name, missed=missed,
            )
            self._missed = 0
            self.owner.outputCaughtUp(missed)

    def stopProducing(self) -> None:
        pass
