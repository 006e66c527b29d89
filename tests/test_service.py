"""
The Python API of SPEC §3: the registry and the backplane, as a user calls them.
"""

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, fail
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, provider

import backplane
from backplane import Backplane, BackplaneService
from backplane.errors import BackplaneExists, UnknownBackplane
from backplane.interfaces import ILineSink
from backplane.service import Subscription
from backplane.testing import AsyncRecorder, Recorder


@implementer(ILineSink)
class ChunkSink:
    def __init__(self):
        self.chunks = []

    def deliver(self, data, count):
        self.chunks.append((data, count))


class CapturedLog:
    """
    Collects log events emitted while a test runs.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        globalLogPublisher.addObserver(observe)
        case.addCleanup(globalLogPublisher.removeObserver, observe)

    def failures(self) -> list[LogEvent]:
        return [e for e in self.events if "log_failure" in e]


class RegistryTests(SynchronousTestCase):
    def setUp(self):
        self.service = BackplaneService()

    def test_isAMultiService(self):
        self.assertIsInstance(self.service, MultiService)
        self.assertTrue(IService.providedBy(self.service))

    def test_createAndGet(self):
        created = self.service.create("TIME")
        self.assertIsInstance(created, Backplane)
        self.assertEqual(created.name, "TIME")
        self.assertIs(self.service.get("TIME"), created)

    def test_createTwice(self):
        self.service.create("TIME")
        error = self.assertRaises(BackplaneExists, self.service.create, "TIME")
        self.assertIn("'TIME'", str(error))
        self.assertIn("exists", str(error))

    def test_unknownName(self):
        self.service.create("TIME")
        self.service.create("LOGGER")
        error = self.assertRaises(KeyError, self.service.get, "NEWS")
        self.assertIsInstance(error, UnknownBackplane)
        self.assertEqual(
            str(error), "no backplane named 'NEWS' (known: 'LOGGER', 'TIME')"
        )

    def test_unknownNameEmptyRegistry(self):
        error = self.assertRaises(KeyError, self.service.get, "NEWS")
        self.assertEqual(str(error), "no backplane named 'NEWS' (known: none)")

    def test_contains(self):
        self.service.create("TIME")
        self.assertIn("TIME", self.service)
        self.assertNotIn("NEWS", self.service)

    def test_namesSorted(self):
        for name in ["b", "C", "a"]:
            self.service.create(name)
        self.assertEqual(self.service.names(), ["C", "a", "b"])

    def test_iterationYieldsChildServices(self):
        """
        Iterating stays what MultiService makes it: the child services.
        """
        self.service.create("TIME")
        child = MultiService()
        child.setServiceParent(self.service)
        self.assertEqual(list(self.service), [child])

    def test_startStopWithoutTwistd(self):
        self.service.startService()
        self.assertTrue(self.service.running)
        self.successResultOf(self.service.stopService())
        self.assertFalse(self.service.running)

    def test_publicNames(self):
        for name in ["BackplaneService", "Backplane", "PublishTo", "SubscribeTo",
                     "PublishToFactory", "SubscribeToFactory"]:
            self.assertTrue(hasattr(backplane, name), name)


class TruthTests(SynchronousTestCase):
    def test_idleBackplaneIsTrue(self):
        """
        A backplane with no subscriber has C{len} 0 and is still true, so
        that C{backplane or default} keeps it.
        """
        plane = BackplaneService().create("IDLE")
        self.assertEqual(len(plane), 0)
        self.assertIs(plane or None, plane)


class PublishTests(SynchronousTestCase):
    def setUp(self):
        self.backplane = Backplane("NEWS")

    def test_everySubscriberOnce(self):
        recorders = [Recorder.on(self.backplane) for _ in range(3)]
        d = self.backplane.publish(b"hello")
        self.assertEqual(self.successResultOf(d), 3)
        for recorder in recorders:
            self.assertEqual(recorder.messages, [b"hello"])

    def test_noSubscribers(self):
        self.assertEqual(self.successResultOf(self.backplane.publish(b"x")), 0)

    def test_contentUnchanged(self):
        recorder = Recorder.on(self.backplane)
        messages = [b"", b" padded \t", b"\r", b"a\rb", bytes(range(256)).replace(b"\n", b"")]
        for message in messages:
            self.backplane.publish(message)
        self.assertEqual(recorder.messages, messages)

    def test_order(self):
        recorder = Recorder.on(self.backplane)
        for i in range(100):
            self.backplane.publish(b"%d" % i)
        self.assertEqual(recorder.messages, [b"%d" % i for i in range(100)])

    def test_notBytes(self):
        for value in ["text", 1, None, bytearray(b"x"), memoryview(b"x")]:
            self.assertRaises(TypeError, self.backplane.publish, value)
        self.assertEqual(self.backplane.stats.messages_in, 0)

    def test_newlineInMessage(self):
        recorder = Recorder.on(self.backplane)
        self.assertRaises(ValueError, self.backplane.publish, b"two\nlines")
        self.assertEqual(recorder.messages, [])

    def test_onlySubscribersAtPublishTime(self):
        early = Recorder.on(self.backplane)
        self.backplane.publish(b"first")
        late = Recorder.on(self.backplane)
        self.backplane.publish(b"second")
        self.assertEqual(early.messages, [b"first", b"second"])
        self.assertEqual(late.messages, [b"second"])

    def test_waitsForDeferreds(self):
        slow = AsyncRecorder()
        self.backplane.subscribe(slow)
        quick = Recorder.on(self.backplane)
        d = self.backplane.publish(b"hello")
        self.assertNoResult(d)
        self.assertEqual(quick.messages, [b"hello"])
        slow.release()
        self.assertEqual(self.successResultOf(d), 2)

    def test_raisingSubscriberIsolated(self):
        log = CapturedLog(self)
        calls = []

        def broken(message):
            calls.append(message)
            raise RuntimeError("subscriber bug")

        before = Recorder.on(self.backplane)
        self.backplane.subscribe(broken)
        after = Recorder.on(self.backplane)
        self.assertEqual(self.successResultOf(self.backplane.publish(b"one")), 3)
        self.backplane.publish(b"two")
        self.assertEqual(before.messages, [b"one", b"two"])
        self.assertEqual(after.messages, [b"one", b"two"])
        self.assertEqual(calls, [b"one", b"two"], "the broken one stays subscribed")
        self.assertEqual(self.backplane.stats.errors, 2)
        self.assertEqual(len(log.failures()), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_failingDeferredIsolated(self):
        CapturedLog(self)
        self.backplane.subscribe(lambda m: fail(RuntimeError("async bug")))
        recorder = Recorder.on(self.backplane)
        self.assertEqual(self.successResultOf(self.backplane.publish(b"x")), 2)
        self.assertEqual(recorder.messages, [b"x"])
        self.assertEqual(self.backplane.stats.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_subscriberCancelsAnotherDuringDelivery(self):
        second = Recorder()
        subscription: Subscription | None = None

        def first(message):
            assert subscription is not None
            subscription.cancel()

        self.backplane.subscribe(first)
        subscription = self.backplane.subscribe(second)
        self.backplane.publish(b"one")
        self.backplane.publish(b"two")
        # Subscribed when "one" was published: it gets "one", not "two".
        self.assertEqual(second.messages, [b"one"])

    def test_publishFromSubscriber(self):
        """
        A subscriber may publish (to this or another backplane) while a
        message is being delivered; everybody still gets everything.
        """
        other = Backplane("OTHER")
        relay = self.backplane.subscribe(lambda m: other.publish(b"re:" + m))
        recorder = Recorder.on(other)
        self.backplane.publish(b"x")
        relay.cancel()
        self.assertEqual(recorder.messages, [b"re:x"])


class PublishManyTests(SynchronousTestCase):
    def setUp(self):
        self.backplane = Backplane("NEWS")

    def test_batch(self):
        recorder = Recorder.on(self.backplane)
        sink = ChunkSink()
        self.backplane.attach(sink)
        d = self.backplane.publishMany([b"a", b"", b"c"])
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(recorder.messages, [b"a", b"", b"c"])
        self.assertEqual(sink.chunks, [(b"a\n\nc\n", 3)], "one chunk for the batch")
        self.assertEqual(self.backplane.stats.messages_in, 3)
        self.assertEqual(self.backplane.stats.deliveries, 6)

    def test_acceptsAnyIterable(self):
        recorder = Recorder.on(self.backplane)
        self.backplane.publishMany(b"%d" % i for i in range(3))
        self.assertEqual(recorder.messages, [b"0", b"1", b"2"])

    def test_empty(self):
        Recorder.on(self.backplane)
        self.assertEqual(self.successResultOf(self.backplane.publishMany([])), 0)

    def test_badMessagePublishesNothing(self):
        recorder = Recorder.on(self.backplane)
        self.assertRaises(TypeError, self.backplane.publishMany, [b"ok", "text"])
        self.assertRaises(ValueError, self.backplane.publishMany, [b"ok", b"a\nb"])
        self.assertEqual(recorder.messages, [])

    def test_waitsForDeferreds(self):
        slow = AsyncRecorder()
        self.backplane.subscribe(slow)
        d = self.backplane.publishMany([b"a", b"b"])
        self.assertNoResult(d)
        self.assertEqual(len(slow.pending), 2)
        slow.release()
        self.assertEqual(self.successResultOf(d), 1)


class PublishLinesTests(SynchronousTestCase):
    def setUp(self):
        self.backplane = Backplane("NEWS")

    def test_chunkGoesToSinksUnchanged(self):
        sink = ChunkSink()
        recorder = Recorder.on(self.backplane)
        self.backplane.attach(sink)
        self.assertEqual(self.backplane.publishLines(b"a\nb\n"), 2)
        self.assertEqual(sink.chunks, [(b"a\nb\n", 2)])
        self.assertEqual(recorder.messages, [b"a", b"b"])

    def test_incompleteLineRefused(self):
        self.assertRaises(ValueError, self.backplane.publishLines, b"a\nb")

    def test_echoExcluded(self):
        me, other = object(), object()
        mine, theirs = ChunkSink(), ChunkSink()
        self.backplane.attach(mine, origin=me)
        self.backplane.attach(theirs, origin=other)
        recorder = Recorder()
        self.backplane.subscribe(recorder, origin=me)
        self.assertEqual(self.backplane.publishLines(b"x\n", origin=me), 1)
        self.assertEqual(mine.chunks, [])
        self.assertEqual(recorder.messages, [])
        self.assertEqual(theirs.chunks, [(b"x\n", 1)])

    def test_noOriginReachesEveryone(self):
        sink = ChunkSink()
        self.backplane.attach(sink)
        self.backplane.publishLines(b"x\n")
        self.assertEqual(sink.chunks, [(b"x\n", 1)])

    def test_raisingSinkIsolated(self):
        @implementer(ILineSink)
        class Broken:
            def deliver(self, data, count):
                raise OSError("sink bug")

        CapturedLog(self)
        self.backplane.attach(Broken())
        sink = ChunkSink()
        self.backplane.attach(sink)
        self.assertEqual(self.backplane.publishLines(b"x\n"), 2)
        self.assertEqual(sink.chunks, [(b"x\n", 1)])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_stats(self):
        self.backplane.attach(ChunkSink())
        self.backplane.attach(ChunkSink())
        self.backplane.publishLines(b"ab\ncd\n")
        stats = self.backplane.stats
        self.assertEqual((stats.messages_in, stats.bytes_in, stats.deliveries), (2, 6, 4))
        self.assertEqual(len(self.backplane), 2)


@implementer(ILineSink)
class EncodingSink:
    """
    A line sink that sends each chunk in another form, asking its backplane
    to encode each chunk once for every sink like it.
    """

    def __init__(self, backplane, encoder):
        self.backplane = backplane
        self.encoder = encoder
        self.sent = []

    def deliver(self, data, count):
        self.sent.append(self.backplane.encoded(data, count, self.encoder))


class EncodedTests(SynchronousTestCase):
    """
    Backplane.encoded: a chunk is encoded once for all the sinks that ask.
    """

    def setUp(self):
        self.backplane = Backplane("NEWS")
        self.calls = []

    def upper(self, data, count):
        self.calls.append((data, count))
        return data.upper()

    def test_oncePerChunkForEverySink(self):
        sinks = [EncodingSink(self.backplane, self.upper) for _ in range(3)]
        for sink in sinks:
            self.backplane.attach(sink)
        self.backplane.publishLines(b"a\nb\n")
        self.backplane.publishLines(b"c\n")
        self.assertEqual(self.calls, [(b"a\nb\n", 2), (b"c\n", 1)])
        for sink in sinks:
            self.assertEqual(sink.sent, [b"A\nB\n", b"C\n"])
            self.assertIs(sink.sent[0], sinks[0].sent[0], "the very same object")

    def test_keyedByIdentityAndForgotten(self):
        """
        An equal chunk that is another object is encoded again, and so is the
        same chunk once its fan-out is over: nothing is kept.
        """
        first = b"x\n"
        self.assertEqual(self.backplane.encoded(first, 1, self.upper), b"X\n")
        self.assertEqual(self.backplane.encoded(first, 1, self.upper), b"X\n")
        self.assertEqual(len(self.calls), 1)
        other = bytes(bytearray(first))
        self.assertIsNot(other, first)
        self.backplane.encoded(other, 1, self.upper)
        self.assertEqual(len(self.calls), 2)
        self.backplane.attach(EncodingSink(self.backplane, self.upper))
        chunk = b"y\n"
        self.backplane.publishLines(chunk)
        self.assertEqual(len(self.calls), 3)
        self.backplane.encoded(chunk, 1, self.upper)
        self.assertEqual(len(self.calls), 4, "forgotten after the fan-out")

    def test_eachEncoderItsOwn(self):
        lower: list[bytes] = []

        def keep(data: bytes, count: int) -> bytes:
            lower.append(data)
            return data

        self.backplane.attach(EncodingSink(self.backplane, self.upper))
        self.backplane.attach(EncodingSink(self.backplane, keep))
        self.backplane.publishLines(b"Aa\n")
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(lower, [b"Aa\n"])

    def test_retainedReplay(self):
        backplane = Backplane("NEWS", retain=2)
        backplane.publish(b"one")
        backplane.publish(b"two")
        sink = EncodingSink(backplane, self.upper)
        backplane.attach(sink)
        backplane.attach(EncodingSink(backplane, self.upper))
        self.assertEqual(sink.sent, [b"ONE\nTWO\n"])
        self.assertEqual(len(self.calls), 2, "each replay is a chunk of its own")


class SubscriptionTests(SynchronousTestCase):
    def setUp(self):
        self.backplane = Backplane("NEWS")

    def test_cancel(self):
        recorder = Recorder()
        subscription = self.backplane.subscribe(recorder)
        self.assertTrue(subscription.active)
        self.backplane.publish(b"one")
        subscription.cancel()
        self.assertFalse(subscription.active)
        self.backplane.publish(b"two")
        self.assertEqual(recorder.messages, [b"one"])
        self.assertEqual(len(self.backplane), 0)

    def test_cancelIsIdempotent(self):
        keep = Recorder.on(self.backplane)
        subscription = self.backplane.subscribe(Recorder())
        sinkSubscription = self.backplane.attach(ChunkSink())
        for _ in range(3):
            subscription.cancel()
            sinkSubscription.cancel()
        self.assertEqual(len(self.backplane), 1)
        self.backplane.publish(b"x")
        self.assertEqual(keep.messages, [b"x"])

    def test_sameCallbackTwice(self):
        """
        Each subscribe is its own subscription, as in Kamaelia.
        """
        recorder = Recorder()
        first = self.backplane.subscribe(recorder)
        self.backplane.subscribe(recorder)
        self.backplane.publish(b"x")
        first.cancel()
        self.backplane.publish(b"y")
        self.assertEqual(recorder.messages, [b"x", b"x", b"y"])

    def test_attachNeedsALineSink(self):
        self.assertRaises(TypeError, self.backplane.attach, object())


class RetainTests(SynchronousTestCase):
    def test_replayedBeforeLive(self):
        backplane = Backplane("TIME", retain=2)
        self.assertEqual(backplane.retain, 2)
        backplane.publishMany([b"1", b"2", b"3"])
        recorder = Recorder.on(backplane)
        backplane.publish(b"4")
        self.assertEqual(recorder.messages, [b"2", b"3", b"4"])

    def test_replayedToSinkInOneChunk(self):
        backplane = Backplane("TIME", retain=3)
        backplane.publishLines(b"a\nb\n")
        sink = ChunkSink()
        backplane.attach(sink)
        self.assertEqual(sink.chunks, [(b"a\nb\n", 2)])

    def test_noRetainByDefault(self):
        backplane = Backplane("TIME")
        backplane.publish(b"old")
        recorder = Recorder.on(backplane)
        self.assertEqual(recorder.messages, [])

    def test_negative(self):
        self.assertRaises(ValueError, Backplane, "X", retain=-1)


class RecorderTests(SynchronousTestCase):
    def test_waitFor(self):
        backplane = Backplane("NEWS")
        recorder = Recorder.on(backplane)
        d = recorder.waitFor(2)
        backplane.publish(b"a")
        self.assertNoResult(d)
        backplane.publish(b"b")
        self.assertEqual(self.successResultOf(d), [b"a", b"b"])
        self.assertEqual(self.successResultOf(recorder.waitFor(1)), [b"a"])

    def test_cancel(self):
        backplane = Backplane("NEWS")
        recorder = Recorder.on(backplane)
        recorder.cancel()
        backplane.publish(b"a")
        self.assertEqual(recorder.messages, [])

    def test_asyncRecorderIsADeferredConsumer(self):
        recorder = AsyncRecorder()
        result = recorder(b"x")
        self.assertIsInstance(result, Deferred)
        self.assertNoResult(result)
        recorder.release()
        self.successResultOf(result)


class StopOrderTests(SynchronousTestCase):
    def test_childrenStopOneAfterAnotherLastFirst(self):
        """
        The last child added stops first, and the next only once it has
        finished: ports (added last) close before sinks (added first) flush.
        """
        events: list[str | None] = []
        waits: dict[str | None, Deferred[None]] = {}

        class Child(MultiService):
            def __init__(self, name):
                super().__init__()
                self.setName(name)

            def stopService(self):
                events.append(self.name)
                waits[self.name] = Deferred()
                return waits[self.name]

        service = BackplaneService()
        for name in ["sink", "port"]:
            Child(name).setServiceParent(service)
        service.startService()
        stopped = service.stopService()
        self.assertEqual(events, ["port"])
        waits["port"].callback(None)
        self.assertEqual(events, ["port", "sink"])
        self.assertNoResult(stopped)
        waits["sink"].callback(None)
        self.successResultOf(stopped)

    def test_failingChildLoggedOthersStop(self):
        events = []

        class Broken(MultiService):
            def stopService(self):
                raise RuntimeError("stop bug")

        class Fine(MultiService):
            def stopService(self):
                events.append("fine")

        service = BackplaneService()
        Fine().setServiceParent(service)
        Broken().setServiceParent(service)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(events, ["fine"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AliasTests(SynchronousTestCase):
    """
    The snake_case spellings of earlier releases are the camelCase methods.
    """

    def test_aliases(self):
        from backplane import build, config

        self.assertIs(Backplane.publish_many, Backplane.publishMany)
        self.assertIs(Backplane.publish_lines, Backplane.publishLines)
        self.assertIs(backplane.load_config, build.loadConfig)
        self.assertIs(build.build_service, build.buildService)
        self.assertIs(config.read_config, config.readConfig)
        self.assertIs(config.parse_config, config.parseConfig)
        self.assertIs(config.default_config, config.defaultConfig)


class ImportGraphTests(SynchronousTestCase):
    """
    The core is light: importing it imports neither the config, nor
    endpoints' users such as the Redis bridge, nor txredisapi or autobahn.
    """

    def test_coreImportsLittle(self):
        import subprocess
        import sys

        code = ("import sys, backplane.service; "
                "print(' '.join(sorted(m for m in sys.modules if m.startswith("
                "('backplane', 'txredisapi', 'autobahn', 'prometheus_client', 'jwt')))))")
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                                text=True).stdout.split()
        for module in ("backplane.config", "backplane.build", "backplane.redis.bridge",
                       "txredisapi", "autobahn", "prometheus_client", "jwt"):
            self.assertNotIn(module, loaded)
        self.assertIn("backplane.service", loaded)

    def test_publicNamesLazily(self):
        self.assertEqual(sorted(backplane.__all__), sorted(set(backplane.__all__)))
        for name in backplane.__all__:
            self.assertIsNotNone(getattr(backplane, name))
        with self.assertRaises(AttributeError):
            backplane.NoSuchName  # noqa: B018
