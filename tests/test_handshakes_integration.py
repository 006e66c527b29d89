"""
Handshakes over real loopback sockets: connections held open without a
handshake never lock a valid client out of a port with C{max_clients}
(mutual TLS, WebSocket), and are cut at C{handshake_timeout}; a request
head past the bounds is refused briefly, once, without echoing it.
"""

from __future__ import annotations

import socket
import time
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, threads
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import ILogObserver, formatEventAsClassicLogText, globalLogPublisher
from twisted.web.http import HTTPChannel
from websockets.sync.client import connect as connectWebSocket
from zope.interface import provider

from backplane import BackplaneService
from backplane.heads import MAX_HEAD_BYTES, MAX_HEADERS
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory, Limits
from backplane.sse import SSEFactory
from backplane.tls import loadCertificates, requireClientCertificates
from backplane.websocket import WebSocketFactory
from tests.certs import Certificates
from tests.helpers import connectClient, portNumber, waitUntil
from tests.test_tls import connectTLS

SLOTS = 10
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def logged():
    """
    Every log event emitted during the test, as the text a log file gets.
    """
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text = formatEventAsClassicLogText(event)
        if text:
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def serve(service, endpoint, factory) -> ListenService:
    port = ListenService(endpoint, factory, description="test", where="listen[1]")
    port.setServiceParent(service)
    return port


def serveTCP(service, factory) -> int:
    port = serve(service, endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                 factory)
    return portNumber(port.port)


def holdOpen(port: int, count: int):
    """
    C{count} plain TCP connections to C{port} that send nothing.
    """
    return [connectClient(port) for _ in range(count)]


@pytest_twisted.inlineCallbacks
def test_mutualTLSClientGetsInPastUnfinishedHandshakes(service, certs):
    """
    The issue's row: an mTLS port with max_clients; that many connections
    that never start TLS; a client with a valid certificate gets in and
    receives lines promptly, and the unfinished ones are cut at the timeout.
    """
    endpoint = endpoints.serverFromString(reactor, certs.sslEndpoint())
    requireClientCertificates(endpoint, loadCertificates(str(certs.ca.path)))
    factory = BackplaneFactory(service, subscribe_to="DATA",
                               limits=Limits(max_clients=SLOTS, handshake_timeout=TIMEOUT))
    listening = serve(service, endpoint, factory)
    stalled = yield gatherResults(holdOpen(portNumber(listening.port), SLOTS))
    yield waitUntil(lambda: factory.handshakes == SLOTS, what="the stalled connections")
    started = time.monotonic()
    trusted = yield connectTLS(listening, certs, client=certs.client)
    yield waitUntil(lambda: len(service.get("DATA")) == 1, timeout=TIMEOUT,
                    what="the trusted client subscribed")
    service.get("DATA").publish(b"welcome")
    yield waitUntil(lambda: trusted.lines == [b"welcome"], timeout=TIMEOUT, what="its line")
    assert time.monotonic() - started < TIMEOUT
    assert factory.clients == 1
    yield waitUntil(lambda: all(client.closed.called for client in stalled),
                    timeout=TIMEOUT + 5, what="the stalled connections cut")
    assert factory.stats.handshake_timeouts + factory.stats.handshakes_evicted == SLOTS
    assert factory.stats.refused == 0
    assert trusted.connected
    service.get("DATA").publish(b"still here")
    yield waitUntil(lambda: trusted.lines == [b"welcome", b"still here"])


@pytest_twisted.inlineCallbacks
def test_webSocketClientGetsInPastUnfinishedHandshakes(service):
    """
    The same for a WebSocket port: connections that never send the
    upgrade request do not keep a real C{websockets} client out.
    """
    factory = WebSocketFactory(service, subscribe_to="DATA",
                               limits=Limits(max_clients=SLOTS, handshake_timeout=TIMEOUT))
    port = serveTCP(service, factory)
    stalled = yield gatherResults(holdOpen(port, SLOTS))
    yield waitUntil(lambda: factory.handshakes == SLOTS, what="the stalled connections")

    def receive() -> str | bytes:
        with connectWebSocket(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as client:
            deadline = time.monotonic() + TIMEOUT
            while len(service.get("DATA")) != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            threads.blockingCallFromThread(cast(IReactorFromThreads, reactor),
                                           service.get("DATA").publish, b"hello")
            return client.recv(timeout=TIMEOUT)

    received = yield threads.deferToThread(receive)
    assert received == "hello"
    yield waitUntil(lambda: all(client.closed.called for client in stalled),
                    timeout=TIMEOUT + 5, what="the stalled connections cut")
    assert factory.stats.handshake_timeouts + factory.stats.handshakes_evicted == SLOTS


def _rawExchange(port: int, request: bytes, sendAll: bool = True) -> bytes:
    """
    Send C{request} on a blocking socket (as far as the server lets it in)
    and read what comes back until the server closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # the server closed before reading it all: expected
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


@pytest_twisted.inlineCallbacks
def test_hugeWebSocketHeaderCostsTheLogLittle(service, logged):
    """
    The issue's row: a WebSocket handshake with an 8 MB header value costs
    the log less than 64 KiB, and the response does not echo it.
    """
    factory = WebSocketFactory(service, subscribe_to="DATA")
    port = serveTCP(service, factory)
    del logged[:]
    value = b"A" * (8 * 1024 * 1024)
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: " + value + b"\r\n\r\n")
    response = yield threads.deferToThread(_rawExchange, port, request)
    yield waitUntil(lambda: factory.clients == 0 and factory.handshakes == 0,
                    what="the connection closed")
    assert b"AAAAAAAAAA" * 10 not in response
    if response:  # the server may reset before the client reads it
        assert response.startswith(b"HTTP/1.1 431 ")
        assert len(response) < 1024
    size = sum(len(line.encode()) for line in logged)
    assert size < 64 * 1024
    refusals = [line for line in logged if "Refused" in line]
    assert len(refusals) == 1, logged
    assert factory.stats.bad_heads == 1


@pytest_twisted.inlineCallbacks
def test_tooManyWebSocketHeaders(service, logged):
    factory = WebSocketFactory(service, subscribe_to="DATA")
    port = serveTCP(service, factory)
    del logged[:]
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" + headers
               + b"\r\n")
    response = yield threads.deferToThread(_rawExchange, port, request)
    assert response.startswith(b"HTTP/1.1 431 ")
    assert factory.stats.bad_heads == 1
    assert len([line for line in logged if "Refused" in line]) == 1


@pytest_twisted.inlineCallbacks
def test_webSocketRefusalDoesNotEchoTheClient(service, logged):
    """
    A refusal autobahn words itself (here: a bad protocol version, which it
    quotes) is cut short in the response and in the one log line.
    """
    factory = WebSocketFactory(service, subscribe_to="DATA")
    port = serveTCP(service, factory)
    del logged[:]
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: " + b"9" * 8000 + b"\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    response = yield threads.deferToThread(_rawExchange, port, request)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"9" * 100 not in response
    refusals = [line for line in logged if "Refused" in line or "failing" in line
                or "dropping" in line]
    assert len(refusals) == 1, logged
    assert "9" * 100 not in refusals[0]


@pytest_twisted.inlineCallbacks
def test_sseHeadBoundsAndTimeout(service, logged):
    """
    An SSE port refuses a head past the bounds (431 for a long line), logs
    it once, counts it; a connection that sends no request is cut at the
    handshake timeout.
    """
    factory = SSEFactory(service, subscribe_to="DATA",
                         limits=Limits(max_clients=2, handshake_timeout=TIMEOUT))
    port = serveTCP(service, factory)
    del logged[:]
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"B" * (1024 * 1024) + b"\r\n\r\n"
    response = yield threads.deferToThread(_rawExchange, port, request)
    if response:
        assert response.startswith(b"HTTP/1.1 431 ")
    assert b"B" * 100 not in response
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    response = yield threads.deferToThread(
        _rawExchange, port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    assert factory.stats.bad_heads == 2
    assert len([line for line in logged if "Refused" in line]) == 2
    assert sum(len(line) for line in logged) < 4096

    (silent,) = yield gatherResults(holdOpen(port, 1))
    yield waitUntil(lambda: silent.closed.called, timeout=TIMEOUT + 5, what="the cut")
    assert factory.stats.handshake_timeouts == 1


def test_boundedChannelTripwire():
    """
    L{backplane.heads.BoundedChannel} hooks Twisted's private way out for a
    bad request head: it must still be there.
    """
    assert callable(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None))
    assert HTTPChannel.totalHeadersSize >= MAX_HEAD_BYTES


@pytest_twisted.inlineCallbacks
def test_monitorHeadBounds(logged):
    """
    The monitor refuses a request with too many headers (400) or a line
    too long (431), logs it once, counts it in its C{bad_heads}, and goes
    on serving.
    """
    from backplane.monitor import MonitorService

    service = BackplaneService()
    service.create("DATA")
    monitor = MonitorService(
        service, endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
        description="tcp:0")
    monitor.setServiceParent(service)
    service.startService()
    try:
        port = portNumber(monitor.port)
        del logged[:]
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
        response = yield threads.deferToThread(
            _rawExchange, port, b"GET /stats HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
        response = yield threads.deferToThread(
            _rawExchange, port,
            b"GET /stats HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"C" * 100_000 + b"\r\n\r\n")
        assert b"C" * 100 not in response
        assert len([line for line in logged if "Refused" in line]) == 2
        assert sum(len(line) for line in logged) < 4096
        assert monitor.report()["counters"]["bad_heads"] == 2  # type: ignore[index]
        fine = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS - 2))
        response = yield threads.deferToThread(
            _rawExchange, port,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + fine + b"\r\n")
        assert response.startswith(b"HTTP/1.1 200 ")
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_sseFullWhenItsRequestCame(service):
    """
    An SSE client that sends its request once C{max_clients} streams are
    open gets a 503, counted as refused; it held no place while it had sent
    nothing.
    """
    factory = SSEFactory(service, subscribe_to="DATA", limits=Limits(max_clients=1,
                                                                      max_handshakes=4))
    port = serveTCP(service, factory)
    (early,) = yield gatherResults(holdOpen(port, 1))
    yield waitUntil(lambda: factory.handshakes == 1, what="the early connection")
    stream = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        stream.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        yield waitUntil(lambda: factory.clients == 1, what="the stream open")
        early.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        yield early.closed
        assert early.lines[0].startswith(b"HTTP/1.1 503 ")
        assert factory.stats.refused == 1
        assert factory.clients == 1
    finally:
        stream.close()


@pytest_twisted.inlineCallbacks
def test_requestBodiesBounded(service, logged):
    """
    An SSE port takes no request body past 64 KiB (Twisted would keep it
    all, in a temporary file): 413, logged once, never served.
    """
    factory = SSEFactory(service, subscribe_to="DATA")
    port = serveTCP(service, factory)
    del logged[:]
    body = b"D" * (1024 * 1024)
    for framing in (b"Content-Length: %d\r\n\r\n" % len(body) + body,
                    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body
                    + b"\r\n0\r\n\r\n"):
        response = yield threads.deferToThread(
            _rawExchange, port, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing)
        if response:
            assert response.startswith(b"HTTP/1.1 413 "), response[:100]
    assert factory.stats.bad_heads == 2
    assert len([line for line in logged if "Refused" in line]) == 2
    assert len(service.get("DATA")) == 0
    small = yield threads.deferToThread(
        _rawExchange, port,
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: 5\r\n\r\nsmall")
    assert small.startswith(b"HTTP/1.1 405 "), small[:100]
