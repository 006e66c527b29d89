"""
The history of a backplane (backplane.history): ids, the resume decision,
the memory history and the disk store (appending, reading in chunks,
bounds, fsync, reopening, recovery from torn and corrupt files and failed
writes), a Hypothesis state machine of the segment format, and a store
whose writer is killed with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from backplane.history import (
    DiskStore,
    History,
    MemoryHistory,
    Resume,
    StoreError,
    formatId,
    newEpoch,
    parseId,
    resume,
    withIds,
)
from backplane.history import disk as diskModule
from backplane.history.base import Marks
from backplane.history.disk import FORMAT, METADATA, RETRY_INTERVAL
from backplane.history.memory import CHUNK_OVERHEAD
from backplane.history.segments import HEADER, INDEX_INTERVAL, record, scan, segmentName
from tests.test_relay import LogCapture
from tests.test_sinks import unprivileged


def lines(*payloads: bytes) -> bytes:
    return b"".join(payload + b"\n" for payload in payloads)


def payload(seq: int, size: int | None = None) -> bytes:
    """
    A payload that names its SEQ, of C{size} bytes (or a size that varies
    with the SEQ).
    """
    text = b"m%d-" % seq
    if size is None:
        size = len(text) + seq % 37
    return (text + b"x" * size)[:max(size, len(text))]


def chunkOf(first: int, count: int, size: int | None = None) -> bytes:
    return lines(*(payload(seq, size) for seq in range(first, first + count)))


def readAll(history, after: int = 0, maxBytes: int = 1 << 30) -> tuple[bytes, int, int]:
    """
    Read everything after C{after} by repeated reads of at most C{maxBytes};
    check that the reads follow on.  Return C{(data, count, firstSeq)}.
    """
    pieces, total, firstSeq = [], 0, None
    while True:
        data, count, seq = history.read(after, maxBytes)
        if not count:
            assert data == b"" and seq == history.last + 1, (data, count, seq)
            break
        assert data.count(b"\n") == count and data.endswith(b"\n")
        assert len(data) <= maxBytes or count == 1, (len(data), maxBytes, count)
        if firstSeq is None:
            firstSeq = seq
        else:
            assert seq == after + 1, (seq, after)
        pieces.append(data)
        total += count
        after = seq + count - 1
    return b"".join(pieces), total, firstSeq if firstSeq is not None else history.last + 1


class IdTests(SynchronousTestCase):
    def test_newEpoch(self):
        """
        An epoch is 10 characters 0-9 a-z, different every time.
        """
        epochs = {newEpoch() for _ in range(100)}
        self.assertEqual(len(epochs), 100)
        for epoch in epochs:
            self.assertRegex(epoch, r"\A[0-9a-z]{10}\Z")
            self.assertEqual(parseId(formatId(epoch, 1)), (epoch, 1))

    def test_newEpochAvoids(self):
        epoch = newEpoch()
        self.assertNotEqual(newEpoch(avoid=epoch), epoch)

    def test_formatId(self):
        self.assertEqual(formatId("abc", 1), b"abc:1")
        self.assertEqual(formatId("z9", 10**17), b"z9:100000000000000000")

    def test_parseId(self):
        self.assertEqual(parseId(b"abc:1"), ("abc", 1))
        self.assertEqual(parseId("abc:42"), ("abc", 42))
        self.assertEqual(parseId(b"0:7"), ("0", 7))
        self.assertEqual(parseId("a" * 32 + ":" + "9" * 18), ("a" * 32, int("9" * 18)))

    def test_parseIdBad(self):
        """
        Every malformed id is a ValueError whose message says what is wrong.
        """
        cases: dict[bytes | str, str] = {
            b"abc": "no ':'",
            b"": "no ':'",
            b":1": "epoch",
            b"ABC:1": "epoch",
            b"a-b:1": "epoch",
            b"a" * 33 + b":1": "epoch",
            b"abc:": "SEQ",
            b"abc:0": "SEQ",
            b"abc:01": "SEQ",
            b"abc:+1": "SEQ",
            b"abc:-1": "SEQ",
            b"abc: 1": "SEQ",
            b"abc:1 ": "SEQ",
            b"abc:1x": "SEQ",
            b"abc:1:2": "SEQ",
            b"abc:" + b"1" * 19: "SEQ",
            b"abc:\xff": "SEQ",
            "ab\u00e9:1": "ASCII",
            b"a" * 40 + b":" + b"1" * 20: "longer",
        }
        for text, reason in cases.items():
            with self.assertRaises(ValueError, msg=text) as caught:
                parseId(text)
            self.assertIn(reason, str(caught.exception), text)

    def test_parseIdShowsLittle(self):
        """
        However long the input, the error shows at most 64 bytes of it.
        """
        for text in (b"A" * 100_000, "\u00e9" * 100_000, b"ab:" + b"x" * 40):
            with self.assertRaises(ValueError) as caught:
                parseId(text)
            self.assertLess(len(str(caught.exception)), 250)
        with self.assertRaises(ValueError) as caught:
            parseId(b"Q" * 1000)
        self.assertIn("'" + "Q" * 64 + "'...", str(caught.exception))


def withIdsByLine(epoch: str, first: int, data: bytes, count: int) -> bytes:
    """
    What L{withIds} does, line by line.
    """
    result = data.split(b"\n")[:-1]
    assert len(result) == count
    return b"".join(formatId(epoch, first + i) + b" " + line + b"\n"
                    for i, line in enumerate(result))


class WithIdsTests(SynchronousTestCase):
    def test_one(self):
        self.assertEqual(withIds("ep", 5, b"hello\n", 1), b"ep:5 hello\n")

    def test_many(self):
        self.assertEqual(withIds("ep", 9, b"a\nb\n\nd\n", 4),
                         b"ep:9 a\nep:10 b\nep:11 \nep:12 d\n")

    def test_awkwardBytes(self):
        """
        Payloads are opaque: %, :, spaces, \\r and any byte pass unchanged.
        """
        data = lines(b"%s %d %%", b"a:1 b", b"\r", b"\x00\xff", b"")
        self.assertEqual(withIds("z", 1, data, 5), withIdsByLine("z", 1, data, 5))

    @given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), min_size=1,
                    max_size=40),
           st.integers(min_value=1, max_value=10**17))
    def test_likeLineByLine(self, payloads, first):
        data = lines(*payloads)
        self.assertEqual(withIds("e1", first, data, len(payloads)),
                         withIdsByLine("e1", first, data, len(payloads)))


class FakeHistory:
    def __init__(self, epoch: str, first: int, last: int) -> None:
        self.epoch, self.first, self.last = epoch, first, last


class ResumeTests(SynchronousTestCase):
    history = FakeHistory("ep", 10, 20)

    def test_everything(self):
        """
        C{RESUME 0}: everything kept, no gap.
        """
        self.assertEqual(resume(self.history, "0"), Resume(10, False))
        self.assertEqual(resume(self.history, b"0"), Resume(10, False))

    def test_sameEpoch(self):
        """
        An id from C{first - 1} to C{last}: the messages after it, no gap.
        """
        for seq in (9, 10, 15, 20):
            self.assertEqual(resume(self.history, b"ep:%d" % seq), Resume(seq + 1, False))

    def test_otherEpoch(self):
        self.assertEqual(resume(self.history, "other:15"), Resume(10, True))

    def test_tooOld(self):
        """
        Older than the oldest kept: everything kept, after a gap.
        """
        self.assertEqual(resume(self.history, "ep:8"), Resume(10, True))
        self.assertEqual(resume(self.history, "ep:1"), Resume(10, True))

    def test_future(self):
        """
        A SEQ not reached yet: live messages only, after a gap.
        """
        self.assertEqual(resume(self.history, "ep:21"), Resume(21, True))
        self.assertEqual(resume(self.history, "ep:99999"), Resume(21, True))

    def test_empty(self):
        history = FakeHistory("ep", 1, 0)
        self.assertEqual(resume(history, "0"), Resume(1, False))
        self.assertEqual(resume(history, "ep:1"), Resume(1, True))
        self.assertEqual(resume(history, "xx:1"), Resume(1, True))

    def test_malformed(self):
        for text in ("", "00", "ep", "ep:0", "ep:1 ", "0 ", "EP:1", b"ep:\xff"):
            self.assertRaises(ValueError, resume, self.history, text)

    def test_aRealHistory(self):
        history = MemoryHistory(5)
        history.append(chunkOf(1, 8), 8)
        self.assertEqual((history.first, history.last), (4, 8))
        id = formatId(history.epoch, 6)
        self.assertEqual(resume(history, id), Resume(7, False))


class MarksTests(SynchronousTestCase):
    def test_bounded(self):
        """
        Past the limit, the id updated least recently is forgotten.
        """
        marks = Marks(limit=3)
        for name, seq in [("a", 1), ("b", 2), ("c", 3), ("a", 4), ("d", 5)]:
            marks.set(name, seq)
        self.assertEqual(marks.asDict(), {"c": 3, "a": 4, "d": 5})
        self.assertEqual(marks.get("b"), 0)
        self.assertTrue(marks.dirty)

    def test_bad(self):
        marks = Marks()
        self.assertRaises(ValueError, marks.set, "", 1)
        self.assertRaises(ValueError, marks.set, "x" * 257, 1)
        self.assertRaises(ValueError, marks.set, "a", -1)

    def test_load(self):
        marks = Marks()
        marks.load({"a": 3, "b": "x", "c": True, "": 4, "d": 0})
        self.assertEqual(marks.asDict(), {"a": 3, "d": 0})
        self.assertFalse(marks.dirty)


if TYPE_CHECKING:
    # The contract's tests run as a SynchronousTestCase's, mixed in.
    _ContractBase = SynchronousTestCase
else:
    _ContractBase = object


class HistoryContract(_ContractBase):
    """
    What every history does; C{makeHistory(maxMessages)} makes one.
    """

    def makeHistory(self, maxMessages: int = 1_000_000) -> History:
        raise NotImplementedError()

    def test_empty(self):
        history = self.makeHistory()
        self.assertEqual((history.first, history.last), (1, 0))
        self.assertEqual(history.read(0, 100), (b"", 0, 1))
        self.assertRegex(history.epoch, r"\A[0-9a-z]{1,32}\Z")
        report = history.report()
        for key in ("epoch", "first", "last", "messages", "bytes", "appends", "fsyncs",
                    "truncations", "errors"):
            self.assertIn(key, report)

    def test_appendAndRead(self):
        """
        Each chunk's first SEQ follows on from the one before; a read gives
        back the lines.
        """
        history = self.makeHistory()
        self.assertEqual(history.append(lines(b"a", b"b"), 2), 1)
        self.assertEqual(history.append(lines(b"c"), 1), 3)
        self.assertEqual(history.append(lines(b"d", b"", b"f"), 3), 4)
        self.assertEqual((history.first, history.last), (1, 6))
        self.assertEqual(history.read(0, 1000), (lines(b"a", b"b", b"c", b"d", b"", b"f"), 6, 1))
        self.assertEqual(history.read(3, 1000), (lines(b"d", b"", b"f"), 3, 4))
        self.assertEqual(history.read(6, 1000), (b"", 0, 7))
        self.assertEqual(history.read(600, 1000), (b"", 0, 7))
        report = history.report()
        self.assertEqual((report["first"], report["last"], report["messages"],
                          report["appends"]), (1, 6, 6, 3))

    def test_readInsideAChunk(self):
        """
        A read may begin inside a chunk and end inside its first chunk, at
        whole lines.
        """
        history = self.makeHistory()
        history.append(lines(b"a1", b"b22", b"c333", b"d4444"), 4)
        history.append(lines(b"e", b"f"), 2)
        self.assertEqual(history.read(2, 1000), (lines(b"c333", b"d4444", b"e", b"f"), 4, 3))
        self.assertEqual(history.read(1, 9), (lines(b"b22", b"c333"), 2, 2))
        self.assertEqual(history.read(1, 8), (lines(b"b22"), 1, 2))
        self.assertEqual(history.read(3, 8), (lines(b"d4444"), 1, 4))
        self.assertEqual(history.read(3, 10), (lines(b"d4444", b"e", b"f"), 3, 4))
        # A read ends at a chunk's end rather than inside the next chunk.
        self.assertEqual(history.read(3, 9), (lines(b"d4444"), 1, 4))

    def test_readBigMessage(self):
        """
        A message bigger than maxBytes comes alone; never with others.
        """
        history = self.makeHistory()
        history.append(lines(b"a", b"b" * 100, b"c"), 3)
        history.append(lines(b"d" * 50), 1)
        self.assertEqual(history.read(0, 10), (lines(b"a"), 1, 1))
        self.assertEqual(history.read(1, 10), (lines(b"b" * 100), 1, 2))
        self.assertEqual(history.read(2, 10), (lines(b"c"), 1, 3))
        self.assertEqual(history.read(3, 10), (lines(b"d" * 50), 1, 4))
        self.assertEqual(history.read(0, 1), (lines(b"a"), 1, 1))

    def test_readChunked(self):
        """
        Read in chunks of any size, the history is every line once, in
        order.
        """
        history = self.makeHistory()
        rng = random.Random(4)
        seq = 1
        for _ in range(60):
            count = rng.randint(1, 12)
            history.append(lines(*(payload(s, rng.randint(0, 40)) for s in
                                   range(seq, seq + count))), count)
            seq += count
        everything, count, first = readAll(history)
        self.assertEqual((count, first), (seq - 1, 1))
        for maxBytes in (1, 7, 30, 64, 100, 333, 4096):
            for after in (0, 1, 17, seq - 3):
                self.assertEqual(readAll(history, after, maxBytes),
                                 readAll(history, after), (maxBytes, after))
        self.assertEqual(readAll(history, 0, 50)[0], everything)

    def test_readClampsToFirst(self):
        """
        C{after} below C{first - 1} reads from the oldest kept.
        """
        history = self.makeHistory(maxMessages=3)
        for seq in range(1, 8):
            history.append(lines(payload(seq)), 1)
        self.assertEqual((history.first, history.last), (5, 7))
        self.assertEqual(history.read(0, 1000), (chunkOf(5, 3), 3, 5))
        self.assertEqual(history.read(-5, 1000), (chunkOf(5, 3), 3, 5))
        self.assertEqual(history.read(5, 1000), (chunkOf(6, 2), 2, 6))

    def test_maxMessages(self):
        """
        At most maxMessages are read, exactly, however the chunks fall.
        """
        history = self.makeHistory(maxMessages=10)
        seq = 1
        for count in (4, 4, 4, 7, 1, 12, 3):
            history.append(chunkOf(seq, count), count)
            seq += count
            self.assertEqual(history.last, seq - 1)
            self.assertEqual(history.first, max(1, seq - 10))
            self.assertEqual(readAll(history), (chunkOf(history.first, seq - history.first),
                                                seq - history.first, history.first))
        self.assertEqual(history.report()["messages"], 10)

    def test_whenSynced(self):
        """
        whenSynced fires, at the latest once the history is closed, for
        what was appended.
        """
        history = self.makeHistory()
        history.append(lines(b"a"), 1)
        fired: list[None] = []
        history.whenSynced(1).addCallback(fired.append)
        history.close()
        self.assertEqual(fired, [None])

    def test_marks(self):
        history = self.makeHistory()
        self.assertEqual(history.mark("pub"), 0)
        history.setMark("pub", 12)
        history.setMark("other", 3)
        self.assertEqual((history.mark("pub"), history.mark("other")), (12, 3))
        self.assertRaises(ValueError, history.setMark, "", 1)


class MemoryHistoryTests(HistoryContract, SynchronousTestCase):
    def makeHistory(self, maxMessages: int = 1_000_000, maxBytes: int = 1 << 30):
        return MemoryHistory(maxMessages, maxBytes)

    def test_newEpochEachTime(self):
        self.assertNotEqual(MemoryHistory(1).epoch, MemoryHistory(1).epoch)

    def test_bad(self):
        self.assertRaises(ValueError, MemoryHistory, 0)
        self.assertRaises(ValueError, MemoryHistory, 1, 0)

    def test_maxBytes(self):
        """
        Past maxBytes (data and a fixed overhead a chunk) the oldest chunks
        are dropped whole.
        """
        history = MemoryHistory(1000, maxBytes=3 * (CHUNK_OVERHEAD + 20))
        for _ in range(4):
            history.append(b"x" * 9 + b"\n" + b"y" * 9 + b"\n", 2)
        self.assertEqual((history.first, history.last), (3, 8))
        self.assertEqual(history.report()["bytes"], 60)
        self.assertEqual(history.read(0, 1000)[1:], (6, 3))

    def test_bigChunkCut(self):
        """
        A chunk that alone is over maxBytes keeps the lines at its end that
        fit.
        """
        history = MemoryHistory(1000, maxBytes=CHUNK_OVERHEAD + 10)
        history.append(lines(b"aaaa", b"bbbb", b"c", b"dd", b"eee"), 5)
        self.assertEqual((history.first, history.last), (3, 5))
        self.assertEqual(history.read(0, 100), (lines(b"c", b"dd", b"eee"), 3, 3))
        history.append(lines(b"z" * 20), 1)
        self.assertEqual((history.first, history.last), (7, 6))
        self.assertEqual(history.read(0, 100), (b"", 0, 7))
        history.append(lines(b"k"), 1)
        self.assertEqual(history.read(0, 100), (lines(b"k"), 1, 7))

    def test_manyChunks(self):
        """
        The list of chunks is compacted as the oldest go; reads stay right.
        """
        history = MemoryHistory(5000)
        seq = 1
        for i in range(6000):
            count = 1 + i % 5
            history.append(chunkOf(seq, count), count)
            seq += count
        self.assertEqual((history.first, history.last), (seq - 5000, seq - 1))
        self.assertLess(len(history._seqs), 4000)
        self.assertEqual(readAll(history, 0, 999), (chunkOf(seq - 5000, 5000), 5000,
                                                    seq - 5000))
        self.assertEqual(history.read(seq - 3, 1000), (chunkOf(seq - 2, 2), 2, seq - 2))

    def test_whenSyncedAtOnce(self):
        history = MemoryHistory(10)
        history.append(lines(b"a"), 1)
        self.assertEqual(self.successResultOf(history.whenSynced(1)), None)
        later = history.whenSynced(3)
        self.assertNoResult(later)
        history.append(lines(b"b", b"c"), 2)
        self.assertEqual(self.successResultOf(later), None)
        self.assertEqual(history.synced, 3)


def abandon(store: DiskStore) -> None:
    """
    Let C{store} go as a killed process does: its files closed, with no
    fsync and no metadata written.
    """
    store._closeFiles()


def folderOf(case: SynchronousTestCase) -> str:
    folder = tempfile.mkdtemp(prefix="history-")
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


def files(path: str) -> list[str]:
    return sorted(os.listdir(path))


def segments(path: str) -> list[str]:
    return [name for name in files(path) if name.endswith(".seg")]


class DiskStoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = folderOf(self)
        self.path = os.path.join(self.folder, "store")
        self.clock = Clock()
        self.logs = LogCapture(self)
        self.boot: str | None = "boot-1"
        self.patch(diskModule, "bootId", lambda: self.boot)
        self.stores: list[DiskStore] = []
        self.addCleanup(self._closeAll)

    def _closeAll(self) -> None:
        for store in self.stores:
            store._closeFiles()

    def open(self, **options) -> DiskStore:
        options.setdefault("clock", self.clock)
        store = DiskStore.open(self.path, **options)
        self.stores.append(store)
        return store

    def reopen(self, store: DiskStore, **options) -> DiskStore:
        self.successResultOf(store.close())
        return self.open(**options)

    def appendMany(self, store: DiskStore, chunks: int, count: int = 3, size=None) -> int:
        """
        Append chunks of payloads named by their SEQs; return the last SEQ.
        """
        for _ in range(chunks):
            seq = store.last + 1
            self.assertEqual(store.append(chunkOf(seq, count, size), count), seq)
        return store.last

    def assertHolds(self, store: DiskStore, first: int, last: int, size=None) -> None:
        """
        C{store} keeps exactly the messages C{first} to C{last} made by
        L{appendMany}.
        """
        self.assertEqual((store.first, store.last), (first, last))
        self.assertEqual(readAll(store, 0, 1000),
                         (chunkOf(first, last - first + 1, size), last - first + 1, first))


class DiskStoreContractTests(HistoryContract, DiskStoreTestCase):
    def makeHistory(self, maxMessages: int = 1_000_000):
        return self.open(maxMessages=maxMessages, segmentBytes=300, maxBytes=1 << 30)


class DiskStoreTests(DiskStoreTestCase):
    def test_fresh(self):
        """
        A missing folder is made, with a new epoch in its metadata.
        """
        store = self.open()
        self.assertEqual(files(self.path), ["lock", METADATA])
        with open(os.path.join(self.path, METADATA)) as f:
            metadata = json.load(f)
        self.assertEqual(metadata["format"], FORMAT)
        self.assertEqual(metadata["epoch"], store.epoch)
        self.assertFalse(metadata["clean"])
        self.assertEqual(store.report()["epochs"], 1)

    def test_records(self):
        """
        Each append is one record at the end of the segment file.
        """
        store = self.open()
        store.append(lines(b"a", b"b"), 2)
        store.append(lines(b"c"), 1)
        with open(os.path.join(self.path, segmentName(1)), "rb") as f:
            self.assertEqual(f.read(), record(1, 2, lines(b"a", b"b")) + record(3, 1, lines(b"c")))
        self.assertEqual(store.report()["bytes"], 2 * HEADER.size + 6)

    def test_reopen(self):
        """
        Closed and opened again, a store keeps its epoch and messages, and
        SEQ goes on.
        """
        store = self.open()
        self.appendMany(store, 10)
        epoch = store.epoch
        store = self.reopen(store)
        self.assertEqual(store.epoch, epoch)
        self.assertHolds(store, 1, 30)
        self.assertEqual(store.synced, 30)
        self.assertEqual(store.append(lines(b"next"), 1), 31)
        self.assertEqual(store.report()["epochs"], 0)
        self.assertEqual(self.logs.matching("continuity lost"), [])

    def test_reopenEmpty(self):
        store = self.open()
        epoch = store.epoch
        store = self.reopen(store)
        self.assertEqual((store.epoch, store.first, store.last), (epoch, 1, 0))

    def test_crash(self):
        """
        A store whose process died (same boot) keeps its epoch and every
        message appended, synced or not.
        """
        store = self.open()
        self.appendMany(store, 5)
        self.clock.advance(1)
        self.appendMany(store, 5)
        self.assertEqual(store.synced, 15)
        epoch = store.epoch
        abandon(store)
        store = self.open()
        self.assertEqual(store.epoch, epoch)
        self.assertHolds(store, 1, 30)
        self.assertEqual(store.synced, 30)

    def test_inUse(self):
        self.open()
        with self.assertRaises(StoreError) as caught:
            DiskStore.open(self.path, clock=self.clock)
        self.assertIn("in use", str(caught.exception))

    def test_closed(self):
        store = self.open()
        self.successResultOf(store.close())
        self.successResultOf(store.close())
        self.assertRaises(StoreError, store.append, lines(b"a"), 1)
        self.assertRaises(StoreError, store.read, 0, 100)

    def test_closeSyncs(self):
        """
        close fsyncs what was not, fires the waiters, and marks the
        metadata clean.
        """
        store = self.open()
        self.appendMany(store, 2)
        synced = store.whenSynced(6)
        self.assertNoResult(synced)
        self.successResultOf(store.close())
        self.assertEqual(self.successResultOf(synced), None)
        self.assertEqual(store.report()["fsyncs"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with open(os.path.join(self.path, METADATA)) as f:
            self.assertTrue(json.load(f)["clean"])

    def test_whenSynced(self):
        """
        whenSynced fires after the fsync, fsyncInterval after the first
        unsynced append; no timer runs while nothing is unsynced.
        """
        store = self.open(fsyncInterval=0.5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.appendMany(store, 1)
        first = store.whenSynced(2)
        self.clock.advance(0.3)
        self.appendMany(store, 1)
        second = store.whenSynced(6)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(store.synced, 0)
        self.assertNoResult(first)
        self.clock.advance(0.2)
        self.assertEqual(store.synced, 6)
        self.assertEqual(self.successResultOf(first), None)
        self.assertEqual(self.successResultOf(second), None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(store.whenSynced(3)), None)
        self.assertEqual(store.report()["fsyncs"], 1)

    def test_fsyncEveryAppend(self):
        """
        With fsyncInterval 0, every append is fsynced before it returns.
        """
        store = self.open(fsyncInterval=0)
        self.appendMany(store, 3)
        self.assertEqual(store.synced, 9)
        self.assertEqual(store.report()["fsyncs"], 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rotation(self):
        """
        A new segment file is begun before one would grow past
        segmentBytes; each is named by its first SEQ.
        """
        store = self.open(segmentBytes=200)
        record = HEADER.size + len(chunkOf(1, 3, 10))  # 63 bytes
        self.appendMany(store, 7, size=10)
        self.assertEqual(segments(self.path), [segmentName(1), segmentName(10), segmentName(19)])
        self.assertEqual(store.report()["segments"], 3)
        self.assertEqual(store.report()["bytes"], 7 * record)
        self.assertHolds(store, 1, 21, size=10)
        store = self.reopen(store, segmentBytes=200)
        self.assertHolds(store, 1, 21, size=10)
        self.appendMany(store, 3, size=10)
        self.assertEqual(segments(self.path)[-1], segmentName(28))

    def test_removal(self):
        """
        Past maxBytes, the oldest segment files are removed; the current
        one never is.
        """
        store = self.open(segmentBytes=200, maxBytes=1000)
        record = HEADER.size + len(chunkOf(1, 3, 10))  # 3 a segment
        self.appendMany(store, 30, size=10)
        self.assertEqual(store.report()["bytes"], 5 * 3 * record)
        self.assertEqual(segments(self.path), [segmentName(seq) for seq in (46, 55, 64, 73, 82)])
        self.assertHolds(store, 46, 90, size=10)
        store = self.reopen(store, segmentBytes=200, maxBytes=1000)
        self.assertHolds(store, 46, 90, size=10)
        store = self.reopen(store, segmentBytes=200, maxBytes=250)
        self.assertHolds(store, 82, 90, size=10)
        self.assertEqual(segments(self.path), [segmentName(82)])

    def test_segmentBytesLowered(self):
        store = self.open(maxBytes=1000, segmentBytes=10**9)
        self.assertEqual(store.segmentBytes, 250)

    def test_maxMessagesRemovesFiles(self):
        """
        With maxMessages, a segment file is removed once all its messages
        are older than the oldest kept.
        """
        store = self.open(segmentBytes=200, maxMessages=10)
        self.appendMany(store, 10, size=10)
        self.assertHolds(store, 21, 30, size=10)
        self.assertEqual(segments(self.path), [segmentName(19), segmentName(28)])

    def test_readAcrossSegments(self):
        """
        A read ends at the end of a segment file; the next one goes on.
        """
        store = self.open(segmentBytes=200)
        self.appendMany(store, 5, size=10)
        _, count, first = store.read(0, 10_000)
        self.assertEqual((count, first), (9, 1))
        self.assertEqual(store.read(9, 10_000)[1:], (6, 10))

    def test_readFarIntoALongSegment(self):
        """
        A read finds its place through the sparse index, wherever in a big
        segment it begins.
        """
        store = self.open(segmentBytes=1 << 30)
        self.appendMany(store, 2000, count=2)
        self.assertGreater(len(store._segments[0].offsets), 10)
        for after in (0, 1, 2, 1001, 2345, 3998, 3999):
            self.assertEqual(store.read(after, 200)[2], after + 1)
            self.assertEqual(store.read(after, 200)[0][:60], chunkOf(after + 1, 4000 - after)[:60])
        self.assertEqual(readAll(store, 0, 777)[0], chunkOf(1, 4000))

    def test_readRecordBiggerThanTheWindow(self):
        """
        A chunk bigger than a read's window is read whole, then cut.
        """
        store = self.open()
        big = lines(*(b"%05d" % i + b"y" * 2000 for i in range(10)))
        store.append(lines(b"a"), 1)
        store.append(big, 10)
        self.assertEqual(store.read(1, 5000), (big[:2 * 2006], 2, 2))
        self.assertEqual(store.read(5, 100), (big[4 * 2006:5 * 2006], 1, 6))
        self.assertEqual(readAll(store, 0, 5000)[0], lines(b"a") + big)
        self.assertGreater(len(big), 2 * 100 + INDEX_INTERVAL + HEADER.size)

    def test_marks(self):
        """
        Marks are saved with the metadata at the next fsync, and read back
        at open.
        """
        store = self.open(fsyncInterval=0.5)
        store.setMark("pub-1", 7)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        with open(os.path.join(self.path, METADATA)) as f:
            self.assertEqual(json.load(f)["marks"], {"pub-1": 7})
        store.setMark("pub-2", 9)
        abandon(store)
        store = self.open()
        self.assertEqual((store.mark("pub-1"), store.mark("pub-2")), (7, 0))

    def test_shortWrites(self):
        """
        A write that takes only part of a record is followed by another for
        the rest.
        """
        realWrite = os.write
        self.patch(os, "write", lambda fd, data: realWrite(fd, bytes(data)[:7]))
        store = self.open()
        self.appendMany(store, 3)
        self.assertHolds(store, 1, 9)

    def test_rotationAfterSync(self):
        store = self.open(segmentBytes=200)
        self.appendMany(store, 3, size=10)
        self.clock.advance(1)
        self.appendMany(store, 3, size=10)
        self.clock.advance(1)
        self.assertEqual(len(segments(self.path)), 2)
        self.assertEqual(store.synced, 18)
        self.assertHolds(store, 1, 18, size=10)

    def test_whenSyncedAfterClose(self):
        store = self.open()
        self.appendMany(store, 1)
        self.successResultOf(store.close())
        self.successResultOf(store.whenSynced(3))
        self.failureResultOf(store.whenSynced(4), StoreError)

    def test_cannotRemove(self):
        """
        A segment file that cannot be removed is logged and counted, and
        forgotten.
        """
        store = self.open(segmentBytes=200, maxBytes=800)

        def unlink(path):
            raise OSError(errno.EACCES, "Permission denied")

        self.patch(os, "unlink", unlink)
        self.appendMany(store, 20, size=10)
        report = store.report()
        errors, size = report["errors"], report["bytes"]
        assert isinstance(errors, int) and isinstance(size, int)
        self.assertGreater(errors, 0)
        self.assertLessEqual(size, 800)
        [event, *_] = self.logs.matching("cannot remove", LogLevel.error)
        self.assertEqual(event["error"], "Permission denied")

    def test_bad(self):
        for options in ({"maxBytes": 0}, {"segmentBytes": 0}, {"fsyncInterval": -1},
                        {"maxMessages": 0}, {"keepLost": -1}):
            self.assertRaises(ValueError, DiskStore.open, self.path, clock=self.clock,
                              **options)


class DiskStoreRecoveryTests(DiskStoreTestCase):
    """
    What a store finds at open: torn and corrupt files, lost metadata, a
    machine that stopped, a newer format, a folder it cannot use.
    """

    def lastSegment(self) -> str:
        return os.path.join(self.path, segments(self.path)[-1])

    def assertNewEpoch(self, store: DiskStore, old: str, reason: str) -> str:
        """
        C{store} lost continuity (logged with C{reason}): a new, empty epoch,
        the old files in C{lost-OLD/}.  Return that folder.
        """
        self.assertNotEqual(store.epoch, old)
        self.assertEqual((store.first, store.last, store.synced), (1, 0, 0))
        self.assertEqual(store.report()["epochs"], 1)
        [event] = self.logs.matching("continuity lost", LogLevel.warn)
        self.assertIn(reason, event["reason"])
        self.assertEqual(event["epoch"], store.epoch)
        lost = os.path.join(self.path, "lost-" + old)
        self.assertTrue(os.path.isdir(lost))
        self.assertEqual(files(self.path), sorted(["lock", METADATA, "lost-" + old]))
        self.assertEqual(store.append(lines(b"new"), 1), 1)
        return lost

    def test_tornTailSameBoot(self):
        """
        A last record cut short, as a process killed inside its write
        leaves (same boot, not closed): truncated, logged and counted; its
        ids were never given, so the epoch goes on.
        """
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        abandon(store)
        size = os.path.getsize(self.lastSegment())
        with open(self.lastSegment(), "ab") as f:
            f.write(record(13, 2, chunkOf(13, 2))[:30])
        store = self.open()
        self.assertEqual(store.epoch, epoch)
        self.assertEqual(os.path.getsize(self.lastSegment()), size)
        self.assertEqual(store.report()["truncations"], 1)
        [event] = self.logs.matching("truncated", LogLevel.warn)
        self.assertIn("incomplete record", event["problem"])
        self.assertHolds(store, 1, 12)
        self.assertEqual(store.append(lines(b"x"), 1), 13)

    def test_tornHeaderSameBoot(self):
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        abandon(store)
        with open(self.lastSegment(), "ab") as f:
            f.write(record(13, 2, chunkOf(13, 2))[:7])
        store = self.open()
        self.assertEqual(store.epoch, epoch)
        self.assertEqual(store.report()["truncations"], 1)
        self.assertHolds(store, 1, 12)

    def test_truncatedMidRecordAfterAMachineStop(self):
        """
        A file cut inside a record after the machine stopped (a power loss,
        another boot): truncated, and continuity is lost, since ids past
        the cut may have been given to subscribers.
        """
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        abandon(store)
        os.truncate(self.lastSegment(), os.path.getsize(self.lastSegment()) - 5)
        self.boot = "boot-2"
        store = self.open()
        lost = self.assertNewEpoch(store, epoch, "incomplete record")
        self.assertEqual(store.report()["truncations"], 1)
        # The set-aside segment was truncated to its whole records.
        found = scan(os.path.join(lost, segmentName(1)), 1)
        self.assertEqual((found.problem, found.segment.next), (None, 10))

    def test_machineStopped(self):
        """
        A store open when the machine stopped may have lost what was not
        fsynced without a trace: a new epoch.
        """
        store = self.open()
        self.appendMany(store, 4)
        self.clock.advance(1)
        epoch = store.epoch
        abandon(store)
        self.boot = "boot-2"
        self.assertNewEpoch(self.open(), epoch, "the machine stopped")

    def test_noBootId(self):
        """
        Where there is no boot id, a store not closed cannot be told from
        one open when the machine stopped.
        """
        self.boot = None
        store = self.open()
        self.appendMany(store, 1)
        epoch = store.epoch
        abandon(store)
        self.assertNewEpoch(self.open(), epoch, "the machine stopped")

    def test_machineStoppedAfterClose(self):
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        self.successResultOf(store.close())
        self.boot = "boot-2"
        store = self.open()
        self.assertEqual(store.epoch, epoch)
        self.assertHolds(store, 1, 12)

    def test_garbageAppended(self):
        """
        Garbage after the last record: truncated, logged, and a new epoch.
        """
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        self.successResultOf(store.close())
        with open(self.lastSegment(), "ab") as f:
            f.write(b"\x00garbage" * 10)
        store = self.open()
        self.assertEqual(store.report()["truncations"], 1)
        [event] = self.logs.matching("truncated", LogLevel.warn)
        self.assertIn("no record", event["problem"])
        self.assertNewEpoch(store, epoch, "corrupt")

    def test_tornTailOfAClosedStore(self):
        """
        A store closed cleanly has no torn tail: if it has one, something
        else cut it.
        """
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.truncate(self.lastSegment(), os.path.getsize(self.lastSegment()) - 1)
        self.assertNewEpoch(self.open(), epoch, "incomplete record")

    def test_badCrc(self):
        """
        A flipped bit in the last segment: what follows is truncated, and a
        new epoch begins.
        """
        store = self.open()
        self.appendMany(store, 4)
        epoch = store.epoch
        self.successResultOf(store.close())
        with open(self.lastSegment(), "r+b") as f:
            f.seek(HEADER.size + 3)
            byte = f.read(1)
            f.seek(HEADER.size + 3)
            f.write(bytes([byte[0] ^ 1]))
        store = self.open()
        [event] = self.logs.matching("truncated", LogLevel.warn)
        self.assertEqual(event["size"], 0)
        self.assertNewEpoch(store, epoch, "bad CRC")

    def test_corruptOlderSegment(self):
        store = self.open(segmentBytes=200)
        self.appendMany(store, 10, size=10)
        epoch = store.epoch
        self.successResultOf(store.close())
        with open(os.path.join(self.path, segments(self.path)[0]), "r+b") as f:
            f.seek(HEADER.size + 70)
            f.write(b"!")
        self.assertNewEpoch(self.open(), epoch, "corrupt")

    def test_missingSegment(self):
        """
        A segment missing between two others: a new epoch.
        """
        store = self.open(segmentBytes=200)
        self.appendMany(store, 10, size=10)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, segments(self.path)[1]))
        self.assertNewEpoch(self.open(), epoch, "missing")

    def test_missingLastSegment(self):
        store = self.open(segmentBytes=200)
        self.appendMany(store, 10, size=10)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.unlink(self.lastSegment())
        self.assertNewEpoch(self.open(), epoch, "missing at the end")

    def test_missingOldestSegments(self):
        """
        The oldest files removed by hand are as if trimmed: the epoch goes
        on, from the oldest left.
        """
        store = self.open(segmentBytes=200)
        self.appendMany(store, 10, size=10)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, segments(self.path)[0]))
        store = self.open(segmentBytes=200)
        self.assertEqual(store.epoch, epoch)
        self.assertHolds(store, 10, 30, size=10)

    def test_everySegmentRemovedAfterClose(self):
        """
        Every segment file of a store closed cleanly removed: the epoch goes
        on, empty, and SEQ is never reused.
        """
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.unlink(self.lastSegment())
        store = self.open()
        self.assertEqual((store.epoch, store.first, store.last), (epoch, 10, 9))
        self.assertEqual(store.append(lines(b"a"), 1), 10)

    def test_everySegmentRemovedAfterACrash(self):
        """
        Every segment file of a store not closed removed: its metadata does
        not know the last SEQ given, so a new epoch.
        """
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        abandon(store)
        os.unlink(self.lastSegment())
        self.assertNewEpoch(self.open(), epoch, "no segment files")

    def test_setAsideMetadataFirst(self):
        """
        The metadata is set aside first: a crash half way leaves no
        metadata beside the segment files not yet moved.
        """
        store = self.open(segmentBytes=200)
        self.appendMany(store, 10, size=10)
        abandon(store)
        moved: list[str] = []
        realRename = os.rename

        def rename(source, destination):
            if len(moved) == 1:
                raise OSError(errno.EIO, "crash")
            moved.append(os.path.basename(source))
            realRename(source, destination)

        self.patch(os, "rename", rename)
        self.boot = "boot-2"
        self.assertRaises(StoreError, self.open, segmentBytes=200)
        self.assertEqual(moved, [METADATA])

    def test_emptySegment(self):
        """
        A segment file begun and never written (a process killed between)
        is removed.
        """
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        abandon(store)
        open(os.path.join(self.path, segmentName(10)), "wb").close()
        store = self.open()
        self.assertEqual(store.epoch, epoch)
        self.assertHolds(store, 1, 9)
        self.assertEqual(store.report()["truncations"], 0)

    def test_metadataGarbage(self):
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        self.successResultOf(store.close())
        with open(os.path.join(self.path, METADATA), "wb") as f:
            f.write(b"{not json")
        store = self.open()
        self.assertNotEqual(store.epoch, epoch)
        self.assertEqual(os.listdir(os.path.join(self.path, "lost-unknown")).count(METADATA), 1)

    def test_metadataNotValid(self):
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        self.successResultOf(store.close())
        where = os.path.join(self.path, METADATA)
        with open(where) as f:
            metadata = json.load(f)
        metadata["epoch"] = "NOT AN EPOCH"
        with open(where, "w") as f:
            json.dump(metadata, f)
        store = self.open()
        self.assertNotEqual(store.epoch, epoch)
        [event] = self.logs.matching("continuity lost", LogLevel.warn)
        self.assertIn("not valid", event["reason"])

    def test_wrongSeq(self):
        """
        A segment whose records do not begin at the SEQ of its name: a new
        epoch.
        """
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.rename(self.lastSegment(), os.path.join(self.path, segmentName(5)))
        self.assertNewEpoch(self.open(), epoch, "SEQ 1 where 5 was due")

    def test_lostTwice(self):
        """
        Files set aside where a folder of that name is already: a new name.
        """
        store = self.open()
        self.appendMany(store, 1)
        epoch = store.epoch
        abandon(store)
        os.mkdir(os.path.join(self.path, "lost-" + epoch))
        self.boot = "boot-2"
        store = self.open(keepLost=3)
        self.assertIn(f"lost-{epoch}-2", files(self.path))
        self.assertEqual(files(os.path.join(self.path, f"lost-{epoch}-2")),
                         [segmentName(1), METADATA])

    def test_metadataMissing(self):
        store = self.open()
        self.appendMany(store, 3)
        epoch = store.epoch
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, METADATA))
        store = self.open()
        self.assertNotEqual(store.epoch, epoch)
        [event] = self.logs.matching("continuity lost", LogLevel.warn)
        self.assertIn("metadata file is missing", event["reason"])

    def test_newerFormat(self):
        """
        Files of a format newer than this code reads: a StoreError, and the
        files are left as they are.
        """
        store = self.open()
        self.appendMany(store, 3)
        self.successResultOf(store.close())
        where = os.path.join(self.path, METADATA)
        with open(where) as f:
            metadata = json.load(f)
        metadata["format"] = FORMAT + 1
        with open(where, "w") as f:
            json.dump(metadata, f)
        before = {name: os.path.getsize(os.path.join(self.path, name))
                  for name in files(self.path)}
        with self.assertRaises(StoreError) as caught:
            self.open()
        self.assertIn(f"format {FORMAT + 1}", str(caught.exception))
        self.assertIn(self.path, str(caught.exception))
        self.assertEqual({name: os.path.getsize(os.path.join(self.path, name))
                          for name in files(self.path)}, before)
        # And the lock was released: once the format is fixed, it opens.
        metadata["format"] = FORMAT
        with open(where, "w") as f:
            json.dump(metadata, f)
        self.assertHolds(self.open(), 1, 9)

    def test_keepLost(self):
        """
        Only the newest keepLost folders of set-aside files are kept; with
        0, the files are removed.
        """
        for round in range(3):
            store = self.open(keepLost=1)
            self.appendMany(store, 1)
            abandon(store)
            self.boot = f"boot-{round + 10}"
        store = self.open(keepLost=1)
        self.assertEqual(len([name for name in files(self.path) if name.startswith("lost-")]),
                         1)
        self.appendMany(store, 1)
        abandon(store)
        self.boot = "another"
        self.open(keepLost=0)
        self.assertEqual(files(self.path), ["lock", METADATA])

    def test_notAFolder(self):
        """
        A store whose folder cannot be made: a StoreError naming it.
        """
        blocker = os.path.join(self.folder, "file")
        open(blocker, "w").close()
        with self.assertRaises(StoreError) as caught:
            DiskStore.open(os.path.join(blocker, "store"), clock=self.clock)
        self.assertIn(os.path.join(blocker, "store"), str(caught.exception))
        self.assertIn("cannot make or write the folder", str(caught.exception))

    def test_notWritable(self):
        """
        A folder that cannot be written: a StoreError.
        """
        os.mkdir(self.path)
        os.chmod(self.folder, 0o755)
        os.chmod(self.path, 0o555)
        with unprivileged(), self.assertRaises(StoreError) as caught:
            DiskStore.open(self.path, clock=self.clock)
        self.assertIn("cannot make or write the folder", str(caught.exception))

    def test_metadataUnreadable(self):
        os.makedirs(os.path.join(self.path, METADATA))
        with self.assertRaises(StoreError) as caught:
            self.open()
        self.assertIn("cannot read", str(caught.exception))


class FailingDisk:
    """
    os.write and os.fsync that fail with C{error} for the store's file
    descriptors (and only for them) while C{failing}.
    """

    def __init__(self, case: SynchronousTestCase, store: DiskStore, error: int) -> None:
        self.store = store
        self.error = error
        self.failing = True
        self.realWrite, self.realFsync = os.write, os.fsync
        case.patch(os, "write", self.write)
        case.patch(os, "fsync", self.fsync)

    def _check(self, fd: int) -> None:
        if self.failing and (fd == self.store._fd or fd in self.store._syncFds):
            raise OSError(self.error, os.strerror(self.error))

    def write(self, fd, data):
        self._check(fd)
        return self.realWrite(fd, data)

    def fsync(self, fd):
        self._check(fd)
        return self.realFsync(fd)


class DiskStoreFailureTests(DiskStoreTestCase):
    """
    A write or fsync that fails while running (a full disk, an I/O error).
    """

    def test_writeFails(self):
        """
        A failed write: logged once and counted; the ids go on in a new
        epoch, not stored; the waiters for what was not fsynced fail.
        """
        store = self.open()
        self.appendMany(store, 2)
        pending = store.whenSynced(6)
        old = store.epoch
        disk = FailingDisk(self, store, errno.ENOSPC)
        self.assertEqual(store.append(lines(b"a", b"b"), 2), 1)
        epoch = store.epoch
        self.assertNotEqual(epoch, old)
        self.assertEqual(store.append(lines(b"c"), 1), 3)
        self.assertEqual((store.first, store.last, store.synced), (4, 3, 0))
        self.assertFalse(store.storing)
        self.assertEqual(store.read(0, 100), (b"", 0, 4))
        self.failureResultOf(pending, StoreError)
        self.failureResultOf(store.whenSynced(2), StoreError)
        report = store.report()
        self.assertEqual((report["errors"], report["epochs"], report["storing"]), (1, 2, False))
        [event] = self.logs.matching("cannot write", LogLevel.error)
        self.assertEqual(event["error"], os.strerror(errno.ENOSPC))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Before the retry interval, nothing is tried.
        disk.failing = False
        self.clock.advance(RETRY_INTERVAL - 1)
        self.assertEqual(store.append(lines(b"d"), 1), 4)
        self.assertFalse(store.storing)
        # Then the store writes again, in fresh files, in the same epoch.
        self.clock.advance(1)
        self.assertEqual(store.append(lines(b"e", b"f"), 2), 5)
        self.assertTrue(store.storing)
        self.assertEqual(store.epoch, epoch)
        self.assertEqual(store.read(0, 100), (lines(b"e", b"f"), 2, 5))
        self.assertEqual(segments(self.path), [segmentName(5)])
        self.assertIn("lost-" + old, files(self.path))
        self.failureResultOf(store.whenSynced(4), StoreError)
        synced = store.whenSynced(6)
        self.clock.advance(1)
        self.successResultOf(synced)
        self.assertEqual(len(self.logs.matching("writing again", LogLevel.info)), 1)
        # Reopened, the store goes on in that epoch.
        store = self.reopen(store)
        self.assertEqual((store.epoch, store.first, store.last), (epoch, 5, 6))

    def test_stillFailing(self):
        """
        While writes still fail, a retry every RETRY_INTERVAL is counted,
        not logged again.
        """
        store = self.open()
        FailingDisk(self, store, errno.EIO)
        store.append(lines(b"a"), 1)
        epoch = store.epoch
        for _ in range(3):
            self.clock.advance(RETRY_INTERVAL)
            store.append(lines(b"a"), 1)
        self.assertFalse(store.storing)
        self.assertEqual(store.epoch, epoch)
        self.assertEqual(store.synced, 0)
        self.assertEqual(store.report()["errors"], 4)
        self.assertEqual(len(self.logs.matching("cannot write", LogLevel.error)), 1)
        self.assertEqual(store.last, 4)
        self.assertEqual(self.successResultOf(store.close()), None)

    def test_restartWhileFailing(self):
        """
        Restarted while it could not write, a store opens its files as they
        are: the epoch before the failure goes on, and the ids given while
        failing (another epoch) are a gap to their subscribers.
        """
        store = self.open()
        self.appendMany(store, 2)
        old = store.epoch
        FailingDisk(self, store, errno.ENOSPC)
        store.append(lines(b"a"), 1)
        self.successResultOf(store.close())
        self.assertEqual(self.open().epoch, old)

    def test_fsyncFails(self):
        store = self.open()
        self.appendMany(store, 2)
        pending = store.whenSynced(6)
        old = store.epoch
        FailingDisk(self, store, errno.EIO)
        self.clock.advance(1)
        self.failureResultOf(pending, StoreError)
        self.assertFalse(store.storing)
        self.assertNotEqual(store.epoch, old)
        self.assertEqual(store.append(lines(b"a"), 1), 1)


line = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"."))


class StoreMachine(RuleBasedStateMachine):
    """
    A disk store through appends of every size, fsyncs, clean restarts
    (the machine restarted or not), crashes of the process (with a torn
    last record or not), power losses (the unsynced tail cut anywhere) and
    garbage at the end of the last file.

    Whatever happens: every SEQ given in an epoch is the one after the last
    given in it (so ids are unique and increasing, never reused across
    restarts); the store reads back exactly what was appended, for the
    range it keeps; and what was kept is still kept after a restart unless
    the epoch changed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="history-machine-")
        self.path = os.path.join(self.folder, "store")
        self.clock = Clock()
        self.boot = "boot-0"
        self.realBootId = diskModule.bootId
        diskModule.bootId = lambda: self.boot
        self.options: dict[str, Any] = {"segmentBytes": 400, "maxBytes": 2000,
                                        "clock": self.clock}
        self.store = DiskStore.open(self.path, **self.options)
        self.given: dict[str, dict[int, bytes]] = {}
        self.syncedSizes: dict[str, int] = {}

    def teardown(self) -> None:
        self.store._closeFiles()
        diskModule.bootId = self.realBootId
        shutil.rmtree(self.folder, ignore_errors=True)

    def lastGiven(self, epoch: str) -> int:
        return max(self.given.get(epoch, {0: b""}))

    def reopen(self, keptEpoch: bool | None) -> None:
        """
        Open the store again; check that it kept its epoch and messages
        (C{keptEpoch}), or began a new one (not C{keptEpoch}), or either
        (None).
        """
        before = (self.store.epoch, self.store.first, self.store.last)
        self.store = DiskStore.open(self.path, **self.options)
        after = (self.store.epoch, self.store.first, self.store.last)
        if after[0] == before[0]:
            assert keptEpoch is not False, (before, after)
            assert after == before, (before, after)
        else:
            assert keptEpoch is not True, (before, after)
            assert after[1:] == (1, 0), after
            assert after[0] not in self.given
        self.recordSizes()

    def recordSizes(self) -> None:
        self.syncedSizes = {name: os.path.getsize(os.path.join(self.path, name))
                            for name in segments(self.path)}

    def lastSegment(self) -> str | None:
        names = segments(self.path)
        return os.path.join(self.path, names[-1]) if names else None

    @rule(payloads=st.lists(line, min_size=1, max_size=12))
    def append(self, payloads):
        data = lines(*payloads)
        seq = self.store.append(data, len(payloads))
        epoch = self.store.epoch
        assert seq == self.lastGiven(epoch) + 1, (seq, self.lastGiven(epoch))
        self.given.setdefault(epoch, {}).update(enumerate(payloads, seq))

    @rule()
    def sync(self):
        self.clock.advance(self.store.fsyncInterval)
        assert self.store.synced == self.store.last
        self.recordSizes()

    @rule(machineRestarted=st.booleans())
    def restart(self, machineRestarted):
        self.successResultOf(self.store.close())
        if machineRestarted:
            self.boot += "+"
        self.reopen(keptEpoch=True)

    @rule(torn=st.integers(min_value=0, max_value=40))
    def crash(self, torn):
        """
        The process is killed, perhaps inside the write of a record.
        """
        abandon(self.store)
        last = self.lastSegment()
        if torn and last is not None:
            whole = record(self.store.last + 1, 1, b"torn\n")
            with open(last, "ab") as f:
                f.write(whole[:min(torn, len(whole) - 1)])
        # A store with no segment file cannot tell whether it had any.
        self.reopen(keptEpoch=True if last is not None else None)

    @rule(where=st.floats(min_value=0, max_value=1))
    def powerLoss(self, where):
        """
        The machine stops: the last file may lose anything after its last
        fsync, cut anywhere.
        """
        abandon(self.store)
        last = self.lastSegment()
        if last is not None:
            size = os.path.getsize(last)
            synced = self.syncedSizes.get(os.path.basename(last), 0)
            os.truncate(last, synced + int((size - synced) * where))
        self.boot += "+"
        self.reopen(keptEpoch=False)

    @rule(garbage=st.binary(min_size=1, max_size=40))
    def garbage(self, garbage):
        self.successResultOf(self.store.close())
        last = self.lastSegment()
        if last is not None:
            with open(last, "ab") as f:
                f.write(garbage)
        self.reopen(keptEpoch=None if last is not None else True)

    def successResultOf(self, d):
        results: list[object] = []
        d.addBoth(results.append)
        assert results == [None], results

    @invariant()
    def readsBack(self):
        store = self.store
        assert store.last == self.lastGiven(store.epoch)
        assert 1 <= store.first <= store.last + 1
        assert store.synced <= store.last
        given = self.given.get(store.epoch, {})
        expected = [given[seq] for seq in range(store.first, store.last + 1)]
        assert readAll(store, 0, 150) == (lines(*expected), len(expected), store.first)


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                          deadline=None)
StoreMachineTests = StoreMachine.TestCase


class KillTests(SynchronousTestCase):
    """
    A store whose writer is killed with SIGKILL while it appends as fast as
    it can (tests/storewriter.py).
    """

    rounds = 5

    def lines(self, process: subprocess.Popen[bytes], deadline: float) -> Iterator[str]:
        """
        The lines C{process} prints, until C{deadline} or until it ends.
        """
        stdout = process.stdout
        assert stdout is not None
        buffered = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            data = os.read(stdout.fileno(), 65536)
            if not data:
                break
            buffered += data
            *complete, buffered = buffered.split(b"\n")
            yield from (line.decode() for line in complete)

    def test_kill9(self):
        """
        After each kill the store opens in the same epoch; SEQ goes on after
        its last record; every SEQ the writer saw synced is there; and every
        record is intact, its ids in order.
        """
        from tests import storewriter

        folder = folderOf(self)
        path = os.path.join(folder, "store")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = dict(os.environ, PYTHONPATH=root)
        rng = random.Random()
        epoch, last, expected = None, 0, b""
        for round in range(self.rounds):
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.storewriter", path],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment, cwd=root)
            self.addCleanup(process.wait)
            self.addCleanup(process.kill)
            started = time.monotonic()
            printed = self.lines(process, started + 10)
            header = next(printed).split()
            self.assertEqual(header[0], "epoch", header)
            if epoch is None:
                epoch = header[1]
            self.assertEqual(header[1:], [epoch, "last", str(last)], f"round {round}")
            # Kill it at a random moment after its first fsync.
            synced = [int(next(printed).split()[1])]
            killAt = time.monotonic() + rng.uniform(0.0, 0.5)
            synced.extend(int(line.split()[1]) for line in self.lines(process, killAt))
            process.send_signal(signal.SIGKILL)
            process.wait()
            synced.extend(int(line.split()[1]) for line in self.lines(process, time.monotonic()
                                                                        + 1))
            self.assertLess(time.monotonic() - started, 10)

            store = DiskStore.open(path, clock=Clock())
            self.assertEqual(store.epoch, epoch)
            self.assertEqual(store.report()["epochs"], 0)
            self.assertGreaterEqual(store.last, max(synced))
            self.assertGreater(store.last, last)
            data, count, first = readAll(store, 0, 256 * 1024)
            self.assertEqual((first, count), (1, store.last))
            expected += storewriter.chunk(last + 1, store.last - last)
            self.assertEqual(data, expected)
            last = store.last
            self.successResultOf(store.close())


class MemoryBoundTests(SynchronousTestCase):
    """
    A memory history lets go of what it drops at once: the memory it holds
    follows its bounds, not twice them.
    """

    def test_droppedChunksReleased(self) -> None:
        import tracemalloc

        history = MemoryHistory(10)
        tracemalloc.start()
        try:
            for i in range(2000):
                history.append(b"%05d" % i + b"x" * 10_000 + b"\n", 1)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(history.report()["messages"], 10)
        self.assertLess(held, 30 * 10_006, f"{held} bytes held for 10 messages of 10 kB")


class ForgetTests(DiskStoreTestCase):
    """
    C{forget(upTo)}: a spool's lines go once delivered (L{backplane.outbox}).
    """

    def test_memoryAtOnce(self):
        history = MemoryHistory(100)
        for seq in (1, 4, 7):
            history.append(chunkOf(seq, 3), 3)
        history.forget(5)
        self.assertEqual((history.first, history.last), (6, 9))
        self.assertEqual(readAll(history), (chunkOf(6, 4), 4, 6))
        self.assertEqual(history._data[history._head - 1], b"", "let go")
        history.forget(3)
        self.assertEqual(history.first, 6, "never back")
        history.forget(100)
        self.assertEqual((history.first, history.last), (10, 9))
        self.assertEqual(history.read(0, 100), (b"", 0, 10))

    def test_diskAtTheNextFsync(self):
        """
        The lines go at the next fsync: the files holding nothing else are
        removed then, never the one being written.
        """
        store = self.open(segmentBytes=300, fsyncInterval=0.1)
        last = self.appendMany(store, 20)
        self.clock.advance(0.1)
        before = segments(self.path)
        self.assertGreater(len(before), 3)
        store.forget(last - 4)
        self.assertEqual(store.first, 1, "not yet")
        self.clock.advance(0.1)
        self.assertEqual(store.first, last - 3)
        self.assertHolds(store, last - 3, last)
        self.assertLess(len(segments(self.path)), len(before))
        store.forget(last + 10)
        self.clock.advance(0.1)
        self.assertEqual((store.first, store.last), (last + 1, last))
        self.assertEqual(segments(self.path), before[-1:], "the last file stays")
        self.assertEqual(self.appendMany(store, 1), last + 3)
        self.assertHolds(store, last + 1, last + 3)

    def test_marksDurableFirst(self):
        """
        A mark set before forget() is durable before the lines go: killed
        between the two, the store still has them; and opened again, it reads
        its files from their first line.
        """
        store = self.open(segmentBytes=300, fsyncInterval=0.1)
        last = self.appendMany(store, 20)
        self.clock.advance(0.1)
        store.setMark("acked.x", last - 4)
        store.forget(last - 4)
        abandon(store)
        store = self.open(segmentBytes=300, fsyncInterval=0.1)
        self.assertEqual((store.first, store.last, store.mark("acked.x")), (1, last, 0))
        store.setMark("acked.x", last - 4)
        store.forget(last - 4)
        self.clock.advance(0.1)
        abandon(store)
        store = self.open(segmentBytes=300, fsyncInterval=0.1)
        self.assertEqual(store.mark("acked.x"), last - 4)
        self.assertLessEqual(store.first, last - 3)
        self.assertGreater(store.first, 1)
        self.assertEqual(store.read(last - 4, 1000), (chunkOf(last - 3, 4), 4, last - 3))

    def test_atClose(self):
        store = self.open(segmentBytes=300, fsyncInterval=0.1)
        last = self.appendMany(store, 20)
        store.forget(last)
        store = self.reopen(store, segmentBytes=300)
        self.assertEqual(len(segments(self.path)), 1)
        self.assertEqual(store.last, last)
