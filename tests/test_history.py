"""
The history of a backplane (backplane.history): ids, the resume decision,
the memory history and the disk store (appending, reading in chunks,
bounds, fsync, reopening, recovery from torn and corrupt files and failed
writes), a Hypothesis state machine of the segment format, and a store
whose writer is killed with SIGKILL.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from backplane.history import (
    MemoryHistory,
    Resume,
    formatId,
    newEpoch,
    parseId,
    resume,
    withIds,
)
from backplane.history.base import Marks
from backplane.history.memory import CHUNK_OVERHEAD

NOBODY = 65534


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


class LogCapture:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, text: str, level=None) -> list[dict]:
        return [e for e in self.events
                if text in (e.get("log_format") or "")
                and (level is None or e.get("log_level") == level)]


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
        cases = {
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


class HistoryContract:
    """
    What every history does; C{makeHistory(maxMessages)} makes one.
    """

    def makeHistory(self, maxMessages: int = 1_000_000):
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
        fired = []
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
