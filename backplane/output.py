"""
The output side of a network subscriber: a writer kept within
C{max_pending} that knows when its consumer is too slow (L{BoundedWriter}),
and a port's write coalescer (L{Linger}).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from backplane.budget import PendingBudget
from backplane.interfaces import ILineSink

if TYPE_CHECKING:
    from backplane.protocols import Limits
    from backplane.service import Backplane, Subscription

#: What a subscriber's output may hold back under C{linger}: once this many
#: bytes linger, they are written at once.
LINGER_BYTES = 64 * 1024

#: A read of this many bytes or more is not followed by a hold under
#: C{linger} (L{Linger.holdReading}): its publisher sends fast enough that
#: its reads are large anyway, and holding it would cap it at a read (at
#: most 64 KiB, Twisted's) a C{linger}.
LINGER_READ_BYTES = 16 * 1024


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


def sendAtOnce(transport: object) -> None:
    """
    Have a subscriber's transport send each chunk as soon as it is written,
    as Redis does: Nagle's algorithm would hold it back for the peer's ACK
    (C{TCP_NODELAY}).  Nothing on a transport without TCP: a UNIX socket
    (whose C{setTcpNoDelay} fails with older Twisted), a test's.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except OSError:
            pass  # not TCP


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


class Linger:
    """
    The write coalescer of a port with C{linger}: its subscribers' chunks
    are held back for at most C{delay} seconds, so that a subscriber of a
    busy backplane gets one write for many chunks.

    A L{BoundedWriter} given a L{Linger} keeps what it is handed (while its
    transport is not paused) and tells the L{Linger} when it holds its first
    byte (L{add}).  The port writes at most once a C{delay}: a subscriber
    handed something when the port has written nothing for C{delay} (it is
    quiet) writes it at once; otherwise it holds it, and one timer, for
    every subscriber of the port, fires C{delay} after the port's last
    write, when every subscriber that holds something writes it
    (L{BoundedWriter.release}).  So a lone message goes out at once, under
    steady traffic each subscriber gets one write a C{delay}, and what a
    subscriber holds is written less than C{delay} after its first byte,
    whatever comes after it: a deadline, not an idle timer that steady
    traffic would keep postponing.  A subscriber that holds C{maxBytes}
    writes them at once.

    The same timer coalesces reads: a client of the port that publishes is
    not read again, once read, until the timer fires (L{holdReading}), so
    that what it sends meanwhile waits in the kernel's buffer and is read,
    framed and published as one chunk.  Where lines come one at a time,
    each read costs the server a wake-up, more than the line's own work;
    held, a publisher is read at most once a C{delay}, and a byte waits at
    most C{delay} more.  A read of L{LINGER_READ_BYTES} or more is not held:
    that publisher is read as fast as it sends.

    @ivar delay: the longest a byte waits, in seconds.
    @ivar maxBytes: what a subscriber may hold before it writes at once.
    """

    log = Logger()

    __slots__ = ("_call", "_clock", "_dirty", "_last", "_reading", "delay", "maxBytes")

    def __init__(self, delay: float, clock: IReactorTime | None = None, *,
                 maxBytes: int = LINGER_BYTES) -> None:
        """
        @param delay: seconds, more than 0.
        @param clock: the time (the global reactor by default, looked up
            when first needed).
        @param maxBytes: at least 1.
        @raise ValueError: C{delay} or C{maxBytes} is out of range.
        """
        if not delay > 0:
            raise ValueError("a Linger's delay must be more than 0")
        if maxBytes < 1:
            raise ValueError("a Linger's maxBytes must be at least 1")
        self.delay = delay
        self.maxBytes = maxBytes
        self._clock = clock
        # The writers (and groups) holding something, in the order they
        # started to.
        self._dirty: dict[Releasing, None] = {}
        # The connections not read until the timer fires.
        self._reading: dict[IPushProducer, None] = {}
        self._call: IDelayedCall | None = None
        # When the port last wrote what its subscribers were handed.
        self._last = float("-inf")

    @property
    def holding(self) -> int:
        """
        How many subscribers hold something back now.
        """
        return len(self._dirty)

    @property
    def heldReading(self) -> int:
        """
        How many connections are not read until the timer fires.
        """
        return len(self._reading)

    def _time(self) -> IReactorTime:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor
            clock = self._clock = reactor
            assert clock is not None
        return clock

    def add(self, writer: Releasing) -> None:
        """
        C{writer} holds its first byte.  On a quiet port (it has written
        nothing for C{delay}) it writes it at once; otherwise it writes
        when the timer fires, C{delay} after the port's last write.
        """
        clock = self._time()
        now = clock.seconds()
        wait = self._last + self.delay - now
        if self._call is None:
            if wait <= 0:
                self._last = now
                writer.release()
                return
            self._call = clock.callLater(wait, self.flush)
        self._dirty[writer] = None

    def holdReading(self, transport: IPushProducer) -> None:
        """
        A publishing connection of the port was just read: read it no more
        until the timer fires (C{transport.pauseProducing}, which stops a
        connection's reading, until C{resumeProducing}).  Its next bytes
        then wait at most C{delay}, in the kernel's buffer, and are read
        together.
        """
        transport.pauseProducing()
        self._reading[transport] = None
        if self._call is None:
            self._call = self._time().callLater(self.delay, self.flush)

    def remove(self, writer: Releasing) -> None:
        """
        C{writer} holds nothing any more (it wrote early, paused, or its
        consumer is gone).  The timer stops once nobody holds anything.
        """
        dirty = self._dirty
        if (dirty.pop(writer, 0) is None and not dirty and not self._reading
                and self._call is not None):
            self._call.cancel()
            self._call = None

    def flush(self) -> None:
        """
        Have every subscriber that holds something write it now, and read
        every connection held again (the timer calls it).
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if self._reading:
            reading, self._reading = self._reading, {}
            for transport in reading:
                # A connection lost meanwhile stays unread (Twisted's
                # transports resume only one still connected).
                transport.resumeProducing()
        dirty, self._dirty = self._dirty, {}
        for writer in dirty:
            try:
                writer.release()
            except Exception:
                self.log.failure("Writing what {what} held failed", what=writer)
        if dirty:
            # What comes within delay from now waits for the next time.
            self._last = self._time().seconds()


class Releasing(Protocol):
    """
    What a L{Linger} has write what it holds: a L{BoundedWriter} or a
    L{LingerGroup}.
    """

    def release(self) -> None:
        """
        Write what is held back, now.
        """


@implementer(ILineSink)
class LingerGroup:
    """
    The subscribers of one backplane on a port with C{linger}, as one sink
    on the backplane: a chunk published is kept once, not once for each of
    them, and when the port's L{Linger} says so (at most C{delay} after
    the first byte kept, or once C{maxBytes} are kept) the chunks kept are
    handed, joined, to every member's L{BoundedWriter} (made without a
    L{Linger}), which writes them at once.

    So under C{linger} a message costs a list append however many
    subscribers there are, and each subscriber one call and one write a
    C{linger} period: at a moderate rate of small messages, most of what a
    delivery costs is gone.  A member that joins has what was kept before
    it written to the others first, so that it gets nothing published
    before it joined; one that leaves gets nothing more.  The backplane
    counts the group as as many subscribers as it has members
    (L{Backplane.represent<backplane.service.Backplane.represent>}).

    For subscribers of plain lines only: not those with ids, nor a client
    that publishes to the backplane it subscribes to (it must not get its
    own lines back), which hold their own chunks back instead.
    """

    log = Logger()

    __slots__ = ("_held", "_heldBytes", "_heldCount", "_memberList", "_members",
                 "_subscription", "backplane", "linger")

    def __init__(self, backplane: Backplane, linger: Linger) -> None:
        self.backplane = backplane
        self.linger = linger
        self._members: dict[BoundedWriter, None] = {}
        self._memberList: tuple[BoundedWriter, ...] = ()
        self._held: list[bytes] = []
        self._heldBytes = self._heldCount = 0
        self._subscription: Subscription | None = None

    def __repr__(self) -> str:
        return f"<LingerGroup of {len(self._members)} on {self.backplane.name!r}>"

    def __len__(self) -> int:
        return len(self._members)

    def join(self, writer: BoundedWriter) -> None:
        """
        Hand C{writer} every chunk published from now on (and the
        backplane's retained messages, as a subscriber gets them).
        """
        self.release()
        if self._subscription is not None:
            retained = self.backplane.retainedChunk()
            if retained is not None:
                writer.deliver(*retained)
        self._members[writer] = None
        self._memberList = tuple(self._members)
        if self._subscription is None:
            # The backplane hands the group, so its one member, the
            # retained messages.
            self._subscription = self.backplane.attach(self)
        self.backplane.represent(self._subscription, len(self._members))

    def leave(self, writer: BoundedWriter, *, handOver: bool = False) -> None:
        """
        Hand C{writer} nothing more.  The last member to leave takes the
        group off the backplane, and what it kept is forgotten.

        @param handOver: hand C{writer} what is kept first (it is closing,
            and writes what it has before its connection closes).
        """
        if writer not in self._members:
            return
        if handOver and self._held:
            writer.deliver(b"".join(self._held), self._heldCount)
            self.backplane.stats.deliveries += self._heldCount
        del self._members[writer]
        self._memberList = tuple(self._members)
        subscription = self._subscription
        if self._members:
            assert subscription is not None
            self.backplane.represent(subscription, len(self._members))
            return
        if self._held:
            self._held.clear()
            self._heldBytes = self._heldCount = 0
            self.linger.remove(self)
        if subscription is not None:
            self._subscription = None
            subscription.cancel()

    def deliver(self, data: bytes, count: int) -> None:
        """
        Keep a chunk for the members, until the port's L{Linger} has them
        written (or C{maxBytes} are kept).
        """
        held = self._held
        held.append(data)
        self._heldCount += count
        heldBytes = self._heldBytes = self._heldBytes + len(data)
        if heldBytes >= self.linger.maxBytes:
            if len(held) > 1:
                self.linger.remove(self)
            self.release()
        elif len(held) == 1:
            self.linger.add(self)

    def release(self) -> None:
        """
        Hand what is kept, joined, to every member now (the port's L{Linger}
        calls it).
        """
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        count = self._heldCount
        held.clear()
        self._heldBytes = self._heldCount = 0
        members = self._memberList
        for writer in members:
            try:
                writer.deliver(data, count)
            except Exception:
                self.log.failure("Writing to subscriber {peer} failed", peer=writer.owner.peer)
        # The backplane counted one delivery a message for the group.
        self.backplane.stats.deliveries += (len(members) - 1) * count


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

    Given a L{Linger} (a port's C{linger}), it holds back what it is handed
    while its transport is not paused, and writes it all at once when the
    L{Linger} says so, or as soon as it holds C{Linger.maxBytes}.  If its
    transport pauses it meanwhile, what it held waits like anything else.

    @ivar dropped: messages this consumer missed, all told.
    """

    log = Logger()

    # One a subscriber: slots keep each small (see docs/performance.md, idle).
    __slots__ = ("_aborted", "_budget", "_held", "_heldBytes", "_heldCount", "_linger",
                 "_maxPending", "_missed", "_paused", "_socket", "_waiting", "_waitingBytes",
                 "counters", "dropped", "limits", "name", "owner", "transport")

    def __init__(self, owner: OutputOwner, transport: OutputTransport, limits: Limits, *,
                 name: str, counters: Sequence[SlowCounters] = (),
                 budget: PendingBudget | None = None,
                 linger: Linger | None = None) -> None:
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
        @param linger: the port's write coalescer, or L{None} (C{linger =
            0}): every chunk is written at once.
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
        self._linger = linger
        # Held back under linger, while not paused (made on the first chunk).
        self._held: list[bytes] | None = None
        self._heldBytes = self._heldCount = 0

    def __repr__(self) -> str:
        return f"<BoundedWriter of {self.owner.peer} on {self.name!r}>"

    @property
    def paused(self) -> bool:
        """
        Whether the transport's buffer is full (what is delivered waits).
        """
        return self._paused

    @property
    def pending(self) -> int:
        """
        Bytes waiting here: for the transport to drain, or held back under
        C{linger}.
        """
        return self._waitingBytes + self._heldBytes

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write C{data} (C{count} messages) to the consumer, or keep it while
        the transport's buffer is full, within C{max_pending}; under
        C{linger}, hold it back for a while.
        """
        if not self._paused:
            linger = self._linger
            if linger is not None:
                held = self._held
                if held is None:
                    held = self._held = []
                held.append(data)
                heldBytes = self._heldBytes = self._heldBytes + len(data)
                self._heldCount += count
                if heldBytes >= linger.maxBytes:
                    if len(held) > 1:
                        linger.remove(self)
                    self.release()
                elif len(held) == 1:
                    linger.add(self)
                return
            # As in release, with _drained and _sendNow inlined: this runs
            # once a chunk for every subscriber, and a clock tick to 10,000
            # idle subscribers is 10,000 of it.
            sock = self._socket
            if sock is not None:
                transport: Any = self.transport
                # _drained (the same use of Twisted's internals).
                if not (transport.dataBuffer or transport._tempDataBuffer
                        or transport.disconnecting):
                    try:
                        sent = sock.send(data)
                    except OSError:
                        # Would block, interrupted, or failed (then the
                        # transport meets the error too, and closes).
                        sent = 0
                    if sent == len(data):
                        return
                    data = data[sent:]
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

    def release(self) -> None:
        """
        Write at once what is held back under C{linger} (its L{Linger} calls
        it, and it does itself once it holds C{Linger.maxBytes}).
        """
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._heldBytes = self._heldCount = 0
        # Straight to the socket while the transport holds nothing, the
        # rest through the transport (see _directSocket).
        if self._socket is not None and _drained(self.transport):
            data = _sendNow(self._socket, data)
            if not data:
                return
        self.transport.write(data)

    def flush(self) -> None:
        """
        Hand everything that waits or is held back to the transport at once
        (before closing: the transport then sends it before it closes).
        """
        if self._held:
            self.transport.writeSequence(self._held)
        if self._waiting:
            self.transport.writeSequence([data for data, _ in self._waiting])
        self.discard()

    def discard(self) -> int:
        """
        Forget everything that waits or is held back (the connection is
        gone), and release it from the budget; once a plain TCP or UNIX
        connection is lost, what its transport still buffers too
        (L{_release}).

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
        if self._held:
            self._held = None
            self._heldBytes = self._heldCount = 0
            assert self._linger is not None
            self._linger.remove(self)
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
        if self._held:
            # Held back under linger: it now waits, ahead of what comes next
            # (nothing else waits while the writer is not paused).
            # Its messages are counted as the last chunk's, should they be
            # dropped.
            held, last = self._held[:-1], self._held[-1]
            self._waiting.extend((data, 0) for data in held)
            self._waiting.append((last, self._heldCount))
            budget = self._budget
            if not self._waitingBytes:
                budget.holders[self] = None
            self._waitingBytes += self._heldBytes
            budget.pending += self._heldBytes
            self._held = None
            self._heldBytes = self._heldCount = 0
            assert self._linger is not None
            self._linger.remove(self)

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
