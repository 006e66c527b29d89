"""
The cookbook (docs/cookbook.md), end to end: each example config of
docs/examples/ run by a real C{twistd -n backplane} process.

The tests load the shipped files themselves and change only what a test must:
the ports (free ones instead of 1500, 1501, ...), a path, and timings made
shorter.  So a recipe that drifts from what the code does fails here.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TypedDict

import pytest

from backplane.config import read_config
from tests.helpers import freePort
from tests.twistd import ROOT, Twistd

EXAMPLES = ROOT / "docs" / "examples"
COOKBOOK = ROOT / "docs" / "cookbook.md"
RECIPES = ["time-server.toml", "relay-server.toml", "aggregating-logger.toml",
           "logger-relay.toml", "logger-relay-spool.toml"]

ASCTIME = re.compile(rb"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$")


class Retry(TypedDict):
    """
    A relay's backoff settings, as L{run} takes them.
    """

    initial_delay: float
    max_delay: float


#: The relay's backoff in the tests: retries 0.2 s after a failure, doubling
#: to at most MAX_DELAY apart.
INITIAL_DELAY, MAX_DELAY = 0.2, 1.0
FAST_RETRY: Retry = {"initial_delay": INITIAL_DELAY, "max_delay": MAX_DELAY}


# Running the shipped examples.


def _ephemeralLow() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def listenPort() -> int:
    """
    A free TCP port on 127.0.0.1 below the ephemeral range.

    A relay retrying against a port whose server is down connects from
    ephemeral ports; a port outside their range can be neither taken by one
    of those connections nor connected to itself.
    """
    low = _ephemeralLow()
    for _ in range(200):
        if low <= 10001:
            break
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return freePort()


class Ports(dict[int, int]):
    """
    The free port standing in for each port the examples name, the same one
    in every example of a test (so that one example's upstream is another's
    server).
    """

    def __missing__(self, port: int) -> int:
        while (free := listenPort()) in self.values():
            pass
        self[port] = free
        return free


PORT = re.compile(r"\b(tcp:|udp:|port=)(\d+)\b")


def example(name: str, ports: Ports, **settings: object) -> str:
    """
    The text of C{docs/examples/NAME}, its ports replaced by C{ports} and each
    C{key = value} of C{settings} set to a new value (the example must set
    that key exactly once).
    """
    text = (EXAMPLES / name).read_text()
    text = PORT.sub(lambda m: f"{m[1]}{ports[int(m[2])]}", text)
    for key, value in settings.items():
        new = json.dumps(value)

        def replace(m: re.Match[str], new: str = new) -> str:
            return m[1] + new

        text, count = re.subn(rf"^({key}\s*=\s*)\S+", replace, text, flags=re.MULTILINE)
        assert count == 1, f"{name} sets {key} {count} times, not once"
    return text


def run(folder: Path, name: str, ports: Ports, *, process: str | None = None,
        **settings: object) -> Twistd:
    """
    Start C{twistd -n backplane} on an example, as changed by L{example}.
    """
    twistd = Twistd(folder, config=example(name, ports, **settings),
                    name=process or name.removesuffix(".toml"))
    return twistd.start()


# Clients.


class Client:
    """
    A client of the service: reads lines with a deadline, sends lines.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        #: Bytes received so far.
        self.received = 0

    def send(self, lines: list[bytes]) -> None:
        self.sock.sendall(b"".join(line + b"\n" for line in lines))

    def lines(self, count: int, timeout: float = 30) -> list[bytes]:
        """
        The next C{count} lines; fail if they have not all come in C{timeout}.
        """
        deadline = time.monotonic() + timeout
        chunks, got = [self.buffer], self.buffer.count(b"\n")
        try:
            while got < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{got} of {count} lines came in {timeout}s")
                self.sock.settimeout(remaining)
                try:
                    chunk = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    raise AssertionError(f"the server closed the connection after {got} lines")
                self.received += len(chunk)
                chunks.append(chunk)
                got += chunk.count(b"\n")
        finally:
            self.buffer = b"".join(chunks)
        *lines, self.buffer = self.buffer.split(b"\n", count)
        return lines

    def line(self, timeout: float = 30) -> bytes:
        return self.lines(1, timeout)[0]

    def drain(self, quiet: float = 0.5) -> None:
        """
        Forget what came so far, and what comes until nothing has come for
        C{quiet} seconds.
        """
        self.buffer = b""
        self.sock.settimeout(quiet)
        try:
            while self.sock.recv(1 << 20):
                pass
        except TimeoutError:
            pass

    def close(self) -> None:
        self.sock.close()


def send(port: int, lines: list[bytes]) -> None:
    """
    Connect, send C{lines}, close.
    """
    client = Client(port)
    client.send(lines)
    client.close()


class LineServer:
    """
    An upstream line server in a thread, recording every complete line it
    receives.  L{stop} closes it and every connection; L{start} listens on
    the same port again.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> LineServer:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _serve(self, listener: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        client, _ = listener.accept()
                        selector.register(client, selectors.EVENT_READ, [b""])
                        continue
                    sock, pending = key.fileobj, key.data
                    assert isinstance(sock, socket.socket)
                    try:
                        chunk = sock.recv(1 << 20)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(sock)
                        sock.close()
                        continue
                    *complete, pending[0] = (pending[0] + chunk).split(b"\n")
                    with self._lock:
                        self.received.extend(complete)
        finally:
            for key in list(selector.get_map().values()):
                assert isinstance(key.fileobj, socket.socket)
                key.fileobj.close()
            selector.close()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(10)
            self._thread = None

    def waitFor(self, count: int, timeout: float = 30) -> list[bytes]:
        """
        Wait until C{count} lines in all have been received; return them all.
        """
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"upstream received {len(self.received)} of {count} "
                                     f"lines in {timeout}s")
            time.sleep(0.02)
        with self._lock:
            return list(self.received)


# Many publishers at once.


PUBLISHER = re.compile(rb"^publisher (\d\d) line \d{4} x*$")


def publisherLines(publisher: int, count: int) -> list[bytes]:
    """
    The lines one publisher sends: numbered, of random lengths.
    """
    rng = random.Random(publisher)
    return [b"publisher %02d line %04d %s" % (publisher, i, b"x" * rng.randrange(200))
            for i in range(count)]


class Publishers:
    """
    Clients sending a stream of lines each, all at once (a thread each), in
    pieces of random sizes.

    With a C{reader}, they keep within L{WINDOW} bytes of what it has
    received, so that a busy test machine cannot make that subscriber a slow
    one (and get it disconnected, as a slow subscriber should be).
    """

    WINDOW = 512 * 1024

    def __init__(self, port: int, streams: list[list[bytes]], reader: Client | None = None
                 ) -> None:
        self.reader = reader
        self.sent = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._publish, args=(port, i, lines),
                                         daemon=True)
                        for i, lines in enumerate(streams)]
        for thread in self.threads:
            thread.start()

    def _publish(self, port: int, index: int, lines: list[bytes]) -> None:
        try:
            data = b"".join(line + b"\n" for line in lines)
            rng = random.Random(1000 + index)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                offset = 0
                while offset < len(data):
                    piece = data[offset : offset + rng.choice((1, 7, 100, 1000, 4096, 20000))]
                    sock.sendall(piece)
                    offset += len(piece)
                    with self._lock:
                        self.sent += len(piece)
                    while self.reader and self.sent - self.reader.received > self.WINDOW:
                        time.sleep(0.001)
        except BaseException as e:
            self.errors.append(e)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a publisher is stuck"
        assert not self.errors, self.errors


def assertAllLines(received: list[bytes], streams: list[list[bytes]]) -> None:
    """
    C{received} holds exactly the lines of C{streams}, each stream's in its
    order, none merged or split.
    """
    byPublisher: dict[int, list[bytes]] = {i: [] for i in range(len(streams))}
    for line in received:
        match = PUBLISHER.match(line)
        assert match, f"not one of the lines sent (merged or split?): {line[:80]!r}"
        byPublisher[int(match[1])].append(line)
    for publisher, lines in byPublisher.items():
        expected = streams[publisher]
        for i, (got, sent) in enumerate(zip(lines, expected, strict=False)):
            assert got == sent, f"publisher {publisher}, line {i}: {got[:40]!r}, not {sent[:40]!r}"
        assert len(lines) == len(expected), f"publisher {publisher}: {len(lines)} lines"


def waitForLines(path: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.read_bytes().count(b"\n") < count:
        if time.monotonic() > deadline:
            have = path.read_bytes().count(b"\n") if path.exists() else 0
            raise AssertionError(f"{path} has {have} of {count} lines after {timeout}s")
        time.sleep(0.1)


# The examples and the cookbook agree.


def test_everyExampleIsValidAndInTheCookbook():
    """
    Every example is a valid config, and the cookbook shows the command that
    runs it.
    """
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(RECIPES)
    cookbook = COOKBOOK.read_text()
    for name in RECIPES:
        read_config(EXAMPLES / name)
        assert re.search(rf"^    twistd -n (--pidfile= )?backplane --config docs/examples/{name}",
                         cookbook, re.MULTILINE), name


# Recipe 1: the time server.


def test_timeServer(tmp_path):
    """
    Every client of port 1500 gets the time.
    """
    ports = Ports()
    server = run(tmp_path, "time-server.toml", ports)
    try:
        server.waitForPort(ports[1500])
        clients = [Client(ports[1500]) for _ in range(3)]
        for client in clients:
            lines = client.lines(3)
            assert all(ASCTIME.match(line) for line in lines), lines
            client.close()
        server.stop()
    finally:
        server.kill()


# Recipe 2: the relay server.


def assertResumes(subscriber: Client, upstream: Twistd, port: int) -> None:
    """
    Once upstream listens on C{port}, lines reach the relay's C{subscriber}
    within a few C{MAX_DELAY}.
    """
    upstream.waitForPort(port)
    back = time.monotonic()
    line = subscriber.line(timeout=60)
    waited = time.monotonic() - back
    assert ASCTIME.match(line), line
    assert waited < 5 * MAX_DELAY, f"the relay took {waited:.1f}s to resume"


def test_relayServerRidesOutUpstreamRestart(tmp_path):
    """
    The relay re-serves the time server's stream; when the time server stops
    and starts again on the same port, the relay reconnects by itself and
    its subscribers, still connected, get lines again.
    """
    ports = Ports()
    upstream = run(tmp_path, "time-server.toml", ports, process="upstream")
    relay = run(tmp_path, "relay-server.toml", ports, **FAST_RETRY)
    again = None
    try:
        upstream.waitForPort(ports[1500])
        relay.waitForPort(ports[1600])
        subscriber = Client(ports[1600])
        assert ASCTIME.match(subscriber.line())

        upstream.stop()
        relay.waitForLog("Relay lost its connection")
        # Down long enough for the backoff to reach its cap.
        time.sleep(4 * MAX_DELAY)
        subscriber.drain()
        again = run(tmp_path, "time-server.toml", ports, process="upstream-again")
        assertResumes(subscriber, again, ports[1510])
        relay.waitForLog("Relay reconnected")
        # The time server keeps its history in memory: a new epoch, which
        # the relay's RESUME meets as a gap, logged.
        relay.waitForLog("upstream lost lines the relay asked for")
        subscriber.close()
        relay.stop()
        again.stop()
    finally:
        for process in (upstream, relay, again):
            if process is not None:
                process.kill()


def test_relayServerStartsBeforeUpstream(tmp_path):
    """
    A relay started while upstream is down serves its clients and keeps
    trying; once upstream is up, they get its lines.
    """
    ports = Ports()
    relay = run(tmp_path, "relay-server.toml", ports, **FAST_RETRY)
    upstream = None
    try:
        relay.waitForPort(ports[1600])
        relay.waitForLog("Relay could not connect")
        subscriber = Client(ports[1600])
        upstream = run(tmp_path, "time-server.toml", ports, process="upstream")
        assertResumes(subscriber, upstream, ports[1510])
        relay.waitForLog("Relay connected to")
        subscriber.close()
        relay.stop()
        upstream.stop()
    finally:
        relay.kill()
        if upstream is not None:
            upstream.kill()


# Recipe 3: the aggregating logger.


def test_aggregatingLogger(tmp_path):
    """
    20 clients publish 1,000 lines each at once: the file holds exactly those
    lines after what it held before, each client's in order, none merged or
    split.
    """
    ports = Ports()
    log = tmp_path / "aggregated.log"
    log.write_bytes(b"written before the logger started\n")
    logger = run(tmp_path, "aggregating-logger.toml", ports)
    try:
        logger.waitForPort(ports[1501])
        streams = [publisherLines(p, 1000) for p in range(20)]
        Publishers(ports[1501], streams).join()
        waitForLines(log, 1 + 20 * 1000)
        logger.stop()
        first, *lines, end = log.read_bytes().split(b"\n")
        assert first == b"written before the logger started"
        assert end == b""
        assertAllLines(lines, streams)
    finally:
        logger.kill()


def test_aggregatingLoggerTakesSyslog(tmp_path):
    """
    util-linux C{logger} on the syslog ports: an octet-counted multi-line
    message over TCP, a newline-framed one, one over UDP, and a last line
    without a newline from C{nc}: each one line of the log.
    """
    ports = Ports()
    log = tmp_path / "aggregated.log"
    logger = run(tmp_path, "aggregating-logger.toml", ports)
    try:
        logger.waitForPort(ports[1514])
        logger.waitForPort(ports[1501])
        where = ["-n", "127.0.0.1", "-P", str(ports[1514]), "-t", "cookbook"]
        for arguments in (["--tcp", "--octet-count", "first\nsecond"], ["--tcp", "framed"],
                          ["-d", "over UDP"]):
            subprocess.run(["logger", *where, *arguments], check=True, timeout=20)
        subprocess.run(["nc", "-q1", "127.0.0.1", str(ports[1501])], input=b"no newline",
                       check=True, timeout=20)
        waitForLines(log, 4)
        logger.stop()
        lines = log.read_bytes().split(b"\n")[:-1]
        assert len(lines) == 4, lines
        ends = sorted(line.rsplit(b"] ", 1)[-1] for line in lines if b" cookbook " in line)
        assert ends == [b"first#012second", b"framed", b"over UDP"], lines
        for line in lines:
            if line.endswith(b"] over UDP"):
                # The UDP port's prefix: the receive time, the sender's address.
                assert re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1:\d+ <13>1 ",
                                line), line
            elif b" cookbook " in line:
                assert line.startswith(b"<13>1 "), line
        assert b"no newline" in lines
    finally:
        logger.kill()


# Recipe 4: the logger that is also a relay.


def test_loggerRelayManyPublishersThenSigterm(tmp_path):
    """
    20 clients publish 1,000 lines each at once: a subscriber receives all of
    them; SIGTERM the moment it has the last one, and when the process has
    exited the file holds them all too (flush_interval is made long, so only
    the shutdown can have written the last of them).  Upstream gets whole
    lines, each publisher's in order.
    """
    ports = Ports()
    log = tmp_path / "logger-relay.log"
    log.write_bytes(b"written before the logger started\n")
    upstream = LineServer(ports[1501]).start()
    logger = run(tmp_path, "logger-relay.toml", ports, flush_interval=600.0)
    try:
        logger.waitForPort(ports[1601])
        logger.waitForPort(ports[1602])
        logger.waitForLog("Relay connected")
        subscriber = Client(ports[1602])
        streams = [publisherLines(p, 1000) for p in range(20)]
        publishers = Publishers(ports[1601], streams, reader=subscriber)
        received = subscriber.lines(20 * 1000, timeout=120)
        logger.stop()  # SIGTERM now: the service has read every line
        publishers.join()
        assertAllLines(received, streams)
        first, *lines, end = log.read_bytes().split(b"\n")
        assert first == b"written before the logger started"
        assert end == b""
        assertAllLines(lines, streams)
        upstream.stop()
        for line in upstream.received:
            assert PUBLISHER.match(line), line[:80]
        for publisher, stream in enumerate(streams):
            sent = [line for line in upstream.received
                    if line.startswith(b"publisher %02d " % publisher)]
            assert sent == stream[: len(sent)], f"publisher {publisher}: not in order"
    finally:
        logger.kill()
        upstream.stop()


def test_loggerRelayForwardsUpstreamThroughOutages(tmp_path):
    """
    The lines published to the logger go upstream: those published before
    upstream first came up, and those published while it was down, oldest
    first once it is back, at most `buffer` of them (the oldest are dropped).
    """
    ports = Ports()
    upstream = LineServer(ports[1501])
    logger = run(tmp_path, "logger-relay.toml", ports, buffer=100, **FAST_RETRY)
    try:
        logger.waitForPort(ports[1601])
        logger.waitForPort(ports[1602])
        logger.waitForLog("Relay could not connect")
        watcher = Client(ports[1602])

        early = [b"early %d" % i for i in range(10)]
        send(ports[1601], early)
        assert watcher.lines(10) == early  # published: the relay holds them
        upstream.start()
        assert upstream.waitFor(10) == early
        logger.waitForLog("Relay connected")

        upstream.stop()
        logger.waitForLog("Relay lost its connection")
        during = [b"during %03d" % i for i in range(250)]
        send(ports[1601], during)
        assert watcher.lines(250) == during
        logger.waitForLog("dropping the oldest")
        upstream.start()
        assert upstream.waitFor(110)[10:] == during[150:]
        logger.waitForLog("sending 100 buffered lines (150 dropped while it was away)")

        after = [b"after %d" % i for i in range(5)]
        send(ports[1601], after)
        assert upstream.waitFor(115)[110:] == after
        assert len(upstream.received) == 115
        watcher.close()
        logger.stop()
    finally:
        logger.kill()
        upstream.stop()


@pytest.mark.parametrize("where", ["under a file", "in a missing folder",
                                   "in a read-only folder"])
def test_loggerRelayUnwritableFile(tmp_path, where):
    """
    A file that cannot be written is logged loudly, and the rest of the
    service keeps working: the subscribers still get every line.

    Root may write into a read-only folder; as root, the read-only folder is
    /sys, where nobody may create a file.
    """
    if where == "under a file":
        (tmp_path / "file").write_text("a file, not a folder\n")
        path = tmp_path / "file" / "logger-relay.log"
    elif where == "in a missing folder":
        path = tmp_path / "missing" / "logger-relay.log"
    elif os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        path = tmp_path / "ro" / "logger-relay.log"
    elif os.path.ismount("/sys"):
        path = Path("/sys") / f"backplane-test-{os.getpid()}.log"
    else:
        pytest.skip("as root, needs /sys for a folder nobody may write to")
    ports = Ports()
    logger = run(tmp_path, "logger-relay.toml", ports, path=str(path))
    try:
        logger.waitForPort(ports[1601])
        logger.waitForPort(ports[1602])
        logger.waitForLog(f"[backplane.sinks.FileSink#critical] File sink {path} "
                          "cannot be written")
        watcher = Client(ports[1602])
        lines = [b"line %d" % i for i in range(1000)]
        send(ports[1601], lines)
        assert watcher.lines(1000) == lines
        # Still working after the sink has failed again at each flush.
        time.sleep(2.5)
        send(ports[1601], [b"still here"])
        assert watcher.line() == b"still here"
        watcher.close()
        logger.stop(tracebacks=1)  # the sink's failure, logged once
        assert f"File sink {path} stopped with" in logger.text()
        assert not path.exists()
    finally:
        logger.kill()


def test_loggerRelaySigintWritesTheFile(tmp_path):
    """
    SIGINT (Ctrl-C), like SIGTERM, shuts down gracefully: what was read is
    in the file.
    """
    ports = Ports()
    logger = run(tmp_path, "logger-relay.toml", ports, flush_interval=600.0)
    try:
        logger.waitForPort(ports[1602])
        watcher = Client(ports[1602])
        send(ports[1601], [b"one", b"two"])
        assert watcher.lines(2) == [b"one", b"two"]
        logger.stop(signal.SIGINT)
        assert (tmp_path / "logger-relay.log").read_bytes() == b"one\ntwo\n"
    finally:
        logger.kill()


# Recipe 5: the logger that is also a relay, with acknowledgements and a spool.


def test_loggerRelaySpoolNeverLosesALine(tmp_path):
    """
    Lines published to the relay while the central logger is stopped, and
    across a kill -9 of the relay itself, all reach the central file, once
    each, in order.
    """
    ports = Ports()
    central = run(tmp_path, "aggregating-logger.toml", ports, process="central",
                  flush_interval=0.1)
    relay = run(tmp_path, "logger-relay-spool.toml", ports, **FAST_RETRY)
    again = None
    try:
        central.waitForPort(ports[1511])
        relay.waitForPort(ports[1621])
        relay.waitForLog("Relay connected")
        first = [b"first %d" % i for i in range(500)]
        send(ports[1621], first)
        waitForLines(tmp_path / "aggregated.log", 500)
        central.stop()
        second = [b"second %d" % i for i in range(500)]
        send(ports[1621], second)
        time.sleep(0.5)  # in the spool
        relay.kill()
        relay = run(tmp_path, "logger-relay-spool.toml", ports, process="relay-again",
                    **FAST_RETRY)
        relay.waitForPort(ports[1621])
        again = run(tmp_path, "aggregating-logger.toml", ports, process="central-again",
                    flush_interval=0.1)
        waitForLines(tmp_path / "aggregated.log", 1000)
        time.sleep(0.5)
        again.stop()
        relay.stop()
        lines = (tmp_path / "aggregated.log").read_bytes().split(b"\n")[:-1]
        assert lines == first + second
    finally:
        for process in (central, relay, again):
            if process is not None:
                process.kill()
