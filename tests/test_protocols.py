"""
The line protocols over StringTransport: framing in chunks of every size,
echo exclusion, discarding, half lines, and the per-client limits.
"""

import itertools
from ipaddress import ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from backplane import (
    BackplaneService,
    PublishTo,
    PublishToFactory,
    SubscribeTo,
    SubscribeToFactory,
)
from backplane.address import isAllowed
from backplane.protocols import (
    BackplaneFactory,
    BackplaneProtocol,
    Limits,
    PortStats,
    firstOverlong,
)
from backplane.testing import Recorder, connect, disconnect, sentLines


def expectedMessages(stream: bytes) -> list[bytes]:
    """
    The contract, spelled out slowly: the complete lines of a stream, each
    without its delimiter and with one trailing carriage return removed.
    """
    lines = stream.split(b"\n")[:-1]
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def feed(protocol, stream: bytes, size: int) -> None:
    for i in range(0, len(stream), size):
        protocol.dataReceived(stream[i : i + size])


class Publisher:
    """
    A PublishTo protocol connected to a StringTransport, with a recorder on
    its backplane.
    """

    def __init__(self, limits=None):
        limits = limits or Limits()
        self.service = BackplaneService()
        self.backplane = self.service.create("IN")
        self.recorder = Recorder.on(self.backplane)
        protocol, self.transport = connect(
            PublishToFactory(self.service, "IN", limits=limits)
        )
        assert isinstance(protocol, PublishTo)
        self.protocol = protocol


STREAM = (
    b"first\r\n"
    b"\n"
    b"\r\n"
    b"  spaces kept  \n"
    b"tab\there\r\n"
    b"cr\rinside\n"
    b"two crs\r\r\n"
    b"\x00\xff binary \x80\n"
    + b"x" * 300 + b"\n"
    b"last"  # a half line: never published
)


class FramingTests(SynchronousTestCase):
    def test_chunksOfEverySize(self):
        """
        However the stream is cut into reads, the same messages come out.
        """
        expected = expectedMessages(STREAM)
        self.assertEqual(expected[:3], [b"first", b"", b""])
        self.assertEqual(expected[6], b"two crs\r")
        for size in range(1, len(STREAM) + 1):
            publisher = Publisher()
            feed(publisher.protocol, STREAM, size)
            self.assertEqual(publisher.recorder.messages, expected, f"chunk size {size}")

    def test_subscribersGetLinesWithNewline(self):
        service = BackplaneService()
        service.create("IN")
        _subscriber, out = connect(SubscribeToFactory(service, "IN"))
        for size in (1, 2, 7, len(STREAM)):
            out.clear()
            publisher, _ = connect(PublishToFactory(service, "IN"))
            feed(publisher, STREAM, size)
            self.assertEqual(out.value(), b"".join(m + b"\n" for m in expectedMessages(STREAM)))

    def test_oneWritePerChunk(self):
        """
        The complete lines of one read reach a subscriber in one write.
        """
        service = BackplaneService()
        service.create("IN")
        _subscriber, out = connect(SubscribeToFactory(service, "IN"))
        writes: list[bytes] = []
        self.patch(out, "write", writes.append)
        publisher, _ = connect(PublishToFactory(service, "IN"))
        publisher.dataReceived(b"a\nb\nc\nhal")
        publisher.dataReceived(b"f\nd\n")
        self.assertEqual(writes, [b"a\nb\nc\n", b"half\nd\n"])

    def test_halfLineAtResetNotPublished(self):
        """
        A connection that is reset publishes no half line, and counts its bytes.
        """
        publisher = Publisher()
        publisher.protocol.dataReceived(b"whole\nhalf a li")
        publisher.transport.disconnecting = True
        publisher.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(publisher.recorder.messages, [b"whole"])
        self.assertEqual(publisher.backplane.stats.publishers, 0)
        self.assertEqual(publisher.protocol.portStats.discarded_bytes, len(b"half a li"))

    def test_halfLineAtCleanCloseIsALine(self):
        """
        A connection that ends cleanly without a half-close (a TLS
        close_notify) publishes its last line, as a FIN does.
        """
        publisher = Publisher()
        publisher.protocol.dataReceived(b"whole\nlast li")
        disconnect(publisher.protocol, publisher.transport)
        self.assertEqual(publisher.recorder.messages, [b"whole", b"last li"])
        self.assertEqual(publisher.protocol.portStats.discarded_bytes, 0)

    def test_silentClient(self):
        publisher = Publisher()
        self.assertEqual(publisher.backplane.stats.publishers, 1)
        disconnect(publisher.protocol, publisher.transport)
        self.assertEqual(publisher.recorder.messages, [])
        self.assertEqual(publisher.backplane.stats.publishers, 0)

    def test_dataAfterDisconnectIgnored(self):
        publisher = Publisher()
        disconnect(publisher.protocol, publisher.transport)
        publisher.protocol.dataReceived(b"late\n")
        self.assertEqual(publisher.recorder.messages, [])

    @given(
        stream=st.binary(max_size=2000),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40),
    )
    @settings(max_examples=300, deadline=None)
    def test_anyChunkingSameMessages(self, stream, cuts):
        """
        Property: any chunking of any byte stream yields the contract's
        messages (and a subscriber receives exactly those lines).
        """
        service = BackplaneService()
        backplane = service.create("IN")
        recorder = Recorder.on(backplane)
        _, out = connect(SubscribeToFactory(service, "IN"))
        publisher, _ = connect(PublishToFactory(service, "IN"))
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for start, end in itertools.pairwise(bounds):
            publisher.dataReceived(stream[start:end])
        expected = expectedMessages(stream)
        self.assertEqual(recorder.messages, expected)
        self.assertEqual(sentLines(out), expected)
        self.assertEqual(backplane.stats.messages_in, len(expected))


class DirectionTests(SynchronousTestCase):
    def setUp(self):
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.chat = self.service.create("CHAT")

    def test_subscribeOnlyDiscardsInput(self):
        recorder = Recorder.on(self.news)
        protocol, transport = connect(SubscribeToFactory(self.service, "NEWS"))
        protocol.dataReceived(b"ignored\nalso ignored\n")
        self.assertEqual(recorder.messages, [])
        self.assertEqual(self.news.stats.messages_in, 0)
        self.news.publish(b"still subscribed")
        self.assertEqual(transport.value(), b"still subscribed\n")

    def test_publishOnlyReceivesNothing(self):
        _protocol, transport = connect(PublishToFactory(self.service, "NEWS"))
        self.news.publish(b"x")
        self.assertEqual(transport.value(), b"")

    def test_noEchoOnSameBackplane(self):
        factory = PublishToFactory(self.service, "CHAT", subscribe_to="CHAT")
        alice, aliceOut = connect(factory, ("127.0.0.1", 1))
        bob, bobOut = connect(factory, ("127.0.0.1", 2))
        alice.dataReceived(b"hi from alice\n")
        bob.dataReceived(b"hi from bob\n")
        self.assertEqual(aliceOut.value(), b"hi from bob\n")
        self.assertEqual(bobOut.value(), b"hi from alice\n")

    def test_publishToOneSubscribeToAnother(self):
        factory = SubscribeToFactory(self.service, "NEWS", publish_to="CHAT")
        protocol, transport = connect(factory)
        chat = Recorder.on(self.chat)
        protocol.dataReceived(b"to chat\n")
        self.news.publish(b"news")
        self.assertEqual(chat.messages, [b"to chat"])
        self.assertEqual(transport.value(), b"news\n", "a different backplane echoes")

    def test_protocolClasses(self):
        publisher, _ = connect(PublishToFactory(self.service, "NEWS"))
        subscriber, _ = connect(SubscribeToFactory(self.service, "NEWS"))
        self.assertIsInstance(publisher, PublishTo)
        self.assertIsInstance(subscriber, SubscribeTo)

    def test_protocolsWithoutFactory(self):
        """
        The protocols can be used on their own, with any transport.
        """
        recorder = Recorder.on(self.news)
        publisher = PublishTo(self.news)
        publisher.makeConnection(StringTransport())
        subscriber = SubscribeTo(self.news)
        out = StringTransport()
        subscriber.makeConnection(out)
        publisher.dataReceived(b"x\n")
        self.assertEqual(recorder.messages, [b"x"])
        self.assertEqual(out.value(), b"x\n")
        subscriber.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.news), 1)

    def test_unsubscribedOnDisconnect(self):
        protocol, transport = connect(SubscribeToFactory(self.service, "NEWS"))
        self.assertEqual(len(self.news), 1)
        disconnect(protocol, transport)
        self.assertEqual(len(self.news), 0)
        self.news.publish(b"after")
        self.assertEqual(transport.value(), b"")

    def test_factoryNeedsADirection(self):
        self.assertRaises(ValueError, BackplaneFactory, self.service)

    def test_factoryUnknownBackplane(self):
        error = self.assertRaises(KeyError, SubscribeToFactory, self.service, "NOPE")
        self.assertIn("'NOPE'", str(error))
        self.assertIn("'CHAT', 'NEWS'", str(error))


class LineLengthTests(SynchronousTestCase):
    def test_overlongLineNeverPublished(self):
        publisher = Publisher(Limits(max_line_length=10))
        publisher.protocol.dataReceived(b"ok\n" + b"y" * 11 + b"\nafter\n")
        self.assertEqual(publisher.recorder.messages, [b"ok"])
        self.assertTrue(publisher.transport.disconnecting)
        publisher.protocol.dataReceived(b"more\n")
        self.assertEqual(publisher.recorder.messages, [b"ok"])

    def test_exactlyTheLimit(self):
        publisher = Publisher(Limits(max_line_length=10))
        publisher.protocol.dataReceived(b"y" * 10 + b"\n")
        self.assertEqual(publisher.recorder.messages, [b"y" * 10])
        self.assertFalse(publisher.transport.disconnecting)

    def test_overlongHalfLine(self):
        """
        A line that grows past the limit before its newline arrives is
        refused at once, without waiting (or buffering) for the rest.
        """
        publisher = Publisher(Limits(max_line_length=10))
        for _ in range(11):
            publisher.protocol.dataReceived(b"z")
        self.assertTrue(publisher.transport.disconnecting)
        self.assertEqual(publisher.protocol.framer.buffered, b"")
        publisher.protocol.dataReceived(b"\n")
        self.assertEqual(publisher.recorder.messages, [])

    def test_overlongInLongChunk(self):
        limit = 100
        lines = [b"%d" % i * 5 for i in range(200)]
        bad = 150
        lines[bad] = b"b" * (limit + 1)
        publisher = Publisher(Limits(max_line_length=limit))
        publisher.protocol.dataReceived(b"\n".join(lines) + b"\n")
        self.assertEqual(publisher.recorder.messages, lines[:bad])
        self.assertTrue(publisher.transport.disconnecting)

    def test_carriageReturnCounts(self):
        publisher = Publisher(Limits(max_line_length=3))
        publisher.protocol.dataReceived(b"abc\r\n")
        self.assertTrue(publisher.transport.disconnecting)
        self.assertEqual(publisher.recorder.messages, [])

    @given(
        lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
                       max_size=60),
        limit=st.integers(min_value=1, max_value=50),
    )
    @settings(max_examples=300, deadline=None)
    def test_firstOverlong(self, lines, limit):
        data = b"".join(line + b"\n" for line in lines)
        expected, offset = -1, 0
        for line in lines:
            if len(line) > limit:
                expected = offset
                break
            offset += len(line) + 1
        self.assertEqual(firstOverlong(data, limit), expected)


class SlowSubscriberTests(SynchronousTestCase):
    """
    The transport tells the protocol (its push producer) when its buffer is
    full; from then on up to max_pending bytes may wait for the subscriber.
    """

    def setUp(self):
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")

    def subscriber(self, **limits):
        return connect(SubscribeToFactory(self.service, "NEWS", limits=Limits(**limits)))

    def test_registeredAsStreamingProducer(self):
        protocol, transport = self.subscriber()
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

    def test_disconnectPastMaxPending(self):
        slow, slowOut = self.subscriber(max_pending=10)
        _quick, quickOut = self.subscriber(max_pending=10)
        slow.pauseProducing()
        self.news.publishLines(b"12345\n")
        slow.pauseProducing()  # as a transport does on each write while full
        self.news.publishLines(b"123\n")
        self.assertFalse(slowOut.disconnecting, "10 bytes behind is allowed")
        self.news.publishLines(b"x\n")
        self.assertTrue(slowOut.disconnected, "aborted, not waiting to flush")
        self.assertEqual(self.news.stats.slow_disconnects, 1)
        self.assertEqual(len(self.news), 1)
        self.news.publishLines(b"y\n")
        self.assertEqual(quickOut.value(), b"12345\n123\nx\ny\n")
        # What waited for it, beyond the transport's buffer, went with it.
        self.assertEqual(slowOut.value(), b"")

    def test_resumeResetsBacklog(self):
        protocol, transport = self.subscriber(max_pending=10)
        protocol.pauseProducing()
        self.news.publishLines(b"123456789\n")
        protocol.resumeProducing()
        protocol.pauseProducing()
        self.news.publishLines(b"123456789\n")
        self.assertFalse(transport.disconnecting)

    def test_dropWholeChunksAndCount(self):
        protocol, transport = self.subscriber(max_pending=10, slow="drop")
        _other, otherOut = self.subscriber(max_pending=10, slow="drop")
        protocol.pauseProducing()
        self.news.publishLines(b"1234\n")
        self.news.publishLines(b"a\nb\nc\n")  # 6 more: 11 > 10, dropped whole
        self.news.publishLines(b"5\n")  # fits
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"", "waiting for the transport to empty")
        self.assertEqual(protocol.dropped, 3)
        self.assertEqual(self.news.stats.dropped, 3)
        protocol.resumeProducing()
        self.assertEqual(transport.value(), b"1234\n5\n")
        self.news.publishLines(b"caught up\n")
        self.assertEqual(transport.value(), b"1234\n5\ncaught up\n")
        self.assertEqual(otherOut.value(), b"1234\na\nb\nc\n5\ncaught up\n")

    def test_publisherNotSlowed(self):
        """
        A stalled subscriber is not a reason to stop reading a publisher.
        """
        service = self.service
        slow, _ = self.subscriber(max_pending=0, slow="drop")
        slow.pauseProducing()
        publisher, publisherTransport = connect(PublishToFactory(service, "NEWS"))
        publisher.dataReceived(b"x\n" * 1000)
        self.assertEqual(publisherTransport.producerState, "producing")
        self.assertEqual(self.news.stats.dropped, 1000)


class SlowReaderTransport(FileDescriptor):
    """
    A transport with Twisted's own write buffer and flow control (a
    L{FileDescriptor}: it pauses its producer on each write while more than
    C{bufferSize} bytes wait, and resumes it once they are all sent), whose
    client reads only as many bytes as L{read} says.
    """

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1
        self.received = bytearray()
        self.aborted = False
        self.closed = False
        self.protocol: IProtocol | None = None
        self._quota = 0

    def writeSomeData(self, data) -> int:
        sent = min(len(data), self._quota)
        self.received += data[:sent]
        self._quota -= sent
        return sent

    def read(self, size: int) -> None:
        """
        The client reads up to C{size} bytes of what was sent to it (as
        many writes as the reactor would make).
        """
        self._quota = size
        while self.connected:
            result = self.doWrite()
            if isinstance(result, Exception):
                self.closed = True
                self.connected = 0
                assert self.protocol is not None
                self.protocol.connectionLost(Failure(result))
            elif not (self.waiting and self._quota):
                break
        self._quota = 0

    @property
    def waiting(self) -> int:
        """
        Bytes in the transport's own buffer.
        """
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def abortConnection(self) -> None:
        self.aborted = True
        self.connected = 0
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1500)


class PendingOutputTests(SynchronousTestCase):
    """
    max_pending bounds the output waiting for a subscriber beyond its
    transport's own buffer, over a transport that pauses and resumes its
    producer as Twisted's TCP transport does.
    """

    CHUNK = b"x" * 9999 + b"\n"  # 10,000 bytes: seven of them fill a 64 KiB buffer

    def setUp(self):
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.factory = SubscribeToFactory(self.service, "NEWS",
                                          limits=Limits(max_pending=100_000))
        protocol = self.factory.buildProtocol(None)
        assert isinstance(protocol, SubscribeTo)
        self.protocol = protocol
        self.transport = SlowReaderTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_keepingUpIsNotSlow(self):
        """
        A subscriber 80 KB behind that then reads as fast as lines come stays
        80 KB behind, however much goes through: it is not disconnected.
        """
        for _ in range(8):
            self.news.publishLines(self.CHUNK)
        self.assertTrue(self.transport.producerPaused, "the transport's buffer is full")
        for _ in range(200):  # 2 MB, twenty times max_pending
            self.news.publishLines(self.CHUNK)
            self.transport.read(len(self.CHUNK))
        self.assertFalse(self.transport.aborted)
        self.assertEqual(self.news.stats.slow_disconnects, 0)
        self.transport.read(10**9)
        self.assertEqual(bytes(self.transport.received), self.CHUNK * 208)

    def test_stalledIsDisconnected(self):
        """
        A subscriber that reads nothing is disconnected once more than
        max_pending bytes wait for it beyond the transport's buffer.
        """
        published = 0
        while not self.transport.aborted:
            self.news.publishLines(self.CHUNK)
            published += 1
            self.assertLessEqual(self.transport.waiting, 65536 + len(self.CHUNK))
        self.assertEqual(self.news.stats.slow_disconnects, 1)
        # Seven chunks fill the transport's buffer, ten more may wait.
        self.assertEqual(published, 7 + 10 + 1)

    def test_stopSendsWhatWaitsThenCloses(self):
        """
        Closing every client (a port stopping) sends a subscriber that is
        behind what waits for it, then closes its connection, without
        waiting for an abort.
        """
        for _ in range(12):
            self.news.publishLines(self.CHUNK)
        closed = self.factory.disconnectAll()
        self.news.publishLines(b"after the close began\n")
        self.transport.read(10**9)
        self.assertTrue(self.transport.closed, "closed once everything was sent")
        self.assertFalse(self.transport.aborted)
        self.successResultOf(closed)
        self.assertEqual(bytes(self.transport.received), self.CHUNK * 12)


    def test_overlongLineClosesAfterSending(self):
        """
        A client that publishes and subscribes, sending a line longer than
        max_line_length, gets what waited for it, then is disconnected.
        """
        factory = BackplaneFactory(self.service, publish_to="NEWS", subscribe_to="NEWS",
                                   limits=Limits(max_line_length=100))
        chat, transport = factory.buildProtocol(None), SlowReaderTransport()
        assert chat is not None
        transport.protocol = chat
        chat.makeConnection(transport)
        for _ in range(8):
            self.news.publishLines(self.CHUNK)
        chat.dataReceived(b"y" * 101)
        self.news.publishLines(b"after\n")
        transport.read(10**9)
        self.assertTrue(transport.closed)
        self.assertEqual(bytes(transport.received), self.CHUNK * 8)


class MaxClientsTests(SynchronousTestCase):
    def test_extraConnectionRefused(self):
        service = BackplaneService()
        news = service.create("NEWS")
        factory = SubscribeToFactory(service, "NEWS", limits=Limits(max_clients=2))
        first = connect(factory, ("127.0.0.1", 1))
        connect(factory, ("127.0.0.1", 2))
        self.assertIsNone(factory.buildProtocol(None))
        self.assertEqual(factory.refused, 1)
        news.publish(b"x")
        self.assertEqual(first[1].value(), b"x\n", "existing clients unaffected")
        disconnect(*first)
        self.assertEqual(factory.clients, 1)
        connect(factory, ("127.0.0.1", 3))
        self.assertEqual(factory.clients, 2)

    def test_limitsValidated(self):
        self.assertRaises(ValueError, Limits, max_line_length=0)
        self.assertRaises(ValueError, Limits, max_pending=-1)
        self.assertRaises(ValueError, Limits, slow="block")
        self.assertRaises(ValueError, Limits, max_clients=-1)


class LineLengthPropertyTests(SynchronousTestCase):
    @given(
        stream=st.binary(max_size=600),
        cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=30),
        limit=st.integers(min_value=1, max_value=40),
    )
    @settings(max_examples=500, deadline=None)
    def test_anyChunkingAnyLimit(self, stream, cuts, limit):
        """
        Property: whatever the bytes, the chunking and the limit, the lines
        before the first overlong one are published, nothing of it or after
        it is, and the client is disconnected exactly when there is one.
        """
        publisher = Publisher(Limits(max_line_length=limit))
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for start, end in itertools.pairwise(bounds):
            publisher.protocol.dataReceived(stream[start:end])
        *complete, tail = stream.split(b"\n")
        overlong = [i for i, line in enumerate(complete) if len(line) > limit]
        if overlong:
            kept, cut = complete[: overlong[0]], True
        else:
            kept, cut = complete, len(tail) > limit
        self.assertEqual(publisher.recorder.messages, expectedMessages(
            b"".join(line + b"\n" for line in kept)))
        self.assertEqual(publisher.transport.disconnecting, cut)


class NoDelayTests(SynchronousTestCase):
    def test_subscribersSendAtOnce(self):
        """
        A subscriber's connection has Nagle's algorithm off (TCP_NODELAY),
        so a chunk is not held back waiting for the client's ACK; a publisher's
        is left alone.
        """

        class TCPish(StringTransport):
            noDelay = False

            def setTcpNoDelay(self, enabled):
                self.noDelay = enabled

        service = BackplaneService()
        service.create("NEWS")
        for factory, expected in [(SubscribeToFactory(service, "NEWS"), True),
                                  (PublishToFactory(service, "NEWS"), False)]:
            protocol = factory.buildProtocol(None)
            assert protocol is not None
            transport = TCPish()
            protocol.makeConnection(transport)
            self.assertEqual(transport.noDelay, expected)


class PortStatsTests(SynchronousTestCase):
    """
    A factory counts, in its L{PortStats}, what happens to its clients.
    """

    def setUp(self):
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")

    def test_acceptedAndPublished(self):
        factory = PublishToFactory(self.service, "NEWS")
        protocol, transport = connect(factory)
        protocol.dataReceived(b"one\r\ntwo\nhal")
        protocol.dataReceived(b"f\n")
        self.assertEqual(factory.stats, PortStats(accepted=1, messages_in=3,
                                                  bytes_in=len(b"one\ntwo\nhalf\n")))
        self.assertEqual(self.news.stats.messages_in, 3)
        disconnect(protocol, transport)
        self.assertEqual(factory.clients, 0)
        self.assertEqual(factory.stats.accepted, 1)

    def test_refused(self):
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(max_clients=1))
        connect(factory)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)))
        self.assertEqual((factory.stats.accepted, factory.stats.refused), (1, 1))
        self.assertEqual(factory.refused, 1)

    def test_overlong(self):
        factory = PublishToFactory(self.service, "NEWS", limits=Limits(max_line_length=3))
        protocol, transport = connect(factory)
        protocol.dataReceived(b"abcd\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.stats.overlong, 1)
        self.assertEqual(factory.stats.messages_in, 0)

    def test_slowDisconnectsAndDrops(self):
        disconnecting = SubscribeToFactory(self.service, "NEWS", limits=Limits(max_pending=1))
        dropping = SubscribeToFactory(self.service, "NEWS",
                                      limits=Limits(max_pending=1, slow="drop"))
        slow, _ = connect(disconnecting)
        dropper, _ = connect(dropping)
        assert isinstance(slow, SubscribeTo) and isinstance(dropper, SubscribeTo)
        slow.pauseProducing()
        dropper.pauseProducing()
        self.news.publishLines(b"a\nb\n")
        self.assertEqual(disconnecting.stats.slow_disconnects, 1)
        self.assertEqual(dropping.stats.dropped, 2)
        self.assertEqual((disconnecting.stats.dropped, dropping.stats.slow_disconnects), (0, 0))

    def test_protocolWithoutFactory(self):
        """
        A protocol made by hand counts into a L{PortStats} of its own.
        """
        protocol = PublishTo(self.news)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"x\n")
        self.assertEqual(protocol.portStats.messages_in, 1)


class AllowTests(SynchronousTestCase):
    """
    C{allow}: a client from elsewhere is closed at once and counted.
    """

    LOCAL = (ip_network("127.0.0.0/8"), ip_network("::1"))

    def test_noAllowAllowsEveryone(self):
        self.assertTrue(isAllowed(IPv4Address("TCP", "192.0.2.1", 1), None))

    def test_ipv4(self):
        self.assertTrue(isAllowed(IPv4Address("TCP", "127.0.0.2", 1), self.LOCAL))
        self.assertFalse(isAllowed(IPv4Address("TCP", "192.0.2.1", 1), self.LOCAL))

    def test_ipv6(self):
        self.assertTrue(isAllowed(IPv6Address("TCP", "::1", 1), self.LOCAL))
        self.assertFalse(isAllowed(IPv6Address("TCP", "::2", 1), self.LOCAL))
        self.assertFalse(isAllowed(IPv6Address("TCP", "2001:db8::1", 1), self.LOCAL))

    def test_scopedIPv6(self):
        linkLocal = (ip_network("fe80::/10"),)
        self.assertTrue(isAllowed(IPv6Address("TCP", "fe80::1%lo", 1), linkLocal))

    def test_ipv4MappedIPv6(self):
        """
        An IPv6 port shows an IPv4 client as C{::ffff:a.b.c.d}: it is
        checked as its IPv4 address, and as itself.
        """
        self.assertTrue(isAllowed(IPv6Address("TCP", "::ffff:127.0.0.1", 1), self.LOCAL))
        self.assertFalse(isAllowed(IPv6Address("TCP", "::ffff:192.0.2.1", 1), self.LOCAL))
        mapped = (ip_network("::ffff:0:0/96"),)
        self.assertTrue(isAllowed(IPv6Address("TCP", "::ffff:192.0.2.1", 1), mapped))

    def test_ipv4NotInIPv6Network(self):
        self.assertFalse(isAllowed(IPv4Address("TCP", "0.0.0.1", 1), (ip_network("::/96"),)))

    def test_unixSocketsAlwaysAllowed(self):
        self.assertTrue(isAllowed(UNIXAddress("/run/backplane.sock"), self.LOCAL))
        self.assertTrue(isAllowed(None, self.LOCAL))

    def test_hostThatIsNotAnIPRefused(self):
        class Named:
            host = "example.org"

        self.assertFalse(isAllowed(Named(), self.LOCAL))  # type: ignore[arg-type]

    def test_factoryClosesAndCounts(self):
        service = BackplaneService()
        news = service.create("NEWS")
        factory = SubscribeToFactory(service, "NEWS", limits=Limits(
            allow=(ip_network("127.0.0.1/32"),), max_clients=1))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 5)))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5)))
        self.assertEqual(factory.stats.disallowed, 2)
        self.assertEqual(factory.stats.refused, 0, "disallowed first, before max_clients")
        self.assertEqual((factory.clients, len(news)), (0, 0))
        _protocol, transport = connect(factory, ("127.0.0.1", 5))
        news.publish(b"hello")
        self.assertEqual(transport.value(), b"hello\n")
        self.assertEqual(factory.stats.accepted, 1)


def tlsTransport(peer=("127.0.0.1", 4000)):
    """
    A StringTransport that says it is TLS, as a TLS connection's transport
    does (the protocol is told when the handshake completes).
    """
    transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))
    directlyProvides(transport, ISSLTransport)
    return transport


class TLSHandshakeTests(SynchronousTestCase):
    """
    Over TLS a client joins its backplanes only once the handshake is done:
    before, it is not a subscriber (nothing is written for it) nor a
    publisher.
    """

    def setUp(self):
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.factory = BackplaneFactory(self.service, publish_to="NEWS", subscribe_to="NEWS")

    def test_joinsAfterHandshake(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, BackplaneProtocol)
        transport = tlsTransport()
        protocol.makeConnection(transport)
        self.news.publish(b"before")
        self.assertEqual((len(self.news), self.news.stats.publishers), (0, 0))
        self.assertEqual(transport.value(), b"")
        protocol.handshakeCompleted()
        self.assertEqual((len(self.news), self.news.stats.publishers), (1, 1))
        self.news.publish(b"after")
        self.assertEqual(transport.value(), b"after\n")
        self.assertIs(transport.producer, protocol)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((len(self.news), self.news.stats.publishers), (0, 0))
        self.assertEqual(self.factory.stats.tls_failures, 0)

    def test_handshakeNeverCompleted(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, BackplaneProtocol)
        protocol.makeConnection(tlsTransport())
        self.assertEqual((self.factory.clients, self.factory.handshakes), (0, 1),
                         "not a client until its handshake is done")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.stats.tls_failures, 1)
        self.assertEqual(self.news.stats.publishers, 0, "never counted, never uncounted")
        self.assertEqual((self.factory.clients, self.factory.handshakes), (0, 0))

    def test_handshakeAfterCloseIgnored(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, BackplaneProtocol)
        protocol.makeConnection(tlsTransport())
        protocol.connectionLost(Failure(ConnectionDone()))
        protocol.handshakeCompleted()
        self.assertEqual((len(self.news), self.news.stats.publishers), (0, 0))

    def test_closeUnregistersTheProducer(self):
        """
        C{close} stops the subscription and unregisters the producer before
        C{loseConnection}, as a TLS transport closes only without one.
        """
        protocol, transport = connect(self.factory)
        assert isinstance(protocol, BackplaneProtocol)
        protocol.close()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.news), 0)
        self.news.publish(b"after")
        protocol.dataReceived(b"ignored\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.news.stats.messages_in, 1)
        disconnect(protocol, transport)
        self.assertEqual(self.news.stats.publishers, 0)

    def test_plainTransportJoinsAtOnce(self):
        connect(self.factory)
        self.assertEqual((len(self.news), self.news.stats.publishers), (1, 1))


class DirectSocketTests(SynchronousTestCase):
    def test_plainTCPOnly(self):
        """
        Only a plain TCP (or UNIX) connection's socket is written to
        directly; TLS and other transports always go through the transport.
        """
        import socket

        from twisted.internet import tcp

        from backplane.output import _directSocket

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        connection = tcp.Connection(a, Protocol(), reactor=MemoryReactor())
        self.assertIs(_directSocket(connection), a)
        connection.TLS = True
        self.assertIsNone(_directSocket(connection))
        self.assertIsNone(_directSocket(StringTransport()))

    def test_drainedReadsTwistedsBuffers(self):
        """
        Tripwire for the one use of Twisted's internals: C{_drained} reads a
        C{FileDescriptor}'s unsent data from C{dataBuffer} and
        C{_tempDataBuffer}.  If Twisted keeps it elsewhere, this fails (and
        C{_directSocket} turns the direct write off rather than write out of
        order).
        """
        import socket

        from twisted.internet import tcp

        from backplane.output import _drained

        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        connection = tcp.Connection(a, Protocol(), reactor=MemoryReactor())
        connection.connected = 1
        self.assertIsInstance(connection.dataBuffer, bytes)
        self.assertIsInstance(connection._tempDataBuffer, list)
        self.assertTrue(_drained(connection))
        connection.write(b"held by the transport\n")
        self.assertFalse(_drained(connection), "written data waits in the transport")
        connection.doWrite()
        self.assertTrue(_drained(connection), "sent: nothing waits")
        self.assertEqual(b.recv(100), b"held by the transport\n")
        connection.loseConnection()
        self.assertFalse(_drained(connection), "closing")
