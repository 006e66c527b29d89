"""
The idle-scale run: many subscribers that receive a tick now and then.

It measures the server's memory per subscriber (VmRSS before the
subscribers connect and after) and how long a tick takes to reach them all:

 - ticker latency: the coordinator publishes a timestamped message once an
   interval; each subscriber's latency is its arrival time minus the send
   time (one monotonic clock for every process of the machine);
 - clock spread (backplane only): a C{[[clock]]} publishes
   C{time.asctime()}, which carries no usable time, so what is measured is
   each subscriber's arrival time minus the first subscriber's arrival of
   the same tick.

Both include the time the generator takes to get round to each socket, so
they are upper bounds on the server's part.  The coordinator sends each
ticker message half an interval after a clock tick, so that the two do not
queue behind each other.
"""

from __future__ import annotations

import select
import socket
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
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
    connect_subscribers,
    cpu_figures,
    run_processes,
    run_status,
    shares,
)
from bench.procfs import Snapshot, rss_kib
from bench.stats import latency_summary
from bench.wire import (
    PROBE,
    MessageReader,
    RespError,
    parse_payload,
    payload,
    probe,
    publish_command,
)

PROBE_INTERVAL = 0.1
# How long after the last ticker message every subscriber must have it.
DELIVERY_TIMEOUT = 10.0
TICKER_SIZE = 64


@dataclass(frozen=True)
class IdleLoad:
    """
    What one idle-scale run does.

    @ivar subscribers: idle subscribers.
    @ivar ticks: ticker messages (and clock ticks) measured.
    @ivar interval: seconds between ticks (the clock's interval).
    @ivar clock: whether the target has a clock publishing to the
        subscribers' backplane (and its ticks are measured).
    """

    subscribers: int
    ticks: int
    interval: float = 1.0
    clock: bool = False
    workers: int = 2
    setup_timeout: float = 300.0


@child
def idle_process(index: int, count: int, target: Target, load: IdleLoad, shared: Shared,
                 conn: Connection) -> None:
    """
    An idle-subscriber process: connect C{count} subscribers, then record
    when each message arrives at each of them until told to stop, counting
    the ticker messages received in C{shared.progress}.

    Reports C{("result", dict)}: C{arrivals} maps each message (a clock
    tick's text, or a ticker message's sequence number) to its arrival times
    (ns); C{latencies} are the ticker messages' latencies (ns, an
    C{array("q")} as bytes).
    """
    try:
        socks = connect_subscribers(target.subscribers(count), load.setup_timeout)
    except (OSError, RespError) as e:
        conn.send(("error", f"cannot connect its subscribers: {type(e).__name__}: {e}"))
        return
    poller = select.epoll()
    readers: dict[int, tuple[socket.socket, MessageReader]] = {}
    for sock in socks:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        readers[sock.fileno()] = (sock, MessageReader(target.protocol))
    attached: set[int] = set()
    if target.protocol == "resp":
        attached.update(readers)
    shared.ready[index] = len(attached)
    arrivals: dict[object, array[int]] = {}
    latencies: array[int] = array("q")
    disconnects = 0
    ticker = 0
    while not shared.stop.value:
        for fd, _ in poller.poll(0.05):
            sock, reader = readers[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            now = time.monotonic_ns()
            if not data:
                poller.unregister(fd)
                del readers[fd]
                disconnects += 1
                continue
            for message in reader.feed(data):
                if message[:1] == PROBE:
                    attached.add(fd)
                elif message[:1] == b"M":
                    _, seq, sent = parse_payload(message)
                    latencies.append(now - sent)
                    arrivals.setdefault(seq, array("q")).append(now)
                    ticker += 1
                else:
                    arrivals.setdefault(message, array("q")).append(now)
        shared.ready[index] = len(attached)
        shared.progress[index] = ticker
    conn.send(("result", {
        "arrivals": {key: times.tobytes() for key, times in arrivals.items()},
        "latencies": latencies.tobytes(),
        "disconnects": disconnects,
        "bad": sum(reader.bad for _, reader in readers.values()),
    }))


def run_idle(target: Target, load: IdleLoad, placement: Placement) -> dict[str, object]:
    """
    One idle-scale run against C{target}, whose server is C{target.pids[0]}.

    @raise GeneratorError: the generator could not set up or run.
    """
    server = target.pids[0]
    ticker = connect(target.publish)
    phase = connect(target.subscribe) if load.clock else None
    parts = shares(load.subscribers, load.workers)
    shared = Shared(len(parts))
    mailbox = Mailbox()
    processes = [
        CONTEXT.Process(target=idle_process, name=f"idle-{i}", daemon=True,
                        args=(i, count, target, load, shared),
                        kwargs={"placement": placement, "conn": mailbox.pipe(f"idle{i}")})
        for i, count in enumerate(parts)
    ]
    try:
        time.sleep(0.5)
        rss_before = rss_kib(server)

        def body() -> dict[str, object]:
            return _coordinate(target, load, shared, mailbox, processes, ticker, phase,
                               rss_before)

        return run_processes(processes, shared, body)
    finally:
        ticker.close()
        if phase is not None:
            phase.close()


def _coordinate(target: Target, load: IdleLoad, shared: Shared, mailbox: Mailbox,
                processes: Sequence[Any], ticker: socket.socket,
                phase: socket.socket | None, rss_before: int) -> dict[str, object]:
    server = target.pids[0]
    generator = [p.pid for p in processes]
    deadline = time.monotonic() + load.setup_timeout
    while sum(shared.ready) < load.subscribers:
        mailbox.receive(PROBE_INTERVAL)
        if time.monotonic() > deadline:
            raise GeneratorError(f"setup timeout: {sum(shared.ready)} of "
                                 f"{load.subscribers} subscribers attached")
        if target.protocol == "lines":
            ticker.sendall(probe(0))
    time.sleep(max(0.5, load.interval / 2))
    before = Snapshot.take(target.pids, generator)
    for seq in range(load.ticks):
        if phase is not None:
            _await_tick(phase, 3 * load.interval)
        time.sleep(load.interval / 2)
        message = payload(0, seq, time.monotonic_ns(), TICKER_SIZE)
        if target.protocol == "lines":
            ticker.sendall(message + b"\n")
        else:
            ticker.sendall(publish_command(target.channel, message))
        if phase is None:
            time.sleep(load.interval / 2)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while sum(shared.progress) < load.ticks * load.subscribers:
        if time.monotonic() > deadline:
            break  # what has not arrived by now is lost
        mailbox.receive(0.01)
    after = Snapshot.take(target.pids, generator)
    rss_after = rss_kib(server)
    shared.stop.value = 1
    results = mailbox.results(len(processes))
    return _idle_result(target, load, results, before, after, rss_before, rss_after)


def _await_tick(sock: socket.socket, timeout: float) -> None:
    """
    Wait for the next clock tick on C{sock}: throw away what has arrived,
    then read until a line that is neither a probe nor a ticker message.
    """
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass  # what arrived before now
    except BlockingIOError:
        pass
    sock.settimeout(timeout)
    reader = MessageReader("lines")
    while True:
        data = sock.recv(65536)
        if not data:
            raise GeneratorError("the server closed the clock subscriber")
        if any(m[:1] not in (PROBE, b"M") for m in reader.feed(data)):
            return


def _idle_result(target: Target, load: IdleLoad, results: list[dict[str, Any]],
                 before: Snapshot, after: Snapshot, rss_before: int,
                 rss_after: int) -> dict[str, object]:
    arrivals: dict[object, list[int]] = {}
    latencies: array[int] = array("q")
    for result in results:
        latencies.frombytes(result["latencies"])
        for key, times in result["arrivals"].items():
            values = array("q")
            values.frombytes(times)
            arrivals.setdefault(key, []).extend(values)
    ticker_spread: list[int] = []
    clock_spread: list[int] = []
    clock_ticks = missing = 0
    for key, times in arrivals.items():
        first = min(times)
        if isinstance(key, int):
            ticker_spread += [t - first for t in times]
        elif first > before.wall_ns and len(times) == load.subscribers:
            clock_ticks += 1
            clock_spread += [t - first for t in times]
    for seq in range(load.ticks):
        missing += load.subscribers - len(arrivals.get(seq, ()))
    deliveries = len(ticker_spread) + len(clock_spread)
    usage = before.usage(after)
    row: dict[str, object] = {
        "server": target.name,
        "S": load.subscribers,
        "ticks": load.ticks,
        "interval_s": load.interval,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_subscriber_bytes": round((rss_after - rss_before) * 1024 / load.subscribers),
        "lost": missing,
        "disconnects": sum(r["disconnects"] for r in results),
        "bad": sum(r["bad"] for r in results),
    }
    row.update(latency_summary(latencies, "tick_lat"))
    row.update(latency_summary(ticker_spread, "tick_spread"))
    if load.clock:
        row["clock_ticks"] = clock_ticks
        row.update(latency_summary(clock_spread, "clock_spread"))
    row.update(usage)
    row.update(cpu_figures(usage, deliveries))
    # What one tick (one message to every subscriber) costs each side: if
    # the server's share is well below the spread, the generator set it.
    ticks = max(1, deliveries) / load.subscribers
    row["server_cpu_ms_per_tick"] = round(usage["server_cpu_s"] * 1000 / ticks, 2)
    row["gen_cpu_ms_per_tick"] = round(usage["gen_cpu_s"] * 1000 / ticks, 2)
    row["status"] = run_status(["ok" if clock_ticks or not load.clock
                                else "no complete clock tick"], row)
    return row
