"""
Real senders on real sockets (SPEC section 6): the last line before a FIN,
a reset that publishes nothing, a subscriber that half-closes (C{nc -N}),
and C{curl} on a line port.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.protocols import BackplaneFactory, BackplaneProtocol, Limits, looksLikeHTTP
from backplane.testing import Recorder, connect, sentLines
from tests.helpers import portNumber, waitUntil

NC = shutil.which("nc")
CURL = shutil.which("curl")


@pytest_twisted.inlineCallbacks
def listen(factory):
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield endpoint.listen(factory)
    return port


def run(*command: str, stdin: bytes = b"",
        timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, check=False)


@pytest.mark.skipif(NC is None, reason="nc not found (Debian: netcat-openbsd)")
@pytest_twisted.inlineCallbacks
def test_lastLineAfterFINWithNc(service):
    """
    C{printf 'a\\nx' | nc -q1 HOST PORT}: the last line, without its newline,
    is published after the client's FIN.
    """
    factory = PublishToFactory(service, "DATA")
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        result = yield deferToThread(run, str(NC), "-q1", "127.0.0.1", str(portNumber(port)),
                                     stdin=b"a\nx")
        assert result.returncode == 0, result.stderr
        yield waitUntil(lambda: len(recorder.messages) >= 2, what="the last line")
        assert recorder.messages == [b"a", b"x"]
        yield waitUntil(lambda: factory.clients == 0, what="the client gone")
        assert factory.stats.discarded_bytes == 0
    finally:
        yield port.stopListening()


def _shutdownWrite(portNumber: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", portNumber), timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        # A client that only publishes is closed once its input has ended.
        return sock.recv(100)


@pytest_twisted.inlineCallbacks
def test_lastLineAfterShutdown(service):
    """
    A script that sends a line without a newline and shuts down its sending
    side (C{shutdown(SHUT_WR)}): the line is published, and the server then
    closes the connection of a client that only publishes.
    """
    factory = PublishToFactory(service, "DATA")
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        rest = yield deferToThread(_shutdownWrite, portNumber(port), b"one\r\ntwo\r")
        assert rest == b""
        yield waitUntil(lambda: len(recorder.messages) >= 2, what="the last line")
        assert recorder.messages == [b"one", b"two"]
    finally:
        yield port.stopListening()


def _reset(portNumber: int, data: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", portNumber), timeout=20)
    sock.sendall(data)
    # SO_LINGER with a zero timeout: close() sends a RST, not a FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest_twisted.inlineCallbacks
def test_resetPublishesNoHalfLine(service):
    """
    A connection reset after half a line publishes nothing of it; the
    bytes are counted as discarded.
    """
    factory = PublishToFactory(service, "DATA")
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        yield waitUntil(lambda: True)
        accepted = factory.stats.accepted
        yield deferToThread(_reset, portNumber(port), b"whole\nhalf a line")
        yield waitUntil(lambda: factory.stats.accepted > accepted and factory.clients == 0,
                        what="the reset seen")
        assert recorder.messages == [b"whole"]
        assert factory.stats.discarded_bytes == len(b"half a line")
    finally:
        yield port.stopListening()


@pytest.mark.skipif(NC is None, reason="nc not found (Debian: netcat-openbsd)")
@pytest_twisted.inlineCallbacks
def test_halfClosedSubscriberWithNc(service):
    """
    C{nc -N HOST PORT </dev/null}: a subscriber that shuts down its sending
    side at once keeps receiving; it gets 100 lines.
    """
    factory = SubscribeToFactory(service, "DATA")
    port = yield listen(factory)
    process = subprocess.Popen([str(NC), "-N", "127.0.0.1", str(portNumber(port))],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        yield waitUntil(
            lambda: any(isinstance(p, BackplaneProtocol) and p.inputEnded
                        for p in factory.protocols),
            what="nc's half-close")
        lines = b"".join(b"line %d\n" % i for i in range(100))
        service.get("DATA").publishLines(lines, 100)

        def read() -> bytes:
            assert process.stdout is not None
            return b"".join(process.stdout.readline() for _ in range(100))

        received = yield deferToThread(read)
        assert received == lines
        assert factory.clients == 1
    finally:
        process.kill()
        process.wait()
        yield port.stopListening()


def _connectAndClose(portNumber: int) -> None:
    with socket.create_connection(("127.0.0.1", portNumber), timeout=20):
        pass


@pytest_twisted.inlineCallbacks
def test_closedSubscriberGoneAtTheSecondWrite(service):
    """
    A subscriber that closes cleanly looks half-closed until something is
    written to it: its system answers the first message with a reset, and
    the second write finds the connection gone.
    """
    factory = SubscribeToFactory(service, "DATA")
    port = yield listen(factory)
    data = service.get("DATA")
    try:
        yield deferToThread(_connectAndClose, portNumber(port))
        yield waitUntil(
            lambda: any(isinstance(p, BackplaneProtocol) and p.inputEnded
                        for p in factory.protocols),
            what="the FIN")
        assert factory.clients == 1
        for sent in range(1, 11):
            data.publishLines(b"%d\n" % sent, 1)
            # Time for the write to go out, and the reset to come back.
            yield deferLater(reactor, 0.1, lambda: None)
            if factory.clients == 0:
                break
        assert (factory.clients, sent) == (0, 2)
        assert len(data) == 0
    finally:
        yield port.stopListening()


@pytest.mark.skipif(CURL is None, reason="curl not found")
@pytest_twisted.inlineCallbacks
def test_curlGets400(service):
    """
    C{curl} on a port that publishes: it gets C{400 Bad Request} naming
    the port's protocol and exits; nothing it sent is published.
    """
    factory = PublishToFactory(service, "DATA", subscribe_to="DATA")
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        result = yield deferToThread(
            run, str(CURL), "-sS", "-i", "--max-time", "10", "-d", "published?",
            f"http://127.0.0.1:{portNumber(port)}/")
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"backplane line port" in body
        assert b"nc" in body
        yield waitUntil(lambda: factory.clients == 0, what="curl's connection closed")
        assert recorder.messages == []
        assert factory.stats.http_requests == 1
        assert factory.stats.messages_in == 0
    finally:
        yield port.stopListening()


@pytest.mark.skipif(CURL is None, reason="curl not found")
@pytest_twisted.inlineCallbacks
def test_curlOnASubscribePort(service):
    """
    C{curl} on a port that only serves a backplane gets the 400 too.
    """
    factory = SubscribeToFactory(service, "DATA")
    port = yield listen(factory)
    try:
        result = yield deferToThread(run, str(CURL), "-s", "-o", "/dev/null", "-w",
                                     "%{http_code}", "--max-time", "10",
                                     f"http://127.0.0.1:{portNumber(port)}/")
        assert result.stdout == b"400"
    finally:
        yield port.stopListening()


def _sendThenClose(portNumber: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", portNumber), timeout=20) as sock:
        sock.sendall(data)


@pytest_twisted.inlineCallbacks
def test_firstLineLikeAMethodIsALine(service):
    """
    Only a whole request line marks an HTTP client: a first line that
    starts with a method's name is a line like any other.
    """
    factory = PublishToFactory(service, "DATA")
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        yield deferToThread(_sendThenClose, portNumber(port),
                            b"GET /index.html 200 OK\nPOST\nGET / HTTP/1.1\n")
        yield waitUntil(lambda: len(recorder.messages) >= 3, what="the lines")
        assert recorder.messages == [b"GET /index.html 200 OK", b"POST", b"GET / HTTP/1.1"]
    finally:
        yield port.stopListening()


class EndOfInputTests(SynchronousTestCase):
    """
    The end of a client's input, over a L{StringTransport}: what
    C{readConnectionLost} (a FIN) does to each kind of client.
    """

    def setUp(self) -> None:
        self.service = BackplaneService()
        self.backplane = self.service.create("DATA")
        self.recorder = Recorder.on(self.backplane)

    def client(self, **kwargs: Any) -> tuple[BackplaneProtocol, StringTransport]:
        protocol, transport = connect(BackplaneFactory(self.service, **kwargs))
        assert isinstance(protocol, BackplaneProtocol)
        return protocol, transport

    def test_publisherLastLine(self) -> None:
        """
        A publisher's last half line is published at its FIN, and it is
        disconnected.
        """
        protocol, transport = self.client(publish_to="DATA")
        protocol.dataReceived(b"a\nlast")
        protocol.readConnectionLost()
        self.assertEqual(self.recorder.messages, [b"a", b"last"])
        self.assertTrue(transport.disconnecting)

    def test_nothingAfterANewline(self) -> None:
        """
        A FIN after a complete line publishes no empty line.
        """
        protocol, _transport = self.client(publish_to="DATA")
        protocol.dataReceived(b"a\n")
        protocol.readConnectionLost()
        self.assertEqual(self.recorder.messages, [b"a"])

    def test_subscriberKeepsReceiving(self) -> None:
        """
        A subscriber that half-closes stays subscribed.
        """
        protocol, transport = self.client(subscribe_to="DATA")
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        self.backplane.publishLines(b"one\ntwo\n", 2)
        self.assertEqual(sentLines(transport), [b"one", b"two"])

    def test_publisherAndSubscriber(self) -> None:
        """
        A client that publishes and subscribes publishes its last line at
        its FIN and keeps receiving.
        """
        self.service.create("OTHER")
        protocol, transport = self.client(publish_to="DATA", subscribe_to="OTHER")
        protocol.dataReceived(b"mine")
        protocol.readConnectionLost()
        self.assertEqual(self.recorder.messages, [b"mine"])
        self.assertFalse(transport.disconnecting)
        self.service.get("OTHER").publishLines(b"theirs\n", 1)
        self.assertEqual(sentLines(transport), [b"theirs"])
        protocol.writeConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_heldFirstBytes(self) -> None:
        """
        First bytes held back as the start of a possible HTTP request line
        are a line at a FIN, and discarded bytes at a reset.
        """
        protocol, _transport = self.client(publish_to="DATA")
        protocol.dataReceived(b"GE")
        protocol.readConnectionLost()
        self.assertEqual(self.recorder.messages, [b"GE"])
        protocol, _transport = self.client(publish_to="DATA")
        protocol.dataReceived(b"PUT /x")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.recorder.messages, [b"GE"])
        self.assertEqual(protocol.portStats.discarded_bytes, 6)

    def test_overlongCounted(self) -> None:
        """
        A line cut for C{max_line_length} is counted in C{discarded_bytes}.
        """
        protocol, transport = self.client(publish_to="DATA", limits=Limits(max_line_length=4))
        protocol.dataReceived(b"ok\n123456789")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.messages, [b"ok"])
        self.assertEqual(protocol.portStats.discarded_bytes, 9)

    def test_requestLineInPieces(self) -> None:
        """
        A request line that comes a byte at a time is still seen: 400, and
        nothing published.
        """
        protocol, transport = self.client(publish_to="DATA")
        for byte in b"GET / HTTP/1.0\r\nHost: x\r\n\r\n":
            protocol.dataReceived(bytes([byte]))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertIn(b"This is a backplane line port (one message a line, over TCP)",
                      transport.value())
        self.assertNotIn(b"DATA", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.messages, [])


class LooksLikeHTTPTests(SynchronousTestCase):
    def test_verdicts(self) -> None:
        for head, verdict in [
            (b"GET / HTTP/1.1\r\n", True),
            (b"OPTIONS * HTTP/1.1\n", True),
            (b"GET / HTTP/1.1", None),
            (b"G", None),
            (b"POST /a", None),
            (b"GET /index.html 200\n", False),
            (b"get / HTTP/1.1\n", False),
            (b"hello", False),
            (b"<13>GET / HTTP/1.1\n", False),
            (b"GET " + b"x" * 3000, False),
        ]:
            self.assertEqual(looksLikeHTTP(head), verdict, head)


@pytest.mark.skipif(NC is None, reason="nc not found (Debian: netcat-openbsd)")
@pytest_twisted.inlineCallbacks
def test_acknowledgedPublisherWithNc(service):
    """
    C{printf 'HELLO id 0\\none\\ntwo' | nc -N HOST PORT} on an C{acks = true}
    port: both lines are published, and nc gets C{ACK 2} at once and exits.
    """
    from backplane.acks import AckingFactory

    factory = AckingFactory(service, publish_to="DATA", ack_interval=60.0)
    port = yield listen(factory)
    recorder = Recorder.on(service.get("DATA"))
    try:
        result = yield deferToThread(run, str(NC), "-N", "127.0.0.1", str(portNumber(port)),
                                     stdin=b"HELLO nc-1 0\none\ntwo")
        assert result.stdout == b"ACK 2\n"
        assert recorder.messages == [b"one", b"two"]
    finally:
        yield port.stopListening()
