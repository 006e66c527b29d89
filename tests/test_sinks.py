"""
FileSink: appending, flushing, whole lines from many publishers, rotation,
and a file that cannot be written (missing or read-only folder, disk full)
that never disturbs the rest of the service.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager

from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService, FileSink, PublishToFactory
from backplane.sinks import _AppendFile
from backplane.testing import Recorder, connect
from tests.test_relay import LogCapture

NOBODY = 65534


@contextmanager
def unprivileged():
    """
    Run as an unprivileged user if we are root, so that file permissions
    apply (root may write to a read-only folder).
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class SinkTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="filesink-")
        os.chmod(self.folder, 0o755)
        self.addCleanup(self._removeFolder)
        self.path = os.path.join(self.folder, "log.data")
        self.service = BackplaneService()
        self.backplane = self.service.create("LOGGER")
        self.clock = Clock()
        self.events = LogCapture(self).events

    def _removeFolder(self) -> None:
        for root, dirs, _ in os.walk(self.folder):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        shutil.rmtree(self.folder)

    def sink(self, path=None, **options) -> FileSink:
        options.setdefault("clock", self.clock)
        sink = FileSink(self.backplane, path or self.path, **options)

        def stop() -> None:
            if sink.running:
                sink.stopService()

        self.addCleanup(stop)
        return sink

    def critical(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_level") == LogLevel.critical]


class AppendTests(SinkTestCase):
    def test_appendsAndNeverTruncates(self):
        with open(self.path, "wb") as f:
            f.write(b"kept 1\nkept 2\n")
        sink = self.sink()
        sink.startService()
        self.backplane.publish(b"new 1")
        self.backplane.publishMany([b"", b"new \x00\xff 2"])
        sink.stopService()
        self.assertEqual(read(self.path), b"kept 1\nkept 2\nnew 1\n\nnew \x00\xff 2\n")
        self.assertEqual(sink.stats.lines_written, 3)
        # A second run appends again.
        sink.startService()
        self.backplane.publish(b"second run")
        sink.stopService()
        self.assertEqual(read(self.path),
                         b"kept 1\nkept 2\nnew 1\n\nnew \x00\xff 2\nsecond run\n")

    def test_createsAMissingFile(self):
        sink = self.sink()
        sink.startService()
        self.assertTrue(os.path.exists(self.path))
        self.backplane.publish(b"first")
        sink.stopService()
        self.assertEqual(read(self.path), b"first\n")

    def test_someoneElsesHalfLineIsEnded(self):
        with open(self.path, "wb") as f:
            f.write(b"no newline")
        sink = self.sink()
        sink.startService()
        self.backplane.publish(b"ours")
        sink.stopService()
        self.assertEqual(read(self.path), b"no newline\nours\n")

    def test_onlyLinesPublishedWhileRunning(self):
        sink = self.sink()
        self.backplane.publish(b"before")
        sink.startService()
        self.backplane.publish(b"during")
        sink.stopService()
        self.backplane.publish(b"after")
        self.assertEqual(read(self.path), b"during\n")
        self.assertEqual(len(self.backplane), 0)

    def test_relativePathIsFixedAtConstruction(self):
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(self.folder)
        sink = self.sink(path="relative.data")
        os.chdir(cwd)
        sink.startService()
        self.backplane.publish(b"here")
        sink.stopService()
        self.assertEqual(read(os.path.join(self.folder, "relative.data")), b"here\n")

    def test_badOptions(self):
        self.assertRaises(ValueError, FileSink, self.backplane, self.path, flush_interval=0)
        self.assertRaises(ValueError, FileSink, self.backplane, self.path, rotate_bytes=-1)
        self.assertRaises(ValueError, FileSink, self.backplane, self.path, max_files=0)


class FlushTests(SinkTestCase):
    def test_flushedOnTheInterval(self):
        sink = self.sink(flush_interval=2.0)
        sink.startService()
        self.backplane.publish(b"waiting")
        self.assertEqual(read(self.path), b"")
        self.assertEqual(sink.stats.pending, len(b"waiting\n"))
        self.clock.advance(1.9)
        self.assertEqual(read(self.path), b"")
        self.clock.advance(0.1)
        self.assertEqual(read(self.path), b"waiting\n")
        self.assertEqual(sink.stats.pending, 0)
        self.backplane.publish(b"next")
        self.clock.advance(2.0)
        self.assertEqual(read(self.path), b"waiting\nnext\n")
        self.assertEqual(sink.stats.flushes, 2)

    def test_flushedOnStop(self):
        sink = self.sink(flush_interval=60.0)
        sink.startService()
        self.backplane.publishMany([b"a", b"b"])
        self.assertEqual(read(self.path), b"")
        # An IService may return a Deferred from stopService: a FileSink does not.
        service: IService = sink
        self.assertIsNone(service.stopService())
        self.assertEqual(read(self.path), b"a\nb\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flushedAtOnceWhenMuchIsWaiting(self):
        sink = self.sink(flush_interval=60.0)
        sink.flushBytes = 10
        sink.startService()
        self.backplane.publish(b"1234")
        self.assertEqual(read(self.path), b"")
        self.backplane.publish(b"56789")
        self.assertEqual(read(self.path), b"1234\n56789\n")

    def test_fsyncAfterEachFlushWhenAsked(self):
        synced: list[int] = []
        self.patch(os, "fsync", synced.append)
        sink = self.sink(fsync=True)
        sink.startService()
        self.clock.advance(1.0)
        self.assertEqual(synced, [])  # nothing written, nothing to sync
        self.backplane.publish(b"durable")
        self.clock.advance(1.0)
        self.assertEqual(len(synced), 1)
        self.assertEqual(os.fstat(synced[0]).st_ino, os.stat(self.path).st_ino)
        self.backplane.publish(b"again")
        sink.stopService()
        self.assertEqual(len(synced), 2)

    def test_noFsyncByDefault(self):
        synced: list[int] = []
        self.patch(os, "fsync", synced.append)
        sink = self.sink()
        sink.startService()
        self.backplane.publish(b"line")
        sink.stopService()
        self.assertEqual(read(self.path), b"line\n")
        self.assertEqual(synced, [])


LINE = re.compile(rb"^P(\d{3}) (\d{4}) [a-z]*$")


class ManyPublishersTests(SinkTestCase):
    def test_hundredPublishersNeverInterleaveWithinALine(self):
        """
        100 network publishers sending in pieces cut anywhere, interleaved,
        with flushes and rotations in between: every line in the files is
        whole, and each publisher's lines are in order.
        """
        sink = self.sink(flush_interval=0.5, rotate_bytes=4000)
        sink.startService()
        factory = PublishToFactory(self.service, "LOGGER")
        rng = random.Random(5)
        publishers, lines = 100, 60
        streams, offsets, protocols = [], [], []
        for pid in range(publishers):
            protocol, _ = connect(factory, peer=("127.0.0.1", 20000 + pid))
            protocols.append(protocol)
            streams.append(b"".join(
                b"P%03d %04d %s\r\n" % (pid, seq, b"abcdefghijklmnop"[: rng.randint(0, 16)])
                for seq in range(lines)))
            offsets.append(0)
        active = list(range(publishers))
        while active:
            pid = rng.choice(active)
            size = rng.randint(1, 50)
            piece = streams[pid][offsets[pid] : offsets[pid] + size]
            offsets[pid] += len(piece)
            protocols[pid].dataReceived(piece)
            if offsets[pid] == len(streams[pid]):
                active.remove(pid)
            if rng.random() < 0.01:
                self.clock.advance(0.5)
        sink.stopService()

        names = [self.path] + [f"{self.path}.{n}" for n in range(1, 100)]
        files = [read(name) for name in reversed(names) if os.path.exists(name)]
        self.assertGreater(len(files), 10)
        seen: dict[bytes, list[int]] = {}
        for content in files:
            self.assertTrue(content.endswith(b"\n"))
            self.assertLessEqual(len(content), 4000)
            for line in content.split(b"\n")[:-1]:
                match = LINE.match(line)
                self.assertIsNotNone(match, f"split or merged line: {line!r}")
                assert match is not None
                seen.setdefault(match.group(1), []).append(int(match.group(2)))
        self.assertEqual(len(seen), publishers)
        for numbers in seen.values():
            self.assertEqual(numbers, list(range(lines)))
        self.assertEqual(sink.stats.lines_written, publishers * lines)


class RotationTests(SinkTestCase):
    def rotated(self) -> list[str]:
        return sorted(n for n in os.listdir(self.folder) if n != "log.data")

    def test_rotatesBySizeKeepingMaxFilesWithoutSplittingLines(self):
        sink = self.sink(rotate_bytes=100, max_files=3)
        sink.startService()
        published = [b"line %03d " % n + b"x" * (n % 17) for n in range(120)]
        for n in range(0, 120, 7):
            self.backplane.publishMany(published[n : n + 7])
            if n % 21 == 0:
                self.clock.advance(1.0)
        sink.stopService()
        self.assertEqual(self.rotated(), ["log.data.1", "log.data.2", "log.data.3"])
        contents = [read(f"{self.path}.{n}") for n in (3, 2, 1)] + [read(self.path)]
        for content in contents:
            self.assertLessEqual(len(content), 100)
            self.assertTrue(content.endswith(b"\n"))
        kept = b"".join(contents).split(b"\n")[:-1]
        # The newest lines, whole and in order; the oldest files were removed.
        self.assertEqual(kept, published[-len(kept):])
        self.assertGreater(sink.stats.rotations, 3)
        # Every file but the current one was full up to one more line.
        for content in contents[:-1]:
            self.assertGreater(len(content), 100 - len(b"line 000 " + b"x" * 16 + b"\n"))

    def test_keepsEveryRotatedFileByDefault(self):
        sink = self.sink(rotate_bytes=20)
        sink.startService()
        for n in range(10):
            self.backplane.publish(b"line %02d of 16" % n)  # 16 bytes with \n
            self.clock.advance(1.0)
        sink.stopService()
        self.assertEqual(len(self.rotated()), 9)
        self.assertEqual(read(f"{self.path}.9"), b"line 00 of 16\n")
        self.assertEqual(read(self.path), b"line 09 of 16\n")

    def test_aLineLongerThanRotateBytesGetsAFileToItself(self):
        sink = self.sink(rotate_bytes=10)
        sink.startService()
        self.backplane.publishMany([b"short", b"x" * 25, b"tail"])
        sink.stopService()
        self.assertEqual(read(f"{self.path}.2"), b"short\n")
        self.assertEqual(read(f"{self.path}.1"), b"x" * 25 + b"\n")
        self.assertEqual(read(self.path), b"tail\n")

    def test_existingFileAtTheLimitIsRotatedFirst(self):
        with open(self.path, "wb") as f:
            f.write(b"o" * 19 + b"\n")
        sink = self.sink(rotate_bytes=20)
        sink.startService()
        self.backplane.publish(b"new")
        sink.stopService()
        self.assertEqual(read(f"{self.path}.1"), b"o" * 19 + b"\n")
        self.assertEqual(read(self.path), b"new\n")


class WriteErrorTests(SinkTestCase):
    """
    A file that cannot be written is logged loudly and counted; the other
    subscribers and the publishers never notice.
    """

    def assertLoud(self, path: str) -> None:
        self.assertTrue(self.flushLoggedErrors(OSError), "no failure logged")
        loud = self.critical()
        self.assertTrue(loud, "nothing logged at critical level")
        self.assertEqual(loud[0]["path"], path)
        self.assertIn("log_failure", loud[0])

    def test_missingFolder(self):
        missing = os.path.join(self.folder, "not", "yet")
        path = os.path.join(missing, "log.data")
        sink = self.sink(path)
        other = Recorder.on(self.backplane)
        sink.startService()  # does not raise
        self.assertTrue(sink.running)
        self.assertLoud(path)
        reached = self.successResultOf(self.backplane.publish(b"still delivered"))
        self.assertEqual(reached, 2)
        self.assertEqual(self.backplane.publishLines(b"fast\npath\n"), 2)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(other.messages, [b"still delivered", b"fast", b"path"])
        self.assertGreaterEqual(sink.stats.errors, 3)
        self.assertEqual(len(self.critical()), 1)  # loud once, not every second
        # The folder appears: the waiting lines are written at the next flush.
        os.makedirs(missing)
        self.clock.advance(1.0)
        self.assertEqual(read(path), b"still delivered\nfast\npath\n")
        self.assertEqual(sink.stats.pending, 0)

    def test_readOnlyFolder(self):
        readOnly = os.path.join(self.folder, "ro")
        os.mkdir(readOnly)
        os.chmod(readOnly, 0o555)
        path = os.path.join(readOnly, "log.data")
        sink = self.sink(path)
        other = Recorder.on(self.backplane)
        with unprivileged():
            sink.startService()
            self.backplane.publish(b"kept in memory")
            self.clock.advance(1.0)
        self.assertFalse(os.path.exists(path))
        self.assertLoud(path)
        self.assertEqual(other.messages, [b"kept in memory"])
        self.assertEqual(sink.stats.pending, len(b"kept in memory\n"))
        os.chmod(readOnly, 0o777)
        with unprivileged():
            self.clock.advance(1.0)
            sink.stopService()
        self.assertEqual(read(path), b"kept in memory\n")

    def test_diskFullKeepsWhatWaitsUpToTheBacklogThenDrops(self):
        if not os.path.exists("/dev/full"):
            self.skipTest("needs /dev/full (Linux) to simulate a full disk")
        sink = self.sink("/dev/full")
        sink.maxBacklog = 20
        other = Recorder.on(self.backplane)
        sink.startService()
        self.assertEqual(self.critical(), [])  # opening works
        self.backplane.publish(b"0123456789")  # 11 bytes
        self.clock.advance(1.0)
        self.assertLoud("/dev/full")
        self.assertIn("No space left", self.critical()[0]["error"])
        self.assertEqual(sink.stats.pending, 11)
        self.backplane.publish(b"abcdefgh")  # 9 more: 20, still kept
        self.backplane.publish(b"dropped")  # would pass maxBacklog
        self.assertEqual(sink.stats.pending, 20)
        self.assertEqual(sink.stats.dropped, 1)
        self.assertEqual(self.backplane.stats.dropped, 1)
        self.assertEqual(other.messages, [b"0123456789", b"abcdefgh", b"dropped"])
        sink.stopService()  # cannot write: logged, does not raise
        self.assertTrue(any("could not write" in (e.get("log_format") or "")
                            for e in self.critical()))

    def test_pathIsAFolder(self):
        sink = self.sink(self.folder)
        sink.startService()
        self.backplane.publish(b"line")
        self.clock.advance(1.0)
        self.assertLoud(self.folder)
        self.assertEqual(sink.stats.errors, 2)

    def test_failedWriteIsFinishedInTheSameFileNeverSplit(self):
        """
        A write that fails half way through a line is finished by the next
        flush in the same file, even if rotation is due, and nothing is
        written twice.
        """
        sink = self.sink(rotate_bytes=12)
        sink.startService()
        real = _AppendFile.writeSome
        calls = []

        def flaky(logfile, data):
            # A short write of 3 bytes, then an error, then all is well.
            calls.append(bytes(data))
            if len(calls) == 1:
                return real(logfile, data[:3])
            if len(calls) == 2:
                raise OSError(errno.EIO, "I/O error")
            return real(logfile, data)

        self.patch(_AppendFile, "writeSome", flaky)
        self.backplane.publishMany([b"abcdefgh", b"ijk"])  # 9 + 4 bytes
        self.clock.advance(1.0)
        self.assertEqual(read(self.path), b"abc")
        self.assertEqual(sink.stats.pending, 10)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(1.0)
        self.assertEqual(read(f"{self.path}.1"), b"abcdefgh\n")
        self.assertEqual(read(self.path), b"ijk\n")
        self.assertEqual(sink.stats.lines_written, 2)
        self.assertEqual(sink.stats.bytes_written, 13)

    def test_failedWriteOfALongLineIsFinishedBeforeRotating(self):
        """
        The rest of a half-written line longer than rotate_bytes does not fit
        in what is left of the file; it goes there all the same.
        """
        sink = self.sink(rotate_bytes=5)
        sink.startService()
        real = _AppendFile.writeSome
        calls = []

        def flaky(logfile, data):
            calls.append(bytes(data))
            if len(calls) == 1:
                return real(logfile, data[:3])
            if len(calls) == 2:
                raise OSError(errno.EIO, "I/O error")
            return real(logfile, data)

        self.patch(_AppendFile, "writeSome", flaky)
        self.backplane.publishMany([b"abcdefgh", b"ij"])
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(1.0)
        self.assertEqual(read(f"{self.path}.1"), b"abcdefgh\n")
        self.assertEqual(read(self.path), b"ij\n")

    def test_cannotRotateWritesOn(self):
        """
        A folder that turns read-only while the file is open: rotation fails,
        is logged once, and lines go on into the file.
        """
        folder = os.path.join(self.folder, "logs")
        os.mkdir(folder)
        os.chmod(folder, 0o777)
        path = os.path.join(folder, "log.data")
        sink = self.sink(path, rotate_bytes=10)
        with unprivileged():
            sink.startService()
            self.backplane.publish(b"123456789")
            self.clock.advance(1.0)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
                 | stat.S_IROTH | stat.S_IXOTH)
        with unprivileged():
            self.backplane.publish(b"more")
            self.clock.advance(1.0)
            self.backplane.publish(b"and more")
            self.clock.advance(1.0)
            sink.stopService()
        self.assertEqual(read(path), b"123456789\nmore\nand more\n")
        self.assertEqual(os.listdir(folder), ["log.data"])
        self.assertEqual(sink.stats.rotations, 0)
        self.assertEqual(sink.stats.errors, 2)
        self.assertEqual(len([e for e in self.events
                              if "cannot be rotated" in (e.get("log_format") or "")]), 1)


class LogFileTripwireTests(SynchronousTestCase):
    """
    The tripwire of C{_AppendFile}, the one use of a private method of
    Twisted's L{LogFile}: it overrides C{_openFile} so that the file is
    opened for appending.  If Twisted stops calling it, these fail.
    """

    def test_openFileCalledOnOpenAndRotate(self):
        from twisted.python.logfile import LogFile

        self.assertTrue(callable(getattr(LogFile, "_openFile", None)),
                        "LogFile._openFile is gone: _AppendFile must open its file another way")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "f.log")
        with open(path, "wb") as f:
            f.write(b"kept\n")
        log = _AppendFile.fromFullPath(path)
        self.assertEqual(log.size, 5, "opened for appending: the file was not truncated")
        log.writeSome(memoryview(b"more\n"))
        log.rotate()
        log.writeSome(memoryview(b"new\n"))
        log.close()
        with open(path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"kept\nmore\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new\n")
