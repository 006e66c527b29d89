"""
The fan-out load generator: subscriber processes that count what they
receive, a publisher process that keeps at most a window of messages ahead
of the slowest subscriber, and L{run_fanout}, which coordinates them and
measures a run.

Every process of the generator runs on the generator's CPUs, away from the
server's.  Subscriber processes read with C{recv_into} into one 256 KiB
buffer and count in bulk (L{bench.wire.LineCounter},
L{bench.wire.FrameCounter}, L{bench.wire.WebSocketCounter}); they publish
their slowest subscriber's count in shared memory, which is all the
publisher needs for its window.

The subscribers of a run may be several groups (L{Subscribers}): on other
ports, other servers, other protocols (lines and WebSocket subscribers of
one backplane, or the subscribers of two nodes); each subscriber process
takes its share of every group, and the run's figures are also given for
each group.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import time
import traceback
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from bench.procfs import Snapshot, rss_kib
from bench.servers import die_with_parent
from bench.stats import latency_summary, message_latency_summary
from bench.wire import (
    LINES,
    MAX_NATS_GREETING,
    MAX_UPGRADE_RESPONSE,
    NATS_CONNECT,
    NATS_PING,
    BatchMaker,
    FrameCounter,
    Framing,
    LineCounter,
    NatsCounter,
    NatsError,
    RespError,
    WebSocketCounter,
    WebSocketError,
    check_upgrade,
    nats_framing,
    nats_greeting_end,
    nats_subscribe,
    parse_resp,
    probe,
    resp_framing,
    subscribe_command,
    upgrade_request,
    upgrade_response_end,
    websocket_key,
)

# fork: the children start at once and share the parent's imports.
CONTEXT = multiprocessing.get_context("fork")
RECV_SIZE = 256 * 1024
PROBE_INTERVAL = 0.02
SETTLE = 0.1
# How often a subscriber process publishes its progress, and how long the
# publisher sleeps when its window is full (seconds).
REFRESH = 0.001
WINDOW_WAIT = 0.0001
# The real-time priority of a fixed-rate publisher (SCHED_FIFO, 1..99), and
# the highest rate (msgs/s) it is given it at: above it no publisher writes
# one message at a time here (a wake-up costs tens of µs), and a real-time
# one that wakes that often takes the CPU from the subscriber processes.
PACING_PRIORITY = 10
PACING_MAX_RATE = 10_000
# SO_RCVBUF of a subscriber that never reads (the kernel doubles it).
STALLED_RECEIVE_BUFFER = 4096
# B: payload bytes, as in the issue (at least bench.wire.MIN_SIZE).
DEFAULT_SIZE = 64
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments with data
# a socket has received (Linux 4.6 and later), is the u32 at this offset.
TCP_INFO_LENGTH = 160
DATA_SEGS_IN_OFFSET = 152
# What connecting a subscriber may raise: the connection failed, or Redis,
# NATS or the WebSocket handshake refused it.
SETUP_ERRORS = (OSError, RespError, NatsError, WebSocketError)


@dataclass(frozen=True)
class Target:
    """
    A server under test, as the load generator sees it.

    @ivar name: C{"backplane"}, C{"redis"} or C{"nats"}.
    @ivar protocol: C{"lines"} (publishers write lines to C{publish},
        subscribers read lines from C{subscribe}), C{"resp"} (Redis
        pub/sub on C{channel}; both ports are Redis's) or C{"nats"} (NATS
        subject C{channel}; both ports are the NATS server's).
    @ivar pids: the server's processes, whose CPU time is measured.
    @ivar roles: if given, a name for each of C{pids}, whose CPU is then
        also reported on its own (e.g. two nodes and their Redis).
    @ivar websocket: a WebSocket port subscribed to the same backplane as
        C{subscribe} (0: none).
    @ivar token: on a line port with C{auth = true}, the token every
        client sends in its C{AUTH} line first (C{b""}: none).
    """

    name: str
    protocol: str
    publish: int
    subscribe: int
    pids: tuple[int, ...]
    channel: bytes = b"bench"
    roles: tuple[str, ...] = ()
    websocket: int = 0
    token: bytes = b""

    def framing(self, size: int) -> Framing:
        """
        How this target's protocol frames a payload of C{size} bytes.
        """
        if self.protocol == "lines":
            return LINES
        if self.protocol == "nats":
            return nats_framing(self.channel, size)
        return resp_framing(self.channel, size)

    def subscribers(self, count: int, name: str = "") -> Subscribers:
        """
        C{count} subscribers of this target's subscribe port.
        """
        return Subscribers(name, self.subscribe, self.protocol, count, self.channel,
                           self.token)


@dataclass(frozen=True)
class Subscribers:
    """
    A group of subscribers of one run: C{count} of them on C{port}, speaking
    C{protocol}: C{"lines"}, C{"resp"} (subscribed to Redis channel
    C{channel}), C{"nats"} (subscribed to NATS subject C{channel}) or
    C{"websocket"} (a backplane WebSocket port).

    @ivar name: labels the group's figures in a run's row (C{A_lost},
        C{ws_msgs_per_s}, ...); the one group of a plain run has none.
    @ivar token: on a line port, the token of an C{AUTH} line each
        subscriber sends first (C{b""}: none).
    """

    name: str
    port: int
    protocol: str
    count: int
    channel: bytes = b"bench"
    token: bytes = b""

    def counter(self, size: int, latencies: array[int],
                spans: array[int] | None = None) -> Any:
        """
        A counter for one subscriber of this group (see L{bench.wire}); on
        a line, RESP or NATS stream, with C{spans} if given.
        """
        if self.protocol == "lines":
            return LineCounter(size, latencies, spans)
        if self.protocol == "websocket":
            return WebSocketCounter(size, latencies)
        if self.protocol == "nats":
            return NatsCounter(nats_framing(self.channel, size), size, latencies, spans)
        return FrameCounter(resp_framing(self.channel, size), size, latencies, spans)


def assign(groups: Sequence[Subscribers], workers: int) -> list[list[tuple[int, int]]]:
    """
    Spread the subscribers of C{groups} over at most C{workers} processes,
    each group evenly over as many of them as it has subscribers for.

    @return: for each process, (index of a group, how many of it) pairs.
    """
    parts: list[list[tuple[int, int]]] = [[] for _ in range(workers)]
    for index, group in enumerate(groups):
        for worker, count in enumerate(shares(group.count, workers)):
            parts[worker].append((index, count))
    return [part for part in parts if part]


@dataclass(frozen=True)
class Placement:
    """
    The CPUs of the servers and of the load generator: the first CPU for
    the servers, the others for the generator, where there are two or more
    (and C{taskset}); otherwise nothing is pinned.
    """

    server: tuple[int, ...]
    generator: tuple[int, ...]

    @classmethod
    def choose(cls) -> Placement:
        """
        The placement for this machine.
        """
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            return cls((), ())
        return cls(cpus[:1], cpus[1:])

    @property
    def pinned(self) -> bool:
        """
        Whether the servers and the generator have CPUs of their own.
        """
        return bool(self.server)

    def pin_generator(self) -> None:
        """
        Pin this process (and the processes it will fork) to the
        generator's CPUs.
        """
        if self.generator:
            os.sched_setaffinity(0, self.generator)


@dataclass(frozen=True)
class Companion:
    """
    A process that runs beside the subscribers and the publisher of a
    fan-out run, on the generator's CPUs: e.g. a client that replays a
    history while the subscribers receive live messages.

    C{main} is a L{child} function, called as C{main(*args, load, shared,
    conn=...)}: it should wait for C{shared.go}, do its work, send
    C{("result", dict)} on C{conn} and then L{Shared.await_stop}.  The
    subscribers are all done once C{min(shared.progress) >= load.messages}.
    Its figures are in the run's row as C{NAME_figure}, and its C{status}
    (C{"ok"} or what went wrong) joins the run's too.
    """

    name: str
    main: Callable[..., None]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Load:
    """
    What one fan-out run does.

    @ivar subscribers: subscribers that read (S).
    @ivar messages: messages the one publisher sends (M).
    @ivar size: payload bytes (B), the line terminator not counted.
    @ivar rate: messages a second; 0 is full speed.
    @ivar window: the most messages the publisher may be ahead of the
        slowest subscriber.
    @ivar redis_window: the most un-acknowledged C{PUBLISH} commands.
    @ivar batch: the most messages in one write.
    @ivar workers: subscriber processes.
    @ivar stalled: extra subscribers that never read (they connect with a
        small receive buffer first, and are not counted).
    @ivar stall_timeout: a run without progress for this long ends as
        C{stalled}.
    @ivar spans: also estimate every message's latency, not only the last
        of each chunk's (line subscribers; see L{LineCounter}): C{msg_lat_*}
        in the row.
    """

    subscribers: int
    messages: int
    size: int = DEFAULT_SIZE
    rate: float = 0.0
    window: int = 10_000
    redis_window: int = 1_000
    batch: int = 256
    workers: int = 2
    stalled: int = 0
    stall_timeout: float = 10.0
    setup_timeout: float = 120.0
    spans: bool = False


class Shared:
    """
    What the coordinator and the generator's processes share.

    @ivar progress: for each subscriber process, the count of its slowest
        subscriber (or a huge number once it has none left).
    @ivar ready: for each subscriber process, its attached subscribers.
    @ivar stop: set by the coordinator: finish now.
    @ivar go: set by the coordinator when measuring starts.
    """

    def __init__(self, workers: int) -> None:
        self.progress = CONTEXT.RawArray("q", workers)
        self.ready = CONTEXT.RawArray("q", workers)
        self.stop = CONTEXT.RawValue("b", 0)
        self.go = CONTEXT.Event()

    def await_stop(self) -> None:
        """
        Wait until the coordinator says stop, so that the caller's CPU time
        is still readable when the coordinator takes its last snapshot.
        """
        while not self.stop.value:
            time.sleep(0.01)


def shares(total: int, parts: int) -> list[int]:
    """
    C{total} split into C{parts} near-equal counts, none of them 0 (so
    fewer parts when C{total < parts}).
    """
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def data_segments_in(sock: socket.socket) -> int | None:
    """
    How many TCP segments with data C{sock} has received (C{TCP_INFO}'s
    C{tcpi_data_segs_in}): on loopback, one for each C{send} of the server
    to it, so a subscriber's messages over it are the messages the server
    wrote a C{send}.  L{None} where the kernel does not say.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LENGTH)
    except (OSError, AttributeError):
        return None
    if len(info) < DATA_SEGS_IN_OFFSET + 4:
        return None
    segments: int = struct.unpack_from("I", info, DATA_SEGS_IN_OFFSET)[0]
    return segments


def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    """
    A blocking TCP connection to 127.0.0.1:C{port}, without Nagle's delay.

    @param receive_buffer: C{SO_RCVBUF}, set before connecting so that the
        window is small from the start.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def await_subscribed(sock: socket.socket, channel: bytes, timeout: float) -> None:
    """
    Read a Redis client's answer to C{SUBSCRIBE channel}.

    @raise RespError: Redis answered something else (e.g. an error).
    @raise TimeoutError: it did not answer in C{timeout} seconds.
    """
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise RespError("Redis closed the connection")
        data += chunk
        values, used = parse_resp(data)
        if values:
            if values != [[b"subscribe", channel, 1]] or used != len(data):
                raise RespError(f"unexpected answer to SUBSCRIBE: {values!r}")
            return


def await_upgraded(sock: socket.socket, key: bytes, timeout: float) -> None:
    """
    Read the server's answer to a WebSocket opening handshake sent with
    C{key}, and nothing more: what follows it (the first frames) stays in
    the socket for the subscriber's counter.

    @raise WebSocketError: the server refused or closed.
    @raise TimeoutError: it did not answer in C{timeout} seconds.
    """
    answer = read_answer(sock, timeout, MAX_UPGRADE_RESPONSE, upgrade_response_end,
                         WebSocketError, "the handshake's answer")
    check_upgrade(answer, key)


def await_nats_subscribed(sock: socket.socket, timeout: float) -> None:
    """
    Read a NATS server's answer to a subscriber's first commands (L{nats_subscribe}):
    its C{INFO} line and the C{PONG}, and nothing more: the messages that
    follow stay in the socket for the subscriber's counter.

    @raise NatsError: the server refused or closed.
    @raise TimeoutError: it did not answer in C{timeout} seconds.
    """
    read_answer(sock, timeout, MAX_NATS_GREETING, nats_greeting_end, NatsError,
                "the NATS server's PONG")


def read_answer(sock: socket.socket, timeout: float, limit: int,
                end_of: Callable[[bytes], int], error: type[Exception], what: str) -> bytes:
    """
    Read a server's answer up to its end (C{end_of(data)}: the offset just
    past it, or -1 while it has not come), and nothing after it: it is
    peeked at until whole (C{MSG_PEEK}), then read.

    @raise error: the server closed, or sent C{limit} bytes with no end
        (C{end_of} may raise it too, for an answer that refuses).
    @raise TimeoutError: it did not end in C{timeout} seconds.
    """
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        data = sock.recv(limit, socket.MSG_PEEK)
        if not data:
            raise error(f"the server closed the connection before {what} ended")
        end = end_of(data)
        if end >= 0:
            return sock.recv(end)
        if len(data) >= limit:
            raise error(f"no end to {what}: {data[:200]!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not end")
        time.sleep(0.001)  # a peek returns at once while anything is there


def auth_line(token: bytes) -> bytes:
    """
    The first line of a client of a line port with C{auth = true}.
    """
    return b"AUTH " + token + b"\n"


def connect_subscribers(group: Subscribers, timeout: float,
                        receive_buffer: int | None = None) -> list[socket.socket]:
    """
    Connect the subscribers of C{group}: on Redis, subscribed to its channel
    and each confirmed; on a WebSocket port, each through its opening
    handshake; on NATS, subscribed to its subject and each confirmed.  With
    C{receive_buffer} as their C{SO_RCVBUF} if given.

    @raise OSError: a connection failed.
    @raise RespError: Redis refused a subscription.
    @raise NatsError: NATS refused a subscription.
    @raise WebSocketError: the server refused a handshake.
    """
    socks: list[socket.socket] = []
    keys: list[bytes] = []
    try:
        for _ in range(group.count):
            socks.append(connect(group.port, receive_buffer))
            if group.token:
                socks[-1].sendall(auth_line(group.token))
            if group.protocol == "resp":
                socks[-1].sendall(subscribe_command(group.channel))
            elif group.protocol == "nats":
                socks[-1].sendall(nats_subscribe(group.channel))
            elif group.protocol == "websocket":
                keys.append(websocket_key(secrets.token_bytes(16)))
                socks[-1].sendall(upgrade_request(group.port, keys[-1]))
        if group.protocol == "resp":
            for sock in socks:
                await_subscribed(sock, group.channel, timeout)
        elif group.protocol == "nats":
            for sock in socks:
                await_nats_subscribed(sock, timeout)
        elif group.protocol == "websocket":
            for sock, key in zip(socks, keys, strict=True):
                await_upgraded(sock, key, timeout)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def child(main: Callable[..., None]) -> Callable[..., None]:
    """
    Wrap the main function of a generator process: pin it, leave Ctrl-C to
    the coordinator, die with it, and report an unexpected exception as an
    C{error} message on the process's pipe (its argument C{conn}).
    """

    @functools.wraps(main)
    def run(*args: Any, placement: Placement, conn: Connection, **kwargs: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent()
        placement.pin_generator()
        try:
            main(*args, conn=conn, **kwargs)
        except Exception:
            conn.send(("error", traceback.format_exc(limit=5)))

    return run


@child
def subscriber_process(index: int, part: Sequence[tuple[int, int]],
                       groups: Sequence[Subscribers], load: Load, shared: Shared,
                       conn: Connection) -> None:
    """
    A subscriber process: connect its C{part} of the subscribers of
    C{groups} (pairs of a group's index and a count), attach them, count
    what they receive until each has every message, and report.

    Messages on C{conn}: C{("done", last_receive_ns)} as soon as it is
    complete (or stalled, or told to stop), then C{("result", dict)}, whose
    lists have one item for each group: C{received} (a count for each of
    its subscribers here), C{latencies} (an C{array("q")} as bytes),
    C{last_receive}, C{reads}, C{disconnects}, C{bad}, C{sequence_errors};
    and C{spans}, every group's together (bytes, empty unless
    C{load.spans}).
    """
    latencies = {g: array("q") for g, _ in part}
    spans = {g: array("q") for g, _ in part} if load.spans else {}
    mine: list[tuple[int, socket.socket, Any]] = []
    try:
        for g, count in part:
            for sock in connect_subscribers(replace(groups[g], count=count),
                                            load.setup_timeout):
                mine.append((g, sock, groups[g].counter(load.size, latencies[g],
                                                        spans.get(g))))
    except SETUP_ERRORS as e:
        conn.send(("error", f"cannot connect its subscribers: {type(e).__name__}: {e}"))
        return
    counters = [counter for _, _, counter in mine]
    shared.ready[index] = sum(c.attached for c in counters)
    poller = select.epoll()
    streams: dict[int, tuple[Callable[..., int], Any, int]] = {}
    for g, sock, counter in mine:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        streams[sock.fileno()] = (sock.recv_into, counter, g)
    buffer = bytearray(RECV_SIZE)
    live = list(counters)
    reads = [0] * len(groups)
    disconnects = [0] * len(groups)
    last = [0] * len(groups)
    status = "ok"
    last_receive = 0
    refresh = 0
    expected = load.messages
    clock = time.monotonic_ns
    stall_ns = int(load.stall_timeout * 1e9)
    going = False
    while not shared.stop.value:
        for fd, _ in poller.poll(0.05):
            recv_into, counter, g = streams[fd]
            try:
                n = recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n:
                reads[g] += 1
                last_receive = last[g] = clock()
                counter.feed(buffer, n, last_receive)
            else:
                poller.unregister(fd)
                del streams[fd]
                live.remove(counter)
                disconnects[g] += 1
        now = clock()
        if now < refresh:
            continue
        refresh = now + int(REFRESH * 1e9)
        if not going:
            shared.ready[index] = sum(c.attached for c in counters)
            if shared.go.is_set():
                going, last_receive = True, now
            continue
        slowest = min((c.received for c in live), default=1 << 62)
        shared.progress[index] = slowest
        if slowest >= expected:
            break
        if now - last_receive > stall_ns:
            status = "stalled"
            break
    conn.send(("done", last_receive))
    of = [[counter for g_, _, counter in mine if g_ == g] for g in range(len(groups))]
    segments: list[int | None] = [0] * len(groups)
    for g, sock, _ in mine:
        count, total = data_segments_in(sock), segments[g]
        segments[g] = None if count is None or total is None else total + count
    conn.send(("result", {
        "status": status if not shared.stop.value else "stopped",
        "received": [[c.received for c in cs] for cs in of],
        "bad": [sum(c.bad for c in cs) for cs in of],
        "sequence_errors": [sum(c.sequence_errors for c in cs) for cs in of],
        "disconnects": disconnects,
        "reads": reads,
        "segments": segments,
        "last_receive": last,
        "latencies": [latencies[g].tobytes() if g in latencies else b""
                      for g in range(len(groups))],
        "spans": b"".join(spans[g].tobytes() for g in spans),
    }))
    shared.await_stop()


def realtime() -> bool:
    """
    Give this process the real-time policy C{SCHED_FIFO} (priority
    L{PACING_PRIORITY}), so that it wakes when a message is due rather than
    when the scheduler next gets to it among the subscriber processes that
    share its CPU; return whether it could (it needs C{CAP_SYS_NICE}, or
    root).

    A fixed-rate publisher that shares a busy CPU with normal processes
    wakes late and writes what became due meanwhile in one burst, so the
    servers read several messages at a time: not the message-at-a-time
    regime a fixed rate is meant to measure (see docs/performance.md).  It
    sleeps between writes, so it takes little of the CPU; Linux keeps 5% of
    every second for normal processes whatever a real-time one does.  Only
    up to L{PACING_MAX_RATE}.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PACING_PRIORITY))
    except (OSError, AttributeError):
        return False
    return True


@child
def publisher_process(target: Target, load: Load, shared: Shared, subscribers: int,
                      conn: Connection) -> None:
    """
    The publisher process: wait until C{subscribers} subscribers are
    attached (sending probe lines on a line protocol), say C{("ready",)},
    then publish when C{shared.go} is set and report C{("result", dict)}.
    """
    sock = connect(target.publish)
    if target.token:
        sock.sendall(auth_line(target.token))
    if target.protocol == "nats":
        # Never read: the server's INFO (and any PING) waits in the socket.
        sock.sendall(NATS_CONNECT + NATS_PING)
    deadline = time.monotonic() + load.setup_timeout
    while sum(shared.ready) < subscribers:
        if shared.stop.value:
            return
        if time.monotonic() > deadline:
            conn.send(("error", f"setup timeout: {sum(shared.ready)} of {subscribers} "
                                "subscribers attached"))
            return
        if target.protocol == "lines":
            sock.sendall(probe(0))
        time.sleep(PROBE_INTERVAL)
    conn.send(("ready",))
    paced = 0 < load.rate <= PACING_MAX_RATE and realtime()
    shared.go.wait()
    result = Publisher(sock, target, load, shared).run()
    if load.rate:
        result["publisher_fifo"] = paced
    conn.send(("result", result))
    shared.await_stop()


class Publisher:
    """
    Publishes C{load.messages} messages on one connection, at full speed or
    at C{load.rate}, never more than C{load.window} ahead of the slowest
    subscriber, nor (on Redis) more than C{load.redis_window} un-acked.
    """

    def __init__(self, sock: socket.socket, target: Target, load: Load,
                 shared: Shared) -> None:
        self.sock = sock
        self.load = load
        self.shared = shared
        self.maker = BatchMaker(target.framing(load.size), 0, load.size)
        self.replies = target.protocol == "resp"
        # Every PUBLISH should reach every subscriber, stalled ones included.
        self.receivers = load.subscribers + load.stalled
        self.buffer = bytearray(RECV_SIZE)
        self.acked = 0
        self.reply_errors = 0
        self.reply_mismatches = 0

    def run(self) -> dict[str, object]:
        """
        Publish everything (and, on Redis, read every reply).
        """
        load, sock, progress, stop = self.load, self.sock, self.shared.progress, self.shared.stop
        sock.setblocking(False)
        interval = 1e9 / load.rate if load.rate else 0.0
        stall_ns = int(load.stall_timeout * 1e9)
        clock = time.monotonic_ns
        start = last_move = clock()
        sent = waits = lags = lag_max = lag_sum = 0
        floor = 0
        pending = memoryview(b"")
        status = "ok"
        while not stop.value:
            if self.replies and self.read_replies():
                last_move = clock()
            if pending:
                written = self.send(pending)
                pending = pending[written:]
                if written:
                    last_move = clock()
                if pending:
                    if clock() - last_move > stall_ns:
                        status = "stalled"
                        break
                    self.wait(writable=True)
                    continue
            now = clock()
            if sent >= load.messages:
                if not self.replies or self.acked >= sent:
                    break
                if now - last_move > stall_ns:
                    status = "stalled"
                    break
                self.wait(writable=False)
                continue
            slowest = min(progress)
            if slowest != floor:
                floor, last_move = slowest, now
            room = min(load.batch, load.messages - sent, load.window - (sent - floor))
            if self.replies:
                room = min(room, load.redis_window - (sent - self.acked))
            if interval:
                due = min(load.messages, int((now - start) / interval) + 1)
                if due <= sent:
                    time.sleep(max(0.0, (start + sent * interval - now) / 1e9))
                    continue
                room = min(room, due - sent)
            # At full speed, wait for room for a whole batch rather than
            # write a few messages each time the slowest subscriber takes a few.
            if room < (1 if interval else min(load.batch, load.messages - sent)):
                waits += 1
                if now - last_move > stall_ns:
                    status = "stalled"
                    break
                if self.replies and load.redis_window - (sent - self.acked) < load.batch:
                    self.wait(writable=False)
                else:
                    time.sleep(WINDOW_WAIT)
                continue
            if interval:
                # Each message carries the time it was due, not the time it
                # is written: a publisher held back (by its window or its
                # own wake-ups) shows as latency, not as a gap.
                n = room
                data = self.maker.make_paced(sent, n, start, interval)
                lag = now - int(start + sent * interval)
                lags += 1
                lag_sum += lag
                lag_max = max(lag_max, lag)
            else:
                data, n = self.maker.make(sent, room, now)
            sent += n
            last_move = now
            pending = memoryview(data)[self.send(data):]
        end = clock()
        result: dict[str, object] = {
            "status": status if not stop.value else "stopped",
            "start_ns": start,
            "end_ns": end,
            "published": sent,
            "window_waits": waits,
        }
        if interval:
            result["sched_lag_max_us"] = round(lag_max / 1000, 1)
            result["sched_lag_mean_us"] = round(lag_sum / max(1, lags) / 1000, 1)
            result["msgs_per_write"] = round(sent / max(1, lags), 2)
        if self.replies:
            result["reply_errors"] = self.reply_errors
            result["reply_mismatches"] = self.reply_mismatches
        return result

    def send(self, data: bytes | memoryview) -> int:
        """
        Write what the socket takes now; how much it took.
        """
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def wait(self, writable: bool) -> None:
        """
        Wait (a millisecond at most) until the socket is writable (or
        C{writable} is false) or has a reply to read.
        """
        readable = [self.sock] if self.replies else []
        select.select(readable, [self.sock] if writable else [], [], 0.001)

    def read_replies(self) -> bool:
        """
        Count the replies to C{PUBLISH} that have arrived: one C{:n} a
        command, n being the subscribers reached, checked on the last of
        each chunk.

        @return: whether any arrived.
        """
        buffer = self.buffer
        acked = self.acked
        while True:
            try:
                n = self.sock.recv_into(buffer)
            except BlockingIOError:
                return self.acked != acked
            if not n:
                raise ConnectionError("Redis closed the publisher's connection")
            self.acked += buffer.count(b"\n", 0, n)
            errors = buffer.count(b"-", 0, n)
            self.reply_errors += errors
            end = buffer.rfind(b"\r\n", 0, n)
            start = buffer.rfind(b":", 0, end) if end > 0 else -1
            if not errors and start >= 0 and int(buffer[start + 1:end]) != self.receivers:
                self.reply_mismatches += 1


class Mailbox:
    """
    The coordinator's end of the generator processes' pipes.
    """

    def __init__(self) -> None:
        self.conns: dict[Connection, str] = {}

    def pipe(self, name: str) -> Connection:
        """
        A new pipe from a process called C{name}; its child end.
        """
        mine, theirs = CONTEXT.Pipe(duplex=False)
        self.conns[mine] = name
        return theirs

    def receive(self, timeout: float) -> list[tuple[str, tuple[Any, ...]]]:
        """
        The messages that arrive within C{timeout} seconds, as C{(name,
        message)}.

        @raise GeneratorError: a process said C{("error", text)}, or exited.
        """
        messages = []
        for conn in wait(list(self.conns), timeout):
            name = self.conns[conn]
            try:
                message = conn.recv()
            except EOFError:
                del self.conns[conn]
                message = ("error", "exited")
            if message[0] == "error":
                raise GeneratorError(f"{name}: {message[1]}")
            messages.append((name, message))
        return messages

    def results(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """
        Wait for C{count} C{("result", dict)} messages (other messages are
        dropped) and return their dicts.

        @raise GeneratorError: they did not all come within C{timeout}
            seconds of each other.
        """
        results: list[dict[str, Any]] = []
        while len(results) < count:
            messages = self.receive(timeout)
            if not messages:
                raise GeneratorError(f"only {len(results)} of {count} results came")
            results += [m[1] for _, m in messages if m[0] == "result"]
        return results


class GeneratorError(Exception):
    """
    The load generator failed: a process reported an error or exited, or
    setup timed out.
    """


def run_processes(processes: Sequence[multiprocessing.process.BaseProcess],
                  shared: Shared, body: Callable[[], dict[str, object]]) -> dict[str, object]:
    """
    Start C{processes}, run C{body}, and whatever happens stop them all:
    set C{shared.stop}, give them time to finish (a little if C{body}
    failed), then terminate what is left.
    """
    for process in processes:
        process.start()
    try:
        result = body()
    except BaseException:
        _stop(processes, shared, grace=0.5)
        raise
    _stop(processes, shared, grace=10.0)
    return result


def _stop(processes: Sequence[multiprocessing.process.BaseProcess], shared: Shared,
          grace: float) -> None:
    shared.stop.value = 1
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join()


def run_fanout(target: Target, load: Load, placement: Placement,
               groups: Sequence[Subscribers] = (), timeout: float = 900.0,
               companions: Sequence[Companion] = ()) -> dict[str, object]:
    """
    One measured fan-out run: S subscribers, one publisher (on
    C{target.publish}), M messages.

    The window starts when every subscriber is attached (plus a short
    settle) and ends at the last delivery; server and generator CPU are
    read from /proc at both ends.

    @param groups: the subscribers, if not all C{load.subscribers} on
        C{target.subscribe}; their counts must add up to C{load.subscribers}.
        Each named group's figures are in the row too.
    @param companions: more processes that run beside them (see
        L{Companion}); the run waits for their results too.
    @raise GeneratorError: the generator could not set up or run.
    """
    groups = tuple(groups) or (target.subscribers(load.subscribers),)
    if sum(g.count for g in groups) != load.subscribers:
        raise ValueError(f"the groups have {sum(g.count for g in groups)} subscribers, "
                         f"not {load.subscribers}")
    parts = assign(groups, load.workers)
    shared = Shared(len(parts))
    mailbox = Mailbox()
    stalled = connect_subscribers(target.subscribers(load.stalled), load.setup_timeout,
                                  receive_buffer=STALLED_RECEIVE_BUFFER)
    try:
        processes = [
            CONTEXT.Process(target=subscriber_process, name=f"subscribers-{i}", daemon=True,
                            args=(i, part, groups, load, shared),
                            kwargs={"placement": placement, "conn": mailbox.pipe(f"sub{i}")})
            for i, part in enumerate(parts)
        ]
        processes.append(CONTEXT.Process(
            target=publisher_process, name="publisher", daemon=True,
            args=(target, load, shared, load.subscribers),
            kwargs={"placement": placement, "conn": mailbox.pipe("pub")},
        ))
        processes += [
            CONTEXT.Process(target=companion.main, name=companion.name, daemon=True,
                            args=(*companion.args, load, shared),
                            kwargs={"placement": placement, "conn": mailbox.pipe(companion.name)})
            for companion in companions
        ]

        def body() -> dict[str, object]:
            return _coordinate(target, load, groups, shared, mailbox, processes, timeout,
                               stalled, [c.name for c in companions])

        return run_processes(processes, shared, body)
    finally:
        for sock in stalled:
            sock.close()


def _coordinate(target: Target, load: Load, groups: Sequence[Subscribers], shared: Shared,
                mailbox: Mailbox, processes: Sequence[multiprocessing.process.BaseProcess],
                timeout: float, stalled: Sequence[socket.socket],
                companions: Sequence[str] = ()) -> dict[str, object]:
    generator = [p.pid for p in processes if p.pid is not None]
    deadline = time.monotonic() + load.setup_timeout + 30
    while not any(m == ("ready",) for _, m in mailbox.receive(1.0)):
        if time.monotonic() > deadline:
            raise GeneratorError("setup timed out")
    time.sleep(SETTLE)
    rss_before = rss_kib(target.pids[0])
    before = Snapshot.take(target.pids, generator)
    shared.go.set()
    done: dict[str, int] = {}
    results: dict[str, dict[str, Any]] = {}
    after = None
    deadline = time.monotonic() + timeout
    workers = len(processes) - 1 - len(companions)
    while len(results) < len(processes):
        if time.monotonic() > deadline:
            shared.stop.value = 1
            deadline += 30
        for name, message in mailbox.receive(1.0):
            if message[0] == "done":
                done[name] = message[1]
            elif message[0] == "result":
                results[name] = message[1]
        if after is None and len(done) == workers and "pub" in results:
            after = Snapshot.take(target.pids, generator)
    assert after is not None
    usage = before.usage(after, target.roles)
    rss = rss_kib(target.pids[0])
    usage.update(server_rss_kib=rss, server_rss_growth_kib=rss - rss_before)
    disconnected = sum(_disconnected(sock) for sock in stalled)
    beside = {name: results.pop(name) for name in companions}
    row = _fanout_result(target, load, groups, results, max(done.values()), usage,
                         disconnected)
    for name, result in beside.items():
        status = result.get("status", "ok")
        row.update({f"{name}_{k}": v for k, v in result.items()})
        if status != "ok":
            row["status"] = ", ".join(s for s in (str(row["status"]), f"{name} {status}")
                                      if s != "ok")
    return row


def _disconnected(sock: socket.socket) -> bool:
    """
    Whether the server has closed a subscriber that never read (what it
    sent is read and thrown away).
    """
    sock.setblocking(False)
    try:
        while sock.recv(RECV_SIZE):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _fanout_result(target: Target, load: Load, groups: Sequence[Subscribers],
                   results: dict[str, dict[str, Any]], last_receive: int,
                   usage: dict[str, float], stalled_disconnected: int) -> dict[str, object]:
    publisher = results.pop("pub")
    published = publisher["published"]
    start = publisher["start_ns"]
    per_group = [_group_figures(g, [r for result in results.values()
                                    for r in result["received"][g]],
                                published, start, results.values())
                 for g in range(len(groups))]
    received = [r for result in results.values() for rs in result["received"] for r in rs]
    latencies: array[int] = array("q")
    for result in results.values():
        for samples in result["latencies"]:
            latencies.frombytes(samples)
    delivered = sum(received)
    elapsed = max(1e-9, (last_receive - start) / 1e9)
    row: dict[str, object] = {
        "server": target.name,
        "S": load.subscribers,
        "P": 1,
        "B": load.size,
        "M": load.messages,
        "rate": load.rate,
        "window": load.window,
        "elapsed_s": round(elapsed, 4),
        "published": published,
        "pub_msgs_per_s": round(published / elapsed),
        "expected": published * load.subscribers,
        "delivered": delivered,
        "delivered_msgs_per_s": round(delivered / elapsed),
        "lost": sum(max(0, published - r) for r in received),
        "excess": sum(max(0, r - published) for r in received),
        "bad": sum(sum(r["bad"]) for r in results.values()),
        "sequence_errors": sum(sum(r["sequence_errors"]) for r in results.values()),
        "disconnects": sum(sum(r["disconnects"]) for r in results.values()),
        "reads": sum(sum(r["reads"]) for r in results.values()),
    }
    counts = [c for r in results.values() for c in r.get("segments", [None])]
    if counts and None not in counts:
        # What the server's sends carried: messages a segment (a send, on
        # loopback), over all its subscribers.
        segments = sum(c or 0 for c in counts)
        row["segments"] = segments
        row["msgs_per_segment"] = round(delivered / max(1, segments), 2)
    row.update(latency_summary(latencies))
    if load.spans:
        spans: array[int] = array("q")
        for result in results.values():
            spans.frombytes(result["spans"])
        row.update(message_latency_summary(spans))
    for group, figures in zip(groups, per_group, strict=True):
        if group.name:
            row.update({f"{group.name}_{k}": v for k, v in figures.items()})
    row.update(usage)
    row.update(cpu_figures(usage, delivered))
    # Each named server process's CPU: per delivery to the group of the same
    # name (a node's own subscribers), or to all subscribers.
    own = {g.name: f["delivered"] for g, f in zip(groups, per_group, strict=True) if g.name}
    for role in target.roles:
        cpu = usage[f"{role}_cpu_s"]
        row[f"{role}_cpu_pct"] = round(100 * cpu / usage["window_s"], 1)
        row[f"{role}_cpu_us_per_delivery"] = round(
            cpu * 1e6 / max(1, own.get(role, delivered)), 4)
    row.update({k: v for k, v in publisher.items()
                if k not in ("status", "start_ns", "end_ns", "published")})
    if load.stalled:
        row["stalled"] = load.stalled
        row["stalled_disconnected"] = stalled_disconnected
    statuses = [publisher["status"], *(r["status"] for r in results.values())]
    row["status"] = run_status(statuses, row)
    return row


def _group_figures(g: int, received: Sequence[int], published: int, start: int,
                   results: Iterable[dict[str, Any]]) -> dict[str, object]:
    """
    The figures of group C{g} of a run, from the subscriber processes'
    C{results}: its subscribers' C{received} counts, its delivered msgs/s
    (from the first publish to the group's last delivery), loss and
    latency.
    """
    results = list(results)
    latencies: array[int] = array("q")
    for result in results:
        latencies.frombytes(result["latencies"][g])
    last = max(r["last_receive"][g] for r in results)
    delivered = sum(received)
    elapsed = max(1e-9, (last - start) / 1e9)
    figures: dict[str, object] = {
        "S": len(received),
        "elapsed_s": round(elapsed, 4),
        "delivered": delivered,
        "msgs_per_s": round(delivered / elapsed),
        "lost": sum(max(0, published - r) for r in received),
        "bad": sum(r["bad"][g] for r in results),
        "sequence_errors": sum(r["sequence_errors"][g] for r in results),
        "disconnects": sum(r["disconnects"][g] for r in results),
        "reads": sum(r["reads"][g] for r in results),
    }
    figures.update(latency_summary(latencies))
    return figures


def cpu_figures(usage: dict[str, float], deliveries: int) -> dict[str, float]:
    """
    The server's and the generator's CPU in percent of one CPU over the
    window, and the server's CPU µs a delivery.
    """
    window = usage["window_s"]
    return {
        "server_cpu_pct": round(100 * usage["server_cpu_s"] / window, 1),
        "server_cpu_us_per_delivery": round(usage["server_cpu_s"] * 1e6 / max(1, deliveries), 4),
        "gen_cpu_pct": round(100 * usage["gen_cpu_s"] / window, 1),
    }


def run_status(statuses: Sequence[str], row: dict[str, object]) -> str:
    """
    C{"ok"}, or what went wrong: a process's status (C{stalled},
    C{stopped}) or a count that should be 0 and is not.
    """
    problems = dict.fromkeys(s for s in statuses if s != "ok")
    for field in ("lost", "excess", "bad", "sequence_errors", "disconnects", "reply_errors"):
        if row.get(field):
            problems[f"{field}={row[field]}"] = None
    return ", ".join(problems) or "ok"
