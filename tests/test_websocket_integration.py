"""
WebSocket ports over real loopback sockets, with autobahn's own Twisted
WebSocket client: subscribing, publishing, the limits, and stopping.
"""

from collections.abc import Generator
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import deferLater

from backplane import Backplane, BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.ports import ListenService
from backplane.protocols import Limits
from backplane.websocket import WebSocketFactory
from tests.helpers import connectClient, portNumber, waitUntil


class Client(WebSocketClientProtocol):
    """
    A WebSocket client that records the messages it receives.
    """

    def __init__(self):
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.opened: Deferred[Client] = Deferred()
        self.closed: Deferred[int] = Deferred()
        self.closeCode: int | None = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        self.closeCode = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before opening: {reason}"))
        self.closed.callback(code)

    def payloads(self):
        return [payload for payload, _ in self.messages]


def connectWebSocket(port, path="/"):
    """
    Connect a L{Client}; the Deferred fires once its opening handshake is done.
    """
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = Client
    connecting = TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)

    def opened(client: IProtocol) -> Deferred[Client]:
        assert isinstance(client, Client)
        return client.opened

    return connecting.addCallback(opened)


@pytest.fixture
def service():
    service = BackplaneService()
    service.create("DATA")
    service.create("CHAT")
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def listen(service, factory):
    """
    Serve C{factory} on a free loopback port as a child of C{service}, which
    closes every client when the test's fixture stops it.
    """
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = ListenService(endpoint, factory, description="tcp:0")
    port.setServiceParent(service)
    return portNumber(port.port)


@pytest_twisted.inlineCallbacks
def test_subscribe(service):
    """
    Each line published, in chunks from a line publisher, reaches every
    WebSocket subscriber as a message of its own: text when it is UTF-8,
    binary when it is not; any path will do.
    """
    data = service.get("DATA")
    ws = listen(service, WebSocketFactory(service, subscribe_to="DATA"))
    pub = listen(service, PublishToFactory(service, "DATA",
                                           limits=Limits(max_line_length=100_000)))
    clients = yield gatherResults([connectWebSocket(ws), connectWebSocket(ws, "/any/path")])
    yield waitUntil(lambda: len(data) == 2, what="subscribers attached")
    publisher = yield connectClient(pub)
    publisher.transport.write(b"hello\r\n\xc3\xa9t\xc3\xa9\n\xff\xfe\n\nwor")
    publisher.transport.write(b"ld\n" + b"x" * 70000 + b"\n")
    expected = [(b"hello", False), ("été".encode(), False), (b"\xff\xfe", True),
                (b"", False), (b"world", False), (b"x" * 70000, False)]
    yield waitUntil(lambda: all(len(c.messages) == len(expected) for c in clients))
    for client in clients:
        assert client.messages == expected
    publisher.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_publish(service):
    """
    The lines of a WebSocket client's messages reach line and WebSocket
    subscribers alike; on a port that publishes to and subscribes to one
    backplane, the client does not hear itself.
    """
    chat = listen(service, WebSocketFactory(service, publish_to="CHAT", subscribe_to="CHAT"))
    lines = listen(service, SubscribeToFactory(service, "CHAT"))
    alice, bob = yield gatherResults([connectWebSocket(chat), connectWebSocket(chat)])
    watcher = yield connectClient(lines)
    yield waitUntil(lambda: len(service.get("CHAT")) == 3)
    alice.sendMessage(b"one\r\ntwo")
    alice.sendMessage(b"\x00binary\xff", isBinary=True)
    bob.sendMessage(b"from bob")
    yield waitUntil(lambda: len(watcher.lines) == 4 and alice.messages and len(bob.messages) == 3)
    assert sorted(watcher.lines) == sorted([b"one", b"two", b"\x00binary\xff", b"from bob"])
    assert watcher.lines.index(b"one") + 1 == watcher.lines.index(b"two")
    assert bob.messages == [(b"one", False), (b"two", False), (b"\x00binary\xff", True)]
    assert alice.messages == [(b"from bob", False)]
    watcher.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_overlongMessageClosesOnlyThatClient(service):
    """
    A message longer than max_line_length closes its client (1009, message
    too big) and nothing of it is published; the others go on.
    """
    port = listen(service, WebSocketFactory(service, publish_to="DATA",
                                            limits=Limits(max_line_length=100)))
    lines = listen(service, SubscribeToFactory(service, "DATA"))
    watcher = yield connectClient(lines)
    good, bad, worse = yield gatherResults([connectWebSocket(port) for _ in range(3)])
    yield waitUntil(lambda: service.get("DATA").stats.publishers == 3)
    bad.sendMessage(b"fine")
    bad.sendMessage(b"b" * 101)
    bad.sendMessage(b"never")
    worse.sendMessage(b"w" * 10_000_000)
    assert (yield bad.closed) == 1009
    assert (yield worse.closed) == 1009
    good.sendMessage(b"still flowing")
    yield waitUntil(lambda: len(watcher.lines) == 2)
    assert watcher.lines == [b"fine", b"still flowing"]
    assert good.state == good.STATE_OPEN
    watcher.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_maxClients(service):
    data = service.get("DATA")
    factory = WebSocketFactory(service, subscribe_to="DATA", limits=Limits(max_clients=1))
    port = listen(service, factory)
    first = yield connectWebSocket(port)
    with pytest.raises(ConnectionError):
        yield connectWebSocket(port)
    assert factory.refused == 1
    data.publish(b"only the first")
    yield waitUntil(lambda: first.messages == [(b"only the first", False)])


def stall(client):
    """
    Make a client stop reading from its socket, as a stuck browser would.
    """
    client.transport.pauseProducing()


@inlineCallbacks
def publishWhileReading(backplane: Backplane, reader: Client, messages: int, size: int = 1000,
                        batch: int = 20) -> Generator[Deferred[Any], Any, None]:
    """
    Publish C{messages} numbered messages of C{size} bytes, in chunks of
    C{batch}, keeping within 256 kB of what C{reader} has received, so that
    a busy machine does not make it a slow subscriber too.
    """
    pad = "x" * (size - 8)
    for start in range(0, messages, batch):
        backplane.publishMany(f"{i:08d}{pad}".encode() for i in range(start, start + batch))
        yield deferLater(reactor, 0, lambda: None)
        sent = start + batch

        def caughtUp(sent: int = sent) -> bool:
            return (sent - len(reader.messages)) * size <= 256 * 1024

        yield waitUntil(caughtUp, what=f"the reader, at {sent}")
    yield waitUntil(lambda: len(reader.messages) == messages, timeout=60,
                    what="every message at the reader")


@pytest_twisted.inlineCallbacks
def test_stalledSubscriberDisconnected(service):
    """
    Past max_pending a WebSocket subscriber that stopped reading is
    aborted; another gets every message, in order.
    """
    data = service.get("DATA")
    port = listen(service, WebSocketFactory(service, subscribe_to="DATA",
                                            limits=Limits(max_pending=1024 * 1024)))
    reader, stuck = yield gatherResults([connectWebSocket(port), connectWebSocket(port)])
    yield waitUntil(lambda: len(data) == 2)
    stall(stuck)
    yield publishWhileReading(data, reader, 20_000)
    assert [int(p[:8]) for p in reader.payloads()] == list(range(20_000))
    assert data.stats.slow_disconnects == 1
    assert len(data) == 1
    stuck.transport.resumeProducing()
    yield stuck.closed


@pytest_twisted.inlineCallbacks
def test_stalledSubscriberDrops(service):
    """
    With slow = "drop" it stays connected and misses whole messages only:
    what it reads once it reads again is whole messages, in order, with a
    gap; then it gets new ones again.
    """
    data = service.get("DATA")
    factory = WebSocketFactory(service, subscribe_to="DATA",
                               limits=Limits(max_pending=1024 * 1024, slow="drop"))
    port = listen(service, factory)
    reader, stuck = yield gatherResults([connectWebSocket(port), connectWebSocket(port)])
    yield waitUntil(lambda: len(data) == 2)
    stall(stuck)
    yield publishWhileReading(data, reader, 20_000)
    assert data.stats.dropped > 0
    stuck.transport.resumeProducing()
    yield waitUntil(lambda: len(stuck.messages) + data.stats.dropped == 20_000)
    numbers = [int(p[:8]) for p in stuck.payloads()]
    assert numbers == sorted(numbers)
    assert all(len(p) == 1000 for p in stuck.payloads()), "whole messages"
    assert 0 < len(numbers) < 20_000
    data.publish(b"after")
    yield waitUntil(lambda: stuck.messages[-1] == (b"after", False))
    assert stuck.state == stuck.STATE_OPEN


@pytest_twisted.inlineCallbacks
def test_stopClosesClients():
    """
    Stopping the port's service closes every WebSocket client with a Close
    frame (1001, going away), after what was pending for it.
    """
    service = BackplaneService()
    data = service.create("DATA")
    factory = WebSocketFactory(service, subscribe_to="DATA")
    service.startService()
    number = listen(service, factory)
    clients = yield gatherResults([connectWebSocket(number) for _ in range(3)])
    yield waitUntil(lambda: len(data) == 3)
    data.publishMany([b"last words"] * 1000)
    yield service.stopService()
    for client in clients:
        assert (yield client.closed) == 1001
        assert client.payloads() == [b"last words"] * 1000
    assert factory.clients == 0


@pytest_twisted.inlineCallbacks
def test_plainHTTPGets426(service):
    """
    curl (a plain HTTP request, no upgrade) gets a complete 426 Upgrade
    Required: Upgrade, the version, a length and a body; the connection
    closes, so curl does not hang, and nothing is published.
    """
    import shutil

    from twisted.internet.utils import getProcessOutputAndValue

    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (Debian: apt-get install curl)"
    data = service.get("DATA")
    ws = listen(service, WebSocketFactory(service, publish_to="DATA"))
    out, err, code = yield getProcessOutputAndValue(
        curl, ["-si", "--max-time", "10", f"http://127.0.0.1:{ws}/"])
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 426 Upgrade Required"
    headers = {name.lower(): value for name, _, value in
               (line.partition(b": ") for line in lines[1:])}
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"sec-websocket-version"] == b"13"
    assert b"close" in headers[b"connection"]
    assert int(headers[b"content-length"]) == len(body)
    assert body == b"This is a WebSocket port: connect with a WebSocket client (ws://).\n"
    assert data.stats.messages_in == 0
