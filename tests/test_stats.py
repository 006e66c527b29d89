"""
Statistics sources (IStatsSource) without a network: a port, a clock, and
how the monitor finds them.
"""

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from backplane import BackplaneService, PublishToFactory
from backplane.interfaces import IStatsSource
from backplane.ports import ListenService
from backplane.protocols import Limits
from backplane.testing import connect, timeSource
from tests.helpers import section


@implementer(IStatsSource)
class FakeRelay(MultiService):
    """
    What a relay of another module looks like to the monitor: a source
    with services of its own below it.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.setName(name)

    def report(self) -> dict[str, object]:
        return {"name": self.name, "kind": "connect", "state": "backoff",
                "counters": {"connects": 2, "lines_in": 7}, "gauges": {"buffered": 3}}


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """
    Listens at once on C{port}, or once the test fires C{listening}.
    """

    def __init__(self, port: IListeningPort | None = None) -> None:
        self.port = port
        self.listening: Deferred[IListeningPort] | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        if self.listening is not None:
            return self.listening
        assert self.port is not None
        return succeed(self.port)


@implementer(IListeningPort)
class FakePort:
    def startListening(self):
        pass

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 1500)

    def stopListening(self):
        return None


class ListenStatsTests(SynchronousTestCase):
    def setUp(self):
        self.service = BackplaneService()
        self.service.create("NEWS")
        self.factory = PublishToFactory(self.service, "NEWS", limits=Limits(max_clients=1))
        self.port = ListenService(FakeEndpoint(FakePort()), self.factory,
                                  description="tcp:1500", where="listen[1]")
        self.port.setName("listen[1]")

    def test_providesIStatsSource(self):
        verifyObject(IStatsSource, self.port)

    def test_stopped(self):
        stats = self.port.report()
        self.assertEqual(stats["name"], "listen[1]")
        self.assertEqual(stats["kind"], "listen")
        self.assertEqual(stats["state"], "stopped")
        self.assertEqual(stats["gauges"], {"clients": 0, "handshakes": 0})
        self.assertEqual(stats["info"], {"endpoint": "tcp:1500", "protocol": "lines",
                                         "address": None, "publish_to": "NEWS",
                                         "subscribe_to": None})

    def test_countsWhatClientsDo(self):
        self.port.startService()
        protocol, _ = connect(self.factory)
        protocol.dataReceived(b"a\nb\n")
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)))
        stats = self.port.report()
        self.assertEqual(stats["state"], "listening")
        self.assertEqual(section(stats, "info")["address"], "127.0.0.1:1500")
        self.assertEqual(stats["gauges"], {"clients": 1, "handshakes": 0})
        self.assertEqual(stats["counters"], {
            "accepted": 1, "refused": 1, "disallowed": 0, "tls_failures": 0, "overlong": 0,
            "slow_disconnects": 0, "dropped": 0, "messages_in": 2, "bytes_in": 4, "resumes": 0,
            "gaps": 0, "bad_requests": 0, "acknowledged": 0, "deduplicated": 0,
            "store_failures": 0, "handshake_timeouts": 0, "handshakes_evicted": 0,
            "bad_heads": 0, "idle_timeouts": 0, "idle_discarded": 0,
            "discarded_bytes": 0, "http_requests": 0,
        })

    def test_starting(self):
        """
        An endpoint that has not listened yet: starting.
        """
        listening: Deferred[IListeningPort] = Deferred()
        endpoint = FakeEndpoint()
        endpoint.listening = listening
        port = ListenService(endpoint, self.factory, description="x")
        port.startService()
        self.assertEqual(port.report()["state"], "starting")
        listening.callback(FakePort())
        self.assertEqual(port.report()["state"], "listening")

    def test_failed(self):
        listening: Deferred[IListeningPort] = Deferred()
        endpoint = FakeEndpoint()
        endpoint.listening = listening
        port = ListenService(endpoint, self.factory, description="x")
        port.startService()
        listening.errback(OSError("no"))
        self.assertEqual(port.report()["state"], "failed")
        self.flushLoggedErrors()


class ClockStatsTests(SynchronousTestCase):
    def test_published(self):
        service = BackplaneService()
        source, clock = timeSource(service.create("TIME"), interval=2.0)
        source.setName("clock[1]")
        verifyObject(IStatsSource, source)
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(source.report(), {
            "name": "clock[1]", "kind": "clock", "state": "running",
            "counters": {"published": 3}, "gauges": {},
            "info": {"publish_to": "TIME", "interval": 2.0},
        })
        source.stopService()
        self.assertEqual(source.report()["state"], "stopped")


class FindingSourcesTests(SynchronousTestCase):
    def test_inOrderNotBelowASource(self):
        from backplane.monitor import statsSources

        service = BackplaneService()
        service.create("NEWS")
        relay = FakeRelay("connect[1]")
        Service().setServiceParent(relay)  # below a source: it speaks for it
        group = MultiService()
        inner = FakeRelay("inner")
        inner.setServiceParent(group)
        plain = Service()
        for child in (relay, plain, group):
            child.setServiceParent(service)
        self.assertEqual(statsSources(service), [relay, inner])


class OtherSourcesTests(SynchronousTestCase):
    """
    The relay, the file sink and the Redis bridge report through the same
    interface.
    """

    def test_relay(self):
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from backplane.relay import RelayFactory, RelayService
        from tests.test_relay import FakeEndpoint as FakeClientEndpoint

        service = BackplaneService()
        service.create("IN")
        out = service.create("OUT")
        relay = RelayFactory(service, "IN", subscribe_to="OUT", buffer=10, clock=Clock())
        relayService = RelayService(FakeClientEndpoint(), relay, description="tcp:up:1600")
        relayService.setName("connect[1]")
        verifyObject(IStatsSource, relayService)
        out.publishMany([b"a", b"b"])  # no upstream yet: buffered
        report = relayService.report()
        self.assertEqual((report["name"], report["kind"]), ("connect[1]", "connect"))
        self.assertEqual(report["gauges"], {"buffered": 2, "connected": 0})
        self.assertEqual(report["info"], {"endpoint": "tcp:up:1600", "publish_to": "IN",
                                          "subscribe_to": "OUT"})
        protocol = relay.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"x\ny\n")
        report = relayService.report()
        self.assertEqual(report["state"], "connected")
        self.assertEqual(section(report, "counters")["lines_in"], 2)
        self.assertEqual(section(report, "counters")["lines_out"], 2)
        self.assertEqual(report["gauges"], {"buffered": 0, "connected": 1})

    def test_fileSink(self):
        from backplane.sinks import FileSink
        from tests.helpers import tempDir

        service = BackplaneService()
        backplane = service.create("LOG")
        sink = FileSink(backplane, str(tempDir(self) / "log.data"))
        sink.setName("file[1]")
        verifyObject(IStatsSource, sink)
        self.assertEqual(sink.report()["state"], "stopped")
        sink.startService()
        backplane.publishMany([b"one", b"two"])
        self.assertEqual(sink.report()["gauges"], {"pending": 8})
        sink.flush()
        report = sink.report()
        self.assertEqual(report["state"], "writing")
        self.assertEqual(section(report, "counters")["lines_written"], 2)
        self.assertEqual(report["gauges"], {"pending": 0})
        self.assertEqual(section(report, "info")["subscribe_to"], "LOG")
        sink.stopService()

    def test_redisBridge(self):
        from twisted.internet.testing import MemoryReactorClock

        from backplane.redis.bridge import RedisBridge

        service = BackplaneService()
        service.create("NEWS")
        bridge = RedisBridge(service, "redis://user:secret@10.0.0.5:6380/0", names=["NEWS"],
                             node_id="n1", reactor=MemoryReactorClock())
        bridge.setName("redis")
        verifyObject(IStatsSource, bridge)
        report = bridge.report()
        self.assertEqual((report["kind"], report["state"]), ("redis", "stopped"))
        self.assertEqual(report["gauges"], {"connected": 0, "queued": 0, "last_outage": 0.0,
                                            "last_outage_dropped": 0,
                                            "last_outage_unconfirmed": 0})
        self.assertEqual(section(report, "counters")["messages_out"], 0)
        self.assertEqual(section(report, "info")["node"], "n1")
        self.assertNotIn("secret", str(report["info"]), "no password in the statistics")


class AcksPortStatsTests(SynchronousTestCase):
    def test_publishers(self) -> None:
        """
        An acks = true port reports what each publisher id did.
        """
        from twisted.internet.task import Clock

        from backplane.acks import AckingFactory

        service = BackplaneService()
        service.create("LOG")
        factory = AckingFactory(service, publish_to="LOG", ack_lines=2, clock=Clock())
        port = ListenService(FakeEndpoint(FakePort()), factory, description="tcp:1511")
        protocol, _ = connect(factory)
        protocol.dataReceived(b"HELLO p1 0\na\nb\n")
        report = port.report()
        self.assertEqual(report["publishers"],
                         {"p1": {"connections": 1, "acknowledged": 2, "deduplicated": 0}})
        counters = report["counters"]
        assert isinstance(counters, dict)
        self.assertEqual(counters["acknowledged"], 2)
