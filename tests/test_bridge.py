"""
Unit tests of the Redis bridge: its wire format, its URL, and the bridge
itself on fake connections and a fake clock (its retries and health checks
included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import assume, example, given
from hypothesis import strategies as st
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from backplane import BackplaneService, PublishToFactory
from backplane.redis.address import RedisAddress, parseURL
from backplane.redis.bridge import RedisBridge
from backplane.redis.link import Publisher, Subscriber
from backplane.redis.wire import MARK, decode, defaultNodeId, encode, encodeTag
from backplane.testing import Recorder, connect
from tests.redis_helpers import encodeCommand
from tests.test_relay import LogCapture

lines = st.lists(st.binary().map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=20)
nodeIds = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                  max_size=100)


def chunk(messages: list[bytes]) -> bytes:
    return b"".join(m + b"\n" for m in messages)


def documentedReader(payload: bytes) -> list[bytes]:
    """
    The reader given in docs/scaling.md, "Reading with a plain client".
    """
    if payload.startswith(b"\x1ebackplane/"):
        payload = payload.partition(b"\n")[2]  # drop the tag line
        return payload.removesuffix(b"\n").split(b"\n") if payload else []
    return [line.removesuffix(b"\r") for line in payload.removesuffix(b"\n").split(b"\n")]


class WireFormatTests(SynchronousTestCase):
    """
    L{encode} and L{decode}.
    """

    @given(nodeIds, lines)
    @example("A", [b""])
    @example("A", [b"\x1ebackplane/1 B", b"x\r"])
    def test_roundTrip(self, node: str, messages: list[bytes]) -> None:
        """
        What a node encodes decodes to the same node and the same lines,
        byte for byte.
        """
        decoded = decode(encode(node, chunk(messages)))
        assert decoded is not None
        self.assertEqual(
            (decoded.node, decoded.data, decoded.count),
            (node.encode(), chunk(messages), len(messages)),
        )

    def test_tagLine(self) -> None:
        """
        The tag line is RS, C{backplane/1}, a space, the node id, a newline.
        """
        self.assertEqual(encode("n1", b"x\n"), b"\x1ebackplane/1 n1\nx\n")
        self.assertTrue(encode("n1", b"x\n").startswith(MARK))

    def test_badNodeIds(self) -> None:
        """
        A node id is 1 to 100 printable ASCII characters without spaces.
        """
        for bad in ["", "a b", "a\nb", "é", "x" * 101, "tab\t"]:
            self.assertRaises(ValueError, encodeTag, bad)

    def test_untagged(self) -> None:
        """
        An untagged payload is lines: a missing final newline is added, one
        carriage return before each newline removed; empty is one empty
        message.
        """
        for payload, data in [
            (b"hello", b"hello\n"),
            (b"hello\n", b"hello\n"),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\r\r\nb\r", b"a\r\nb\n"),
            (b"a\n\nb", b"a\n\nb\n"),
            (b"", b"\n"),
            (b"\n", b"\n"),
            (b"12", b"12\n"),
            (b"\x1enot a tag", b"\x1enot a tag\n"),
            (b"\x1ebackplan", b"\x1ebackplan\n"),
        ]:
            decoded = decode(payload)
            assert decoded is not None
            self.assertEqual((decoded.node, decoded.data, decoded.count),
                             (None, data, data.count(b"\n")), payload)

    @given(st.binary(max_size=200))
    def test_untaggedAsOnTheNetwork(self, payload: bytes) -> None:
        """
        An untagged payload gives the messages that the same bytes, sent by
        a network publisher and ended by a newline, would give.
        """
        if payload.startswith(MARK):
            return
        decoded = decode(payload)
        assert decoded is not None
        service = BackplaneService()
        recorder = Recorder.on(service.create("X"))
        protocol, _ = connect(PublishToFactory(service, "X"))
        protocol.dataReceived(payload if payload.endswith(b"\n") else payload + b"\n")
        self.assertEqual(decoded.data.split(b"\n")[:-1], recorder.messages)
        self.assertEqual(decoded.count, len(recorder.messages))

    @given(st.one_of(st.binary(max_size=100),
                     lines.map(lambda m: encode("other", chunk(m)))))
    @example(b"")
    @example(b"\x1ebackplane/1 A")
    def test_documentedReader(self, payload: bytes) -> None:
        """
        The reader that docs/scaling.md gives plain clients reads payloads
        as a node does (tag versions aside, as the docs say: a node ignores
        a payload tagged with a version it does not know).
        """
        decoded = decode(payload)
        assume(decoded is not None)
        assert decoded is not None
        self.assertEqual(documentedReader(payload), decoded.data.split(b"\n")[:-1])

    def test_taggedEdges(self) -> None:
        """
        A tag line alone carries no message; lines after it pass unchanged,
        a missing final newline added; an unknown version, or no node id,
        makes the payload unreadable (L{None}).
        """
        for tagOnly in (b"\x1ebackplane/1 A", b"\x1ebackplane/1 A\n"):
            decoded = decode(tagOnly)
            assert decoded is not None
            self.assertEqual(decoded.count, 0)
        decoded = decode(b"\x1ebackplane/1 A\nx\r\ny")
        assert decoded is not None
        self.assertEqual((decoded.node, decoded.data), (b"A", b"x\r\ny\n"))
        self.assertIsNone(decode(b"\x1ebackplane/2 A\nx\n"))
        self.assertIsNone(decode(b"\x1ebackplane/1 \nx\n"))
        self.assertIsNone(decode(b"\x1ebackplane/1\nx\n"))


class URLTests(SynchronousTestCase):
    """
    L{parseURL}.
    """

    def test_forms(self) -> None:
        for url, address in [
            ("redis://", RedisAddress("127.0.0.1", 6379, 0)),
            ("redis://example.org", RedisAddress("example.org", 6379, 0)),
            ("redis://10.0.0.5:6380/3", RedisAddress("10.0.0.5", 6380, 3)),
            ("redis://:s%40cret@h/1", RedisAddress("h", 6379, 1, None, "s@cret")),
            ("redis://me:pw@h:1/", RedisAddress("h", 1, 0, "me", "pw")),
            ("redis://[::1]:7000", RedisAddress("::1", 7000, 0)),
        ]:
            self.assertEqual(parseURL(url), address, url)

    def test_bad(self) -> None:
        for url in ["http://h", "rediss://h", "h:6379", "redis://h:99999", "redis://h/x",
                    "redis://h/0?timeout=1", "redis://h:port"]:
            with self.assertRaises(ValueError) as caught:
                parseURL(url)
            self.assertIn(repr(url), str(caught.exception))

    def test_str(self) -> None:
        """
        The address shows without its password, for logs.
        """
        self.assertEqual(str(parseURL("redis://u:secret@h:1/2")), "redis://h:1/2")
        self.assertEqual(str(parseURL("redis://[::1]")), "redis://[::1]:6379/0")


class NodeIdTests(SynchronousTestCase):
    """
    L{defaultNodeId}.
    """

    def test_defaultNodeId(self) -> None:
        """
        Each default node id differs, and is one a tag can carry.
        """
        ids = {defaultNodeId() for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for node in ids:
            encodeTag(node)


# The bridge on fake connections.


class StubbornTransport(StringTransportWithDisconnection):
    """
    A connection to a server that never lets it close politely: only
    C{abortConnection} closes it.
    """

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnected = True
        super().loseConnection()


class LaterTransport(StringTransportWithDisconnection):
    """
    A connection whose closing, as a reactor's, reaches its protocol on a
    later turn of C{clock}.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def loseConnection(self) -> None:
        if self.connected:
            self.connected = False
            self.clock.callLater(0, self.protocol.connectionLost,
                                 Failure(ConnectionDone("Bye.")))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects each protocol to a new C{transport()} (a
    L{StringTransportWithDisconnection} unless told), or refuses while
    C{refusing}.

    @ivar attempts: how many times C{connect} was called.
    @ivar protocols: the Redis protocol of each connection made.  (The
        bridge's endpoint puts a gate before it: the transport's protocol.)
    """

    def __init__(self) -> None:
        self.refusing = False
        self.transport: Callable[[], StringTransportWithDisconnection] = (
            StringTransportWithDisconnection)
        self.attempts = 0
        self.protocols: list[Publisher | Subscriber] = []

    def connect(self, factory):
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError())
        gate = factory.buildProtocol(None)
        transport = self.transport()
        transport.protocol = gate
        gate.makeConnection(transport)
        self.protocols.append(gate.protocol)
        return succeed(gate)

    def latest(self, name: str) -> Publisher | Subscriber:
        return [p for p in self.protocols if p.link.name == name][-1]


def sent(protocol) -> list[list[bytes]]:
    """
    The commands written to a fake connection since last asked.
    """
    data = protocol.transport.value()
    protocol.transport.clear()
    commands = []
    while data:
        count, data = data[1:].split(b"\r\n", 1)
        command = []
        for _ in range(int(count)):
            length, data = data[1:].split(b"\r\n", 1)
            command.append(data[: int(length)])
            data = data[int(length) + 2 :]
        commands.append(command)
    return commands


def bulk(*items: bytes) -> bytes:
    """
    A RESP array of bulk strings: how Redis sends a pub/sub message or ack.
    """
    return encodeCommand(*items)


class BridgeTests(SynchronousTestCase):
    """
    L{RedisBridge} with a L{FakeEndpoint} and a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.sport = self.service.create("SPORT")
        self.recorder = Recorder.on(self.news)
        self.events = LogCapture(self).events

    def bridge(self, **options) -> RedisBridge:
        options = {"names": ["NEWS", "SPORT"], "node_id": "me", "initial_delay": 1.0,
                   "max_delay": 8.0, "timeout": 5.0, **options}
        bridge = RedisBridge(self.service, "redis://:pw@h:1/0", endpoint=self.endpoint,
                             reactor=self.clock, **options)
        bridge.setServiceParent(self.service)
        return bridge

    def feed(self, protocol, data: bytes) -> None:
        """
        Data from Redis.  txredisapi parses what follows a bulk string on the
        next turn of the reactor, hence the turn.
        """
        protocol.dataReceived(data)
        self.clock.advance(0)

    def logged(self, level: str) -> list[LogEvent]:
        return [e for e in self.events
                if isinstance(e.get("log_source"), RedisBridge) and e["log_level"].name == level]

    def up(self) -> tuple[Publisher | Subscriber, Publisher | Subscriber]:
        """
        Answer the handshakes of the latest connections: log in, then PING
        (publisher) or SUBSCRIBE (subscriber).
        """
        publisher = self.endpoint.latest("publisher")
        subscriber = self.endpoint.latest("subscriber")
        self.assertEqual(sent(publisher), [[b"AUTH", b"pw"]])
        self.feed(publisher, b"+OK\r\n")
        self.assertEqual(sent(publisher), [[b"PING"]])
        self.feed(publisher, b"+PONG\r\n")
        self.assertEqual(sent(subscriber), [[b"AUTH", b"pw"]])
        self.feed(subscriber, b"+OK\r\n")
        self.assertEqual(sent(subscriber),
                         [[b"SUBSCRIBE", b"backplane:NEWS", b"backplane:SPORT"]])
        self.feed(subscriber, bulk(b"subscribe", b"backplane:NEWS", b":1"))
        return publisher, subscriber

    def test_connects(self) -> None:
        """
        Once both connections have logged in, the publisher answered PING and
        the subscriber subscribed to every shared backplane's channel, the
        bridge is connected, and says so.
        """
        bridge = self.bridge()
        self.service.startService()
        self.assertFalse(bridge.connected)
        self.up()
        self.assertTrue(bridge.connected)
        [info] = self.logged("info")
        self.assertEqual((info["node"], info["names"]), ("me", ["NEWS", "SPORT"]))
        self.assertEqual(self.logged("warn"), [])

    def test_publishes(self) -> None:
        """
        What is published on a shared backplane goes to its channel, tagged;
        the chunks of one turn of the reactor go in one PUBLISH per channel.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher, _ = self.up()
        self.news.publishLines(b"a\nb\n")
        self.news.publishMany([b"c"])
        self.sport.publish(b"goal")
        self.assertEqual(sent(publisher), [])
        self.clock.advance(0)
        self.assertEqual(sent(publisher), [
            [b"PUBLISH", b"backplane:NEWS", b"\x1ebackplane/1 me\na\nb\nc\n"],
            [b"PUBLISH", b"backplane:SPORT", b"\x1ebackplane/1 me\ngoal\n"],
        ])
        self.assertEqual(bridge.stats.chunks_out, 0)
        self.feed(publisher, b":1\r\n")
        self.feed(publisher, b":1\r\n")
        self.assertEqual((bridge.stats.chunks_out, bridge.stats.messages_out), (2, 4))

    def test_receives(self) -> None:
        """
        What comes from Redis is published on the backplane, with the bridge
        as origin, so it is not sent back; the node's own payloads are
        skipped; other channels and unknown formats are ignored.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher, subscriber = self.up()
        for payload in [b"\x1ebackplane/1 other\nx\ny\n", b"plain", b"\x1ebackplane/1 me\nz\n",
                        b"\x1ebackplane/9 other\nw\n"]:
            self.feed(subscriber, bulk(b"message", b"backplane:NEWS", payload))
        self.feed(subscriber, bulk(b"message", b"backplane:OTHER", b"v"))
        self.clock.advance(0)
        self.assertEqual(self.recorder.messages, [b"x", b"y", b"plain"])
        self.assertEqual(sent(publisher), [])
        stats = bridge.stats
        self.assertEqual((stats.chunks_in, stats.messages_in, stats.echoes, stats.rejected),
                         (2, 3, 1, 1))
        self.assertEqual(len(self.logged("warn")), 1)

    def test_parsesWholeReads(self) -> None:
        """
        All the messages of one read are parsed at once, without waiting for
        a turn of the reactor.
        """
        self.bridge()
        self.service.startService()
        _, subscriber = self.up()
        subscriber.dataReceived(b"".join(bulk(b"message", b"backplane:NEWS", b"%d" % n)
                                         for n in range(3)))
        self.assertEqual(self.recorder.messages, [b"0", b"1", b"2"])

    def test_outage(self) -> None:
        """
        Lost connections start an outage, logged once however many attempts
        fail; what is published meanwhile is counted; the end is logged with
        the outage's length and that count, once subscribed again.
        """
        bridge = self.bridge(timeout=100.0)
        self.service.startService()
        publisher, subscriber = self.up()
        self.endpoint.refusing = True
        self.clock.advance(10)
        subscriber.transport.loseConnection()
        publisher.transport.loseConnection()
        self.assertFalse(bridge.connected)
        [warning] = self.logged("warn")
        self.assertIn("connection lost", warning["why"])
        self.news.publish(b"lost 1")
        self.news.publish(b"lost 2")
        self.assertEqual(self.recorder.messages, [b"lost 1", b"lost 2"])
        # Retries after 1, 2, 4, 8, 8 s or so (jitter aside).
        self.clock.pump([0.5] * 60)
        self.assertEqual(len(self.logged("warn")), 1)
        self.assertEqual(len(self.endpoint.protocols), 2)
        self.endpoint.refusing = False
        self.clock.advance(8)
        self.assertEqual(len(self.endpoint.protocols), 4)
        self.up()  # subscribes again
        self.assertTrue(bridge.connected)
        back = [e for e in self.logged("info") if "is back" in e["log_format"]]
        self.assertEqual(len(back), 1)
        self.assertEqual(back[0]["lost"], 2)
        self.assertEqual(back[0]["duration"], bridge.stats.last_outage)
        self.assertEqual(back[0]["duration"], self.clock.seconds() - 10)
        self.assertEqual((bridge.stats.outages, bridge.stats.dropped), (1, 2))
        self.assertEqual(len(self.logged("warn")), 1)

    def test_subscriberDown(self) -> None:
        """
        While only the subscribed connection is down, what is published here
        still crosses; the bridge is not connected until it subscribes again.
        """
        bridge = self.bridge(timeout=100.0)
        self.service.startService()
        publisher, subscriber = self.up()
        subscriber.transport.loseConnection()
        self.assertFalse(bridge.connected)
        self.news.publish(b"still crosses")
        self.clock.advance(0)
        self.assertEqual(len(sent(publisher)), 1)
        self.assertEqual(bridge.stats.dropped, 0)

    def test_lostInFlight(self) -> None:
        """
        PUBLISHes in flight when the connection breaks are counted as
        unconfirmed (they may have crossed), what waits for the next turn as
        not crossed.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher, _ = self.up()
        self.news.publishMany([b"1", b"2"])
        self.clock.advance(0)
        self.news.publish(b"3")
        publisher.transport.loseConnection()
        self.assertEqual((bridge.stats.dropped, bridge.stats.unconfirmed, bridge.stats.queued),
                         (1, 2, 0))
        back = self.logged("warn")
        self.assertEqual(len(back), 1)

    def back(self) -> list[LogEvent]:
        return [e for e in self.logged("info") if "did not reach" in e["log_format"]]

    def outage(self, bridge: RedisBridge) -> tuple[Any, Any]:
        """
        Both connections lost, then made again: the new ones.
        """
        publisher, subscriber = self.endpoint.latest("publisher"), \
            self.endpoint.latest("subscriber")
        subscriber.transport.loseConnection()
        publisher.transport.loseConnection()
        self.assertFalse(bridge.connected)
        self.clock.advance(8)
        return self.up()

    def test_nodesNotBackYet(self) -> None:
        """
        Redis answers each PUBLISH with the connections it reached: after an
        outage, what this node publishes before the other nodes are
        subscribed again did not cross, and is counted in the outage, which
        ends once they are all back.
        """
        bridge = self.bridge(timeout=100.0)
        self.service.startService()
        publisher, _ = self.up()
        self.news.publish(b"before")
        self.clock.advance(0)
        sent(publisher)
        self.feed(publisher, b":3\r\n")  # this node and two others
        publisher, _ = self.outage(bridge)
        self.assertTrue(bridge.connected)
        self.assertEqual(self.back(), [], "not over until the others are back")
        [back] = [e for e in self.logged("info") if "is back" in e["log_format"]]
        self.assertIn("counted until the other nodes", back["log_format"])
        for n, reached in enumerate([b":1", b":2", b":3", b":2"]):
            self.news.publishMany([b"%d" % n, b"%d more" % n])
            self.clock.advance(0)
            self.feed(publisher, reached + b"\r\n")
        # Two chunks of two reached fewer nodes than before: 4 did not cross;
        # once all three were back the outage was over, so the last chunk,
        # missing a node again, is not counted (nodes come and go).
        [back] = self.back()
        self.assertEqual((back["lost"], back["unconfirmed"]), (4, 0))
        self.assertEqual(back["every"], "Every node is")
        stats = bridge.stats
        self.assertEqual((stats.dropped, stats.unconfirmed), (4, 0))
        self.assertEqual((stats.last_outage_dropped, stats.last_outage_unconfirmed), (4, 0))
        self.assertEqual(back["duration"], stats.last_outage)

    def test_nodesThatNeverComeBack(self) -> None:
        """
        Nodes that have not come back C{max_delay + timeout} seconds after
        this one is connected again are taken to be gone: the outage ends.
        """
        bridge = self.bridge(timeout=5.0)
        self.service.startService()
        publisher, _ = self.up()
        self.news.publish(b"before")
        self.clock.advance(0)
        self.feed(publisher, b":2\r\n")
        sent(publisher)
        publisher, _ = self.outage(bridge)
        self.news.publish(b"alone")
        self.clock.advance(0)
        self.feed(publisher, b":1\r\n")
        self.clock.advance(12)
        self.assertEqual(self.back(), [])
        self.clock.advance(1)
        [back] = self.back()
        self.assertEqual((back["lost"], back["every"]),
                         (1, "Not every node is"))
        # Afterwards, fewer receivers are just how many nodes there are.
        self.news.publish(b"still alone")
        self.clock.advance(0)
        self.feed(publisher, b":1\r\n")
        self.assertEqual(bridge.stats.dropped, 1)

    def test_ownSubscriberNotBack(self) -> None:
        """
        A PUBLISH sent before this node's own subscribed connection is back
        reached one connection fewer, or not: where that decides whether
        another node got it, the messages are counted as unconfirmed.
        """
        bridge = self.bridge(timeout=100.0)
        self.service.startService()
        publisher, _ = self.up()
        self.news.publish(b"before")
        self.clock.advance(0)
        self.feed(publisher, b":2\r\n")
        publisher, subscriber = self.endpoint.latest("publisher"), \
            self.endpoint.latest("subscriber")
        subscriber.transport.loseConnection()
        sent(publisher)
        self.news.publish(b"one")  # the other node, or this one
        self.clock.advance(0)
        self.feed(publisher, b":1\r\n")
        self.news.publish(b"two")  # the other node, surely
        self.clock.advance(0)
        self.feed(publisher, b":2\r\n")
        self.news.publish(b"three")  # nobody else
        self.clock.advance(0)
        self.feed(publisher, b":0\r\n")
        self.assertEqual((bridge.stats.dropped, bridge.stats.unconfirmed), (1, 1))

    def test_unanswered(self) -> None:
        """
        A connection whose PING goes unanswered for C{timeout} seconds is
        dropped and made again; so is one whose handshake goes unanswered.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher, subscriber = self.up()
        self.clock.advance(5)
        self.assertEqual(sent(publisher), [[b"PING"]])
        self.assertEqual(sent(subscriber), [[b"PING"]])
        self.feed(publisher, b"+PONG\r\n")
        self.feed(subscriber, bulk(b"pong", b""))
        self.clock.advance(5)
        self.assertEqual(sent(publisher), [[b"PING"]])
        self.assertEqual(sent(subscriber), [[b"PING"]])
        self.feed(subscriber, bulk(b"pong", b""))
        self.clock.advance(5)
        self.assertTrue(publisher.transport.disconnected)
        self.assertTrue(subscriber.transport.connected)
        [warning] = self.logged("warn")
        self.assertEqual(warning["why"], "PING unanswered: no answer within 5 s")
        self.assertFalse(bridge.connected)
        self.clock.advance(8)  # reconnects
        newPublisher = self.endpoint.latest("publisher")
        self.assertIsNot(newPublisher, publisher)
        self.clock.advance(5)  # no answer to AUTH
        self.assertTrue(newPublisher.transport.disconnected)
        self.assertEqual(len(self.logged("warn")), 1)

    def test_queueBound(self) -> None:
        """
        At most C{queue} bytes wait to be published (and as many again are in
        flight); past it the oldest waiting chunks are dropped and counted.
        """
        bridge = self.bridge(queue=100)
        self.service.startService()
        publisher, _ = self.up()
        for n in range(20):
            self.news.publish(b"%02d" % n + b"x" * 37)  # 40 bytes a chunk
            self.clock.advance(0)
        published = sent(publisher)
        # In flight: 2 PUBLISHes of 56 bytes; waiting: the newest 2 chunks.
        self.assertEqual([int(c[2][16:18]) for c in published], [0, 1])
        self.assertEqual((bridge.stats.queued, bridge.stats.dropped), (80, 16))
        self.feed(publisher, b":1\r\n" * 2)
        self.clock.advance(0)
        self.assertEqual([c[2][16:].split(b"\n")[:-1] for c in sent(publisher)],
                         [[b"18" + b"x" * 37, b"19" + b"x" * 37]])
        self.assertEqual(bridge.stats.queued, 0)

    def test_hugeChunk(self) -> None:
        """
        A chunk larger than the whole queue is dropped.
        """
        bridge = self.bridge(queue=10)
        self.service.startService()
        publisher, _ = self.up()
        self.news.publish(b"x" * 20)
        self.clock.advance(0)
        self.assertEqual(sent(publisher), [])
        self.assertEqual(bridge.stats.dropped, 1)

    def test_stop(self) -> None:
        """
        stopService publishes what waits, closes both connections once Redis
        has acknowledged it, and stops retrying.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher, subscriber = self.up()
        self.news.publish(b"last")
        stopped = self.service.stopService()
        self.assertEqual(len(sent(publisher)), 1)
        self.assertNoResult(stopped)
        self.assertTrue(publisher.transport.connected)
        self.feed(publisher, b":1\r\n")
        self.assertFalse(publisher.transport.connected)
        self.assertFalse(subscriber.transport.connected)
        self.successResultOf(stopped)
        self.assertEqual(bridge.stats.messages_out, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.news.publish(b"after")
        self.assertEqual(bridge.stats.dropped, 0)

    def test_stopWhileDown(self) -> None:
        """
        Stopped while Redis is down, the bridge stops retrying at once.
        """
        self.endpoint.refusing = True
        self.bridge()
        self.service.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopUnacknowledged(self) -> None:
        """
        Redis has C{timeout} seconds to acknowledge what is in flight when the
        bridge stops; then the connections close anyway.
        """
        self.bridge()
        self.service.startService()
        publisher, _ = self.up()
        self.news.publish(b"last")
        stopped = self.service.stopService()
        self.clock.advance(5)
        self.assertFalse(publisher.transport.connected)
        self.successResultOf(stopped)

    def test_noPassword(self) -> None:
        """
        Without a password in the URL there is no AUTH; a username goes with
        the password.
        """
        for url, login in [("redis://h", []), ("redis://me:pw@h", [[b"AUTH", b"me", b"pw"]])]:
            bridge = RedisBridge(self.service, url, names=["NEWS"], endpoint=self.endpoint,
                                 reactor=self.clock)
            bridge.startService()
            self.assertEqual(sent(self.endpoint.latest("publisher")), login or [[b"PING"]])
            self.successResultOf(bridge.stopService())

    def test_arguments(self) -> None:
        """
        Bad arguments are refused at once; an unknown backplane raises a
        KeyError.
        """
        badOptions: list[dict[str, Any]] = [
            {"initial_delay": 0}, {"initial_delay": 5, "max_delay": 1},
            {"queue": 0}, {"timeout": 0}, {"node_id": "a b"}]
        for options in badOptions:
            self.assertRaises(ValueError, self.bridge, **options)
        self.assertRaises(ValueError, RedisBridge, self.service, "http://h", names=[])
        self.assertRaises(KeyError, self.bridge, names=["NOPE"])

    def test_lostDuringHandshake(self) -> None:
        """
        A connection lost before its handshake is answered is retried.
        """
        bridge = self.bridge()
        self.service.startService()
        publisher = self.endpoint.latest("publisher")
        publisher.transport.loseConnection()
        self.assertEqual(len(self.logged("warn")), 1)
        self.clock.advance(1.5)  # the first retry comes after 1 to 1.5 s
        self.up()
        self.assertTrue(bridge.connected)
        self.assertEqual(bridge.stats.outages, 1)

    def retries(self) -> list[float]:
        """
        The seconds until each connection's next attempt, rounded.
        """
        now = self.clock.seconds()
        return sorted(round(call.getTime() - now, 6) for call in self.clock.getDelayedCalls())

    def test_backoff(self) -> None:
        """
        Each connection is retried after the delays of
        L{backplane.retry.backoffPolicy}: doubling from C{initial_delay} up
        to C{max_delay}, each shortened at random by up to 10%.  Once
        connected, the backoff starts over, and the subscriber subscribes
        again.
        """
        self.endpoint.refusing = True
        bridge = self.bridge(random=lambda: 0.5)  # each delay 5% short
        self.service.startService()
        self.assertEqual(self.endpoint.attempts, 2)
        for delay in [0.95, 1.9, 3.8, 7.6, 7.6]:
            self.assertEqual(self.retries(), [delay, delay])
            self.clock.advance(delay)
        self.assertEqual(self.endpoint.attempts, 12)
        self.endpoint.refusing = False
        self.clock.advance(7.6)
        _, subscriber = self.up()
        self.assertTrue(bridge.connected)
        subscriber.transport.loseConnection()
        self.assertEqual(self.retries(), [0.95, 5.0])  # and the publisher's PING
        self.clock.advance(0.95)
        newSubscriber = self.endpoint.latest("subscriber")
        self.assertIsNot(newSubscriber, subscriber)
        self.feed(newSubscriber, b"+OK\r\n")
        self.assertEqual(sent(newSubscriber)[-1],
                         [b"SUBSCRIBE", b"backplane:NEWS", b"backplane:SPORT"])
        self.feed(newSubscriber, bulk(b"subscribe", b"backplane:NEWS", b":1"))
        self.assertTrue(bridge.connected)
        self.assertEqual(bridge.stats.outages, 2)

    def test_handshakeRefused(self) -> None:
        """
        A connection whose handshake fails is aborted and counts as a failed
        attempt: the delays grow.  Its closing, which a reactor reports on a
        later turn, changes nothing more.
        """
        self.endpoint.transport = lambda: LaterTransport(self.clock)
        bridge = self.bridge(random=lambda: 0.0)
        self.service.startService()
        for delay in [1.0, 2.0, 4.0]:
            publisher = self.endpoint.latest("publisher")
            self.feed(publisher, b"-WRONGPASS invalid username-password pair\r\n")
            self.assertTrue(publisher.transport.disconnected)  # aborted
            self.assertIn(delay, self.retries())
            self.clock.advance(delay)
        [warning] = self.logged("warn")
        self.assertEqual(warning["why"],
                         "no usable connection: WRONGPASS invalid username-password pair")
        self.assertFalse(bridge.connected)
        self.assertEqual(bridge.stats.outages, 1)

    def test_stopAborts(self) -> None:
        """
        stopService closes the connections politely, and aborts them if the
        server has not let them close within C{timeout} seconds.
        """
        self.endpoint.transport = StubbornTransport
        self.bridge()
        self.service.startService()
        publisher, subscriber = self.up()
        stopped = self.service.stopService()
        self.assertTrue(publisher.transport.disconnecting)
        self.assertTrue(subscriber.transport.disconnecting)
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.assertFalse(publisher.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(publisher.transport.disconnected)
        self.assertTrue(subscriber.transport.disconnected)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.logged("warn"), [])


class ConnectionLostTests(SynchronousTestCase):
    """
    Odd orders of events on a connection.
    """

    def test_lostTwice(self) -> None:
        """
        A loss reported for a connection that is not the current one changes
        nothing.
        """
        clock, endpoint, service = Clock(), FakeEndpoint(), BackplaneService()
        service.create("NEWS")
        bridge = RedisBridge(service, names=["NEWS"], endpoint=endpoint, reactor=clock)
        bridge.startService()
        publisher = endpoint.latest("publisher")
        publisher.transport.loseConnection()
        calls = len(clock.getDelayedCalls())
        publisher.link.lost(publisher, Failure(ConnectionDone()))
        self.assertEqual(len(clock.getDelayedCalls()), calls)
        self.successResultOf(bridge.stopService())
