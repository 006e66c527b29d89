"""
The outbox of acknowledged publishing (L{backplane.outbox}): in memory and
on disk, acknowledgements, the order of what is resent, the bound and its
drops, new publisher ids, and a spool that is closed, or killed, and opened
again; then every way through it against a model of the server
(L{tests.ackserver.Upstream}), checked to publish every line exactly once.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from backplane.errors import NotAcknowledged
from backplane.history import DiskStore, StoreError
from backplane.history import disk as diskModule
from backplane.outbox import READ_BYTES, Outbox
from tests.ackserver import Connection, Upstream
from tests.test_history import FailingDisk, abandon, folderOf
from tests.test_relay import LogCapture


def lines(first: int, count: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(first, first + count))


def takeAll(outbox: Outbox) -> bytes:
    """
    Everything the outbox has to write now, as it gives it.
    """
    data = b""
    while outbox:
        chunk, count = outbox.take()
        assert chunk.count(b"\n") == count
        data += chunk
    return data


class MemoryOutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.outbox = Outbox.inMemory(10)

    def test_helloThenLinesOldestFirst(self):
        """
        A connection begins with HELLO ID 0, then every line kept, in order.
        """
        outbox = self.outbox
        outbox.add(lines(1, 2), 2)
        outbox.add(lines(3, 1), 1)
        self.assertEqual((outbox.lines, outbox.unacknowledged, bool(outbox)), (3, 3, True))
        self.assertRegex(outbox.publisherId, r"\A[0-9a-z]{10}\Z")
        self.assertEqual(outbox.hello(), b"HELLO %s 0\n" % outbox.publisherId.encode())
        self.assertEqual(takeAll(outbox), lines(1, 3))
        self.assertEqual((outbox.lines, outbox.unacknowledged, bool(outbox)), (0, 3, False))
        self.assertRaises(IndexError, outbox.take)
        self.assertEqual(outbox.resent, 0)

    def test_writtenAtOnce(self):
        """
        A chunk written at once is kept until acknowledged, and not written
        again on this connection.
        """
        outbox = self.outbox
        outbox.hello()
        self.assertEqual(outbox.written(lines(1, 2), 2), 0)
        self.assertEqual((outbox.lines, outbox.unacknowledged, bool(outbox)), (0, 2, False))
        self.assertEqual(outbox.acknowledge(2), 2)
        self.assertEqual(outbox.unacknowledged, 0)

    def test_acknowledgements(self):
        """
        ACK N counts the lines of this connection, cumulative; an older or
        equal N changes nothing; more than were sent is an error.
        """
        outbox = self.outbox
        outbox.add(lines(1, 5), 5)
        outbox.hello()
        takeAll(outbox)
        self.assertEqual(outbox.acknowledge(2), 2)
        self.assertEqual(outbox.acknowledge(2), 0)
        self.assertEqual(outbox.acknowledge(1), 0)
        self.assertEqual((outbox.acked, outbox.unacknowledged), (2, 3))
        self.assertRaises(ValueError, outbox.acknowledge, 6)
        self.assertEqual(outbox.acknowledge(5), 3)
        self.assertEqual(outbox.unacknowledged, 0)

    def test_resentAfterAReconnect(self):
        """
        After a reconnect, HELLO says how many lines were acknowledged, and
        the others follow, oldest first, before the new ones; ACK N then
        counts from there.
        """
        outbox = self.outbox
        outbox.hello()
        outbox.written(lines(1, 6), 6)
        outbox.acknowledge(2)
        outbox.disconnected()
        outbox.add(lines(7, 1), 1)
        self.assertEqual((outbox.lines, outbox.unacknowledged), (5, 5))
        self.assertEqual(outbox.hello(), b"HELLO %s 2\n" % outbox.publisherId.encode())
        self.assertEqual(takeAll(outbox), lines(3, 5))
        self.assertEqual(outbox.resent, 4)
        self.assertEqual(outbox.acknowledge(3), 3)
        self.assertEqual(outbox.acked, 5)
        outbox.disconnected()
        self.assertEqual(outbox.hello(), b"HELLO %s 5\n" % outbox.publisherId.encode())
        self.assertEqual(takeAll(outbox), lines(6, 2))
        self.assertEqual(outbox.resent, 6)

    def test_ackAfterTheConnectionIsGoneIsIgnored(self):
        outbox = self.outbox
        outbox.hello()
        outbox.written(lines(1, 2), 2)
        outbox.disconnected()
        self.assertEqual(outbox.acknowledge(2), 0)
        self.assertEqual(outbox.acked, 0)

    def test_whenAcknowledged(self):
        outbox = self.outbox
        self.successResultOf(outbox.whenAcknowledged())
        outbox.add(lines(1, 3), 3)
        first, all = outbox.whenAcknowledged(1), outbox.whenAcknowledged()
        outbox.hello()
        takeAll(outbox)
        outbox.acknowledge(2)
        self.successResultOf(first)
        self.assertNoResult(all)
        outbox.acknowledge(3)
        self.successResultOf(all)

    def test_boundDropsTheOldest(self):
        """
        Past the bound the oldest lines not acknowledged are dropped, and
        counted; the next HELLO begins a new publisher id, from the first
        line kept, whose line 1 is that line; waiters for dropped lines fail.
        """
        outbox = self.outbox
        old = outbox.publisherId
        self.assertEqual(outbox.add(lines(1, 8), 8), 0)
        waiting = outbox.whenAcknowledged(3)
        later = outbox.whenAcknowledged(4)
        self.assertEqual(outbox.add(lines(9, 5), 5), 3)
        self.assertEqual(outbox.add(lines(14, 1), 1), 1)
        self.assertEqual((outbox.unacknowledged, outbox.lines), (10, 10))
        self.assertNoResult(waiting)
        self.assertEqual(outbox.hello(), b"HELLO %s.4 0\n" % old.encode())
        self.failureResultOf(waiting, NotAcknowledged)
        self.failureResultOf(later, NotAcknowledged)
        self.assertEqual(takeAll(outbox), lines(5, 10))
        self.assertEqual(outbox.acknowledge(10), 10)
        self.assertEqual((outbox.acked, outbox.unacknowledged), (14, 0))
        outbox.disconnected()
        self.assertEqual(outbox.hello(), b"HELLO %s.4 10\n" % old.encode())

    def test_droppingWrittenLinesKeepsTheConnection(self):
        """
        Dropping lines that were written on this connection changes
        nothing for it: upstream may still acknowledge them.
        """
        outbox = self.outbox
        outbox.hello()
        outbox.written(lines(1, 10), 10)
        self.assertEqual(outbox.written(lines(11, 3), 3), 3)
        self.assertFalse(outbox.behind)
        self.assertEqual(outbox.acknowledge(13), 13)
        outbox.disconnected()
        self.assertEqual(outbox.hello(), b"HELLO %s 13\n" % outbox.publisherId.encode())

    def test_droppingLinesNotWrittenIsBehind(self):
        """
        Dropping lines not yet written on this connection: it must be
        closed (behind); the next one begins a new publisher id.
        """
        outbox = self.outbox
        old = outbox.publisherId
        outbox.hello()
        outbox.written(lines(1, 4), 4)
        outbox.add(lines(5, 8), 8)
        self.assertFalse(outbox.behind)
        outbox.add(lines(13, 3), 3)
        self.assertTrue(outbox.behind)
        outbox.disconnected()
        self.assertFalse(outbox.behind)
        self.assertEqual(outbox.hello(), b"HELLO %s.5 0\n" % old.encode())
        self.assertEqual(takeAll(outbox), lines(6, 10))

    def test_refusedBeginsANewId(self):
        """
        After an ERR, the next HELLO begins a new publisher id with the
        lines not acknowledged (unless no line of the old one was
        acknowledged: then it is the same).
        """
        outbox = self.outbox
        old = outbox.publisherId
        outbox.hello()
        outbox.refused()
        outbox.disconnected()
        self.assertEqual(outbox.hello(), b"HELLO %s 0\n" % old.encode())
        outbox.written(lines(1, 4), 4)
        outbox.acknowledge(3)
        outbox.refused()
        outbox.disconnected()
        self.assertEqual(outbox.hello(), b"HELLO %s.3 0\n" % old.encode())
        self.assertEqual(takeAll(outbox), lines(4, 1))

    def test_memoryKeepsItsLinesWhenClosed(self):
        outbox = self.outbox
        outbox.add(lines(1, 2), 2)
        self.successResultOf(outbox.close())
        outbox.open()
        self.assertEqual(outbox.unacknowledged, 2)

    def test_bad(self):
        self.assertRaises(ValueError, Outbox.inMemory, 0)

    def test_readsInBoundedChunks(self):
        outbox = Outbox.inMemory(100_000)
        line = b"x" * 1000 + b"\n"
        for _ in range(1000):
            outbox.add(line, 1)
        outbox.hello()
        data, count = outbox.take()
        self.assertLessEqual(len(data), READ_BYTES)
        self.assertEqual(len(data), count * len(line))


class SpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(folderOf(self), "spool")
        self.clock = Clock()
        self.boot = "boot-1"
        self.patch(diskModule, "bootId", lambda: self.boot)
        self.logs = LogCapture(self)
        self.outboxes: list[Outbox] = []
        self.addCleanup(self.closeAll)

    def closeAll(self) -> None:
        for outbox in self.outboxes:
            outbox.spool._closeFiles()  # type: ignore[attr-defined]

    def open(self, **options) -> Outbox:
        options.setdefault("clock", self.clock)
        outbox = Outbox.onDisk(self.path, **options)
        self.outboxes.append(outbox)
        return outbox

    def test_survivesARestart(self):
        """
        Closed and opened again, the spool has the same publisher id, knows
        how far upstream acknowledged, and resends the rest.
        """
        outbox = self.open()
        publisherId = outbox.publisherId
        outbox.hello()
        outbox.written(lines(1, 5), 5)
        outbox.acknowledge(3)
        waiting = outbox.whenAcknowledged()
        self.successResultOf(outbox.close())
        self.failureResultOf(waiting, NotAcknowledged)
        outbox = self.open()
        self.assertEqual((outbox.publisherId, outbox.acked, outbox.unacknowledged),
                         (publisherId, 3, 2))
        self.assertEqual(outbox.hello(), b"HELLO %s 3\n" % publisherId.encode())
        self.assertEqual(takeAll(outbox), lines(4, 2))
        self.assertEqual(outbox.resent, 2, "after a restart, counted as sent again")
        *_, event = self.logs.matching("lines not yet acknowledged")
        self.assertEqual((event["path"], event["count"]), (self.path, 2))

    def test_openAgainAfterClose(self):
        outbox = self.open()
        outbox.add(lines(1, 2), 2)
        self.successResultOf(outbox.close())
        self.assertRaises(StoreError, outbox.add, lines(3, 1), 1)
        outbox.open()
        outbox.add(lines(3, 1), 1)
        outbox.hello()
        self.assertEqual(takeAll(outbox), lines(1, 3))

    def test_killedResendsFromTheDurableMark(self):
        """
        Killed (no close), the spool has every line added; it knows the
        acknowledgements made durable by an fsync, and resends from there,
        never lacking a line: acknowledged lines are forgotten only once the
        mark saying so is durable.
        """
        outbox = self.open(fsyncInterval=0.05)
        publisherId = outbox.publisherId
        outbox.hello()
        outbox.written(lines(1, 5), 5)
        outbox.acknowledge(2)
        self.clock.advance(0.05)
        outbox.acknowledge(4)
        outbox.written(lines(6, 1), 1)
        abandon(outbox.spool)  # type: ignore[arg-type]
        outbox = self.open()
        self.assertEqual((outbox.publisherId, outbox.acked), (publisherId, 2))
        self.assertEqual(outbox.hello(), b"HELLO %s 2\n" % publisherId.encode())
        self.assertEqual(takeAll(outbox), lines(3, 4))

    def test_acknowledgedFilesGo(self):
        """
        The files of acknowledged lines are removed (all but the one being
        written).
        """
        outbox = self.open(maxBytes=4000)
        outbox.hello()
        for first in range(1, 400, 10):
            outbox.written(lines(first, 10), 10)
            outbox.acknowledge(first + 9)
            self.clock.advance(0.05)
        segments = [name for name in os.listdir(self.path) if name.endswith(".seg")]
        self.assertEqual(len(segments), 1)
        self.assertEqual(outbox.unacknowledged, 0)

    def test_boundDrops(self):
        """
        Past spool_bytes the oldest lines are dropped, counted; a new
        publisher id begins; the same after a restart.
        """
        outbox = self.open(maxBytes=4000)
        publisherId = outbox.publisherId
        dropped = sum(outbox.add(lines(first, 10), 10) for first in range(1, 400, 10))
        self.assertGreater(dropped, 0)
        kept = outbox.unacknowledged
        self.assertEqual(dropped + kept, 400)
        self.successResultOf(outbox.close())
        outbox = self.open(maxBytes=4000)
        self.assertEqual(outbox.hello(), b"HELLO %s.%d 0\n" % (publisherId.encode(), dropped))
        self.assertEqual(takeAll(outbox), lines(dropped + 1, kept))
        self.successResultOf(outbox.close())
        outbox = self.open(maxBytes=4000)
        self.assertEqual(outbox.publisherId, f"{publisherId}.{dropped}")

    def test_spoolThatCannotWrite(self):
        """
        A spool whose write fails loses its lines not acknowledged (counted
        as dropped, logged); a connection must close (behind); the next
        HELLO is of a new publisher id.
        """
        outbox = self.open()
        old = outbox.publisherId
        outbox.hello()
        outbox.written(lines(1, 3), 3)
        outbox.acknowledge(1)
        waiting = outbox.whenAcknowledged()
        FailingDisk(self, outbox.spool, errno.ENOSPC)  # type: ignore[arg-type]
        self.assertEqual(outbox.add(lines(4, 1), 1), 3)
        self.assertTrue(outbox.behind)
        self.failureResultOf(waiting, NotAcknowledged)
        [event] = self.logs.matching("lost the {count} lines not yet acknowledged")
        self.assertEqual(event["count"], 2)
        outbox.disconnected()
        hello = outbox.hello()
        self.assertNotIn(old.encode(), hello)
        self.assertTrue(hello.endswith(b" 0\n"), hello)
        self.assertFalse(outbox)


class Machine(RuleBasedStateMachine):
    """
    An outbox (in memory, or a spool that is also stopped, or killed, and
    opened again) and a model of the server that may crash (losing what it
    had not acknowledged), through lines added, connections made and lost,
    lines sent, acknowledgements that arrive late, and refusals: every line
    reaches the server once, in order; and in the end, connected again and
    acknowledged, every line arrived.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="outbox-machine-")
        self.clock = Clock()
        self.realBootId = diskModule.bootId
        diskModule.bootId = lambda: "boot-1"
        self.upstream = Upstream()
        self.connection: Connection | None = None
        # ACKs the server wrote that the outbox has not read yet.
        self.acks: list[bytes] = []
        self.made = 0
        self.spool = False
        self.outbox: Outbox | None = None

    @initialize(spool=st.booleans())
    def begin(self, spool: bool) -> None:
        self.spool = spool
        self.outbox = self.openOutbox()

    def openOutbox(self) -> Outbox:
        if self.spool:
            # Small files, so that acknowledged ones are removed.
            path = os.path.join(self.folder, "spool")
            return Outbox(lambda: DiskStore.open(path, segmentBytes=300, fsyncInterval=0.05,
                                                 clock=self.clock), path=path)
        return Outbox.inMemory(1_000_000)

    def teardown(self) -> None:
        try:
            if self.outbox is not None:
                if self.connection is not None:
                    self.disconnect()
                self.connect()
                self.send(all=True)
                self.serverAcknowledges()
                while self.acks:
                    self.ackArrives()
                assert self.upstream.published == [b"line %d" % i
                                                   for i in range(1, self.made + 1)]
                assert self.outbox.unacknowledged == 0
        finally:
            if self.outbox is not None and self.spool:
                self.outbox.spool._closeFiles()  # type: ignore[attr-defined]
            diskModule.bootId = self.realBootId
            shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, data: bytes) -> None:
        assert self.connection is not None and self.outbox is not None
        reply = self.connection.receive(data)
        if reply:
            assert reply.startswith(b"ERR ")
            self.outbox.refused()
            self.disconnect()

    @rule(count=st.integers(1, 20))
    def add(self, count: int) -> None:
        assert self.outbox is not None
        data = lines(self.made + 1, count)
        self.made += count
        if self.connection is not None and not self.outbox:
            self.outbox.written(data, count)
            self.write(data)
        else:
            self.outbox.add(data, count)

    @precondition(lambda self: self.connection is None)
    @rule()
    def connect(self) -> None:
        assert self.outbox is not None
        self.connection = self.upstream.connect()
        self.write(self.outbox.hello())

    @precondition(lambda self: self.connection is not None)
    @rule(all=st.booleans())
    def send(self, all: bool) -> None:
        assert self.outbox is not None
        while self.outbox and self.connection is not None:
            data, _ = self.outbox.take()
            self.write(data)
            if not all:
                return

    @precondition(lambda self: self.connection is not None)
    @rule()
    def serverAcknowledges(self) -> None:
        assert self.connection is not None
        self.clock.advance(0.03)
        reply = self.connection.ack()
        if reply:
            self.acks.append(reply)

    @precondition(lambda self: self.connection is not None and self.acks)
    @rule()
    def ackArrives(self) -> None:
        assert self.outbox is not None
        self.outbox.acknowledge(int(self.acks.pop(0)[4:]))

    @precondition(lambda self: self.connection is not None)
    @rule(crash=st.booleans(), publisher=st.sampled_from(["runs", "stops", "is killed"]))
    def disconnect(self, crash: bool = False, publisher: str = "runs") -> None:
        """
        The connection is lost; the server may crash, and the publisher
        (with a spool) stop or be killed.
        """
        assert self.connection is not None and self.outbox is not None
        self.connection.lost()
        self.connection = None
        self.acks.clear()
        self.outbox.disconnected()
        if crash:
            self.upstream.crash()
        if publisher != "runs" and self.spool:
            if publisher == "is killed":
                abandon(self.outbox.spool)  # type: ignore[arg-type]
            else:
                self.outbox.close()
            self.outbox = self.openOutbox()

    @invariant()
    def publishedInOrderOnce(self) -> None:
        published = self.upstream.published
        assert published == [b"line %d" % i for i in range(1, len(published) + 1)], published
        assert not self.upstream.errors, self.upstream.errors


Machine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestOutboxAgainstTheServer = Machine.TestCase
