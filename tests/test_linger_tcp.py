"""
C{linger} on a port that publishes, over real TCP: a publisher's lines,
sent one a write, are read (and published) at most once a C{linger}.
"""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from backplane import PublishToFactory
from backplane.interfaces import ILineSink
from backplane.protocols import Limits
from tests.helpers import portNumber, waitUntil

LINES = 30


@implementer(ILineSink)
class Chunks:
    """
    A sink that keeps every chunk the backplane hands it.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def deliver(self, data: bytes, count: int) -> None:
        self.chunks.append(data)

    @property
    def lines(self) -> list[bytes]:
        return b"".join(self.chunks).splitlines()


def _sendOneAWrite(port: int, gap: float) -> float:
    """
    Send C{LINES} lines, one a write, C{gap} seconds apart; return how
    long it took.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.monotonic()
        for n in range(LINES):
            sock.sendall(b"line %d\n" % n)
            time.sleep(gap)
        elapsed = time.monotonic() - start
        sock.shutdown(socket.SHUT_WR)
        sock.recv(10)  # until the server closes
        return elapsed


@pytest_twisted.inlineCallbacks
def test_aPublisherIsReadOnceALinger(service):
    """
    Lines sent one a write, 2 ms apart, to a port with C{linger = 0.02}:
    every line is published, in order, in at most one chunk a C{linger}
    (plus the first read and the end of input), not one a line.
    """
    linger = 0.02
    factory = PublishToFactory(service, "DATA", limits=Limits(linger=linger))
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield endpoint.listen(factory)
    sink = Chunks()
    service.get("DATA").attach(sink)
    try:
        elapsed = yield deferToThread(_sendOneAWrite, portNumber(port), 0.002)
        yield waitUntil(lambda: len(sink.lines) >= LINES, what="every line")
        assert sink.lines == [b"line %d" % n for n in range(LINES)]
        assert len(sink.chunks) <= elapsed / linger + 3, (len(sink.chunks), elapsed)
        assert len(sink.chunks) < LINES / 2
    finally:
        yield port.stopListening()


def _sendFast(port: int, total: int) -> None:
    """
    Send C{total} bytes of 100-byte lines as fast as the server reads.
    """
    line = b"y" * 99 + b"\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(line * (total // len(line)))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(10)


@pytest_twisted.inlineCallbacks
def test_aFastPublisherIsNotCapped(service):
    """
    A publisher that sends faster than a read a C{linger} is read as fast
    as it sends: 4 MB through a port with C{linger = 1} (held after every
    read, 64 KiB a second at most: about a minute) within 20 s.
    """
    factory = PublishToFactory(service, "DATA", limits=Limits(linger=1.0))
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield endpoint.listen(factory)
    sink = Chunks()
    service.get("DATA").attach(sink)
    try:
        yield deferToThread(_sendFast, portNumber(port), 4_000_000)
        yield waitUntil(lambda: len(sink.lines) >= 40_000, timeout=20, what="every line")
        assert len(sink.lines) == 40_000
    finally:
        yield port.stopListening()
