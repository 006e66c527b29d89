"""
C{python -m bench sweep} and C{coalesce}, and NATS in the harness: the NATS wire format, the
fixed-rate publisher's send times, the frame counter's spans, the sweep's
ratios and table, and the sweep end to end at a tiny size against real
servers (backplane with and without C{linger}, Redis and NATS; the rows'
structure is checked, never a figure of speed).
"""

import contextlib
import io
import os
import socket
import tempfile
from array import array
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import coalesce, report, suite, wire
from bench.__main__ import main, parser
from bench.load import Placement, Subscribers, data_segments_in
from bench.servers import nats_path, redis_path

SIZE = 64


class NatsWireTests(SynchronousTestCase):
    def test_framing(self):
        framing = wire.nats_framing(b"bench", SIZE)
        self.assertEqual(framing.publish_prefix, b"PUB bench 64\r\n")
        self.assertEqual(framing.deliver_prefix, b"MSG bench 1 64\r\n")
        self.assertEqual(framing.delivered_size(SIZE), 16 + 64 + 2)
        data, n = wire.BatchMaker(framing, 0, SIZE).make(0, 2, 7)
        self.assertEqual(n, 2)
        self.assertEqual(data, b"".join(b"PUB bench 64\r\n" + wire.payload(0, seq, 7, SIZE)
                                        + b"\r\n" for seq in range(2)))

    def test_subscribe(self):
        commands = wire.nats_subscribe(b"bench").split(b"\r\n")
        self.assertTrue(commands[0].startswith(b"CONNECT {"))
        self.assertIn(b'"verbose":false', commands[0])
        self.assertIn(b'"pedantic":false', commands[0])
        self.assertEqual(commands[1:], [b"SUB bench 1", b"PING", b""])

    def test_greetingEnd(self):
        info = b'INFO {"server_id":"x","max_payload":1048576}\r\n'
        self.assertEqual(wire.nats_greeting_end(info), -1)
        self.assertEqual(wire.nats_greeting_end(info + b"PON"), -1)
        whole = info + b"PONG\r\n"
        self.assertEqual(wire.nats_greeting_end(whole + b"MSG bench 1 64\r\n"), len(whole))

    def test_greetingRefused(self):
        self.assertRaises(wire.NatsError, wire.nats_greeting_end,
                          b"INFO {}\r\n-ERR 'Authorization Violation'\r\n")
        self.assertRaises(wire.NatsError, wire.nats_greeting_end, b"HELLO\r\n")

    def test_counter(self):
        """
        A NATS subscriber's stream is counted by bytes, checked and timed on
        its last frame, and with spans on its first frame too.
        """
        frames = b"".join(b"MSG bench 1 64\r\n" + wire.payload(0, seq, 100 + seq, SIZE) + b"\r\n"
                          for seq in range(10))
        latencies, spans = array("q"), array("q")
        counter = Subscribers("", 1, "nats", 1).counter(SIZE, latencies, spans)
        buffer = bytearray(1000)
        # 3 frames, then 2 frames and a half, then the rest (4 and a half).
        for part in (frames[:3 * 82], frames[3 * 82:5 * 82 + 41], frames[5 * 82 + 41:]):
            buffer[:len(part)] = part
            counter.feed(buffer, len(part), 1000)
        self.assertEqual((counter.received, counter.bad, counter.sequence_errors), (10, 0, 0))
        self.assertEqual(list(latencies), [1000 - 102, 1000 - 104, 1000 - 109])
        # (frames, first's latency, last's): the first frame that begins in
        # each chunk.
        self.assertEqual(list(spans), [3, 900, 898, 2, 897, 896, 5, 894, 891])
        self.assertIsInstance(counter, wire.FrameCounter)

    def test_counterSkipsPings(self):
        """
        A PING from the server between two messages, whole or split over
        two reads, is neither counted nor taken for a bad frame.
        """
        framing = wire.nats_framing(b"bench", SIZE)
        frame = [b"MSG bench 1 64\r\n" + wire.payload(0, seq, 0, SIZE) + b"\r\n"
                 for seq in range(6)]
        stream = (frame[0] + b"PING\r\n" + frame[1] + frame[2] + b"PI", b"NG\r\n" + frame[3],
                  frame[4] + b"PING\r", b"\n" + frame[5])
        counter = wire.NatsCounter(framing, SIZE, array("q"))
        for part in stream:
            buffer = bytearray(part)
            counter.feed(buffer, len(part), 1)
        self.assertEqual((counter.received, counter.bad, counter.sequence_errors, counter.pings),
                         (6, 0, 0, 3))

    def test_counterSequence(self):
        framing = wire.nats_framing(b"bench", SIZE)
        frames = b"".join(b"MSG bench 1 64\r\n" + wire.payload(0, seq, 0, SIZE) + b"\r\n"
                          for seq in (0, 2))
        counter = wire.FrameCounter(framing, SIZE, array("q"))
        buffer = bytearray(frames)
        counter.feed(buffer, len(frames), 1)
        self.assertEqual(counter.sequence_errors, 1)


class PacedTests(SynchronousTestCase):
    def test_eachMessageHasTheTimeItWasDue(self):
        maker = wire.BatchMaker(wire.LINES, 3, SIZE)
        data = maker.make_paced(4094, 3, 1_000_000, 100.5)
        self.assertEqual(data, b"".join(
            wire.payload(3, seq, int(1_000_000 + seq * 100.5), SIZE) + b"\n"
            for seq in (4094, 4095, 4096)))


class SweepReportTests(SynchronousTestCase):
    def runs(self):
        rows = []
        for repeat, (plain, lingering, redis) in enumerate([(1.0, 0.2, 0.9), (1.0, 0.3, 1.0)], 1):
            for server, kind, cpu in [("backplane", None, plain),
                                      ("backplane", "linger=0.001", lingering),
                                      ("redis", None, redis)]:
                row = {"scenario": "sweep", "repeat": repeat, "server": server, "S": 100,
                       "rate": 10_000, "delivered_msgs_per_s": 990_000,
                       "server_cpu_us_per_delivery": cpu, "msg_lat_p50_us": 500,
                       "msg_lat_p99_us": 2000 * cpu, "msg_lat_max_us": 3000,
                       "lat_p99_us": 900, "lost": 0, "status": "ok"}
                if kind:
                    row["kind"] = kind
                rows.append(row)
        return rows

    def test_ratios(self):
        ratios = {r["name"]: r for r in report.sweep_ratios(self.runs())}
        self.assertEqual(set(ratios), {"backplane", "backplane linger=0.001"})
        lingering = ratios["backplane linger=0.001"]
        self.assertEqual(lingering["rate"], 10_000)
        self.assertEqual(lingering["server_cpu_us_per_delivery"],
                         {"median": 0.261, "min": 0.222, "max": 0.3})
        self.assertEqual(lingering["msg_lat_p99_us"]["max"], 0.3)

    def test_table(self):
        data = report.document({}, self.runs(), {})
        table = report.sweep_table(data["summary"], data["sweep_ratios"])
        lines = table.splitlines()
        self.assertIn("x offered", lines[0])
        [lingering] = [line for line in lines if line.startswith("backplane linger=0.001")]
        self.assertIn("0.99", lingering)  # delivered / offered
        self.assertIn("0.261 (0.222..0.3)", lingering)

    def test_arguments(self):
        arguments = parser().parse_args(["sweep", "--rates", "1000,5000", "--no-nats"])
        self.assertEqual((arguments.command, arguments.rates, arguments.no_nats),
                         ("sweep", (1000, 5000), True))
        self.assertRaises(SystemExit, parser().parse_args, ["sweep", "--rates", "0"])
        self.assertRaises(SystemExit, parser().parse_args, ["sweep", "--rates", "fast"])


class DataSegmentsTests(SynchronousTestCase):
    """
    L{data_segments_in}: the segments with data a socket received, one a
    C{send} of the other end when it is read before the next.
    """

    def test_oneASend(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assertEqual(data_segments_in(client), 0)
        for _ in range(20):
            server.sendall(b"x" * 10)
            self.assertEqual(client.recv(100), b"x" * 10)
        self.assertEqual(data_segments_in(client), 20)
        # What goes one way only: the server's socket received none.
        self.assertEqual(data_segments_in(server), 0)

    def test_notTCP(self):
        """
        A socket the kernel keeps no TCP figures for: L{None}.
        """
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        self.assertIsNone(data_segments_in(left))


class SweepSuiteTests(SynchronousTestCase):
    """
    The sweep end to end at a tiny size: backplane (linger 0 and 1 ms),
    Redis and NATS, each a real server process.
    """

    def setUp(self):
        self.assertIsNotNone(redis_path(), "redis-server is installed by .ci/run")
        self.assertIsNotNone(nats_path(), "nats-server comes with the test extra")
        for name, value in [("SWEEP_SUBSCRIBERS", 4), ("SWEEP_SECONDS", {False: 0.3}),
                            ("WARM_UP", (2, 300))]:
            self.patch(suite, name, value)
        folder = tempfile.TemporaryDirectory(prefix="bench-sweep-test-")
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.suite = suite.Suite(
            suite.Options(redis=True, nats=True, workers=2, window=1000, rates=(1000, 3000)),
            self.folder, Placement((), ()))

    def test_sweep(self):
        self.suite.sweep()
        rows: dict[tuple[str, int], dict[str, Any]] = {
            (report.sweep_name(r), int(r["rate"])): r for r in self.suite.runs}  # type: ignore[call-overload]
        self.assertEqual(set(rows), {(name, rate)
                                     for name in ("backplane", "backplane linger=0.001",
                                                  "redis", "nats")
                                     for rate in (1000, 3000)})
        for (name, rate), row in rows.items():
            messages = round(rate * 0.3)
            self.assertEqual((row["status"], row["S"], row["published"], row["lost"]),
                             ("ok", 4, messages, 0), (name, row))
            self.assertEqual(row["delivered"], 4 * messages)
            self.assertGreater(row["msg_lat_messages"], 0)
            self.assertLessEqual(row["msg_lat_messages"], 4 * messages)
            for field in ("msg_lat_p50_us", "msg_lat_p99_us", "msg_lat_max_us",
                          "server_cpu_us_per_delivery", "sched_lag_max_us", "msgs_per_write"):
                self.assertIn(field, row)
            self.assertGreaterEqual(row["msgs_per_write"], 1)
            # Every subscriber got its messages in at least one send and at
            # most one a message, besides its subscription's answer.
            self.assertGreaterEqual(row["segments"], 4)
            self.assertLessEqual(row["segments"], 4 * messages + 4 * 2, (name, row))
            self.assertEqual(row["msgs_per_segment"],
                             round(row["delivered"] / row["segments"], 2))
            # Root (CI) may make the fixed-rate publisher real-time.
            self.assertIsInstance(row["publisher_fifo"], bool)
            if os.geteuid() == 0:
                self.assertIs(row["publisher_fifo"], True)
        data = report.document({}, self.suite.runs, self.suite.skipped)
        self.assertEqual({(r["name"], r["rate"]) for r in data["sweep_ratios"]},
                         {(name, rate) for name in ("backplane", "backplane linger=0.001", "nats")
                          for rate in (1000, 3000)})
        table = report.sweep_table(data["summary"], data["sweep_ratios"])
        for name in ("backplane linger=0.001", "redis", "nats"):
            self.assertIn(name, table)
        plotted = self.folder / "sweep.png"
        data["meta"] = {"date": "2026-12-03", "cpus": 2, "reactor": "default"}
        if report.sweep_plot(plotted, data):
            self.assertGreater(plotted.stat().st_size, 1000)


class CoalesceBenchTests(SynchronousTestCase):
    """
    C{python -m bench coalesce}: a smoke run (the figures are not checked,
    only that every run happens and every subscriber got the last round).
    """

    def test_quick(self):
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            self.assertEqual(main(["coalesce", "--quick"]), 0)
        rows = [line for line in output.getvalue().splitlines()[2:] if line.strip()]
        self.assertEqual(len(rows), 3 * len(coalesce.RUNS) + 1)
        for row in rows:
            self.assertTrue(row.endswith("  ok"), row)
        self.assertEqual(sum("0.001" in row.split() for row in rows), len(coalesce.RUNS))
        self.assertEqual(sum("(floor)" in row for row in rows), len(coalesce.RUNS))
