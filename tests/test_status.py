"""
The status page and the live tail over real sockets: C{/} and its assets,
C{/tail/NAME} as Server-Sent Events (streaming, bounded, read-only, 404 for
an unknown backplane), and the config keys that govern them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from importlib import resources
from ipaddress import ip_network
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from backplane import BackplaneService
from backplane.config import MonitorEntry, parse_config
from backplane.errors import ConfigError
from backplane.monitor import MonitorService
from backplane.protocols import Limits
from backplane.tail import HEARTBEAT_INTERVAL, encodeEvents
from backplane.testing import Recorder
from tests.helpers import connectClient, httpGet, portNumber, waitUntil

LOCAL = "tcp:0:interface=127.0.0.1"


def startMonitor(service: BackplaneService, **options) -> MonitorService:
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL, **options)
    monitor.setName("monitor")
    monitor.setServiceParent(service)
    return monitor


@pytest.fixture
def service():
    """
    A running service with backplanes DATA, QUIET, "a/b é" (a name to
    percent-encode) and KEPT (retain = 2), and a monitor.
    """
    service = BackplaneService()
    service.create("DATA")
    service.create("QUIET")
    service.create("a/b é")
    service.create("KEPT", retain=2)
    startMonitor(service)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def urlOf(service, path: str) -> str:
    monitor = service.getServiceNamed("monitor")
    return f"http://127.0.0.1:{monitor.port.getHost().port}{path}"


def header(response, name: bytes) -> bytes | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def packageFile(name: str) -> bytes:
    return (resources.files("backplane") / "web" / name).read_bytes()


# The page and its assets.


@pytest_twisted.inlineCallbacks
def test_pageAtTheRoot(service):
    response, body = yield httpGet(urlOf(service, "/"))
    assert response.code == 200
    assert header(response, b"content-type") == b"text/html; charset=utf-8"
    assert body == packageFile("index.html")
    assert body.startswith(b"<!doctype html>")
    assert b'<meta name="viewport"' in body
    policy = header(response, b"content-security-policy")
    assert policy is not None
    assert b"default-src 'none'" in policy and b"script-src 'self'" in policy
    assert header(response, b"x-content-type-options") == b"nosniff"


@pytest_twisted.inlineCallbacks
def test_assets(service):
    """
    Each file the page refers to is served from the package with its type;
    the page loads nothing from anywhere else.
    """
    _, page = yield httpGet(urlOf(service, "/"))
    referred = re.findall(rb'(?:src|href)="([^"]+)"', page)
    assert set(referred) == {b"assets/favicon.svg", b"assets/status.css",
                             b"assets/status.js", b"stats", b"metrics", b"healthz"}
    types = {
        "status.js": b"text/javascript; charset=utf-8",
        "status.css": b"text/css; charset=utf-8",
        "favicon.svg": b"image/svg+xml",
    }
    for name, type in types.items():
        response, body = yield httpGet(urlOf(service, f"/assets/{name}"))
        assert response.code == 200, name
        assert header(response, b"content-type") == type
        assert body == packageFile(name)
        assert header(response, b"cache-control") == b"no-cache"
    for name in ("index.html", "status.js", "status.css", "favicon.svg"):
        # The SVG namespace is a name, not something loaded.
        urls = re.findall(rb"\w+://[^\s\"'`]*", packageFile(name))
        assert set(urls) <= {b"http://www.w3.org/2000/svg"}, (name, urls)


@pytest_twisted.inlineCallbacks
def test_assetNotModified(service):
    """
    A browser asking again with the ETag it has gets 304 and no body.
    """
    response, _ = yield httpGet(urlOf(service, "/assets/status.js"))
    etag = header(response, b"etag")
    assert etag
    again = yield Agent(reactor).request(
        b"GET", urlOf(service, "/assets/status.js").encode(),
        Headers({b"if-none-match": [etag]}))
    assert again.code == 304


@pytest_twisted.inlineCallbacks
def test_otherPathsAreNotFound(service):
    for path in ("/assets/", "/assets/nothing.js", "/assets", "/index.html", "/nothing"):
        response, _ = yield httpGet(urlOf(service, path))
        assert response.code == 404, path


# The live tail: a client of Server-Sent Events.


class EventStream(Protocol):
    """
    Reads a C{text/event-stream} body: its events as (type, data) and the
    number of comments.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[tuple[str, str]] = []
        self.comments = 0
        self.retry: int | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            kind, lines = "message", []
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    kind = value
                elif field == "data":
                    lines.append(value)
                elif field == "retry":
                    self.retry = int(value)
            if lines:
                self.events.append((kind, "\n".join(lines)))

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(None)

    def lines(self) -> list[str]:
        return [line for kind, data in self.events if kind == "message"
                for line in json.loads(data)]

    def dropped(self) -> int:
        return sum(int(data) for kind, data in self.events if kind == "dropped")


@inlineCallbacks
def openTail(service: BackplaneService,
             name: str) -> Generator[Deferred[Any], Any, tuple[IResponse, EventStream]]:
    """
    GET the tail of C{name}: the response and an L{EventStream} once the
    stream has begun.
    """
    response = yield Agent(reactor).request(b"GET", urlOf(service, f"/tail/{name}").encode())
    stream = EventStream()
    response.deliverBody(stream)
    if response.code == 200:
        yield waitUntil(lambda: stream.retry is not None, what="the stream's first bytes")
    return response, stream


@pytest_twisted.inlineCallbacks
def test_tailStreamsWhatIsPublished(service):
    data = service.get("DATA")
    response, stream = yield openTail(service, "DATA")
    assert response.code == 200
    assert header(response, b"content-type") == b"text/event-stream; charset=utf-8"
    assert header(response, b"cache-control") == b"no-store"
    assert stream.retry == 2000
    assert len(data) == 1, "the tail is a subscriber"
    data.publish(b"hello")
    data.publishMany([b"caf\xc3\xa9", b"", b"not \xff UTF-8", b"cr\rinside", b"<b>x</b>"])
    yield waitUntil(lambda: len(stream.lines()) == 6, what="every line at the tail")
    assert stream.lines() == ["hello", "café", "", "not \ufffd UTF-8", "cr\rinside", "<b>x</b>"]
    assert [kind for kind, _ in stream.events] == ["message", "message"], "one event a chunk"
    assert service.get("QUIET").stats.deliveries == 0
    monitor = service.getServiceNamed("monitor")
    report = monitor.report()
    assert report["gauges"]["tails"] == 1
    assert report["counters"]["tails_opened"] == 1


@pytest_twisted.inlineCallbacks
def test_tailHead(service):
    """
    HEAD says what a GET would be, without subscribing.
    """
    response, body = yield httpGet(urlOf(service, "/tail/DATA"), method=b"HEAD")
    assert response.code == 200
    assert header(response, b"content-type") == b"text/event-stream; charset=utf-8"
    assert body == b""
    assert len(service.get("DATA")) == 0
    response, _ = yield httpGet(urlOf(service, "/tail/NOPE"), method=b"HEAD")
    assert response.code == 404


@pytest_twisted.inlineCallbacks
def test_tailOfAPercentEncodedName(service):
    response, stream = yield openTail(service, "a%2Fb%20%C3%A9")
    assert response.code == 200
    service.get("a/b é").publish(b"x")
    yield waitUntil(lambda: stream.lines() == ["x"])


@pytest_twisted.inlineCallbacks
def test_tailReplaysRetained(service):
    kept = service.get("KEPT")
    for message in (b"one", b"two", b"three"):
        kept.publish(message)
    _, stream = yield openTail(service, "KEPT")
    yield waitUntil(lambda: stream.lines() == ["two", "three"])
    kept.publish(b"four")
    yield waitUntil(lambda: stream.lines() == ["two", "three", "four"])


@pytest_twisted.inlineCallbacks
def test_unknownBackplaneIsNotFound(service):
    response, body = yield httpGet(urlOf(service, "/tail/NOPE"))
    assert response.code == 404
    assert header(response, b"content-type") == b"text/plain; charset=utf-8"
    assert body == b"no backplane named 'NOPE' (known: 'DATA', 'KEPT', 'QUIET', 'a/b \xc3\xa9')\n"
    for path in ("/tail", "/tail/", "/tail/DATA/more", "/tail/%FF"):
        response, body = yield httpGet(urlOf(service, path))
        assert response.code == 404, path
        assert header(response, b"content-type") == b"text/plain; charset=utf-8"
        assert b"tail/NAME" in body, body
    assert all(len(service.get(name)) == 0 for name in service.names())


@pytest_twisted.inlineCallbacks
def test_tailDoesNotPublish(service):
    """
    A tail is read-only: other methods are refused, and nothing a client
    sends is published.
    """
    data = service.get("DATA")
    recorder = Recorder.on(data)
    for method in (b"POST", b"PUT", b"DELETE"):
        response, body = yield httpGet(urlOf(service, "/tail/DATA"), method=method)
        assert response.code == 405, method
        assert header(response, b"allow") == b"GET, HEAD"
        assert body == b"a tail is read-only: GET it\n"
    _, stream = yield openTail(service, "DATA")
    client = yield connectClient(service.getServiceNamed("monitor").port.getHost().port)
    client.transport.write(b"GET /tail/DATA HTTP/1.1\r\nHost: localhost\r\n\r\nsent by a tail\n")
    yield waitUntil(lambda: len(data) == 3, what="both tails subscribed")
    data.publish(b"after")
    yield waitUntil(lambda: stream.lines() == ["after"])
    assert recorder.messages == [b"after"]
    assert data.stats.messages_in == 1
    assert data.stats.publishers == 0
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_tailGoneUnsubscribes(service):
    data = service.get("DATA")
    _, stream = yield openTail(service, "DATA")
    assert len(data) == 1
    stream.transport.stopProducing()
    yield stream.done
    yield waitUntil(lambda: len(data) == 0, what="the tail to unsubscribe")
    assert service.getServiceNamed("monitor").report()["gauges"]["tails"] == 0


@pytest_twisted.inlineCallbacks
def test_stalledTailMissesLinesOnly(service):
    """
    A tail that stops reading holds at most max_pending bytes; past that it
    misses whole chunks, counted, while every other subscriber gets every
    line; once it reads again it gets whole lines in order, is told how
    many it missed, and new lines again.
    """
    data = service.get("DATA")
    recorder = Recorder.on(data)
    monitor = service.getServiceNamed("monitor")
    _, stream = yield openTail(service, "DATA")
    (tail,) = monitor.tails.clients
    stream.transport.pauseProducing()
    pad = b"x" * 992
    total, batch, most = 20_000, 20, 0
    for start in range(0, total, batch):
        data.publishMany(b"%08d" % i + pad for i in range(start, start + batch))
        most = max(most, tail.output.pending)
        yield deferLater(reactor, 0, lambda: None)
    assert len(recorder.messages) == total
    assert data.stats.dropped > 0
    assert most <= monitor.tails.limits.max_pending
    assert data.stats.slow_disconnects == 0
    stream.transport.resumeProducing()
    yield waitUntil(lambda: len(stream.lines()) + stream.dropped() == total, timeout=60,
                    what="the tail to catch up")
    assert stream.dropped() == data.stats.dropped == monitor.report()["counters"]["tail_dropped"]
    numbers = [int(line[:8]) for line in stream.lines()]
    assert numbers == sorted(numbers)
    assert all(len(line) == 1000 for line in stream.lines()), "whole lines"
    data.publish(b"after")
    yield waitUntil(lambda: stream.lines()[-1:] == ["after"])
    assert len(data) == 2


@pytest_twisted.inlineCallbacks
def test_stalledTailCutOff():
    """
    A tail whose connection stays full for two heartbeats (nobody reads
    it) is cut off: it cannot hold a place of max_tails for ever.
    """
    service = BackplaneService()
    data = service.create("DATA")
    monitor = startMonitor(service, max_tails=1)
    service.startService()
    try:
        _, stream = yield openTail(service, "DATA")
        (tail,) = monitor.tails.clients
        stream.transport.pauseProducing()
        pad = b"x" * 992
        for start in range(0, 4000, 20):
            data.publishMany(b"%08d" % i + pad for i in range(start, start + 20))
            yield deferLater(reactor, 0, lambda: None)
            if tail.output.paused:
                break
        assert tail.output.paused
        monitor.tails.heartbeat()
        assert monitor.tails.clients == {tail}, "one full heartbeat is not enough"
        monitor.tails.heartbeat()
        assert monitor.tails.clients == set()
        assert len(data) == 0
        assert monitor.tails.stats.slow_disconnects == 1
        _, again = yield openTail(service, "DATA")
        data.publish(b"for the next one")
        yield waitUntil(lambda: again.lines()[-1:] == ["for the next one"])
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_maxTails():
    service = BackplaneService()
    data = service.create("DATA")
    startMonitor(service, max_tails=1)
    service.startService()
    try:
        _, first = yield openTail(service, "DATA")
        response, body = yield httpGet(urlOf(service, "/tail/DATA"))
        assert response.code == 503
        assert body == b"too many tails: 1 are open; try again later\n"
        assert service.getServiceNamed("monitor").report()["counters"]["tails_refused"] == 1
        data.publish(b"x")
        yield waitUntil(lambda: first.lines() == ["x"])
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_tailOff():
    """
    With tail = false, C{/tail/NAME} is a 404 that says so, and /stats tells
    the page.
    """
    service = BackplaneService()
    service.create("DATA")
    startMonitor(service, tail=False)
    service.startService()
    try:
        response, body = yield httpGet(urlOf(service, "/tail/DATA"))
        assert response.code == 404
        assert body == b"the live tail is off ([monitor] tail = false)\n"
        assert len(service.get("DATA")) == 0
        _, stats = yield httpGet(urlOf(service, "/stats"))
        (monitor,) = json.loads(stats)["services"]
        assert monitor["info"]["tail"] is False
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_tailAllow():
    """
    The monitor's allow applies to the tail: a client from elsewhere is
    closed at once, before it subscribes.
    """
    service = BackplaneService()
    data = service.create("DATA")
    monitor = startMonitor(service, allow=[ip_network("127.0.0.1/32")])
    service.startService()
    try:
        stranger = yield connectClient(portNumber(monitor.port), source="127.0.0.2")
        stranger.transport.write(b"GET /tail/DATA HTTP/1.1\r\nHost: x\r\n\r\n")
        yield stranger.closed
        assert stranger.lines == [] and stranger.buffer == b""
        assert len(data) == 0
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_heartbeat(service):
    monitor = service.getServiceNamed("monitor")
    assert monitor.tails._heartbeat.running
    assert monitor.tails._heartbeat.interval == HEARTBEAT_INTERVAL
    _, stream = yield openTail(service, "DATA")
    before = stream.comments
    monitor.tails.heartbeat()
    yield waitUntil(lambda: stream.comments == before + 1)
    assert stream.events == []


@pytest_twisted.inlineCallbacks
def test_stopEndsTails():
    """
    Stopping the monitor ends each tail's stream after what was pending,
    and unsubscribes it.
    """
    service = BackplaneService()
    data = service.create("DATA")
    startMonitor(service)
    service.startService()
    _, stream = yield openTail(service, "DATA")
    data.publishMany([b"last words"] * 1000)
    yield service.stopService()
    yield stream.done
    assert stream.lines() == ["last words"] * 1000
    assert len(data) == 0


# Units.


class EncodeEventsTests(SynchronousTestCase):
    def test_oneEventAChunk(self):
        self.assertEqual(encodeEvents(b"a\nb b\n\n", 3), b'data: ["a","b b",""]\n\n')

    def test_notUTF8(self):
        self.assertEqual(json.loads(encodeEvents(b"\xff\xfeok\ncaf\xc3\xa9\n", 2)[6:]),
                         ["\ufffd\ufffdok", "café"])

    def test_noLineBreakInAnEvent(self):
        event = encodeEvents(b"cr\rhere\n\x00\x1b[0m\n\xe2\x80\xa8\n", 3)
        self.assertEqual(event.count(b"\n"), 2)
        self.assertNotIn(b"\r", event)
        self.assertEqual(json.loads(event[6:]), ["cr\rhere", "\x00\x1b[0m", "\u2028"])


class ConfigTests(SynchronousTestCase):
    def test_defaults(self):
        monitor = parse_config({"monitor": {"endpoint": "tcp:9100"}}).monitor
        self.assertEqual(monitor, MonitorEntry(endpoint="tcp:9100", tail=True, max_tails=16))

    def test_keys(self):
        monitor = parse_config(
            {"monitor": {"endpoint": "tcp:9100", "tail": False, "max_tails": 3}}).monitor
        assert monitor is not None
        self.assertEqual((monitor.tail, monitor.max_tails), (False, 3))

    def test_badKeys(self):
        for options, message in (
            ({"max_tails": 0}, "monitor.max_tails: must be 1 or more, not 0"),
            ({"tail": "yes"}, "monitor.tail: must be"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"monitor": {"endpoint": "tcp:9100", **options}})
            self.assertIn(message, str(caught.exception))

    def test_built(self):
        from backplane.build import build_service
        from backplane.config import Config

        config = parse_config({"backplane": {"A": {}},
                               "monitor": {"endpoint": LOCAL, "max_tails": 2, "tail": False}})
        assert isinstance(config, Config)
        monitor = build_service(config).getServiceNamed("monitor")
        self.assertEqual((monitor.tails.enabled, monitor.tails.maxTails), (False, 2))
        self.assertEqual(monitor.tails.limits, Limits(max_pending=256 * 1024, slow="drop"))


@pytest_twisted.inlineCallbacks
def test_hostChecked(service):
    """
    DNS rebinding: a request naming another site in its Host gets 421 and
    nothing; localhost and the address connected to are served.
    """
    monitor = service.getServiceNamed("monitor")
    port = monitor.port.getHost().port
    replies = {}
    for host in (b"evil.example", b"localhost", b"127.0.0.1:%d" % port, b"LOCALHOST."):
        client = yield connectClient(port)
        client.transport.write(b"GET /stats HTTP/1.1\r\nHost: " + host
                               + b"\r\nConnection: close\r\n\r\n")
        yield client.closed
        replies[host] = client.buffer + b"\n".join(client.lines)
    assert replies[b"evil.example"].startswith(b"HTTP/1.1 421 ")
    assert b'"backplanes"' not in replies[b"evil.example"]
    for host in (b"localhost", b"127.0.0.1:%d" % port, b"LOCALHOST."):
        assert replies[host].startswith(b"HTTP/1.1 200 "), (host, replies[host][:100])
    assert monitor.report()["counters"]["misdirected"] == 1
