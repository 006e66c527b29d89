"""
The Redis bridge against a real redis-server (started by the redis_server
fixture): two nodes, each a BackplaneService with its own RedisBridge, in
this process; plain Redis clients beside them; Redis killed, restarted and
paused under them.
"""

from __future__ import annotations

import shutil
from functools import partial
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from zope.interface import implementer

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.redis.bridge import RedisBridge
from backplane.redis.wire import MARK
from backplane.testing import Recorder
from tests.helpers import connectClient, waitUntil
from tests.redis_helpers import plainSubscriber

CHANNEL = b"backplane:NEWS"


class Node:
    """
    One node: backplanes NEWS (shared) and LOCAL (not shared), a recorder on
    each, and a bridge to Redis.
    """

    def __init__(self, url: str, name: str, **options: Any) -> None:
        self.name = name
        self.service = BackplaneService()
        self.news = self.service.create("NEWS")
        self.local = self.service.create("LOCAL")
        options = {"initial_delay": 0.05, "max_delay": 0.2, "timeout": 2.0, **options}
        self.bridge = RedisBridge(self.service, url, names=["NEWS"], node_id=name, **options)
        self.bridge.setServiceParent(self.service)
        self.recorder = Recorder.on(self.news)

    def start(self) -> None:
        self.service.startService()

    def stop(self):
        return self.service.stopService()


@implementer(ILogObserver)
class BridgeLog:
    """
    The events that RedisBridges log, while the test runs; and any error
    logged meanwhile, from anywhere (an exception raised where the reactor
    calls a protocol, for one).
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.errors: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if isinstance(event.get("log_source"), RedisBridge):
            self.events.append(event)
        if "log_failure" in event or event["log_level"] >= LogLevel.error:
            self.errors.append(event)

    def of(self, node: Node, level: str | None = None) -> list[LogEvent]:
        return [e for e in self.events if e["log_source"] is node.bridge
                and (level is None or e["log_level"].name == level)]


@pytest.fixture
def bridgeLog():
    log = BridgeLog()
    globalLogPublisher.addObserver(log)
    yield log
    globalLogPublisher.removeObserver(log)


@pytest.fixture
def makeNode(redis_server):
    """
    Build nodes on the test's Redis; every node built is stopped after the test.
    """
    nodes: list[Node] = []

    def make(name: str, **options: object) -> Node:
        node = Node(redis_server.url, name, **options)
        nodes.append(node)
        return node

    yield make
    pytest_twisted.blockon(gatherResults([n.stop() for n in nodes if n.service.running]))


@pytest.fixture
def nodes(makeNode):
    """
    Two nodes, A and B, started and connected to Redis.
    """
    a, b = makeNode("A"), makeNode("B")
    a.start()
    b.start()
    pytest_twisted.blockon(connected(a, b))
    return a, b


def connected(*nodes: Node):
    return waitUntil(lambda: all(n.bridge.connected for n in nodes), what="connected to Redis")


def turn(seconds: float = 0.0):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def listen(factory):
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield endpoint.listen(factory)
    return port


@pytest_twisted.inlineCallbacks
def test_everySubscriberOfEveryNodeOnce(nodes):
    """
    Lines published on A (by a network client) and on B (through the API)
    reach every subscriber of both nodes exactly once, in each publisher's
    order; nobody gets an echo, and the network client that publishes and
    subscribes on A does not hear itself.
    """
    a, b = nodes
    aPort = yield listen(PublishToFactory(a.service, "NEWS", subscribe_to="NEWS"))
    bPort = yield listen(SubscribeToFactory(b.service, "NEWS"))
    try:
        chat = yield connectClient(aPort.getHost().port)
        listener = yield connectClient(bPort.getHost().port)
        yield waitUntil(lambda: len(a.news) == 3 and len(b.news) == 3, what="clients attached")

        chat.send(b"a1", b"a2")
        yield waitUntil(lambda: len(b.recorder.messages) == 2, what="a1 and a2 on B")
        yield b.news.publish(b"b1")
        yield waitUntil(lambda: len(a.recorder.messages) == 3, what="b1 on A")
        yield a.news.publishMany([b"a3", b"a4"])
        everything = [b"a1", b"a2", b"b1", b"a3", b"a4"]
        yield waitUntil(lambda: len(b.recorder.messages) == 5 and len(a.recorder.messages) == 5,
                        what="every message on both nodes")
        # Every payload has come back to its own node (and been skipped) once
        # each node has seen the other's last one: one connection, in order.
        yield waitUntil(lambda: a.bridge.stats.echoes == 2 and b.bridge.stats.echoes == 1,
                        what="the echoes")
        yield waitUntil(lambda: len(listener.lines) == 5 and len(chat.lines) == 3,
                        what="the network subscribers' lines")
        yield turn(0.1)

        assert a.recorder.messages == everything
        assert b.recorder.messages == everything
        assert listener.lines == everything
        assert chat.lines == [b"b1", b"a3", b"a4"]
        assert a.local.stats.messages_in == b.local.stats.messages_in == 0
        assert a.bridge.stats.messages_out == 4 and b.bridge.stats.messages_in == 4
        assert b.bridge.stats.messages_out == 1 and a.bridge.stats.messages_in == 1
        assert a.bridge.stats.dropped == b.bridge.stats.dropped == 0
        chat.transport.loseConnection()
        listener.transport.loseConnection()
        yield gatherResults([chat.closed, listener.closed])
    finally:
        yield aPort.stopListening()
        yield bPort.stopListening()


@pytest_twisted.inlineCallbacks
def test_chunkIsOnePublish(nodes, redis_server):
    """
    A chunk of many lines crosses as one PUBLISH: a plain subscriber sees one
    message, and B's subscribers every line.
    """
    a, b = nodes
    plain = yield plainSubscriber(redis_server.port, CHANNEL)
    lines = [b"line %04d" % i for i in range(1000)]
    yield a.news.publishMany(lines)
    yield waitUntil(lambda: len(b.recorder.messages) == 1000, what="1000 lines on B")
    yield waitUntil(lambda: len(plain.messages) == 1, what="the plain subscriber's message")
    yield turn(0.1)
    assert len(plain.messages) == 1
    assert b.recorder.messages == lines
    assert (a.bridge.stats.chunks_out, a.bridge.stats.messages_out) == (1, 1000)
    assert (b.bridge.stats.chunks_in, b.bridge.stats.messages_in) == (1, 1000)
    plain.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_plainPublishReachesEveryNode(nodes, redis_server):
    """
    What a plain Redis client publishes reaches the subscribers of every node
    as lines: split on newlines, a missing final newline added, one carriage
    return before each newline removed; bytes pass unchanged (a number stays
    bytes).
    """
    a, b = nodes
    sent = [
        (b"hello", [b"hello"]),
        (b"one\r\ntwo\n\nthree", [b"one", b"two", b"", b"three"]),
        (b"last\n", [b"last"]),
        (b"", [b""]),
        (b"12", [b"12"]),
        (b"\xff\x00\xfe\r\r\n", [b"\xff\x00\xfe\r"]),
    ]
    expected: list[bytes] = []
    for payload, lines in sent:
        assert redis_server.publish(CHANNEL, payload) == 2
        expected += lines
    yield waitUntil(lambda: len(a.recorder.messages) >= len(expected)
                    and len(b.recorder.messages) >= len(expected), what="the lines on both nodes")
    yield turn(0.1)
    assert a.recorder.messages == expected
    assert b.recorder.messages == expected


@pytest_twisted.inlineCallbacks
def test_redisCliPublish(nodes, redis_server):
    """
    redis-cli PUBLISH backplane:NEWS "hello" reaches both nodes.
    """
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not found (Debian: apt-get install redis-tools)")
    a, b = nodes
    out, err, code = yield getProcessOutputAndValue(
        cli, ["-p", str(redis_server.port), "PUBLISH", CHANNEL.decode(), "hello"])
    assert (out.strip(), code) == (b"2", 0), err
    yield waitUntil(lambda: a.recorder.messages and b.recorder.messages, what="hello on both")
    assert a.recorder.messages == b.recorder.messages == [b"hello"]


@pytest_twisted.inlineCallbacks
def test_plainSubscriberReadsNodes(nodes, redis_server):
    """
    A plain subscriber reads what a node publishes: a tag line naming the
    node, then the lines as published.
    """
    a, b = nodes
    plain = yield plainSubscriber(redis_server.port, CHANNEL, b"backplane:LOCAL")
    yield a.news.publishMany([b"x", b"", b"y \r"])
    yield b.news.publish(b"z")
    yield a.local.publish(b"not shared")
    yield waitUntil(lambda: len(plain.messages) == 2, what="two payloads")
    yield turn(0.1)
    assert plain.messages == [
        (CHANNEL, b"\x1ebackplane/1 A\nx\n\ny \r\n"),
        (CHANNEL, b"\x1ebackplane/1 B\nz\n"),
    ]
    # The documented way to read them:
    for _, payload in plain.messages:
        assert payload.startswith(MARK)
        tag, _, lines = payload.partition(b"\n")
        assert tag.split(b" ")[1] in (b"A", b"B")
        assert lines.endswith(b"\n")
    plain.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_redisRestart(nodes, redis_server, bridgeLog):
    """
    While Redis is down, each node serves its own subscribers, and nothing
    blocks or raises; once Redis is back on the same port, both nodes
    subscribe again and lines cross again.  Each node logs the outage once
    when it starts and once when it ends, with its length and the messages
    that did not cross.
    """
    a, b = nodes
    redis_server.kill()
    yield waitUntil(lambda: not a.bridge.connected and not b.bridge.connected,
                    what="the outage noticed")
    for n in range(3):
        result = yield a.news.publish(b"during %d" % n)
        assert result == 2  # the recorder and the bridge
    assert a.recorder.messages == [b"during 0", b"during 1", b"during 2"]
    yield turn(0.5)  # several failed attempts to reconnect (max_delay is 0.2 s)
    redis_server.start()
    yield connected(a, b)

    yield a.news.publish(b"after from A")
    yield b.news.publish(b"after from B")
    yield waitUntil(lambda: len(a.recorder.messages) == 5 and len(b.recorder.messages) == 2,
                    what="lines crossing again")
    assert a.recorder.messages[3:] == [b"after from A", b"after from B"]
    assert sorted(b.recorder.messages) == [b"after from A", b"after from B"]

    for node, lost in ((a, 3), (b, 0)):
        warnings = bridgeLog.of(node, "warn")
        assert len(warnings) == 1, warnings
        assert "unreachable" in warnings[0]["log_format"]
        back = [e for e in bridgeLog.of(node, "info") if "is back" in e["log_format"]]
        assert len(back) == 1, back
        assert back[0]["lost"] == lost
        assert back[0]["duration"] >= 0.5
        stats = node.bridge.stats
        assert (stats.outages, stats.dropped) == (1, lost)
        assert stats.last_outage == back[0]["duration"]
    assert bridgeLog.errors == []


@pytest_twisted.inlineCallbacks
def test_startWhileRedisIsDown(makeNode, redis_server, bridgeLog):
    """
    A node started while Redis is down serves its own subscribers, logs the
    outage, and shares its backplanes once Redis comes.
    """
    redis_server.kill()
    a, b = makeNode("A"), makeNode("B")
    a.start()
    b.start()
    yield waitUntil(lambda: bridgeLog.of(a, "warn") and bridgeLog.of(b, "warn"),
                    what="the outage logged")
    yield a.news.publish(b"alone")
    assert a.recorder.messages == [b"alone"]
    redis_server.start()
    yield connected(a, b)
    yield a.news.publish(b"together")
    yield waitUntil(lambda: b.recorder.messages == [b"together"], what="together on B")
    assert a.bridge.stats.dropped == 1
    assert len(bridgeLog.of(a, "warn")) == 1
    assert bridgeLog.errors == []


@pytest_twisted.inlineCallbacks
def test_unansweredRedis(makeNode, redis_server, bridgeLog):
    """
    A Redis that stops answering (paused: its connections stay open) is taken
    for down after the timeout: the outage is logged, and the bridge comes
    back when Redis answers again.
    """
    a, b = makeNode("A", timeout=0.3), makeNode("B", timeout=0.3)
    a.start()
    b.start()
    yield connected(a, b)
    redis_server.pause()
    try:
        yield waitUntil(lambda: not a.bridge.connected and not b.bridge.connected,
                        what="the silence noticed")
        assert "PING" in bridgeLog.of(a, "warn")[0]["why"]
        yield turn(0.5)
    finally:
        redis_server.resume()
    yield connected(a, b)
    yield a.news.publish(b"awake")
    yield waitUntil(lambda: b.recorder.messages == [b"awake"], what="awake on B")
    assert len(bridgeLog.of(a, "warn")) == len(bridgeLog.of(b, "warn")) == 1
    assert bridgeLog.errors == []


@pytest_twisted.inlineCallbacks
def test_queueBound(makeNode, redis_server):
    """
    While Redis does not read, what waits to be published to it is bounded:
    past C{queue} bytes the oldest waiting chunks are dropped and counted;
    the rest crosses, in order, once Redis reads again.
    """
    queue = 20_000
    a = makeNode("A", queue=queue, timeout=30.0)
    b = makeNode("B", timeout=30.0)
    a.start()
    b.start()
    yield connected(a, b)
    redis_server.pause()
    try:
        for n in range(100):
            a.news.publish(b"%03d " % n + b"x" * 995)
            yield turn()  # one PUBLISH each
            assert a.bridge.stats.queued <= queue
        assert a.recorder.messages[-1].startswith(b"099 ")
        assert a.bridge.stats.dropped > 0
    finally:
        redis_server.resume()
    dropped = a.bridge.stats.dropped
    yield waitUntil(lambda: len(b.recorder.messages) == 100 - dropped,
                    what="what was not dropped on B")
    numbers = [int(m[:3]) for m in b.recorder.messages]
    assert numbers == sorted(numbers)
    assert numbers[0] == 0 and numbers[-1] == 99  # the first in flight, the last kept
    assert a.bridge.stats.messages_out == 100 - dropped


@pytest_twisted.inlineCallbacks
def test_stopService(makeNode, redis_server):
    """
    stopService closes both connections and stops retrying, whether Redis
    is up or down.
    """
    a = makeNode("A")
    a.start()
    yield connected(a)
    assert redis_server.command(b"CLIENT", b"LIST").count(b"id=") == 3  # A's two and ours
    yield a.stop()
    yield waitUntil(lambda: redis_server.command(b"CLIENT", b"LIST").count(b"id=") == 1,
                    what="A's connections closed")

    b = makeNode("B")
    redis_server.kill()
    before = set(reactor.getDelayedCalls())
    b.start()
    yield waitUntil(lambda: b.bridge.stats.outages == 1, what="the outage noticed")
    yield turn(0.3)  # retrying
    yield b.stop()
    assert [call for call in reactor.getDelayedCalls() if call not in before] == []
    assert not b.bridge.connected
    redis_server.start()
    yield turn(0.5)  # longer than max_delay: B would have reconnected
    assert redis_server.command(b"CLIENT", b"LIST").count(b"id=") == 1


# Lines Redis acknowledged to A in its last pass before it was killed, which
# may not have reached B (Redis writes replies and messages in one pass, in
# no set order): nobody can count them (docs/scaling.md).  A line every 2 ms,
# one PUBLISH each: at most a couple.
LAST_PASS = 2


@pytest_twisted.inlineCallbacks
def test_outageAccounting(makeNode, redis_server, bridgeLog):
    """
    Redis killed and restarted five times while A publishes a numbered line
    every few milliseconds, B reconnecting more slowly than A: for each
    outage, what A reports as not crossed (its log line, and C{dropped} in
    its statistics) is what B did not receive, give or take the lines A had
    sent when the connection broke, which it reports apart (C{unconfirmed}),
    and those Redis acknowledged in the instant it was killed.
    """
    a = makeNode("A", initial_delay=0.02, max_delay=0.05)
    b = makeNode("B", initial_delay=0.2, max_delay=0.3)
    a.start()
    b.start()
    yield connected(a, b)
    published = [0]

    def publish() -> None:
        a.news.publish(b"%06d" % published[0])
        published[0] += 1

    loop = LoopingCall(publish)
    loop.start(0.002)
    outages = 5
    boundaries = [0]
    try:
        for n in range(1, outages + 1):
            yield turn(0.3)
            redis_server.kill()
            yield turn(0.3)
            redis_server.start()
            yield connected(a, b)
            yield waitUntil(partial(outageEnded, bridgeLog, a, n),
                            what=f"the end of outage {n} logged")
            boundaries.append(published[0])
        yield turn(0.2)
    finally:
        loop.stop()
    total = published[0]
    yield waitUntil(lambda: not a.bridge.stats.queued, what="A's last PUBLISH sent")
    yield turn(0.5)  # and answered, and on B
    received = {int(m) for m in b.recorder.messages}
    missed = sorted(set(range(total)) - received)
    assert missed, "nothing was missed: the test did not test"
    ends = outageEnds(bridgeLog, a)
    assert len(ends) == outages
    stats = a.bridge.stats
    assert stats.dropped == sum(e["lost"] for e in ends)
    assert stats.unconfirmed == sum(e["unconfirmed"] for e in ends)
    for n, end in enumerate(ends):
        inOutage = [m for m in missed if boundaries[n] <= m < boundaries[n + 1]]
        bound = end["lost"] + end["unconfirmed"] + LAST_PASS
        assert end["lost"] <= len(inOutage) <= bound, \
            (n, end["lost"], end["unconfirmed"], len(inOutage))
    assert len(missed) - stats.dropped <= stats.unconfirmed + outages * LAST_PASS
    assert (stats.last_outage_dropped, stats.last_outage_unconfirmed) == \
        (ends[-1]["lost"], ends[-1]["unconfirmed"])
    assert bridgeLog.errors == []


def outageEnds(bridgeLog: BridgeLog, node: Node) -> list[LogEvent]:
    """
    The lines that end each outage, with its figures.
    """
    return [e for e in bridgeLog.of(node, "info") if "did not reach" in e["log_format"]]


def outageEnded(bridgeLog: BridgeLog, node: Node, n: int) -> bool:
    return len(outageEnds(bridgeLog, node)) == n
