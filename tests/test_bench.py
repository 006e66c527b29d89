"""
The benchmark harness's pure parts (bench/): wire formats, bulk counting,
RESP parsing, statistics and reporting.  No sockets, no processes, no timing.
"""

import sys
from array import array

from twisted.trial.unittest import SynchronousTestCase

from backplane.config import parse_config
from bench import report, stats, wire
from bench.load import Subscribers, assign, shares
from bench.procfs import CLOCK_TICKS, Snapshot
from bench.servers import endpoint, redis_url, toml_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SIZE = 64


def feedInChunks(counter, data, size):
    """
    Feed C{data} to a counter the way a subscriber does: C{size} bytes at a
    time, copied into a reused buffer (C{recv_into}).
    """
    buffer = bytearray(max(size, 1) + 16)
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        buffer[:len(chunk)] = chunk
        counter.feed(buffer, len(chunk), 10**12)


def lines(first, count, sent=10**9, publisher=0):
    return b"".join(wire.payload(publisher, seq, sent, SIZE) + b"\n"
                    for seq in range(first, first + count))


class PayloadTests(SynchronousTestCase):
    def test_layout(self):
        """
        A payload is M, publisher, sequence and send time in fixed-width
        hex, padded with x to its size; parse_payload reads them back.
        """
        data = wire.payload(0x2A, 7, 0x1234, SIZE)
        self.assertEqual(len(data), SIZE)
        self.assertEqual(data[:37], b"M002a" + b"%016x" % 7 + b"%016x" % 0x1234)
        self.assertEqual(data[37:], b"x" * (SIZE - 37))
        self.assertEqual(wire.parse_payload(data), (0x2A, 7, 0x1234))

    def test_tooSmall(self):
        self.assertRaises(ValueError, wire.payload, 0, 0, 0, wire.MIN_SIZE - 1)
        self.assertRaises(ValueError, wire.parse_payload, b"Q0000")


class BatchMakerTests(SynchronousTestCase):
    def test_lines(self):
        """
        A run of messages is the concatenation of the reference payloads,
        each with its own sequence number and the run's send time.
        """
        data, n = wire.BatchMaker(wire.LINES, 3, SIZE).make(100, 50, 0xABC)
        self.assertEqual(n, 50)
        self.assertEqual(data, lines(100, 50, sent=0xABC, publisher=3))

    def test_resp(self):
        framing = wire.resp_framing(b"bench", SIZE)
        data, n = wire.BatchMaker(framing, 0, SIZE).make(0, 3, 5)
        self.assertEqual(n, 3)
        self.assertEqual(data, b"".join(
            wire.publish_command(b"bench", wire.payload(0, seq, 5, SIZE)) for seq in range(3)))

    def test_block(self):
        """
        A run stops at a multiple of 4096 in sequence numbers; the next one
        goes on from there.
        """
        maker = wire.BatchMaker(wire.LINES, 0, SIZE)
        first, n = maker.make(4090, 100, 1)
        self.assertEqual(n, 6)
        second, m = maker.make(4096, 94, 1)
        self.assertEqual(m, 94)
        self.assertEqual(first + second, lines(4090, 100, sent=1))


class LineCounterTests(SynchronousTestCase):
    def stream(self):
        return wire.probe(0) * 3 + lines(0, 40)

    def test_everyChunkSize(self):
        """
        Whatever the chunks, probes attach the subscriber and are not
        counted, every data line is, and nothing is bad or out of order.
        """
        data = self.stream()
        for size in range(1, len(data) + 1, 7):
            latencies = array("q")
            counter = wire.LineCounter(SIZE, latencies)
            feedInChunks(counter, data, size)
            self.assertEqual(
                (counter.received, counter.bad, counter.sequence_errors, counter.attached),
                (40, 0, 0, True), f"chunks of {size}")
            self.assertTrue(counter.aligned)
            self.assertLessEqual(set(latencies), {10**12 - 10**9})
            if size >= 2 * (SIZE + 1):
                self.assertTrue(latencies, f"chunks of {size}")

    def test_oneSampleAChunk(self):
        """
        The bulk path parses only the last complete line of a chunk.
        """
        latencies = array("q")
        counter = wire.LineCounter(SIZE, latencies)
        feedInChunks(counter, wire.probe(0) + lines(0, 1), 100)
        feedInChunks(counter, lines(1, 30), 30 * (SIZE + 1))
        self.assertEqual((counter.received, len(latencies)), (31, 2))

    def test_missingLine(self):
        """
        A lost line (10) shows as a sequence error on the next chunk's last
        line.
        """
        counter = wire.LineCounter(SIZE, array("q"))
        feedInChunks(counter, lines(0, 10) + lines(11, 10), 5 * (SIZE + 1))
        self.assertEqual(counter.received, 20)
        self.assertGreater(counter.sequence_errors, 0)

    def test_mergedLine(self):
        """
        Two lines merged into one (a lost newline) are counted as one line
        and flagged bad.
        """
        data = bytearray(lines(0, 4))
        data[SIZE] = ord("x")
        counter = wire.LineCounter(SIZE, array("q"))
        feedInChunks(counter, lines(0, 1) + bytes(data[:2 * (SIZE + 1)]), 3 * (SIZE + 1))
        self.assertEqual((counter.received, counter.bad), (2, 1))


class FrameCounterTests(SynchronousTestCase):
    def setUp(self):
        self.framing = wire.resp_framing(b"bench", SIZE)

    def push(self, seq):
        return (self.framing.deliver_prefix + wire.payload(0, seq, 10**9, SIZE)
                + self.framing.deliver_suffix)

    def test_everyChunkSize(self):
        data = b"".join(self.push(seq) for seq in range(30))
        self.assertEqual(len(data), 30 * self.framing.delivered_size(SIZE))
        for size in range(1, len(data) + 1, 11):
            counter = wire.FrameCounter(self.framing, SIZE, array("q"))
            feedInChunks(counter, data, size)
            self.assertEqual((counter.received, counter.bad, counter.sequence_errors),
                             (30, 0, 0), f"chunks of {size}")

    def test_foreignFrame(self):
        """
        A frame of another length breaks the alignment: the next checked
        frame is bad.
        """
        data = self.push(0) + b":1\r\n" + self.push(1) + self.push(2)
        counter = wire.FrameCounter(self.framing, SIZE, array("q"))
        feedInChunks(counter, data, len(self.push(0)))
        self.assertGreater(counter.bad, 0)


class WebSocketFrameTests(SynchronousTestCase):
    def test_header(self):
        """
        An unmasked frame's header: the length in 7 bits below 126, in 16
        bits after 126 below 64 KiB, in 64 bits after 127 from there.
        """
        self.assertEqual(wire.frame_header(wire.WS_TEXT, 64), b"\x81\x40")
        self.assertEqual(wire.frame_header(wire.WS_TEXT, 125), b"\x81\x7d")
        self.assertEqual(wire.frame_header(wire.WS_TEXT, 126), b"\x81\x7e\x00\x7e")
        self.assertEqual(wire.frame_header(0x82, 65535), b"\x82\x7e\xff\xff")
        self.assertEqual(wire.frame_header(0x82, 65536),
                         b"\x82\x7f" + (65536).to_bytes(8, "big"))

    def test_parse(self):
        """
        parse_frame finds a frame's payload whatever its header's size, and
        nothing until the whole frame is there.
        """
        for length in (0, 5, 125, 126, 300, 70000):
            data = b"zz" + wire.frame_header(wire.WS_TEXT, length) + b"p" * length + b"\x81"
            end = len(data) - 1
            start = end - length
            self.assertEqual(wire.parse_frame(data, 2), (wire.WS_TEXT, start, end, False))
            for cut in range(2, end, max(1, end // 17)):
                self.assertIsNone(wire.parse_frame(data[:cut], 2), (length, cut))
        self.assertIsNone(wire.parse_frame(data, end))

    def test_masked(self):
        """
        A masked frame (which a server must not send) is found and said to
        be masked: its payload follows the 4-byte mask key.
        """
        data = b"\x81\x85" + b"abcd" + b"01234"
        self.assertEqual(wire.parse_frame(data), (0x81, 6, 11, True))

    def test_framing(self):
        framing = wire.websocket_framing(SIZE)
        self.assertEqual(framing.deliver_prefix, b"\x81\x40")
        self.assertEqual(framing.delivered_size(SIZE), SIZE + 2)


def frames(first, count, sent=10**9):
    return b"".join(b"\x81\x40" + wire.payload(0, seq, sent, SIZE)
                    for seq in range(first, first + count))


PROBE_FRAME = b"\x81\x05" + wire.probe(0)[:-1]


class WebSocketCounterTests(SynchronousTestCase):
    def test_everyChunkSize(self):
        """
        Whatever the reads, probe frames attach the subscriber and are not
        counted, every data frame is, partial frames are kept across reads,
        and nothing is bad or out of order.
        """
        data = PROBE_FRAME * 3 + frames(0, 40)
        for size in range(1, len(data) + 1, 7):
            latencies = array("q")
            counter = wire.WebSocketCounter(SIZE, latencies)
            feedInChunks(counter, data, size)
            self.assertEqual(
                (counter.received, counter.bad, counter.sequence_errors, counter.attached),
                (40, 0, 0, True), f"chunks of {size}")
            self.assertLessEqual(set(latencies), {10**12 - 10**9})
            if size >= 2 * (SIZE + 2):
                self.assertTrue(latencies, f"chunks of {size}")

    def test_oneSampleARead(self):
        """
        After the probes, only the last complete frame of a read is parsed.
        """
        latencies = array("q")
        counter = wire.WebSocketCounter(SIZE, latencies)
        feedInChunks(counter, PROBE_FRAME + frames(0, 1), 100)
        feedInChunks(counter, frames(1, 30), 30 * (SIZE + 2))
        self.assertEqual((counter.received, len(latencies)), (31, 2))

    def test_missingFrame(self):
        """
        A frame that never came shows as a sequence error.
        """
        counter = wire.WebSocketCounter(SIZE, array("q"))
        data = PROBE_FRAME + frames(0, 5) + frames(6, 5)
        feedInChunks(counter, data, 3 * (SIZE + 2))
        self.assertEqual(counter.received, 10)
        self.assertGreater(counter.sequence_errors, 0)

    def test_foreignFrames(self):
        """
        Before the data, a frame that is not a probe (a Close frame, a
        masked frame) is bad; after it, a frame of another size breaks the
        alignment and the next checked frame is bad.
        """
        counter = wire.WebSocketCounter(SIZE, array("q"))
        feedInChunks(counter, b"\x88\x02\x03\xe9" + PROBE_FRAME, 100)
        self.assertEqual((counter.bad, counter.attached), (1, True))
        counter = wire.WebSocketCounter(SIZE, array("q"))
        feedInChunks(counter, frames(0, 2) + b"\x81\x03abc" + frames(2, 3), SIZE + 2)
        self.assertGreater(counter.bad, 0)


class WebSocketHandshakeTests(SynchronousTestCase):
    # RFC 6455, 1.3: the example key and its accept value.
    KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
    ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def response(self, accept=ACCEPT, status=b"101 Switching Protocols",
                 upgrade=b"WebSocket", connection=b"Upgrade"):
        return (b"HTTP/1.1 " + status + b"\r\nServer: x\r\nUpgrade: " + upgrade
                + b"\r\nConnection: " + connection
                + b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    def test_key(self):
        self.assertEqual(wire.websocket_key(b"the sample nonce"), self.KEY)
        self.assertEqual(wire.accept_key(self.KEY), self.ACCEPT)
        self.assertRaises(ValueError, wire.websocket_key, b"short")

    def test_request(self):
        """
        The opening handshake: a GET that asks to upgrade to WebSocket 13
        with the key, and ends with a blank line.
        """
        request = wire.upgrade_request(1502, self.KEY)
        head, _, rest = request.partition(b"\r\n")
        self.assertEqual(head, b"GET / HTTP/1.1")
        self.assertTrue(request.endswith(b"\r\n\r\n"))
        headers = dict(line.split(b": ", 1) for line in rest[:-4].split(b"\r\n"))
        self.assertEqual(headers, {
            b"Host": b"127.0.0.1:1502", b"Upgrade": b"websocket", b"Connection": b"Upgrade",
            b"Sec-WebSocket-Key": self.KEY, b"Sec-WebSocket-Version": b"13",
        })

    def test_accepted(self):
        wire.check_upgrade(self.response()[:-4], self.KEY)
        wire.check_upgrade(self.response(connection=b"keep-alive, Upgrade"), self.KEY)

    def test_refused(self):
        """
        Anything but a 101 with the right headers and accept value is an
        error that says what was wrong.
        """
        for response, words in [
            (self.response(status=b"426 Upgrade Required"), "426"),
            (self.response(accept=b"wrong="), "Sec-WebSocket-Accept"),
            (self.response(upgrade=b"h2c"), "Upgrade"),
            (self.response(connection=b"close"), "Connection"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "SSH"),
        ]:
            e = self.assertRaises(wire.WebSocketError, wire.check_upgrade, response, self.KEY)
            self.assertIn(words, str(e))

    def test_end(self):
        """
        The answer ends after its blank line; frames may follow it.
        """
        response = self.response()
        self.assertEqual(wire.upgrade_response_end(response + PROBE_FRAME), len(response))
        self.assertEqual(wire.upgrade_response_end(response[:-1]), -1)


class RespTests(SynchronousTestCase):
    def test_values(self):
        data = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n"
        values, used = wire.parse_resp(data + b"*2\r\n")
        self.assertEqual(values, [b"OK", 42, b"abc", None, [b"subscribe", b"bench", 1]])
        self.assertEqual(used, len(data))

    def test_incomplete(self):
        """
        An incomplete value at the end is left for later.
        """
        whole = b"*2\r\n$3\r\nfoo\r\n:7\r\n"
        for end in range(len(whole)):
            values, used = wire.parse_resp(b":1\r\n" + whole[:end])
            self.assertEqual((values, used), ([1], 4))

    def test_error(self):
        [error], _ = wire.parse_resp(b"-ERR max number of clients reached\r\n")
        self.assertIsInstance(error, wire.RespError)
        self.assertIn("max number", str(error))

    def test_notResp(self):
        self.assertRaises(wire.RespError, wire.parse_resp, b"hello\r\n")
        self.assertRaises(wire.RespError, wire.parse_resp, b"$3\r\nabcd\r\n")

    def test_commands(self):
        self.assertEqual(wire.subscribe_command(b"ch"),
                         b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        self.assertEqual(wire.parse_resp(wire.publish_command(b"ch", b"hi"))[0],
                         [[b"PUBLISH", b"ch", b"hi"]])


class MessageReaderTests(SynchronousTestCase):
    def test_lines(self):
        reader = wire.MessageReader("lines")
        self.assertEqual(reader.feed(b"Thu Nov 26 08:48:23 2026\nQ00"), [
            b"Thu Nov 26 08:48:23 2026"])
        self.assertEqual(reader.feed(b"00\n"), [b"Q0000"])

    def test_resp(self):
        push = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$2\r\nhi\r\n"
        reader = wire.MessageReader("resp")
        self.assertEqual(reader.feed(push[:10]), [])
        self.assertEqual(reader.feed(push[10:] + push + b":1\r\n"), [b"hi", b"hi"])
        self.assertEqual(reader.bad, 1)


class FileCheckerTests(SynchronousTestCase):
    def test_interleaved(self):
        """
        Lines of several publishers, interleaved, each in order: all good.
        """
        checker = wire.FileChecker(2, SIZE)
        data = b"".join(lines(seq, 1, publisher=p) for seq in range(5) for p in (0, 1))
        for start in range(0, len(data), 100):
            checker.feed(data[start:start + 100])
        checker.close()
        self.assertEqual((checker.lines, checker.counts, checker.bad, checker.out_of_order),
                         (10, [5, 5], 0, 0))

    def test_problems(self):
        checker = wire.FileChecker(1, SIZE)
        checker.feed(lines(0, 2) + lines(3, 1) + lines(2, 1) + b"short\n" + lines(4, 1)[:10])
        checker.close()
        self.assertEqual(checker.counts, [4])
        self.assertEqual(checker.bad, 2)  # the short line, and the unfinished last one
        self.assertEqual(checker.out_of_order, 2)  # 3 after 1, and 2 after 3


class StatsTests(SynchronousTestCase):
    def test_percentile(self):
        values = list(range(1, 101))
        self.assertEqual(stats.percentile(values, 50), 50)
        self.assertEqual(stats.percentile(values, 99), 99)
        self.assertEqual(stats.percentile(values, 100), 100)
        self.assertEqual(stats.percentile([7], 99), 7)
        self.assertRaises(ValueError, stats.percentile, [], 50)
        self.assertRaises(ValueError, stats.percentile, values, 0)

    def test_latencySummary(self):
        summary = stats.latency_summary([3000, 1000, 2000], "lat")
        self.assertEqual(summary, {"lat_samples": 3, "lat_p50_us": 2.0, "lat_p99_us": 3.0,
                                   "lat_max_us": 3.0})
        self.assertEqual(stats.latency_summary([], "x"), {"x_samples": 0})

    def test_aggregate(self):
        runs = [
            {"server": "a", "S": 1, "rate": 5.0, "status": "ok", "pinned": True},
            {"server": "b", "S": 1, "rate": 1.0, "status": "ok", "pinned": True},
            {"server": "a", "S": 1, "rate": 3.0, "status": "lost=2", "pinned": True},
            {"server": "a", "S": 1, "rate": 4.0, "status": "ok", "pinned": True},
        ]
        a, b = stats.aggregate(runs, ("server", "S"))
        self.assertEqual(a["repeats"], 3)
        self.assertEqual(a["rate"], {"median": 4.0, "min": 3.0, "max": 5.0})
        self.assertEqual(a["status"], "ok / lost=2")
        self.assertIs(a["pinned"], True)
        self.assertEqual((b["server"], b["repeats"]), ("b", 1))
        self.assertEqual(stats.median(a, "rate"), 4.0)
        self.assertIsNone(stats.median(a, "missing"))


class ReportTests(SynchronousTestCase):
    def test_numbers(self):
        self.assertEqual(report.significant(0.07789), "0.0779")
        self.assertEqual(report.significant(1.2249), "1.22")
        self.assertEqual(report.significant(586274), "586274")
        self.assertEqual(report.significant(0), "0")
        self.assertEqual(report.si(9730386), "9.73M")
        self.assertEqual(report.si(586274), "586k")
        self.assertEqual(report.si(12), "12")

    def test_cell(self):
        row = {"x": {"median": 2.0, "min": 1.0, "max": 3.0}, "y": 5, "s": "ok"}
        self.assertEqual(report.cell(row, "x"), "2 (1..3)")
        self.assertEqual(report.cell(row, "y"), "5")
        self.assertEqual(report.cell(row, "s"), "ok")
        self.assertEqual(report.cell(row, "missing"), "-")

    def test_ratios(self):
        """
        backplane / Redis, paired by repeat, summarized over the repeats.
        """
        runs = [
            {"scenario": "fanout", "repeat": r, "server": server, "S": 10,
             "delivered_msgs_per_s": rate, "server_cpu_us_per_delivery": cpu}
            for r, server, rate, cpu in [(1, "backplane", 300, 0.1), (1, "redis", 100, 0.4),
                                         (2, "backplane", 200, 0.1), (2, "redis", 100, 0.2)]
        ]
        [ratio] = report.fanout_ratios(runs)
        self.assertEqual(ratio["S"], 10)
        self.assertEqual(ratio["delivered_msgs_per_s"], {"median": 2.5, "min": 2.0, "max": 3.0})
        self.assertEqual(ratio["server_cpu_us_per_delivery"]["min"], 0.25)

    def test_nodesRatios(self):
        """
        Two nodes / one node by S, paired by repeat.
        """
        runs = [
            {"scenario": "nodes", "repeat": r, "server": "backplane", "kind": kind, "S": 100,
             "delivered_msgs_per_s": rate, "server_cpu_us_per_delivery": cpu}
            for r, kind, rate, cpu in [(1, "1 node", 100, 0.1), (1, "2 nodes", 80, 0.12),
                                       (2, "2 nodes", 90, 0.1), (2, "1 node", 100, 0.1)]
        ]
        [ratio] = report.nodes_ratios(runs)
        spread = ratio["delivered_msgs_per_s"]
        self.assertEqual((spread["min"], spread["max"]), (0.8, 0.9))
        self.assertAlmostEqual(spread["median"], 0.85)
        self.assertEqual(ratio["server_cpu_us_per_delivery"]["max"], 1.2)

    def test_each(self):
        """
        Several figures of a row in one cell: medians, or the worst values.
        """
        row = {"A_lost": {"median": 0, "min": 0, "max": 2}, "B_lost": 0, "x": 1.5}
        self.assertEqual(report.each(row, ["A_lost", "B_lost"]), "0/0")
        self.assertEqual(report.each(row, ["A_lost", "B_lost"], worst_of=True), "2/0")
        self.assertEqual(report.each(row, ["x", "y"]), "1.5/-")
        self.assertEqual(report.each(row, ["y", "z"]), "-")

    def test_render(self):
        table = report.render(["server", "msgs/s", "status"], [["redis", "1.2M", "ok"]])
        self.assertEqual(table.splitlines(), [
            "server  msgs/s  status",
            "------  ------  ------",
            "redis     1.2M  ok",
        ])


class HelperTests(SynchronousTestCase):
    def test_shares(self):
        self.assertEqual(shares(10, 3), [4, 3, 3])
        self.assertEqual(shares(1, 4), [1])
        self.assertEqual(sum(shares(1000, 7)), 1000)

    def test_assign(self):
        """
        Each group of subscribers is spread evenly over the processes; a
        process takes a share of every group that has enough subscribers.
        """
        a = Subscribers("A", 1, "lines", 5)
        b = Subscribers("B", 2, "websocket", 1)
        self.assertEqual(assign([a, b], 2), [[(0, 3), (1, 1)], [(0, 2)]])
        self.assertEqual(assign([b], 3), [[(0, 1)]])
        parts = assign([a, b, a], 4)
        self.assertEqual(sum(n for part in parts for g, n in part if g == 2), 5)

    def test_counters(self):
        """
        A group's counters speak its protocol.
        """
        latencies = array("q")
        for protocol, kind in [("lines", wire.LineCounter), ("resp", wire.FrameCounter),
                               ("websocket", wire.WebSocketCounter)]:
            counter = Subscribers("", 1, protocol, 1).counter(SIZE, latencies)
            self.assertIsInstance(counter, kind)
        # Only the line and WebSocket streams have probes to wait for.
        self.assertTrue(Subscribers("", 1, "resp", 1).counter(SIZE, latencies).attached)
        self.assertFalse(Subscribers("", 1, "websocket", 1).counter(SIZE, latencies).attached)

    def test_config(self):
        """
        The configs the harness writes are valid backplane configs.
        """
        text = toml_config(["BENCH"], listen=[
            {"endpoint": endpoint(1600), "publish_to": "BENCH", "backlog": 10240},
            {"endpoint": endpoint(1500), "subscribe_to": "BENCH", "slow": "drop"},
        ], clock=[{"publish_to": "BENCH", "interval": 1.0}],
            file=[{"subscribe_to": "BENCH", "path": "x.data", "flush_interval": 0.1}])
        config = parse_config(tomllib.loads(text))
        self.assertEqual(config.listen[1].slow, "drop")
        self.assertEqual(config.listen[0].backlog, 10240)
        self.assertEqual(config.file[0].flush_interval, 0.1)

    def test_sharedConfig(self):
        """
        A node's config: a shared backplane and the [redis] table.
        """
        text = toml_config({"BENCH": {"shared": True}}, {"redis": {"url": redis_url(6400)}},
                           listen=[{"endpoint": endpoint(1600), "subscribe_to": "BENCH",
                                    "protocol": "websocket"}])
        config = parse_config(tomllib.loads(text))
        self.assertTrue(config.backplanes["BENCH"].shared)
        assert config.redis is not None
        self.assertEqual(config.redis.url, "redis://127.0.0.1:6400/0")
        self.assertEqual(config.listen[0].protocol, "websocket")

    def test_usage(self):
        """
        CPU figures over a window: seconds of CPU, and the host's time in
        percent of one CPU.
        """
        ticks = CLOCK_TICKS
        before = Snapshot(0, 0, 0, (0,) * 8)
        after = Snapshot(2 * 10**9, 10**9, 5 * 10**8, (ticks, 0, ticks, 0, 0, 0, ticks // 2, 0))
        usage = before.usage(after)
        self.assertEqual(usage["window_s"], 2.0)
        self.assertEqual((usage["server_cpu_s"], usage["gen_cpu_s"]), (1.0, 0.5))
        self.assertEqual(usage["host_busy_pct"], 125.0)
        self.assertEqual(usage["host_softirq_pct"], 25.0)
        self.assertEqual(usage["host_other_pct"], 50.0)

    def test_usageByProcess(self):
        """
        With names for the server processes, each one's CPU seconds too.
        """
        host = (0,) * 8
        before = Snapshot(0, 3, 0, host, (1, 2))
        after = Snapshot(10**9, 3 + 3 * 10**8, 0, host, (1 + 10**8, 2 + 2 * 10**8))
        usage = before.usage(after, ["A", "redis"])
        self.assertEqual((usage["A_cpu_s"], usage["redis_cpu_s"], usage["server_cpu_s"]),
                         (0.1, 0.2, 0.3))
        self.assertNotIn("A_cpu_s", before.usage(after))

