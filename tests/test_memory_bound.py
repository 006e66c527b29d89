"""
The service-wide bound on what waits for subscribers ([limits]
max_pending_total) against a real twistd process: many subscribers that
never read, with slow = "drop", each stalled at a different point of the
stream so that what waits for them is not shared; the server's memory stays
within the bound plus each connection's own buffer, the accounted figure
returns to zero when they leave, and later rounds cost no more.
"""

import socket
import time
from typing import Any

from tests.helpers import freePort, metricSamples, sample
from tests.test_flow import rss, stalled
from tests.twistd import Twistd, monitorGet, monitorStats

KiB = 1024
MiB = 1024 * KiB

SUBSCRIBERS = 200
MAX_PENDING = 512 * KiB
BOUND = 8 * MiB
# What each connection may hold besides max_pending: its transport's
# buffer (64 KiB) and the chunk that filled it (a read: 64 KiB at most),
# with room for Python's own overhead per connection.
PER_CONNECTION = 128 * KiB
SLACK = 16 * MiB
# What a later round may add to the first one's peak.
ROUND_SLACK = 4 * MiB

CONFIG = """
[limits]
max_pending_total = {bound}

[backplane.DATA]

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "DATA"

[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "DATA"
max_pending = {max_pending}
slow = "drop"

[monitor]
endpoint = "tcp:{monitor}:interface=127.0.0.1"
"""


def server(tmp_path) -> dict[str, Any]:
    pub, sub, monitor = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=CONFIG.format(
        pub=pub, sub=sub, monitor=monitor, bound=BOUND, max_pending=MAX_PENDING)).start()
    for port in (pub, sub, monitor):
        twistd.waitForPort(port)
    return {"twistd": twistd, "pub": pub, "sub": sub, "monitor": monitor}


def stats(monitor: int) -> dict[str, Any]:
    return monitorStats(monitor)


def metrics(monitor: int) -> str:
    return monitorGet(monitor, "/metrics").decode()


def publish(writer: socket.socket, size: int, start: int) -> int:
    """
    Publish about C{size} bytes of numbered 100-byte lines; the next number.
    """
    count = size // 100
    pad = b"x" * 91
    writer.sendall(b"".join(b"%08d%s\n" % (i, pad) for i in range(start, start + count)))
    return start + count


def waitForFigure(monitor: int, key: str, check: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        figures: dict[str, Any] = stats(monitor)["server"]
        if check(figures[key]):
            return figures
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} is {figures[key]}: {figures}")
        time.sleep(0.05)


def waitForAllRead(monitor: int, published: int, timeout: float = 30) -> None:
    """
    Wait until the server has read and published every line written so far
    (the backplane's C{messages_in}), however busy the machine.
    """
    deadline = time.monotonic() + timeout
    while (read := stats(monitor)["backplanes"]["DATA"]["messages_in"]) < published:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server read {read} of {published} lines")
        time.sleep(0.05)


def stallRound(running: dict[str, Any], writer: socket.socket,
               number: int) -> tuple[list[socket.socket], int, int]:
    """
    Connect the subscribers one after the other, publishing more than
    max_pending between two, so that each holds a stretch of the stream of
    its own; the subscribers, the next line number, and the peak RSS.
    """
    pid = running["twistd"].process.pid
    subscribers, peak = [], 0
    for _ in range(SUBSCRIBERS):
        subscribers.append(stalled(running["sub"]))
        number = publish(writer, MAX_PENDING + 64 * KiB, number)
        peak = max(peak, rss(pid))
    # Let the server read everything published.
    waitForFigure(running["monitor"], "pending_bytes", lambda n: n > 0)
    waitForAllRead(running["monitor"], number)
    return subscribers, number, max(peak, rss(pid))


def test_stalledSubscribersStayWithinTheBound(tmp_path):
    running = server(tmp_path)
    twistd, monitor = running["twistd"], running["monitor"]
    pid = twistd.process.pid
    try:
        baseline = rss(pid)
        writer = socket.create_connection(("127.0.0.1", running["pub"]))
        subscribers, number, peak = stallRound(running, writer, 0)
        figures = stats(monitor)["server"]
        assert figures["pending_limit_bytes"] == BOUND
        assert 0 < figures["pending_bytes"] <= BOUND
        assert figures["pending_cuts"] > 0, figures
        assert figures["pending_dropped"] > 0 and figures["pending_disconnects"] == 0
        assert stats(monitor)["backplanes"]["DATA"]["dropped"] >= figures["pending_dropped"]
        # Without the bound each would hold max_pending of its own: 100 MiB.
        allowed = BOUND + SUBSCRIBERS * PER_CONNECTION + SLACK
        assert peak - baseline < allowed, (peak - baseline) / MiB
        samples = metricSamples(metrics(monitor))
        assert sample(samples, "backplane_pending_limit_bytes") == BOUND
        assert 0 < sample(samples, "backplane_pending_bytes") <= BOUND
        assert sample(samples, "backplane_pending_dropped_total") > 0
        assert sample(samples, "backplane_pending_cuts_total") > 0
        print(f"RSS: baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")

        # They leave: what was accounted returns to nothing.
        for sock in subscribers:
            sock.close()
        waitForFigure(monitor, "pending_bytes", lambda n: n == 0)
        assert stats(monitor)["server"]["pending_subscribers"] == 0
        afterFirst = rss(pid)
        print(f"RSS after they left: {afterFirst / MiB:.1f} MiB")

        # Later rounds: the memory freed is used again, not added to (a
        # lost connection's transport lets go of its buffer at once, not when
        # Python's cyclic collector gets to it).
        for _ in range(2):
            subscribers, number, later = stallRound(running, writer, number)
            for sock in subscribers:
                sock.close()
            waitForFigure(monitor, "pending_bytes", lambda n: n == 0)
            print(f"RSS: later peak {later / MiB:.1f} MiB, after {rss(pid) / MiB:.1f} MiB")
            assert later < max(peak, afterFirst) + ROUND_SLACK, (peak / MiB, later / MiB)
        writer.close()
        # The publisher and a fresh subscriber are unaffected.
        reader = socket.create_connection(("127.0.0.1", running["sub"]))
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", running["pub"])) as again:
            again.sendall(b"still here\n")
        reader.settimeout(10)
        assert reader.recv(100) == b"still here\n"
        reader.close()
    finally:
        twistd.stop()
