"""
What every history provides (L{History}), its error (L{StoreError}), and the
small parts both kinds share: publisher marks, C{whenSynced} waiters, and
cutting chunks at line boundaries.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: The most publisher ids whose marks a history keeps; past it, the one
#: updated least recently is forgotten.
MAX_MARKS = 100_000
#: The longest publisher id.
MAX_PUBLISHER_ID = 256


class StoreError(Exception):
    """
    A history store cannot be used: its folder cannot be made or written,
    it is in use by another process, its files are of an unknown format, or
    it was asked something it cannot do (an append after C{close}, a
    C{whenSynced} for messages it failed to store).  The message says which
    and names the folder.
    """


class History(Protocol):
    """
    The history of a backplane: its messages by SEQ, as chunks of lines.

    The backplane hands it each chunk it publishes (L{append}) and labels the
    chunk's lines with the ids that returns; a subscriber that resumes is
    sent what L{read} returns, chunk by chunk.  Implemented by
    L{backplane.history.MemoryHistory} and L{backplane.history.DiskStore}.
    """

    @property
    def epoch(self) -> str:
        """
        The epoch of the messages.  Read it after L{append}: a store that
        loses continuity (a failed write) starts a new one.
        """

    @property
    def first(self) -> int:
        """
        The SEQ of the oldest message kept; C{last + 1} when none is kept.
        """

    @property
    def last(self) -> int:
        """
        The SEQ of the latest message appended; 0 if none was in this epoch.
        """

    @property
    def synced(self) -> int:
        """
        The highest SEQ that is durable (for a memory history: C{last}).
        """

    def append(self, data: bytes, count: int, mark: tuple[str, int] | None = None) -> int:
        """
        Keep a chunk of C{count} messages; return the SEQ of its first one
        (the others follow it).  Costs the same whatever C{count} is.

        @param data: C{count} complete lines, each followed by C{b"\\n"};
            never empty.
        @param mark: C{(publisherId, count)}: the chunk ends that
            publisher's first C{count} lines; kept as L{setMark} does, and
            on disk exactly with the chunk (so a publisher's resent lines are
            recognised even after a C{kill -9}).
        """

    def read(self, after: int, maxBytes: int) -> tuple[bytes, int, int]:
        """
        The oldest kept messages with a SEQ above C{after}: C{(data, count,
        firstSeq)}.

        C{data} is whole lines, each followed by C{b"\\n"}, at most
        C{maxBytes} long unless its one message is longer.  C{after} below
        C{first - 1} reads from C{first}.  With nothing to read: C{(b"", 0,
        last + 1)}.  It may be shorter than C{maxBytes}: it ends where a
        chunk (or a file) ends rather than inside the next one.  Cheap to
        call again and again with C{after = firstSeq + count - 1}, for a
        long replay under a slow-consumer bound.
        """

    def whenSynced(self, seq: int) -> Deferred[None]:
        """
        A L{Deferred} that fires once message C{seq} is durable (at once if
        it is), or fails with L{StoreError} if it never will be.
        """

    def mark(self, publisherId: str) -> int:
        """
        The high-water mark last set for C{publisherId}; 0 if none.
        """

    def setMark(self, publisherId: str, seq: int) -> None:
        """
        Set the high-water mark of C{publisherId}; a store makes it durable
        by its next fsync, before any L{whenSynced} that fsync fires.
        """

    def report(self) -> dict[str, object]:
        """
        A snapshot for monitoring: C{epoch}, C{first}, C{last}, C{messages},
        C{bytes}, C{synced} and the counters C{appends}, C{fsyncs},
        C{truncations}, C{errors}, C{epochs} (epochs started since open).
        """

    def close(self) -> Deferred[None]:
        """
        Make everything durable and release the files; the history is not
        used afterwards.
        """


class Marks:
    """
    The high-water marks of publisher ids, bounded: past C{limit} ids, the
    one updated least recently is forgotten.

    @ivar dirty: whether a mark changed since it was last cleared (by a store
        that saved them).
    """

    def __init__(self, limit: int = MAX_MARKS) -> None:
        self.limit = limit
        self.dirty = False
        self._marks: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, publisherId: str) -> int:
        """
        The mark of C{publisherId}, 0 if none.
        """
        return self._marks.get(publisherId, 0)

    def set(self, publisherId: str, seq: int) -> None:
        """
        Set the mark of C{publisherId}.

        @raise ValueError: C{publisherId} is empty or longer than 256
            characters, or C{seq} is negative.
        """
        if not 0 < len(publisherId) <= MAX_PUBLISHER_ID:
            raise ValueError(f"a publisher id is 1 to {MAX_PUBLISHER_ID} characters")
        if seq < 0:
            raise ValueError(f"a mark is not negative: {seq}")
        self._marks[publisherId] = seq
        self._marks.move_to_end(publisherId)
        if len(self._marks) > self.limit:
            self._marks.popitem(last=False)
        self.dirty = True

    def asDict(self) -> dict[str, int]:
        """
        Every mark, least recently updated first.
        """
        return dict(self._marks)

    def load(self, marks: Mapping[str, object]) -> None:
        """
        Take the marks C{asDict} gave (ignoring what is not a mark).
        """
        for publisherId, seq in marks.items():
            if isinstance(seq, int) and not isinstance(seq, bool):
                try:
                    self.set(publisherId, seq)
                except ValueError:
                    continue
        self.dirty = False


class Waiters:
    """
    The L{Deferred}s of L{History.whenSynced}, fired in SEQ order.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Deferred[None]]] = []
        self._added = 0

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(self, seq: int) -> Deferred[None]:
        """
        A L{Deferred} that L{fire} fires once it reaches C{seq}.
        """
        d: Deferred[None] = Deferred()
        self._added += 1
        heapq.heappush(self._heap, (seq, self._added, d))
        return d

    def fire(self, upTo: int) -> None:
        """
        Fire every waiter for a SEQ up to C{upTo}.
        """
        heap = self._heap
        ready = []
        while heap and heap[0][0] <= upTo:
            ready.append(heapq.heappop(heap)[2])
        for d in ready:
            d.callback(None)

    def fail(self, error: Exception) -> None:
        """
        Fail every waiter with C{error}.
        """
        ready = [d for _, _, d in self._heap]
        self._heap.clear()
        for d in ready:
            d.errback(Failure(error))


def skipLines(data: bytes, start: int, end: int, lines: int) -> int:
    """
    Where the line after the first C{lines} lines of C{data[start:end]}
    begins.  (One C{find} a line: used only when a read begins inside a
    chunk.)
    """
    find = data.index
    position = start
    for _ in range(lines):
        position = find(b"\n", position, end) + 1
    return position


def fitLines(data: bytes, start: int, end: int, room: int) -> int:
    """
    Where the most whole lines of C{data[start:end]} that fit in C{room}
    bytes end; after the first line if even that one does not fit.
    """
    if end - start <= room:
        return end
    cut = data.rfind(b"\n", start, start + room)
    if cut < 0:
        cut = data.index(b"\n", start, end)
    return cut + 1
