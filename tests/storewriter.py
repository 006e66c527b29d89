"""
A process that appends to a L{DiskStore} as fast as it can, for the
C{kill -9} test in tests/test_history.py::

    python -m tests.storewriter FOLDER

It prints C{epoch EPOCH last LAST} once the store is open, then C{synced
SEQ} each time an fsync made more messages durable.  The line of SEQ s is
L{payload}C{(s)}; chunks are of 1 to 37 lines.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor

from backplane.history import DiskStore

FSYNC_INTERVAL = 0.05
APPENDS_A_TURN = 200


def payload(seq: int) -> bytes:
    """
    The line of message C{seq}, without its newline.
    """
    return b"s%d-%s" % (seq, b"x" * (seq % 97))


def chunk(first: int, count: int) -> bytes:
    return b"".join(payload(seq) + b"\n" for seq in range(first, first + count))


def main(folder: str) -> None:
    store = DiskStore.open(folder, fsyncInterval=FSYNC_INTERVAL)
    waiting = [False]

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def synced(_: None, seq: int) -> None:
        waiting[0] = False
        say(f"synced {seq}")

    def turn() -> None:
        for _ in range(APPENDS_A_TURN):
            seq = store.last + 1
            count = 1 + seq % 37
            if store.append(chunk(seq, count), count) != seq:
                raise AssertionError(f"SEQ {seq} expected")
        if not waiting[0]:
            waiting[0] = True
            store.whenSynced(store.last).addCallback(synced, store.last)
        reactor.callLater(0, turn)

    say(f"epoch {store.epoch} last {store.last}")
    reactor.callWhenRunning(turn)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
