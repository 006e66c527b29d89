"""
WebSocket ports over StringTransport: the opening handshake, a client's
frames split into messages, text and binary frames out, one write and one
encoding per chunk, and the per-client limits shared with the line ports.
"""

import struct
from typing import TYPE_CHECKING, Any

import txaio.tx
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from backplane import BackplaneService, PublishToFactory
from backplane.interfaces import ILineSink
from backplane.protocols import Limits
from backplane.testing import Recorder, connect
from backplane.websocket import WebSocketClient, WebSocketFactory, encodeFrames
from tests.test_service import CapturedLog

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"


def request(path="/", origin="http://localhost:1502", extra=""):
    """
    A browser's WebSocket opening handshake, from a page of the port's own
    origin unless told otherwise.
    """
    origin = f"Origin: {origin}\r\n" if origin else ""
    return (f"GET {path} HTTP/1.1\r\nHost: localhost:1502\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n{origin}"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def handshake(factory, data, peer=("127.0.0.1", 40000)):
    """
    A client of C{factory} on a StringTransport that has sent C{data}.
    """
    address = IPv4Address("TCP", *peer)
    protocol = factory.buildProtocol(address)
    assert protocol is not None, "refused"
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return protocol, transport


def refused(factory, data):
    """
    Send an opening handshake that is refused: the response's status line
    and the response, and the connection closed.
    """
    _protocol, transport = handshake(factory, data)
    response = transport.value()
    assert not response.startswith(b"HTTP/1.1 101 "), response
    assert transport.disconnecting or transport.disconnected, "closed"
    return response.split(b"\r\n", 1)[0], response


def clientFrame(payload, opcode=1, fin=True, length=None, mask=b"\x37\xfa\x21\x3d"):
    """
    A frame as a client sends it: masked.  C{length} overrides the length
    in the header (to announce more than is sent).
    """
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 0x10000:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT, BINARY, CLOSE = 1, 2, 8


def serverFrames(data):
    """
    Parse what a server sent into (opcode, payload) pairs, checking that
    every frame is final, unmasked, uncompressed and minimally encoded.
    """
    frames = []
    while data:
        first, second = data[0], data[1]
        assert first & 0xF0 == 0x80, f"FIN set, RSV clear: {first:#x}"
        assert not second & 0x80, "a server's frames are not masked"
        n, offset = second & 0x7F, 2
        if n == 126:
            (n,), offset = struct.unpack("!H", data[2:4]), 4
            assert n >= 126
        elif n == 127:
            (n,), offset = struct.unpack("!Q", data[2:10]), 10
            assert n >= 0x10000
        payload = data[offset : offset + n]
        assert len(payload) == n, "a whole frame"
        frames.append((first & 0x0F, payload))
        data = data[offset + n :]
    return frames


def closeCode(frame):
    opcode, payload = frame
    assert opcode == CLOSE
    return struct.unpack("!H", payload[:2])[0]


class WritesTransport(StringTransport):
    """
    A StringTransport that also keeps each write's bytes object.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


def opened(factory, peer=("127.0.0.1", 40000), handshake=None):
    """
    A client of C{factory} on a L{WritesTransport}, past its opening
    handshake; the transport is cleared of the handshake's response.
    """
    address = IPv4Address("TCP", *peer)
    protocol = factory.buildProtocol(address)
    assert protocol is not None, "refused"
    transport = WritesTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake or request())
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 101 "), response
    transport.clear()
    del transport.writes[:]
    return protocol, transport


def gone(protocol, transport):
    transport.disconnecting = True
    protocol.connectionLost(Failure(ConnectionDone()))


if TYPE_CHECKING:
    # Mixed into SynchronousTestCases.
    _PortsBase = SynchronousTestCase
else:
    _PortsBase = object


class Ports(_PortsBase):
    """
    A service with backplanes NEWS and CHAT, and autobahn's timers (its
    handshake timeouts) on a L{Clock}, since no reactor runs here.
    """

    def setUp(self):
        self.clock = Clock()
        # txaio.config is txaio.tx's once autobahn.twisted chose Twisted.
        self.patch(txaio.tx.config, "loop", self.clock)
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.chat = self.service.create("CHAT")


class EncodeTests(SynchronousTestCase):
    def test_textAndBinary(self):
        data = b"plain\n\xc3\xa9t\xc3\xa9\n\xff\xfe\n\n\xed\xa0\x80\n"
        self.assertEqual(serverFrames(encodeFrames(data, 5)), [
            (TEXT, b"plain"),
            (TEXT, "été".encode()),
            (BINARY, b"\xff\xfe"),
            (TEXT, b""),
            (BINARY, b"\xed\xa0\x80"),  # a surrogate: not valid UTF-8
        ])

    def test_lengths(self):
        for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            line = b"x" * n
            self.assertEqual(serverFrames(encodeFrames(line + b"\n", 1)), [(TEXT, line)])

    @given(st.lists(st.one_of(st.text().map(str.encode), st.binary()).map(
        lambda b: b.replace(b"\n", b"")), min_size=1, max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_sameAsAutobahn(self, lines):
        """
        The frames are those autobahn prepares for each message, unmasked
        and uncompressed.
        """
        service = BackplaneService()
        service.create("X")
        autobahn = WebSocketFactory(service, subscribe_to="X").websocket
        data = b"".join(line + b"\n" for line in lines)
        expected = b""
        for line in lines:
            try:
                line.decode("utf-8")
                binary = False
            except UnicodeDecodeError:
                binary = True
            expected += autobahn.prepareMessage(line, binary, doNotCompress=True).payloadHybi
        self.assertEqual(encodeFrames(data, len(lines)), expected)


class HandshakeTests(Ports, SynchronousTestCase):
    def test_anyPath(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        for path in ("/", "/time", "/any/path?x=1"):
            opened(factory, handshake=request(path))
        self.assertEqual(len(self.news), 3)

    def test_origins(self):
        """
        A page of the port's own origin, or a client that is no page (no
        Origin), may connect; pages of other sites are refused with 403
        before the upgrade, counted; origins lists more, "*" every one.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        for origin in ("http://localhost:1502", "http://LOCALHOST:1502", None):
            opened(factory, handshake=request(origin=origin))
        self.assertEqual(len(self.news), 3)
        for origin in ("https://example.com", "http://localhost:8000", "https://localhost:1502",
                       "null", "file://", "http://localhost:1502, http://evil.example"):
            status, _ = refused(factory, request(origin=origin))
            self.assertEqual(status, b"HTTP/1.1 403 origin " + repr(origin).encode()
                             + b" not allowed")
        status, _ = refused(factory, request(
            extra="Origin: http://localhost:1502\r\nOrigin: https://evil.example\r\n"))
        self.assertEqual(status, b"HTTP/1.1 403 more than one Origin header")
        self.assertEqual(len(self.news), 3)
        self.assertEqual(factory.gate.counters.snapshot(),
                         {"accepted": 0, "refused": {"origin": 7}})

        listed = WebSocketFactory(self.service, subscribe_to="NEWS",
                                  origins=("https://app.example.com",))
        opened(listed, handshake=request(origin="https://app.example.com"))
        opened(listed, handshake=request(origin="https://app.example.com:443"))
        refused(listed, request(origin="https://example.com"))
        anyone = WebSocketFactory(self.service, subscribe_to="NEWS", origins=("*",))
        for origin in ("https://example.com", "null"):
            opened(anyone, handshake=request(origin=origin))

    def test_foreignOriginPublishesNothing(self):
        factory = WebSocketFactory(self.service, publish_to="NEWS")
        recorder = Recorder.on(self.news)
        protocol, transport = handshake(factory, request(origin="https://evil.example"))
        protocol.dataReceived(clientFrame(b"hello"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual((recorder.messages, self.news.stats.publishers), ([], 0))

    def test_acceptKey(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, WebSocketClient)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request())
        self.assertIn(ACCEPT, transport.value())

    def test_noCompressionNoPing(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, WebSocketClient)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request(
            extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
        response = transport.value()
        self.assertIn(b" 101 ", response)
        self.assertNotIn(b"Sec-WebSocket-Extensions", response)
        # autobahn copies its factory's options onto the protocol, undeclared.
        options: Any = protocol
        self.assertEqual(options.autoPingInterval, 0)

    def test_plainHTTP(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, WebSocketClient)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 426 "), transport.value())
        self.assertEqual(len(self.news), 0)

    def test_nothingBeforeTheHandshake(self):
        """
        A client joins its backplanes once the opening handshake is done.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS", publish_to="CHAT")
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, WebSocketClient)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(len(self.news), 0)
        self.assertEqual(self.chat.stats.publishers, 0)
        self.news.publish(b"too early")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(request())
        self.assertEqual(len(self.news), 1)
        self.assertEqual(self.chat.stats.publishers, 1)


class SubscribeTests(Ports, SynchronousTestCase):
    def test_eachLineItsOwnMessageOneWritePerChunk(self):
        _protocol, transport = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        self.news.publishLines(b"one\ntwo\n\nfour\n")
        self.news.publish(b"five")
        self.assertEqual(len(transport.writes), 2)
        self.assertEqual(serverFrames(transport.value()), [
            (TEXT, b"one"), (TEXT, b"two"), (TEXT, b""), (TEXT, b"four"), (TEXT, b"five")])

    def test_retainedOnOpen(self):
        last = self.service.create("LAST", retain=2)
        last.publishMany([b"one", b"two", b"three"])
        protocol = WebSocketFactory(self.service, subscribe_to="LAST").buildProtocol(None)
        assert isinstance(protocol, WebSocketClient)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request())
        response, frames = transport.value().split(b"\r\n\r\n", 1)
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "))
        self.assertEqual(serverFrames(frames), [(TEXT, b"two"), (TEXT, b"three")])

    def test_binaryWhenNotUTF8(self):
        _protocol, transport = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        self.news.publishMany([b"caf\xc3\xa9", b"caf\xe9", b"\x00\x01"])
        self.assertEqual(serverFrames(transport.value()), [
            (TEXT, b"caf\xc3\xa9"), (BINARY, b"caf\xe9"), (TEXT, b"\x00\x01")])

    def test_encodedOnceForEveryClient(self):
        """
        The frames of a chunk are built once: every WebSocket subscriber, on
        this port or another, writes the very same bytes object.
        """
        first = WebSocketFactory(self.service, subscribe_to="NEWS")
        second = WebSocketFactory(self.service, subscribe_to="NEWS", publish_to="CHAT")
        clients = [opened(first, ("127.0.0.1", i)) for i in range(3)]
        clients.append(opened(second))
        self.news.publishLines(b"a\nb\n")
        writes = [transport.writes for _, transport in clients]
        self.assertEqual([len(w) for w in writes], [1, 1, 1, 1])
        for w in writes:
            self.assertIs(w[0], writes[0][0])

    def test_notAfterClose(self):
        """
        Once the server has sent its Close frame, no data frame follows it.
        """
        protocol, transport = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        protocol.goAway()
        self.news.publish(b"too late")
        frames = serverFrames(transport.value())
        self.assertEqual(len(frames), 1)
        self.assertEqual(closeCode(frames[0]), 1001)
        self.assertEqual(len(self.news), 0)

    def test_notAfterProtocolError(self):
        """
        Nor after the Close frame autobahn sends for a protocol error (here
        an unmasked frame from the client).
        """
        protocol, transport = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        protocol.dataReceived(b"\x81\x02hi")
        self.news.publish(b"too late")
        frames = serverFrames(transport.value())
        self.assertEqual([closeCode(f) for f in frames], [1002])
        self.assertEqual(len(self.news), 0)

    def test_unsubscribedOnDisconnect(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS", publish_to="CHAT")
        protocol, transport = opened(factory)
        self.assertEqual((len(self.news), self.chat.stats.publishers), (1, 1))
        gone(protocol, transport)
        self.assertEqual((len(self.news), self.chat.stats.publishers), (0, 0))
        self.assertEqual(factory.clients, 0)

    def test_registeredAsStreamingProducer(self):
        protocol, transport = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)


@implementer(ILineSink)
class ChunkSink:
    def __init__(self):
        self.chunks = []

    def deliver(self, data, count):
        self.chunks.append((data, count))


class PublishTests(Ports, SynchronousTestCase):
    def publisher(self, **kwargs):
        recorder = Recorder.on(self.news)
        protocol, transport = opened(WebSocketFactory(self.service, publish_to="NEWS", **kwargs))
        return protocol, transport, recorder

    def test_frameIntoLines(self):
        protocol, _, recorder = self.publisher()
        cases = [
            (b"one", [b"one"]),
            (b"two\n", [b"two"]),
            (b"three\r\n", [b"three"]),
            (b"four\r", [b"four"]),  # the frame's end ends the line
            (b"", [b""]),
            (b"\n", [b""]),
            (b"\n\n", [b"", b""]),
            (b"a\r\nb\n\nc", [b"a", b"b", b"", b"c"]),
            (b"cr\rinside\r\r\n", [b"cr\rinside\r"]),
        ]
        for payload, messages in cases:
            recorder.clear()
            protocol.dataReceived(clientFrame(payload))
            self.assertEqual(recorder.messages, messages, payload)

    def test_binaryFramesUnchanged(self):
        protocol, _, recorder = self.publisher()
        protocol.dataReceived(clientFrame(b"\x00\xff\x80 bytes\r\n\xfe", opcode=BINARY))
        self.assertEqual(recorder.messages, [b"\x00\xff\x80 bytes", b"\xfe"])

    def test_oneChunkPerFrame(self):
        sink = ChunkSink()
        self.news.attach(sink)
        protocol, _, _ = self.publisher()
        protocol.dataReceived(clientFrame(b"a\nb\r\nc") + clientFrame(b"d"))
        self.assertEqual(sink.chunks, [(b"a\nb\nc\n", 3), (b"d\n", 1)])

    def test_fragmentedMessage(self):
        protocol, _, recorder = self.publisher()
        protocol.dataReceived(clientFrame(b"hel", fin=False))
        protocol.dataReceived(clientFrame(b"lo\nwor", opcode=0, fin=False))
        self.assertEqual(recorder.messages, [])
        protocol.dataReceived(clientFrame(b"ld", opcode=0))
        self.assertEqual(recorder.messages, [b"hello", b"world"])

    def test_byteByByte(self):
        protocol, _, recorder = self.publisher()
        data = clientFrame(b"first\nsecond") + clientFrame(b"x" * 300, opcode=BINARY)
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
        self.assertEqual(recorder.messages, [b"first", b"second", b"x" * 300])

    def test_noEcho(self):
        factory = WebSocketFactory(self.service, publish_to="CHAT", subscribe_to="CHAT")
        alice, aliceOut = opened(factory, ("127.0.0.1", 1))
        _bob, bobOut = opened(factory, ("127.0.0.1", 2))
        lines, linesOut = connect(PublishToFactory(self.service, "CHAT", subscribe_to="CHAT"))
        alice.dataReceived(clientFrame(b"from alice"))
        lines.dataReceived(b"from lines\n")
        self.assertEqual(serverFrames(aliceOut.value()), [(TEXT, b"from lines")])
        self.assertEqual(serverFrames(bobOut.value()),
                         [(TEXT, b"from alice"), (TEXT, b"from lines")])
        self.assertEqual(linesOut.value(), b"from alice\n")

    def test_subscribeOnlyDiscards(self):
        """
        A port that does not publish reads and discards what its clients
        send, whatever its size, without keeping it.
        """
        recorder = Recorder.on(self.news)
        protocol, transport = opened(
            WebSocketFactory(self.service, subscribe_to="NEWS", limits=Limits(max_line_length=10)))
        protocol.dataReceived(clientFrame(b"ignored\nignored", opcode=BINARY))
        protocol.dataReceived(clientFrame(b"y" * 1000))
        self.assertEqual(protocol.message_data, None)
        self.assertEqual(recorder.messages, [])
        self.assertEqual(self.news.stats.messages_in, 0)
        self.news.publish(b"still subscribed")
        self.assertEqual(serverFrames(transport.value()), [(TEXT, b"still subscribed")])

    def test_publishersCounted(self):
        protocol, transport, _ = self.publisher()
        self.assertEqual(self.news.stats.publishers, 1)
        gone(protocol, transport)
        self.assertEqual(self.news.stats.publishers, 0)


class LineLengthTests(Ports, SynchronousTestCase):
    def publisher(self, limit):
        self.recorder = Recorder.on(self.news)
        self.log = CapturedLog(self)
        return opened(WebSocketFactory(self.service, publish_to="NEWS", subscribe_to="CHAT",
                                   limits=Limits(max_line_length=limit)))

    def assertRefused(self, protocol, transport):
        """
        The client was sent a Close frame, 1009 (message too big), and the
        log says why; its subscription is over; nothing it sends now is
        published; its Close reply ends the connection.
        """
        frames = serverFrames(transport.value())
        self.assertEqual([closeCode(f) for f in frames], [1009])
        warnings = [e for e in self.log.events
                    if "longer than max_line_length" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(len(self.chat), 0)
        published = list(self.recorder.messages)
        protocol.dataReceived(clientFrame(b"a"))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(clientFrame(struct.pack("!H", 1000), opcode=CLOSE))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.messages, published)

    def test_exactlyTheLimit(self):
        protocol, transport = self.publisher(10)
        protocol.dataReceived(clientFrame(b"y" * 10))
        protocol.dataReceived(clientFrame(b"z" * 10 + b"\n"))
        protocol.dataReceived(clientFrame(b"short\nlines"))
        self.assertEqual(self.recorder.messages, [b"y" * 10, b"z" * 10, b"short", b"lines"])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_overlongLineInFrame(self):
        """
        A message of max_line_length + 1 bytes is read, but its line is
        too long: nothing of it is published, and the client is closed with
        1009 (message too big).
        """
        protocol, transport = self.publisher(10)
        protocol.dataReceived(clientFrame(b"ok"))
        protocol.dataReceived(clientFrame(b"y" * 11))
        self.assertEqual(self.recorder.messages, [b"ok"])
        self.assertRefused(protocol, transport)
        self.assertEqual(self.recorder.messages, [b"ok"])

    def test_carriageReturnCounts(self):
        protocol, transport = self.publisher(3)
        protocol.dataReceived(clientFrame(b"abc\r"))
        self.assertEqual(self.recorder.messages, [])
        self.assertRefused(protocol, transport)

    def test_hugeFrameRefusedFromItsHeader(self):
        """
        A frame announcing more than max_line_length + 1 bytes is refused
        from its header, before any of it is read: the client is sent a
        Close frame; what it goes on sending is read and thrown away, and if
        it does not reply within a second its connection is dropped.
        """
        protocol, transport = self.publisher(100)
        protocol.dataReceived(clientFrame(b"", opcode=BINARY, length=10 ** 9)[:14])
        self.assertEqual([closeCode(f) for f in serverFrames(transport.value())], [1009])
        self.assertEqual(len(self.chat), 0)
        for _ in range(100):
            protocol.dataReceived(b"\x00" * 10000)
        self.assertEqual(protocol.data, b"", "nothing kept")
        self.assertFalse(protocol.message_data)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(protocol.closeHandshakeTimeout + 0.5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.recorder.messages, [])

    def test_fragmentsAddUp(self):
        protocol, transport = self.publisher(10)
        protocol.dataReceived(clientFrame(b"123456", fin=False))
        protocol.dataReceived(clientFrame(b"123456", opcode=0))
        self.assertEqual(self.recorder.messages, [])
        self.assertRefused(protocol, transport)

    def test_linesBeforeArePublished(self):
        protocol, transport = self.publisher(5)
        protocol.dataReceived(clientFrame(b"a") + clientFrame(b"b\nc") + clientFrame(b"toolong"))
        self.assertEqual(self.recorder.messages, [b"a", b"b", b"c"])
        self.assertRefused(protocol, transport)


class SlowSubscriberTests(Ports, SynchronousTestCase):
    """
    max_pending and slow, as on a line port, counted in the bytes of the
    frames written.
    """

    def subscriber(self, **limits):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS", limits=Limits(**limits))
        return opened(factory)

    def test_disconnectPastMaxPending(self):
        slow, slowOut = self.subscriber(max_pending=10)
        _quick, quickOut = self.subscriber(max_pending=10)
        log = CapturedLog(self)
        slow.pauseProducing()
        self.news.publish(b"123456")  # 8 bytes of frame
        slow.pauseProducing()  # as a transport does on each write while full
        self.news.publish(b"")  # 2 more: 10
        self.assertFalse(slowOut.disconnecting, "10 bytes behind is allowed")
        self.news.publish(b"x")
        self.assertTrue(slowOut.disconnected, "aborted, not waiting to flush")
        self.assertEqual(self.news.stats.slow_disconnects, 1)
        self.assertEqual(len(self.news), 1)
        self.news.publish(b"y")
        self.assertEqual(serverFrames(quickOut.value()),
                         [(TEXT, b"123456"), (TEXT, b""), (TEXT, b"x"), (TEXT, b"y")])
        # What waited for it, beyond the transport's buffer, went with it.
        self.assertEqual(serverFrames(slowOut.value()), [])
        self.assertTrue(any("Disconnecting slow subscriber" in e.get("log_format", "")
                            for e in log.events))

    def test_dropWholeMessages(self):
        protocol, transport = self.subscriber(max_pending=10, slow="drop")
        protocol.pauseProducing()
        self.news.publish(b"1234")  # 6
        self.news.publishMany([b"a", b"b"])  # 6 more: 12 > 10, dropped whole
        self.news.publish(b"56")  # 4: fits
        self.assertFalse(transport.disconnecting)
        self.assertEqual(serverFrames(transport.value()), [], "waiting for the transport")
        self.assertEqual(protocol.dropped, 2)
        self.assertEqual(self.news.stats.dropped, 2)
        protocol.resumeProducing()
        self.assertEqual(serverFrames(transport.value()), [(TEXT, b"1234"), (TEXT, b"56")])
        self.news.publish(b"caught up")
        self.assertEqual(serverFrames(transport.value())[-1], (TEXT, b"caught up"))


class FactoryTests(Ports, SynchronousTestCase):
    def test_maxClients(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS", limits=Limits(max_clients=2))
        first = opened(factory, ("127.0.0.1", 1))
        opened(factory, ("127.0.0.1", 2))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3)))
        self.assertEqual(factory.refused, 1)
        self.assertEqual(factory.clients, 2)
        self.news.publish(b"x")
        self.assertEqual(serverFrames(first[1].value()), [(TEXT, b"x")])
        gone(*first)
        self.assertEqual(factory.clients, 1)
        opened(factory, ("127.0.0.1", 4))
        self.assertEqual(factory.clients, 2)

    def test_needsADirection(self):
        self.assertRaises(ValueError, WebSocketFactory, self.service)
        self.assertRaises(KeyError, WebSocketFactory, self.service, subscribe_to="NOPE")

    def test_disconnectAllSaysGoingAway(self):
        """
        Closing every client (as a port's service does when it stops) sends
        each open one a Close frame, 1001 (going away), after what is
        pending; a client still in its handshake is simply disconnected.
        The Deferred fires once all are gone.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        clients = [opened(factory, ("127.0.0.1", i)) for i in range(2)]
        early = factory.buildProtocol(None)
        assert isinstance(early, WebSocketClient)
        earlyOut = StringTransport()
        early.makeConnection(earlyOut)
        self.news.publish(b"last words")
        done: list[None] = []
        factory.disconnectAll().addCallback(done.append)
        self.assertTrue(earlyOut.disconnecting)
        for protocol, transport in clients:
            frames = serverFrames(transport.value())
            self.assertEqual(frames[0], (TEXT, b"last words"))
            self.assertEqual(closeCode(frames[1]), 1001)
            protocol.dataReceived(clientFrame(struct.pack("!H", 1001), opcode=CLOSE))
            self.assertTrue(transport.disconnecting)
            gone(protocol, transport)
        self.assertEqual(done, [])
        gone(early, earlyOut)
        self.assertEqual(done, [None])

    def test_goingAwaySendsWhatWaitsFirst(self):
        """
        Frames waiting for a full transport go before the Close frame.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        protocol, transport = opened(factory)
        protocol.pauseProducing()
        self.news.publish(b"waited")
        self.assertEqual(serverFrames(transport.value()), [])
        factory.disconnectAll()
        frames = serverFrames(transport.value())
        self.assertEqual(frames[0], (TEXT, b"waited"))
        self.assertEqual(closeCode(frames[1]), 1001)

    def test_abortAll(self):
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        clients = [opened(factory, ("127.0.0.1", i)) for i in range(2)]
        factory.abortAll()
        for _, transport in clients:
            self.assertTrue(transport.disconnected)

    def test_protocolClass(self):
        protocol, _ = opened(WebSocketFactory(self.service, subscribe_to="NEWS"))
        self.assertIsInstance(protocol, WebSocketClient)
        self.assertIs(protocol.port.protocol, WebSocketClient)


TOKEN = "token-of-the-page"
READER = "token-of-the-reader"


def _authority():
    import hashlib

    from backplane.auth.authority import Authority
    from backplane.auth.identity import Permissions
    from backplane.auth.users import User, Users

    return Authority(Users([
        User("page", Permissions(("CHAT",), ("NEWS",)),
             tokenSha256=hashlib.sha256(TOKEN.encode()).digest()),
        User("reader", Permissions((), ("NEWS",)),
             tokenSha256=hashlib.sha256(READER.encode()).digest()),
    ]))


class AccessTests(Ports, SynchronousTestCase):
    """
    A WebSocket port with auth: the token in ?token= or beside the
    subprotocol "backplane"; 401 or 403 before the upgrade; nothing
    published nor delivered to a refused client.
    """

    def factory(self, **kwargs):
        return WebSocketFactory(self.service, publish_to="CHAT", subscribe_to="NEWS",
                                authority=_authority(), **kwargs)

    def test_tokenInQuery(self):
        factory = self.factory()
        protocol, _transport = opened(factory, handshake=request(f"/?token={TOKEN}"))
        self.assertEqual(len(self.news), 1)
        assert isinstance(protocol, WebSocketClient)
        assert protocol.identity is not None
        self.assertEqual(protocol.identity.name, "page")
        self.assertEqual(factory.gate.counters.snapshot(), {"accepted": 1, "refused": {}})

    def test_tokenAsSubprotocol(self):
        """
        A browser's WebSocket(url, ["backplane", token]): the server chooses
        "backplane".
        """
        factory = self.factory()
        _protocol, transport = handshake(factory, request(
            extra=f"Sec-WebSocket-Protocol: backplane, {TOKEN}\r\n"))
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response)
        self.assertIn(b"Sec-WebSocket-Protocol: backplane\r\n", response)
        self.assertNotIn(TOKEN.encode(), response)
        self.assertEqual(len(self.news), 1)

    def test_refused(self):
        factory = self.factory()
        recorder = Recorder.on(self.chat)
        for path, extra, status in [
            ("/", "", b"HTTP/1.1 401 no token"),
            ("/?token=", "", b"HTTP/1.1 401 no token"),
            ("/?token=nope", "", b"HTTP/1.1 401 unknown token"),
            ("/", "Sec-WebSocket-Protocol: backplane, nope\r\n", b"HTTP/1.1 401 unknown token"),
            ("/", f"Sec-WebSocket-Protocol: {TOKEN}\r\n", b"HTTP/1.1 401 no token"),
            (f"/?token={READER}", "", b"HTTP/1.1 403 may not publish to 'CHAT'"),
        ]:
            protocol, transport = handshake(factory, request(path, extra=extra))
            self.assertEqual(transport.value().split(b"\r\n", 1)[0], status)
            self.assertTrue(transport.disconnecting or transport.disconnected)
            protocol.dataReceived(clientFrame(b"published?"))
        self.news.publish(b"delivered?")
        self.assertEqual((recorder.messages, len(self.news), self.chat.stats.publishers),
                         ([], 0, 0))
        self.assertEqual(factory.gate.counters.snapshot(), {
            "accepted": 1, "refused": {"forbidden": 1, "missing": 3, "unknown": 2}})

    def test_originBeforeToken(self):
        factory = self.factory()
        status, _ = refused(factory, request(f"/?token={TOKEN}", origin="https://evil.example"))
        self.assertEqual(status, b"HTTP/1.1 403 origin 'https://evil.example' not allowed")
        self.assertEqual(factory.gate.counters.snapshot(),
                         {"accepted": 0, "refused": {"origin": 1}})

    def test_refusalsLogNoToken(self):
        """
        A refusal is logged with the client's address and a reason that
        quotes at most 64 characters of what was sent, and never the token.
        """
        log = CapturedLog(self)
        factory = self.factory()
        long = "https://" + "x" * 5000 + ".example"
        refused(factory, request(origin=long))
        refused(factory, request("/?token=" + "s3cret" * 10))
        refused(factory, request(f"/?token={READER}"))
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(event) for event in log.events)
        self.assertIn("Refused 127.0.0.1:40000 (403): origin 'https://xxxx", text)
        self.assertNotIn("x" * 80, text)
        self.assertNotIn("s3cret", text)
        self.assertNotIn(READER, text)
        self.assertIn("may not publish to 'CHAT'", text)

    def test_authOffOffersTheSubprotocol(self):
        """
        Without auth, a token offered beside "backplane" is not read; the
        subprotocol is chosen all the same.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        _protocol, transport = handshake(factory, request(
            extra="Sec-WebSocket-Protocol: backplane, whatever\r\n"))
        self.assertIn(b"Sec-WebSocket-Protocol: backplane\r\n", transport.value())
        self.assertEqual(len(self.news), 1)
