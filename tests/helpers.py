"""
Shared helpers for the integration tests: real sockets on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import unittest
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.web.iweb import IResponse


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@inlineCallbacks
def waitUntil(condition: Callable[[], bool], timeout: float = 20.0,
              what: str = "condition") -> Generator[Deferred[None], object, None]:
    """
    Poll C{condition} on the reactor until it is true, or fail after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {condition()}")
        yield deferLater(reactor, 0.01, lambda: None)


class LineClient(Protocol):
    """
    A test client that records the complete lines it receives.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[bytes] = []
        self.closed: Deferred[None] = Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        data = self.buffer + data
        *complete, self.buffer = data.split(b"\n")
        self.lines.extend(complete)

    def connectionLost(self, reason: object = None) -> None:
        self.connected = False
        self.closed.callback(None)

    def send(self, *lines: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(line + b"\n" for line in lines))


def portNumber(port: IListeningPort | None) -> int:
    """
    The TCP port number a listening port is bound to.
    """
    assert port is not None
    address = port.getHost()
    assert isinstance(address, IPv4Address | IPv6Address), address
    return address.port


def connectClient(port: int, host: str = "127.0.0.1",
                  source: str | None = None) -> Deferred[LineClient]:
    """
    Connect a L{LineClient} to a port on the loopback interface.

    @param source: the address to connect from (e.g. C{127.0.0.2}, another
        address of the loopback interface).
    """
    endpoint = TCP4ClientEndpoint(reactor, host, port,
                                  bindAddress=None if source is None else (source, 0))
    # connect() is typed as firing with an IProtocol: the factory's, a LineClient.
    return cast("Deferred[LineClient]", endpoint.connect(Factory.forProtocol(LineClient)))


class _Body(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(b"".join(self.chunks))


@inlineCallbacks
def httpGet(url: str, accept: str | None = None,
            method: bytes = b"GET") -> Generator[Deferred[Any], Any, tuple[IResponse, bytes]]:
    """
    GET C{url} (or another C{method}): the response and its body.
    """
    from twisted.web.client import Agent
    from twisted.web.http_headers import Headers

    headers = Headers({b"accept": [accept.encode()]} if accept else {})
    response = yield Agent(reactor).request(method, url.encode(), headers)
    body = _Body()
    response.deliverBody(body)
    data = yield body.done
    return response, data


#: Prometheus samples: C{(name, labels) -> value}.
Samples: TypeAlias = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metricSamples(text: str) -> Samples:
    """
    The samples of a Prometheus text exposition, parsed by
    C{prometheus_client}'s own parser: C{(name, labels) -> value}.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}


def sample(samples: Samples, metric: str, /, **labels: str) -> float:
    """
    One sample of L{metricSamples}' result.
    """
    return samples[(metric, frozenset(labels.items()))]


def section(report: Mapping[str, object], key: str) -> dict[str, Any]:
    """
    A part of a report or document that is a dict (C{counters}, C{gauges},
    C{info}, C{server}), read from a C{dict[str, object]}.
    """
    value = report[key]
    assert isinstance(value, dict), value
    return value


def tempDir(case: unittest.TestCase) -> Path:
    """
    A new empty folder, removed when the test C{case} ends.  (trial's
    C{mktemp} would put it under the working directory when run by pytest.)
    """
    folder = Path(tempfile.mkdtemp(prefix="backplane-test-"))
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


P = TypeVar("P", bound=Protocol)


def connectedOn(factory: Any, kind: type[P]) -> tuple[P, StringTransport]:
    """
    A client of C{factory} (which must build a C{kind}) connected to a
    L{StringTransport}, and the transport.
    """
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, kind), protocol
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport
