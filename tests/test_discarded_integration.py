"""
C{discarded_bytes} over real loopback sockets: a WebSocket client (Python's
C{websockets}, and a raw one) and a Redis client that leave in the middle
of a message or request have its bytes counted in their port's statistics,
and only those; a relay whose upstream sends an endless line is cut by
C{max_unfinished_total}, counted, and connects again.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest_twisted
import redis
from twisted.internet import endpoints, reactor, threads
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from websockets.sync.client import connect as connectWebSocket

from backplane.budget import UnfinishedBudget
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory
from backplane.redis.server import RedisFactory
from backplane.relay import RelayFactory, RelayService
from backplane.service import BackplaneService
from backplane.websocket import WebSocketFactory
from tests.helpers import portNumber, waitUntil
from tests.test_websocket import clientFrame
from tests.twistd import wsConnect

# Half a PUBLISH to B: its message cut after three of its five bytes.
HALF_PUBLISH = b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nB\r\n$5\r\nhel"


def serve(service: BackplaneService, factory: BackplaneFactory) -> tuple[ListenService, int]:
    """
    Serve C{factory} on a free loopback port, as a child of C{service}.
    """
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = ListenService(endpoint, factory, description="test", where="listen[1]")
    port.setServiceParent(service)
    return port, portNumber(port.port)


def discarded(port: ListenService) -> int:
    """
    The port's C{discarded_bytes}, as C{/stats} reports it.
    """
    counters: Any = port.report()["counters"]
    count: int = counters["discarded_bytes"]
    return count


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a reset (RST), as a client that crashes does.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Broken(Exception):
    """
    What the fragments of a message stop with.
    """


def brokenMessage() -> Iterator[bytes]:
    """
    The fragments of a message that is never finished.
    """
    yield b"hel"
    yield b"lo, "
    raise Broken()


@pytest_twisted.inlineCallbacks
def test_webSocketClientLeavingMidMessage(service):
    """
    Python's C{websockets} sends a whole message, then two fragments of one
    it cannot finish (it closes the connection, 1011); a raw client sends
    the first 20 bytes of a frame of 50 and resets: the port counts the 7
    and the 20 bytes never published, and nothing of the whole message.
    """
    published: list[bytes] = []
    service.get("DATA").subscribe(published.append)
    listening, port = serve(service, WebSocketFactory(service, publish_to="DATA"))

    def fragments() -> None:
        with connectWebSocket(f"ws://127.0.0.1:{port}/", compression=None,
                              open_timeout=10) as client:
            client.send("whole")
            try:
                client.send(brokenMessage())
            except Broken:
                pass
            client.wait_closed(10)

    yield threads.deferToThread(fragments)
    yield waitUntil(lambda: discarded(listening) == 7 and not listening.factory.clients,
                    what="the half message counted")
    assert published == [b"whole"]

    def cutFrame() -> None:
        sock = wsConnect(port)
        sock.sendall(clientFrame(b"c" * 50)[:6 + 20])
        reset(sock)

    yield threads.deferToThread(cutFrame)
    yield waitUntil(lambda: discarded(listening) == 27, what="the cut frame counted")
    assert published == [b"whole"]
    assert service.unfinished.held == 0


@pytest_twisted.inlineCallbacks
def test_redisClientLeavingMidRequest(service):
    """
    redis-py publishes a whole message; a raw client sends half a PUBLISH
    and closes: the port counts the half request's bytes, only those.
    """
    service.create("B")
    published: list[bytes] = []
    service.get("B").subscribe(published.append)
    listening, port = serve(service, RedisFactory(service, backplanes=("B",)))

    def whole() -> int:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        try:
            receivers: int = client.publish("B", "whole")
            return receivers
        finally:
            client.close()

    receivers = yield threads.deferToThread(whole)
    assert receivers == 1
    assert published == [b"whole"]

    def half() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_PUBLISH)
        sock.close()

    yield threads.deferToThread(half)
    yield waitUntil(lambda: discarded(listening) == len(HALF_PUBLISH) == 31
                    and not listening.factory.clients, what="the half request counted")
    assert published == [b"whole"]
    assert service.unfinished.held == 0


class EndlessLine(Protocol):
    """
    An upstream that sends a line, then a line that never ends.
    """

    def __init__(self, number: int) -> None:
        self.number = number

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"line %d\n" % self.number + b"x" * 3000)


class EndlessLines(Factory):
    """
    Upstream: an L{EndlessLine} for each connection, numbered.
    """

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: IAddress | None) -> EndlessLine:
        self.connections += 1
        return EndlessLine(self.connections)


@pytest_twisted.inlineCallbacks
def test_relayUpstreamCutPastTheBound():
    """
    A relay's upstream that sends 3,000 bytes of a line and then nothing
    holds them on the service's bound (2,000 bytes here): it is cut, the
    half line counted in the relay's discarded_bytes and never published,
    the bound released, and the relay connects again.
    """
    upstream = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        endless := EndlessLines())
    local = BackplaneService(unfinished=UnfinishedBudget(2000))
    published: list[bytes] = []
    local.create("IN").subscribe(published.append)
    factory = RelayFactory(local, "IN", initial_delay=0.05, max_delay=0.1)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", portNumber(upstream))
    RelayService(endpoint, factory).setServiceParent(local)
    local.startService()
    try:
        yield waitUntil(lambda: local.unfinished.cuts >= 2 and endless.connections >= 3,
                        what="the relay cut twice and connected again")
        assert published[:2] == [b"line 1", b"line 2"]
        assert all(line.startswith(b"line ") for line in published)
        discarded = factory.stats.discarded_bytes
        assert 2 * 2001 <= discarded <= endless.connections * 3000, discarded
        assert local.unfinished.discarded <= discarded
        assert factory.stats.reconnects >= 2
    finally:
        yield local.stopService()
        yield upstream.stopListening()
    assert (local.unfinished.held, len(local.unfinished.holders)) == (0, 0)
