"""
Handshakes that never finish, and publishers that stall mid-line: the
handshake timeout, C{max_clients} counting only clients whose handshake is
done, C{max_handshakes}, and C{idle_timeout} (unit tests with a
L{Clock<twisted.internet.task.Clock>}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from backplane import BackplaneService
from backplane.config import read_config
from backplane.protocols import BackplaneFactory, BackplaneProtocol, Limits
from backplane.testing import Recorder
from tests.test_config import ConfigTestCase


def tlsTransport(port: int) -> StringTransport:
    """
    A transport that says it is TLS, whose handshake the test completes by
    calling C{handshakeCompleted}.
    """
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    directlyProvides(transport, ISSLTransport)
    return transport


class HandshakeTests(SynchronousTestCase):
    """
    A TLS port: connections in their handshake do not count against
    C{max_clients}, are cut at C{handshake_timeout}, and at most
    C{max_handshakes} (by default C{max_clients}) are kept.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")

    def factory(self, **limits: Any) -> BackplaneFactory:
        return BackplaneFactory(self.service, subscribe_to="NEWS", limits=Limits(**limits),
                                clock=self.clock)

    def connect(self, factory: BackplaneFactory,
                port: int) -> tuple[BackplaneProtocol, StringTransport]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert isinstance(protocol, BackplaneProtocol)
        transport = tlsTransport(port)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_unfinishedHandshakesDoNotLockOut(self) -> None:
        """
        With C{max_clients} connections that never finish their handshake, a
        client that finishes its own gets in and receives lines; the others
        are cut at the timeout.
        """
        factory = self.factory(max_clients=3, handshake_timeout=5.0)
        stalled = [self.connect(factory, 1000 + i) for i in range(3)]
        self.assertEqual((factory.clients, factory.handshakes), (0, 3))
        self.clock.advance(1)
        good, goodTransport = self.connect(factory, 2000)
        # max_handshakes (= max_clients) were in theirs: the oldest went.
        self.assertTrue(stalled[0][1].disconnected)
        self.assertEqual(factory.stats.handshakes_evicted, 1)
        good.handshakeCompleted()
        self.assertEqual((factory.clients, factory.handshakes), (1, 2))
        self.news.publish(b"for the good one")
        self.assertEqual(goodTransport.value(), b"for the good one\n")
        self.clock.advance(3.9)
        self.assertFalse(stalled[1][1].disconnected)
        self.clock.advance(0.2)
        self.assertEqual([transport.disconnected for _, transport in stalled],
                         [True, True, True])
        self.assertEqual(factory.stats.handshake_timeouts, 2)
        self.assertFalse(goodTransport.disconnected, "a finished handshake has no timeout")
        self.clock.advance(100)
        self.assertFalse(goodTransport.disconnected)
        for protocol, _ in stalled:
            protocol.connectionLost(None)
        self.assertEqual((factory.clients, factory.handshakes), (1, 0))
        self.assertEqual(factory.stats.tls_failures, 3)

    def test_fullAtHandshakeRefused(self) -> None:
        """
        A client that finishes its handshake once C{max_clients} clients
        have finished theirs is refused then: counted, and aborted.
        """
        factory = self.factory(max_clients=1, max_handshakes=4)
        first, firstTransport = self.connect(factory, 1)
        second, secondTransport = self.connect(factory, 2)
        first.handshakeCompleted()
        second.handshakeCompleted()
        self.assertTrue(secondTransport.disconnected)
        self.assertFalse(firstTransport.disconnected)
        self.assertEqual(factory.stats.refused, 1)
        self.assertEqual(len(self.news), 1)
        # Full: a new connection is refused at once, before any handshake.
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3)))
        self.assertEqual(factory.stats.refused, 2)

    def test_maxHandshakesWithoutMaxClients(self) -> None:
        factory = self.factory(max_handshakes=2)
        connections = [self.connect(factory, i) for i in range(5)]
        self.assertEqual([transport.disconnected for _, transport in connections],
                         [True, True, True, False, False])
        self.assertEqual(factory.stats.handshakes_evicted, 3)

    def test_plainConnectionHasNoHandshake(self) -> None:
        factory = self.factory(max_clients=2, handshake_timeout=1.0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual((factory.clients, factory.handshakes), (1, 0))
        self.clock.advance(10)
        self.assertFalse(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_limitsValidated(self) -> None:
        for bad in ({"handshake_timeout": 0.0}, {"max_handshakes": 0},
                    {"idle_timeout": -1.0}):
            self.assertRaises(ValueError, Limits, **bad)


class IdleTimeoutTests(SynchronousTestCase):
    """
    C{idle_timeout}: a publisher that holds half a line and then sends
    nothing for that long is disconnected; the half line is never published,
    and its bytes are counted.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.recorder = Recorder.on(self.news)

    def connect(self, idle: float) -> tuple[BackplaneFactory, BackplaneProtocol,
                                            StringTransport]:
        factory = BackplaneFactory(self.service, publish_to="NEWS",
                                   limits=Limits(idle_timeout=idle), clock=self.clock)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, BackplaneProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return factory, protocol, transport

    def test_halfLineHeldTooLong(self) -> None:
        factory, protocol, transport = self.connect(10.0)
        protocol.dataReceived(b"whole\nhal")
        self.clock.advance(9)
        protocol.dataReceived(b"f a li")  # more of it: the timeout starts again
        self.clock.advance(9.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.stats.idle_timeouts, 1)
        self.assertEqual(factory.stats.idle_discarded, len(b"half a li"))
        protocol.dataReceived(b"ne\n")
        protocol.connectionLost(None)
        self.assertEqual(self.recorder.messages, [b"whole"])

    def test_completeLinesNeverTimeOut(self) -> None:
        factory, protocol, transport = self.connect(10.0)
        protocol.dataReceived(b"par")
        protocol.dataReceived(b"t\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.recorder.messages, [b"part"])
        self.assertEqual(factory.stats.idle_timeouts, 0)

    def test_offByDefault(self) -> None:
        _factory, protocol, transport = self.connect(0.0)
        protocol.dataReceived(b"half")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(86400)
        self.assertFalse(transport.disconnecting)

    def test_closedClientForgetsItsTimer(self) -> None:
        factory, protocol, _transport = self.connect(10.0)
        protocol.dataReceived(b"half")
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(factory.stats.idle_timeouts, 0)


class HandshakeConfigTests(ConfigTestCase):
    """
    The new C{[[listen]]} keys are read into the port's L{Limits}, and
    C{--check} (L{read_config}) refuses what start-up would.
    """

    PORT = """
[backplane.IN]

[[listen]]
endpoint = "tcp:0"
publish_to = "IN"
protocol = "{protocol}"
{extra}
"""

    def port(self, extra: str, protocol: str = "lines") -> str:
        return self.PORT.format(protocol=protocol, extra=extra)

    def test_defaults(self) -> None:
        (listen,) = read_config(self.write(self.port(""))).listen
        self.assertEqual((listen.limits.handshake_timeout, listen.limits.max_handshakes,
                          listen.limits.idle_timeout), (5.0, None, 0.0))

    def test_read(self) -> None:
        config = read_config(self.write(self.port(
            "handshake_timeout = 2\nmax_handshakes = 7\nidle_timeout = 30\nmax_clients = 3")))
        limits = config.listen[0].limits
        self.assertEqual((limits.handshake_timeout, limits.max_handshakes, limits.idle_timeout,
                          limits.handshakeLimit), (2.0, 7, 30.0, 7))

    def test_handshakeLimitDefaultsToMaxClients(self) -> None:
        config = read_config(self.write(self.port("max_clients = 3")))
        self.assertEqual(config.listen[0].limits.handshakeLimit, 3)

    def test_refused(self) -> None:
        for extra, fragment in [
            ("handshake_timeout = 0", "listen[1].handshake_timeout: must be more than 0.0"),
            ("handshake_timeout = 1e300", "listen[1].handshake_timeout: must be 3600 or less"),
            ("max_handshakes = 0", "listen[1].max_handshakes: must be 1 or more"),
            ("idle_timeout = -1", "listen[1].idle_timeout: must be 0.0 or more"),
            ("idle_timeout = 1e-300\nmax_clients = 1", None),
            ('idle_timeout = "5"', "listen[1].idle_timeout: must be a number"),
        ]:
            if fragment is None:
                read_config(self.write(self.port(extra)))
            else:
                self.assertConfigError(self.port(extra), fragment)

    def test_idleTimeoutOnlyForLinePublishers(self) -> None:
        self.assertConfigError(self.port("idle_timeout = 5", protocol="websocket"),
                               "listen[1].idle_timeout: is for a lines port with publish_to")
        subscribeOnly = self.port("idle_timeout = 5").replace('publish_to = "IN"',
                                                              'subscribe_to = "IN"')
        self.assertConfigError(subscribeOnly, "listen[1].idle_timeout")


class FileLimitTests(SynchronousTestCase):
    """
    The open files a port may need: its clients, and as many again in their
    handshake on a port that has one.
    """

    def test_connections(self) -> None:
        from backplane.config import parse_config
        from backplane.tap import _connections

        config = parse_config({"backplane": {"A": {}}, "listen": [
            {"endpoint": "tcp:0", "subscribe_to": "A", "max_clients": 10},
            {"endpoint": "tcp:0", "subscribe_to": "A", "max_clients": 10,
             "protocol": "websocket"},
            {"endpoint": "tcp:0", "subscribe_to": "A", "max_clients": 10, "protocol": "sse",
             "max_handshakes": 3},
            {"endpoint": "tcp:0", "subscribe_to": "A"},
        ]})
        self.assertEqual([_connections(entry) for entry in config.listen], [10, 20, 13, None])


class ForeignProtocolTests(SynchronousTestCase):
    def test_protocolNotBuiltByThePortMayStay(self) -> None:
        """
        A protocol this port did not build (a test's, a subclass's own) is
        not tracked, and not refused.
        """
        service = BackplaneService()
        service.create("NEWS")
        factory = BackplaneFactory(service, subscribe_to="NEWS", limits=Limits(max_clients=1))
        protocol = BackplaneProtocol(subscribe_to=service.get("NEWS"))
        protocol.factory = factory
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(service.get("NEWS")), 1)
