"""
WebSocket ports that list backplanes (SPEC section 12): the request's path
chooses the backplane, created on demand up to max_backplanes, in the
directions a token allows; and backplane.choice on its own.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from backplane.auth.authority import Authority
from backplane.auth.identity import Permissions
from backplane.auth.users import User, Users
from backplane.choice import ChosenBackplanes, choiceReport, pathName
from backplane.websocket import WebSocketClient, WebSocketFactory
from tests.test_websocket import Ports, clientFrame, gone, opened, refused, request

WRITER = "token-of-a-writer"
READER = "token-of-a-reader"


def authority() -> Authority:
    return Authority(Users([
        User("writer", Permissions(("chat.*",), ()),
             tokenSha256=hashlib.sha256(WRITER.encode()).digest()),
        User("reader", Permissions((), ("NEWS", "chat.*")),
             tokenSha256=hashlib.sha256(READER.encode()).digest()),
    ]))


class PathNameTests(SynchronousTestCase):
    def test_pathName(self) -> None:
        self.assertEqual(pathName("/chat.room1"), "chat.room1")
        self.assertEqual(pathName(b"/chat%20room?token=x"), "chat room")
        self.assertEqual(pathName("/caf%C3%A9"), "café")
        self.assertIsNone(pathName("/"))
        self.assertIsNone(pathName(b"/%ff"))


class ChosenTests(Ports, SynchronousTestCase):
    def factory(self, **options: object) -> WebSocketFactory:
        return WebSocketFactory(self.service, backplanes=("chat.*", "NEWS"),
                                **options)  # type: ignore[arg-type]

    def test_bothWays(self) -> None:
        """
        Two clients on one path share its backplane, created on demand and
        forgotten when they have gone; neither hears itself.
        """
        factory = self.factory()
        alice, aliceOut = opened(factory, handshake=request("/chat.a"))
        bob, bobOut = opened(factory, handshake=request("/chat.a"))
        backplane = self.service.get("chat.a")
        assert isinstance(alice, WebSocketClient)
        self.assertIs(alice.publishTo, backplane)
        self.assertIs(alice.subscribeTo, backplane)
        alice.dataReceived(clientFrame(b"hi"))
        self.assertIn(b"hi", bobOut.value())
        self.assertNotIn(b"hi", aliceOut.value())
        gone(alice, aliceOut)
        self.assertIn("chat.a", self.service)
        gone(bob, bobOut)
        self.assertNotIn("chat.a", self.service)
        self.assertEqual(factory.portReport()["counters"], {"created": 1})

    def test_declaredKept(self) -> None:
        protocol, transport = opened(self.factory(), handshake=request("/NEWS"))
        gone(protocol, transport)
        self.assertIs(self.service.get("NEWS"), self.news)

    def test_notServed(self) -> None:
        factory = self.factory()
        for path in ("/CHAT", "/", "/other"):
            status, _ = refused(factory, request(path))
            self.assertTrue(status.startswith(b"HTTP/1.1 404 no backplane "), status)
        self.assertEqual(factory.stats.bad_requests, 3)

    def test_maxBackplanes(self) -> None:
        factory = self.factory(max_backplanes=1)
        opened(factory, handshake=request("/chat.a"))
        opened(factory, handshake=request("/NEWS"))
        status, _ = refused(factory, request("/chat.b"))
        self.assertEqual(status, b"HTTP/1.1 503 cannot create backplane 'chat.b': "
                                 b"max_backplanes (1) reached")
        self.assertNotIn("chat.b", self.service)

    def test_tokenDirections(self) -> None:
        """
        With auth, a client publishes and subscribes as its token allows; a
        backplane created for a publisher alone is kept while it is connected.
        """
        factory = self.factory(authority=authority())
        writer, writerOut = opened(factory, handshake=request(f"/chat.w?token={WRITER}"))
        assert isinstance(writer, WebSocketClient)
        self.assertIsNone(writer.subscribeTo)
        backplane = self.service.get("chat.w")
        self.assertIs(writer.publishTo, backplane)
        self.assertEqual(len(backplane), 0)
        reader, readerOut = opened(factory, handshake=request(f"/chat.w?token={READER}"))
        assert isinstance(reader, WebSocketClient)
        self.assertIsNone(reader.publishTo)
        gone(reader, readerOut)
        self.assertIs(self.service.get("chat.w"), backplane)  # its publisher holds it
        gone(writer, writerOut)
        self.assertNotIn("chat.w", self.service)
        status, _ = refused(factory, request(f"/NEWS?token={WRITER}"))
        self.assertEqual(status, b"HTTP/1.1 403 may not use 'NEWS'")
        self.assertEqual(factory.gate.counters.snapshot()["refused"], {"forbidden": 1})


class ChoiceTests(Ports, SynchronousTestCase):
    def test_choice(self) -> None:
        choice = ChosenBackplanes(self.service, ["chat.*"], max_backplanes=2)
        self.assertTrue(choice.serves("chat.x"))
        self.assertFalse(choice.serves("NEWS"))
        choice.ensure("chat.x")
        self.assertEqual((choice.created, choice.onDemand), (1, 1))
        self.assertEqual(choiceReport(choice)["info"],
                         {"backplanes": "chat.*", "max_backplanes": 2})
        self.assertEqual(choiceReport(None), {})


class ChosenSSETests(SynchronousTestCase):
    """
    An SSE port that lists backplanes: the path chooses the stream.
    """

    def setUp(self) -> None:
        from backplane.service import BackplaneService

        self.service = BackplaneService()
        self.news = self.service.create("NEWS")

    def factory(self, **options: object) -> Any:
        from twisted.internet.task import Clock

        from backplane.sse import SSEFactory

        return SSEFactory(self.service, backplanes=("chat.*", "NEWS"), clock=Clock(),
                          **options)  # type: ignore[arg-type]

    def get(self, factory: Any, path: str) -> tuple[bytes, Any, StringTransport]:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: localhost:1503\r\n\r\n".encode())
        return transport.value().split(b"\r\n", 1)[0], channel, transport

    def test_stream(self) -> None:
        status, channel, transport = self.get(self.factory(), "/chat.a")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.service.get("chat.a").publishLines(b"hello\n", 1)
        self.assertIn(b"data: hello\n\n", transport.value())
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn("chat.a", self.service)

    def test_refusals(self) -> None:
        factory = self.factory(max_backplanes=1)
        self.assertEqual(self.get(factory, "/other")[0], b"HTTP/1.1 404 Not Found")
        self.get(factory, "/chat.a")
        self.assertEqual(self.get(factory, "/NEWS")[0], b"HTTP/1.1 200 OK")
        self.assertEqual(self.get(factory, "/chat.b")[0], b"HTTP/1.1 503 Service Unavailable")
        self.assertNotIn("chat.b", self.service)

    def test_tokens(self) -> None:
        factory = self.factory(authority=authority())
        self.assertEqual(self.get(factory, f"/chat.a?token={READER}")[0], b"HTTP/1.1 200 OK")
        self.assertEqual(self.get(factory, f"/chat.a?token={WRITER}")[0],
                         b"HTTP/1.1 403 Forbidden")
        self.assertEqual(self.get(factory, "/chat.a")[0], b"HTTP/1.1 401 Unauthorized")
