"""
C{python -m bench store}: the history store in-process, no network.

Appends of 64-byte lines (63 bytes and the newline) in chunks of 1, 16 and
256 lines, as a backplane hands them over, to a L{DiskStore} in a temporary
folder (C{fsyncInterval} 0.1, the fsyncs included: the store's clock is
advanced with real time, as the reactor would) and to a L{MemoryHistory};
labelling the chunks with their ids (L{withIds}); and the replay of the
history with C{read} in chunks of at most 256 KiB.  Prints lines/s and MB/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.task import Clock

from backplane.history import DiskStore, MemoryHistory, withIds
from bench.report import render, si

LINE = 64
CHUNKS = (1, 16, 256)
# Lines appended a run, by chunk size; --quick divides them.
LINES = {1: 300_000, 16: 2_000_000, 256: 4_000_000}
REPLAY_LINES = 1_000_000
REPLAY_BYTES = 256 * 1024
QUICK_DIVISOR = 100
FSYNC_INTERVAL = 0.1
# The bound of the memory history: reached in the longer runs, so that they
# measure its trimming too.
MEMORY_MESSAGES = 1_000_000


def addParser(commands: Any) -> None:
    """
    Add the C{store} command to the subcommands of C{python -m bench}.
    """
    store = commands.add_parser(
        "store", help="the history store in-process: appends, ids and replay, in lines/s")
    store.add_argument("--quick", action="store_true",
                       help="a smoke run: a hundredth of the lines")
    store.add_argument("--dir", metavar="DIR",
                       help="the folder for the disk store's temporary folder "
                            "(default: the system's temporary folder)")


def chunk(count: int) -> bytes:
    """
    C{count} lines of L{LINE} bytes.
    """
    return (b"x" * (LINE - 1) + b"\n") * count


def appendRun(make: Callable[..., Any], count: int, lines: int) -> dict[str, Any]:
    """
    Append C{lines} lines in chunks of C{count} to a history C{make} makes;
    every 64 appends, its clock catches up with real time (so that its
    fsyncs run when due).
    """
    clock = Clock()
    history = make(clock=clock)
    data = chunk(count)
    appends = max(lines // count, 1)
    append = history.append
    started = time.perf_counter()
    clock.advance(started)
    for done in range(0, appends, 64):
        for _ in range(min(64, appends - done)):
            append(data, count)
        clock.advance(time.perf_counter() - clock.seconds())
    history.close()
    elapsed = time.perf_counter() - started
    report = history.report()
    return {"lines": appends * count, "seconds": elapsed, "fsyncs": report["fsyncs"]}


def idsRun(count: int, lines: int) -> dict[str, Any]:
    """
    Label C{lines} lines, in chunks of C{count}, with their ids.
    """
    data = chunk(count)
    chunks = max(lines // count, 1)
    started = time.perf_counter()
    seq = 1
    for _ in range(chunks):
        withIds("abcdefghij", seq, data, count)
        seq += count
    return {"lines": chunks * count, "seconds": time.perf_counter() - started, "fsyncs": 0}


def replayRun(history: Any) -> dict[str, Any]:
    """
    Read the whole of C{history}, in reads of at most 256 KiB.
    """
    after, lines, reads = 0, 0, 0
    started = time.perf_counter()
    while True:
        _, count, first = history.read(after, REPLAY_BYTES)
        if not count:
            break
        lines += count
        reads += 1
        after = first + count - 1
    return {"lines": lines, "seconds": time.perf_counter() - started, "fsyncs": 0,
            "reads": reads}


def row(what: str, count: int | str, run: dict[str, Any]) -> list[str]:
    rate = run["lines"] / run["seconds"]
    return [what, str(count), f"{run['lines']:,}", si(rate), f"{rate * LINE / 1e6:.0f}",
            str(run["fsyncs"])]


def run(arguments: argparse.Namespace) -> int:
    """
    Run the benchmark and print its table.
    """
    divisor = QUICK_DIVISOR if arguments.quick else 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=arguments.dir) as folder:
        for count in CHUNKS:
            lines = LINES[count] // divisor
            path = f"{folder}/append-{count}"
            rows.append(row("disk append", count, appendRun(
                partial(DiskStore.open, path, fsyncInterval=FSYNC_INTERVAL), count, lines)))
            rows.append(row("memory append", count, appendRun(
                lambda clock: MemoryHistory(MEMORY_MESSAGES), count, lines)))
            rows.append(row("withIds", count, idsRun(count, lines)))
        replay = REPLAY_LINES // divisor
        appendRun(partial(DiskStore.open, f"{folder}/replay"), 16, replay)
        disk = DiskStore.open(f"{folder}/replay", clock=Clock())
        rows.append(row("disk read", "256 KiB", replayRun(disk)))
        disk.close()
        memory = MemoryHistory(replay, maxBytes=1 << 30)
        for _ in range(replay // 16):
            memory.append(chunk(16), 16)
        rows.append(row("memory read", "256 KiB", replayRun(memory)))
    print(f"History store: {LINE}-byte lines; disk store with fsyncInterval {FSYNC_INTERVAL}")
    print(render(["what", "chunk", "lines", "lines/s", "MB/s", "fsyncs"], rows))
    return 0
