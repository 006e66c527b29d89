"""
The benchmark's fan-out beside idle pattern subscriptions (python -m bench
fanout --only patterns): its wire format and report, and a tiny real run of
the command against backplane's Redis port and Redis.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import report
from bench.patterns import await_psubscribed, pattern_names, psubscribe_command
from bench.wire import RespError, parse_resp

ROOT = Path(__file__).resolve().parent.parent


def row(server: str, kind: str, repeat: int, rate: float, cpu: float,
        patterns: int) -> dict[str, object]:
    return {"scenario": "patterns", "repeat": repeat, "server": server, "kind": kind, "S": 100,
            "patterns": patterns, "delivered_msgs_per_s": rate,
            "server_cpu_us_per_delivery": cpu, "lost": 0, "status": "ok"}


class PatternWireTests(SynchronousTestCase):
    def test_command(self) -> None:
        """
        An idle client's patterns are distinct, match neither channel the
        publisher uses, and go in one PSUBSCRIBE.
        """
        names = pattern_names(7, 3)
        self.assertEqual(names, [b"idle.7.0.*", b"idle.7.1.*", b"idle.7.2.*"])
        self.assertEqual(parse_resp(psubscribe_command(names)),
                         ([[b"PSUBSCRIBE", *names]], len(psubscribe_command(names))))

    def confirm(self, answer: bytes, names: list[bytes]) -> None:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        theirs.sendall(answer)
        await_psubscribed(ours, names, 5)

    def test_confirmed(self) -> None:
        """
        Every pattern's confirmation, with the counts 1, 2, ..., in order.
        """
        names = pattern_names(0, 2)
        self.confirm(b"*3\r\n$10\r\npsubscribe\r\n$10\r\nidle.0.0.*\r\n:1\r\n"
                     b"*3\r\n$10\r\npsubscribe\r\n$10\r\nidle.0.1.*\r\n:2\r\n", names)

    def test_refused(self) -> None:
        """
        An error instead of a confirmation is not taken for one.
        """
        with self.assertRaises(RespError):
            self.confirm(b"-ERR no\r\n", pattern_names(0, 1))


class PatternReportTests(SynchronousTestCase):
    def test_ratios(self) -> None:
        """
        With / without, by server, from runs of the same repeat; backplane's
        against the 1.1x target, flagged in the table.
        """
        runs = [row("backplane", "no patterns", 1, 4e6, 0.2, 0),
                row("backplane", "patterns", 1, 4e6, 0.21, 10000),
                row("redis", "no patterns", 1, 3e6, 0.3, 0),
                row("redis", "patterns", 1, 1e6, 0.9, 10000)]
        data = report.document({}, runs, {})
        ratios = {r["server"]: r for r in data["patterns_ratios"]}
        self.assertEqual(ratios["backplane"]["server_cpu_us_per_delivery"]["median"], 1.05)
        self.assertIs(ratios["backplane"]["target_met"], True)
        self.assertEqual(ratios["redis"]["server_cpu_us_per_delivery"]["median"], 3.0)
        self.assertNotIn("target_met", ratios["redis"])
        table = report.patterns_table(data["summary"], data["patterns_ratios"])
        self.assertIn("target at most 1.1x the CPU per delivery: met", table)
        runs[1] = row("backplane", "patterns", 1, 4e6, 0.3, 10000)
        table = report.patterns_table(report.summarize(runs), report.patterns_ratios(runs))
        self.assertIn("target at most 1.1x the CPU per delivery: MISSED", table)


class PatternRunTests(SynchronousTestCase):
    def test_run(self) -> None:
        """
        A tiny real run of C{python -m bench fanout --only patterns}: both
        servers measured without and with the patterns (every one
        confirmed, 10 a client and the rest on the last), nothing lost, and
        the ratios are those of the measured rows.
        """
        folder = tempfile.TemporaryDirectory(prefix="bench-patterns-")
        self.addCleanup(folder.cleanup)
        out = Path(folder.name)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run(
            [sys.executable, "-m", "bench", "fanout", "--only", "patterns", "--patterns", "25",
             "--quick", "--out", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        (path,) = out.glob("fanout-*.json")
        data = json.loads(path.read_text())
        runs = {(r["server"], r["kind"]): r for r in data["runs"]}
        self.assertEqual(set(runs), {(server, kind) for server in ("backplane", "redis")
                                     for kind in ("no patterns", "patterns")})
        for (_server, kind), measured in runs.items():
            self.assertEqual(measured["status"], "ok", measured)
            self.assertEqual(measured["lost"], 0)
            self.assertEqual(measured["S"], 100)
            self.assertEqual(measured["patterns"], 25 if kind == "patterns" else 0)
            self.assertGreater(measured["delivered_msgs_per_s"], 0)
            self.assertGreater(measured["server_cpu_us_per_delivery"], 0)
        ratios = {r["server"]: r for r in data["patterns_ratios"]}
        self.assertEqual(set(ratios), {"backplane", "redis"})
        for server, ratio in ratios.items():
            for field in ("server_cpu_us_per_delivery", "delivered_msgs_per_s"):
                expected = round(runs[server, "patterns"][field]
                                 / runs[server, "no patterns"][field], 3)
                self.assertEqual(ratio[field]["median"], expected)
        met = ratios["backplane"]["target_met"]
        self.assertEqual(met, ratios["backplane"]["server_cpu_us_per_delivery"]["median"] <= 1.1)
        self.assertIn("target at most 1.1x the CPU per delivery: "
                      + ("met" if met else "MISSED"), result.stdout)
        self.assertIn("--patterns 25", result.stdout)
