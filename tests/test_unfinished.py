"""
The service-wide bound on unfinished input (UnfinishedBudget, [limits]
max_unfinished_total): line, syslog, WebSocket and Redis clients, and
relays' connections upstream, count the half line (message, request) they
hold after each read, release it when they complete it or go, and past the
bound the one holding the most is disconnected first, its half line never
published.
"""

from typing import Any

import txaio
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from backplane.budget import DEFAULT_MAX_UNFINISHED_TOTAL, UnfinishedBudget
from backplane.build import buildService
from backplane.config import Config, parse_config
from backplane.errors import ConfigError
from backplane.history.ids import ID_PREFIX_ROOM
from backplane.protocols import Limits, PublishTo, PublishToFactory
from backplane.redis.server import RedisClient, RedisFactory
from backplane.relay import RelayFactory, RelayProtocol, RelayService
from backplane.service import BackplaneService
from tests.helpers import connectedOn, tempDir
from tests.redis_helpers import encodeCommand
from tests.test_relay import FakeEndpoint, LogCapture, connectProtocol
from tests.test_websocket import CLOSE, clientFrame, opened, serverFrames


class Holder:
    """
    An L{UnfinishedHolder<backplane.budget.UnfinishedHolder>} that counts
    what it is told to hold, and lets it go when cut.
    """

    def __init__(self, budget: UnfinishedBudget, name: str) -> None:
        self.budget = budget
        self.name = name
        self.unfinished = 0
        self.cut = False

    def hold(self, size: int) -> None:
        before, self.unfinished = self.unfinished, size
        self.budget.update(self, before, size)

    def overUnfinished(self) -> None:
        self.cut = True
        self.hold(0)

    def __repr__(self) -> str:
        return self.name


class BudgetTests(SynchronousTestCase):
    def test_counted(self):
        """
        The total is the sum of what each holder says it holds; holders are
        those holding something.
        """
        budget = UnfinishedBudget(100)
        a, b = Holder(budget, "a"), Holder(budget, "b")
        a.hold(30)
        b.hold(20)
        a.hold(40)
        self.assertEqual((budget.held, list(budget.holders)), (60, [a, b]))
        a.hold(0)
        self.assertEqual((budget.held, list(budget.holders)), (20, [b]))
        b.hold(0)
        self.assertEqual((budget.held, len(budget.holders), budget.cuts), (0, 0, 0))

    def test_largestCutFirst(self):
        """
        Past the bound, the holders holding the most are cut, one after
        the other, until the total is within it; the one asking may be one.
        """
        budget = UnfinishedBudget(100)
        a, b, c, d = (Holder(budget, name) for name in "abcd")
        a.hold(30)
        b.hold(45)
        c.hold(20)
        d.hold(5)
        self.assertEqual(budget.held, 100)  # at the bound is within it
        d.hold(10)
        self.assertEqual([h.cut for h in (a, b, c, d)], [False, True, False, False])
        self.assertEqual((budget.held, budget.cuts, budget.discarded), (60, 1, 45))
        # One holder growing past everything else: cut itself.
        c.hold(95)
        self.assertTrue(c.cut)
        self.assertEqual((budget.held, budget.cuts, budget.discarded), (40, 2, 140))
        # Two cuts for one read: 30 and 10 held, then 90 more.
        e = Holder(budget, "e")
        e.hold(90)
        self.assertTrue(e.cut)
        self.assertEqual((budget.held, budget.cuts), (40, 3))
        self.assertFalse(a.cut or d.cut)

    def test_shrinkingNeverCuts(self):
        """
        Holding less never cuts, even above the bound (a bound lowered).
        """
        budget = UnfinishedBudget(1000)
        a = Holder(budget, "a")
        a.hold(900)
        budget.limit = 100
        a.hold(500)
        self.assertFalse(a.cut)
        self.assertEqual(budget.held, 500)

    def test_report(self):
        budget = UnfinishedBudget(100)
        a = Holder(budget, "a")
        a.hold(70)
        Holder(budget, "b").hold(40)
        self.assertEqual(budget.report(), {
            "unfinished_bytes": 40,
            "unfinished_limit_bytes": 100,
            "unfinished_connections": 1,
            "unfinished_cuts": 1,
            "unfinished_discarded_bytes": 70,
        })
        self.assertIsNone(UnfinishedBudget().report()["unfinished_limit_bytes"])
        self.assertFalse(UnfinishedBudget().bounded)
        self.assertRaises(ValueError, UnfinishedBudget, -1)

    def test_serviceDefault(self):
        self.assertEqual(BackplaneService().unfinished.limit, DEFAULT_MAX_UNFINISHED_TOTAL)
        self.assertEqual(DEFAULT_MAX_UNFINISHED_TOTAL, 64 * 1024 * 1024)


class LinePortTests(SynchronousTestCase):
    """
    Line clients of ports of one service count their half lines on the
    service's bound.
    """

    def setUp(self):
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.news = self.service.create("NEWS")
        self.published: list[bytes] = []
        self.news.subscribe(self.published.append)
        self.clock = Clock()
        self.factory = PublishToFactory(self.service, "NEWS", clock=self.clock)
        self.log = LogCapture(self)

    def connect(self, factory: Any = None) -> tuple[PublishTo, StringTransport]:
        return connectedOn(factory or self.factory, PublishTo)

    def test_countedAndReleased(self):
        """
        A half line counts from the read that leaves it to the read that
        completes it; complete lines count nothing.
        """
        budget = self.service.unfinished
        a, _ = self.connect()
        b, _ = self.connect()
        a.dataReceived(b"one\ntw")
        b.dataReceived(b"three\n")
        self.assertEqual((budget.held, a.unfinished, b.unfinished), (2, 2, 0))
        a.dataReceived(b"o\nfo")
        self.assertEqual(budget.held, 2)
        b.dataReceived(b"fi")
        a.dataReceived(b"ur\n")
        self.assertEqual((budget.held, list(budget.holders)), (2, [b]))
        self.assertEqual(self.published, [b"one", b"three", b"two", b"four"])

    def test_releasedWhenGone(self):
        """
        A client that goes releases its half line (discarded, counted).
        """
        budget = self.service.unfinished
        a, _ = self.connect()
        a.dataReceived(b"half a line")
        self.assertEqual(budget.held, 11)
        a.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))
        self.assertEqual(self.factory.stats.discarded_bytes, 11)
        self.assertEqual(budget.cuts, 0)

    def test_releasedAtEndOfInput(self):
        """
        A half line published at a clean end of input (a FIN) is released.
        """
        budget = self.service.unfinished
        a, _ = self.connect()
        a.dataReceived(b"last")
        a.readConnectionLost()
        a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.published, [b"last"])
        self.assertEqual(budget.held, 0)

    def test_largestCut(self):
        """
        Past the bound, the client with the longest half line, on whichever
        port, is disconnected: its half line is never published, counted in
        its port's discarded_bytes and the service's counters, and logged
        once; the others go on.
        """
        other = PublishToFactory(self.service, "NEWS", clock=self.clock,
                                 limits=Limits(framing="syslog"))
        budget = self.service.unfinished
        a, aOut = self.connect()
        b, bOut = self.connect(other)
        c, cOut = self.connect()
        a.dataReceived(b"a" * 30)
        b.dataReceived(b"<13>" + b"b" * 46)
        c.dataReceived(b"c" * 20)
        self.assertEqual(budget.held, 100)
        self.assertFalse(bOut.disconnecting)
        c.dataReceived(b"c")
        self.assertTrue(bOut.disconnecting)
        self.assertFalse(aOut.disconnecting or cOut.disconnecting)
        self.assertEqual((budget.held, budget.cuts, budget.discarded), (51, 1, 50))
        self.assertEqual((other.stats.discarded_bytes, self.factory.stats.discarded_bytes),
                         (50, 0))
        [warning] = self.log.matching("max_unfinished_total", LogLevel.warn)
        self.assertEqual(warning["length"], 50)
        self.assertEqual(warning["limit"], 100)
        b.dataReceived(b"bbbb\n")  # after the cut: ignored
        b.connectionLost(Failure(ConnectionDone()))
        a.dataReceived(b"\n")
        c.dataReceived(b"\n")
        self.assertEqual(self.published, [b"a" * 30, b"c" * 21])
        self.assertEqual((budget.held, len(budget.holders), budget.cuts), (0, 0, 1))

    def test_readerCutsItself(self):
        """
        A client whose read takes the total past the bound, holding the
        most, is the one cut; the complete lines of that read before its
        half line are published.
        """
        budget = self.service.unfinished
        a, _ = self.connect()
        b, bOut = self.connect()
        a.dataReceived(b"a" * 40)
        b.dataReceived(b"whole\n" + b"b" * 70)
        self.assertTrue(bOut.disconnecting)
        self.assertEqual(self.published, [b"whole"])
        self.assertEqual((budget.held, a.unfinished), (40, 40))

    def test_headCounted(self):
        """
        The first bytes held back to tell an HTTP request line count too.
        """
        budget = self.service.unfinished
        a, _ = self.connect()
        a.dataReceived(b"GET /st")
        self.assertEqual(budget.held, 7)
        a.dataReceived(b"uff")
        self.assertEqual(budget.held, 10)
        a.dataReceived(b" and more\n")
        self.assertEqual(budget.held, 0)


class WebSocketTests(SynchronousTestCase):
    def setUp(self):
        from backplane.websocket import WebSocketFactory

        self.patch(txaio.tx.config, "loop", Clock())
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.news = self.service.create("NEWS")
        self.published: list[bytes] = []
        self.news.subscribe(self.published.append)
        self.factory = WebSocketFactory(self.service, publish_to="NEWS")
        self.log = LogCapture(self)

    def test_messageCountedAndCut(self):
        """
        The fragments of an unfinished message count until it ends; past
        the bound, the client holding the most is closed with 1008 and its
        message is never published.
        """
        budget = self.service.unfinished
        a, aOut = opened(self.factory, ("127.0.0.1", 1))
        b, bOut = opened(self.factory, ("127.0.0.1", 2))
        a.dataReceived(clientFrame(b"a" * 30, fin=False))
        self.assertEqual((budget.held, a.unfinished), (30, 30))
        a.dataReceived(clientFrame(b"a" * 5, opcode=0))
        self.assertEqual((budget.held, self.published), (0, [b"a" * 35]))
        a.dataReceived(clientFrame(b"x" * 60, fin=False))
        b.dataReceived(clientFrame(b"y" * 50, fin=False))
        self.assertEqual(budget.held, 50)
        self.assertEqual(budget.cuts, 1)
        self.assertEqual(self.factory.stats.discarded_bytes, 60)
        [(opcode, payload)] = serverFrames(aOut.value())
        self.assertEqual((opcode, payload[:2]), (CLOSE, b"\x03\xf0"))  # 1008
        a.dataReceived(clientFrame(b"x", opcode=0))  # its end, after the cut
        b.dataReceived(clientFrame(b"y", opcode=0))
        self.assertEqual(self.published, [b"a" * 35, b"y" * 51])
        self.assertEqual(len(self.log.matching("max_unfinished_total", LogLevel.warn)), 1)
        self.assertEqual(budget.held, 0)
        b.dataReceived(clientFrame(b"z" * 20, fin=False))
        b.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))
        self.assertEqual(bOut.value(), b"")  # b was never closed


class RedisTests(SynchronousTestCase):
    def setUp(self):
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.factory = RedisFactory(self.service, backplanes=("NEWS",), clock=Clock())
        self.published: list[bytes] = []
        self.service.create("NEWS").subscribe(self.published.append)

    def connect(self) -> tuple[RedisClient, StringTransport]:
        return connectedOn(self.factory, RedisClient)

    def test_requestCountedAndCut(self):
        """
        A partial request counts until it is complete; past the bound the
        client holding the most is disconnected, its request never handled.
        """
        budget = self.service.unfinished
        a, aOut = self.connect()
        b, bOut = self.connect()
        request = encodeCommand(b"PUBLISH", b"NEWS", b"n" * 40)
        a.dataReceived(request[:30])
        self.assertEqual((budget.held, a.unfinished), (30, 30))
        a.dataReceived(request[30:])
        self.assertEqual((budget.held, self.published), (0, [b"n" * 40]))
        a.dataReceived(request[:-3])
        b.dataReceived(b"PING " + b"p" * 40)  # an inline command, unfinished
        self.assertEqual((budget.held, budget.cuts), (45, 1))
        self.assertTrue(aOut.disconnecting)
        self.assertFalse(bOut.disconnecting)
        self.assertEqual(self.factory.stats.discarded_bytes, len(request) - 3)
        a.dataReceived(request[-3:])
        self.assertEqual(self.published, [b"n" * 40])
        b.dataReceived(b"\r\n")
        self.assertEqual(budget.held, 0)
        b.dataReceived(b"*2\r\n$4\r\nPING\r\n$3\r\nab")
        b.connectionLost(Failure(ConnectionLost()))
        a.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))


class RelayTests(SynchronousTestCase):
    """
    A relay's connection upstream holds upstream's half line on the
    service's bound, as a port's clients do.
    """

    def setUp(self):
        self.service = BackplaneService(unfinished=UnfinishedBudget(100))
        self.news = self.service.create("NEWS")
        self.published: list[bytes] = []
        self.news.subscribe(self.published.append)
        self.clock = Clock()
        self.relay = RelayFactory(self.service, "NEWS", clock=self.clock, initial_delay=1.0)
        self.endpoint = FakeEndpoint()
        self.connection = RelayService(self.endpoint, self.relay, random=lambda: 0.0)
        self.connection.startService()
        self.addCleanup(self.connection.stopService)
        self.log = LogCapture(self)

    def upstream(self) -> tuple[Any, StringTransport]:
        """
        Accept the relay's connection attempt: its protocol (as the
        endpoint sees it) and transport.
        """
        accepted: tuple[Any, StringTransport] = self.endpoint.accept()
        return accepted

    @property
    def connected(self) -> RelayProtocol:
        """
        The relay's connection upstream now.
        """
        protocol = self.relay.relay.protocol
        assert protocol is not None
        return protocol

    def test_countedOncePerRead(self):
        """
        Upstream's half line counts after each read, the budget told only
        when what is held changed; complete lines count nothing.
        """
        updates: list[tuple[int, int]] = []

        class Counted(UnfinishedBudget):
            def update(self, holder: Any, before: int, after: int) -> None:
                updates.append((before, after))
                super().update(holder, before, after)

        budget = self.relay.relay.unfinishedBudget = Counted(100)
        protocol, _ = self.upstream()
        protocol.dataReceived(b"one\ntwo\nth")
        self.assertEqual((budget.held, self.connected.unfinished, len(budget.holders)),
                         (2, 2, 1))
        protocol.dataReceived(b"ree\nfo")
        protocol.dataReceived(b"ur\n")
        self.assertEqual(self.published, [b"one", b"two", b"three", b"four"])
        self.assertEqual(updates, [(0, 2), (2, 0)])
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))

    def test_cut(self):
        """
        Upstream holding a half line past the bound is cut: logged once
        (without its bytes), never published, counted in the relay's
        discarded_bytes and the service's counters, released, and the
        connection closed; the relay connects again.
        """
        budget = self.service.unfinished
        protocol, transport = self.upstream()
        protocol.dataReceived(b"whole\n" + b"x" * 60)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"x" * 41)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((budget.held, len(budget.holders), budget.cuts, budget.discarded),
                         (0, 0, 1, 101))
        self.assertEqual(self.relay.stats.discarded_bytes, 101)
        [warning] = self.log.matching("max_unfinished_total", LogLevel.warn)
        self.assertEqual((warning["length"], warning["limit"], warning["peer"]),
                         (101, 100, protocol.peer))
        self.assertNotIn("xxx", repr(warning))
        protocol.dataReceived(b"x\n")  # after the cut: ignored
        transport.disconnecting = True
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.published, [b"whole"])
        self.assertEqual(self.relay.stats.discarded_bytes, 101)
        self.assertEqual((budget.held, budget.cuts), (0, 1))
        self.assertEqual(self.relay.stats.state, "waiting")
        self.clock.advance(1.0)
        again, _ = self.upstream()
        self.assertEqual(self.relay.stats.reconnects, 1)
        again.dataReceived(b"after\n")
        self.assertEqual(self.published, [b"whole", b"after"])

    def test_releasedWhenLost(self):
        """
        However the connection ends, what it held is released: a reset
        (discarded, counted), a clean end (published), an abort by the
        relay (an idle timeout).
        """
        budget = self.service.unfinished
        protocol, transport = self.upstream()
        protocol.dataReceived(b"half")
        self.assertEqual(budget.held, 4)
        transport.disconnecting = True
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))
        self.assertEqual(self.relay.stats.discarded_bytes, 4)

        self.clock.advance(1.0)
        protocol, transport = self.upstream()
        protocol.dataReceived(b"last")
        self.assertEqual(budget.held, 4)
        transport.disconnecting = True
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.published, [b"last"])
        self.assertEqual((budget.held, len(budget.holders)), (0, 0))

        self.clock.advance(1.0)
        protocol, transport = self.upstream()
        protocol.dataReceived(b"stuck")
        protocol.abort()
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((budget.held, len(budget.holders), budget.cuts), (0, 0, 0))
        self.assertEqual(self.relay.stats.discarded_bytes, 9)

    def test_overlongReleased(self):
        """
        A line past the relay's own max_line_length is cut by it, and what
        was held of it released.
        """
        budget = self.service.unfinished
        factory = RelayFactory(self.service, "NEWS", clock=self.clock, max_line_length=10)
        protocol, transport = connectProtocol(factory)
        protocol.dataReceived(b"x" * 8)
        self.assertEqual(budget.held, 8)
        protocol.dataReceived(b"x" * 8)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((budget.held, len(budget.holders), budget.cuts), (0, 0, 0))

    def test_largestCutWithALineClient(self):
        """
        A relay's connection and a line client share the bound: whichever
        holds the most is cut, whichever read takes the total past it.
        """
        budget = self.service.unfinished
        port = PublishToFactory(self.service, "NEWS", clock=self.clock)
        client, clientOut = connectedOn(port, PublishTo)
        protocol, transport = self.upstream()

        # The relay holds the most; the line client's read takes the total
        # past the bound: the relay is cut.
        protocol.dataReceived(b"r" * 60)
        client.dataReceived(b"c" * 41)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(clientOut.disconnecting)
        self.assertEqual((budget.held, list(budget.holders)), (41, [client]))
        self.assertEqual((self.relay.stats.discarded_bytes, port.stats.discarded_bytes), (60, 0))
        transport.disconnecting = True
        protocol.connectionLost(Failure(ConnectionDone()))

        # The line client holds the most; the relay's read takes the total
        # past the bound: the line client is cut.
        self.clock.advance(1.0)
        protocol, transport = self.upstream()
        protocol.dataReceived(b"r" * 30)
        client.dataReceived(b"c" * 20)
        protocol.dataReceived(b"r" * 10)
        self.assertTrue(clientOut.disconnecting)
        self.assertFalse(transport.disconnecting)
        self.assertEqual((budget.held, list(budget.holders)), (40, [self.connected]))
        self.assertEqual((self.relay.stats.discarded_bytes, port.stats.discarded_bytes), (60, 61))
        self.assertEqual((budget.cuts, budget.discarded), (2, 121))
        protocol.dataReceived(b"\n")
        self.assertEqual(self.published, [b"r" * 40])
        self.assertEqual(budget.held, 0)


class ConfigTests(SynchronousTestCase):
    """
    [limits] max_unfinished_total: its default, its bounds, what it bounds.
    """

    def parse(self, limits: dict[str, object] | None = None, **listen: object) -> Config:
        document: dict[str, object] = {
            "backplane": {"NEWS": {}},
            "listen": [{"endpoint": "tcp:0", "publish_to": "NEWS", **listen}],
        }
        if limits is not None:
            document["limits"] = limits
        return parse_config(document)

    def test_default(self):
        self.assertEqual(self.parse().limits.max_unfinished_total, DEFAULT_MAX_UNFINISHED_TOTAL)

    def test_bounded(self):
        for value, message in [
            (1000, "limits.max_unfinished_total: must be 1048576 or more"),
            (1024 ** 4 + 1, "limits.max_unfinished_total: must be 1099511627776 or less"),
            ("64 MiB", "limits.max_unfinished_total: must be an integer"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse({"max_unfinished_total": value})
            self.assertIn(message, str(caught.exception))

    def test_linesInside(self):
        with self.assertRaises(ConfigError) as caught:
            self.parse({"max_unfinished_total": 2097152}, max_line_length=4194304)
        self.assertIn("listen[1].max_line_length: must be at most [limits] "
                      "max_unfinished_total (2097152)", str(caught.exception))
        self.parse({"max_unfinished_total": 4194304}, max_line_length=4194304)

    def test_requestsInside(self):
        """
        A Redis port's max_request (8 MiB by default) must fit too; other
        ports' default max_request is not theirs.
        """
        with self.assertRaises(ConfigError) as caught:
            parse_config({"limits": {"max_unfinished_total": 4194304},
                          "listen": [{"endpoint": "tcp:0", "protocol": "redis",
                                      "backplanes": ["NEWS"]}]})
        self.assertIn("listen[1].max_request: must be at most [limits] max_unfinished_total",
                      str(caught.exception))
        parse_config({"limits": {"max_unfinished_total": 4194304},
                      "listen": [{"endpoint": "tcp:0", "protocol": "redis",
                                  "backplanes": ["NEWS"], "max_request": 1048576}]})

    def test_relayLinesInside(self):
        """
        A relay's max_line_length must fit too: its connection upstream is
        on the bound.
        """
        connect = {"endpoint": "tcp:127.0.0.1:1", "publish_to": "NEWS",
                   "max_line_length": 4194304}
        document: dict[str, object] = {"limits": {"max_unfinished_total": 2097152},
                                       "backplane": {"NEWS": {}}, "connect": [connect]}
        with self.assertRaises(ConfigError) as caught:
            parse_config(document)
        self.assertIn("connect[1].max_line_length: must be at most [limits] "
                      "max_unfinished_total (2097152)", str(caught.exception))
        parse_config({**document, "limits": {"max_unfinished_total": 4194304}})

    def test_resumingRelayLinesInside(self):
        """
        With C{resume}, upstream's lines carry an id besides: the relay's
        max_line_length and the room of an id must fit.
        """
        connect = {"endpoint": "tcp:127.0.0.1:1", "publish_to": "NEWS",
                   "max_line_length": 4194304, "resume": True}
        document: dict[str, object] = {"limits": {"max_unfinished_total": 4194304},
                                       "backplane": {"NEWS": {}}, "connect": [connect]}
        with self.assertRaises(ConfigError) as caught:
            parse_config(document)
        self.assertIn("connect[1].max_line_length: must be at most [limits] "
                      f"max_unfinished_total (4194304) less {ID_PREFIX_ROOM} bytes for an id "
                      "(resume = true)", str(caught.exception))
        parse_config({**document, "connect": [
            {**connect, "max_line_length": 4194304 - ID_PREFIX_ROOM}]})

    def test_checked(self):
        """
        C{--check} (readConfig) rejects what start-up would, in one line.
        """
        from backplane.config import readConfig

        path = tempDir(self) / "backplane.toml"
        with open(path, "w") as f:
            f.write('[limits]\nmax_unfinished_total = 1000\n[backplane.NEWS]\n'
                    '[[listen]]\nendpoint = "tcp:0"\npublish_to = "NEWS"\n')
        with self.assertRaises(ConfigError) as caught:
            readConfig(path)
        self.assertIn("limits.max_unfinished_total: must be 1048576 or more",
                      str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_built(self):
        config = self.parse({"max_unfinished_total": 16777216})
        reactor: Any = MemoryReactorClock()
        service = buildService(config, reactor=reactor)
        self.assertEqual(service.unfinished.limit, 16 * 1024 * 1024)


class MetricsTests(SynchronousTestCase):
    def test_unfinishedMetrics(self):
        """
        /metrics has the figures, counters ending in _total, and no limit
        gauge without a bound.
        """
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import CollectorRegistry

        from backplane.metrics import StatsCollector
        from tests.helpers import metricSamples, sample

        budget = UnfinishedBudget(4096)
        budget.held, budget.cuts, budget.discarded = 100, 2, 7000

        class Collector:
            def __init__(self, budget):
                self.budget = budget

            def collect(self):
                return StatsCollector.unfinished(self.budget.report())

        registry = CollectorRegistry()
        registry.register(Collector(budget))
        samples = metricSamples(generate_latest(registry).decode())
        self.assertEqual(sample(samples, "backplane_unfinished_bytes"), 100)
        self.assertEqual(sample(samples, "backplane_unfinished_limit_bytes"), 4096)
        self.assertEqual(sample(samples, "backplane_unfinished_connections"), 0)
        self.assertEqual(sample(samples, "backplane_unfinished_cuts_total"), 2)
        self.assertEqual(sample(samples, "backplane_unfinished_discarded_bytes_total"), 7000)
        registry = CollectorRegistry()
        registry.register(Collector(UnfinishedBudget()))
        self.assertNotIn("backplane_unfinished_limit_bytes ",
                         generate_latest(registry).decode())
