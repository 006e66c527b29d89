"""
The service-wide bound on unfinished lines ([limits] max_unfinished_total)
against a real twistd process: many connections each send most of a line
and then nothing; the bytes the server holds for them stay within the
bound (the connections holding the most are disconnected), its memory grows
by less than the bound and a margin, and clients that complete their lines,
and a new publisher, are unaffected.
"""

import json
import socket
import time
import urllib.request
from typing import Any

from tests.helpers import freePort, metricSamples, sample
from tests.test_flow import rss
from tests.twistd import Twistd, readLines

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


def get(monitor: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def server(monitor: int) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads(get(monitor, "/stats"))["server"]
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
        # Let the server read everything sent.
        time.sleep(1)
        figures = server(monitor)
        peak = max(peak, rss(pid))
        held = max(held, figures["unfinished_bytes"])
        print(f"RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB; "
              f"held at most {held / MiB:.2f} MiB; {figures}")

        assert figures["unfinished_limit_bytes"] == BOUND
        assert 0 < held <= BOUND
        # Without the bound they would hold 200 x 60 KB: 11.4 MiB.
        cuts = figures["unfinished_cuts"]
        assert cuts >= FLOOD - BOUND // HALF_LINE, figures
        assert figures["unfinished_discarded_bytes"] <= cuts * HALF_LINE
        assert figures["unfinished_discarded_bytes"] > (cuts - 1) * HALF_LINE // 2
        assert peak - baseline < BOUND + MARGIN, (peak - baseline) / MiB
        closed = sum(isClosed(sock) for sock in flood)
        assert closed == cuts, (closed, cuts)
        samples = metricSamples(get(monitor, "/metrics").decode())
        assert sample(samples, "backplane_unfinished_limit_bytes") == BOUND
        assert sample(samples, "backplane_unfinished_bytes") == figures["unfinished_bytes"]
        assert sample(samples, "backplane_unfinished_cuts_total") == cuts
        stats: dict[str, Any] = json.loads(get(monitor, "/stats"))
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
        assert "max_unfinished_total" in twistd.output.read_text()
    finally:
        for sock in sockets:
            sock.close()
        twistd.stop()
