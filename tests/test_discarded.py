"""
C{discarded_bytes} of WebSocket and Redis-protocol ports: a client whose
connection ends in the middle of a message (a request) loses it, never
published (handled), and its bytes are counted, once; what it sent whole,
what was refused and what a client that only subscribes sends are not.
"""

import struct

import txaio
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from backplane.budget import UnfinishedBudget
from backplane.protocols import Limits
from backplane.redis.server import RedisClient, RedisFactory
from backplane.service import BackplaneService
from backplane.websocket import WebSocketFactory
from tests.helpers import connectedOn
from tests.redis_helpers import encodeCommand
from tests.test_relay import LogCapture
from tests.test_websocket import BINARY, CLOSE, clientFrame, closeCode, opened, serverFrames


def lost(protocol, transport, reason: Exception | None = None) -> None:
    transport.disconnecting = True
    protocol.connectionLost(Failure(reason or ConnectionLost("gone")))


class WebSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.tx.config, "loop", self.clock)
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.news = self.service.create("NEWS")
        self.published: list[bytes] = []
        self.news.subscribe(self.published.append)
        self.factory = WebSocketFactory(self.service, publish_to="NEWS")
        self.log = LogCapture(self)

    def assertDiscarded(self, count: int) -> None:
        self.assertEqual(self.factory.stats.discarded_bytes, count)
        budget = self.service.unfinished
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))

    def test_fragmentsWithoutFin(self):
        """
        A message sent in fragments, the last without FIN, then a reset:
        the payload of its fragments is counted, none of it published.
        """
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"whole"))
        client.dataReceived(clientFrame(b"a" * 30, fin=False))
        client.dataReceived(clientFrame(b"b" * 7, opcode=0, fin=False))
        lost(client, transport)
        self.assertEqual(self.published, [b"whole"])
        self.assertDiscarded(37)

    def test_frameCutShort(self):
        """
        A frame whose payload is cut: the part that arrived is counted
        (not its header, nor the bytes it announced).
        """
        client, transport = opened(self.factory)
        frame = clientFrame(b"c" * 50)
        client.dataReceived(frame[:6 + 20])  # a 2-byte header, the mask, 20 bytes
        self.assertEqual(client.unfinished, 20)
        lost(client, transport)
        self.assertDiscarded(20)

    def test_frameHeaderCutShort(self):
        """
        Only a part of a frame's header: no message bytes, nothing counted.
        """
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"d" * 50)[:3])
        lost(client, transport)
        self.assertDiscarded(0)

    def test_closeFrameInTheMiddleOfAMessage(self):
        """
        A clean WebSocket close (a Close frame, between the fragments of a
        message) still leaves the message unfinished: counted.
        """
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"e" * 12, fin=False))
        client.dataReceived(clientFrame(struct.pack("!H", 1000), opcode=CLOSE))
        self.assertEqual([closeCode(f) for f in serverFrames(transport.value())], [1000])
        lost(client, transport, ConnectionDone())
        self.assertEqual(self.published, [])
        self.assertDiscarded(12)

    def test_goingAway(self):
        """
        A message unfinished when the server closes the client (the port
        stops) is counted; what the client sends after the server's Close
        frame is not kept.
        """
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"f" * 9, fin=False))
        client.goAway()
        client.dataReceived(clientFrame(b"g" * 5, opcode=0, fin=False))
        lost(client, transport)
        self.assertDiscarded(9)

    def test_wholeMessagesNotCounted(self):
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"one", fin=False) + clientFrame(b"\ntwo", opcode=0))
        lost(client, transport)
        self.assertEqual(self.published, [b"one", b"two"])
        self.assertDiscarded(0)

    def test_lostWhilePublishing(self):
        """
        A message is whole once its last fragment is in: a connection lost
        while it is being published (by a transport that ends it at once)
        counts nothing of it.
        """
        client, transport = opened(self.factory)

        def gone(data: bytes) -> None:
            lost(client, transport)

        self.news.subscribe(gone)
        client.dataReceived(clientFrame(b"k" * 30, fin=False))
        client.dataReceived(clientFrame(b"k" * 5, opcode=0))
        self.assertEqual(self.published, [b"k" * 35])
        self.assertDiscarded(0)

    def test_subscriberOnlyNotCounted(self):
        """
        What a client that only subscribes sends is never published, whole
        or not, and not kept: its half message is not counted.
        """
        factory = WebSocketFactory(self.service, subscribe_to="NEWS")
        client, transport = opened(factory)
        client.dataReceived(clientFrame(b"h" * 40, fin=False))
        self.assertEqual(client.unfinished, 0)
        lost(client, transport)
        self.assertEqual(factory.stats.discarded_bytes, 0)

    def test_refusedMessageNotCounted(self):
        """
        A message refused for its size (autobahn fails the connection from
        the header of a frame that takes it past the bound) would never
        have been published: it counts as C{overlong}, not as discarded.
        """
        factory = WebSocketFactory(self.service, publish_to="NEWS",
                                   limits=Limits(max_line_length=50))
        client, transport = opened(factory)
        client.dataReceived(clientFrame(b"i" * 40, fin=False))
        client.dataReceived(clientFrame(b"", opcode=0, length=1000)[:8])
        self.assertEqual([closeCode(f) for f in serverFrames(transport.value())], [1009])
        lost(client, transport)
        self.assertEqual((factory.stats.overlong, factory.stats.discarded_bytes), (1, 0))

    def test_cutCountedOnce(self):
        """
        A client cut for max_unfinished_total is counted when cut, and not
        again when its connection is lost.
        """
        client, transport = opened(self.factory)
        client.dataReceived(clientFrame(b"j" * 101, opcode=BINARY, fin=False))
        self.assertEqual(self.service.unfinished.cuts, 1)
        self.assertEqual(self.factory.stats.discarded_bytes, 101)
        lost(client, transport)
        self.assertDiscarded(101)


class RedisTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.clock = Clock()
        self.factory = RedisFactory(self.service, backplanes=("NEWS",), clock=self.clock)
        self.published: list[bytes] = []
        self.service.create("NEWS").subscribe(self.published.append)

    def connect(self) -> tuple[RedisClient, StringTransport]:
        return connectedOn(self.factory, RedisClient)

    def assertDiscarded(self, count: int) -> None:
        self.assertEqual(self.factory.stats.discarded_bytes, count)
        budget = self.service.unfinished
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))

    def test_partialRequest(self):
        """
        Half a PUBLISH, then a reset: its bytes are counted, nothing is
        published; the whole requests before it are handled, not counted.
        """
        client, transport = self.connect()
        publish = encodeCommand(b"PUBLISH", b"NEWS", b"hello")
        half = publish[:-4]  # *3\r\n$7\r\nPUBLISH\r\n$4\r\nNEWS\r\n$5\r\nhel
        self.assertTrue(half.endswith(b"$5\r\nhel"))
        client.dataReceived(encodeCommand(b"PING") + publish + half)
        self.assertEqual(transport.value(), b"+PONG\r\n:1\r\n")
        lost(client, transport)
        self.assertEqual(self.published, [b"hello"])
        self.assertDiscarded(len(half))

    def test_lostWhileHandling(self):
        """
        A request being handled is whole: a connection lost while it is (by
        a transport that ends it at once) counts only the partial request
        after it, not the part of it an earlier read held.
        """
        client, transport = self.connect()
        echo = encodeCommand(b"ECHO", b"e" * 20)

        def handled(args: list[bytes]) -> None:
            lost(client, transport)

        client.redis_echo = handled  # type: ignore[method-assign]
        client.dataReceived(echo[:15])
        self.assertEqual(client.unfinished, 15)
        client.dataReceived(echo[15:] + b"*1\r\n$4\r\nPI")
        self.assertDiscarded(len(b"*1\r\n$4\r\nPI"))

    def test_partialRequestOverReads(self):
        """
        A request sent over several reads counts all that arrived of it.
        """
        client, transport = self.connect()
        publish = encodeCommand(b"PUBLISH", b"NEWS", b"x" * 40)
        for i in range(0, 50, 7):
            client.dataReceived(publish[i:i + 7])
        lost(client, transport)
        self.assertEqual(self.published, [])
        self.assertDiscarded(56)

    def test_partialInlineCommand(self):
        client, transport = self.connect()
        client.dataReceived(b"PING\r\nPUBLISH NEWS hel")
        lost(client, transport)
        self.assertEqual(transport.value(), b"+PONG\r\n")
        self.assertDiscarded(len(b"PUBLISH NEWS hel"))

    def test_wholeRequestsNotCounted(self):
        client, transport = self.connect()
        client.dataReceived(encodeCommand(b"PUBLISH", b"NEWS", b"a") + encodeCommand(b"PING"))
        client.dataReceived(b"PING\r\n")
        self.assertEqual(transport.value(), b":1\r\n+PONG\r\n+PONG\r\n")
        lost(client, transport)
        self.assertDiscarded(0)

    def test_closedByTheServer(self):
        """
        A half request when the server closes the client outside a read
        (the port stopping) is counted.
        """
        client, transport = self.connect()
        client.dataReceived(b"*2\r\n$4\r\nPING\r\n$3\r\nab")
        self.factory.closeClient(client)
        self.assertTrue(transport.disconnecting)
        lost(client, transport, ConnectionDone())
        self.assertDiscarded(len(b"*2\r\n$4\r\nPING\r\n$3\r\nab"))

    def test_afterQuitNotCounted(self):
        """
        What follows a QUIT in the same read is never read: it is not a
        request cut short, and not counted.
        """
        client, transport = self.connect()
        client.dataReceived(encodeCommand(b"QUIT") + encodeCommand(b"PUBLISH", b"NEWS", b"z")[:9])
        self.assertTrue(transport.disconnecting)
        lost(client, transport, ConnectionDone())
        self.assertEqual(self.published, [])
        self.assertDiscarded(0)

    def test_protocolErrorNotCounted(self):
        """
        A malformed request is refused (C{protocol_errors}), not counted as
        discarded.
        """
        client, transport = self.connect()
        client.dataReceived(b"*1\r\n:1\r\n" + b"*2\r\n$4\r\nPING\r\n$3\r\nab")
        self.assertEqual(self.factory.redisStats.protocol_errors, 1)
        lost(client, transport, ConnectionDone())
        self.assertDiscarded(0)

    def test_overMaxRequestNotCounted(self):
        """
        A request longer than max_request is refused (C{protocol_errors}),
        not counted as discarded.
        """
        factory = RedisFactory(self.service, backplanes=("NEWS",), clock=self.clock,
                               max_request=60)
        client, transport = connectedOn(factory, RedisClient)
        client.dataReceived(encodeCommand(b"PUBLISH", b"NEWS", b"m" * 90)[:80])
        self.assertEqual(factory.redisStats.protocol_errors, 1)
        lost(client, transport, ConnectionDone())
        self.assertEqual(factory.stats.discarded_bytes, 0)
        self.assertEqual(self.service.unfinished.held, 0)

    def test_cutCountedOnce(self):
        """
        A client cut for max_unfinished_total is counted when cut, and not
        again when its connection is lost.
        """
        client, transport = self.connect()
        request = encodeCommand(b"PUBLISH", b"NEWS", b"n" * 200)
        client.dataReceived(request[:150])
        self.assertEqual(self.service.unfinished.cuts, 1)
        self.assertTrue(transport.disconnecting)
        client.dataReceived(request[150:])
        lost(client, transport)
        self.assertEqual(self.published, [])
        self.assertDiscarded(150)
