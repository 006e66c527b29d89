"""
History and resume end to end (SPEC section 9): real C{twistd} processes,
real sockets, subscribers that go away and come back, servers that are
stopped with SIGTERM or killed with C{kill -9} and started again.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.helpers import freePort
from tests.twistd import Twistd, readLines, wsConnect, wsReceive

ID = re.compile(rb"^([0-9a-z]{1,32}):([1-9][0-9]*) (.*)$")


def parse(line: bytes) -> tuple[bytes, int, bytes]:
    """
    An C{ids = true} line: its epoch, SEQ and payload.
    """
    match = ID.match(line)
    assert match is not None, f"not an id line: {line!r}"
    return match.group(1), int(match.group(2)), match.group(3)


def config(pub: int, sub: int, history: str, sse: int, ws: int, origins: str = "") -> str:
    return f"""
[backplane.LOG]
{history}

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "LOG"

[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "LOG"
ids = true

[[listen]]
endpoint = "tcp:{sse}:interface=127.0.0.1"
subscribe_to = "LOG"
protocol = "sse"
{origins}

[[listen]]
endpoint = "tcp:{ws}:interface=127.0.0.1"
subscribe_to = "LOG"
protocol = "websocket"
ids = true
"""


class Server:
    """
    One backplane server with a publishing port and an C{ids = true} port.
    """

    def __init__(self, folder: Path, history: str, name: str = "backplane", *,
                 sseOrigins: list[str] | None = None) -> None:
        """
        @param sseOrigins: the C{origins} of the SSE port (pages of other
            origins than its own that may read it).
        """
        self.pub, self.sub, self.sse, self.ws = freePort(), freePort(), freePort(), freePort()
        self.folder = folder
        self.history = history
        self.name = name
        self.origins = "" if sseOrigins is None else f"origins = {sseOrigins!r}"
        self.twistd: Twistd | None = None

    def start(self) -> Server:
        self.twistd = Twistd(
            self.folder, config=config(self.pub, self.sub, self.history, self.sse, self.ws,
                                       self.origins),
            name=self.name).start()
        self.twistd.waitForPort(self.pub)
        self.twistd.waitForPort(self.sub)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.twistd is not None
        if sig == signal.SIGKILL:
            self.twistd.kill()
        else:
            self.twistd.stop(sig)
        self.twistd = None

    def publish(self, lines: list[bytes]) -> None:
        with socket.create_connection(("127.0.0.1", self.pub)) as sock:
            sock.sendall(b"".join(line + b"\n" for line in lines))
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            assert sock.recv(1) == b""  # the server has read it all and closed

    def subscribe(self, resume: bytes | None = None) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.sub))
        if resume is not None:
            sock.sendall(b"RESUME " + resume + b"\n")
        return sock


def published(server: Server, count: int, timeout: float = 10) -> list[bytes]:
    """
    Everything the server's history keeps, as C{RESUME 0} gives it, once
    it holds C{count} messages.
    """
    deadline = time.monotonic() + timeout
    while True:
        with server.subscribe(b"0") as sock:
            lines = readLines(sock, count)
        if len(lines) == count or time.monotonic() > deadline:
            return lines


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def test_resumeAfterDisconnect(folder):
    """
    A subscriber that goes away and comes back with the id of the last
    message it got gets every message published meanwhile, once, in order,
    and nothing else before them.
    """
    server = Server(folder, "history = 1000").start()
    try:
        sock = server.subscribe()
        time.sleep(0.2)  # subscribed before the first line is published
        server.publish([b"m%d" % i for i in range(1, 61)])
        lines = readLines(sock, 60)
        sock.close()
        epochs = {parse(line)[0] for line in lines}
        assert len(epochs) == 1
        assert [parse(line)[1:] for line in lines] == [(i, b"m%d" % i) for i in range(1, 61)]
        last = lines[39].split(b" ")[0]  # it had read 40 when it went away
        server.publish([b"m%d" % i for i in range(61, 101)])
        with server.subscribe(last) as again:
            lines = readLines(again, 60)
            assert [parse(line)[1:] for line in lines] == \
                [(i, b"m%d" % i) for i in range(41, 101)]
            # Then live ones, with nothing in between.
            server.publish([b"live"])
            (line,) = readLines(again, 1)
            assert parse(line)[1:] == (101, b"live")
    finally:
        server.stop()


def test_gapWhenTooOld(folder):
    """
    An id older than the oldest message kept gets a GAP line naming what
    comes next, then the messages kept; RESUME 0 gets them with no GAP.
    """
    server = Server(folder, "history = 10").start()
    try:
        server.publish([b"m%d" % i for i in range(1, 31)])
        with server.subscribe(b"0") as sock:
            lines = readLines(sock, 10)
        epoch = parse(lines[0])[0]
        assert [parse(line)[1:] for line in lines] == [(i, b"m%d" % i) for i in range(21, 31)]
        with server.subscribe(epoch + b":5") as sock:
            lines = readLines(sock, 11)
        assert lines[0] == b"GAP " + epoch + b":5 " + epoch + b":21"
        assert [parse(line)[1] for line in lines[1:]] == list(range(21, 31))
        # From the future: a GAP, then live messages only.
        with server.subscribe(epoch + b":99") as sock:
            (gap,) = readLines(sock, 1)
            assert gap == b"GAP " + epoch + b":99 " + epoch + b":31"
            server.publish([b"next"])
            (line,) = readLines(sock, 1)
            assert parse(line)[1:] == (31, b"next")
    finally:
        server.stop()


def test_badResume(folder):
    """
    A malformed RESUME gets one ERR line and the connection is closed;
    other subscribers are not affected.
    """
    server = Server(folder, "history = 10").start()
    try:
        good = server.subscribe()
        for bad in (b"RESUME", b"RESUME x:y", b"RESUME -1", b"RESUME " + b"9" * 5000,
                    b"HELLO there"):
            with server.subscribe() as sock:
                sock.sendall(bad + b"\n")
                sock.settimeout(10)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data.startswith(b"ERR "), (bad, data)
                assert data.count(b"\n") == 1 and len(data) < 200, data
        server.publish([b"still here"])
        (line,) = readLines(good, 1)
        assert parse(line)[2] == b"still here"
        good.close()
    finally:
        server.stop()


def test_memoryHistoryNewEpochOnRestart(folder):
    """
    A memory history starts a new epoch with every start: an id of the
    last one gets a GAP.
    """
    server = Server(folder, "history = 100").start()
    server.publish([b"a", b"b"])
    with server.subscribe(b"0") as sock:
        old = readLines(sock, 2)[1].split(b" ")[0]
    server.stop()
    server.start()
    try:
        server.publish([b"c"])
        with server.subscribe(old) as sock:
            gap, line = readLines(sock, 2)
        epoch, seq, payload = parse(line)
        assert (seq, payload) == (1, b"c")
        assert epoch != old.split(b":")[0]
        assert gap == b"GAP " + old + b" " + epoch + b":1"
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_storeSurvivesRestart(folder, sig):
    """
    A store keeps its epoch and its messages through SIGTERM and kill -9:
    SEQ continues, and a subscriber resumes across the restart with
    nothing lost or repeated.
    """
    server = Server(folder, 'store = "store"').start()
    server.publish([b"m%d" % i for i in range(1, 101)])
    with server.subscribe(b"0") as sock:
        before = readLines(sock, 100)
    epoch = parse(before[0])[0]
    server.stop(sig)
    server.start()
    try:
        server.publish([b"m%d" % i for i in range(101, 151)])
        with server.subscribe(before[-1].split(b" ")[0]) as sock:
            after = readLines(sock, 50)
        assert [parse(line) for line in after] == \
            [(epoch, i, b"m%d" % i) for i in range(101, 151)]
    finally:
        server.stop()


def test_storeKilledUnderLoad(folder):
    """
    kill -9 while lines pour in: the store opens again with its epoch, and
    its ids are unique and continuous from 1.
    """
    server = Server(folder, 'store = "store"\nfsync_interval = 0.05').start()
    epoch = None
    total = 0
    for _ in range(3):
        sender = socket.create_connection(("127.0.0.1", server.pub))
        deadline = time.monotonic() + 0.5
        n = 0
        try:
            while time.monotonic() < deadline:
                sender.sendall(b"".join(b"line %d\n" % (n + i) for i in range(200)))
                n += 200
        finally:
            server.stop(signal.SIGKILL)
            sender.close()
        server.start()
        server.publish([b"marker"])
        # Everything the store has, up to the marker.
        with server.subscribe(b"0") as sock:
            got: list[tuple[bytes, int, bytes]] = []
            buffer = b""
            sock.settimeout(20)
            while not got or got[-1][2] != b"marker":
                buffer += sock.recv(65536)
                *complete, buffer = buffer.split(b"\n")
                got.extend(parse(line) for line in complete)
        epochs = {e for e, _, _ in got}
        assert len(epochs) == 1
        if epoch is not None:
            assert epochs == {epoch}
        epoch = got[0][0]
        assert [seq for _, seq, _ in got] == list(range(1, len(got) + 1))
        assert len(got) > total
        total = len(got)
    server.stop()


def readEvents(sock: socket.socket, count: int, timeout: float = 20) -> list[dict[str, str]]:
    """
    Read C{count} Server-Sent Events (after the response's headers) from a
    blocking socket: each as its fields, C{data} lines joined.
    """
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 "), head
    assert b"text/event-stream" in head.lower(), head
    events: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        while b"\n\n" not in data:
            assert time.monotonic() < deadline, f"only {len(events)} of {count} events"
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(events)} of {count} events"
            data += chunk
        block, _, data = data.partition(b"\n\n")
        event: dict[str, str] = {}
        for line in block.decode().split("\n"):
            name, _, value = line.partition(": ")
            if name and not line.startswith(":") and not line.startswith("retry"):
                event[name] = event[name] + "\n" + value if name in event else value
        if event:
            events.append(event)
    return events


def sseGet(port: int, query: str = "", lastEventId: bytes | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    header = b"Last-Event-ID: " + lastEventId + b"\r\n" if lastEventId else b""
    # HTTP/1.0, so that the stream is not chunked: easier to read here.
    sock.sendall(b"GET /" + query.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                 b"Accept: text/event-stream\r\n" + header + b"\r\n")
    return sock


def test_serverSentEvents(folder):
    """
    An SSE port: one event a message with its id; Last-Event-ID (header or
    query parameter) resumes; a gap is an event: gap.
    """
    server = Server(folder, "history = 20").start()
    try:
        with sseGet(server.sse) as live:
            time.sleep(0.2)
            server.publish([b"one", b"two\rhalf"])
            first, second = readEvents(live, 2)
        epoch = first["id"].split(":")[0]
        assert first == {"id": f"{epoch}:1", "data": "one"}
        assert second == {"id": f"{epoch}:2", "data": "two\nhalf"}
        server.publish([b"m%d" % i for i in range(3, 31)])
        with sseGet(server.sse, lastEventId=f"{epoch}:25".encode()) as again:
            events = readEvents(again, 5)
        assert [e["data"] for e in events] == ["m26", "m27", "m28", "m29", "m30"]
        with sseGet(server.sse, query=f"?last-event-id={epoch}:2") as old:
            events = readEvents(old, 21)
        assert events[0] == {"event": "gap", "data": f"{epoch}:2 {epoch}:11"}
        assert [e["id"] for e in events[1:]] == [f"{epoch}:{i}" for i in range(11, 31)]
        with sseGet(server.sse, lastEventId=b"nonsense!") as bad:
            bad.settimeout(10)
            assert bad.recv(65536).startswith(b"HTTP/1.0 400 ")
    finally:
        server.stop()


def test_curlIsAnSSEClient(folder):
    """
    C{curl -N} reads the stream as it comes.
    """
    import shutil
    import subprocess

    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (Debian: apt-get install curl)"
    server = Server(folder, "history = 20").start()
    try:
        server.publish([b"kept"])
        out = subprocess.run(
            [curl, "-sN", "--max-time", "2", "-H", "Last-Event-ID: 0",
             f"http://127.0.0.1:{server.sse}/"], capture_output=True, timeout=30)
        assert b"data: kept\n\n" in out.stdout, out
        assert re.search(rb"id: [0-9a-z]+:1\n", out.stdout), out
    finally:
        server.stop()


def test_webSocketResume(folder):
    """
    A WebSocket port with ids: each message is ID payload; ?resume=ID
    resumes; a gap is a message GAP ASKED NEXT.
    """
    server = Server(folder, "history = 10").start()
    try:
        server.publish([b"m%d" % i for i in range(1, 21)])
        with server.subscribe(b"0") as sock:
            epoch = parse(readLines(sock, 1)[0])[0].decode()
        ws = wsConnect(server.ws, f"/?resume={epoch}:15")
        messages = [wsReceive(ws)[1] for _ in range(5)]
        assert [parse(m)[1:] for m in messages] == [(i, b"m%d" % i) for i in range(16, 21)]
        ws.close()
        ws = wsConnect(server.ws, f"/?resume={epoch}:3")
        assert wsReceive(ws)[1] == f"GAP {epoch}:3 {epoch}:11".encode()
        assert parse(wsReceive(ws)[1])[1] == 11
        ws.close()
    finally:
        server.stop()


class Load:
    """
    A publisher that sends numbered lines at a steady rate to a port,
    reconnecting whenever the server goes away, on a thread of its own.
    """

    def __init__(self, port: int, rate: float = 2000) -> None:
        import threading

        self.port = port
        self.rate = rate
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def run(self) -> None:
        batch = max(1, int(self.rate / 100))
        while not self.stopping.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    while not self.stopping.is_set():
                        sock.sendall(b"".join(b"line %d\n" % (self.sent + i)
                                              for i in range(batch)))
                        self.sent += batch
                        time.sleep(0.01)
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)


def test_relayResumesThroughUpstreamRestarts(folder):
    """
    A relay with resume = true, under steady load, through 10 restarts of
    its upstream (SIGTERM and kill -9 in turn, the history on disk): its
    [[file]] holds every line upstream stored, exactly once, in order.
    """
    upstream = Server(folder / "up", 'store = "store"\nfsync_interval = 0.05')
    (folder / "up").mkdir()
    upstream.start()
    downFolder = folder / "down"
    downFolder.mkdir()
    downstream = Twistd(downFolder, name="down", config=f"""
[backplane.COPY]

[[connect]]
endpoint = "tcp:host=127.0.0.1:port={upstream.sub}"
publish_to = "COPY"
resume = true
initial_delay = 0.1
max_delay = 0.5

[[file]]
subscribe_to = "COPY"
path = "copy.log"
flush_interval = 0.05
""").start()
    downstream.waitForLog("Relay connected")
    time.sleep(0.5)  # past the port's RESUME_WAIT: the relay is live
    load = Load(upstream.pub).start()
    try:
        for i in range(10):
            time.sleep(0.6)
            upstream.stop(signal.SIGKILL if i % 2 else signal.SIGTERM)
            upstream.start()
        time.sleep(0.6)
    finally:
        load.stop()
    upstream.publish([b"the end"])
    stored: list[bytes] = []
    with upstream.subscribe(b"0") as sock:
        buffer = b""
        sock.settimeout(20)
        while not stored or stored[-1] != b"the end":
            buffer += sock.recv(65536)
            *complete, buffer = buffer.split(b"\n")
            stored.extend(parse(line)[2] for line in complete)
    copy = folder / "down" / "copy.log"
    deadline = time.monotonic() + 20
    while not (copy.exists() and copy.read_bytes().endswith(b"the end\n")):
        assert time.monotonic() < deadline, "the relay never caught up"
        time.sleep(0.1)
    downstream.stop()
    upstream.stop()
    assert downstream.text().count("Relay reconnected") >= 10, downstream.text()
    lines = copy.read_bytes().split(b"\n")[:-1]
    assert len(stored) > 1000, len(stored)
    assert len(lines) == len(set(lines)), "a line arrived twice"
    assert lines == stored
    assert "GAP" not in downstream.text()


@pytest.mark.parametrize("case", ["a file", "a newer format"])
def test_unusableStore(folder, case):
    """
    A store twistd cannot use is one line naming the file and the key, and
    the service does not start; nothing of the store is destroyed.
    """
    store = folder / "store"
    if case == "a file":
        store.write_text("not a folder")
    else:
        server = Server(folder, 'store = "store"').start()
        server.publish([b"kept"])
        server.stop()
        metadata = [p for p in store.iterdir() if p.is_file() and not p.name.endswith(".seg")
                    and "lock" not in p.name]
        assert metadata, list(store.iterdir())
        for path in metadata:
            path.write_text(re.sub(r'"format": \d+', '"format": 99', path.read_text()))
            assert '"format": 99' in path.read_text()
    before = sorted((p.name, p.stat().st_size) for p in store.rglob("*")) if store.is_dir() \
        else store.read_text()
    twistd = Twistd(folder, config=config(freePort(), freePort(), 'store = "store"',
                                          freePort(), freePort()), name="again")
    status, output = twistd.run()
    assert status != 0
    assert "backplane.LOG.store" in output, output
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1, output
    after = sorted((p.name, p.stat().st_size) for p in store.rglob("*")) if store.is_dir() \
        else store.read_text()
    assert after == before
