"""
Unit tests of L{backplane.redis.link}'s pieces, and tripwires: tests of the
details of txredisapi and of Twisted's ClientService that the link relies on
or works around, which fail loudly if those libraries change under it.
"""

from __future__ import annotations

from automat import NoTransition
from twisted.application.internet import ClientService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from txredisapi import BaseRedisProtocol
from zope.interface import implementer

from backplane.redis.link import HealthCheck, InlineParsing
from tests.redis_helpers import encodeCommand

# Three replies as Redis sends them to a subscriber: bulk strings, and what
# follows each.
REPLIES = [
    [b"subscribe", b"ch", 1],
    [b"message", b"ch", b"one"],
    [b"message", b"ch", b"two\r\n"],
]
DATA = (b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" + encodeCommand(b"message", b"ch", b"one")
        + encodeCommand(b"message", b"ch", b"two\r\n"))


class Recording(BaseRedisProtocol):  # type: ignore[misc]
    """
    txredisapi's pure-Python parser (used when hiredis is not installed),
    recording the replies it parses.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(charset=None, convertNumbers=False)
        self.callLater = clock.callLater
        self.replies: list[object] = []

    def replyReceived(self, reply: object) -> None:
        self.replies.append(reply)


class Inline(InlineParsing, Recording):
    """
    The same parser with L{InlineParsing}, as the bridge's protocols have it.
    """


def connected(protocol: BaseRedisProtocol) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


class TxredisapiParserTests(SynchronousTestCase):
    """
    The tripwire of L{InlineParsing}, the bridge's one use of txredisapi's
    internals: the details of its pure-Python parser that it relies on.  If
    one of these tests fails, txredisapi has changed: see whether
    L{InlineParsing} is still right, or still needed.
    """

    def test_parserAsAssumed(self) -> None:
        """
        txredisapi's pure-Python parser calls C{setLineMode(extra=rest)} after
        each bulk string, with the rest of the read; C{setLineMode} with
        C{extra} pauses the transport and parses C{extra} on a later turn of
        the reactor (through the protocol's C{callLater}); without it, only
        goes back to line mode.
        """
        calls: list[object] = []

        class Watched(Recording):
            def setLineMode(self, extra: bytes = b"") -> None:
                calls.append(extra)
                super().setLineMode(extra)

        clock = Clock()
        protocol = Watched(clock)
        transport = connected(protocol)
        protocol.dataReceived(DATA)
        self.assertEqual(protocol.replies, [])
        self.assertEqual(calls, [DATA[DATA.index(b"$2\r\nch") :]])  # after b"subscribe"
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(protocol.replies, REPLIES)
        self.assertEqual(len(calls), 8)  # once per bulk string
        self.assertEqual(transport.producerState, "producing")

        clock = Clock()
        plain = Recording(clock)
        transport = connected(plain)
        plain.setRawMode()
        plain.setLineMode()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(clock.getDelayedCalls(), [])
        plain.dataReceived(b"+OK\r\n")
        self.assertEqual(plain.replies, ["OK"])

    def test_inline(self) -> None:
        """
        With L{InlineParsing}, all that a read brings is parsed at once,
        without pausing the transport or waiting for the reactor, in
        whatever chunks it comes.
        """
        for size in range(1, len(DATA) + 1):
            clock = Clock()
            protocol = Inline(clock)
            transport = connected(protocol)
            for start in range(0, len(DATA), size):
                protocol.dataReceived(DATA[start : start + size])
            self.assertEqual(protocol.replies, REPLIES, size)
            self.assertEqual(transport.producerState, "producing")
            self.assertEqual(clock.getDelayedCalls(), [])


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

        @implementer(IStreamClientEndpoint)
        class Endpoint:
            def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
                protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
                assert protocol is not None
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


@implementer(IStreamClientEndpoint)
class _Refusing:
    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return fail(ConnectionRefusedError("no Redis here"))


class RetryLogTests(SynchronousTestCase):
    def test_retriesNameRedis(self) -> None:
        """
        ClientService's note of each retry names the Redis connection, not
        an object's repr.
        """
        from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
        from zope.interface import provider

        from backplane.redis.link import Link

        events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        clock = Clock()
        link = Link("publisher", _Refusing(), Protocol, prepare=succeed,
                    ready=lambda link: None, down=lambda link, why: None,
                    retryPolicy=lambda attempt: 1.0, timeout=1.0, clock=clock)
        link.start()
        clock.advance(1.0)
        link.stop()
        retries = [formatEvent(e) for e in events if "retry" in formatEvent(e).lower()]
        self.assertTrue(retries)
        for text in retries:
            self.assertIn("Redis (the publisher connection)", text)
            self.assertNotIn(" object at 0x", text)
