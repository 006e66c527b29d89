"""
BoundedWriter on its own: pause and resume, max_pending with slow =
"disconnect" and slow = "drop", what it counts, logs and tells its owner,
and the direct write to a plain TCP socket.
"""

import socket

from twisted.internet import tcp
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter, sendAtOnce
from backplane.protocols import Limits, PortStats
from backplane.service import BackplaneStats
from tests.test_relay import LogCapture


class Owner:
    """
    An OutputOwner that records what its writer tells it.
    """

    peer = "192.0.2.1:4000"

    def __init__(self):
        self.tooSlow = 0
        self.caughtUp: list[int] = []

    def outputTooSlow(self):
        self.tooSlow += 1

    def outputCaughtUp(self, missed):
        self.caughtUp.append(missed)


class Writes(StringTransport):
    """
    A StringTransport that records each write, and may pause its producer
    once more than C{bufferSize} bytes were written since it last resumed.
    """

    bufferSize: int | None = None

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.sinceResume = 0

    def write(self, data):
        self.writes.append(data)
        super().write(data)
        self.sinceResume += len(data)
        if self.bufferSize is not None and self.sinceResume > self.bufferSize:
            assert self.producer is not None
            self.producer.pauseProducing()

    def writeSequence(self, data):
        self.writes.append(b"".join(data))
        super().writeSequence(data)

    def resume(self):
        self.sinceResume = 0
        assert self.producer is not None
        self.producer.resumeProducing()


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.owner = Owner()
        self.transport = Writes()
        self.portStats = PortStats()
        self.backplaneStats = BackplaneStats()
        self.events = LogCapture(self).events

    def writer(self, **limits) -> BoundedWriter:
        writer = BoundedWriter(self.owner, self.transport, Limits(**limits), name="NEWS",
                               counters=(self.portStats, self.backplaneStats))
        self.transport.registerProducer(writer, True)
        return writer

    def logged(self, text, level=None):
        return [e for e in self.events if text in e.get("log_format", "")
                and (level is None or e["log_level"] == level)]

    def test_interfaces(self):
        writer = self.writer()
        verifyObject(ILineSink, writer)
        verifyObject(IPushProducer, writer)

    def test_writesAtOnceWhileNotPaused(self):
        writer = self.writer()
        writer.deliver(b"a\n", 1)
        writer.deliver(b"b\nc\n", 2)
        self.assertEqual(self.transport.writes, [b"a\n", b"b\nc\n"])
        self.assertEqual((writer.paused, writer.pending), (False, 0))

    def test_pausedItKeepsThenResumedItWritesInOrder(self):
        writer = self.writer(max_pending=100)
        writer.deliver(b"before\n", 1)
        writer.pauseProducing()
        writer.deliver(b"one\n", 1)
        writer.deliver(b"two\n", 1)
        self.assertEqual(self.transport.value(), b"before\n")
        self.assertEqual((writer.paused, writer.pending), (True, 8))
        writer.resumeProducing()
        self.assertEqual(self.transport.value(), b"before\none\ntwo\n")
        self.assertEqual((writer.paused, writer.pending), (False, 0))
        writer.deliver(b"three\n", 1)
        self.assertEqual(self.transport.value(), b"before\none\ntwo\nthree\n")

    def test_resumeStopsWhenTheTransportPausesAgain(self):
        writer = self.writer(max_pending=1000)
        self.transport.bufferSize = 5
        writer.pauseProducing()
        for n in range(6):
            writer.deliver(b"%d---\n" % n, 1)
        self.transport.resume()
        self.assertEqual(self.transport.writes, [b"0---\n", b"1---\n"])
        self.assertTrue(writer.paused)
        self.assertEqual(writer.pending, 20)
        self.transport.resume()
        self.transport.resume()
        self.assertEqual(self.transport.value(), b"".join(b"%d---\n" % n for n in range(6)))

    def test_disconnectPastMaxPending(self):
        writer = self.writer(max_pending=10)
        writer.pauseProducing()
        writer.deliver(b"12345\n", 1)
        writer.deliver(b"123\n", 1)
        self.assertFalse(self.transport.disconnecting, "10 bytes waiting is allowed")
        self.assertEqual(self.owner.tooSlow, 0)
        writer.deliver(b"x\n", 1)
        self.assertEqual(self.owner.tooSlow, 1)
        self.assertTrue(self.transport.disconnected, "aborted")
        self.assertEqual(writer.pending, 0, "what waited is forgotten")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual((self.portStats.slow_disconnects, self.backplaneStats.slow_disconnects),
                         (1, 1))
        self.assertEqual((self.portStats.dropped, writer.dropped), (0, 0))
        [warning] = self.logged("Disconnecting slow subscriber", LogLevel.warn)
        self.assertEqual((warning["peer"], warning["name"], warning["limit"]),
                         (Owner.peer, "NEWS", 10))

    def test_dropWholeChunksUntilCaughtUp(self):
        writer = self.writer(max_pending=10, slow="drop")
        writer.pauseProducing()
        writer.deliver(b"1234\n", 1)
        writer.deliver(b"a\nb\nc\n", 3)  # 6 more: 11 > 10, dropped whole
        writer.deliver(b"d\ne\n", 2)  # 4 more: 9, fits
        writer.deliver(b"f\n", 1)  # 11 > 10, dropped
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.owner.tooSlow, 0)
        self.assertEqual(writer.dropped, 4)
        self.assertEqual((self.portStats.dropped, self.backplaneStats.dropped), (4, 4))
        self.assertEqual(len(self.logged("misses messages until it catches up")), 1)
        self.assertEqual(self.owner.caughtUp, [])
        writer.resumeProducing()
        self.assertEqual(self.transport.value(), b"1234\nd\ne\n")
        self.assertEqual(self.owner.caughtUp, [4])
        [caughtUp] = self.logged("caught up")
        self.assertEqual(caughtUp["missed"], 4)
        # Behind again: logged again, counted from zero.
        writer.pauseProducing()
        writer.deliver(b"x" * 11 + b"\n", 1)
        writer.resumeProducing()
        self.assertEqual(self.owner.caughtUp, [4, 1])
        self.assertEqual(len(self.logged("misses messages until it catches up")), 2)
        self.assertEqual(writer.dropped, 5)

    def test_notCaughtUpWhilePausedAgain(self):
        writer = self.writer(max_pending=10, slow="drop")
        self.transport.bufferSize = 3
        writer.pauseProducing()
        writer.deliver(b"1234\n", 1)
        writer.deliver(b"56789\n", 1)
        writer.deliver(b"x\n", 1)  # dropped
        self.transport.resume()  # writes one chunk, and is full again
        self.assertEqual(self.owner.caughtUp, [])
        self.transport.resume()
        self.assertEqual(self.owner.caughtUp, [1])

    def test_maxPendingZero(self):
        writer = self.writer(max_pending=0, slow="drop")
        writer.pauseProducing()
        writer.deliver(b"a\n", 1)
        self.assertEqual(writer.dropped, 1)

    def test_flushHandsWhatWaitsToTheTransport(self):
        writer = self.writer()
        writer.pauseProducing()
        writer.deliver(b"one\n", 1)
        writer.deliver(b"two\n", 1)
        writer.flush()
        self.assertEqual(self.transport.writes, [b"one\ntwo\n"])
        self.assertEqual(writer.pending, 0)
        writer.flush()
        self.assertEqual(self.transport.writes, [b"one\ntwo\n"])

    def test_discardForgetsWhatWaits(self):
        writer = self.writer()
        writer.pauseProducing()
        writer.deliver(b"one\n", 1)
        writer.discard()
        writer.resumeProducing()
        self.assertEqual(self.transport.value(), b"")


class DirectSocketTests(SynchronousTestCase):
    """
    On a plain TCP (or UNIX) connection the writer sends on the socket while
    the transport holds nothing, and through the transport otherwise, in
    order.
    """

    def setUp(self):
        self.server, self.client = socket.socketpair()
        self.addCleanup(self.server.close)
        self.addCleanup(self.client.close)
        self.connection = tcp.Connection(self.server, Protocol(), reactor=MemoryReactor())
        self.connection.connected = 1
        self.writer = BoundedWriter(Owner(), self.connection, Limits(), name="NEWS")

    def test_straightToTheSocketWhileTheTransportIsEmpty(self):
        self.writer.deliver(b"direct\n", 1)
        self.assertEqual(self.connection.dataBuffer, b"")
        self.assertEqual(self.connection._tempDataBuffer, [])
        self.assertEqual(self.client.recv(100), b"direct\n")

    def test_throughTheTransportOnceItHoldsSomething(self):
        self.connection.write(b"held\n")
        self.writer.deliver(b"after\n", 1)
        self.client.setblocking(False)
        self.assertRaises(BlockingIOError, self.client.recv, 100)
        self.connection.doWrite()
        self.assertEqual(self.client.recv(100), b"held\nafter\n")

    def test_releasedOnceLost(self):
        """
        Once the connection is lost, discarding also lets go of what the
        transport still buffers (Twisted keeps it as long as the transport
        object lives); before, it is left alone.
        """
        self.connection.write(b"held\n")
        self.writer.discard()
        self.assertEqual(self.connection._tempDataBuffer, [b"held\n"])
        self.connection.write(b"x" * 100_000)
        self.connection.connectionLost(Failure(ConnectionLost()))
        self.assertGreater(len(self.connection.dataBuffer) + self.connection._tempDataLen, 0)
        self.writer.discard()
        self.assertEqual((self.connection.dataBuffer, self.connection._tempDataBuffer,
                          self.connection._tempDataLen), (b"", [], 0))

    def test_whatTheSocketDoesNotTakeGoesThroughTheTransport(self):
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"x" * 10_000_000 + b"\n"
        self.writer.deliver(big, 1)
        self.writer.deliver(b"last\n", 1)
        waiting = len(self.connection.dataBuffer) + self.connection._tempDataLen
        self.assertGreater(waiting, 0)
        self.client.setblocking(False)
        received = bytearray()
        for _ in range(100_000):
            if len(received) >= len(big) + 5:
                break
            self.connection.doWrite()
            try:
                received += self.client.recv(1 << 20)
            except BlockingIOError:
                pass
        self.assertEqual(bytes(received), big + b"last\n")


class SendAtOnceTests(SynchronousTestCase):
    """
    L{sendAtOnce}: C{TCP_NODELAY} on a TCP transport, nothing on another.
    """

    def test_tcp(self):
        class TCP(StringTransport):
            noDelay: bool | None = None

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.noDelay = enabled

        transport = TCP()
        sendAtOnce(transport)
        self.assertIs(transport.noDelay, True)

    def test_notTCP(self):
        """
        A transport that cannot (a UNIX socket's, with Twisted 23.8: its
        C{setTcpNoDelay} raises C{EOPNOTSUPP}) or has no such method is
        left as it is, without an error.
        """
        class Unix(StringTransport):
            tried = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.tried = True
                raise OSError(95, "Operation not supported")

        transport = Unix()
        sendAtOnce(transport)
        self.assertTrue(transport.tried)
        sendAtOnce(StringTransport())
