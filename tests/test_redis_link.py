"""
Unit tests of L{backplane.redis.link}'s pieces, and a tripwire: a test of
the detail of Twisted's ClientService that the link works around, which
fails loudly if it changes.
"""

from __future__ import annotations

from automat import NoTransition
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from backplane.redis.link import HealthCheck


class Pinged:
    """
    A connection whose PINGs the test answers.
    """

    def __init__(self) -> None:
        self.pings: list[Deferred[object]] = []

    def ping(self) -> Deferred[object]:
        self.pings.append(Deferred())
        return self.pings[-1]


class HealthCheckTests(SynchronousTestCase):
    """
    L{HealthCheck}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connection = Pinged()
        self.dead: list[str] = []
        self.check = HealthCheck(self.connection, 5.0, self.clock, self.dead.append)

    def test_pings(self) -> None:
        """
        A PING every C{interval} seconds after the last answer, while
        answered.
        """
        self.check.start()
        self.clock.advance(4.9)
        self.assertEqual(self.connection.pings, [])
        for n in range(1, 4):
            self.clock.advance(0.1)
            self.assertEqual(len(self.connection.pings), n)
            self.clock.advance(3)
            self.connection.pings[-1].callback("PONG")
            self.clock.advance(4.9)
        self.assertEqual(self.dead, [])

    def test_unanswered(self) -> None:
        """
        A PING unanswered for C{interval} seconds, or failed, makes the
        connection dead, once; no more PINGs are sent.
        """
        self.check.start()
        self.clock.advance(5)
        self.clock.advance(4.9)
        self.assertEqual(self.dead, [])
        self.clock.advance(0.1)
        self.assertEqual(self.dead, ["PING unanswered: no answer within 5 s"])
        self.clock.advance(100)
        self.assertEqual((len(self.connection.pings), len(self.dead)), (1, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

        check = HealthCheck(self.connection, 5.0, self.clock, self.dead.append)
        check.start()
        self.clock.advance(5)
        self.connection.pings[-1].errback(ConnectionRefusedError())
        self.assertEqual(self.dead[-1], "PING unanswered: Connection was refused by other side.")

    def test_stop(self) -> None:
        """
        Stopped, it sends no more PINGs and ignores the answer to one in
        flight.
        """
        self.check.start()
        self.clock.advance(5)
        self.check.stop()
        self.connection.pings[-1].errback(ConnectionRefusedError())
        self.clock.advance(100)
        self.assertEqual((len(self.connection.pings), self.dead), (1, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ClientServiceTests(SynchronousTestCase):
    """
    The tripwire of L{backplane.redis.link._Gate}: what it works around in
    Twisted's L{ClientService}.  If this test fails, Twisted has changed:
    see whether the gate is still needed.
    """

    def test_lostWhilePreparing(self) -> None:
        """
        A L{ClientService} told that a connection it is preparing was lost
        raises from C{connectionLost}; and one whose C{prepareConnection}
        failed is left open.
        """
        transports: list[StringTransportWithDisconnection] = []

        class Endpoint:
            def connect(self, factory: Factory) -> Deferred[Protocol]:
                protocol = factory.buildProtocol(None)
                transport = StringTransportWithDisconnection()
                transport.protocol = protocol
                protocol.makeConnection(transport)
                transports.append(transport)
                return succeed(protocol)

        preparing: Deferred[None] = Deferred()
        service = ClientService(Endpoint(), Factory.forProtocol(Protocol), clock=Clock(),
                                prepareConnection=lambda protocol: preparing)
        service.startService()
        self.assertRaises(NoTransition, transports[0].loseConnection)

        service = ClientService(Endpoint(), Factory.forProtocol(Protocol), clock=Clock(),
                                prepareConnection=lambda protocol: fail(ValueError()))
        service.startService()
        self.assertTrue(transports[1].connected)
        self.assertRaises(NoTransition, transports[1].loseConnection)
