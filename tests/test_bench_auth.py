"""
C{python -m bench fanout --only auth}: fan-out through a pair of ports
without C{auth} and a pair with C{auth = true}, end to end at a tiny size
against a real server (the rows' structure and the ports' access are
checked, never a figure of speed).
"""

import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import report, suite
from bench.load import Placement


class AuthSuiteTests(SynchronousTestCase):
    def setUp(self):
        for name, value in [("AUTH_SUBSCRIBERS", 4), ("FANOUT_MESSAGES", {4: 20_000}),
                            ("LATENCY_RATE", 1000), ("WARM_UP", (2, 300))]:
            self.patch(suite, name, value)
        folder = tempfile.TemporaryDirectory(prefix="bench-auth-test-")
        self.addCleanup(folder.cleanup)
        self.suite = suite.Suite(
            suite.Options(quick=True, redis=False, nats=False, workers=2, window=1000),
            Path(folder.name), Placement((), ()))

    def test_theAuthPortsNeedAToken(self):
        """
        The second pair of ports refuses a client without an C{AUTH} line;
        the first takes it.
        """
        with self.suite.servers(auth=True, redis=False, nats=False, warm_up=False) as servers:
            plain, authed = servers
            self.assertEqual((plain.kind, authed.kind), ("", "auth on"))
            self.assertEqual(authed.target.token, suite.AUTH_TOKEN)
            for running, refused in ((plain, False), (authed, True)):
                with socket.create_connection(("127.0.0.1", running.target.subscribe),
                                              timeout=10) as sock:
                    sock.sendall(b"hello\n")
                    sock.settimeout(0.5 if not refused else 10)
                    try:
                        answer = sock.recv(100)
                    except TimeoutError:
                        answer = b""
                self.assertEqual(answer.startswith(b"ERR"), refused, (running.kind, answer))

    def test_auth(self):
        self.suite.auth()
        rows: dict[tuple[str, int], dict[str, Any]] = {
            (str(r["kind"]), int(r["rate"])): r  # type: ignore[call-overload]
            for r in self.suite.runs}
        self.assertEqual(set(rows), {(kind, rate) for kind in ("auth off", "auth on")
                                     for rate in (0, 1000)})
        for (kind, _rate), row in rows.items():
            self.assertEqual((row["status"], row["S"], row["lost"]), ("ok", 4, 0), (kind, row))
            self.assertEqual(row["delivered"], 4 * row["published"])
        data = report.document({}, self.suite.runs, self.suite.skipped)
        self.assertEqual({r["rate"] for r in data["auth_ratios"]}, {0, 1000})
        table = report.auth_table(data["summary"], data["auth_ratios"])
        self.assertIn("auth on", table)
        self.assertIn("auth off", table)
