"""
The service-wide bound on what waits for subscribers (PendingBudget,
[limits] max_pending_total): writers count on it, and past it the
subscribers furthest behind apply their slow policy first.
"""

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from backplane.budget import DEFAULT_MAX_PENDING_TOTAL, PendingBudget
from backplane.config import Config, parse_config
from backplane.errors import ConfigError
from backplane.output import BoundedWriter
from backplane.protocols import Limits, PortStats, SlowPolicy, SubscribeTo, SubscribeToFactory
from backplane.service import Backplane, BackplaneService, BackplaneStats
from tests.test_output import Owner
from tests.test_relay import LogCapture


class WriterBudgetTests(SynchronousTestCase):
    """
    Writers sharing one budget, each paused (its consumer reads nothing).
    """

    def setUp(self):
        self.budget = PendingBudget(100)
        self.portStats = PortStats()
        self.backplaneStats = BackplaneStats()
        self.log = LogCapture(self)

    def writer(self, slow: SlowPolicy = "drop",
               max_pending: int = 1000) -> tuple[BoundedWriter, Owner, StringTransport]:
        owner, transport = Owner(), StringTransport()
        writer = BoundedWriter(owner, transport, Limits(max_pending=max_pending, slow=slow),
                               name="NEWS", counters=(self.portStats, self.backplaneStats),
                               budget=self.budget)
        transport.registerProducer(writer, True)
        writer.pauseProducing()
        return writer, owner, transport

    def test_counted(self):
        """
        What waits counts on the budget, and leaves it as it is written,
        or forgotten.
        """
        a, _, _ = self.writer()
        b, _, _ = self.writer()
        a.deliver(b"one\n", 1)
        b.deliver(b"three\n", 1)
        a.deliver(b"two\n", 1)
        self.assertEqual(self.budget.pending, 14)
        self.assertEqual(list(self.budget.holders), [a, b])
        a.resumeProducing()
        self.assertEqual(self.budget.pending, 6)
        self.assertEqual(list(self.budget.holders), [b])
        b.discard()
        self.assertEqual((self.budget.pending, len(self.budget.holders)), (0, 0))

    def test_flushReleases(self):
        a, _, transport = self.writer()
        a.deliver(b"one\n", 1)
        a.flush()
        self.assertEqual(transport.value(), b"one\n")
        self.assertEqual((self.budget.pending, len(self.budget.holders)), (0, 0))

    def test_furthestBehindDropsFirst(self):
        """
        With C{slow = "drop"}, the subscriber holding the most forgets what
        waits for it, counted as missed; the others keep theirs.
        """
        small, _, smallOut = self.writer()
        big, bigOwner, bigOut = self.writer()
        asking, _, askingOut = self.writer()
        small.deliver(b"s" * 19 + b"\n", 1)
        big.deliver(b"b" * 29 + b"\n", 1)
        big.deliver(b"b" * 29 + b"\n", 1)
        asking.deliver(b"a" * 9 + b"\n", 1)
        self.assertEqual(self.budget.pending, 90)
        asking.deliver(b"x" * 19 + b"\n", 1)  # 110 > 100: big (60 bytes) goes first
        self.assertEqual((small.pending, big.pending, asking.pending), (20, 0, 30))
        self.assertEqual(self.budget.pending, 50)
        self.assertEqual((big.dropped, small.dropped, asking.dropped), (2, 0, 0))
        self.assertEqual((self.budget.dropped, self.budget.cuts, self.budget.disconnects),
                         (2, 1, 0))
        self.assertEqual((self.portStats.dropped, self.backplaneStats.dropped), (2, 2))
        self.assertFalse(bigOut.disconnecting)
        [warning] = self.log.matching("max_pending_total", LogLevel.warn)
        self.assertEqual((warning["peer"], warning["limit"]), (Owner.peer, 100))
        # It goes on, and says what it missed once it catches up.
        big.deliver(b"later\n", 1)
        big.resumeProducing()
        self.assertEqual(bigOut.value(), b"later\n")
        self.assertEqual(bigOwner.caughtUp, [2])
        small.resumeProducing()
        asking.resumeProducing()
        self.assertEqual(smallOut.value(), b"s" * 19 + b"\n")
        self.assertEqual(askingOut.value(), b"a" * 9 + b"\n" + b"x" * 19 + b"\n")
        self.assertEqual(self.budget.pending, 0)

    def test_furthestBehindDisconnectedFirst(self):
        """
        With C{slow = "disconnect"}, the subscriber holding the most is
        aborted (and told), counted as a disconnect; and it gets nothing
        more even if handed more.
        """
        big, bigOwner, bigOut = self.writer(slow="disconnect")
        other, otherOwner, otherOut = self.writer(slow="disconnect")
        big.deliver(b"b" * 59 + b"\n", 1)
        other.deliver(b"o" * 29 + b"\n", 1)
        other.deliver(b"o" * 29 + b"\n", 1)
        self.assertEqual(self.budget.pending, 60)
        self.assertTrue(bigOut.disconnected)
        self.assertEqual((bigOwner.tooSlow, otherOwner.tooSlow), (1, 0))
        self.assertEqual((self.budget.disconnects, self.budget.cuts, self.budget.dropped),
                         (1, 1, 0))
        self.assertEqual((self.portStats.slow_disconnects,
                          self.backplaneStats.slow_disconnects), (1, 1))
        big.deliver(b"more\n", 1)
        self.assertEqual((big.pending, self.budget.pending), (0, 60))
        self.assertFalse(otherOut.disconnecting)
        [warning] = self.log.matching("Disconnecting slow subscriber", LogLevel.warn)
        self.assertEqual((warning["pending"], warning["limit"]), (60, 100))

    def test_eachHisOwnPolicy(self):
        """
        The furthest behind applies its own port's policy, whatever the
        policy of the one that asked for room.
        """
        dropper, _, dropperOut = self.writer(slow="drop")
        disconnecter, _, _ = self.writer(slow="disconnect")
        dropper.deliver(b"d" * 69 + b"\n", 1)
        disconnecter.deliver(b"x" * 39 + b"\n", 1)
        self.assertEqual((dropper.pending, disconnecter.pending), (0, 40))
        self.assertFalse(dropperOut.disconnecting)
        self.assertEqual(dropper.dropped, 1)

    def test_askingIsFurthestBehind(self):
        """
        When the writer that asks for room is itself furthest behind, it
        forgets what waits for it and the chunk too (C{"drop"}), or is
        disconnected.
        """
        asking, _, _ = self.writer()
        other, _, _ = self.writer()
        asking.deliver(b"a" * 59 + b"\n", 1)
        other.deliver(b"o" * 29 + b"\n", 1)
        asking.deliver(b"n" * 19 + b"\n", 1)
        self.assertEqual((asking.pending, other.pending, asking.dropped), (0, 30, 2))
        self.assertEqual(self.budget.dropped, 2)
        disconnecter, owner, transport = self.writer(slow="disconnect")
        disconnecter.deliver(b"d" * 59 + b"\n", 1)
        disconnecter.deliver(b"d" * 19 + b"\n", 1)
        self.assertTrue(transport.disconnected)
        self.assertEqual((owner.tooSlow, self.budget.disconnects, self.budget.pending), (1, 1, 30))

    def test_chunkLargerThanTheBound(self):
        """
        A chunk that cannot fit even with nothing else waiting: every other
        holder is cut, then the asking writer applies its policy to it.
        """
        other, _, _ = self.writer()
        asking, _, _ = self.writer()
        other.deliver(b"o\n", 1)
        asking.deliver(b"x" * 200 + b"\n", 1)
        self.assertEqual((other.dropped, asking.dropped, self.budget.pending), (1, 1, 0))

    def test_perSubscriberBoundStillApplies(self):
        """
        max_pending applies inside the budget, as before.
        """
        a, _, _ = self.writer(max_pending=10)
        a.deliver(b"12345678\n", 1)
        a.deliver(b"12345678\n", 1)
        self.assertEqual((a.pending, a.dropped, self.budget.pending, self.budget.dropped),
                         (9, 1, 9, 0))
        self.assertEqual(self.budget.cuts, 0)

    def test_unbounded(self):
        """
        Without a limit a budget only counts; a writer without a budget has
        one of its own.
        """
        budget = PendingBudget()
        self.assertFalse(budget.bounded)
        self.assertIsNone(budget.report()["pending_limit_bytes"])
        writer = BoundedWriter(Owner(), StringTransport(), Limits(), name="NEWS")
        writer.pauseProducing()
        writer.deliver(b"x\n", 1)
        self.assertEqual(writer.pending, 2)
        self.assertRaises(ValueError, PendingBudget, -1)

    def test_report(self):
        a, _, _ = self.writer()
        a.deliver(b"x" * 9 + b"\n", 1)
        self.assertEqual(self.budget.report(), {
            "pending_bytes": 10, "pending_limit_bytes": 100, "pending_subscribers": 1,
            "pending_cuts": 0, "pending_dropped": 0, "pending_disconnects": 0})


def pending(protocol: SubscribeTo) -> int:
    assert protocol.output is not None
    return protocol.output.pending


class ServiceBudgetTests(SynchronousTestCase):
    """
    Line subscribers of a service's backplanes, over StringTransports that
    read nothing: what waits for all of them stays within the service's
    bound, and returns to zero once they are gone.
    """

    def setUp(self):
        self.service = BackplaneService(budget=PendingBudget(1000))
        self.news = self.service.create("NEWS")
        self.prices = self.service.create("PRICES")
        LogCapture(self)

    def subscriber(self, name: str, slow: SlowPolicy) -> tuple[SubscribeTo, StringTransport]:
        factory = SubscribeToFactory(self.service, name,
                                     limits=Limits(max_pending=600, slow=slow))
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, SubscribeTo)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.pauseProducing()  # its buffer is full: it reads nothing
        return protocol, transport

    def test_sharedByTheBackplanes(self):
        self.assertIs(self.news.budget, self.service.budget)
        self.assertIs(self.prices.budget, self.service.budget)
        self.assertEqual(Backplane("alone").budget.limit, DEFAULT_MAX_PENDING_TOTAL)
        self.assertEqual(BackplaneService().budget.limit, DEFAULT_MAX_PENDING_TOTAL)

    def test_boundedAcrossBackplanes(self):
        """
        Subscribers of two backplanes, the newest reading nothing longest:
        the total never passes the bound, the one furthest behind is cut
        first, with its own policy, and the figures add up.
        """
        budget = self.service.budget
        early = [self.subscriber("NEWS", "drop") for _ in range(2)]
        news = self.news
        for _ in range(10):
            news.publishLines(b"n" * 49 + b"\n", 1)  # 2 x 500 bytes
        late = [self.subscriber("PRICES", "disconnect") for _ in range(3)]
        for _ in range(2):
            self.prices.publishLines(b"p" * 99 + b"\n", 1)  # 3 x 200 bytes: 1,600 > 1,000
        self.assertLessEqual(budget.pending, 1000)
        # The first early subscriber (500 bytes, furthest behind) forgot
        # its 10 messages; the second one next; the late ones are intact.
        self.assertEqual([pending(p) for p, _ in early], [0, 0])
        self.assertEqual([p.dropped for p, _ in early], [10, 10])
        self.assertEqual([pending(p) for p, _ in late], [200, 200, 200])
        self.assertEqual(budget.pending, 600)
        self.assertEqual((budget.cuts, budget.dropped, budget.disconnects), (2, 20, 0))
        self.assertEqual(news.stats.dropped, 20)
        # Now the late ones are furthest behind: a disconnect, with their policy.
        self.prices.publishLines(b"q" * 199 + b"\n", 1)  # 3 x 200 more: 1,200 > 1,000
        self.assertEqual(budget.disconnects, 1)
        self.assertTrue(late[0][1].disconnected)
        self.assertEqual(self.prices.stats.slow_disconnects, 1)
        self.assertLessEqual(budget.pending, 1000)
        self.assertEqual(budget.pending, 800)
        # They leave: everything returns.
        for protocol, _ in early + late:
            protocol.connectionLost(None)
        self.assertEqual((budget.pending, len(budget.holders)), (0, 0))

    def test_readersAreUntouched(self):
        """
        A subscriber that reads (its transport never pauses it) holds
        nothing on the budget and is never cut.
        """
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(slow="drop"))
        reader = factory.buildProtocol(None)
        assert isinstance(reader, SubscribeTo) and reader.output is None
        readerOut = StringTransport()
        reader.makeConnection(readerOut)
        self.subscriber("NEWS", "drop")
        for i in range(100):
            self.news.publishLines(b"%04d\n" % i, 1)
        self.assertEqual(readerOut.value(), b"".join(b"%04d\n" % i for i in range(100)))
        self.assertEqual(reader.dropped, 0)
        self.assertLessEqual(self.service.budget.pending, 600)


class WebSocketBudgetTests(SynchronousTestCase):
    """
    WebSocket subscribers count on the service's budget like line ones, and
    release it when they leave.
    """

    def test_countedAndReleased(self):
        import txaio

        from backplane.websocket import WebSocketFactory
        from tests.test_websocket import gone, opened

        clock = Clock()
        self.patch(txaio.tx.config, "loop", clock)
        service = BackplaneService(budget=PendingBudget(1000))
        news = service.create("NEWS")
        factory = WebSocketFactory(service, subscribe_to="NEWS",
                                   limits=Limits(max_pending=800, slow="drop"))
        first, firstOut = opened(factory, ("127.0.0.1", 1))
        second, secondOut = opened(factory, ("127.0.0.1", 2))
        first.pauseProducing()
        second.pauseProducing()
        for _ in range(4):
            news.publish(b"x" * 123)  # 125 bytes of frame each, for each of them
        self.assertEqual(service.budget.pending, 1000)
        # The first, as far behind as the second and asking first, forgets
        # its 500 bytes and the new message.
        news.publish(b"y" * 123)
        self.assertEqual((first.dropped, second.dropped), (5, 0))
        self.assertEqual(service.budget.pending, 625)
        gone(first, firstOut)
        gone(second, secondOut)
        self.assertEqual((service.budget.pending, len(service.budget.holders)), (0, 0))


class LimitsConfigTests(SynchronousTestCase):
    """
    [limits] max_pending_total: its default, its bounds, and what it bounds.
    """

    def parse(self, limits: dict[str, object] | None = None, **listen: object) -> Config:
        document: dict[str, object] = {
            "backplane": {"NEWS": {}},
            "listen": [{"endpoint": "tcp:0", "subscribe_to": "NEWS", **listen}],
        }
        if limits is not None:
            document["limits"] = limits
        return parse_config(document)

    def test_default(self):
        config = self.parse()
        self.assertEqual(config.limits.max_pending_total, DEFAULT_MAX_PENDING_TOTAL)
        self.assertEqual(DEFAULT_MAX_PENDING_TOTAL, 256 * 1024 * 1024)

    def test_set(self):
        config = self.parse({"max_pending_total": 16777216})
        self.assertEqual(config.limits.max_pending_total, 16 * 1024 * 1024)

    def test_bounded(self):
        for value, message in [
            (1000, "limits.max_pending_total: must be 1048576 or more"),
            (1024 ** 4 + 1, "limits.max_pending_total: must be 1099511627776 or less"),
            ("256 MiB", "limits.max_pending_total: must be an integer"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse({"max_pending_total": value})
            self.assertIn(message, str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            self.parse({"max_pending": 1})
        self.assertIn("unknown key 'max_pending'", str(caught.exception))

    def test_maxPendingInside(self):
        with self.assertRaises(ConfigError) as caught:
            self.parse({"max_pending_total": 2097152}, max_pending=4194304)
        self.assertIn("listen[1].max_pending: must be at most [limits] max_pending_total "
                      "(2097152)", str(caught.exception))

    def test_built(self):
        from twisted.internet.testing import MemoryReactorClock

        from backplane.build import buildService

        config = self.parse({"max_pending_total": 16777216})
        reactor: Any = MemoryReactorClock()
        service = buildService(config, reactor=reactor)
        self.assertEqual(service.budget.limit, 16 * 1024 * 1024)
        self.assertIs(service.get("NEWS").budget, service.budget)


class MetricsTests(SynchronousTestCase):
    def test_pendingMetrics(self):
        """
        /metrics has the figures, counters ending in _total, and no limit
        gauge without a bound.
        """
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import CollectorRegistry

        from backplane.metrics import StatsCollector
        from tests.helpers import metricSamples, sample

        budget = PendingBudget(4096)
        budget.pending, budget.cuts, budget.dropped, budget.disconnects = 100, 2, 7, 1

        class Collector:
            def __init__(self, budget):
                self.budget = budget

            def collect(self):
                return StatsCollector.pending(self.budget.report())

        registry = CollectorRegistry()
        registry.register(Collector(budget))
        samples = metricSamples(generate_latest(registry).decode())
        self.assertEqual(sample(samples, "backplane_pending_bytes"), 100)
        self.assertEqual(sample(samples, "backplane_pending_limit_bytes"), 4096)
        self.assertEqual(sample(samples, "backplane_pending_subscribers"), 0)
        self.assertEqual(sample(samples, "backplane_pending_cuts_total"), 2)
        self.assertEqual(sample(samples, "backplane_pending_dropped_total"), 7)
        self.assertEqual(sample(samples, "backplane_pending_disconnects_total"), 1)
        registry = CollectorRegistry()
        registry.register(Collector(PendingBudget()))
        self.assertNotIn("backplane_pending_limit_bytes ",
                         generate_latest(registry).decode())
