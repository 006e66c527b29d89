"""
Acknowledged publishing, deterministically: L{backplane.acks} on a
L{StringTransport} and a L{Clock}, with no history, a memory history and a
disk store.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService
from backplane.acks import AckingFactory, AckingProtocol
from backplane.history import DiskStore, MemoryHistory
from backplane.testing import Recorder, connect, disconnect, sentLines


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(first, last + 1))


class AckTests(SynchronousTestCase):
    history: object = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BackplaneService()
        self.log = self.service.create("LOG", history=self.makeHistory())
        self.recorder = Recorder.on(self.log)
        self.factory = AckingFactory(self.service, publish_to="LOG", ack_lines=100,
                                     ack_interval=0.5, clock=self.clock)

    def makeHistory(self) -> MemoryHistory | DiskStore | None:
        return None

    def published(self) -> list[bytes]:
        return self.recorder.messages

    def test_ackLinesAndInterval(self) -> None:
        """
        An ACK every ack_lines lines, and ack_interval after a line that has
        not been acknowledged; cumulative.
        """
        protocol, transport = connect(self.factory)
        protocol.dataReceived(lines(1, 150))
        self.assertEqual(sentLines(transport), [b"ACK 150"])
        protocol.dataReceived(lines(151, 160))
        self.assertEqual(sentLines(transport), [b"ACK 150"])
        self.clock.advance(0.5)
        self.assertEqual(sentLines(transport), [b"ACK 150", b"ACK 160"])
        self.clock.advance(5)
        self.assertEqual(len(sentLines(transport)), 2, "nothing new: no ACK")
        self.assertEqual(len(self.published()), 160)
        self.assertEqual(self.factory.stats.acknowledged, 160)

    def test_thousandLines(self) -> None:
        protocol, transport = connect(self.factory)
        for i in range(1, 1001):
            protocol.dataReceived(b"line %d\n" % i)
        self.clock.advance(1)
        self.assertEqual(sentLines(transport)[-1], b"ACK 1000")

    def test_endOfInputAcksAtOnce(self) -> None:
        """
        A publisher that ends its input (a FIN) after a last line without a
        newline: the line is published, the last ACK sent at once, and the
        connection closed.
        """
        protocol, transport = connect(self.factory)
        assert isinstance(protocol, AckingProtocol)
        protocol.dataReceived(b"HELLO pub-2 0\none\ntwo")
        protocol.readConnectionLost()
        self.assertEqual(self.published(), [b"one", b"two"])
        self.synced()
        self.assertEqual(sentLines(transport), [b"ACK 2"])
        self.assertTrue(transport.disconnecting)

    def synced(self) -> None:
        """
        Let what was published become durable (with a store).
        """

    def test_helloDeduplicates(self) -> None:
        """
        A publisher that resends what was not acknowledged, after HELLO with
        what was: each line is published once.
        """
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"HELLO pub-1 0\n" + lines(1, 150))
        self.assertEqual(sentLines(transport), [b"ACK 150"])
        protocol.dataReceived(lines(151, 170))  # published, not yet acknowledged
        disconnect(protocol, transport)
        again, transport = connect(self.factory)
        again.dataReceived(b"HELLO pub-1 150\n" + lines(151, 180))
        self.clock.advance(0.5)
        self.assertEqual(sentLines(transport), [b"ACK 30"])
        self.assertEqual(self.published(), [b"line %d" % i for i in range(1, 181)])
        self.assertEqual(self.factory.stats.deduplicated, 20)
        self.assertEqual(self.factory.publisherStats.snapshot(), {
            "pub-1": {"connections": 2, "acknowledged": 180, "deduplicated": 20}})

    def test_helloInPieces(self) -> None:
        protocol, _transport = connect(self.factory)
        for byte in b"HELLO p 0\nx\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.published(), [b"x"])

    def test_badHello(self) -> None:
        for hello in [b"HELLO", b"HELLO a", b"HELLO a -1", b"HELLO a 1x", b"HELLO " + b"a" * 65
                      + b" 0", b"HELLO a b c", b"HELLO a 1"]:
            protocol, transport = connect(self.factory)
            protocol.dataReceived(hello + b"\nline\n")
            sent = sentLines(transport)
            self.assertEqual(len(sent), 1, hello)
            self.assertTrue(sent[0].startswith(b"ERR "), sent)
            self.assertLess(len(sent[0]), 200)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.published(), [])
        self.assertEqual(self.factory.stats.bad_requests, 7)

    def test_takeOver(self) -> None:
        """
        A second connection with the same publisher id closes the first.
        """
        old, oldTransport = connect(self.factory)
        old.dataReceived(b"HELLO p 0\n" + lines(1, 5))
        new, _newTransport = connect(self.factory)
        new.dataReceived(b"HELLO p 0\n" + lines(1, 7))
        self.assertTrue(oldTransport.disconnecting)
        old.dataReceived(lines(6, 9))
        self.assertEqual(self.published(), [b"line %d" % i for i in range(1, 8)])

    def test_ackNotReadBounded(self) -> None:
        """
        A client that does not read its ACKs: the latest replaces the
        others.
        """
        protocol, transport = connect(self.factory)
        assert transport.producer is not None
        transport.producer.pauseProducing()
        for i in range(10):
            protocol.dataReceived(lines(i * 100 + 1, i * 100 + 100))
        self.assertEqual(transport.value(), b"")
        transport.producer.resumeProducing()
        self.assertEqual(sentLines(transport), [b"ACK 1000"])

    def test_refusesWrongPorts(self) -> None:
        self.assertRaises(ValueError, AckingFactory, self.service, subscribe_to="LOG")
        self.assertRaises(ValueError, AckingFactory, self.service, publish_to="LOG",
                          subscribe_to="LOG")


class MemoryHistoryAckTests(AckTests):
    def makeHistory(self) -> MemoryHistory:
        return MemoryHistory(10000)


class StoreAckTests(AckTests):
    """
    With a store: an ACK only once the lines are fsynced, and the marks
    survive a restart.
    """

    def makeHistory(self) -> DiskStore:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.storeClock = Clock()
        store = DiskStore.open(self.folder, fsyncInterval=0.1, clock=self.storeClock)
        self.addCleanup(store.close)
        return store

    def synced(self) -> None:
        self.storeClock.advance(0.1)

    def test_ackLinesAndInterval(self) -> None:
        protocol, transport = connect(self.factory)
        protocol.dataReceived(lines(1, 150))
        self.assertEqual(sentLines(transport), [], "not yet on disk")
        self.storeClock.advance(0.1)
        self.assertEqual(sentLines(transport), [b"ACK 150"])

    def test_thousandLines(self) -> None:
        protocol, transport = connect(self.factory)
        for i in range(1, 1001):
            protocol.dataReceived(b"line %d\n" % i)
            self.storeClock.advance(0.01)
        self.clock.advance(1)
        self.storeClock.advance(0.1)
        self.assertEqual(sentLines(transport)[-1], b"ACK 1000")

    def test_helloDeduplicates(self) -> None:
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"HELLO pub-1 0\n" + lines(1, 170))
        self.storeClock.advance(0.1)
        self.assertEqual(sentLines(transport), [b"ACK 170"])
        disconnect(protocol, transport)
        store = self.log.history
        assert isinstance(store, DiskStore)
        store.close()
        reopened = DiskStore.open(self.folder, clock=self.storeClock)
        self.addCleanup(reopened.close)
        self.assertEqual(reopened.mark("pub-1"), 170)
        service = BackplaneService()
        log = service.create("LOG", history=reopened)
        recorder = Recorder.on(log)
        factory = AckingFactory(service, publish_to="LOG", clock=self.clock)
        again, transport = connect(factory)
        again.dataReceived(b"HELLO pub-1 150\n" + lines(151, 180))
        self.assertEqual(recorder.messages, [b"line %d" % i for i in range(171, 181)])

    def test_ackNotReadBounded(self) -> None:
        protocol, transport = connect(self.factory)
        assert transport.producer is not None
        transport.producer.pauseProducing()
        protocol.dataReceived(lines(1, 1000))
        self.storeClock.advance(0.1)
        self.assertEqual(transport.value(), b"")
        transport.producer.resumeProducing()
        self.assertEqual(sentLines(transport), [b"ACK 1000"])


class MarkRecordTests(SynchronousTestCase):
    """
    A publisher's mark is written with its lines, in the same write: a
    store abandoned as a killed process leaves it (no fsync, no metadata)
    still knows it when it opens again.
    """

    def test_markSurvivesAKill(self) -> None:
        from tests.test_history import abandon, folderOf

        folder = folderOf(self)
        clock = Clock()
        store = DiskStore.open(folder, fsyncInterval=10, clock=clock)
        store.append(b"a\nb\n", 2, ("pub", 2))
        store.append(b"c\n", 1)
        store.append(b"d\n", 1, ("pub", 3))
        store.append(b"e\n", 1, ("other", 7))
        self.assertEqual(store.read(0, 1000), (b"a\nb\nc\nd\ne\n", 5, 1))
        abandon(store)
        again = DiskStore.open(folder, clock=clock)
        self.addCleanup(again.close)
        self.assertEqual((again.mark("pub"), again.mark("other")), (3, 7))
        self.assertEqual(again.last, 5)
        self.assertEqual(again.read(2, 1000), (b"c\nd\ne\n", 3, 3))
        self.assertEqual(again.read(3, 1000), (b"d\ne\n", 2, 4))

    def test_formatOneStillReads(self) -> None:
        """
        A store written before mark records (format 1) opens as it was.
        """
        import json
        import os

        from tests.test_history import folderOf

        folder = folderOf(self)
        store = DiskStore.open(folder, clock=Clock())
        store.append(b"old\n", 1)
        store.close()
        meta = os.path.join(folder, "meta.json")
        with open(meta) as f:
            metadata = json.load(f)
        self.assertEqual(metadata["format"], 2)
        metadata["format"] = 1
        with open(meta, "w") as f:
            json.dump(metadata, f)
        again = DiskStore.open(folder, clock=Clock())
        self.addCleanup(again.close)
        self.assertEqual((again.epoch, again.read(0, 100)), (store.epoch, (b"old\n", 1, 1)))


class PublisherStatsTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        from backplane.acks import PublisherStats

        stats = PublisherStats(limit=3)
        for name in "abcd":
            stats.of(name)["acknowledged"] += 1
        stats.of("b")
        stats.of("e")
        self.assertEqual(list(stats.snapshot()), ["d", "b", "e"])
