"""
Sinks: services that take every line of a backplane somewhere.  L{FileSink}
appends them to a file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import BinaryIO, cast

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

from backplane.interfaces import ILineSink, IStatsSource
from backplane.service import Backplane, Subscription


@dataclass
class FileSinkStats:
    """
    Counters of one file sink, for monitoring.

    @ivar lines_written: lines written to the file (or its rotated files).
    @ivar bytes_written: bytes written.
    @ivar pending: bytes received and not written yet.
    @ivar flushes: flushes that wrote something.
    @ivar rotations: times the file was rotated.
    @ivar errors: failed attempts to open, write, rotate or fsync the file.
    @ivar dropped: lines never written because too much was waiting while
        the file could not be written (see L{FileSink.maxBacklog}).
    """

    lines_written: int = 0
    bytes_written: int = 0
    pending: int = 0
    flushes: int = 0
    rotations: int = 0
    errors: int = 0
    dropped: int = 0


class _AppendFile(LogFile):
    """
    A L{LogFile} opened for appending (never truncated), which rotates only
    when told to and whose writes say how much reached the file.
    """

    def _openFile(self) -> None:
        self.closed = False
        self._file = cast(BinaryIO, open(self.path, "ab", 0))
        self.size = self._file.tell()

    def shouldRotate(self) -> bool:
        return False

    def endsMidLine(self) -> bool:
        """
        Whether the file has content that does not end with C{b"\\n"}.
        """
        if not self.size:
            return False
        try:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except OSError:
            return False  # not readable (a write-only file): assume it does not

    def reopenIfClosed(self) -> None:
        """
        Open the file again if a failed L{rotate} left it closed.
        """
        if self._file.closed:
            self._openFile()

    def writeSome(self, data: memoryview) -> int:
        """
        Write some of C{data}; return how many bytes were written.
        """
        written = self._file.write(data) or 0
        self.size += written
        return written

    def sync(self) -> None:
        """
        Ask the operating system to put what was written on disk.
        """
        os.fsync(self._file.fileno())


@implementer(ILineSink, IStatsSource)
class FileSink(Service):
    """
    Appends every line of a backplane to a file, one per line.

    The file is opened for appending (created if missing, never truncated;
    its folder must exist).  Each chunk published reaches the file whole, so
    lines from any number of publishers are never split or merged.  Lines
    are kept in memory and written at least every C{flush_interval} seconds,
    as soon as L{flushBytes} are waiting, and on L{stopService}.

    A file that cannot be opened or written (missing or read-only folder,
    permission denied, disk full) is logged loudly and counted; what is
    waiting is kept (up to L{maxBacklog} bytes, newer lines are dropped and
    counted past that) and written when a later flush succeeds.  Nothing is
    ever raised into a publisher, and the rest of the service goes on.

    With C{rotate_bytes}, a file about to grow past that size is renamed
    C{path.1} (older ones shift to C{path.2} and so on, keeping C{max_files}
    of them) and a new one started; rotation happens between lines, never
    inside one.  A single line longer than C{rotate_bytes} gets a file to
    itself.

    @ivar stats: the sink's L{FileSinkStats}.
    """

    log = Logger()

    #: Write at once when this many bytes are waiting (and the file works).
    flushBytes = 1024 * 1024
    #: The most bytes kept while the file cannot be written.
    maxBacklog = 16 * 1024 * 1024

    def __init__(
        self,
        backplane: Backplane,
        path: str,
        *,
        flush_interval: float = 1.0,
        fsync: bool = False,
        rotate_bytes: int = 0,
        max_files: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param backplane: the backplane whose lines are written.
        @param path: the file; a relative path is taken from the current
            folder now.
        @param flush_interval: the most seconds a line waits in memory.
        @param fsync: also C{os.fsync} the file after each flush.
        @param rotate_bytes: rotate the file before it grows past this many
            bytes; 0: never.
        @param max_files: how many rotated files (C{path.1} ...) to keep;
            L{None}: all of them.
        @param clock: the reactor (L{IReactorTime}) for the flush timer.
        @raise ValueError: an option out of range.
        """
        if flush_interval <= 0:
            raise ValueError("flush_interval must be more than 0")
        if rotate_bytes < 0:
            raise ValueError("rotate_bytes must be 0 (never) or more")
        if max_files is not None and max_files < 1:
            raise ValueError("max_files must be 1 or more (or None: keep all)")
        self.backplane = backplane
        self.path = os.path.abspath(path)
        self.flushInterval = flush_interval
        self.fsync = fsync
        self.rotateBytes = rotate_bytes
        self.maxFiles = max_files
        self.stats = FileSinkStats()
        self._chunks: list[bytes] = []
        self._file: _AppendFile | None = None
        self._subscription: Subscription | None = None
        self._midLine = False  # the file ends with part of a line we wrote
        self._cannotRotate = False  # in this flush
        self._rotationFailing = False  # logged
        self._failing = False
        self._errorsSinceOk = 0
        self._droppedSinceOk = 0
        self._loop = LoopingCall(self.flush)
        if clock is not None:
            self._loop.clock = clock

    def __repr__(self) -> str:
        return f"<FileSink {self.path!r} of {self.backplane.name!r}>"

    def report(self) -> dict[str, object]:
        """
        The sink's statistics (L{IStatsSource}): the counters of
        L{FileSinkStats}; its state is C{"writing"}, C{"failing"} (the file
        cannot be written now) or C{"stopped"}.
        """
        counters = asdict(self.stats)
        pending = counters.pop("pending")
        state = "stopped" if not self.running else "failing" if self._failing else "writing"
        return {
            "name": self.name or "file",
            "kind": "file",
            "state": state,
            "counters": counters,
            "gauges": {"pending": pending},
            "info": {"path": self.path, "subscribe_to": self.backplane.name},
        }

    def startService(self) -> None:
        """
        Open the file and start taking the backplane's lines.

        A file that cannot be opened is logged, and opening is retried at
        each flush; lines wait in memory meanwhile.
        """
        super().startService()
        if self._subscription is None:
            self._subscription = self.backplane.attach(self)
        self.flush()
        if not self._loop.running:
            self._loop.start(self.flushInterval, now=False)

    def stopService(self) -> None:
        """
        Stop taking lines, write what is waiting, and close the file.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self.flush()
        if self._chunks:
            self.log.critical(
                "File sink {path} stopped with {pending} bytes it could not write",
                path=self.path, pending=self.stats.pending,
            )
        self._close()

    # ILineSink

    def deliver(self, data: bytes, count: int) -> None:
        """
        Take a chunk of lines to write; never raises.
        """
        if self.stats.pending + len(data) > self.maxBacklog:
            self._drop(count)
            return
        self._chunks.append(data)
        self.stats.pending += len(data)
        if self.stats.pending >= self.flushBytes and not self._failing:
            self.flush()

    def _drop(self, count: int) -> None:
        if not self._droppedSinceOk:
            self.log.error(
                "File sink {path}: {pending} bytes are waiting to be written; "
                "dropping new lines until the file can be written",
                path=self.path, pending=self.stats.pending,
            )
        self._droppedSinceOk += count
        self.stats.dropped += count
        self.backplane.stats.dropped += count

    # Writing.

    def flush(self) -> None:
        """
        Write what is waiting now (and fsync, if asked); never raises.

        A failure is logged and counted, and what was not written waits for
        the next flush.
        """
        if self._file is None and not (self._chunks or self.running):
            return
        try:
            if self._file is None:
                self._open()
            if self._chunks:
                self._cannotRotate = False
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._writeOut(data)
                self.stats.flushes += 1
                if self.fsync:
                    assert self._file is not None
                    self._file.sync()
        except Exception:
            self._failed(Failure())
            return
        if self._failing:
            self._failing = False
            self.log.info(
                "File sink {path} is written again, after {errors} failed attempts "
                "({dropped} lines dropped meanwhile)",
                path=self.path, errors=self._errorsSinceOk, dropped=self._droppedSinceOk,
            )
        self._errorsSinceOk = 0
        self._droppedSinceOk = 0

    def reopen(self) -> None:
        """
        Write what waits, close the file and open its path again: what
        C{logrotate} expects after it has moved the file away (the twistd
        plugin does it on SIGHUP).  Never raises: a failure is logged and
        counted, and the lines wait for the next flush.
        """
        self.flush()
        self._close()
        if self.running:
            try:
                self._open()
            except Exception:
                self._failed(Failure())
                return
        self.log.info("File sink {path} reopened", path=self.path)

    def _open(self) -> None:
        logfile = _AppendFile.fromFullPath(
            self.path, rotateLength=self.rotateBytes or None, maxRotatedFiles=self.maxFiles
        )
        if not self._midLine and logfile.endsMidLine():
            # Someone else's half line: ours start on a line of their own.
            logfile.writeSome(memoryview(b"\n"))
        self._file = logfile

    def _writeOut(self, data: bytes) -> None:
        """
        Write all of C{data} (complete lines, though the first may be the
        rest of a line a failed write began), rotating between lines.
        """
        logfile = self._file
        assert logfile is not None
        view = memoryview(data)
        offset = 0
        try:
            while offset < len(data):
                stop = self._nextStop(data, offset)
                while offset < stop:
                    logfile = self._file
                    assert logfile is not None
                    written = logfile.writeSome(view[offset:stop])
                    if written <= 0:
                        raise OSError(f"no bytes written to {self.path}")
                    offset += written
                self._midLine = False
        finally:
            if offset:
                self._midLine = data[offset - 1 : offset] != b"\n"
                self.stats.bytes_written += offset
                self.stats.lines_written += data.count(b"\n", 0, offset)
            self._chunks = [data[offset:]] if offset < len(data) else []
            self.stats.pending = len(data) - offset

    def _nextStop(self, data: bytes, offset: int) -> int:
        """
        Where the next write from C{offset} ends, rotating the file first if
        the next line does not fit.
        """
        if self._midLine:
            # Finish the line a failed write began, in the same file.
            return data.index(b"\n", offset) + 1
        end = len(data)
        logfile = self._file
        limit = self.rotateBytes
        if not limit or self._cannotRotate or logfile is None:
            return end
        room = limit - logfile.size
        if end - offset <= room:
            return end
        cut = data.rfind(b"\n", offset, offset + max(room, 0)) + 1
        if cut:
            return cut
        if logfile.size == 0:
            # A line longer than rotate_bytes: it gets a file to itself.
            return data.index(b"\n", offset) + 1
        self._rotate(logfile)
        return self._nextStop(data, offset)

    def _rotate(self, logfile: _AppendFile) -> None:
        try:
            logfile.rotate()
        except OSError:
            # A rename failed half way; go on appending to the file we have.
            logfile.reopenIfClosed()
            self._cannotRotateNow(Failure().getErrorMessage())
            return
        if logfile.size:
            # LogFile.rotate gives up silently when os.access says it cannot.
            self._cannotRotateNow("the file or its folder is not writable")
            return
        self._rotationFailing = False
        self.stats.rotations += 1
        self.log.info("File sink {path} rotated", path=self.path)

    def _cannotRotateNow(self, error: str) -> None:
        self._cannotRotate = True
        self.stats.errors += 1
        if self._rotationFailing:
            return
        self._rotationFailing = True
        self.log.error(
            "File sink {path} cannot be rotated ({error}); writing on past "
            "rotate_bytes ({limit}) and trying again at each flush",
            path=self.path, error=error, limit=self.rotateBytes,
        )

    def _failed(self, failure: Failure) -> None:
        self.stats.errors += 1
        self._errorsSinceOk += 1
        self._close()
        if self._failing:
            return  # logged once for this failure; stats.errors counts the rest
        self._failing = True
        self.log.failure(
            "File sink {path} cannot be written: {error}; keeping up to {backlog} bytes "
            "in memory and retrying every {interval}s",
            failure, path=self.path, error=failure.getErrorMessage(),
            backlog=self.maxBacklog, interval=self.flushInterval,
        )

    def _close(self) -> None:
        logfile, self._file = self._file, None
        if logfile is not None and not logfile.closed:
            try:
                logfile.close()
            except Exception:
                self.log.failure("File sink {path}: error closing the file", path=self.path)
