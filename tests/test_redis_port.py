"""
The Redis-protocol port (backplane.redis.server) with fakes: every command,
RESP2 and RESP3, input in chunks of every size, errors, limits, on-demand
backplanes and pattern subscriptions; its config keys and wiring.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from backplane.auth.authority import Authority
from backplane.auth.glob import Glob
from backplane.auth.identity import Permissions
from backplane.auth.users import User, Users
from backplane.build import buildService
from backplane.config import Config, parseConfig
from backplane.errors import ConfigError, TooManyBackplanes
from backplane.protocols import Limits
from backplane.redis import resp
from backplane.redis.server import RedisClient, RedisFactory
from backplane.service import BackplaneService
from tests.helpers import connectedOn
from tests.redis_helpers import encodeCommand

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def command(*args: str | bytes) -> bytes:
    return encodeCommand(*(a.encode() if isinstance(a, str) else a for a in args))


class Harness:
    """
    A service, a Redis port on it, and clients on StringTransports.
    """

    def __init__(self, backplanes: tuple[str, ...] = ("chat.*", "NEWS"), *,
                 limits: Limits = Limits(), authority: Authority | None = None,
                 max_backplanes: int = 1000, max_request: int = 1 << 20,
                 clock: Clock | None = None) -> None:
        self.service = BackplaneService()
        self.service.create("NEWS", retain=1)
        self.factory = RedisFactory(self.service, backplanes=backplanes, limits=limits,
                                    authority=authority, max_backplanes=max_backplanes,
                                    max_request=max_request, clock=clock)

    def connect(self) -> tuple[RedisClient, StringTransport]:
        return connectedOn(self.factory, RedisClient)


def take(transport: StringTransport) -> bytes:
    value: bytes = transport.value()
    transport.clear()
    return value


def subscribed(kind: bytes, name: bytes, count: int, protocol: int = 2) -> bytes:
    return resp.push([resp.bulk(kind), resp.bulk(name), resp.integer(count)], protocol)


def message(channel: bytes, payload: bytes, protocol: int = 2) -> bytes:
    return resp.push([resp.bulk(b"message"), resp.bulk(channel), resp.bulk(payload)], protocol)


def pmessage(pattern: bytes, channel: bytes, payload: bytes, protocol: int = 2) -> bytes:
    return resp.push([resp.bulk(b"pmessage"), resp.bulk(pattern), resp.bulk(channel),
                      resp.bulk(payload)], protocol)


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness()
        self.client, self.transport = self.harness.connect()

    def send(self, *args: str | bytes) -> bytes:
        self.client.dataReceived(command(*args))
        return take(self.transport)

    def test_ping(self) -> None:
        self.assertEqual(self.send("PING"), b"+PONG\r\n")
        self.assertEqual(self.send("ping", "x"), b"$1\r\nx\r\n")
        self.send("SUBSCRIBE", "chat.a")
        self.assertEqual(self.send("PING"), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        self.assertEqual(self.send("PING", "x"), b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n")

    def test_pingResp3(self) -> None:
        self.send("HELLO", "3")
        self.send("SUBSCRIBE", "chat.a")
        self.assertEqual(self.send("PING"), b"+PONG\r\n")

    def test_echoQuit(self) -> None:
        self.assertEqual(self.send("ECHO", "a b"), b"$3\r\na b\r\n")
        self.assertEqual(self.send("QUIT"), b"+OK\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.send("PING"), b"")

    def test_unknown(self) -> None:
        self.assertEqual(self.send("FLUSHALL", "x"),
                         b"-ERR unknown command 'FLUSHALL', with args beginning with: 'x' \r\n")
        self.assertEqual(self.send("PING"), b"+PONG\r\n")
        self.assertEqual(self.harness.factory.redisStats.unknown_commands, 1)

    def test_subscribeContext(self) -> None:
        self.send("SUBSCRIBE", "chat.a")
        self.assertEqual(self.send("CLIENT", "ID"),
                         b"-ERR Can't execute 'client|id': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE"
                         b" / PING / QUIT / RESET are allowed in this context\r\n")

    def test_client(self) -> None:
        self.assertEqual(self.send("CLIENT", "ID"), b":%d\r\n" % self.client.clientId)
        other, _ = self.harness.connect()
        self.assertNotEqual(other.clientId, self.client.clientId)
        self.assertEqual(self.send("CLIENT", "GETNAME"), b"$-1\r\n")
        self.assertEqual(self.send("CLIENT", "SETNAME", "web-1"), b"+OK\r\n")
        self.assertEqual(self.send("CLIENT", "GETNAME"), b"$5\r\nweb-1\r\n")
        self.assertEqual(self.send("CLIENT", "SETINFO", "lib-ver", "1"), b"+OK\r\n")

    def test_select(self) -> None:
        self.assertEqual(self.send("SELECT", "0"), b"+OK\r\n")
        self.assertEqual(self.send("SELECT", "3"), b"-ERR DB index is out of range\r\n")

    def test_hello(self) -> None:
        reply = self.send("HELLO", "3")
        self.assertTrue(reply.startswith(b"%7\r\n$6\r\nserver\r\n$9\r\nbackplane\r\n"), reply)
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", reply)
        self.assertEqual(self.client.protocol, 3)
        self.assertEqual(self.send("CLIENT", "GETNAME"), b"_\r\n")
        reply = self.send("HELLO")
        self.assertTrue(reply.startswith(b"%7\r\n"))
        reply = self.send("HELLO", "2")
        self.assertTrue(reply.startswith(b"*14\r\n"))
        self.assertEqual(self.client.protocol, 2)

    def test_helloWhileSubscribed(self) -> None:
        """
        A RESP3 client that switches to RESP2 while subscribed gets its
        messages as RESP2 arrays from then on.
        """
        self.send("HELLO", "3")
        self.send("SUBSCRIBE", "chat.a")
        self.send("PSUBSCRIBE", "chat.*")
        backplane = self.harness.service.get("chat.a")
        backplane.publishLines(b"x\n", 1)
        self.assertEqual(take(self.transport), message(b"chat.a", b"x", 3)
                         + pmessage(b"chat.*", b"chat.a", b"x", 3))
        self.send("HELLO", "2")
        backplane.publishLines(b"y\n", 1)
        self.assertEqual(take(self.transport), message(b"chat.a", b"y")
                         + pmessage(b"chat.*", b"chat.a", b"y"))

    def test_reset(self) -> None:
        self.send("HELLO", "3")
        self.send("CLIENT", "SETNAME", "x")
        self.send("SUBSCRIBE", "chat.a")
        self.send("PSUBSCRIBE", "chat.*")
        self.assertEqual(self.send("RESET"), b"+RESET\r\n")
        self.assertEqual(self.client.protocol, 2)
        self.assertEqual(self.client.subscriptions, 0)
        self.assertEqual(self.send("CLIENT", "GETNAME"), b"$-1\r\n")
        self.assertNotIn("chat.a", self.harness.service)
        self.assertEqual(self.harness.service.patterns, 0)

    def test_pubsubIntrospection(self) -> None:
        other, _ = self.harness.connect()
        other.dataReceived(command("SUBSCRIBE", "chat.a", "NEWS"))
        other.dataReceived(command("PSUBSCRIBE", "chat.*", "x*"))
        self.assertEqual(self.send("PUBSUB", "NUMPAT"), b":2\r\n")
        self.assertEqual(self.send("PUBSUB", "NUMSUB", "chat.a", "nope"),
                         b"*4\r\n$6\r\nchat.a\r\n:2\r\n$4\r\nnope\r\n:0\r\n")
        self.assertEqual(self.send("PUBSUB", "CHANNELS"),
                         b"*2\r\n$4\r\nNEWS\r\n$6\r\nchat.a\r\n")
        self.assertEqual(self.send("PUBSUB", "CHANNELS", "chat.*"), b"*1\r\n$6\r\nchat.a\r\n")

    def test_inline(self) -> None:
        self.client.dataReceived(b"PING\r\nECHO \"a b\"\n")
        self.assertEqual(take(self.transport), b"+PONG\r\n$3\r\na b\r\n")
        self.client.dataReceived(b"ECHO \"unbalanced\r\n")
        self.assertEqual(take(self.transport),
                         b"-ERR Protocol error: unbalanced quotes in request\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_protocolError(self) -> None:
        self.client.dataReceived(b"*1\r\n*1\r\n$4\r\nPING\r\n")
        self.assertEqual(take(self.transport),
                         b"-ERR Protocol error: expected '$', got '*'\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.harness.factory.redisStats.protocol_errors, 1)

    def test_maxRequest(self) -> None:
        harness = Harness(max_request=1000)
        client, transport = harness.connect()
        client.dataReceived(b"*2\r\n$4\r\nECHO\r\n$5000\r\n" + b"x" * 900)
        self.assertFalse(transport.disconnecting)
        client.dataReceived(b"x" * 100)
        self.assertEqual(take(transport), b"-ERR Protocol error: request longer than "
                                          b"max_request (1000 bytes)\r\n")
        self.assertTrue(transport.disconnecting)

    def test_inlineTooLong(self) -> None:
        self.client.dataReceived(b"PING" + b" " * 70000)
        self.assertEqual(take(self.transport), b"-ERR Protocol error: too big inline request\r\n")


class ChunkTests(SynchronousTestCase):
    """
    The same requests, split into chunks of every size, get the same replies.
    """

    def test_everySize(self) -> None:
        # Inline commands (typed into nc) come first: one that follows a
        # RESP request in the same read is not told apart from it.
        stream = b"".join([
            b"PING\r\nECHO 'a b'\n",
            command("PING"), command("ECHO", "hello\r\nworld"), command("SUBSCRIBE", "chat.a"),
            command("PING", "p"), command("FOO", "bar"), command("UNSUBSCRIBE"),
            command("PUBLISH", "chat.b", "x\ny"), command("HELLO", "3"),
            command("SUBSCRIBE", "chat.q"), command("PUBLISH", "chat.q", "self"),
        ])
        expected = None
        for size in range(1, len(stream) + 1):
            harness = Harness()
            client, transport = harness.connect()
            for start in range(0, len(stream), size):
                client.dataReceived(stream[start:start + size])
            value = transport.value()
            # The client id in HELLO is the only difference between runs.
            value = value.replace(b"$2\r\nid\r\n:%d\r\n" % client.clientId, b"ID")
            if expected is None:
                expected = value
                self.assertIn(message(b"chat.q", b"self", 3) + b":1\r\n", value)
            self.assertEqual(value, expected, f"chunks of {size} bytes")


class PubSubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness()
        self.service = self.harness.service
        self.sub, self.subOut = self.harness.connect()
        self.pub, self.pubOut = self.harness.connect()

    def test_subscribePublish(self) -> None:
        self.sub.dataReceived(command("SUBSCRIBE", "chat.a", "chat.b"))
        self.assertEqual(take(self.subOut), subscribed(b"subscribe", b"chat.a", 1)
                         + subscribed(b"subscribe", b"chat.b", 2))
        self.pub.dataReceived(command("PUBLISH", "chat.a", "one\ntwo\r\n"))
        self.assertEqual(take(self.pubOut), b":1\r\n")
        self.assertEqual(self.subOut.value(),
                         message(b"chat.a", b"one") + message(b"chat.a", b"two"))
        self.assertEqual(self.harness.factory.stats.messages_in, 2)

    def test_chunkOneWrite(self) -> None:
        """
        A chunk of lines published on a backplane becomes its pushes in one
        write to each subscriber.
        """
        writes: list[bytes] = []
        self.sub.dataReceived(command("SUBSCRIBE", "NEWS"))
        self.subOut.write = writes.append  # type: ignore[method-assign]
        self.service.get("NEWS").publishLines(b"a\nbb\nccc\n", 3)
        self.assertEqual(writes, [message(b"NEWS", b"a") + message(b"NEWS", b"bb")
                                  + message(b"NEWS", b"ccc")])

    def test_pipelinedPublishesOneChunk(self) -> None:
        """
        PUBLISHes to one channel that come in one read are published as one
        chunk (one write to each subscriber), and each gets its reply, in
        order with the replies around them.
        """
        writes: list[bytes] = []
        self.sub.dataReceived(command("SUBSCRIBE", "chat.a"))
        self.subOut.write = writes.append  # type: ignore[method-assign]
        self.pub.dataReceived(command("PUBLISH", "chat.a", "1") + command("PUBLISH", "chat.a", "2")
                              + command("PING") + command("PUBLISH", "chat.a", "3\n4")
                              + command("PUBLISH", "chat.b", "5") + command("PUBLISH", "chat.a")
                              + command("PUBLISH", "chat.a", "6"))
        self.assertEqual(take(self.pubOut),
                         b":1\r\n:1\r\n+PONG\r\n:1\r\n:0\r\n"
                         b"-ERR wrong number of arguments for 'publish' command\r\n:1\r\n")
        self.assertEqual(writes, [message(b"chat.a", b"1") + message(b"chat.a", b"2"),
                                  message(b"chat.a", b"3") + message(b"chat.a", b"4"),
                                  message(b"chat.a", b"6")])

    def test_retainedAfterConfirmation(self) -> None:
        """
        A declared backplane keeps its options: its retained message comes
        after the subscription's confirmation.
        """
        self.service.get("NEWS").publishLines(b"kept\n", 1)
        self.sub.dataReceived(command("SUBSCRIBE", "NEWS"))
        self.assertEqual(take(self.subOut), subscribed(b"subscribe", b"NEWS", 1)
                         + message(b"NEWS", b"kept"))

    def test_psubscribe(self) -> None:
        self.pub.dataReceived(command("SUBSCRIBE", "chat.old"))
        self.sub.dataReceived(command("PSUBSCRIBE", "chat.*"))
        self.assertEqual(take(self.subOut), subscribed(b"psubscribe", b"chat.*", 1))
        self.assertEqual(len(self.service.get("chat.old")), 2)
        publisher, out = self.harness.connect()
        publisher.dataReceived(command("PUBLISH", "chat.new", "hi"))
        self.assertEqual(take(out), b":1\r\n")
        self.assertEqual(take(self.subOut), pmessage(b"chat.*", b"chat.new", b"hi"))
        publisher.dataReceived(command("PUBLISH", "chat.old", "hey"))
        self.assertEqual(take(out), b":2\r\n")
        self.assertEqual(take(self.subOut), pmessage(b"chat.*", b"chat.old", b"hey"))
        # A backplane outside the port's is never matched.
        self.service.create("chatter")
        self.sub.dataReceived(command("PSUBSCRIBE", "chat*"))
        self.assertEqual(len(self.service.get("chatter")), 0)

    def test_psubscribeResp3(self) -> None:
        self.sub.dataReceived(command("HELLO", "3"))
        self.sub.dataReceived(command("PSUBSCRIBE", "chat.?"))
        take(self.subOut)
        self.pub.dataReceived(command("PUBLISH", "chat.x", "a\nb"))
        self.assertEqual(take(self.subOut), pmessage(b"chat.?", b"chat.x", b"a", 3)
                         + pmessage(b"chat.?", b"chat.x", b"b", 3))

    def test_publishToNobody(self) -> None:
        """
        Publishing to a name that nobody subscribes to creates nothing.
        """
        self.pub.dataReceived(command("PUBLISH", "chat.void", "x"))
        self.assertEqual(take(self.pubOut), b":0\r\n")
        self.assertNotIn("chat.void", self.service)
        self.assertEqual(self.service.onDemand, 0)

    def test_forgotten(self) -> None:
        """
        A backplane created on demand is forgotten once its last subscriber
        (by name or by pattern) leaves; a declared one is kept.
        """
        self.sub.dataReceived(command("SUBSCRIBE", "chat.a", "NEWS"))
        self.pub.dataReceived(command("PSUBSCRIBE", "chat.*"))
        self.assertIn("chat.a", self.service)
        self.sub.dataReceived(command("UNSUBSCRIBE"))
        self.assertIn("chat.a", self.service)
        self.pub.connectionLost()
        self.assertNotIn("chat.a", self.service)
        self.assertIn("NEWS", self.service)
        self.assertEqual(self.service.patterns, 0)
        self.assertEqual(self.service.onDemand, 0)

    def test_outside(self) -> None:
        self.sub.dataReceived(command("SUBSCRIBE", "chat.a", "other"))
        self.assertEqual(take(self.subOut),
                         b"-ERR backplane 'other' is not served by this port\r\n")
        self.assertEqual(self.sub.subscriptions, 0)
        self.sub.dataReceived(command("SUBSCRIBE", b"chat.\xff"))
        self.assertEqual(take(self.subOut),
                         b"-ERR backplane 'chat.\xff' is not served by this port\r\n")
        self.pub.dataReceived(command("PUBLISH", "other", "x"))
        self.assertEqual(take(self.pubOut),
                         b"-ERR backplane 'other' is not served by this port\r\n")
        self.assertEqual(self.harness.factory.redisStats.outside, 3)

    def test_maxBackplanes(self) -> None:
        harness = Harness(max_backplanes=1)
        client, out = harness.connect()
        client.dataReceived(command("SUBSCRIBE", "chat.a", "NEWS", "chat.b"))
        self.assertEqual(take(out), subscribed(b"subscribe", b"chat.a", 1)
                         + subscribed(b"subscribe", b"NEWS", 2)
                         + b"-ERR cannot create backplane 'chat.b': max_backplanes (1) "
                           b"reached\r\n")
        other, _ = harness.connect()
        other.dataReceived(command("PSUBSCRIBE", "chat.*"))
        publisher, out = harness.connect()
        publisher.dataReceived(command("PUBLISH", "chat.c", "x"))
        self.assertEqual(take(out), b"-ERR cannot create backplane 'chat.c': max_backplanes (1) "
                                    b"reached\r\n")
        self.assertEqual(harness.factory.redisStats.over_max_backplanes, 2)
        with self.assertRaises(TooManyBackplanes):
            harness.factory.choice.ensure("chat.z")

    def test_overlong(self) -> None:
        harness = Harness(limits=Limits(max_line_length=5))
        sub, subOut = harness.connect()
        sub.dataReceived(command("SUBSCRIBE", "chat.a"))
        take(subOut)
        pub, out = harness.connect()
        pub.dataReceived(command("PUBLISH", "chat.a", "12345\n123456"))
        self.assertEqual(take(out), b"-ERR a line of the message is longer than max_line_length "
                                    b"(5 bytes): nothing of it was published\r\n")
        self.assertEqual(subOut.value(), b"")
        self.assertEqual(harness.factory.stats.overlong, 1)
        pub.dataReceived(command("PUBLISH", "chat.a", "12345"))
        self.assertEqual(take(out), b":1\r\n")

    def test_patternsCostPublishersNothing(self) -> None:
        """
        Publishing to a backplane matches no pattern, however many are
        subscribed: names are matched when a backplane or a pattern is new.
        """
        for i in range(200):
            client, _ = self.harness.connect()
            client.dataReceived(command("PSUBSCRIBE", f"chat.idle{i}.*"))
        self.sub.dataReceived(command("SUBSCRIBE", "chat.busy"))
        matched: list[object] = []
        original = Glob.match

        def counting(glob: Glob, name: str | bytes) -> bool:
            matched.append(name)
            return original(glob, name)

        self.patch(Glob, "match", counting)
        for _ in range(10):
            self.pub.dataReceived(command("PUBLISH", "chat.busy", "x"))
        self.assertEqual(matched.count("chat.busy"), 10)  # the port's own backplanes check
        self.assertEqual(len(matched), 10)


class SlowTests(SynchronousTestCase):
    def test_slowSubscriber(self) -> None:
        harness = Harness(limits=Limits(max_pending=100))
        client, transport = harness.connect()
        client.dataReceived(command("SUBSCRIBE", "chat.a"))
        client.pauseProducing()
        backplane = harness.service.get("chat.a")
        backplane.publishLines(b"x" * 60 + b"\n", 1)
        self.assertFalse(transport.disconnecting)
        backplane.publishLines(b"x" * 60 + b"\n", 1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(harness.factory.stats.slow_disconnects, 1)
        self.assertNotIn("chat.a", harness.service)

    def test_slowDrop(self) -> None:
        harness = Harness(limits=Limits(max_pending=100, slow="drop"))
        client, transport = harness.connect()
        client.dataReceived(command("SUBSCRIBE", "chat.a"))
        take(transport)
        client.pauseProducing()
        backplane = harness.service.get("chat.a")
        for _ in range(3):
            backplane.publishLines(b"x" * 60 + b"\n", 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(harness.factory.stats.dropped, 2)
        client.resumeProducing()
        self.assertEqual(take(transport), message(b"chat.a", b"x" * 60))

    def test_floodWithoutReading(self) -> None:
        """
        A client that sends requests and reads no reply is disconnected
        past max_pending, whatever slow says.
        """
        harness = Harness(limits=Limits(max_pending=100, slow="drop"))
        client, transport = harness.connect()
        client.pauseProducing()
        for _ in range(14):
            client.dataReceived(command("PING"))
        self.assertFalse(transport.disconnected)
        client.dataReceived(command("PING"))
        self.assertTrue(transport.disconnected)
        self.assertEqual(harness.factory.stats.slow_disconnects, 1)


WRITER = "writer-token-0123456789abcdef"


class AuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        users = Users([User("writer", Permissions(publish=("chat.w*",), subscribe=("chat.*",)),
                            tokenSha256=hashlib.sha256(WRITER.encode()).digest())])
        self.clock = Clock()
        self.harness = Harness(authority=Authority(users), clock=self.clock)
        self.client, self.transport = self.harness.connect()

    def test_authTimeout(self) -> None:
        """
        A client that does not authenticate within the gate's timeout (10
        seconds) is refused and disconnected; one that does stays.
        """
        other, otherOut = self.harness.connect()
        other.dataReceived(command("AUTH", WRITER))
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(take(self.transport), b"-ERR no AUTH within 10 seconds\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(otherOut.disconnecting)
        self.assertEqual(self.harness.factory.gate.counters.snapshot()["refused"],
                         {"timeout": 1})

    def send(self, *args: str | bytes) -> bytes:
        self.client.dataReceived(command(*args))
        return take(self.transport)

    def test_noAuth(self) -> None:
        self.assertEqual(self.send("PING"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(self.send("SUBSCRIBE", "chat.a"), b"-NOAUTH Authentication required.\r\n")
        self.assertTrue(self.send("HELLO", "3").startswith(b"-NOAUTH HELLO must be called"))

    def test_wrongPass(self) -> None:
        wrong = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        self.assertEqual(self.send("AUTH", "nope"), wrong)
        self.assertEqual(self.send("AUTH", "other", WRITER), wrong)
        self.assertEqual(self.harness.factory.gate.counters.snapshot()["refused"], {"unknown": 1})

    def test_auth(self) -> None:
        self.assertEqual(self.send("AUTH", WRITER), b"+OK\r\n")
        self.assertEqual(self.send("PUBLISH", "chat.w1", "x"), b":0\r\n")
        self.assertEqual(self.send("PUBLISH", "chat.other", "x"),
                         b"-NOPERM may not publish to 'chat.other'\r\n")
        self.assertEqual(self.send("SUBSCRIBE", "NEWS"), b"-NOPERM may not subscribe to 'NEWS'\r\n")
        self.assertEqual(self.send("SUBSCRIBE", "chat.x"), subscribed(b"subscribe", b"chat.x", 1))
        # A pattern reaches only what the user may subscribe to.
        self.send("PSUBSCRIBE", "*")
        self.assertEqual(len(self.harness.service.get("NEWS")), 0)
        self.assertEqual(len(self.harness.service.get("chat.x")), 2)

    def test_helloAuth(self) -> None:
        reply = self.send("HELLO", "3", "AUTH", "writer", WRITER, "SETNAME", "w")
        self.assertTrue(reply.startswith(b"%7\r\n"), reply)
        self.assertEqual(self.send("CLIENT", "GETNAME"), b"$1\r\nw\r\n")
        self.assertEqual(self.send("RESET"), b"+RESET\r\n")
        self.assertEqual(self.send("PING"), b"-NOAUTH Authentication required.\r\n")
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)

    def test_noAuthPort(self) -> None:
        client, transport = Harness().connect()
        client.dataReceived(command("AUTH", "x"))
        self.assertTrue(take(transport).startswith(b"-ERR AUTH <password> called without"))


class ConfigTests(SynchronousTestCase):
    def parse(self, text: str) -> Config:
        return parseConfig(tomllib.loads(text), folder=Path.cwd())

    def assertConfigError(self, text: str, fragment: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.parse(text)
        self.assertIn(fragment, str(caught.exception))

    def test_redisPort(self) -> None:
        config = self.parse('[[listen]]\nendpoint = "tcp:6379"\nprotocol = "redis"\n'
                            'backplanes = ["TIME", "chat.*"]\n')
        (listen,) = config.listen
        self.assertEqual(listen.backplanes, ("TIME", "chat.*"))
        self.assertEqual(listen.max_backplanes, 1000)
        self.assertEqual(listen.max_request, 8 * 1024 * 1024)
        service = buildService(config)
        factory = next(iter(service)).factory
        self.assertIsInstance(factory, RedisFactory)
        self.assertEqual(factory.backplanes, ("TIME", "chat.*"))

    def test_needsBackplanes(self) -> None:
        self.assertConfigError('[[listen]]\nendpoint = "tcp:6379"\nprotocol = "redis"\n',
                               "listen[1]: a redis port needs backplanes = [...]")

    def test_notWithPublishTo(self) -> None:
        for protocol in ("redis", "websocket", "sse"):
            self.assertConfigError(
                f'[backplane.A]\n[[listen]]\nendpoint = "tcp:6379"\nprotocol = "{protocol}"\n'
                'backplanes = ["A"]\nsubscribe_to = "A"\n',
                "listen[1].subscribe_to: the clients of a port that lists backplanes choose "
                "theirs")

    def test_onlyWhereChosen(self) -> None:
        head = '[backplane.A]\n[[listen]]\nendpoint = "tcp:1"\nsubscribe_to = "A"\n'
        self.assertConfigError(head + 'backplanes = ["A"]\n',
                               'listen[1].backplanes: is for a port with protocol = "redis", '
                               '"websocket" or "sse"')
        self.assertConfigError(head + "max_backplanes = 3\n",
                               "listen[1].max_backplanes: is for a port that lists backplanes")
        self.assertConfigError(head + 'protocol = "websocket"\nmax_request = 10\n',
                               'listen[1].max_request: is for a port with protocol = "redis"')

    def test_webPorts(self) -> None:
        config = self.parse(
            '[[listen]]\nendpoint = "tcp:1"\nprotocol = "websocket"\nbackplanes = ["chat.*"]\n'
            'max_backplanes = 5\n'
            '[[listen]]\nendpoint = "tcp:2"\nprotocol = "sse"\nbackplanes = ["chat.*"]\n')
        service = buildService(config)
        factories = [child.factory for child in service]
        self.assertEqual([f.choice.maxBackplanes for f in factories], [5, 1000])
        self.assertEqual([f.choice.patterns for f in factories], [("chat.*",)] * 2)
        self.assertConfigError(
            '[[listen]]\nendpoint = "tcp:1"\nprotocol = "sse"\nbackplanes = ["x"]\nids = true\n',
            "listen[1].ids: is not for a port that lists backplanes")

    def test_bounds(self) -> None:
        self.assertConfigError('[[listen]]\nendpoint = "tcp:6379"\nprotocol = "redis"\n'
                               'backplanes = ["x"]\nmax_backplanes = -1\n',
                               "listen[1].max_backplanes: must be 0 or more")
        self.assertConfigError('[[listen]]\nendpoint = "tcp:6379"\nprotocol = "redis"\n'
                               'backplanes = [""]\n', "must not hold an empty name")


class OnDemandServiceTests(SynchronousTestCase):
    """
    BackplaneService.ensure, watch and release: what a port whose clients
    choose their backplanes stands on.
    """

    def test_ensure(self) -> None:
        service = BackplaneService()
        declared = service.create("A", retain=2)
        self.assertIs(service.ensure("A", limit=0), declared)
        created = service.ensure("b", limit=1, owner="port1")
        self.assertIn("b", service)
        self.assertEqual((service.onDemand, service.onDemandFor("port1")), (1, 1))
        with self.assertRaises(TooManyBackplanes):
            service.ensure("c", limit=1, owner="port1")
        service.ensure("c", limit=1, owner="port2")  # each owner has its own count
        service.release(created)
        self.assertNotIn("b", service)
        service.release(declared)
        self.assertIn("A", service)
        self.assertEqual(service.onDemandFor("port1"), 0)

    def test_forgottenWithLastSubscriber(self) -> None:
        service = BackplaneService()
        backplane = service.ensure("b", limit=5)
        first = backplane.subscribe(lambda message: None)
        second = backplane.subscribe(lambda message: None)
        first.cancel()
        self.assertIn("b", service)
        second.cancel()
        self.assertNotIn("b", service)
        self.assertEqual(service.onDemand, 0)
        # The name is free for a new one.
        self.assertIsNot(service.ensure("b", limit=5), backplane)

    def test_watch(self) -> None:
        service = BackplaneService()
        heard: list[str] = []
        watch = service.watch("chat.*", lambda backplane: heard.append(backplane.name))
        other = service.watch("chat.*", lambda backplane: heard.append("again"))
        service.ensure("chat.a", limit=5)
        service.ensure("news", limit=5)
        service.create("chat.declared")  # declared backplanes exist before any client
        self.assertEqual(heard, ["chat.a", "again"])
        self.assertEqual(service.patterns, 1)
        self.assertTrue(service.watched("chat.b"))
        self.assertFalse(service.watched("news2"))
        watch.cancel()
        watch.cancel()
        other.cancel()
        self.assertEqual(service.patterns, 0)
        self.assertFalse(service.watched("chat.b"))


class PortLimitTests(SynchronousTestCase):
    def test_maxClients(self) -> None:
        harness = Harness(limits=Limits(max_clients=1))
        harness.connect()
        self.assertIsNone(harness.factory.buildProtocol(None))
        self.assertEqual(harness.factory.stats.refused, 1)

    def test_allow(self) -> None:
        from ipaddress import ip_network

        from twisted.internet.address import IPv4Address

        harness = Harness(limits=Limits(allow=(ip_network("10.0.0.0/8"),)))
        self.assertIsNone(harness.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertIsNotNone(harness.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertEqual(harness.factory.stats.disallowed, 1)

    def test_report(self) -> None:
        harness = Harness()
        client, _ = harness.connect()
        client.dataReceived(command("SUBSCRIBE", "chat.a", "chat.b"))
        client.dataReceived(command("PSUBSCRIBE", "x*"))
        report = harness.factory.portReport()
        self.assertEqual(report["gauges"], {"subscriptions": 2, "pattern_subscriptions": 1,
                                            "backplanes_on_demand": 2})
        self.assertEqual(report["counters"]["commands"], 2)
        self.assertEqual(report["counters"]["created"], 2)
        self.assertEqual(report["info"]["backplanes"], "chat.*, NEWS")

    def test_closeOnStop(self) -> None:
        harness = Harness()
        client, transport = harness.connect()
        client.dataReceived(command("SUBSCRIBE", "chat.a"))
        done = harness.factory.disconnectAll()
        self.assertTrue(transport.disconnecting)
        client.connectionLost()
        self.assertIsNone(self.successResultOf(done))
        self.assertNotIn("chat.a", harness.service)
