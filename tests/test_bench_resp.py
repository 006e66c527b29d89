"""
The benchmark's fan-out over the Redis protocol (python -m bench fanout
--only resp): the config it writes and its table.  No sockets, no processes.
"""

import sys

from twisted.trial.unittest import SynchronousTestCase

from backplane.config import parse_config
from bench import report
from bench.servers import endpoint, toml_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def row(server: str, subscribers: int, rate: float, cpu: float) -> dict[str, object]:
    return {"scenario": "resp", "repeat": 1, "server": server, "S": subscribers,
            "delivered_msgs_per_s": rate, "server_cpu_us_per_delivery": cpu, "lost": 0,
            "status": "ok"}


class RespScenarioTests(SynchronousTestCase):
    def test_config(self) -> None:
        """
        The harness writes a Redis-protocol port serving its backplane.
        """
        text = toml_config(["BENCH"], listen=[
            {"endpoint": endpoint(6380), "protocol": "redis", "backplanes": ["BENCH"]}])
        (listen,) = parse_config(tomllib.loads(text)).listen
        self.assertEqual((listen.protocol, listen.backplanes), ("redis", ("BENCH",)))

    def test_table(self) -> None:
        """
        The runs over the Redis protocol get their table, with backplane's
        ratios over Redis's.
        """
        runs = [row("backplane", 100, 4e6, 0.1), row("redis", 100, 2e6, 0.3)]
        data = report.document({}, runs, {})
        self.assertEqual(data["resp_ratios"][0]["delivered_msgs_per_s"]["median"], 2.0)
        table = report.fanout_table(data["summary"], data["resp_ratios"], "resp")
        self.assertIn("4M", table)
        self.assertIn("0.333", table)
        self.assertEqual(report.fanout_table(data["summary"], []), report.render(
            ["server", "S", "delivered msgs/s", "x Redis", "CPU µs/delivery", "x Redis",
             "srv CPU%", "gen CPU%", "other%", "p50 ms", "p99 ms", "lost", "status"], []))
