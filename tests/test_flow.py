"""
Flow control and bad input against a real twistd process (SPEC §6): a
subscriber that stops reading costs bounded memory and nobody else anything;
running out of file descriptors is survived.
"""

import os
import re
import resource
import socket
import struct
import threading
import time

import pytest

from tests.helpers import freePort
from tests.twistd import Twistd, readLines

MiB = 1024 * 1024


def rss(pid: int) -> int:
    """
    The resident memory of a process, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Reader(threading.Thread):
    """
    A subscriber that reads as fast as it can, keeping everything.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.chunks: list[bytes] = []
        self.size = 0

    def run(self) -> None:
        while chunk := self.sock.recv(1 << 20):
            self.chunks.append(chunk)
            self.size += len(chunk)

    def data(self) -> bytes:
        return b"".join(self.chunks)


def stalled(port: int) -> socket.socket:
    """
    A subscriber that never reads, with a small receive buffer.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def openFiles(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def isClosedByServer(sock: socket.socket, timeout: float = 10) -> bool:
    """
    Whether the server has closed (or reset) this connection: drain what it
    had sent and look for the end.
    """
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def lineStream(total: int, size: int = 100) -> tuple[bytes, int]:
    """
    About C{total} bytes of numbered lines of C{size} bytes each.
    """
    count = total // size
    pad = b"x" * (size - 9)
    return b"".join(b"%08d%s\n" % (i, pad) for i in range(count)), count


CONFIG = """
[backplane.DATA]
[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "DATA"
[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "DATA"
max_pending = {max_pending}
slow = "{slow}"
"""


def startServer(tmp_path, slow: str, max_pending: int = MiB):
    pub, sub = freePort(), freePort()
    twistd = Twistd(tmp_path, config=CONFIG.format(pub=pub, sub=sub, slow=slow,
                                                   max_pending=max_pending)).start()
    twistd.waitForPort(pub)
    twistd.waitForPort(sub)
    return twistd, pub, sub


def publishWatchingMemory(twistd, pub: int, stream: bytes, reader: Reader) -> int:
    """
    Send C{stream} to the publish port while sampling the server's memory;
    the largest growth seen over the baseline.

    The publisher keeps within 1 MiB of C{reader}, so that a busy test
    machine cannot make the reading subscriber a slow one too.
    """
    pid = twistd.process.pid
    baseline = rss(pid)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with socket.create_connection(("127.0.0.1", pub)) as writer:
        for i in range(0, len(stream), 1 << 16):
            writer.sendall(stream[i : i + (1 << 16)])
            while i - reader.size > MiB:
                time.sleep(0.001)
    time.sleep(0.5)
    done.set()
    sampler.join()
    return peak[0] - baseline


def test_stalledSubscriberDisconnected(tmp_path):
    """
    40 MB through one backplane: the reader gets every line in order, the
    subscriber that never reads is disconnected, and the server's memory
    grows by at most max_pending plus a fixed margin.
    """
    twistd, pub, sub = startServer(tmp_path, "disconnect")
    try:
        stream, _ = lineStream(40 * MiB)
        reader = Reader(sub)
        reader.start()
        stuck = stalled(sub)
        time.sleep(0.3)  # let the server attach both before publishing
        growth = publishWatchingMemory(twistd, pub, stream, reader)
        deadline = time.monotonic() + 30
        while reader.size < len(stream) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.data() == stream, "every line, whole, in order"
        assert isClosedByServer(stuck)
        twistd.waitForLog("Disconnecting slow subscriber")
        assert growth < MiB + 12 * MiB, f"server grew by {growth / MiB:.1f} MiB"
        reader.sock.close()
        twistd.stop()
    finally:
        twistd.kill()


LINE = re.compile(rb"^\d{8}x+$")


def test_stalledSubscriberDrops(tmp_path):
    """
    With slow = "drop" the subscriber that stops reading stays connected,
    misses messages while it is behind, and never receives a partial line.
    """
    twistd, pub, sub = startServer(tmp_path, "drop", max_pending=256 * 1024)
    try:
        stream, count = lineStream(20 * MiB)
        reader = Reader(sub)
        reader.start()
        stuck = stalled(sub)
        time.sleep(0.3)
        growth = publishWatchingMemory(twistd, pub, stream, reader)
        deadline = time.monotonic() + 30
        while reader.size < len(stream) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.data() == stream
        twistd.waitForLog("misses messages until it catches up")
        # Now the stalled one reads what was kept for it: whole lines, in
        # order, with a gap where it was behind.
        stuck.settimeout(2)
        received = b""
        try:
            while chunk := stuck.recv(1 << 20):
                received += chunk
        except TimeoutError:
            pass
        lines = received.split(b"\n")
        assert lines[-1] == b"", "ends with a whole line"
        numbers = [int(line[:8]) for line in lines[:-1] if LINE.match(line) or _fail(line)]
        assert numbers == sorted(numbers)
        assert 0 < len(numbers) < count, "missed some, received some"
        # It is still subscribed: after catching up it gets new lines again.
        with socket.create_connection(("127.0.0.1", pub)) as writer:
            writer.sendall(b"99999999after\n")
        assert readLines(stuck, 1, timeout=10) == [b"99999999after"]
        twistd.waitForLog("caught up, having missed")
        assert growth < 256 * 1024 + 12 * MiB, f"server grew by {growth / MiB:.1f} MiB"
        reader.sock.close()
        stuck.close()
        twistd.stop()
    finally:
        twistd.kill()


def _fail(line: bytes) -> bool:
    raise AssertionError(f"a partial or merged line: {line[:40]!r}...")


def test_outOfFileDescriptors(tmp_path):
    """
    With a limit of 64 open files, connecting 100 clients runs the server
    out of descriptors: it says so, and keeps serving the clients it has.
    """
    pub, sub = freePort(), freePort()

    def lowLimit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    twistd = Twistd(tmp_path, config=CONFIG.format(pub=pub, sub=sub, slow="disconnect",
                                                   max_pending=MiB))
    twistd.start(preexec_fn=lowLimit)
    clients = []
    try:
        twistd.waitForPort(pub)
        twistd.waitForPort(sub)
        first = socket.create_connection(("127.0.0.1", sub))
        writer = socket.create_connection(("127.0.0.1", pub))
        # Both accepted before the flood (else, on a busy machine, the flood
        # may take the last descriptors before the publisher is accepted).
        deadline = time.monotonic() + 20
        first.settimeout(0.2)
        while True:
            writer.sendall(b"ready\n")
            try:
                if first.recv(100):
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, "the subscriber and the publisher are served"
        while True:
            try:
                first.recv(65536)
            except TimeoutError:
                break
        for _ in range(100):
            try:
                clients.append(socket.create_connection(("127.0.0.1", sub), timeout=2))
            except OSError:
                pass
        twistd.waitForLog("EMFILE encountered")
        writer.sendall(b"still serving\n")
        assert readLines(first, 1) == [b"still serving"]
        for client in clients:
            client.close()
        first.close()
        writer.close()
        twistd.stop()
    finally:
        for client in clients:
            client.close()
        twistd.kill()


@pytest.mark.parametrize("clients", [200])
def test_silentAndHalfLineClientsReleased(tmp_path, clients):
    """
    Clients that connect and send nothing then close, or send half a line
    then vanish (a reset): nothing is published and nothing is held for
    them.  (Half a line before a clean close is a line: tests/test_senders.py.)
    """
    twistd, pub, sub = startServer(tmp_path, "disconnect")
    try:
        watcher = socket.create_connection(("127.0.0.1", sub))
        time.sleep(0.2)
        descriptors = openFiles(twistd.process.pid)
        for i in range(clients):
            with socket.create_connection(("127.0.0.1", pub)) as sock:
                if i % 2:
                    sock.sendall(b"half a line from %d" % i)
                    # SO_LINGER 0: close() resets the connection.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with socket.create_connection(("127.0.0.1", pub)) as sock:
            sock.sendall(b"the only line\n")
        assert readLines(watcher, 1) == [b"the only line"]
        watcher.settimeout(0.5)
        with pytest.raises(TimeoutError):
            watcher.recv(100)
        assert openFiles(twistd.process.pid) == descriptors
        watcher.close()
        twistd.stop()
    finally:
        twistd.kill()
