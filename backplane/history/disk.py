"""
L{DiskStore}: the history of a backplane in append-only files, kept across
restarts.  docs/history.md describes the files, the fsync policy and what
survives what.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from bisect import bisect_right
from typing import cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from backplane.history.base import History, Marks, StoreError, Waiters, fitLines, skipLines
from backplane.history.ids import formatId, isEpoch, newEpoch
from backplane.history.segments import (
    HEADER,
    INDEX_INTERVAL,
    MARK_HEADER,
    MARK_MAGIC,
    Segment,
    markRecord,
    record,
    scan,
    segmentName,
    segmentSeq,
)

#: The version of the files this module writes and reads.
FORMAT = 2
#: The formats this version reads (1: no mark records).
FORMATS = (1, 2)
#: The default bound of a store's segment files: 1 GiB.
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
#: The default size at which a new segment file is begun: 16 MiB.
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
#: The default seconds between fsyncs while there is unsynced data.
DEFAULT_FSYNC_INTERVAL = 0.1
#: Seconds between attempts to write again after a write failed.
RETRY_INTERVAL = 5.0
METADATA = "meta.json"
LOCK = "lock"
LOST = "lost-"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def bootId() -> str | None:
    """
    The id of the running boot of the machine (Linux); None where there is
    none.  A store open when the machine stopped is told apart from one
    whose process stopped by it.
    """
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _fsyncFolder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskStore(History):
    """
    The history of a backplane in append-only segment files in one folder,
    which keeps its epoch across restarts (see docs/history.md).

    Each L{append} is one C{os.write} of one record straight to the file, so
    whatever it returned survives the process being killed; an C{fsync}
    follows within C{fsyncInterval} seconds, and L{whenSynced} fires after
    it.  At open, the files are checked; when the history cannot be shown
    to be continuous (lost or unreadable files, a corrupt record, a machine
    that stopped while the store was open), the old files are set aside in
    C{lost-EPOCH/} and a new epoch begins.

    Open one with L{DiskStore.open}.

    @ivar path: the folder.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        *,
        maxBytes: int,
        segmentBytes: int,
        maxMessages: int | None,
        fsyncInterval: float,
        keepLost: int,
        clock: IReactorTime,
    ) -> None:
        """
        Use L{DiskStore.open}.
        """
        if maxBytes < 1 or segmentBytes < 1 or fsyncInterval < 0 or keepLost < 0 \
                or (maxMessages is not None and maxMessages < 1):
            raise ValueError("maxBytes, segmentBytes and maxMessages are positive; "
                             "fsyncInterval and keepLost are not negative")
        self.path = path
        self.maxBytes = maxBytes
        self.segmentBytes = min(segmentBytes, max(maxBytes // 4, 1))
        self.maxMessages = maxMessages
        self.fsyncInterval = fsyncInterval
        self.keepLost = keepLost
        self._clock = clock
        self._epoch = ""
        # The epoch of the files in the folder (the one in their metadata).
        self._filesEpoch: str | None = None
        self._segments: list[Segment] = []
        self._firsts: list[int] = []  # each segment's first SEQ, for bisect
        self._fd: int | None = None  # the last segment's, for appending
        self._lockFd: int | None = None
        self._readCache: tuple[Segment, int] | None = None
        self._next = 1
        self._first = 1
        self._synced = 0
        self._unstored = 0  # the highest SEQ of this epoch never stored
        self._bytes = 0
        self._timer: IDelayedCall | None = None
        self._unsynced = False
        self._syncFds: list[int] = []  # segments ended since the last fsync
        self._syncFolder = False
        self._broken = False
        self._retryAt = 0.0
        self._closed = False
        self._boot = bootId()
        self._marks = Marks()
        self._waiters = Waiters()
        self._appends = 0
        self._fsyncs = 0
        self._truncations = 0
        self._errors = 0
        self._epochs = 0
        # forget(): the messages up to this SEQ go at the next fsync.
        self._forgetting = 0

    @classmethod
    def open(
        cls,
        path: str,
        *,
        maxBytes: int = DEFAULT_MAX_BYTES,
        segmentBytes: int = DEFAULT_SEGMENT_BYTES,
        maxMessages: int | None = None,
        fsyncInterval: float = DEFAULT_FSYNC_INTERVAL,
        keepLost: int = 1,
        clock: IReactorTime | None = None,
    ) -> DiskStore:
        """
        Open the store in folder C{path} (made if missing), checking and
        indexing its files.

        @param maxBytes: the most bytes of segment files kept: past it, the
            oldest file is removed (never the one being written).
        @param segmentBytes: a new segment file is begun before one would
            grow past this (lowered to C{maxBytes / 4}, so that removing the
            oldest file drops a small part of the history).
        @param maxMessages: the most messages kept (None: bounded by bytes
            only); older ones are no longer read, and a file is removed once
            all of its are older.
        @param fsyncInterval: the most seconds between a write and its
            C{fsync}; 0: an C{fsync} after every append (slow: one disk
            flush a chunk).
        @param keepLost: how many C{lost-EPOCH/} folders of set-aside files
            to keep (the newest); 0: remove set-aside files at once.
        @param clock: the reactor's clock (default: the global reactor).
        @raise StoreError: the folder cannot be made or written, another
            process has it open, or its files are of a newer format.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        store = cls(path, maxBytes=maxBytes, segmentBytes=segmentBytes, maxMessages=maxMessages,
                    fsyncInterval=fsyncInterval, keepLost=keepLost, clock=clock)
        try:
            store._open()
        except BaseException:
            store._closeFiles()
            raise
        return store

    # -- opening

    def _open(self) -> None:
        path = self.path
        try:
            os.makedirs(path, exist_ok=True)
            self._lockFd = os.open(os.path.join(path, LOCK),
                                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"history store {path}: cannot make or write the folder: "
                             f"{e.strerror}") from e
        try:
            fcntl.flock(self._lockFd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise StoreError(f"history store {path}: in use by another process") from e
        metadata, reason = self._readMetadata()
        if metadata is not None:
            self._marks.load(cast(dict[str, object], metadata["marks"]))
            self._epoch = self._filesEpoch = cast(str, metadata["epoch"])
            self._next = cast(int, metadata["next"])
            if reason is None:
                try:
                    reason = self._loadSegments(metadata)
                except OSError as e:
                    raise StoreError(f"history store {path}: cannot read or write its files: "
                                     f"{e.strerror}") from e
        if reason is not None:
            self._loseContinuity(reason)
        elif metadata is None:
            self._epoch = newEpoch()
            self._epochs += 1
        self._first = self._segments[0].first if self._segments else self._next
        self._synced = self._next - 1
        try:
            self._writeMetadata(clean=False)
            if self._segments:
                self._fd = os.open(self._segments[-1].path,
                                   os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"history store {path}: cannot write: {e.strerror}") from e
        self._trim()
        self.log.info("history store {path}: epoch {epoch}, messages {first} to {last}",
                      path=path, epoch=self._epoch, first=self._first, last=self._next - 1)

    def _readMetadata(self) -> tuple[dict[str, object] | None, str | None]:
        """
        The metadata, checked; or None and why continuity is lost (None too
        if there is nothing in the folder).

        @raise StoreError: the metadata cannot be read, or is of a newer
            format.
        """
        where = os.path.join(self.path, METADATA)
        try:
            with open(where, "rb") as f:
                raw = f.read(1024 * 1024 * 64)
        except FileNotFoundError:
            if self._segmentFiles():
                return None, "its metadata file is missing"
            return None, None
        except OSError as e:
            raise StoreError(f"history store {self.path}: cannot read {METADATA}: "
                             f"{e.strerror}") from e
        try:
            metadata = json.loads(raw)
        except ValueError:
            return None, "its metadata file is not JSON"
        if not isinstance(metadata, dict):
            return None, "its metadata file is not a JSON object"
        version = metadata.get("format")
        if isinstance(version, int) and version > FORMAT:
            raise StoreError(f"history store {self.path}: its files are of format {version}, "
                             f"newer than this version of backplane reads ({FORMAT}); "
                             f"they are left as they are")
        epoch, nextSeq = metadata.get("epoch"), metadata.get("next")
        if version not in FORMATS or not isinstance(epoch, str) or not isEpoch(epoch) \
                or not isinstance(nextSeq, int) or nextSeq < 1 \
                or not isinstance(metadata.get("clean"), bool) \
                or not isinstance(metadata.get("marks"), dict):
            return None, "its metadata file is not valid"
        return metadata, None

    def _segmentFiles(self) -> list[tuple[int, str]]:
        """
        The segment files in the folder, by first SEQ.
        """
        found = []
        for name in os.listdir(self.path):
            seq = segmentSeq(name)
            if seq is not None:
                found.append((seq, os.path.join(self.path, name)))
        return sorted(found)

    def _loadSegments(self, metadata: dict[str, object]) -> str | None:
        """
        Check and index the segment files; truncate an incomplete last
        record.  Return why continuity is lost, or None.
        """
        files = self._segmentFiles()
        for index, (first, path) in enumerate(files):
            if os.path.getsize(path) == 0:  # begun, never written
                os.unlink(path)
                continue
            if self._segments and first != self._segments[-1].next:
                return (f"messages {self._segments[-1].next} to {first - 1} are missing "
                        f"(segment files were removed)")
            try:
                found = scan(path, first)
            except OSError as e:
                return f"{os.path.basename(path)} cannot be read: {e.strerror}"
            if found.problem is not None:
                where = os.path.basename(path)
                if index < len(files) - 1:
                    return f"{where} is corrupt: {found.problem}"
                self._truncate(path, found.segment.size, found.problem)
                if not found.torn:
                    return f"{where} is corrupt: {found.problem}"
                if metadata["clean"] or metadata.get("boot") != self._boot \
                        or self._boot is None:
                    return f"{where} ends in an incomplete record"
            for publisherId, mark in found.marks.items():
                # A mark record is on disk with its lines; the metadata's
                # marks are as of the last fsync.
                if mark > self._marks.get(publisherId):
                    self._marks.set(publisherId, mark)
            if found.segment.size:
                self._segments.append(found.segment)
                self._bytes += found.segment.size
        ends = self._segments[-1].next if self._segments else None
        if ends is not None and ends < self._next:
            return f"messages {ends} to {self._next - 1} are missing at the end"
        if ends is None and not metadata["clean"]:
            # Its "next" was written at open: later messages may have had ids.
            return "it has no segment files, and it was not closed"
        if not metadata["clean"] and (self._boot is None or metadata.get("boot") != self._boot):
            return ("the machine stopped while the store was open, so messages written "
                    "after its last fsync may be lost")
        try:
            for segment in self._segments:
                fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)  # what a killed process wrote, made durable
                finally:
                    os.close(fd)
        except OSError as e:
            raise StoreError(f"history store {self.path}: cannot fsync: {e.strerror}") from e
        self._firsts = [segment.first for segment in self._segments]
        if ends is not None:
            self._next = ends
        return None

    def _truncate(self, path: str, size: int, problem: str) -> None:
        self.log.warn("history store {path}: {file} truncated from {was} to {size} bytes: "
                      "{problem}", path=self.path, file=os.path.basename(path),
                      was=os.path.getsize(path), size=size, problem=problem)
        self._truncations += 1
        try:
            os.truncate(path, size)
        except OSError as e:
            raise StoreError(f"history store {self.path}: cannot truncate "
                             f"{os.path.basename(path)}: {e.strerror}") from e

    def _loseContinuity(self, reason: str) -> None:
        """
        Set the files aside and begin a new epoch, empty, at SEQ 1.
        """
        old = self._filesEpoch
        for segment in self._segments:
            segment.size = 0
        self._segments, self._firsts, self._bytes = [], [], 0
        self._epoch = newEpoch(avoid=old)
        self._epochs += 1
        self._next = 1
        try:
            lost = self._setAside(old or "unknown")
        except OSError as e:
            raise StoreError(f"history store {self.path}: cannot set its files aside: "
                             f"{e.strerror}") from e
        self.log.warn("history store {path}: continuity lost: {reason}; a new epoch {epoch} "
                      "begins; the old files are {where}", path=self.path, reason=reason,
                      epoch=self._epoch, where=f"in {lost}" if lost else "removed")

    def _setAside(self, epoch: str) -> str | None:
        """
        Move the segment and metadata files into C{lost-EPOCH/} (or remove
        them, with C{keepLost} 0), keeping at most C{keepLost} such folders.
        Return the folder, or None.
        """
        # The metadata first: without it, files left by a crash half way
        # through are not mistaken for the whole store.
        names = sorted((name for name in os.listdir(self.path)
                        if segmentSeq(name) is not None or name.startswith(METADATA)),
                       key=lambda name: not name.startswith(METADATA))
        if not names:
            return None
        folders = sorted((os.stat(os.path.join(self.path, name)).st_mtime, name)
                         for name in os.listdir(self.path) if name.startswith(LOST))
        for _, name in folders[:max(len(folders) - self.keepLost + 1, 0)]:
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        if self.keepLost == 0:
            for name in names:
                os.unlink(os.path.join(self.path, name))
            return None
        lost = os.path.join(self.path, LOST + epoch)
        suffix = 1
        while os.path.exists(lost):
            suffix += 1
            lost = os.path.join(self.path, f"{LOST}{epoch}-{suffix}")
        os.mkdir(lost)
        for name in names:
            os.rename(os.path.join(self.path, name), os.path.join(lost, name))
        _fsyncFolder(self.path)
        return lost

    def _writeMetadata(self, clean: bool) -> None:
        """
        Replace the metadata file atomically: write a temporary file, fsync
        it, rename it over the old one, fsync the folder.
        """
        metadata = {"format": FORMAT, "epoch": self._epoch, "next": self._next,
                    "clean": clean, "boot": self._boot, "marks": self._marks.asDict()}
        where = os.path.join(self.path, METADATA)
        temporary = where + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = memoryview(json.dumps(metadata).encode("ascii"))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, where)
        _fsyncFolder(self.path)
        self._filesEpoch = self._epoch
        self._marks.dirty = False

    # -- the history

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def first(self) -> int:
        return self._first

    @property
    def last(self) -> int:
        return self._next - 1

    @property
    def synced(self) -> int:
        return self._synced

    @property
    def storing(self) -> bool:
        """
        Whether appends are stored (False after a failed write, until a
        write works again).
        """
        return not self._broken

    def append(self, data: bytes, count: int,
               mark: tuple[str, int] | None = None) -> int:
        if self._closed:
            raise StoreError(f"history store {self.path}: closed")
        seq = self._next
        if self._broken:
            if self._clock.seconds() < self._retryAt or not self._restart(seq, data, count):
                self._next = self._first = seq + count
                self._unstored = seq + count - 1
                self._appends += 1
            return seq
        try:
            self._write(seq, data, count, mark)
        except OSError as e:
            self._fail(e)
            return self.append(data, count, mark)
        return seq

    def _write(self, seq: int, data: bytes, count: int,
               mark: tuple[str, int] | None = None) -> None:
        """
        Write the record of a chunk (and of its publisher's mark, in the
        same C{write}), in a new segment file if it is time.
        """
        chunk = record(seq, count, data)
        extra = 0
        if mark is not None:
            marking = markRecord(*mark)
            extra = len(marking)
            chunk += marking
            self._marks.set(*mark)
        size = len(chunk)
        fd = self._fd
        if fd is None or (self._segments[-1].size
                          and self._segments[-1].size + size > self.segmentBytes):
            fd = self._begin(seq)
        written = os.write(fd, chunk)
        while written < size:
            written += os.write(fd, memoryview(chunk)[written:])
        self._segments[-1].add(seq, count, size - extra)
        if extra:
            self._segments[-1].extend(extra)
        self._next = seq + count
        self._bytes += size
        self._appends += 1
        self._unsynced = True
        if self._bytes > self.maxBytes or (self.maxMessages is not None
                                           and self._next - self._first > self.maxMessages):
            self._trim()
        if self._timer is None:
            self._scheduleSync()

    def _begin(self, seq: int) -> int:
        """
        Begin a new segment file, whose first message is C{seq}; return its
        file descriptor.
        """
        path = os.path.join(self.path, segmentName(seq))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        if self._fd is not None:
            if self._unsynced:
                self._syncFds.append(self._fd)
            else:
                os.close(self._fd)
        self._fd = fd
        self._syncFolder = True
        self._segments.append(Segment(path, seq))
        self._firsts.append(seq)
        return fd

    def _trim(self) -> None:
        """
        Keep within C{maxMessages} and C{maxBytes}: forget the oldest
        messages, and remove the files of the oldest segments.
        """
        if self.maxMessages is not None and self._next - self._first > self.maxMessages:
            self._first = self._next - self.maxMessages
        segments = self._segments
        while len(segments) > 1 and (self._bytes > self.maxBytes
                                     or segments[1].first <= self._first):
            segment = segments.pop(0)
            del self._firsts[0]
            self._bytes -= segment.size
            if self._readCache is not None and self._readCache[0] is segment:
                os.close(self._readCache[1])
                self._readCache = None
            try:
                os.unlink(segment.path)
            except OSError as e:
                self._errors += 1
                self.log.error("history store {path}: cannot remove {file}: {error}",
                               path=self.path, file=segment.path, error=e.strerror)
        if segments:
            self._first = max(self._first, segments[0].first)

    def _scheduleSync(self) -> None:
        if self.fsyncInterval == 0:
            self._sync()
        else:
            self._timer = self._clock.callLater(self.fsyncInterval, self._sync)

    def _sync(self) -> None:
        """
        fsync what was written (and the metadata, if a mark changed); then
        fire the L{whenSynced} waiters it satisfies.
        """
        self._timer = None
        if self._broken or self._closed:
            return
        target = self._next - 1
        if not (self._unsynced or self._syncFds or self._syncFolder or self._marks.dirty):
            self._synced = target
            self._forget()
            return
        try:
            while self._syncFds:
                os.fsync(self._syncFds[0])
                os.close(self._syncFds.pop(0))
            if self._unsynced and self._fd is not None:
                os.fsync(self._fd)
            if self._syncFolder:
                _fsyncFolder(self.path)
            if self._marks.dirty:
                self._writeMetadata(clean=False)
        except OSError as e:
            self._fail(e)
            return
        self._unsynced = self._syncFolder = False
        self._fsyncs += 1
        self._synced = target
        self._forget()
        if self._waiters:
            self._waiters.fire(target)

    def forget(self, upTo: int) -> None:
        """
        Forget the messages up to SEQ C{upTo}, which are no longer needed (a
        spool's lines, once delivered: see L{backplane.outbox}).

        They go at the next fsync, after the marks set before this call are
        durable (so that a mark saying how far they were delivered never
        lags behind what is gone, even after a C{kill -9}): from then on
        they are no longer read, and the segment files that hold nothing
        else are removed (never the one being written).  A store opened
        again reads its files from their first message.
        """
        if upTo <= self._forgetting:
            return
        self._forgetting = upTo
        if self._timer is None and not self._broken and not self._closed:
            self._scheduleSync()

    def _forget(self) -> None:
        """
        Forget what L{forget} was asked to, now that the marks are durable.
        """
        first = min(self._forgetting + 1, self._next)
        if first > self._first:
            self._first = first
            self._trim()

    # -- when a write fails

    def _fail(self, error: OSError) -> None:
        """
        A write or fsync failed: stop storing, and begin a new epoch, since
        the ids given from now on are not stored (see docs/history.md).
        """
        self._errors += 1
        old = self._epoch
        self._forgetFiles()
        self._broken = True
        self._retryAt = self._clock.seconds() + RETRY_INTERVAL
        self._epoch = newEpoch(avoid=old)
        self._epochs += 1
        self._next = self._first = 1
        self._synced = self._unstored = 0
        self.log.error("history store {path}: cannot write ({error}): messages are delivered "
                       "but not stored until a write works again (tried every {retry} "
                       "seconds); the ids begin a new epoch {epoch}", path=self.path,
                       error=os.strerror(error.errno or errno.EIO), retry=RETRY_INTERVAL,
                       epoch=self._epoch)
        self._waiters.fail(StoreError(f"history store {self.path}: not stored: a write failed"))

    def _forgetFiles(self) -> None:
        """
        Close the files and forget the segments (but keep the lock).
        """
        self._closeFiles(keepLock=True)
        self._segments, self._firsts, self._bytes = [], [], 0
        self._unsynced = self._syncFolder = False

    def _restart(self, seq: int, data: bytes, count: int) -> bool:
        """
        Try to store again: set the old files aside, store the chunk in a
        fresh segment file, write the metadata; return whether that worked.
        The epoch begun when writing failed goes on, the messages before
        C{seq} not kept.
        """
        try:
            lost = self._setAside(self._filesEpoch or "unknown")
            self._filesEpoch = self._epoch
            self._write(seq, data, count)
            self._writeMetadata(clean=False)
        except OSError as e:
            self._forgetFiles()
            self._next = seq
            self._errors += 1
            self._retryAt = self._clock.seconds() + RETRY_INTERVAL
            self.log.debug("history store {path}: still cannot write: {error}",
                           path=self.path, error=e.strerror)
            return False
        self._broken = False
        self._first = seq
        self.log.info("history store {path}: writing again, from {id}; the files of the "
                      "epoch before are {where}", path=self.path,
                      id=formatId(self._epoch, seq).decode("ascii"),
                      where=f"in {lost}" if lost else "removed")
        return True

    # -- reading

    def read(self, after: int, maxBytes: int) -> tuple[bytes, int, int]:
        if self._closed:
            raise StoreError(f"history store {self.path}: closed")
        start = max(after + 1, self._first)
        if start >= self._next:
            return b"", 0, self._next
        segment = self._segments[bisect_right(self._firsts, start) - 1]
        fd = self._readFd(segment)
        offset = segment.locate(start)
        window = min(segment.size - offset, 2 * maxBytes + INDEX_INTERVAL + HEADER.size)
        data = os.pread(fd, window, offset)
        view = memoryview(data)
        pieces: list[memoryview] = []
        room = maxBytes
        count = 0
        position = 0
        while position + HEADER.size <= len(data) and room > 0:
            if data[position:position + 4] == MARK_MAGIC:
                _, length, _, _ = MARK_HEADER.unpack_from(data, position)
                position += MARK_HEADER.size + length
                continue
            _, seq, lines, length, _ = HEADER.unpack_from(data, position)
            begin = position + HEADER.size
            position = end = begin + length
            if seq + lines <= start:
                continue
            if end > len(data):  # not all in the window
                if pieces:
                    break
                data = os.pread(fd, length, offset + begin)
                view = memoryview(data)
                begin = 0
                position = end = length
            if seq < start:
                begin = skipLines(data, begin, end, start - seq)
                lines -= start - seq
            if end - begin > room:
                if pieces:
                    break
                end = fitLines(data, begin, end, room)
                pieces.append(view[begin:end])
                count = data.count(b"\n", begin, end)
                break
            pieces.append(view[begin:end])
            count += lines
            room -= end - begin
        return b"".join(pieces), count, start

    def _readFd(self, segment: Segment) -> int:
        """
        A file descriptor to read C{segment} with.
        """
        if segment is self._segments[-1] and self._fd is not None:
            return self._fd
        if self._readCache is not None:
            if self._readCache[0] is segment:
                return self._readCache[1]
            os.close(self._readCache[1])
            self._readCache = None
        fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        self._readCache = (segment, fd)
        return fd

    # -- the rest

    def whenSynced(self, seq: int) -> Deferred[None]:
        if seq <= self._unstored or (self._broken and seq < self._next):
            return fail(StoreError(f"history store {self.path}: message {seq} is not stored"))
        if seq <= self._synced:
            return succeed(None)
        if self._closed:
            return fail(StoreError(f"history store {self.path}: closed"))
        return self._waiters.add(seq)

    def mark(self, publisherId: str) -> int:
        return self._marks.get(publisherId)

    def setMark(self, publisherId: str, seq: int) -> None:
        self._marks.set(publisherId, seq)
        if self._timer is None and not self._broken and not self._closed:
            self._scheduleSync()

    def report(self) -> dict[str, object]:
        return {
            "kind": "disk",
            "path": self.path,
            "epoch": self._epoch,
            "first": self._first,
            "last": self._next - 1,
            "synced": self._synced,
            "messages": self._next - self._first,
            "bytes": self._bytes,
            "segments": len(self._segments),
            "storing": not self._broken,
            "appends": self._appends,
            "fsyncs": self._fsyncs,
            "truncations": self._truncations,
            "errors": self._errors,
            "epochs": self._epochs,
            "marks": len(self._marks),
        }

    def close(self) -> Deferred[None]:
        """
        fsync what is left, mark the metadata clean (so that the next open
        need not suspect a machine stop), and close the files.
        """
        if self._closed:
            return succeed(None)
        if self._timer is not None:
            self._timer.cancel()
        self._sync()
        if not self._broken:
            try:
                self._writeMetadata(clean=True)
            except OSError as e:
                self._errors += 1
                self.log.error("history store {path}: cannot write its metadata: {error}",
                               path=self.path, error=e.strerror)
        self._closed = True
        self._closeFiles()
        self._waiters.fail(StoreError(f"history store {self.path}: closed"))
        return succeed(None)

    def _closeFiles(self, keepLock: bool = False) -> None:
        """
        Close every file descriptor (but the lock's, if C{keepLock}),
        ignoring errors.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        fds = [*self._syncFds, self._fd]
        if self._readCache is not None:
            fds.append(self._readCache[1])
        if not keepLock:
            fds.append(self._lockFd)
            self._lockFd = None
        self._syncFds, self._fd, self._readCache = [], None, None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
