"""
The fan-in run: many publishers, at full speed, into one file sink.

The run ends when the file holds every line (its size says so) or stops
growing.  Then the file is read and checked: its lines are counted, and
each publisher's sequence numbers must follow each other with no gap.  The
time includes the sink's last flush (at most its C{flush_interval}).
"""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.load import (
    CONTEXT,
    GeneratorError,
    Mailbox,
    Placement,
    Shared,
    Target,
    child,
    connect,
    cpu_figures,
    run_processes,
    run_status,
    shares,
)
from bench.procfs import Snapshot
from bench.wire import LINES, BatchMaker, FileChecker

POLL = 0.005


@dataclass(frozen=True)
class FanInLoad:
    """
    What one fan-in run does.

    @ivar publishers: publisher connections (P).
    @ivar messages: lines in total, split evenly over the publishers.
    """

    publishers: int
    messages: int
    size: int = 64
    batch: int = 256
    workers: int = 2
    stall_timeout: float = 10.0
    setup_timeout: float = 60.0


@child
def fanin_process(first: int, quotas: Sequence[int], target: Target, load: FanInLoad,
                  shared: Shared, conn: Connection) -> None:
    """
    A publisher process: publishers C{first}, C{first + 1}, ... each send
    their quota of lines as fast as the server takes them.

    Says C{("ready",)} once connected, then publishes when C{shared.go} is
    set and reports C{("result", dict)}.
    """
    socks = [connect(target.publish) for _ in quotas]
    makers = [BatchMaker(LINES, first + i, load.size) for i in range(len(quotas))]
    conn.send(("ready",))
    shared.go.wait()
    poller = select.epoll()
    index = {}
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLOUT)
        index[sock.fileno()] = i
    sent = [0] * len(socks)
    pending = [memoryview(b"")] * len(socks)
    left = len(socks)
    start = time.monotonic_ns()
    while left and not shared.stop.value:
        for fd, _ in poller.poll(0.05):
            i = index[fd]
            if not pending[i]:
                if sent[i] >= quotas[i]:
                    poller.unregister(fd)
                    left -= 1
                    continue
                data, n = makers[i].make(sent[i], min(load.batch, quotas[i] - sent[i]),
                                         time.monotonic_ns())
                sent[i] += n
                pending[i] = memoryview(data)
            try:
                pending[i] = pending[i][socks[i].send(pending[i]):]
            except BlockingIOError:
                pass
    conn.send(("result", {
        "status": "stopped" if left else "ok",
        "start_ns": start,
        "end_ns": time.monotonic_ns(),
        "sent": sum(sent),
    }))
    shared.await_stop()


def run_fanin(target: Target, load: FanInLoad, path: Path,
              placement: Placement) -> dict[str, object]:
    """
    One fan-in run: C{load.publishers} publishers into the file sink that
    writes C{path}.  The file is appended to, so only what this run added is
    counted and checked.

    @raise GeneratorError: the generator could not set up or run.
    """
    quotas = shares(load.messages, load.publishers)
    parts = shares(load.publishers, load.workers)
    shared = Shared(len(parts))
    mailbox = Mailbox()
    processes = []
    first = 0
    for i, count in enumerate(parts):
        processes.append(CONTEXT.Process(
            target=fanin_process, name=f"fanin-{i}", daemon=True,
            args=(first, quotas[first:first + count], target, load, shared),
            kwargs={"placement": placement, "conn": mailbox.pipe(f"pub{i}")},
        ))
        first += count
    offset = path.stat().st_size if path.exists() else 0

    def body() -> dict[str, object]:
        return _coordinate(target, load, path, offset, shared, mailbox, processes)

    return run_processes(processes, shared, body)


def _coordinate(target: Target, load: FanInLoad, path: Path, offset: int, shared: Shared,
                mailbox: Mailbox, processes: Sequence[Any]) -> dict[str, object]:
    generator = [p.pid for p in processes]
    ready = 0
    deadline = time.monotonic() + load.setup_timeout
    while ready < len(processes):
        ready += sum(m == ("ready",) for _, m in mailbox.receive(1.0))
        if time.monotonic() > deadline:
            raise GeneratorError(f"setup timeout: {ready} of {len(processes)} "
                                 "publisher processes connected")
    before = Snapshot.take(target.pids, generator)
    shared.go.set()
    expected = offset + load.messages * (load.size + 1)
    size, grew = offset, time.monotonic()
    results: list[dict[str, Any]] = []
    status = "ok"
    while size < expected:
        results += [m[1] for _, m in mailbox.receive(POLL) if m[0] == "result"]
        now = time.monotonic()
        current = path.stat().st_size if path.exists() else 0
        if current != size:
            size, grew = current, now
        elif now - grew > load.stall_timeout:
            status = "stalled"
            break
    end = time.monotonic_ns()
    after = Snapshot.take(target.pids, generator)
    shared.stop.value = 1
    results += mailbox.results(len(processes) - len(results))
    checker = FileChecker(load.publishers, load.size)
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(4 << 20):
            checker.feed(block)
    checker.close()
    elapsed = max(1e-9, (end - min(r["start_ns"] for r in results)) / 1e9)
    quotas = shares(load.messages, load.publishers)
    usage = before.usage(after)
    row: dict[str, object] = {
        "server": target.name,
        "P": load.publishers,
        "B": load.size,
        "M": load.messages,
        "elapsed_s": round(elapsed, 4),
        "published": sum(r["sent"] for r in results),
        "file_lines": checker.lines,
        "lines_per_s": round(checker.lines / elapsed),
        "lost": sum(max(0, q - c) for q, c in zip(quotas, checker.counts, strict=True)),
        "excess": sum(max(0, c - q) for q, c in zip(quotas, checker.counts, strict=True)),
        "bad": checker.bad,
        "sequence_errors": checker.out_of_order,
    }
    row.update(usage)
    row.update(cpu_figures(usage, checker.lines))
    row["status"] = run_status([status, *(r["status"] for r in results)], row)
    return row
