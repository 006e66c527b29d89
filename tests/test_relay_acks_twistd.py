"""
A relay with acks end to end (SPEC section 10): a real C{twistd} relay
with a spool, fed under steady load through its local publishing port,
sending upstream to a fake C{acks = true} server (L{tests.ackserver}) that
is restarted five times, losing whatever it had not acknowledged, while the
relay is stopped once with SIGTERM and killed once with C{kill -9}: every
line the relay took arrives upstream exactly once, in order.  Then the same
relay against the real server (a C{twistd} with a store), and the
plain-Python example publisher of docs/examples against the fake.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.ackserver import AckServer
from tests.helpers import freePort
from tests.test_resume_twistd import parse
from tests.twistd import ROOT, Twistd

EXAMPLE = ROOT / "docs" / "examples" / "reliable_publisher.py"


class Feeder:
    """
    A publisher of numbered lines (C{line 1}, C{line 2}, ...) to a plain
    publishing port, in a thread, at a steady pace; it reconnects when the
    port goes away, and remembers which lines it wrote on which connection.

    @ivar connections: for each connection, the first and last line written
        on it (a batch a write failed in counts as written: part of it may
        have arrived).
    """

    def __init__(self, port: int, batch: int = 20, pause: float = 0.01) -> None:
        self.port = port
        self.batch = batch
        self.pause = pause
        self.next = 1
        self.connections: list[list[int]] = []
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> Feeder:
        self.thread.start()
        return self

    def stop(self) -> int:
        """
        Stop after the batch under way, close the connection cleanly; return
        the last line written.
        """
        self.stopping.set()
        self.thread.join(30)
        assert self.stopped.is_set()
        return self.next - 1

    def run(self) -> None:
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            written = [self.next, self.next - 1]
            self.connections.append(written)
            try:
                while not self.stopping.is_set():
                    first, self.next = self.next, self.next + self.batch
                    written[1] = self.next - 1
                    sock.sendall(b"".join(b"line %d\n" % i for i in range(first, self.next)))
                    time.sleep(self.pause)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(10)
                sock.recv(1)  # the relay has read everything, and closed
                sock.close()
                self.stopped.set()
                return
            except OSError:
                sock.close()
                time.sleep(0.05)


def checkExactlyOnce(published: list[bytes], feeder: Feeder) -> None:
    """
    Every line arrived at most once, in order; of each connection of the
    feeder, the lines that arrived are a first part of those written on it
    (nothing missing in the middle: only a relay restart may lose the lines
    it had not read yet); and all of the last connection's arrived.
    """
    numbers = [int(line.split(b" ")[1]) for line in published]
    assert all(b > a for a, b in itertools.pairwise(numbers)), "in order, once each"
    arrived = set(numbers)
    for index, (first, last) in enumerate(feeder.connections):
        got = [n for n in range(first, last + 1) if n in arrived]
        assert got == list(range(first, first + len(got))), \
            f"connection {index}: lines {first} to {last}, a hole in {got[:3]}...{got[-3:]}"
    first, last = feeder.connections[-1]
    assert all(n in arrived for n in range(first, last + 1)), "the last connection, all"
    assert arrived <= set(range(1, feeder.next))


def relayConfig(pub: int, up: int, monitor: int) -> str:
    return f"""
[backplane.OUT]

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "OUT"

[[connect]]
endpoint = "tcp:host=127.0.0.1:port={up}"
subscribe_to = "OUT"
acks = true
spool = "spool"
initial_delay = 0.1
max_delay = 0.5

[monitor]
endpoint = "tcp:{monitor}:interface=127.0.0.1"
"""


class Relay:
    def __init__(self, folder: Path, up: int) -> None:
        self.folder = folder
        self.pub, self.monitor = freePort(), freePort()
        self.config = relayConfig(self.pub, up, self.monitor)
        self.twistd: Twistd | None = None
        self.runs = 0

    def start(self) -> Relay:
        self.runs += 1
        self.twistd = Twistd(self.folder, config=self.config, name=f"relay{self.runs}").start()
        self.twistd.waitForPort(self.pub)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.twistd is not None
        if sig == signal.SIGKILL:
            self.twistd.kill()
        else:
            self.twistd.stop(sig)

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/stats",
                                    timeout=10) as response:
            services = {s["name"]: s for s in json.load(response)["services"]}
        relay: dict[str, object] = services["connect[1]"]
        return relay


def waitForLine(server: AckServer, last: int, timeout: float = 30) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        published = server.published()
        if published and published[-1] == b"line %d" % last:
            return published
        assert time.monotonic() < deadline, (last, published[-3:])
        time.sleep(0.05)


def test_relayThroughRestartsOfUpstreamAndItself(tmp_path):
    """
    Under steady load, the fake upstream restarted five times (losing what
    it had not acknowledged) and the relay stopped with SIGTERM once and
    killed with kill -9 once: every line the relay took arrives upstream
    once, in order; what the relay resent after its restarts was not
    duplicated.
    """
    server = AckServer(freePort()).start()
    relay = Relay(tmp_path, server.port).start()
    feeder = Feeder(relay.pub).start()
    try:
        for step in ("up", "up", "relay SIGTERM", "up", "up", "relay kill -9", "up"):
            time.sleep(0.8)
            if step == "up":
                server.restart()
            else:
                relay.stop(signal.SIGKILL if "kill" in step else signal.SIGTERM)
                relay.start()
        time.sleep(0.8)
        last = feeder.stop()
        published = waitForLine(server, last)
        checkExactlyOnce(published, feeder)
        assert server.restarts == 5
        # What the relay resent after its restarts, upstream had: skipped.
        assert server.upstream.deduplicated > 0
        assert server.upstream.errors == []
        assert len(feeder.connections) >= 3
        assert len(published) > 5000, len(published)
        stats = relay.stats()
        deadline = time.monotonic() + 10
        while stats["gauges"]["spooled"]:  # type: ignore[index]
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
            stats = relay.stats()
        info = stats["info"]
        assert isinstance(info, dict)
        assert info["acks"] is True and info["spool"] == str(tmp_path / "spool")
        # One publisher id through it all: the spool kept it across restarts.
        assert set(server.upstream.marks) == {info["publisher_id"]}
        assert server.upstream.marks[info["publisher_id"]] == len(published)
        relay.stop()
    finally:
        feeder.stopping.set()
        if relay.twistd is not None:
            relay.twistd.kill()
        server.stop()


def test_relayToTheRealServer(tmp_path):
    """
    The relay against the real server side, a twistd with a store and an
    acks = true port, stopped with SIGTERM and killed with kill -9 in turn,
    while the relay itself is killed once: every line once, in order, in the
    server's store.
    """
    up, sub = freePort(), freePort()
    (tmp_path / "server").mkdir()
    serverConfig = f"""
[backplane.LOG]
store = "store"
fsync_interval = 0.05

[[listen]]
endpoint = "tcp:{up}:interface=127.0.0.1"
publish_to = "LOG"
acks = true
ack_lines = 200
ack_interval = 0.1

[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "LOG"
ids = true
"""
    runs = 0

    def startServer() -> Twistd:
        nonlocal runs
        runs += 1
        twistd = Twistd(tmp_path / "server", config=serverConfig, name=f"server{runs}").start()
        twistd.waitForPort(up)
        return twistd

    server = startServer()
    relay = Relay(tmp_path, up).start()
    feeder = Feeder(relay.pub).start()
    try:
        for step in ("server SIGTERM", "relay kill -9", "server kill -9"):
            time.sleep(0.8)
            if step.startswith("relay"):
                relay.stop(signal.SIGKILL)
                relay.start()
            elif "kill" in step:
                server.kill()
                server = startServer()
            else:
                server.stop()
                server = startServer()
        time.sleep(0.8)
        last = feeder.stop()
        deadline = time.monotonic() + 30
        while True:
            with socket.create_connection(("127.0.0.1", sub)) as sock:
                sock.sendall(b"RESUME 0\n")
                sock.settimeout(2)
                data = b""
                try:
                    while not data.endswith(b" line %d\n" % last):
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            break
                        data += chunk
                except TimeoutError:
                    pass
            if data.endswith(b" line %d\n" % last):
                break
            assert time.monotonic() < deadline, data[-100:]
            time.sleep(0.2)
        published = [parse(line)[2] for line in data.split(b"\n")[:-1]]
        checkExactlyOnce(published, feeder)
        assert len(published) > 3000, len(published)
        relay.stop()
        server.stop()
    finally:
        feeder.stopping.set()
        if relay.twistd is not None:
            relay.twistd.kill()
        server.kill()


def test_plainPythonExample(tmp_path):
    """
    docs/examples/reliable_publisher.py, fed through a pipe at a steady
    pace while the fake upstream restarts three times, then killed (kill
    -9) and run again on a file from where its state file says: every line
    once, in order.
    """
    server = AckServer(freePort()).start()
    state = tmp_path / "publisher.json"
    command = [sys.executable, str(EXAMPLE), "--port", str(server.port), "--state", str(state)]
    try:
        example = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert example.stdin is not None
        made = 0
        for step in range(4):
            for _ in range(40):
                example.stdin.write(b"".join(b"line %d\n" % (made + i + 1) for i in range(25)))
                example.stdin.flush()
                made += 25
                time.sleep(0.01)
            if step < 3:
                server.restart()
        example.stdin.close()
        assert example.wait(30) == 0, example.stderr.read() if example.stderr else ""
        assert server.published() == [b"line %d" % i for i in range(1, made + 1)]
        assert server.restarts == 3

        # From a file, killed halfway, then run again: it goes on from its
        # state file, and upstream skips what it resends.
        source = tmp_path / "lines.txt"
        more = 100_000
        source.write_bytes(b"".join(b"line %d\n" % i for i in range(made + 1, made + more + 1)))
        state.unlink()
        example = subprocess.Popen([*command, str(source)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(server.published()) < made + more // 10:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        example.kill()
        example.wait()
        assert len(server.published()) < made + more, "killed before the end"
        saved = json.loads(state.read_text())
        assert saved["acked"] < more, "a state file, of lines not all acknowledged"
        server.restart()
        again = subprocess.run([*command, str(source)], capture_output=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert server.published() == [b"line %d" % i for i in range(1, made + more + 1)]
        assert server.upstream.errors == []
    finally:
        server.stop()
