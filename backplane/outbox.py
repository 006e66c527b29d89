"""
The publisher's side of acknowledged publishing (SPEC section 10): an
L{Outbox} keeps every line going to an C{acks = true} port until upstream
acknowledges it, and numbers the lines for C{HELLO}, so that what a cut
connection, an upstream restart or (with a spool) the publisher's own
restart interrupts is sent again, and upstream skips what it already has.

How the lines are numbered: the outbox keeps its lines in a L{Spool} (a
L{MemoryHistory}, or a L{DiskStore} in a folder), whose SEQs number them.
Upstream knows them as the lines of one publisher id: the spool's epoch
(random, and on disk kept across restarts), so that line C{SEQ} is that
publisher's line C{SEQ}.  Each connection begins with C{HELLO ID ACKED} and
goes on with the lines after C{ACKED}, oldest first; C{ACK N} says that the
first N of them are safe.

Upstream refuses a C{HELLO} that skips lines it never had, so an outbox that
had to drop lines before they were acknowledged (past its bound) cannot go
on with the same id: it begins a new one, C{EPOCH.ORIGIN}, whose line 1 is
the outbox's line C{ORIGIN + 1}.  It does the same when upstream refuses its
C{HELLO} (C{ERR}: upstream lost lines it had acknowledged, with its store).
How far upstream acknowledged, and the origin, are the spool's marks
(C{acked.EPOCH}, C{origin.EPOCH}); a disk spool makes them durable at its
next fsync, and forgets the acknowledged lines only after that, so that
after a C{kill -9} it never lacks a line it would have to send: at worst it
sends again lines that upstream acknowledged in the last moments, and
upstream skips them.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from backplane.errors import NotAcknowledged
from backplane.history import DiskStore, MemoryHistory

#: The default bound of a spool's files: 256 MiB.
DEFAULT_SPOOL_BYTES = 256 * 1024 * 1024
#: The default seconds between a spool's fsyncs while it has unsynced lines.
DEFAULT_SPOOL_FSYNC_INTERVAL = 0.05
#: The most bytes read from the spool at once, to be sent.
READ_BYTES = 256 * 1024


class Spool(Protocol):
    """
    What an L{Outbox} keeps its lines in: the parts of a
    L{History<backplane.history.History>} it uses, and L{forget}.  A
    L{MemoryHistory} or a L{DiskStore}.
    """

    @property
    def epoch(self) -> str:
        """
        The epoch of the SEQs; it changes only when continuity is lost.
        """

    @property
    def first(self) -> int:
        """
        The SEQ of the oldest line kept; C{last + 1} when none is.
        """

    @property
    def last(self) -> int:
        """
        The SEQ of the latest line appended; 0 if none.
        """

    def append(self, data: bytes, count: int) -> int:
        """
        Keep a chunk of C{count} lines; return the SEQ of its first one.
        """

    def read(self, after: int, maxBytes: int) -> tuple[bytes, int, int]:
        """
        The oldest lines kept after SEQ C{after}: C{(data, count, firstSeq)}.
        """

    def forget(self, upTo: int) -> None:
        """
        The lines up to SEQ C{upTo} are no longer needed (once the marks set
        before are durable).
        """

    def mark(self, publisherId: str) -> int:
        """
        A mark set before (0 if none).
        """

    def setMark(self, publisherId: str, seq: int) -> None:
        """
        Set a mark (durable at the next fsync of a disk spool).
        """

    def close(self) -> Deferred[None]:
        """
        Make everything durable and release the files.
        """


class Outbox:
    """
    Lines going to an C{acks = true} port, kept until upstream acknowledges
    them (see the module's docstring): in memory, the newest C{size} lines
    not acknowledged (L{inMemory}), or in a folder on disk, which survives
    restarts (L{onDisk}).

    Whoever connects it (a L{Relay<backplane.relay.Relay>}) says L{hello}
    on each connection and writes what it returns first, then writes what
    L{take} gives (lines not yet written on this connection, oldest first)
    and the lines it L{add}s or has L{written} at once; it hands on each
    C{ACK N} (L{acknowledge}) and C{ERR} (L{refused}), and says when the
    connection is gone (L{disconnected}).  When lines that were not yet
    written are dropped past the bound, or a disk spool loses its lines, the
    connection cannot go on (L{behind}): it must be closed, and the next
    C{HELLO} begins a new publisher id.

    @ivar spool: the L{Spool} the lines are in.
    @ivar path: the spool's folder; L{None} in memory.
    @ivar acked: the SEQ up to which upstream acknowledged the lines (or they
        were given up, dropped before it did).
    @ivar origin: the SEQ before the first line of the current publisher id.
    @ivar sent: the SEQ of the last line written on this connection (with no
        connection: where the next one begins).
    @ivar resent: lines written again, having been written before (after a
        reconnect, or with a spool after a restart) without being
        acknowledged.
    """

    log = Logger()

    def __init__(self, open: Callable[[], Spool], *, path: str | None = None) -> None:
        """
        Use L{inMemory} or L{onDisk}.

        @param open: makes (opens) the spool; called again by L{open} after
            L{close} when C{path} is given.
        @param path: the spool's folder, for log lines; L{None} in memory.
        """
        self._open = open
        self.path = path
        self.spool = open()
        self.resent = 0
        self._closed = False
        self._waiters: list[tuple[int, int, Deferred[None]]] = []
        self._added = 0
        self._load()

    @classmethod
    def inMemory(cls, size: int) -> Outbox:
        """
        An outbox in memory, which keeps the newest C{size} lines not
        acknowledged; it does not survive the process, and its publisher id
        is new with each outbox.

        @raise ValueError: C{size} is less than 1.
        """
        if size < 1:
            raise ValueError("an outbox keeps at least 1 line")
        return cls(lambda: MemoryHistory(size, maxBytes=sys.maxsize))

    @classmethod
    def onDisk(cls, path: str, *, maxBytes: int = DEFAULT_SPOOL_BYTES,
               fsyncInterval: float = DEFAULT_SPOOL_FSYNC_INTERVAL,
               clock: IReactorTime | None = None) -> Outbox:
        """
        An outbox in the folder C{path} (a L{DiskStore}, made if missing),
        which survives restarts, C{kill -9} included, with its publisher id.

        @param maxBytes: the most bytes of the spool's files: past it the
            oldest lines are dropped, acknowledged or not.
        @param fsyncInterval: the most seconds between a write and its fsync.
        @param clock: the reactor's clock (default: the global reactor).
        @raise StoreError: the folder cannot be made or written, or another
            process has it open.
        """
        def open() -> Spool:
            return DiskStore.open(path, maxBytes=maxBytes, fsyncInterval=fsyncInterval,
                                  clock=clock)

        return cls(open, path=path)

    def _load(self) -> None:
        """
        Take the state the spool keeps: how far upstream acknowledged, and the
        origin of the publisher id.
        """
        spool = self.spool
        self.epoch = spool.epoch
        last = spool.last
        self.acked = min(spool.mark(self._key("acked")), last)
        self.origin = min(spool.mark(self._key("origin")), self.acked)
        # The highest SEQ known gone before upstream acknowledged it.
        self._lost = max(self.acked, spool.first - 1)
        self.sent = self._lost
        # The SEQ before the first line of this connection; None: none.
        self._base: int | None = None
        # The highest SEQ ever written: after a restart, assume all were.
        self._highest = last
        self._refused = False
        self._renumbered = False
        if self.path is not None:
            self.log.info("Outbox {path}: publisher {publisherId}, {count} lines not yet "
                          "acknowledged", path=self.path, publisherId=self.publisherId,
                          count=self.unacknowledged)

    def _key(self, name: str) -> str:
        return f"{name}.{self.epoch}"

    # What it holds.

    @property
    def publisherId(self) -> str:
        """
        The publisher id upstream knows these lines by: the spool's epoch,
        then C{.ORIGIN} once lines had to be given up.
        """
        if self.origin:
            return f"{self.epoch}.{self.origin}"
        return self.epoch

    @property
    def last(self) -> int:
        """
        The SEQ of the latest line added.
        """
        return self.spool.last

    @property
    def lines(self) -> int:
        """
        The lines not yet written (on this connection, or, with none, since
        the last acknowledged).
        """
        return self.spool.last - self.sent

    @property
    def unacknowledged(self) -> int:
        """
        The lines kept that upstream has not acknowledged.
        """
        return self.spool.last - max(self.acked, self._lost)

    def __bool__(self) -> bool:
        """
        Whether lines wait to be written.
        """
        return self.sent < self.spool.last

    @property
    def connected(self) -> bool:
        """
        Whether a connection said L{hello} and is not yet L{disconnected}.
        """
        return self._base is not None

    @property
    def behind(self) -> bool:
        """
        Whether the connection must be closed: lines it has not written yet
        were dropped (or a disk spool lost its lines), so what follows would
        not be what upstream counts.
        """
        return self._renumbered or (self._base is not None and self._lost > self.sent)

    # Lines in.

    def add(self, data: bytes, count: int) -> int:
        """
        Keep a chunk of C{count} lines, to be written after those waiting.

        @return: how many lines not yet acknowledged were dropped (the
            oldest: past the bound, or lost by a disk spool that failed).
        @raise StoreError: the disk spool was closed.
        """
        spool = self.spool
        before = spool.last
        spool.append(data, count)
        if spool.epoch == self.epoch:
            return self._drops()
        # A write failed, and the spool began a new epoch without its files:
        # the lines not acknowledged are gone, the SEQs begin again.
        gone = before - max(self.acked, self._lost)
        self.log.error("Outbox {path}: the spool cannot write, and lost the {count} lines "
                       "not yet acknowledged; a new publisher id begins",
                       path=self.path, count=gone)
        self._failUpTo(sys.maxsize, "the outbox's spool lost them (a failed write)")
        renumbered = self._base is not None
        self._loadAfterLoss()
        self._renumbered = renumbered
        return gone + self._drops()

    def _loadAfterLoss(self) -> None:
        self.epoch = self.spool.epoch
        self.acked = self.origin = 0
        self._lost = 0
        self.sent = 0
        self._base = None
        self._highest = 0
        self._refused = False

    def written(self, data: bytes, count: int) -> int:
        """
        Keep a chunk of C{count} lines that is being written on the
        connection at once (no line waits before it).

        @return: as L{add}.
        """
        dropped = self.add(data, count)
        if self._base is not None:
            self.sent = self.spool.last
            self._highest = max(self._highest, self.sent)
        return dropped

    def _drops(self) -> int:
        """
        Take note of the lines the spool no longer keeps that upstream did not
        acknowledge; return how many are newly gone.
        """
        gone = self.spool.first - 1
        floor = max(self.acked, self._lost)
        if gone <= floor:
            return 0
        self._lost = gone
        if self._base is None:
            self.sent = max(self.sent, gone)
        return gone - floor

    # The connection.

    def hello(self) -> bytes:
        """
        A connection begins: the C{HELLO} line to write first.  The lines
        after the last acknowledged follow it (L{take}).  If some of them
        are gone, or upstream refused the last C{HELLO}, a new publisher id
        begins with the first line kept.
        """
        start = max(self.acked, self._lost)
        if start > self.acked or (self._refused and self.acked > self.origin):
            self._begin(start)
        self._refused = self._renumbered = False
        self._base = self.sent = self.acked
        return b"HELLO %s %d\n" % (self.publisherId.encode("ascii"), self.acked - self.origin)

    def _begin(self, origin: int) -> None:
        """
        Begin a new publisher id, whose first line is the one after
        C{origin}.
        """
        self._failUpTo(origin, "dropped before upstream acknowledged them")
        self.origin = self.acked = origin
        self.spool.setMark(self._key("origin"), origin)
        self.spool.setMark(self._key("acked"), origin)
        self.spool.forget(origin)

    def take(self) -> tuple[bytes, int]:
        """
        The next lines to write on this connection, oldest first, as one
        chunk: C{(data, count)}.

        @raise IndexError: none wait, or the next ones are gone (L{behind}).
        """
        after = self.sent
        data, count, first = self.spool.read(after, READ_BYTES)
        if not count or first != after + 1:
            raise IndexError(f"no line to write after {after}")
        self.resent += max(0, min(self._highest, after + count) - after)
        self.sent = after + count
        self._highest = max(self._highest, self.sent)
        return data, count

    def acknowledge(self, count: int) -> int:
        """
        Upstream sent C{ACK count}: the first C{count} lines of this
        connection are safe.

        @return: how many lines this acknowledges that were not before.
        @raise ValueError: more lines than this connection has written.
        """
        base = self._base
        if base is None:
            return 0
        if count > self.sent - base:
            raise ValueError(f"ACK {count}, but only {self.sent - base} lines were sent on "
                             "this connection")
        acked = base + count
        if acked <= self.acked:
            return 0
        newly = acked - self.acked
        self.acked = acked
        self.spool.setMark(self._key("acked"), acked)
        self.spool.forget(acked)
        waiters = self._waiters
        while waiters and waiters[0][0] <= acked:
            heapq.heappop(waiters)[2].callback(None)
        return newly

    def refused(self) -> None:
        """
        Upstream refused the C{HELLO} (C{ERR}): it has fewer lines of this
        publisher id than it acknowledged (it lost them with its store).
        The next C{HELLO} begins a new publisher id with the lines not
        acknowledged.
        """
        self._refused = True

    def disconnected(self) -> None:
        """
        The connection is gone: the next begins with the lines after the
        last acknowledged.
        """
        self._base = None
        self._renumbered = False
        self.sent = max(self.acked, self._lost)

    # Waiting.

    def whenAcknowledged(self, seq: int | None = None) -> Deferred[None]:
        """
        A L{Deferred} that fires once upstream acknowledged the lines up to
        SEQ C{seq} (default: every line added so far), or fails with
        L{NotAcknowledged} if some of them were dropped first, or if a disk
        outbox is closed first.
        """
        if seq is None:
            seq = self.spool.last
        if seq <= self.acked:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._added += 1
        heapq.heappush(self._waiters, (seq, self._added, d))
        return d

    def _failUpTo(self, seq: int, why: str) -> None:
        waiters = self._waiters
        failed = []
        while waiters and waiters[0][0] <= seq:
            failed.append(heapq.heappop(waiters))
        for upTo, _, d in failed:
            d.errback(Failure(NotAcknowledged(f"lines up to {upTo} will not be "
                                              f"acknowledged: {why}")))

    # Opening and closing.

    def open(self) -> None:
        """
        Open a disk outbox again after L{close} (nothing if it is open).

        @raise StoreError: as L{onDisk}.
        """
        if self._closed:
            self.spool = self._open()
            self._closed = False
            self._load()

    def close(self) -> Deferred[None]:
        """
        Close a disk outbox: its lines and marks are made durable, and the
        L{whenAcknowledged} waiters fail (the lines are sent when it is
        opened again).  An outbox in memory keeps its lines, for a start
        again.
        """
        if self.path is None or self._closed:
            return succeed(None)
        self._closed = True
        self._base = None
        self._failUpTo(sys.maxsize, f"the outbox closed first (they are kept in {self.path})")
        return self.spool.close()
