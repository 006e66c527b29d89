"""
The service-wide bound on unfinished lines ([limits] max_unfinished_total)
against a real twistd process: many connections each send most of a line
and then nothing; the bytes the server holds for them stay within the
bound (the connections holding the most are disconnected), its memory grows
by less than the bound and a margin, and clients that complete their lines,
and a new publisher, are unaffected.
"""

import socket
import time
from typing import Any

from tests.helpers import freePort, metricSamples, sample
from tests.redis_helpers import encodeCommand
from tests.test_flow import rss
from tests.test_websocket import clientFrame
from tests.twistd import Twistd, monitorGet, monitorStats, readLines, wsConnect, wsReceive

KiB = 1024
MiB = 1024 * KiB

BOUND = 4 * MiB
FLOOD = 200
HALF_LINE = 60_000
HONEST = 20
# What the process may grow by besides the bound: each connection's own
# objects and buffers (a read is 64 KiB at most), with Python's overhead.
# (Measured: about 4 MiB in all with the bound; 11 MiB without it.)
MARGIN = 4 * MiB

CONFIG = """
[limits]
max_unfinished_total = {bound}

[backplane.DATA]

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "DATA"

[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "DATA"

[monitor]
endpoint = "tcp:{monitor}:interface=127.0.0.1"
"""


def server(monitor: int) -> dict[str, Any]:
    figures: dict[str, Any] = monitorStats(monitor)["server"]
    return figures


def isClosed(sock: socket.socket) -> bool:
    """
    Whether the server closed C{sock} (it sends nothing to publishers).
    """
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def closedCount(socks: list[socket.socket], expected: int, timeout: float = 10) -> int:
    """
    How many of C{socks} the server closed, once that is C{expected} (a
    close takes a moment to arrive) or C{timeout} has passed.
    """
    deadline = time.monotonic() + timeout
    while (closed := sum(isClosed(sock) for sock in socks)) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return closed


def test_unfinishedLinesStayWithinTheBound(tmp_path):
    pub, sub, monitor = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=CONFIG.format(pub=pub, sub=sub, monitor=monitor,
                                                   bound=BOUND)).start()
    sockets: list[socket.socket] = []
    try:
        for port in (pub, sub, monitor):
            twistd.waitForPort(port)
        assert twistd.process is not None
        pid = twistd.process.pid
        reader = socket.create_connection(("127.0.0.1", sub))
        sockets.append(reader)
        honest = [socket.create_connection(("127.0.0.1", pub)) for _ in range(HONEST)]
        sockets.extend(honest)
        for i, sock in enumerate(honest):
            sock.sendall(b"honest %02d, half" % i)
        # Wait until the server has read them, and has its figures ready.
        deadline = time.monotonic() + 20
        while server(monitor)["unfinished_connections"] < HONEST:
            assert time.monotonic() < deadline, server(monitor)
            time.sleep(0.05)
        baseline = rss(pid)

        flood, peak, held = [], 0, 0
        for i in range(FLOOD):
            sock = socket.create_connection(("127.0.0.1", pub))
            sockets.append(sock)
            flood.append(sock)
            try:
                sock.sendall(b"%08d" % i + b"x" * (HALF_LINE - 8))
            except OSError:
                pass  # cut, and closed, before it sent it all
            if i % 20 == 19:
                figures = server(monitor)
                held = max(held, figures["unfinished_bytes"])
                peak = max(peak, rss(pid))
        # Let the server read everything sent: without the bound they would
        # hold 200 x 60 KB, 11.4 MiB; within it all but 69 are cut.
        expected = FLOOD - BOUND // HALF_LINE
        deadline = time.monotonic() + 20
        while server(monitor)["unfinished_cuts"] < expected:
            assert time.monotonic() < deadline, server(monitor)
            time.sleep(0.05)
        time.sleep(0.2)
        figures = server(monitor)
        peak = max(peak, rss(pid))
        held = max(held, figures["unfinished_bytes"])
        print(f"RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB; "
              f"held at most {held / MiB:.2f} MiB; {figures}")

        assert figures["unfinished_limit_bytes"] == BOUND
        assert 0 < held <= BOUND
        cuts = figures["unfinished_cuts"]
        assert cuts == expected, figures
        assert figures["unfinished_discarded_bytes"] <= cuts * HALF_LINE
        assert figures["unfinished_discarded_bytes"] > (cuts - 1) * HALF_LINE // 2
        assert peak - baseline < BOUND + MARGIN, (peak - baseline) / MiB
        closed = closedCount(flood, cuts)
        assert closed == cuts, (closed, cuts)
        samples = metricSamples(monitorGet(monitor, "/metrics").decode())
        assert sample(samples, "backplane_unfinished_limit_bytes") == BOUND
        assert sample(samples, "backplane_unfinished_bytes") == figures["unfinished_bytes"]
        assert sample(samples, "backplane_unfinished_cuts_total") == cuts
        stats: dict[str, Any] = monitorStats(monitor)
        discarded = sum(source["counters"]["discarded_bytes"] for source in stats["services"]
                        if source["kind"] == "listen")
        assert discarded == figures["unfinished_discarded_bytes"]

        # The clients that complete their lines were never cut: their lines
        # are published, whole; the half lines of the flood never are.
        for sock in honest:
            assert not isClosed(sock)
            sock.sendall(b" and the rest\n")
        lines = readLines(reader, HONEST)
        assert sorted(lines) == [b"honest %02d, half and the rest" % i
                                 for i in range(HONEST)]
        # A new publisher publishes as ever.
        with socket.create_connection(("127.0.0.1", pub)) as again:
            again.sendall(b"still here\n")
        assert readLines(reader, 1) == [b"still here"]

        # The rest of the flood goes: nothing is held any more.
        for sock in flood:
            sock.close()
        deadline = time.monotonic() + 20
        while server(monitor)["unfinished_bytes"]:
            assert time.monotonic() < deadline, server(monitor)
            time.sleep(0.05)
        assert server(monitor)["unfinished_connections"] == 0
        # One log line a cut.
        assert twistd.text().count("max_unfinished_total") == cuts
    finally:
        for sock in sockets:
            sock.close()
        twistd.stop()


PORTS_CONFIG = """
[limits]
max_unfinished_total = 1048576

[backplane.DATA]

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "DATA"

[[listen]]
endpoint = "tcp:{ws}:interface=127.0.0.1"
protocol = "websocket"
publish_to = "DATA"
max_line_length = 262144

[[listen]]
endpoint = "tcp:{redis}:interface=127.0.0.1"
protocol = "redis"
backplanes = ["DATA"]
max_request = 262144

[monitor]
endpoint = "tcp:{monitor}:interface=127.0.0.1"
"""


def waitForHeld(monitor: int, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while not check((figures := server(monitor))["unfinished_bytes"]):
        assert time.monotonic() < deadline, figures
        time.sleep(0.05)
    return figures


def test_webSocketAndRedisClientsCounted(tmp_path):
    """
    A WebSocket client's unfinished message and a Redis client's unfinished
    request count with line clients' half lines; holding the most, they
    are cut first: the WebSocket client gets a Close frame (1008), the
    Redis client's connection is closed.
    """
    pub, ws, redis, monitor = freePort(), freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=PORTS_CONFIG.format(
        pub=pub, ws=ws, redis=redis, monitor=monitor)).start()
    sockets: list[socket.socket] = []
    try:
        for port in (pub, ws, redis, monitor):
            twistd.waitForPort(port)
        websocket = wsConnect(ws)
        sockets.append(websocket)
        websocket.sendall(clientFrame(b"w" * 200_000, fin=False))
        waitForHeld(monitor, lambda n: n == 200_000)
        client = socket.create_connection(("127.0.0.1", redis))
        sockets.append(client)
        client.sendall(encodeCommand(b"PUBLISH", b"DATA", b"r" * 150_000)[:100_000])
        waitForHeld(monitor, lambda n: n == 300_000)
        lines = []
        for i in range(18):
            sock = socket.create_connection(("127.0.0.1", pub))
            sockets.append(sock)
            lines.append(sock)
            sock.sendall(b"%08d" % i + b"x" * (HALF_LINE - 8))
        # 300,000 + 18 x 60,000: past 1 MiB, then within it once the
        # WebSocket client (200,000) and the Redis client (100,000) and
        # one line client are cut.
        figures = waitForHeld(monitor, lambda n: n == 17 * HALF_LINE)
        assert figures["unfinished_cuts"] == 3, figures
        assert figures["unfinished_discarded_bytes"] == 360_000, figures
        opcode, payload = wsReceive(websocket)
        assert (opcode, payload[:2]) == (8, b"\x03\xf0"), (opcode, payload)
        client.settimeout(10)
        assert client.recv(100) == b""
        assert closedCount(lines, 1) == 1
        stats: dict[str, Any] = monitorStats(monitor)
        discarded = {source["info"]["protocol"]: source["counters"]["discarded_bytes"]
                     for source in stats["services"] if source["kind"] == "listen"}
        assert discarded == {"lines": 60_000, "websocket": 200_000, "redis": 100_000}
        log = twistd.text()
        assert log.count("max_unfinished_total") == 3, log
        assert "dropping connection" not in log, log
    finally:
        for sock in sockets:
            sock.close()
        twistd.stop()
