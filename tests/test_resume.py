"""
Resume, deterministically: L{Backplane.follow} and L{Subscription.pull},
callback subscribers with ids, the line protocol of C{ids = true} ports
(L{backplane.resume.ResumingProtocol}) on a L{StringTransport} and a
L{Clock}, and a relay that strips ids and resumes.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from backplane import BackplaneService
from backplane.history import MemoryHistory, formatId
from backplane.interfaces import ILineSink
from backplane.protocols import Limits
from backplane.relay import Relay
from backplane.resume import RESUME_WAIT, ResumingFactory, ResumingProtocol
from backplane.service import Gap
from backplane.testing import IdRecorder, connect, disconnect, sentLines


@implementer(ILineSink)
class Sink:
    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, int]] = []

    def deliver(self, data: bytes, count: int) -> None:
        self.chunks.append((data, count))

    @property
    def lines(self) -> list[bytes]:
        return b"".join(data for data, _ in self.chunks).split(b"\n")[:-1]


class FollowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = BackplaneService()
        self.history = MemoryHistory(10)
        self.news = self.service.create("NEWS", history=self.history)
        self.epoch = self.history.epoch.encode()

    def mid(self, seq: int) -> bytes:
        return formatId(self.history.epoch, seq)

    def publish(self, *numbers: int) -> None:
        self.news.publishMany([b"m%d" % n for n in numbers])

    def test_live(self) -> None:
        """
        Without a position, live messages with their ids, one chunk each.
        """
        sink = Sink()
        subscription, gap = self.news.follow(sink)
        self.assertIsNone(gap)
        self.assertIsNone(subscription.cursor)
        self.publish(1, 2)
        self.assertEqual(sink.chunks, [(self.mid(1) + b" m1\n" + self.mid(2) + b" m2\n", 2)])

    def test_catchUpThenLive(self) -> None:
        """
        A follower is handed nothing live while it catches up; it pulls the
        history (at most maxBytes at a time) then is live, with nothing
        missed or repeated in between.
        """
        self.publish(1, 2, 3)
        sink = Sink()
        subscription, gap = self.news.follow(sink, self.mid(1))
        self.assertIsNone(gap)
        self.publish(4)
        self.assertEqual(sink.chunks, [])
        pulled = []
        while (chunk := subscription.pull(4)) is not None:
            assert not isinstance(chunk, Gap)
            pulled.append(chunk)
        self.assertEqual(b"".join(data for data, _ in pulled),
                         b"".join(self.mid(i) + b" m%d\n" % i for i in (2, 3, 4)))
        self.assertGreater(len(pulled), 1, "maxBytes bounds each chunk")
        self.publish(5)
        self.assertEqual(sink.lines, [self.mid(5) + b" m5"])
        self.assertEqual(self.news.stats.resumes, 1)
        self.assertEqual(self.news.stats.replayed, 3)
        self.assertEqual(len(self.news), 1)

    def test_gaps(self) -> None:
        """
        Too old, another epoch, or the future: a Gap naming what comes next.
        """
        self.publish(*range(1, 16))  # keeps 6..15
        for asked, nextSeq in [(self.mid(2), 6), (b"other:3", 6), (self.mid(99), 16)]:
            _, gap = self.news.follow(Sink(), asked)
            self.assertEqual(gap, Gap(asked, self.mid(nextSeq)))
        _, gap = self.news.follow(Sink(), "0")
        self.assertIsNone(gap)
        self.assertEqual(self.news.stats.gaps, 3)
        self.assertRaises(ValueError, self.news.follow, Sink(), b"bad id")

    def test_gapWhileCatchingUp(self) -> None:
        """
        A follower that falls behind the oldest message kept is told so.
        """
        self.publish(1, 2)
        subscription, _ = self.news.follow(Sink(), "0")
        self.publish(*range(3, 20))
        self.assertEqual(subscription.pull(1000), Gap(b"0", self.mid(10)))
        self.assertEqual(subscription.pull(1000)[1], 10)  # type: ignore[index]

    def test_noHistory(self) -> None:
        plain = self.service.create("PLAIN")
        self.assertRaises(ValueError, plain.follow, Sink())
        self.assertRaises(ValueError, IdRecorder.on, plain)

    def test_cancelWhileCatchingUp(self) -> None:
        self.publish(1)
        subscription, _ = self.news.follow(Sink(), "0")
        self.assertEqual(len(self.news), 1)
        subscription.cancel()
        self.assertEqual(len(self.news), 0)
        self.assertIsNone(subscription.pull(100))

    def test_callbacksWithIds(self) -> None:
        """
        The Python API: a callback with ids, from a position.
        """
        first = IdRecorder.on(self.news)
        self.publish(1, 2)
        self.assertEqual(first.ids, [self.mid(1), self.mid(2)])
        first.cancel()
        self.publish(3)
        again = IdRecorder.on(self.news, after=self.mid(2))
        self.assertEqual((again.messages, again.gaps), ([b"m3"], []))
        self.publish(4)
        self.assertEqual(again.ids, [self.mid(3), self.mid(4)])
        old = IdRecorder.on(self.news, after=b"x:1")
        self.assertEqual(old.gaps, [b"GAP x:1 " + self.mid(1)])
        self.assertEqual(old.messages, [b"m1", b"m2", b"m3", b"m4"])


class ResumingProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.service = BackplaneService()
        self.history = MemoryHistory(100)
        self.news = self.service.create("NEWS", history=self.history)
        self.factory = ResumingFactory(self.service, subscribe_to="NEWS",
                                       limits=Limits(max_pending=100), clock=self.clock)

    def mid(self, seq: int) -> bytes:
        return formatId(self.history.epoch, seq)

    def test_resume(self) -> None:
        self.news.publishMany([b"a", b"b"])
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"RESUME " + self.mid(1) + b"\r\n")
        self.assertEqual(sentLines(transport), [self.mid(2) + b" b"])
        self.news.publish(b"c")
        self.assertEqual(sentLines(transport)[-1], self.mid(3) + b" c")
        self.assertEqual(self.factory.stats.resumes, 1)

    def test_resumeInPieces(self) -> None:
        self.news.publish(b"a")
        protocol, transport = connect(self.factory)
        for byte in b"RESUME 0\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(sentLines(transport), [self.mid(1) + b" a"])

    def test_liveAfterWaiting(self) -> None:
        """
        A client that sends nothing gets, after RESUME_WAIT, everything
        published since it connected, then live messages.
        """
        self.news.publish(b"before")
        protocol, transport = connect(self.factory)
        self.news.publish(b"during")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(RESUME_WAIT)
        self.news.publish(b"after")
        self.assertEqual(sentLines(transport), [self.mid(2) + b" during", self.mid(3) + b" after"])
        protocol.dataReceived(b"RESUME 0\n")
        self.assertTrue(transport.disconnecting, "RESUME comes first, at once")
        self.assertTrue(sentLines(transport)[-1].startswith(b"ERR "))

    def test_errors(self) -> None:
        for line in [b"RESUME", b"RESUME x", b"HELLO 1 2", b"RESUME " + b"1" * 200,
                     b"x" * 500]:
            protocol, transport = connect(self.factory)
            protocol.dataReceived(line + b"\n")
            lines = sentLines(transport)
            self.assertEqual(len(lines), 1, line)
            self.assertTrue(lines[0].startswith(b"ERR "), lines)
            self.assertLess(len(lines[0]), 200)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.stats.bad_requests, 5)
        self.assertEqual(len(self.news), 0)

    def test_gapLine(self) -> None:
        self.news.publish(b"a")
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"RESUME zz:7\n")
        self.assertEqual(sentLines(transport), [b"GAP zz:7 " + self.mid(1), self.mid(1) + b" a"])
        self.assertEqual(self.factory.stats.gaps, 1)

    def test_replayUnderTheBound(self) -> None:
        """
        A long replay is written as the transport drains: no more than a
        chunk waits, and live messages published meanwhile come after it.
        """
        self.news.publishMany([b"%04d" % i for i in range(100)])
        protocol, transport = connect(self.factory)
        assert isinstance(protocol, ResumingProtocol) and transport.producer is not None
        transport.producer.pauseProducing()
        protocol.dataReceived(b"RESUME 0\n")
        self.assertEqual(transport.value(), b"", "nothing written while paused")
        self.news.publish(b"live")
        for _ in range(20):
            transport.producer.resumeProducing()
        lines = sentLines(transport)
        self.assertEqual(len(lines), 101)
        self.assertEqual(lines[-1], self.mid(101) + b" live")
        assert protocol.output is not None
        self.assertEqual(protocol.output.pending, 0)

    def test_disconnectWhileWaiting(self) -> None:
        protocol, transport = connect(self.factory)
        disconnect(protocol, transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.news), 0)

    def test_refusesWithoutHistory(self) -> None:
        self.service.create("PLAIN")
        self.assertRaises(ValueError, ResumingFactory, self.service, subscribe_to="PLAIN")
        self.assertRaises(ValueError, ResumingFactory, self.service, subscribe_to="NEWS",
                          publish_to="NEWS")


class RelayResumeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = BackplaneService()
        self.local = self.service.create("LOCAL")
        self.relay = Relay(self.service, "LOCAL", resume=True, clock=Clock())
        self.received: list[bytes] = []
        self.local.subscribe(self.received.append)

    def test_stripsIdsAndRemembers(self) -> None:
        self.relay.linesReceived(b"e:1 a\ne:2 b c\n")
        self.assertEqual(self.received, [b"a", b"b c"])
        self.assertEqual(self.relay.lastId, b"e:2")

    def test_gapLines(self) -> None:
        self.relay.linesReceived(b"GAP e:2 e:9\ne:9 x\n")
        self.assertEqual(self.received, [b"x"])
        self.assertEqual((self.relay.stats.gaps, self.relay.lastId), (1, b"e:9"))

    def test_greetResumes(self) -> None:
        sent: list[bytes] = []

        class Protocol:
            def sendLines(self, data: bytes) -> None:
                sent.append(data)

        self.relay.greet(Protocol())  # type: ignore[arg-type]
        self.assertEqual(sent, [], "nothing to resume from yet")
        self.relay.linesReceived(b"e:5 a\n")
        self.relay.greet(Protocol())  # type: ignore[arg-type]
        self.assertEqual(sent, [b"RESUME e:5\n"])
        self.assertEqual(self.relay.stats.resumes, 1)

    def test_notAnIdsPort(self) -> None:
        self.relay.linesReceived(b"e:1 a\nplain line\n")
        self.assertEqual(self.received, [])
        self.assertEqual(self.relay.stats.refused, 1)

    def test_needsPublishTo(self) -> None:
        self.assertRaises(ValueError, Relay, self.service, subscribe_to="LOCAL", resume=True)

