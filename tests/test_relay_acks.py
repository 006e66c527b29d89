"""
A relay with C{acks} (SPEC section 10): C{HELLO}, what is resent and in
which order, C{ACK N} and C{ERR}, the bound, the spool across a stop and a
start, statistics; unit tests against a model of the server
(L{tests.ackserver}) over L{StringTransport}s, then an integration test
against the real server side (L{backplane.acks}) over loopback, through
restarts of its port.
"""

from __future__ import annotations

import os
import re

import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService, RelayFactory
from backplane.acks import AckingFactory
from backplane.history import StoreError
from backplane.history import disk as diskModule
from backplane.relay import ACK_WARNING, Relay, RelayClientFactory, RelayService
from backplane.testing import Recorder
from tests.ackserver import Connection, Upstream
from tests.helpers import freePort, waitUntil
from tests.test_history import folderOf
from tests.test_relay import (
    FakeEndpoint,
    LogCapture,
    connectProtocol,
    lose,
    makeService,
    pendingDelays,
)

HELLO = re.compile(rb"HELLO ([A-Za-z0-9._:-]{1,64}) (\d+)\n")


def lines(first: int, count: int) -> list[bytes]:
    return [b"line %d" % i for i in range(first, first + count)]


def data(first: int, count: int) -> bytes:
    return b"".join(line + b"\n" for line in lines(first, count))


def hello(transport: StringTransport | Link) -> tuple[str, int, bytes]:
    """
    The HELLO a relay wrote first: its publisher id and SEQ, and what
    followed it.
    """
    written = transport.written if isinstance(transport, Link) else transport.value()
    match = HELLO.match(written)
    assert match is not None, written
    return match.group(1).decode(), int(match.group(2)), written[match.end():]


class Link:
    """
    A relay's connection to a model of the server: what the relay writes
    goes to the model (L{pump}); the model's ACK and ERR lines go back.
    """

    def __init__(self, factory: RelayFactory | RelayClientFactory, upstream: Upstream) -> None:
        self.protocol, self.transport = connectProtocol(factory)
        self.connection: Connection = upstream.connect()
        #: Everything the relay wrote.
        self.written = b""
        self.pump()

    def pump(self) -> None:
        written = self.transport.value()
        self.transport.clear()
        self.written += written
        reply = self.connection.receive(written)
        if reply:
            self.protocol.dataReceived(reply)
            self.lose()

    def ack(self) -> None:
        self.pump()
        reply = self.connection.ack()
        if reply:
            self.protocol.dataReceived(reply)

    def lose(self) -> None:
        self.connection.lost()
        if not self.protocol.closing or not self.transport.disconnected:
            lose(self.protocol, self.transport, ConnectionDone())


class RelayAcksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = makeService("OUT", "IN")
        self.out = self.service.get("OUT")
        self.clock = Clock()
        self.upstream = Upstream()
        self.logs = LogCapture(self)

    def factory(self, **options) -> RelayFactory:
        options.setdefault("clock", self.clock)
        return RelayFactory(self.service, subscribe_to="OUT", acks=True, **options)

    def test_helloResendThenLive(self):
        """
        Each connection begins with HELLO ID SEQ (SEQ: the lines upstream
        acknowledged), then the lines it did not acknowledge, oldest first,
        then live ones.
        """
        factory = self.factory()
        stats = factory.stats
        self.out.publishMany(lines(1, 3))
        self.assertEqual((stats.buffered, stats.spooled), (3, 3))
        protocol, transport = connectProtocol(factory)
        publisherId, seq, rest = hello(transport)
        self.assertEqual((seq, rest), (0, data(1, 3)))
        self.out.publishMany(lines(4, 2))
        self.assertEqual(transport.value().split(b"\n", 1)[1], data(1, 5))
        protocol.dataReceived(b"ACK 2\n")
        self.assertEqual((stats.acknowledged, stats.spooled, stats.buffered), (2, 3, 0))
        lose(protocol, transport)
        self.assertEqual(stats.buffered, 3)
        self.out.publish(b"line 6")
        protocol, transport = connectProtocol(factory)
        self.assertEqual(hello(transport), (publisherId, 2, data(3, 4)))
        self.assertEqual((stats.resent, stats.lines_out), (3, 9))
        protocol.dataReceived(b"ACK 4\n")
        self.assertEqual((stats.acknowledged, stats.spooled), (6, 0))
        self.assertEqual(self.out.stats.dropped, 0)

    def test_acksInChunksOfEverySize(self):
        stream = b"ACK 1\nACK 3\nACK 4\n"
        for size in range(1, len(stream) + 1):
            factory = self.factory()
            protocol, transport = connectProtocol(factory)
            self.out.publishMany(lines(1, 4))
            for start in range(0, len(stream), size):
                protocol.dataReceived(stream[start:start + size])
            self.assertEqual(factory.stats.acknowledged, 4, f"chunks of {size}")
            self.assertFalse(transport.disconnecting)
            lose(protocol, transport)

    def test_everyLineOnceThroughReconnects(self):
        """
        Against a model of the server that acknowledges late and crashes
        now and then, forgetting what it had not acknowledged: every line
        once, in order.
        """
        factory = self.factory()
        made = 0
        for round in range(30):
            link = Link(factory, self.upstream)
            for _ in range(1 + round % 4):
                self.out.publishMany(lines(made + 1, 5))
                made += 5
                link.pump()
                if round % 3:
                    link.ack()
            self.out.publishMany(lines(made + 1, 2))
            made += 2
            link.lose()
            if round % 5 == 4:
                self.upstream.crash()
        link = Link(factory, self.upstream)
        link.ack()
        self.assertEqual(self.upstream.published, lines(1, made))
        self.assertEqual(self.upstream.errors, [])
        self.assertEqual(factory.stats.spooled, 0)
        self.assertGreater(factory.stats.resent, 0)
        self.assertGreater(self.upstream.deduplicated, 0)

    def test_errBeginsANewPublisher(self):
        """
        Upstream refuses a HELLO ahead of what it has (it lost its store):
        logged and counted; the relay goes on as a new publisher with the
        lines not acknowledged.
        """
        factory = self.factory()
        link = Link(factory, self.upstream)
        self.out.publishMany(lines(1, 3))
        link.ack()
        self.out.publish(b"line 4")
        link.lose()
        old = factory.relay.outbox.publisherId  # type: ignore[union-attr]
        self.upstream.forgetMarks()
        link = Link(factory, self.upstream)
        self.assertTrue(link.connection.closed)
        self.assertEqual(factory.stats.refused, 1)
        [event] = self.logs.matching("upstream refused HELLO", LogLevel.error)
        self.assertEqual(event["publisherId"], old)
        link = Link(factory, self.upstream)
        publisherId, seq, _rest = hello(link)
        self.assertEqual((publisherId, seq), (f"{old}.3", 0))
        link.ack()
        self.assertEqual(self.upstream.published, lines(1, 4))
        self.assertEqual(len(self.logs.matching("goes on as a new publisher")), 1)

    def test_notAcksDropsTheConnection(self):
        """
        Anything but ACK N and ERR (a port that is not acks = true, or an
        ACK of more lines than were sent) drops the connection, counted.
        """
        for reply in (b"hello there\n", b"ACK 5\n", b"ACK x\n", b"ACK 1" + b"0" * 20 + b"\n"):
            factory = self.factory()
            protocol, transport = connectProtocol(factory)
            self.out.publishMany(lines(1, 2))
            protocol.dataReceived(reply)
            self.assertTrue(transport.disconnected, reply)
            self.assertEqual((factory.stats.refused, factory.stats.acknowledged), (1, 0))
            lose(protocol, transport)
        self.assertEqual(len(self.logs.matching("does not speak acks", LogLevel.error)), 4)

    def test_boundDropsTheOldestAndANewIdBegins(self):
        """
        Past buffer, the oldest lines not acknowledged are dropped and
        counted, logged once; the next connection is a new publisher.
        """
        factory = self.factory(buffer=5)
        link = Link(factory, self.upstream)
        self.out.publishMany(lines(1, 2))
        link.ack()
        link.lose()
        old = factory.relay.outbox.publisherId  # type: ignore[union-attr]
        for i in range(3, 11):
            self.out.publish(b"line %d" % i)
        self.assertEqual((factory.stats.dropped, self.out.stats.dropped), (3, 3))
        self.assertEqual((factory.stats.spooled, factory.stats.buffered), (5, 5))
        self.assertEqual(len(self.logs.matching("dropping the oldest", LogLevel.warn)), 1)
        link = Link(factory, self.upstream)
        self.assertEqual(hello(link)[:2], (f"{old}.5", 0))
        link.ack()
        self.assertEqual(self.upstream.published, lines(1, 2) + lines(6, 5))

    def test_upstreamNotReading(self):
        """
        While upstream does not read, lines wait; once lines not yet sent
        must be dropped, the connection is closed: the next goes on as a
        new publisher.
        """
        factory = self.factory(buffer=5)
        link = Link(factory, self.upstream)
        self.out.publishMany(lines(1, 2))
        link.protocol.pauseProducing()
        self.out.publishMany(lines(3, 3))
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(factory.stats.buffered, 3)
        link.protocol.resumeProducing()
        self.assertEqual(factory.stats.buffered, 0)
        link.protocol.pauseProducing()
        self.out.publishMany(lines(6, 4))
        self.assertFalse(link.transport.disconnecting, "only lines sent were dropped")
        self.out.publishMany(lines(10, 3))
        self.assertTrue(link.transport.disconnected)
        self.assertEqual(len(self.logs.matching("lines not yet sent were dropped")), 1)
        self.assertEqual(factory.stats.dropped, 7)
        link.pump()
        link.lose()
        link = Link(factory, self.upstream)
        link.ack()
        self.assertEqual(self.upstream.published, lines(1, 5) + lines(8, 5))

    def test_warnsWhenNothingIsAcknowledged(self):
        factory = self.factory()
        protocol, transport = connectProtocol(factory)
        self.clock.advance(ACK_WARNING)
        self.assertEqual(self.logs.matching("acknowledged none"), [], "nothing sent yet")
        self.out.publish(b"a")
        self.clock.advance(ACK_WARNING)
        self.assertEqual(len(self.logs.matching("acknowledged none", LogLevel.warn)), 1)
        lose(protocol, transport)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"ACK 1\n")
        self.clock.advance(ACK_WARNING)
        self.assertEqual(len(self.logs.matching("acknowledged none")), 1)
        lose(protocol, transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_options(self):
        self.assertRaises(ValueError, self.factory, buffer=0)
        self.assertRaises(ValueError, RelayFactory, self.service, "IN", subscribe_to="OUT",
                          acks=True)
        self.assertRaises(ValueError, RelayFactory, self.service, "IN", acks=True)
        self.assertRaises(ValueError, RelayFactory, self.service, subscribe_to="OUT",
                          spool="x")
        relay = Relay(self.service, subscribe_to="OUT", clock=self.clock)
        self.assertIsNone(relay.outbox)
        self.assertFalse(relay.reads)

    def test_publishToAndNoAcksIgnoresNothingNew(self):
        """
        Without acks, what upstream sends to a relay that only sends is
        still ignored.
        """
        factory = RelayFactory(self.service, subscribe_to="OUT", clock=self.clock)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"ACK 1\nanything\n")
        self.assertFalse(transport.disconnecting)


class SpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(folderOf(self), "spool")
        self.patch(diskModule, "bootId", lambda: "boot-1")
        self.clock = Clock()
        self.upstream = Upstream()

    def relayService(self, service: BackplaneService,
                     endpoint: FakeEndpoint) -> RelayService:
        factory = RelayFactory(service, subscribe_to="OUT", acks=True, spool=self.path,
                               clock=self.clock)
        relayService = RelayService(endpoint, factory, description="tcp:up:1600",
                                    random=lambda: 0.0)
        relayService.setName("connect[1]")
        return relayService

    def test_survivesAStopAndAStart(self):
        """
        A relay with a spool, stopped and started again (another process):
        the same publisher id, and what was not acknowledged is resent.
        """
        service = makeService("OUT")
        endpoint = FakeEndpoint()
        relayService = self.relayService(service, endpoint)
        relay = relayService.relay
        assert relay.outbox is not None
        relayService.startService()
        protocol, transport = endpoint.accept()
        publisherId, _, _ = hello(transport)
        self.assertEqual(publisherId, relay.outbox.publisherId)
        service.get("OUT").publishMany(lines(1, 5))
        protocol.dataReceived(b"ACK 2\n")
        stopped = relayService.stopService()
        self.assertNoResult(stopped)
        lose(protocol, transport, ConnectionDone())
        self.successResultOf(stopped)
        self.assertRaises(StoreError, relay.outbox.add, b"x\n", 1)

        service = makeService("OUT")
        endpoint = FakeEndpoint()
        relayService = self.relayService(service, endpoint)
        report = relayService.report()
        self.assertEqual(report["gauges"], {"buffered": 3, "spooled": 3, "connected": 0})
        self.assertEqual(report["info"], {"endpoint": "tcp:up:1600", "publish_to": None,
                                          "subscribe_to": "OUT", "acks": True,
                                          "spool": self.path, "publisher_id": publisherId})
        relayService.startService()
        protocol, transport = endpoint.accept()
        self.assertEqual(hello(transport), (publisherId, 2, data(3, 3)))
        protocol.dataReceived(b"ACK 3\n")
        report = relayService.report()
        counters = report["counters"]
        assert isinstance(counters, dict)
        self.assertEqual((counters["acknowledged"], counters["resent"]), (3, 3))
        self.assertEqual(report["gauges"], {"buffered": 0, "spooled": 0, "connected": 1})
        relayService.stopService()
        lose(protocol, transport, ConnectionDone())

    def test_startedAgainInTheSameProcess(self):
        """
        A RelayService stopped and started again opens its spool again.
        """
        service = makeService("OUT")
        endpoint = FakeEndpoint()
        relayService = self.relayService(service, endpoint)
        relayService.startService()
        self.successResultOf(relayService.stopService())
        service.get("OUT").publish(b"while stopped")
        relayService.startService()
        service.get("OUT").publish(b"started")
        protocol, transport = endpoint.accept()
        self.assertEqual(hello(transport)[2], b"started\n")
        relayService.stopService()
        lose(protocol, transport, ConnectionDone())
        self.assertEqual(pendingDelays(self.clock), [])

    def test_spoolInUse(self):
        service = makeService("OUT")
        self.relayService(service, FakeEndpoint())
        self.assertRaises(StoreError, self.relayService, service, FakeEndpoint())


# Integration: the real server side, over loopback, its port stopped and
# started again.


class Server:
    """
    A backplane C{UP} with an C{acks = true} port (the real
    L{AckingFactory}) on a fixed port, which can be stopped and started.
    """

    def __init__(self) -> None:
        self.service = makeService("UP")
        self.received = Recorder.on(self.service.get("UP"))
        self.factory = AckingFactory(self.service, publish_to="UP", ack_lines=50,
                                     ack_interval=0.05)
        self.portNumber = freePort()
        self.port = None

    @pytest_twisted.inlineCallbacks
    def start(self):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, self.portNumber, interface="127.0.0.1")
        self.port = yield endpoint.listen(self.factory)

    @pytest_twisted.inlineCallbacks
    def stop(self):
        """
        Stop listening and cut every connection, as a restart does (the
        backplane and its marks stay).
        """
        assert self.port is not None
        yield self.port.stopListening()
        for protocol in list(self.factory.publishers.values()):
            protocol.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_relayToTheRealServerThroughRestarts():
    """
    A relay with acks to a real acks = true port whose port restarts three
    times while lines flow: every line once, in order.
    """
    server = Server()
    yield server.start()
    service = makeService("OUT")
    out = service.get("OUT")
    factory = RelayFactory(service, subscribe_to="OUT", acks=True, initial_delay=0.05,
                           max_delay=0.2)
    relayService = RelayService(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.portNumber), factory)
    relayService.startService()
    made = 0
    try:
        for _ in range(3):
            yield waitUntil(lambda: bool(server.factory.publishers), what="connected")
            for _ in range(20):
                out.publishMany(lines(made + 1, 10))
                made += 10
                yield deferLater(reactor, 0.002, lambda: None)
            yield server.stop()
            yield waitUntil(lambda: not factory.relay.connected, what="the connection lost")
            out.publishMany(lines(made + 1, 10))
            made += 10
            yield server.start()
        yield waitUntil(lambda: factory.stats.spooled == 0 and factory.relay.connected,
                        what="everything acknowledged")
        assert server.received.messages == lines(1, made)
        assert factory.stats.reconnects == 3
    finally:
        yield relayService.stopService()
        if server.port is not None:
            yield server.port.stopListening()
