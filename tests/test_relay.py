"""
The relay: both directions, the bounded buffer, no echo, idle timeout, and
the two ways of reconnecting (ReconnectingClientFactory through connectTCP,
ClientService through an endpoint), each the only retry of its connection.

Unit tests drive fakes (StringTransport, Clock, MemoryReactorClock); the
integration tests at the end use real loopback sockets and an upstream that
goes away and comes back on the same port.
"""

from __future__ import annotations

import itertools
import random

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.internet.task import Clock
from twisted.internet.tcp import Port
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, provider

from backplane import BackplaneService, RelayFactory
from backplane.protocols import BackplaneFactory
from backplane.relay import (
    LineBuffer,
    Relay,
    RelayClientFactory,
    RelayProtocol,
    RelayService,
    retryPolicy,
)
from backplane.testing import Recorder
from tests.helpers import freePort, waitUntil

UPSTREAM = IPv4Address("TCP", "10.1.2.3", 1600)


def makeService(*names: str) -> BackplaneService:
    service = BackplaneService()
    for name in names:
        service.create(name)
    return service


class KeepAliveTransport(StringTransport):
    """
    A StringTransport that, like TCP, can turn keepalive on.
    """

    keepAlive: int | None = None

    def setTcpKeepAlive(self, enabled: int) -> None:
        self.keepAlive = enabled


def connectProtocol(factory, transport=None):
    """
    Connect a protocol of C{factory} to a fresh transport, as a connector does.
    """
    transport = transport or KeepAliveTransport(peerAddress=UPSTREAM)
    protocol = factory.buildProtocol(UPSTREAM)
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol, transport, reason=None):
    transport.disconnecting = True
    protocol.connectionLost(Failure(reason or ConnectionLost("gone")))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint whose attempts the test answers: C{refuse()} or
    C{accept()} the latest one.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []
        self.transports: list[StringTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        self.attempts.append((factory, d))
        return d

    def refuse(self) -> None:
        self.attempts[-1][1].errback(Failure(ConnectionRefusedError("refused")))

    def accept(self):
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(UPSTREAM)
        assert protocol is not None
        transport = KeepAliveTransport(peerAddress=UPSTREAM)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        d.callback(protocol)
        return protocol, transport


class LogCapture:
    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        globalLogPublisher.addObserver(observe)
        testCase.addCleanup(globalLogPublisher.removeObserver, observe)

    def matching(self, text: str, level: LogLevel | None = None) -> list[LogEvent]:
        return [e for e in self.events
                if text in (e.get("log_format") or "")
                and (level is None or e.get("log_level") == level)]


def pendingDelays(clock) -> list[float]:
    return [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]


class RetryPolicyTests(SynchronousTestCase):
    def test_growsByFactorFromInitialDelayAndIsCapped(self):
        policy = retryPolicy(1.0, 10.0, jitter=0.0)
        self.assertEqual([policy(n) for n in range(1, 8)], [1, 2, 4, 8, 10, 10, 10])

    def test_jitterShortensWithinTheFractionAndNeverPassesTheCap(self):
        policy = retryPolicy(1.0, 10.0, jitter=0.25, random=lambda: 0.9999999)
        for n in range(1, 30):
            base = min(2.0 ** (n - 1), 10.0)
            self.assertTrue(base * 0.75 <= policy(n) <= base, (n, policy(n)))
        self.assertLessEqual(policy(1000), 10.0)

    def test_badOptions(self):
        self.assertRaises(ValueError, retryPolicy, 0, 10)
        self.assertRaises(ValueError, retryPolicy, 5, 1)
        self.assertRaises(ValueError, retryPolicy, 1, 10, jitter=1.0)


class DestinationTests(SynchronousTestCase):
    def test_withoutDescriptionTheEndpointsClassThenThePeer(self):
        """
        Without a description, upstream is named by its endpoint's class
        until connected, then by its address.
        """
        factory = RelayFactory(makeService("IN"), "IN", clock=Clock())
        endpoint = FakeEndpoint()
        relay = RelayService(endpoint, factory)
        self.assertEqual(factory.destination, "FakeEndpoint")
        relay.startService()
        endpoint.accept()
        self.assertEqual(factory.destination, "10.1.2.3:1600")
        relay.stopService()

    def test_descriptionGivenIsUsed(self):
        factory = RelayFactory(makeService("IN"), "IN", clock=Clock())
        RelayService(FakeEndpoint(), factory, description="tcp:host=up:port=1")
        self.assertEqual(factory.destination, "tcp:host=up:port=1")


class ClientServiceBackoffTests(SynchronousTestCase):
    """
    Under RelayService the backoff is ClientService's, and only ClientService's.
    """

    def setUp(self) -> None:
        self.service = makeService("IN", "OUT")
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def relay(self, *, jitterSeed=None, **options):
        options.setdefault("initial_delay", 1.0)
        options.setdefault("max_delay", 10.0)
        factory = RelayFactory(self.service, "IN", subscribe_to="OUT", clock=self.clock, **options)
        rng = random.Random(jitterSeed).random if jitterSeed is not None else (lambda: 0.0)
        relay = RelayService(self.endpoint, factory, random=rng)
        return factory, relay

    def test_delaysGrowAreCappedAndJittered(self):
        factory, relay = self.relay(jitterSeed=7, jitter=0.2)
        relay.startService()
        expected = random.Random(7)
        delays = []
        for _ in range(7):
            self.endpoint.refuse()
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            [delay] = pendingDelays(self.clock)
            delays.append(delay)
            self.clock.advance(delay)
        bases = [1, 2, 4, 8, 10, 10, 10]
        for delay, base in zip(delays, bases, strict=True):
            self.assertAlmostEqual(delay, base * (1 - 0.2 * expected.random()))
            self.assertTrue(base * 0.8 <= delay <= base)
        self.assertNotEqual(delays[-1], delays[-2])  # jittered, not in step
        self.assertEqual(len(self.endpoint.attempts), 8)
        self.assertEqual(factory.stats.attempts, 8)
        self.assertEqual(factory.stats.state, "connecting")
        relay.stopService()

    def test_delayStartsOverAfterAConnection(self):
        factory, relay = self.relay()
        relay.startService()
        for _ in range(3):
            self.endpoint.refuse()
            self.clock.advance(pendingDelays(self.clock)[0])
        self.assertEqual(factory.stats.state, "connecting")
        protocol, transport = self.endpoint.accept()
        self.assertEqual(factory.stats.state, "connected")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lose(protocol, transport)
        self.assertEqual(factory.stats.state, "waiting")
        self.assertEqual(pendingDelays(self.clock), [1.0])
        relay.stopService()

    def test_factoryRetryIsInertUnderTheService(self):
        """
        Nothing retries twice: the factory's ReconnectingClientFactory retry
        does nothing under a RelayService, even if a connector calls it.
        """
        factory, relay = self.relay()
        relay.startService()
        protocol, transport = self.endpoint.accept()
        connector = MemoryReactorClock().connectTCP("10.1.2.3", 1600, factory)
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lose(protocol, transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        relay.stopService()

    def test_startingWhileUpstreamIsDown(self):
        """
        Starting does not fail while upstream is down; lines published
        meanwhile wait and go upstream, oldest first, once it is up.
        """
        factory, relay = self.relay()
        relay.startService()
        self.endpoint.refuse()
        self.assertTrue(relay.running)
        self.assertEqual(factory.stats.state, "waiting")
        out = self.service.get("OUT")
        out.publish(b"one")
        out.publishMany([b"two", b"three"])
        self.clock.advance(1.0)
        self.endpoint.refuse()
        self.clock.advance(2.0)
        _protocol, transport = self.endpoint.accept()
        self.assertEqual(transport.value(), b"one\ntwo\nthree\n")
        out.publish(b"live")
        self.assertEqual(transport.value(), b"one\ntwo\nthree\nlive\n")
        self.assertEqual(factory.stats.lines_out, 4)
        self.assertEqual(factory.stats.connects, 1)
        self.assertEqual(factory.stats.reconnects, 0)
        relay.stopService()

    def test_stopServiceStopsRetryingAndClosesTheConnection(self):
        factory, relay = self.relay()
        out = self.service.get("OUT")
        relay.startService()
        protocol, transport = self.endpoint.accept()
        self.assertEqual(len(out), 1)
        stopped = relay.stopService()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        lose(protocol, transport, ConnectionDone())
        self.successResultOf(stopped)
        self.assertEqual(factory.stats.state, "stopped")
        self.assertEqual(len(out), 0)  # no longer takes OUT's lines
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_stopServiceAbortsAnUpstreamThatWillNotClose(self):
        _factory, relay = self.relay()
        relay.startService()
        protocol, transport = self.endpoint.accept()
        stopped = relay.stopService()
        self.assertFalse(transport.disconnected)
        self.clock.advance(relay.stopTimeout)
        self.assertTrue(transport.disconnected)  # aborted
        lose(protocol, transport)
        self.successResultOf(stopped)

    def test_stopWhileWaitingAndStartAgain(self):
        factory, relay = self.relay()
        relay.startService()
        self.endpoint.refuse()
        self.successResultOf(relay.stopService())
        self.assertEqual(factory.stats.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        relay.startService()
        self.assertEqual(len(self.endpoint.attempts), 2)
        _protocol, transport = self.endpoint.accept()
        self.service.get("OUT").publish(b"after restart")
        self.assertEqual(transport.value(), b"after restart\n")
        relay.stopService()

    def test_logsEachChangeOnceNotEveryRetry(self):
        logs = LogCapture(self)
        factory, relay = self.relay()
        relay.startService()
        protocol, transport = self.endpoint.accept()
        lose(protocol, transport)
        for _ in range(5):
            self.clock.advance(pendingDelays(self.clock)[0])
            self.endpoint.refuse()
        self.clock.advance(pendingDelays(self.clock)[0])
        self.endpoint.accept()
        self.assertEqual(len(logs.matching("Relay connected to")), 1)
        self.assertEqual(len(logs.matching("Relay lost its connection", LogLevel.warn)), 1)
        self.assertEqual(logs.matching("could not connect", LogLevel.warn), [])
        [back] = logs.matching("Relay reconnected")
        self.assertEqual(back["attempts"], 6)
        self.assertEqual(factory.stats.reconnects, 1)
        self.assertEqual(logs.matching("could not connect"), [])
        # ClientService notes every retry it schedules, at level info, in a
        # namespace of its own: an observer that wants one line per change
        # of state filters it out by namespace.
        notes = logs.matching("Scheduling retry")
        self.assertEqual(len(notes), 6)
        self.assertEqual({(e["log_level"], e["log_namespace"]) for e in notes},
                         {(LogLevel.info, "backplane.relay.RelayService")})
        self.assertEqual(formatEvent(notes[0]),
                         "Scheduling retry 1 to connect 10.1.2.3:1600 in 1.0 seconds.")
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
        predicate.setLogLevelForNamespace("backplane.relay.RelayService", LogLevel.warn)
        shown: list[LogEvent] = []

        @provider(ILogObserver)
        def show(event: LogEvent) -> None:
            shown.append(event)

        filtering = FilteringLogObserver(show, [predicate])
        for event in logs.events:
            filtering(event)
        self.assertEqual([e for e in shown if "Scheduling retry" in e["log_format"]], [])
        self.assertEqual(len(shown), len(logs.events) - len(notes))
        relay.stopService()

    def test_firstFailureAtStartIsLoggedOnce(self):
        logs = LogCapture(self)
        _factory, relay = self.relay()
        relay.startService()
        for _ in range(4):
            self.endpoint.refuse()
            self.clock.advance(pendingDelays(self.clock)[0])
        [warning] = logs.matching("could not connect", LogLevel.warn)
        self.assertEqual(warning["destination"], "FakeEndpoint")
        relay.stopService()


class ReconnectingClientFactoryTests(SynchronousTestCase):
    """
    Through connectTCP the factory is a ReconnectingClientFactory that
    retries by itself.
    """

    def setUp(self) -> None:
        self.service = makeService("IN", "OUT")
        self.reactor = MemoryReactorClock()
        self.factory = RelayFactory(self.service, "IN", subscribe_to="OUT", jitter=0.0,
                                    initial_delay=1.0, max_delay=5.0, clock=self.reactor)
        self.connector = self.reactor.connectTCP("10.1.2.3", 1600, self.factory)
        self.reconnects = 0

        def connect():
            self.reconnects += 1
            self.factory.startedConnecting(self.connector)

        self.connector.connect = connect

    def refuseAttempt(self) -> float:
        """
        Refuse the attempt under way, and wait the delay before the next one.
        """
        self.factory.clientConnectionFailed(
            self.connector, Failure(ConnectionRefusedError("refused")))
        [delay] = pendingDelays(self.reactor)
        self.reactor.advance(delay)
        return delay

    def test_usableWithConnectTCP(self):
        self.assertEqual(self.reactor.tcpClients[0][:3], ("10.1.2.3", 1600, self.factory))
        self.assertEqual(self.factory.stats.attempts, 1)
        self.assertEqual(self.factory.destination, "10.1.2.3:1600")
        _protocol, transport = connectProtocol(self.factory)
        self.service.get("OUT").publish(b"up")
        self.assertEqual(transport.value(), b"up\n")

    def test_retriesItselfGrowingCappedAndResetAfterAConnection(self):
        delays = [self.refuseAttempt() for _ in range(6)]
        self.assertEqual(self.reconnects, 6)
        self.assertEqual(self.factory.stats.attempts, 7)
        self.assertLessEqual(delays[0], 2.0)  # Twisted < 24 grows before the first
        for before, after in itertools.pairwise(delays):
            self.assertEqual(after, min(before * 2, 5.0))
        self.assertEqual(delays[-1], 5.0)
        protocol, transport = connectProtocol(self.factory)
        self.assertEqual(self.factory.stats.state, "connected")
        self.assertEqual(self.factory.retries, 0)
        lose(protocol, transport)
        self.factory.clientConnectionLost(self.connector, Failure(ConnectionLost()))
        self.assertEqual(self.factory.stats.state, "waiting")
        self.assertEqual(pendingDelays(self.reactor), [delays[0]])

    def test_jitterVariesTheDelay(self):
        self.factory.jitter = 0.1
        random.seed(11)
        try:
            delays = {self.refuseAttempt() for _ in range(5)}
        finally:
            random.seed()
        self.assertEqual(len(delays), 5)
        self.assertFalse(delays & {1.0, 2.0, 4.0, 5.0})

    def test_stopTrying(self):
        self.refuseAttempt()
        self.factory.stopTrying()
        self.assertEqual(self.factory.stats.state, "stopped")
        self.factory.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.service.get("OUT")), 0)


class RelayDirectionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = makeService("IN", "OUT")
        self.clock = Clock()
        self.incoming = Recorder.on(self.service.get("IN"))

    def factory(self, **options) -> RelayFactory:
        options.setdefault("clock", self.clock)
        return RelayFactory(self.service, **options)

    def test_needsADirectionAndKnownBackplanes(self):
        self.assertRaises(ValueError, RelayFactory, self.service)
        self.assertRaises(KeyError, RelayFactory, self.service, "NOPE")
        self.assertRaises(KeyError, RelayFactory, self.service, subscribe_to="NOPE")
        self.assertRaises(ValueError, RelayFactory, self.service, "IN", buffer=-1)
        self.assertRaises(ValueError, RelayFactory, self.service, "IN", idle_timeout=0)

    def test_publishToInChunksOfEverySize(self):
        stream = b"first\r\n\n  spaces  \r\nbinary \x00\xff\rmid\r\nlast\n"
        expected = [b"first", b"", b"  spaces  ", b"binary \x00\xff\rmid", b"last"]
        for size in range(1, len(stream) + 1):
            self.incoming.clear()
            factory = self.factory(publish_to="IN")
            protocol, transport = connectProtocol(factory)
            for i in range(0, len(stream), size):
                protocol.dataReceived(stream[i : i + size])
            self.assertEqual(self.incoming.messages, expected, size)
            self.assertEqual(factory.stats.lines_in, 5)
            self.assertEqual(transport.value(), b"")  # publish_to only: nothing sent up

    def test_halfLineAtResetIsNotPublished(self):
        factory = self.factory(publish_to="IN")
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"whole\nhalf")
        lose(protocol, transport)
        self.assertEqual(self.incoming.messages, [b"whole"])
        self.assertEqual(factory.stats.discarded_bytes, 4)

    def test_lastLineAtACleanEndIsPublished(self):
        """
        Upstream ending cleanly (a FIN) after a last line without a newline:
        that line is published.
        """
        factory = self.factory(publish_to="IN")
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"whole\nlast")
        lose(protocol, transport, ConnectionDone())
        self.assertEqual(self.incoming.messages, [b"whole", b"last"])
        self.assertEqual(factory.stats.discarded_bytes, 0)

    def test_halfLineWhenTheRelayStopsIsNotPublished(self):
        """
        The connection of a relay that stops is closed by the relay: a half
        line from upstream is upstream's unfinished one, not published.
        """
        factory = self.factory(publish_to="IN")
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"whole\nhalf")
        factory.relay.stop()
        lose(protocol, transport, ConnectionDone())
        self.assertEqual(self.incoming.messages, [b"whole"])
        self.assertEqual(factory.stats.discarded_bytes, 4)

    def test_halfLineWhenTheRelayClosesIsNotPublished(self):
        """
        A connection the relay itself closes (a line too long) publishes
        nothing more, at its clean end included.
        """
        factory = self.factory(publish_to="IN", max_line_length=4)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"ok\n123456")
        lose(protocol, transport, ConnectionDone())
        self.assertEqual(self.incoming.messages, [b"ok"])
        self.assertEqual(factory.stats.discarded_bytes, 6)

    def test_overlongLineIsNotPublishedAndDropsTheConnection(self):
        factory = self.factory(publish_to="IN", max_line_length=10)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"short\n" + b"x" * 11 + b"\nnever\n")
        self.assertEqual(self.incoming.messages, [b"short"])
        self.assertTrue(transport.disconnecting)

    def test_subscribeToSendsEveryLineUpstream(self):
        factory = self.factory(subscribe_to="OUT")
        protocol, transport = connectProtocol(factory)
        out = self.service.get("OUT")
        out.publish(b"a")
        out.publishMany([b"b", b""])
        out.publishLines(b"c\nd\n")
        self.assertEqual(transport.value(), b"a\nb\n\nc\nd\n")
        self.assertEqual(factory.stats.lines_out, 5)
        protocol.dataReceived(b"ignored\n")  # subscribe-only: discarded
        self.assertEqual(self.incoming.messages, [])

    def test_bothDirectionsOnOneBackplaneNoEcho(self):
        factory = self.factory(publish_to="IN", subscribe_to="IN")
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"from upstream\n")
        self.assertEqual(self.incoming.messages, [b"from upstream"])
        self.assertEqual(transport.value(), b"")  # not sent back
        self.service.get("IN").publish(b"local")
        self.assertEqual(transport.value(), b"local\n")
        # ... and its own lines still do not echo after a reconnect.
        lose(protocol, transport)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"again\n")
        self.assertEqual(transport.value(), b"")

    def test_publisherCountedWhileConnected(self):
        factory = self.factory(publish_to="IN")
        protocol, transport = connectProtocol(factory)
        self.assertEqual(self.service.get("IN").stats.publishers, 1)
        lose(protocol, transport)
        self.assertEqual(self.service.get("IN").stats.publishers, 0)

    def test_keepAliveTurnedOn(self):
        factory = self.factory(publish_to="IN")
        _protocol, transport = connectProtocol(factory)
        self.assertEqual(transport.keepAlive, 1)
        # A transport without keepalive (UNIX, a test's) is fine too.
        connectProtocol(factory, StringTransport())


class RelayBufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = makeService("OUT")
        self.out = self.service.get("OUT")

    def test_oldestDroppedAndCountedPastTheBound(self):
        factory = RelayFactory(self.service, subscribe_to="OUT", buffer=5, clock=Clock())
        for n in range(8):
            self.out.publish(b"line %d" % n)
        self.assertEqual(factory.stats.dropped, 3)
        self.assertEqual(factory.dropped, 3)
        self.assertEqual(self.out.stats.dropped, 3)
        self.assertEqual(factory.stats.buffered, 5)
        _protocol, transport = connectProtocol(factory)
        self.out.publish(b"live")
        self.assertEqual(transport.value().split(b"\n")[:-1],
                         [b"line %d" % n for n in range(3, 8)] + [b"live"])
        self.assertEqual(factory.stats.buffered, 0)

    def test_bufferZeroKeepsNothing(self):
        factory = RelayFactory(self.service, subscribe_to="OUT", buffer=0, clock=Clock())
        self.out.publishMany([b"a", b"b"])
        self.assertEqual(factory.stats.dropped, 2)
        _protocol, transport = connectProtocol(factory)
        self.assertEqual(transport.value(), b"")

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 30),
           st.lists(st.lists(st.binary(max_size=5).filter(lambda m: b"\n" not in m),
                             min_size=1, max_size=12), max_size=10))
    def test_bufferKeepsTheNewestWholeLines(self, bound, batches):
        """
        Whatever the chunking, the buffer holds exactly the newest C{buffer}
        lines, whole, and sends them oldest first.
        """
        service = makeService("OUT")
        out = service.get("OUT")
        factory = RelayFactory(service, subscribe_to="OUT", buffer=bound, clock=Clock())
        for batch in batches:
            out.publishMany(batch)
        everything = [m for batch in batches for m in batch]
        kept = everything[max(len(everything) - bound, 0):] if bound else []
        self.assertEqual(factory.stats.dropped, len(everything) - len(kept))
        _protocol, transport = connectProtocol(factory)
        self.assertEqual(transport.value(), b"".join(m + b"\n" for m in kept))

    def test_bufferSurvivesReconnectsAndGoesBeforeLiveLines(self):
        factory = RelayFactory(self.service, subscribe_to="OUT", clock=Clock())
        protocol, transport = connectProtocol(factory)
        self.out.publish(b"one")
        lose(protocol, transport)
        self.out.publish(b"two")
        self.out.publish(b"three")
        self.assertEqual(factory.stats.buffered, 2)
        protocol, second = connectProtocol(factory)
        self.out.publish(b"four")
        self.assertEqual(transport.value(), b"one\n")
        self.assertEqual(second.value(), b"two\nthree\nfour\n")
        self.assertEqual(factory.stats.lines_out, 4)

    def test_upstreamNotReadingFillsTheBufferInOrder(self):
        factory = RelayFactory(self.service, subscribe_to="OUT", buffer=3, clock=Clock())
        protocol, transport = connectProtocol(factory)
        self.assertIs(transport.producer, protocol)
        self.out.publish(b"a")
        protocol.pauseProducing()
        for m in (b"b", b"c", b"d", b"e"):
            self.out.publish(m)
        self.assertEqual(transport.value(), b"a\n")
        self.assertEqual(factory.stats.dropped, 1)
        protocol.resumeProducing()
        self.out.publish(b"f")
        self.assertEqual(transport.value(), b"a\nc\nd\ne\nf\n")

    def test_linesDuringAClosingConnectionAreBuffered(self):
        factory = RelayFactory(self.service, subscribe_to="OUT", clock=Clock())
        protocol, transport = connectProtocol(factory)
        transport.loseConnection()
        self.out.publish(b"late")
        self.assertEqual(transport.value(), b"")
        lose(protocol, transport)
        protocol, second = connectProtocol(factory)
        self.assertEqual(second.value(), b"late\n")


class IdleTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = makeService("IN")
        self.clock = Clock()

    def test_silentUpstreamIsDropped(self):
        factory = RelayFactory(self.service, "IN", idle_timeout=30, clock=self.clock)
        protocol, transport = connectProtocol(factory)
        self.clock.advance(20)
        protocol.dataReceived(b"tick\n")
        self.clock.advance(20)
        protocol.dataReceived(b"par")  # any data counts, even half a line
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)  # aborted: it may be half-open
        self.assertEqual(factory.stats.idle_timeouts, 1)
        lose(protocol, transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_offByDefault(self):
        factory = RelayFactory(self.service, "IN", clock=self.clock)
        _protocol, transport = connectProtocol(factory)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**6)
        self.assertFalse(transport.disconnecting)


class LineBufferTests(SynchronousTestCase):
    def test_keepsChunksOldestFirst(self):
        buffer = LineBuffer(10)
        self.assertFalse(buffer)
        self.assertEqual(buffer.add(b"a\nb\n", 2), 0)
        self.assertEqual(buffer.add(b"c\n", 1), 0)
        self.assertTrue(buffer)
        self.assertEqual(buffer.lines, 3)
        self.assertEqual(buffer.take(), (b"a\nb\n", 2))
        self.assertEqual(buffer.take(), (b"c\n", 1))
        self.assertEqual((bool(buffer), buffer.lines), (False, 0))
        self.assertRaises(IndexError, buffer.take)

    def test_dropsTheOldestWholeLines(self):
        buffer = LineBuffer(3)
        buffer.add(b"a\nb\n", 2)
        self.assertEqual(buffer.add(b"c\nd\n", 2), 1)  # a goes, the first chunk is cut
        self.assertEqual(buffer.lines, 3)
        self.assertEqual(buffer.take(), (b"b\n", 1))
        self.assertEqual(buffer.add(b"e\nf\ng\nh\n", 4), 3)
        self.assertEqual(buffer.take(), (b"f\ng\nh\n", 3))
        self.assertFalse(buffer)

    def test_sizeZeroKeepsNothing(self):
        buffer = LineBuffer(0)
        self.assertEqual(buffer.add(b"a\nb\n", 2), 2)
        self.assertEqual((bool(buffer), buffer.lines), (False, 0))

    def test_sizeValidated(self):
        self.assertRaises(ValueError, LineBuffer, -1)


class RelayCoreTests(SynchronousTestCase):
    """
    The core on its own, connected through the plain factory, as any
    connection keeper would.
    """

    def setUp(self) -> None:
        self.service = makeService("IN", "OUT")
        self.incoming = Recorder.on(self.service.get("IN"))
        self.out = self.service.get("OUT")

    def test_linesBothWaysThroughThePlainFactory(self):
        relay = Relay(self.service, "IN", subscribe_to="OUT", clock=Clock())
        factory = RelayClientFactory(relay)
        self.out.publish(b"waited")
        protocol, transport = connectProtocol(factory)
        self.assertIsInstance(protocol, RelayProtocol)
        self.assertIs(protocol.factory, factory)
        self.assertIs(relay.protocol, protocol)
        self.assertEqual((relay.stats.state, relay.connected), ("connected", True))
        self.out.publish(b"live")
        protocol.dataReceived(b"from upstream\r\n")
        self.assertEqual(transport.value(), b"waited\nlive\n")
        self.assertEqual(self.incoming.messages, [b"from upstream"])
        self.assertEqual((relay.stats.lines_out, relay.stats.lines_in), (2, 1))
        lose(protocol, transport)
        self.assertEqual((relay.stats.state, relay.connected), ("waiting", False))

    def test_stopAndStart(self):
        relay = Relay(self.service, subscribe_to="OUT", clock=Clock())
        self.assertEqual((relay.trying, len(self.out)), (True, 1))
        relay.stop()
        self.assertEqual((relay.stats.state, relay.trying, len(self.out)), ("stopped", False, 0))
        relay.connectionFailed(Failure(ConnectionRefusedError()))
        self.assertEqual(relay.stats.state, "stopped", "not trying: a failure changes nothing")
        relay.start()
        self.assertEqual((relay.stats.state, relay.trying, len(self.out)), ("connecting", True, 1))

    def test_stopWhileConnectedStopsOnceTheConnectionIsGone(self):
        relay = Relay(self.service, subscribe_to="OUT", clock=Clock())
        protocol, transport = connectProtocol(RelayClientFactory(relay))
        relay.stop()
        self.assertEqual((relay.stats.state, len(self.out)), ("connected", 1))
        lose(protocol, transport, ConnectionDone())
        self.assertEqual((relay.stats.state, len(self.out)), ("stopped", 0))

    def test_greetComesFirstOnEachConnection(self):
        """
        L{Relay.greet} is called with each new connection before anything
        else is written to it: the place for a first line.
        """
        greeted = []

        class Greeting(Relay):
            def greet(self, protocol):
                greeted.append(protocol)
                protocol.sendLines(b"HELLO %d\n" % len(greeted))

        relay = Greeting(self.service, subscribe_to="OUT", clock=Clock())
        factory = RelayClientFactory(relay)
        self.out.publish(b"buffered")
        first, transport = connectProtocol(factory)
        self.out.publish(b"live")
        lose(first, transport)
        self.out.publish(b"while away")
        second, again = connectProtocol(factory)
        self.assertEqual(greeted, [first, second])
        self.assertEqual(transport.value(), b"HELLO 1\nbuffered\nlive\n")
        self.assertEqual(again.value(), b"HELLO 2\nwhile away\n")

    def test_optionsValidated(self):
        self.assertRaises(ValueError, Relay, self.service)
        self.assertRaises(ValueError, Relay, self.service, "IN", buffer=-1)
        self.assertRaises(ValueError, Relay, self.service, "IN", idle_timeout=0)
        self.assertRaises(ValueError, Relay, self.service, "IN", max_line_length=0)
        self.assertRaises(KeyError, Relay, self.service, "NOPE")


class RelayFactoryConnectTCPTests(SynchronousTestCase):
    """
    A RelayFactory through MemoryReactorClock.connectTCP, as through
    reactor.connectTCP: its relay connects, loses upstream, and the factory
    itself reconnects it.
    """

    def test_aWholeOutage(self):
        service = makeService("IN", "OUT")
        incoming = Recorder.on(service.get("IN"))
        out = service.get("OUT")
        reactor = MemoryReactorClock()
        factory = RelayFactory(service, "IN", subscribe_to="OUT", jitter=0.0,
                               initial_delay=1.0, max_delay=5.0, clock=reactor)
        connector = reactor.connectTCP("10.1.2.3", 1600, factory)
        relay = factory.relay
        self.assertEqual((relay.stats.attempts, relay.stats.state), (1, "connecting"))
        self.assertEqual(relay.destination, "10.1.2.3:1600")
        self.assertEqual(reactor.tcpClients[0][:3], ("10.1.2.3", 1600, factory))

        protocol, transport = connectProtocol(factory)
        self.assertIs(relay.protocol, protocol)
        out.publish(b"up")
        protocol.dataReceived(b"down\n")
        self.assertEqual(transport.value(), b"up\n")
        self.assertEqual(incoming.messages, [b"down"])

        lose(protocol, transport)
        factory.clientConnectionLost(connector, Failure(ConnectionLost()))
        self.assertEqual(relay.stats.state, "waiting")
        out.publish(b"while away")
        self.assertEqual(relay.stats.buffered, 1)
        reconnects: list[int] = []

        def connect() -> None:
            reconnects.append(1)
            factory.startedConnecting(connector)

        connector.connect = connect
        reactor.advance(pendingDelays(reactor)[0])
        self.assertEqual(reconnects, [1])
        self.assertEqual((relay.stats.attempts, relay.stats.state), (2, "connecting"))

        protocol, second = connectProtocol(factory)
        self.assertEqual(second.value(), b"while away\n")
        self.assertEqual((relay.stats.connects, relay.stats.reconnects), (2, 1))
        self.assertEqual(factory.retries, 0)

        factory.stopTrying()
        connector.disconnect()
        lose(protocol, second, ConnectionDone())
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        self.assertEqual(relay.stats.state, "stopped")
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(len(out), 0)


class RelayServiceCoreTests(SynchronousTestCase):
    """
    Under a RelayService the factory hands over its relay, which is
    connected through a plain RelayClientFactory: the RelayFactory itself
    never builds a protocol nor retries.
    """

    def test_theServiceConnectsTheFactorysRelay(self):
        service = makeService("IN", "OUT")
        clock = Clock()
        endpoint = FakeEndpoint()
        factory = RelayFactory(service, "IN", subscribe_to="OUT", clock=clock)
        relayService = RelayService(endpoint, factory, description="tcp:up:1600",
                                    random=lambda: 0.0)
        self.assertIs(relayService.relay, factory.relay)
        self.assertFalse(factory.continueTrying)
        relayService.startService()
        [(connecting, _)] = endpoint.attempts
        self.assertNotIsInstance(connecting, ReconnectingClientFactory)
        protocol, transport = endpoint.accept()
        self.assertIsInstance(protocol.factory, RelayClientFactory)
        self.assertIs(protocol.relay, factory.relay)
        service.get("OUT").publish(b"up")
        self.assertEqual(transport.value(), b"up\n")
        self.assertEqual(factory.retries, 0)
        lose(protocol, transport)
        self.assertEqual(pendingDelays(clock), [1.0])
        clock.advance(1.0)
        self.assertEqual(len(endpoint.attempts), 2)
        self.assertEqual(factory.relay.stats.attempts, 2)
        relayService.stopService()
        self.assertEqual(factory.relay.stats.state, "stopped")


# Integration: real sockets, an upstream that goes away and comes back.


class Upstream:
    """
    An upstream server on a fixed port: clients' lines go to FROM, and
    clients receive the lines of TO.
    """

    def __init__(self) -> None:
        self.service = makeService("FROM", "TO")
        self.received = Recorder.on(self.service.get("FROM"))
        self.factory = WrappingFactory(
            BackplaneFactory(self.service, publish_to="FROM", subscribe_to="TO"))
        self.portNumber = freePort()
        self.port: Port | None = None

    @pytest_twisted.inlineCallbacks
    def start(self):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, self.portNumber, interface="127.0.0.1")
        self.port = yield endpoint.listen(self.factory)

    @pytest_twisted.inlineCallbacks
    def stop(self):
        assert self.port is not None
        yield self.port.stopListening()
        for wrapper in list(self.factory.protocols):
            wrapper.transport.loseConnection()
        yield waitUntil(lambda: not self.factory.protocols, what="upstream connections closed")


@pytest.fixture
def upstream():
    upstream = Upstream()
    yield upstream
    if upstream.port is not None and upstream.port.connected:
        pytest_twisted.blockon(upstream.stop())


@pytest_twisted.inlineCallbacks
def test_relayServiceFollowsAnUpstreamThatRestarts(upstream):
    local = makeService("IN", "OUT")
    incoming = Recorder.on(local.get("IN"))
    factory = RelayFactory(local, "IN", subscribe_to="OUT", initial_delay=0.05, max_delay=0.2)
    endpoint = endpoints.clientFromString(reactor, f"tcp:127.0.0.1:{upstream.portNumber}")
    relay = RelayService(endpoint, factory)
    relay.setServiceParent(local)
    local.startService()  # upstream is down: starting still works
    try:
        yield waitUntil(lambda: factory.stats.attempts >= 2, what="retries while down")
        assert factory.stats.state in ("waiting", "connecting")
        local.get("OUT").publishMany([b"early 1", b"early 2"])

        yield upstream.start()
        yield waitUntil(lambda: factory.stats.state == "connected", what="connected")
        yield waitUntil(lambda: len(upstream.received.messages) == 2, what="buffered lines")
        assert upstream.received.messages == [b"early 1", b"early 2"]
        to = upstream.service.get("TO")
        yield waitUntil(lambda: len(to) == 1, what="relay subscribed upstream")
        to.publish(b"down 1")
        yield incoming.waitFor(1)

        yield upstream.stop()
        yield waitUntil(lambda: factory.stats.state != "connected", what="loss noticed")
        local.get("OUT").publish(b"while away")
        assert factory.stats.buffered == 1

        yield upstream.start()  # the same port
        yield waitUntil(lambda: factory.stats.connects == 2, what="reconnected")
        yield waitUntil(lambda: len(upstream.received.messages) == 3, what="lines up again")
        assert upstream.received.messages[2] == b"while away"
        yield waitUntil(lambda: len(to) == 1)
        to.publish(b"down 2")
        yield incoming.waitFor(2)
        assert incoming.messages == [b"down 1", b"down 2"]
        assert factory.stats.reconnects == 1
        assert factory.stats.lines_in == 2
        assert factory.stats.lines_out == 3
        assert factory.stats.dropped == 0
    finally:
        yield local.stopService()
    # Read afresh: mypy would narrow stats.state by the first assert, across the yields.
    stats = factory.stats
    assert stats.state == "stopped"


@pytest_twisted.inlineCallbacks
def test_connectTCPRetriesByItself(upstream):
    local = makeService("IN")
    incoming = Recorder.on(local.get("IN"))
    factory = RelayFactory(local, "IN", initial_delay=0.05, max_delay=0.2)
    connector = reactor.connectTCP("127.0.0.1", upstream.portNumber, factory)
    try:
        yield waitUntil(lambda: factory.stats.attempts >= 2, what="retries while down")
        yield upstream.start()
        yield waitUntil(lambda: factory.stats.state == "connected", what="connected")
        to = upstream.service.get("TO")
        yield waitUntil(lambda: len(to) == 1)
        to.publish(b"hello")
        yield incoming.waitFor(1)
        yield upstream.stop()
        yield upstream.start()
        yield waitUntil(lambda: factory.stats.connects == 2, what="reconnected")
        yield waitUntil(lambda: len(to) == 1)
        to.publish(b"again")
        yield incoming.waitFor(2)
        assert incoming.messages == [b"hello", b"again"]
    finally:
        factory.stopTrying()
        connector.disconnect()
        yield waitUntil(lambda: factory.stats.state == "stopped", what="stopped")


def test_failedEndpointAtStartDoesNotRaise():
    """
    Even an endpoint that fails at once (say, a bad host) leaves the
    service running and retrying.
    """

    @implementer(IStreamClientEndpoint)
    class Failing:
        def connect(self, factory):
            return fail(ConnectionRefusedError("no"))

    clock = Clock()
    factory = RelayFactory(makeService("IN"), "IN", clock=clock)
    relay = RelayService(Failing(), factory, random=lambda: 0.0)
    relay.startService()
    assert relay.running
    assert factory.stats.state == "waiting"
    assert pendingDelays(clock) == [1.0]
    relay.stopService()
