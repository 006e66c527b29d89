"""
The pieces of C{python -m bench history} beside the fan-out machinery: a
client that replays a backplane's history from an C{ids = true} port (a
L{Companion} of a fan-out run, so that it replays while live subscribers
are measured), and what the server says of its histories (its C{/stats}).
"""

from __future__ import annotations

import json
import time
import urllib.request
from multiprocessing.connection import Connection
from typing import Any

from bench.load import RECV_SIZE, Companion, Load, Shared, child, connect
from bench.wire import IdLineCounter

# What a replaying client sends first: everything the history keeps.
RESUME_ALL = b"RESUME 0\n"


def replay(port: int, target: int, stall_timeout: float = 10.0) -> dict[str, Any]:
    """
    Connect to an C{ids = true} line port, send C{RESUME 0}, and read until
    the line of SEQ C{target} has come (or the connection ends, or nothing
    comes for C{stall_timeout} seconds).

    @return: C{status} (C{ok}, C{stalled}, C{closed}), C{lines} (counted),
        C{first} and C{last} (SEQs of the first and last checked lines),
        C{seconds} (from connecting to the line of C{target}), C{reads},
        C{bad}, C{sequence_errors}.
    """
    counter = IdLineCounter()
    buffer = bytearray(RECV_SIZE)
    status = "ok"
    reads = 0
    start = time.monotonic_ns()
    sock = connect(port)
    try:
        sock.sendall(RESUME_ALL)
        sock.settimeout(stall_timeout)
        recv_into = sock.recv_into
        feed = counter.feed
        while counter.last < target:
            try:
                n = recv_into(buffer)
            except TimeoutError:
                status = "stalled"
                break
            if not n:
                status = "closed"
                break
            reads += 1
            feed(buffer, n)
        end = time.monotonic_ns()
    finally:
        sock.close()
    return {"status": status, "lines": counter.received, "first": counter.first,
            "last": counter.last, "seconds": (end - start) / 1e9, "reads": reads,
            "bad": counter.bad, "sequence_errors": counter.sequence_errors}


@child
def replay_process(port: int, target: int, load: Load, shared: Shared,
                   conn: Connection) -> None:
    """
    A client that replays a history beside a fan-out run (a L{Companion}):
    once C{shared.go} is set, L{replay} up to SEQ C{target}, once.

    Reports C{("result", dict)}: L{replay}'s figures, C{target}, and
    C{lines_per_s} (lines / seconds).
    """
    shared.go.wait()
    result = replay(port, target, load.stall_timeout)
    problems = [f"{k}={result[k]}" for k in ("bad", "sequence_errors") if result[k]]
    if result["status"] == "ok" and problems:
        result["status"] = ", ".join(problems)
    seconds = result.pop("seconds")
    result.update(target=target, seconds=round(seconds, 4),
                  lines_per_s=round(result["lines"] / seconds) if seconds else 0)
    conn.send(("result", result))
    shared.await_stop()


def replayer(port: int, target: int) -> Companion:
    """
    A L{Companion} of a fan-out run that replays the history of the C{ids =
    true} port C{port} up to SEQ C{target} (see L{replay_process}); its
    figures are C{replay_*} in the run's row.
    """
    return Companion("replay", replay_process, (port, target))


def server_stats(port: int, timeout: float = 10.0) -> dict[str, Any]:
    """
    The document of a backplane server's C{/stats} (its C{[monitor]} on
    127.0.0.1:C{port}).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=timeout) as answer:
        document: dict[str, Any] = json.load(answer)
    return document


def history_report(port: int, backplane: str) -> dict[str, Any]:
    """
    What the history of C{backplane} reports (C{first}, C{last},
    C{messages}, C{bytes}, ...: L{backplane.history.History.report}), from
    the server's C{/stats}.

    @raise KeyError: the server has no such backplane, or it keeps no history.
    """
    report = server_stats(port)["backplanes"][backplane]["history"]
    if report is None:
        raise KeyError(f"backplane {backplane} keeps no history")
    return dict(report)
