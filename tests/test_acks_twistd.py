"""
Acknowledged publishing end to end (SPEC section 10): a real C{twistd}, a
publisher that keeps what is not acknowledged and resends it after HELLO,
and the server stopped (SIGTERM) and killed (C{kill -9}) under steady load.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from collections import deque
from pathlib import Path

from tests.helpers import freePort
from tests.test_resume_twistd import parse
from tests.twistd import Twistd, readLines


class Server:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pub, self.sub = freePort(), freePort()
        self.twistd: Twistd | None = None

    def start(self) -> Server:
        self.twistd = Twistd(self.folder, config=f"""
[backplane.LOG]
store = "store"
fsync_interval = 0.05

[[listen]]
endpoint = "tcp:{self.pub}:interface=127.0.0.1"
publish_to = "LOG"
acks = true
ack_lines = 200
ack_interval = 0.1

[[listen]]
endpoint = "tcp:{self.sub}:interface=127.0.0.1"
subscribe_to = "LOG"
ids = true
""").start()
        self.twistd.waitForPort(self.pub)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.twistd is not None
        if sig == signal.SIGKILL:
            self.twistd.kill()
        else:
            self.twistd.stop(sig)

    def stored(self, count: int) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", self.sub)) as sock:
            sock.sendall(b"RESUME 0\n")
            return [parse(line)[2] for line in readLines(sock, count, timeout=30)]


class ReliablePublisher:
    """
    A publisher that never loses a line: it numbers its lines, keeps those
    not yet acknowledged, and after every reconnection says HELLO with how
    many were, then resends the rest.
    """

    def __init__(self, port: int, rate: float = 3000) -> None:
        self.port = port
        self.rate = rate
        self.acked = 0
        self.made = 0
        self.unacked: deque[bytes] = deque()
        self.making = threading.Event()
        self.making.set()
        self.stopping = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.session()
            except OSError:
                time.sleep(0.05)

    def session(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            self.connections += 1
            base = self.acked
            sock.sendall(b"HELLO test-publisher %d\n" % base
                         + b"".join(line + b"\n" for line in self.unacked))
            sent = len(self.unacked)
            buffer = b""
            while not self.stopping.is_set():
                if self.making.is_set():
                    batch = [b"line %d" % (self.made + i + 1) for i in range(30)]
                    self.made += len(batch)
                    self.unacked.extend(batch)
                    sock.sendall(b"".join(line + b"\n" for line in batch))
                    sent += len(batch)
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    buffer += data
                    *complete, buffer = buffer.split(b"\n")
                    for line in complete:
                        assert line.startswith(b"ACK "), line
                        total = base + int(line[4:])
                        while self.acked < total:
                            self.unacked.popleft()
                            self.acked += 1
                if not self.making.is_set() and not self.unacked:
                    return


def test_acknowledgedThroughKills(tmp_path):
    """
    Under steady load, the server stopped with SIGTERM and killed with
    kill -9 in turn, six times: every line the publisher made is in the
    store once, in order, and every acknowledged line was there.
    """
    server = Server(tmp_path).start()
    publisher = ReliablePublisher(server.pub)
    publisher.thread.start()
    try:
        for i in range(6):
            time.sleep(0.7)
            server.stop(signal.SIGKILL if i % 2 else signal.SIGTERM)
            server.start()
        time.sleep(0.5)
        publisher.making.clear()
        deadline = time.monotonic() + 30
        while publisher.unacked or publisher.acked < publisher.made:
            assert time.monotonic() < deadline, (publisher.acked, publisher.made)
            time.sleep(0.05)
    finally:
        publisher.stopping.set()
        publisher.thread.join(10)
    made = publisher.made
    assert made > 3000 and publisher.connections >= 7, (made, publisher.connections)
    stored = server.stored(made)
    assert stored == [b"line %d" % i for i in range(1, made + 1)]
    # And nothing after them.
    with socket.create_connection(("127.0.0.1", server.sub)) as sock:
        sock.sendall(b"RESUME 0\n")
        lines = readLines(sock, made)
        sock.settimeout(0.5)
        try:
            extra = sock.recv(65536)
        except TimeoutError:
            extra = b""
    assert len(lines) == made and extra == b"", extra[:200]
    server.stop()


def test_thousandLinesOneAck(tmp_path):
    """
    1,000 lines sent at once: the acknowledgements end with ACK 1000.
    """
    server = Server(tmp_path).start()
    try:
        with socket.create_connection(("127.0.0.1", server.pub)) as sock:
            sock.sendall(b"".join(b"%d\n" % i for i in range(1000)))
            sock.settimeout(10)
            data = b""
            while not data.endswith(b"ACK 1000\n"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        acks = [int(line[4:]) for line in data.split(b"\n")[:-1]]
        assert acks == sorted(acks) and acks[-1] == 1000
    finally:
        server.stop()
