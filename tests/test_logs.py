"""
JSON log lines for twistd's --logger (the end-to-end test is in
test_twistd.py).
"""

import io
import json
from typing import Any

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from backplane.logs import formatJSON, jsonStdout


class FormatJSONTests(SynchronousTestCase):
    def event(self, **fields: Any) -> LogEvent:
        events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            events.append(event)

        log = Logger(namespace="backplane.test", observer=observe)
        log.emit(fields.pop("level", LogLevel.info), fields.pop("format"), **fields)
        return events[0]

    def test_oneLine(self):
        event = self.event(format="Refusing {peer}: {why}", peer="10.0.0.1:5", why="no")
        event["log_time"] = 1_000_000.25
        line = formatJSON(event)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line), {
            "time": "1970-01-12T13:46:40.250000Z", "level": "info",
            "namespace": "backplane.test", "message": "Refusing 10.0.0.1:5: no",
            "peer": "10.0.0.1:5",
        })

    def test_levels(self):
        for level in LogLevel.iterconstants():
            record = json.loads(formatJSON(self.event(format="x", level=level)))
            self.assertEqual(record["level"], level.name)

    def test_fieldsJSONCannotHold(self):
        record = json.loads(formatJSON(self.event(format="{data!r}", data=b"\xff\n",
                                                  things={1, 2})))
        self.assertEqual(record["message"], "b'\\xff\\n'")
        self.assertEqual(record["data"], "b'\\xff\\n'")
        self.assertIn(record["things"], ("{1, 2}", "{2, 1}"))

    def test_asciiOnly(self):
        line = formatJSON(self.event(format="{name}", name="caf\u00e9"))
        self.assertTrue(line.isascii())
        self.assertEqual(json.loads(line)["name"], "caf\u00e9")

    def test_failure(self):
        failure = Failure(ZeroDivisionError("division by zero"))
        record = json.loads(formatJSON(self.event(format="it broke", log_failure=failure)))
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertNotIn("log_failure", record)

    def test_recordKeysWin(self):
        """
        A field named like a key of the record does not replace it.
        """
        record = json.loads(formatJSON(self.event(format="m", namespace="mine",
                                                  level=LogLevel.warn)))
        self.assertEqual(record["namespace"], "backplane.test")
        self.assertEqual(record["level"], "warn")

    def test_jsonStdoutIsAnObserver(self):
        self.assertTrue(ILogObserver.providedBy(jsonStdout()))

    def test_observerWritesLines(self):
        from twisted.logger import FileLogObserver

        out = io.StringIO()
        observer = FileLogObserver(out, formatJSON)
        observer(self.event(format="one"))
        observer(self.event(format="two"))
        self.assertEqual([json.loads(line)["message"] for line in out.getvalue().splitlines()],
                         ["one", "two"])
