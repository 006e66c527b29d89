"""
C{python -m bench history}: the replaying client's counter, the tables and
ratios, and every scenario run end to end at tiny sizes against real
twistd servers (the rows' structure is checked, never a figure of speed).
"""

import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import report, suite
from bench.__main__ import parser
from bench.load import Placement
from bench.wire import IdLineCounter


def idLines(first, count, epoch=b"k3j9d0a1xz"):
    return b"".join(b"%s:%d M%059d\n" % (epoch, seq, seq) for seq in range(first, first + count))


def countIds(data, size):
    counter = IdLineCounter()
    buffer = bytearray(max(size, 1) + 16)
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        buffer[:len(chunk)] = chunk
        counter.feed(buffer, len(chunk))
    return counter


class IdLineCounterTests(SynchronousTestCase):
    def test_everyChunkSize(self):
        """
        Whatever the reads, every line is counted, the first line's SEQ is
        known and the last line's SEQ is reached, with nothing bad or out
        of order; lines of other lengths (probes) do not matter.
        """
        data = idLines(7, 30) + b"k3j9d0a1xz:37 Q0000\n" + idLines(38, 5)
        for size in range(1, len(data) + 1, 5):
            counter = countIds(data, size)
            self.assertEqual(
                (counter.received, counter.first, counter.last, counter.bad,
                 counter.sequence_errors, counter.epoch),
                (36, 7, 42, 0, 0, b"k3j9d0a1xz"), f"reads of {size}")

    def test_missingLine(self):
        """
        A lost line shows as a sequence error on a later read.
        """
        counter = countIds(idLines(1, 10) + idLines(12, 10), 200)
        self.assertEqual(counter.received, 20)
        self.assertGreater(counter.sequence_errors, 0)

    def test_otherEpoch(self):
        counter = countIds(idLines(1, 10) + idLines(11, 10, epoch=b"other"), 300)
        self.assertGreater(counter.sequence_errors, 0)

    def test_notIds(self):
        """
        A GAP or ERR line where an id line should be is bad; so is a GAP
        line among them, which also shifts the count.
        """
        self.assertEqual(countIds(b"ERR bad RESUME: x\n", 100).bad, 2)
        for after in (idLines(4, 3), idLines(9, 3)):
            counter = countIds(idLines(1, 3) + b"GAP k3j9d0a1xz:3 k3j9d0a1xz:9\n" + after, 1000)
            self.assertGreater(counter.sequence_errors, 0)
        self.assertEqual(countIds(b"GAP 0 k3j9d0a1xz:5\n" + idLines(5, 3), 1000).first, 0)


class HistoryReportTests(SynchronousTestCase):
    def test_ratios(self):
        """
        With a history / without, and with a store / without, by S, paired
        by repeat.
        """
        runs = [
            {"scenario": "history", "repeat": r, "server": "backplane", "kind": kind, "S": 100,
             "delivered_msgs_per_s": rate, "server_cpu_us_per_delivery": cpu}
            for r, kind, rate, cpu in [(1, "no history", 100, 0.1), (1, "history", 90, 0.1),
                                       (1, "store", 80, 0.2), (2, "store", 70, 0.1),
                                       (2, "no history", 100, 0.1), (2, "history", 100, 0.1)]
        ]
        ratios = {r["kind"]: r for r in report.history_ratios(runs)}
        self.assertEqual(ratios["history"]["delivered_msgs_per_s"],
                         {"median": 0.95, "min": 0.9, "max": 1.0})
        self.assertEqual(ratios["store"]["server_cpu_us_per_delivery"]["max"], 2.0)
        self.assertEqual(ratios["store"]["S"], 100)

    def test_replayDeltas(self):
        runs = [
            {"scenario": "replay", "repeat": r, "kind": kind, "lat_p50_us": p50,
             "lat_p99_us": p99, "server_cpu_pct": cpu}
            for r, kind, p50, p99, cpu in [(1, "live", 100, 500, 10), (1, "live + replay", 150,
                                                                       900, 30),
                                           (2, "live + replay", 100, 600, 20),
                                           (2, "live", 100, 500, 10)]
        ] + [{"scenario": "replay", "repeat": 1, "kind": "fill"}]
        [deltas] = report.replay_deltas(runs)
        self.assertEqual(deltas["lat_p99_us"], {"median": 250.0, "min": 100.0, "max": 400.0})
        self.assertEqual(deltas["server_cpu_pct"]["min"], 10.0)
        self.assertEqual(report.replay_deltas(runs[:1]), [])

    def test_command(self):
        arguments = parser().parse_args(["history", "--quick", "--repeat", "2",
                                         "--only", "replay", "--only", "memory"])
        self.assertEqual((arguments.command, arguments.quick, arguments.repeat, arguments.only),
                         ("history", True, 2, ["replay", "memory"]))


class HistorySuiteTests(SynchronousTestCase):
    """
    Every scenario of C{python -m bench history}, end to end against real
    twistd servers, at tiny sizes.
    """

    def setUp(self):
        for name, value in [("HISTORY_SUBSCRIBERS", (3,)), ("FANOUT_MESSAGES", {3: 3000}),
                            ("WARM_UP", (2, 500)), ("REPLAY_LINES", 4000),
                            ("HISTORY_MESSAGES", 5000), ("REPLAY_SECONDS", {False: 0.5}),
                            ("LATENCY_SUBSCRIBERS", 4), ("LATENCY_RATE", 2000)]:
            self.patch(suite, name, value)
        folder = tempfile.TemporaryDirectory(prefix="bench-history-test-")
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.suite = suite.Suite(suite.Options(redis=False, workers=2, window=1000),
                                 self.folder, Placement((), ()))

    def rows(self, scenario):
        return {r["kind"]: r for r in self.suite.runs if r["scenario"] == scenario}

    def assertDelivered(self, row, subscribers, messages):
        self.assertEqual((row["status"], row["S"], row["published"], row["lost"]),
                         ("ok", subscribers, messages, 0), row)
        self.assertEqual(row["delivered"], subscribers * messages)

    def test_suite(self):
        self.suite.history_suite()
        self.assertEqual({r["scenario"] for r in self.suite.runs},
                         {"history", "replay", "memory"})

        history = self.rows("history")
        self.assertEqual(list(history), ["no history", "history", "store"])
        for row in history.values():
            self.assertDelivered(row, 3, 3000)
            self.assertIn("server_cpu_us_per_delivery", row)

        replay = self.rows("replay")
        self.assertEqual(set(replay), {"fill", "live", "live + replay"})
        self.assertDelivered(replay["fill"], 1, 4000)
        for kind in ("live", "live + replay"):
            self.assertDelivered(replay[kind], 4, 1000)
            self.assertGreater(replay[kind]["lat_samples"], 0)
            self.assertIn("msg_lat_p99_us", replay[kind])
            self.assertLessEqual(replay[kind]["msg_lat_messages"], 4 * 1000)
            self.assertGreaterEqual(replay[kind]["history_messages"], 4000)
        replayed = replay["live + replay"]
        # RESUME 0: every line the store keeps, from SEQ 1, up to the last
        # one when the run began (and the live ones that came in the same
        # read as that one).
        self.assertEqual(
            (replayed["replay_status"], replayed["replay_first"], replayed["replay_lines"],
             replayed["replay_bad"], replayed["replay_sequence_errors"]),
            ("ok", 1, replayed["replay_last"], 0, 0))
        self.assertGreaterEqual(replayed["replay_last"], replayed["replay_target"])
        self.assertGreaterEqual(replayed["replay_target"], replayed["history_messages"])
        self.assertGreater(replayed["replay_lines_per_s"], 0)
        self.assertNotIn("replay_lines", replay["live"])

        memory = self.rows("memory")
        self.assertEqual(list(memory), ["no history", "history", "history, refilled", "store"])
        for row in memory.values():
            self.assertDelivered(row, 1, 5000)
            self.assertGreater(row["rss_kib"], 0)
            self.assertEqual(row["rss_growth_kib"], row["rss_kib"] - row["rss_baseline_kib"])
        self.assertNotIn("history_messages", memory["no history"])
        self.assertEqual(memory["history"]["rss_baseline_kib"],
                         memory["history, refilled"]["rss_baseline_kib"])
        for kind in ("history", "history, refilled"):
            self.assertEqual(memory[kind]["history_messages"], 5000)
            self.assertIn("rss_bytes_per_line", memory[kind])
        self.assertGreaterEqual(memory["store"]["history_messages"], 5000)

        # Every store was removed with its server.
        self.assertEqual([p for p in self.folder.iterdir() if p.name.startswith("store")], [])

        data = report.document({}, self.suite.runs, self.suite.skipped)
        self.assertEqual({r["kind"] for r in data["history_ratios"]}, {"history", "store"})
        self.assertEqual(len(data["replay_deltas"]), 1)
        text = "\n".join([report.history_table(data["summary"], data["history_ratios"]),
                          report.replay_table(data["summary"], data["replay_deltas"]),
                          report.memory_table(data["summary"])])
        for words in ("x no history", "store", "live + replay", "Filled with 4k lines",
                      "RSS B/kept line", "history, refilled"):
            self.assertIn(words, text)
