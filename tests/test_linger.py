"""
C{linger}: a port's write coalescer (L{Linger}) and the L{BoundedWriter}s
that hold their chunks back for it; the config key; a port built with it.
"""

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from backplane.budget import PendingBudget
from backplane.config import read_config
from backplane.output import LINGER_BYTES, LINGER_READ_BYTES, BoundedWriter, Linger
from backplane.protocols import Limits, PortStats, PublishToFactory, SubscribeToFactory
from backplane.service import BackplaneService, BackplaneStats
from tests.test_config import ConfigTestCase
from tests.test_output import Owner, Writes


class LingerTests(SynchronousTestCase):
    """
    Writers sharing one L{Linger}: what they are handed is written at most
    C{delay} after its first byte, all of a writer's chunks in one write.
    """

    def setUp(self):
        self.clock = Clock()
        self.linger = Linger(0.001, self.clock, maxBytes=100)
        self.portStats = PortStats()
        self.backplaneStats = BackplaneStats()
        self.busy()

    def busy(self):
        """
        Make the port busy: a subscriber's lone message goes out at once,
        and what any subscriber is handed in the next C{delay} is held.
        """
        primer, transport = self.writer()
        primer.deliver(b"primer\n", 1)
        self.assertEqual(transport.writes, [b"primer\n"])

    def quiet(self):
        """
        Let a C{delay} pass in which nothing is held: the timer stops.
        """
        self.clock.advance(self.linger.delay)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def writer(self, transport=None, **limits):
        transport = transport if transport is not None else Writes()
        writer = BoundedWriter(Owner(), transport, Limits(**limits), name="NEWS",
                               counters=(self.portStats, self.backplaneStats),
                               linger=self.linger)
        transport.registerProducer(writer, True)
        return writer, transport

    def test_heldBackThenWrittenInOneWrite(self):
        writer, transport = self.writer()
        writer.deliver(b"a\n", 1)
        writer.deliver(b"b\nc\n", 2)
        self.assertEqual(transport.writes, [])
        self.assertEqual(writer.pending, 6, "held bytes are pending")
        self.clock.advance(0.0009)
        self.assertEqual(transport.writes, [])
        self.clock.advance(0.0001)
        self.assertEqual(transport.writes, [b"a\nb\nc\n"])
        self.assertEqual(writer.pending, 0)
        self.quiet()  # no timer once a period passes with nothing held

    def test_aQuietPortWritesAtOnce(self):
        """
        On a quiet port a lone message goes out at once; what comes in the
        next C{delay} is held until then; once a period passes with nothing
        held the port is quiet again.
        """
        self.quiet()
        writer, transport = self.writer()
        writer.deliver(b"lone\n", 1)
        self.assertEqual(transport.writes, [b"lone\n"])
        writer.deliver(b"a\n", 1)
        writer.deliver(b"b\n", 1)
        self.clock.advance(0.0009)
        self.assertEqual(transport.writes, [b"lone\n"])
        self.clock.advance(0.0001)
        self.assertEqual(transport.writes, [b"lone\n", b"a\nb\n"])
        self.quiet()
        writer.deliver(b"again\n", 1)
        self.assertEqual(transport.writes[2:], [b"again\n"])

    def test_steadyTrafficOneWriteADelay(self):
        """
        A message every 0.1 ms for 10 ms: one write a C{delay} (and the
        first at once), and no message waits C{delay} or more.
        """
        self.quiet()
        writer, transport = self.writer()
        written: list[tuple[float, bytes]] = []
        transport.write = lambda data: written.append((self.clock.seconds(), data))
        sent = {}
        for n in range(100):
            sent[b"%d" % n] = self.clock.seconds()
            writer.deliver(b"%d\n" % n, 1)
            self.clock.advance(0.0001)
        for _ in range(20):
            self.clock.advance(0.0001)
        self.assertEqual(b"".join(data for _, data in written),
                         b"".join(b"%d\n" % n for n in range(100)))
        self.assertLessEqual(len(written), 1 + 10 + 1)
        # Less than delay, to the step of this clock (a timer fires at the
        # first step at or after its time).
        waits = [at - sent[line] for at, data in written for line in data.splitlines()]
        self.assertLess(max(waits), 0.001 + 0.0001 + 1e-9)

    def test_deadlineFromTheFirstByte(self):
        """
        Steady traffic does not postpone the write: the deadline runs from
        the first byte held, not from the last.
        """
        writer, transport = self.writer()
        for n in range(9):
            writer.deliver(b"%d\n" % n, 1)
            self.clock.advance(0.0001)
        self.assertEqual(transport.writes, [])
        writer.deliver(b"9\n", 1)
        self.clock.advance(0.0001)  # 1 ms after the first byte
        self.assertEqual(transport.writes, [b"".join(b"%d\n" % n for n in range(10))])
        # Traffic goes on: the next period runs from that write.
        writer.deliver(b"next\n", 1)
        self.clock.advance(0.0009)
        self.assertEqual(len(transport.writes), 1)
        self.clock.advance(0.0001)
        self.assertEqual(transport.writes[1:], [b"next\n"])

    def test_oneTimerForEveryWriterOfThePort(self):
        writers = [self.writer() for _ in range(50)]
        for writer, _ in writers:
            writer.deliver(b"x\n", 1)
            self.clock.advance(0.00001)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.linger.holding, 50)
        self.clock.advance(0.001)
        # Every one is written, the last ones before their own deadline.
        self.assertEqual([t.writes for _, t in writers], [[b"x\n"]] * 50)
        self.assertEqual(self.linger.holding, 0)
        self.quiet()

    def test_sizeBoundWritesAtOnce(self):
        writer, transport = self.writer()
        writer.deliver(b"x" * 59 + b"\n", 1)
        self.assertEqual(transport.writes, [])
        writer.deliver(b"y" * 39 + b"\n", 1)  # 100 bytes: the bound
        self.assertEqual(transport.writes, [b"x" * 59 + b"\n" + b"y" * 39 + b"\n"])
        self.assertEqual(writer.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [], "the timer stops: nobody holds")
        self.clock.advance(0.001)
        writer.deliver(b"z\n", 1)
        self.assertEqual(transport.writes[1:], [b"z\n"], "a quiet port writes at once")

    def test_bigChunkWrittenAtOnce(self):
        writer, transport = self.writer()
        writer.deliver(b"z" * 200 + b"\n", 1)
        self.assertEqual(transport.writes, [b"z" * 200 + b"\n"])
        self.assertEqual(self.linger.holding, 0)

    def test_sizeBoundLeavesTheOthersOnTheTimer(self):
        first, firstTransport = self.writer()
        second, secondTransport = self.writer()
        first.deliver(b"a\n", 1)
        second.deliver(b"b\n", 1)
        second.deliver(b"c" * 99 + b"\n", 1)
        self.assertEqual(secondTransport.writes, [b"b\n" + b"c" * 99 + b"\n"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.001)
        self.assertEqual(firstTransport.writes, [b"a\n"])

    def test_defaultSizeBound(self):
        self.assertEqual(Linger(0.5).maxBytes, LINGER_BYTES)
        self.assertEqual(LINGER_BYTES, 64 * 1024)

    def test_badArguments(self):
        self.assertRaises(ValueError, Linger, 0)
        self.assertRaises(ValueError, Linger, -1.0)
        self.assertRaises(ValueError, Linger, 0.001, maxBytes=0)

    def test_withoutLingerWritesAtOnce(self):
        transport = Writes()
        self.quiet()
        writer = BoundedWriter(Owner(), transport, Limits(), name="NEWS")
        writer.deliver(b"a\n", 1)
        self.assertEqual(transport.writes, [b"a\n"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pausedWhileHoldingKeepsTheOrder(self):
        """
        A writer paused while it holds chunks (its owner wrote to the
        transport, say) keeps them as waiting, ahead of what comes next.
        """
        writer, transport = self.writer(max_pending=1000)
        writer.deliver(b"1\n", 1)
        writer.deliver(b"2\n", 1)
        writer.pauseProducing()
        self.assertEqual(writer.pending, 4)
        self.assertEqual(self.linger.holding, 0)
        writer.deliver(b"3\n", 1)
        self.clock.advance(0.01)
        self.assertEqual(transport.value(), b"")
        writer.resumeProducing()
        self.assertEqual(transport.value(), b"1\n2\n3\n")
        writer.deliver(b"4\n", 1)
        self.clock.advance(0.001)
        self.assertEqual(transport.value(), b"1\n2\n3\n4\n")

    def test_pausedWhileHoldingCountsOnTheBudget(self):
        """
        What a writer held under linger when its transport paused waits
        like anything else: it counts on the service's bound, and, if the
        writer is cut past that bound with C{slow = "drop"}, its messages
        are counted as missed.
        """
        budget = PendingBudget(1024 * 1024)
        writer = BoundedWriter(Owner(), Writes(), Limits(max_pending=1000, slow="drop"),
                               name="NEWS", counters=(self.portStats,), linger=self.linger,
                               budget=budget)
        writer.deliver(b"1\n", 1)
        writer.deliver(b"2\n3\n", 2)
        writer.pauseProducing()
        self.assertEqual((budget.pending, writer.pending), (6, 6))
        self.assertIn(writer, budget.holders)
        writer.overBudget()
        self.assertEqual((budget.pending, writer.pending, budget.dropped), (0, 0, 3))
        self.assertEqual(writer.dropped, 3)

    def test_slowDisconnectStillApplies(self):
        writer, transport = self.writer(max_pending=10)
        transport.bufferSize = 5
        writer.deliver(b"abcdef\n", 1)
        self.clock.advance(0.001)  # written, and the transport is full
        self.assertTrue(writer.paused)
        writer.deliver(b"12345\n", 1)
        writer.deliver(b"123\n", 1)
        self.assertFalse(transport.disconnecting)
        writer.deliver(b"x\n", 1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(writer.owner.tooSlow, 1)
        self.assertEqual(self.portStats.slow_disconnects, 1)

    def test_slowDropStillApplies(self):
        writer, transport = self.writer(max_pending=10, slow="drop")
        transport.bufferSize = 5
        writer.deliver(b"abcdef\n", 1)
        self.clock.advance(0.001)
        writer.deliver(b"1234\n", 1)
        writer.deliver(b"a\nb\nc\n", 3)  # past max_pending: dropped
        self.assertEqual((writer.dropped, self.portStats.dropped), (3, 3))
        transport.resume()
        self.assertEqual(transport.value(), b"abcdef\n1234\n")
        self.assertEqual(writer.owner.caughtUp, [3])

    def test_flushWritesWhatIsHeld(self):
        writer, transport = self.writer()
        writer.deliver(b"a\n", 1)
        writer.deliver(b"b\n", 1)
        writer.flush()
        self.assertEqual(transport.value(), b"a\nb\n")
        self.assertEqual((writer.pending, self.linger.holding), (0, 0))
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"a\nb\n")

    def test_discardForgetsWhatIsHeld(self):
        writer, transport = self.writer()
        other, otherTransport = self.writer()
        writer.deliver(b"a\n", 1)
        other.deliver(b"b\n", 1)
        writer.discard()
        self.assertEqual((writer.pending, self.linger.holding), (0, 1))
        self.clock.advance(0.001)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(otherTransport.value(), b"b\n")

    def test_directSocket(self):
        """
        On a plain TCP connection what was held goes straight to the socket.
        """
        server, client = socket.socketpair()
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        connection = tcp.Connection(server, Protocol(), reactor=MemoryReactor())
        connection.connected = 1
        writer = BoundedWriter(Owner(), connection, Limits(), name="NEWS", linger=self.linger)
        writer.deliver(b"one\n", 1)
        writer.deliver(b"two\n", 1)
        client.setblocking(False)
        self.assertRaises(BlockingIOError, client.recv, 100)
        self.clock.advance(0.001)
        self.assertEqual(client.recv(100), b"one\ntwo\n")
        self.assertEqual(connection.dataBuffer, b"")


class HoldReadingTests(SynchronousTestCase):
    """
    L{Linger.holdReading}: a connection read is not read again until the
    port's timer fires, the one timer its writers share.
    """

    def setUp(self):
        self.clock = Clock()
        self.linger = Linger(0.001, self.clock)

    def test_pausedUntilTheTimer(self):
        transport = StringTransport()
        self.linger.holdReading(transport)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.linger.heldReading, 1)
        self.clock.advance(0.0009)
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(0.0001)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.linger.heldReading, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneTimerForReadersAndWriters(self):
        """
        Held connections and subscribers holding chunks share the port's
        timer: a connection held after the timer started waits less than
        C{delay}, and a writer that stops holding does not stop the timer
        a held connection waits for.
        """
        transport = StringTransport()
        writes = Writes()
        writer = BoundedWriter(Owner(), writes, Limits(), name="NEWS", linger=self.linger)
        writer.deliver(b"first\n", 1)
        writer.deliver(b"a\n", 1)
        self.assertEqual(writes.writes, [b"first\n"])
        self.clock.advance(0.0004)
        self.linger.holdReading(transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        writer.discard()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "a connection is still held")
        self.clock.advance(0.0006)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aLostConnectionStaysUnread(self):
        """
        A plain TCP connection lost while held is not read again when the
        timer fires.
        """
        server, client = socket.socketpair()
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        reactor = MemoryReactor()
        connection = tcp.Connection(server, Protocol(), reactor=reactor)
        connection.connected = 1
        connection.startReading()
        self.linger.holdReading(connection)
        self.assertNotIn(connection, reactor.readers)
        connection.connected = 0
        self.clock.advance(0.001)
        self.assertNotIn(connection, reactor.readers)

    def test_aConnectionHeldTwiceIsResumedOnce(self):
        transport = StringTransport()
        self.linger.holdReading(transport)
        self.linger.holdReading(transport)
        self.assertEqual(self.linger.heldReading, 1)
        self.clock.advance(0.001)
        self.assertEqual(transport.producerState, "producing")


class PortTests(SynchronousTestCase):
    """
    A port with C{linger} has one L{Linger}, which its subscribers share.
    """

    def setUp(self):
        self.clock = Clock()
        self.service = BackplaneService()
        self.backplane = self.service.create("NEWS")

    def subscriber(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def busy(self, factory):
        """
        Make C{factory}'s port busy (its timer running, as after a write
        or a read), so that what its subscribers are handed is held.
        """
        factory.linger.holdReading(StringTransport())

    def test_subscribersShareThePortsLinger(self):
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.002),
                                     clock=self.clock)
        assert factory.linger is not None
        self.assertEqual(factory.linger.delay, 0.002)
        subscribers = [self.subscriber(factory) for _ in range(3)]
        self.backplane.publishLines(b"first\n", 1)
        self.assertEqual([t.value() for _, t in subscribers], [b"first\n"] * 3,
                         "a quiet port writes at once")
        self.backplane.publishLines(b"hello\n", 1)
        self.assertEqual([t.value() for _, t in subscribers], [b"first\n"] * 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.002)
        self.assertEqual([t.value() for _, t in subscribers], [b"first\nhello\n"] * 3)

    def test_oneSinkForThePortsSubscribers(self):
        """
        Under linger the port's plain subscribers of a backplane are one
        sink on it: a chunk is kept once, and each of them gets what was
        kept in one write; the backplane still counts every subscriber.
        """
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                     clock=self.clock)
        subscribers = [self.subscriber(factory) for _ in range(5)]
        self.busy(factory)
        self.assertEqual(len(self.backplane._sinks), 1)
        self.assertEqual(len(self.backplane), 5)
        reached = [self.successResultOf(self.backplane.publish(b"%d" % n)) for n in range(3)]
        self.assertEqual(reached, [5, 5, 5])
        self.assertEqual([t.value() for _, t in subscribers], [b""] * 5)
        self.clock.advance(0.001)
        self.assertEqual([t.value() for _, t in subscribers], [b"0\n1\n2\n"] * 5)
        self.assertEqual(self.backplane.stats.deliveries, 15)
        self.clock.advance(0.001)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_joinerGetsNothingPublishedBeforeIt(self):
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                     clock=self.clock)
        _, first = self.subscriber(factory)
        self.backplane.publish(b"before")
        _, second = self.subscriber(factory)
        self.assertEqual(first.value(), b"before\n", "what was kept is written to the others")
        self.backplane.publish(b"after")
        self.clock.advance(0.001)
        self.assertEqual(first.value(), b"before\nafter\n")
        self.assertEqual(second.value(), b"after\n")

    def test_joinerGetsTheRetainedMessages(self):
        backplane = self.service.create("TIME", retain=1)
        factory = SubscribeToFactory(self.service, "TIME", limits=Limits(linger=0.001),
                                     clock=self.clock)
        backplane.publish(b"noon")
        _, transport = self.subscriber(factory)
        self.assertEqual(transport.value(), b"noon\n")
        _, second = self.subscriber(factory)
        self.assertEqual(second.value(), b"noon\n")
        self.clock.advance(0.01)
        self.assertEqual((transport.value(), second.value()), (b"noon\n", b"noon\n"),
                         "once each")

    def test_leaving(self):
        """
        A subscriber that leaves gets nothing more and is no longer counted;
        once the last has left the group is off the backplane and its timer
        stopped.
        """
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                     clock=self.clock)
        (one, oneTransport), (two, twoTransport) = [self.subscriber(factory) for _ in range(2)]
        self.busy(factory)
        self.backplane.publish(b"x")
        one.connectionLost(None)
        self.assertEqual(len(self.backplane), 1)
        self.clock.advance(0.001)
        self.assertEqual((oneTransport.value(), twoTransport.value()), (b"", b"x\n"))
        self.backplane.publish(b"y")
        two.connectionLost(None)
        self.assertEqual(len(self.backplane), 0)
        self.assertEqual(self.backplane._sinks, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        _, three = self.subscriber(factory)
        self.backplane.publish(b"z")
        self.clock.advance(0.001)
        self.assertEqual(three.value(), b"z\n")

    def test_aClosingSubscriberGetsWhatWasKept(self):
        """
        A subscriber closed by the server (the service stopping, say) gets
        what the group kept for it before its connection closes; the others
        get it at the deadline.
        """
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                     clock=self.clock)
        (closing, closingTransport), (_, staying) = [self.subscriber(factory) for _ in range(2)]
        self.busy(factory)
        self.backplane.publish(b"last words")
        closing.close()
        self.assertEqual(closingTransport.value(), b"last words\n")
        self.assertEqual(staying.value(), b"")
        self.clock.advance(0.001)
        self.assertEqual(staying.value(), b"last words\n")
        self.assertEqual(self.backplane.stats.deliveries, 2)

    def test_aPublisherDoesNotHearItself(self):
        """
        A client that publishes to the backplane it subscribes to holds its
        own chunks back (the group cannot leave its own lines out).
        """
        factory = SubscribeToFactory(self.service, "NEWS", publish_to="NEWS",
                                     limits=Limits(linger=0.001), clock=self.clock)
        (talker, talkerTransport), (_, listenerTransport) = [self.subscriber(factory)
                                                             for _ in range(2)]
        talker.dataReceived(b"mine\n")
        self.clock.advance(0.001)
        self.assertEqual((talkerTransport.value(), listenerTransport.value()), (b"", b"mine\n"))

    def test_slowPoliciesStillApply(self):
        factory = SubscribeToFactory(self.service, "NEWS",
                                     limits=Limits(linger=0.001, max_pending=5, slow="drop"),
                                     clock=self.clock)
        (_, stuck), (_, reader) = [self.subscriber(factory) for _ in range(2)]
        stuck.producer.pauseProducing()
        for n in range(4):
            self.backplane.publish(b"message %d" % n)
            self.clock.advance(0.001)
        self.assertEqual(reader.value(), b"".join(b"message %d\n" % n for n in range(4)))
        self.assertEqual(stuck.value(), b"")
        self.assertEqual(factory.stats.dropped, 4)

    def publisher(self, factory):
        return self.subscriber(factory)

    def test_aPublisherIsReadOnceALinger(self):
        """
        On a port with C{linger} that publishes, a client read is not read
        again until the port's timer fires: what it sends meanwhile waits
        in the kernel's buffer, to be read and published as one chunk.
        """
        factory = PublishToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                   clock=self.clock)
        publisher, transport = self.publisher(factory)
        publisher.dataReceived(b"one\n")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.backplane.stats.messages_in, 1, "what was read is published at once")
        self.clock.advance(0.001)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aBigReadIsNotHeld(self):
        """
        A read of C{LINGER_READ_BYTES} or more is not followed by a hold:
        a fast publisher is read as fast as it sends, not a read a linger.
        """
        factory = PublishToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                   clock=self.clock)
        publisher, transport = self.publisher(factory)
        line = b"x" * 99 + b"\n"
        publisher.dataReceived(line * (LINGER_READ_BYTES // len(line) + 1))
        self.assertEqual(transport.producerState, "producing")
        publisher.dataReceived(line)
        self.assertEqual(transport.producerState, "paused")

    def test_publishersShareThePortsTimer(self):
        factory = PublishToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                   clock=self.clock)
        publishers = [self.publisher(factory) for _ in range(3)]
        for protocol, _ in publishers:
            protocol.dataReceived(b"x\n")
            self.clock.advance(0.0002)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual([t.producerState for _, t in publishers], ["paused"] * 3)
        self.clock.advance(0.0004)
        self.assertEqual([t.producerState for _, t in publishers], ["producing"] * 3)

    def test_aSubscriberIsNotHeld(self):
        """
        A client of a port that only subscribes is never held: what it
        sends is not published.
        """
        factory = SubscribeToFactory(self.service, "NEWS", limits=Limits(linger=0.001),
                                     clock=self.clock)
        protocol, transport = self.subscriber(factory)
        protocol.dataReceived(b"ignored\n")
        self.assertEqual(transport.producerState, "producing")

    def test_noHoldWithoutLinger(self):
        factory = PublishToFactory(self.service, "NEWS", clock=self.clock)
        publisher, transport = self.publisher(factory)
        publisher.dataReceived(b"one\n")
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aClosingPublisherIsNotHeld(self):
        factory = PublishToFactory(self.service, "NEWS",
                                   limits=Limits(linger=0.001, max_line_length=4),
                                   clock=self.clock)
        publisher, transport = self.publisher(factory)
        publisher.dataReceived(b"far too long\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")

    def test_noLingerByDefault(self):
        factory = SubscribeToFactory(self.service, "NEWS", clock=self.clock)
        self.assertIsNone(factory.linger)
        [(_, transport)] = [self.subscriber(factory)]
        self.backplane.publishLines(b"hello\n", 1)
        self.assertEqual(transport.value(), b"hello\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_limitsRejectNegative(self):
        self.assertRaises(ValueError, Limits, linger=-0.001)


class ConfigTests(ConfigTestCase):
    """
    C{linger} in C{[[listen]]}: seconds, 0 to 1, default 0.
    """

    PORT = '[backplane.NEWS]\n[[listen]]\nendpoint = "tcp:0"\nsubscribe_to = "NEWS"\n'

    def test_default(self):
        (listen,) = read_config(self.write(self.PORT)).listen
        self.assertEqual((listen.linger, listen.limits.linger), (0.0, 0.0))

    def test_set(self):
        (listen,) = read_config(self.write(self.PORT + "linger = 0.001\n")).listen
        self.assertEqual(listen.limits.linger, 0.001)

    def test_outOfRange(self):
        for value in ("-0.001", "1.5", '"1ms"'):
            with self.subTest(value=value):
                self.assertConfigError(self.PORT + f"linger = {value}\n", "linger")
