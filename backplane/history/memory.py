"""
L{MemoryHistory}: the last messages of a backplane, in memory.
"""

from __future__ import annotations

from bisect import bisect_right

from twisted.internet.defer import Deferred, succeed

from backplane.history.base import History, Marks, Waiters, fitLines, skipLines
from backplane.history.ids import newEpoch

#: The default bound of a memory history in bytes: 64 MiB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: What a kept chunk costs beside its data (list slots, the bytes object's
#: header, its SEQ), counted against C{maxBytes}.
CHUNK_OVERHEAD = 100


class MemoryHistory(History):
    """
    The last messages of a backplane, in memory, as the chunks they were
    appended in; a new epoch at every start.

    Bounded in messages (C{maxMessages}, exactly: older ones are no longer
    read even while their chunk is still held) and in bytes (C{maxBytes},
    each chunk counted as its data plus L{CHUNK_OVERHEAD}): the oldest
    chunks are dropped whole, and a chunk is cut only when it alone is over
    C{maxBytes}.  An append costs the same whatever its line count; a read
    finds its first chunk by binary search.

    The chunks are a list with a moving head (compacted now and then) rather
    than a L{collections.deque}, whose middle is slow to index.
    """

    def __init__(self, maxMessages: int, maxBytes: int = DEFAULT_MAX_BYTES) -> None:
        """
        @param maxMessages: the most messages kept (at least 1).
        @param maxBytes: the most bytes kept, chunks' overhead included.
        """
        if maxMessages < 1 or maxBytes < 1:
            raise ValueError("a memory history keeps at least 1 message and 1 byte")
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
        self._epoch = newEpoch()
        # The first SEQ and the data of each chunk held, from _head on.
        self._seqs: list[int] = []
        self._data: list[bytes] = []
        self._head = 0
        self._next = 1
        self._first = 1
        self._bytes = 0
        self._appends = 0
        self._waiters = Waiters()
        self._marks = Marks()

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
        return self._next - 1

    def append(self, data: bytes, count: int, mark: tuple[str, int] | None = None) -> int:
        if mark is not None:
            self.setMark(*mark)
        seq = self._next
        self._seqs.append(seq)
        self._data.append(data)
        self._next = seq + count
        self._bytes += len(data)
        self._appends += 1
        if self._next - self._first > self.maxMessages:
            self._first = self._next - self.maxMessages
            self._dropBefore(self._first)
        if self._bytes + CHUNK_OVERHEAD * (len(self._seqs) - self._head) > self.maxBytes:
            self._dropForBytes()
        if self._waiters:
            self._waiters.fire(self._next - 1)
        return seq

    def _dropBefore(self, seq: int) -> None:
        """
        Drop the chunks whose messages are all older than C{seq}.
        """
        seqs, head = self._seqs, self._head
        while head + 1 < len(seqs) and seqs[head + 1] <= seq:
            self._bytes -= len(self._data[head])
            head += 1
        self._setHead(head)

    def _dropForBytes(self) -> None:
        """
        Drop the oldest chunks until the bytes are within bounds; cut the
        last chunk left if it alone is over.
        """
        seqs, data, head = self._seqs, self._data, self._head
        while self._bytes + CHUNK_OVERHEAD * (len(seqs) - head) > self.maxBytes:
            if head + 1 < len(seqs):
                self._bytes -= len(data[head])
                head += 1
                continue
            # One chunk left, too big: keep the lines at its end that fit.
            chunk = data[head]
            room = self.maxBytes - CHUNK_OVERHEAD
            cut = len(chunk) if room < 1 else chunk.find(b"\n", len(chunk) - room - 1) + 1
            dropped = chunk.count(b"\n", 0, cut)
            if cut >= len(chunk):
                self._bytes = 0
                head += 1
            else:
                data[head] = chunk[cut:]
                seqs[head] += dropped
                self._bytes -= cut
            break
        self._first = max(self._first, seqs[head] if head < len(seqs) else self._next)
        self._setHead(head)

    def _setHead(self, head: int) -> None:
        # Let go of the dropped chunks' data at once: until the list is
        # compacted only their slots remain, so memory follows maxBytes.
        data = self._data
        for index in range(self._head, min(head, len(data))):
            data[index] = b""
        if head > 1024 and head * 2 > len(self._seqs):
            del self._seqs[:head]
            del self._data[:head]
            head = 0
        self._head = head

    def read(self, after: int, maxBytes: int) -> tuple[bytes, int, int]:
        start = max(after + 1, self._first)
        if start >= self._next:
            return b"", 0, self._next
        seqs, data, nextSeq = self._seqs, self._data, self._next
        index = bisect_right(seqs, start, self._head) - 1
        pieces: list[bytes] = []
        room = maxBytes
        count = 0
        while index < len(seqs) and room > 0:
            chunk = data[index]
            chunkSeq = seqs[index]
            chunkCount = (seqs[index + 1] if index + 1 < len(seqs) else nextSeq) - chunkSeq
            begin = 0
            if chunkSeq < start:
                begin = skipLines(chunk, 0, len(chunk), start - chunkSeq)
                chunkCount -= start - chunkSeq
            if len(chunk) - begin <= room:
                piece = chunk if begin == 0 else chunk[begin:]
            elif pieces:
                break
            else:
                piece = chunk[begin:fitLines(chunk, begin, len(chunk), room)]
                chunkCount = piece.count(b"\n")
            pieces.append(piece)
            count += chunkCount
            room -= len(piece)
            index += 1
            if len(piece) < len(chunk) - begin:
                break
        return b"".join(pieces), count, start

    def forget(self, upTo: int) -> None:
        """
        Forget the messages up to SEQ C{upTo} at once (a spool's lines, once
        delivered: see L{backplane.outbox}): they are no longer read, and
        the chunks that hold nothing else are let go.
        """
        first = min(upTo + 1, self._next)
        if first > self._first:
            self._first = first
            self._dropBefore(first)

    def whenSynced(self, seq: int) -> Deferred[None]:
        if seq < self._next:
            return succeed(None)
        return self._waiters.add(seq)

    def mark(self, publisherId: str) -> int:
        return self._marks.get(publisherId)

    def setMark(self, publisherId: str, seq: int) -> None:
        self._marks.set(publisherId, seq)

    def report(self) -> dict[str, object]:
        return {
            "kind": "memory",
            "epoch": self._epoch,
            "first": self._first,
            "last": self._next - 1,
            "synced": self._next - 1,
            "messages": self._next - self._first,
            "bytes": self._bytes,
            "appends": self._appends,
            "fsyncs": 0,
            "truncations": 0,
            "errors": 0,
            "epochs": 1,
            "marks": len(self._marks),
        }

    def close(self) -> Deferred[None]:
        return succeed(None)
