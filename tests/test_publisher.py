"""
L{backplane.publisher.Publisher}: users' own publishers to an C{acks = true}
port; unit tests with fakes, then against the real server side over
loopback, through a restart of its port.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from backplane.errors import NotAcknowledged
from backplane.history import StoreError
from backplane.history import disk as diskModule
from backplane.interfaces import IStatsSource
from backplane.publisher import Publisher
from tests.helpers import waitUntil
from tests.test_history import folderOf
from tests.test_relay import FakeEndpoint, lose
from tests.test_relay_acks import Server, data, hello, lines


class PublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def publisher(self, **options) -> Publisher:
        options.setdefault("clock", self.clock)
        return Publisher(self.endpoint, random=lambda: 0.0, **options)

    def test_publishWaitsThenGoesWithHello(self):
        """
        Lines published before the service starts wait; once connected they
        follow HELLO; whenAcknowledged fires at the ACK of the last.
        """
        publisher = self.publisher()
        publisher.publish(b"one")
        publisher.publishMany([b"two", b"three"])
        publisher.publishMany([])
        self.assertEqual(publisher.unacknowledged, 3)
        acknowledged = publisher.whenAcknowledged()
        publisher.startService()
        protocol, transport = self.endpoint.accept()
        self.assertEqual(hello(transport), (publisher.publisherId, 0, b"one\ntwo\nthree\n"))
        protocol.dataReceived(b"ACK 2\n")
        self.assertNoResult(acknowledged)
        self.assertEqual(publisher.unacknowledged, 1)
        protocol.dataReceived(b"ACK 3\n")
        self.successResultOf(acknowledged)
        self.assertEqual((publisher.unacknowledged, publisher.stats.acknowledged), (0, 3))
        self.successResultOf(publisher.whenAcknowledged())
        publisher.stopService()
        lose(protocol, transport, ConnectionDone())

    def test_reconnectsAndResends(self):
        publisher = self.publisher(initialDelay=0.5)
        publisher.startService()
        protocol, transport = self.endpoint.accept()
        publisher.publishMany(lines(1, 4))
        protocol.dataReceived(b"ACK 1\n")
        lose(protocol, transport)
        self.clock.advance(0.5)
        protocol, transport = self.endpoint.accept()
        self.assertEqual(hello(transport), (publisher.publisherId, 1, data(2, 3)))
        self.assertEqual(publisher.stats.resent, 3)
        publisher.stopService()
        lose(protocol, transport, ConnectionDone())

    def test_badLines(self):
        publisher = self.publisher()
        self.assertRaises(TypeError, publisher.publish, "text")
        self.assertRaises(ValueError, publisher.publish, b"two\nlines")
        self.assertRaises(ValueError, publisher.publishMany, [b"fine", b"not\nfine"])
        self.assertRaises(TypeError, publisher.publishMany, [b"fine", 1])
        self.assertEqual(publisher.unacknowledged, 0)

    def test_droppedLinesFailTheWaiters(self):
        publisher = self.publisher(buffer=2)
        publisher.publish(b"a")
        waiting = publisher.whenAcknowledged()
        publisher.publishMany([b"b", b"c"])
        self.assertEqual(publisher.stats.dropped, 1)
        publisher.startService()
        protocol, transport = self.endpoint.accept()
        self.failureResultOf(waiting, NotAcknowledged)
        self.assertTrue(hello(transport)[0].endswith(".1"))
        publisher.stopService()
        lose(protocol, transport, ConnectionDone())

    def test_report(self):
        publisher = self.publisher()
        verifyObject(IStatsSource, publisher)
        publisher.publish(b"a")
        report = publisher.report()
        self.assertEqual((report["name"], report["kind"], report["state"]),
                         ("publisher", "publisher", "connecting"))
        self.assertEqual(report["gauges"], {"buffered": 1, "spooled": 1, "connected": 0})
        self.assertEqual(report["info"], {"endpoint": "FakeEndpoint", "spool": None,
                                          "publisher_id": publisher.publisherId})
        self.assertIn(publisher.publisherId, repr(publisher))

    def test_spoolAcrossProcesses(self):
        """
        With a spool, a publisher started again (another process) has the
        same publisher id and resends what was not acknowledged.
        """
        self.patch(diskModule, "bootId", lambda: "boot-1")
        spool = os.path.join(folderOf(self), "spool")
        publisher = self.publisher(spool=spool)
        publisher.startService()
        protocol, transport = self.endpoint.accept()
        publisher.publishMany(lines(1, 3))
        protocol.dataReceived(b"ACK 1\n")
        waiting = publisher.whenAcknowledged()
        stopped = publisher.stopService()
        lose(protocol, transport, ConnectionDone())
        self.successResultOf(stopped)
        self.failureResultOf(waiting, NotAcknowledged)
        self.assertRaises(StoreError, publisher.publish, b"after the stop")
        again = self.publisher(spool=spool)
        self.assertEqual((again.publisherId, again.unacknowledged), (publisher.publisherId, 2))
        again.startService()
        protocol, transport = self.endpoint.accept()
        self.assertEqual(hello(transport), (publisher.publisherId, 1, data(2, 2)))
        self.assertRaises(StoreError, self.publisher, spool=spool)
        again.stopService()
        lose(protocol, transport, ConnectionDone())


@pytest_twisted.inlineCallbacks
def test_publisherToTheRealServer():
    """
    A Publisher to a real acks = true port, which restarts: whenAcknowledged
    fires once every line is in the backplane, each once, in order.
    """
    server = Server()
    yield server.start()
    publisher = Publisher(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.portNumber),
                          initialDelay=0.05, maxDelay=0.2)
    publisher.startService()
    try:
        publisher.publishMany(lines(1, 100))
        yield publisher.whenAcknowledged()
        assert server.received.messages == lines(1, 100)
        yield server.stop()
        yield waitUntil(lambda: not publisher.relay.connected, what="the connection lost")
        for i in range(101, 301):
            publisher.publish(b"line %d" % i)
        assert publisher.unacknowledged == 200
        done = publisher.whenAcknowledged()
        yield server.start()
        yield done
        assert server.received.messages == lines(1, 300)
        assert publisher.stats.reconnects == 1
    finally:
        yield publisher.stopService()
        if server.port is not None:
            yield server.port.stopListening()
