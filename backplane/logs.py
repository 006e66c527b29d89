"""
Logs for log collectors: one JSON object a line, through twistd's
C{--logger} option::

    twistd -n --pidfile= --logger backplane.logs.jsonStdout backplane --config FILE
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

# The keys of an event that say how to log it rather than what happened:
# Twisted's own (log_*) and those of events from the legacy twisted.python.log.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "time", "why", "failure"})


def formatJSON(event: LogEvent) -> str:
    """
    One log event as one line of JSON, ending with C{"\\n"}.

    Its keys: C{time} (ISO 8601, UTC), C{level} (C{debug}, C{info}, C{warn},
    C{error} or C{critical}), C{namespace} (the logger, e.g.
    C{backplane.ports.ListenService}), C{message} (the event as text, as
    twistd's text log shows it), C{traceback} for an event with a failure,
    and every field the event was logged with (C{peer}, C{name}, ...).
    Values JSON cannot hold are written as their C{repr}; the line is ASCII.
    """
    seconds = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
        .isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in _LEGACY_KEYS and key not in record:
            record[key] = value
    return json.dumps(record, default=repr) + "\n"


def jsonStdout() -> ILogObserver:
    """
    A log observer writing L{formatJSON} lines to standard output: the
    factory for C{twistd --logger backplane.logs.jsonStdout}.

    Use it with C{-n}: a daemon's standard output goes nowhere.
    """
    return FileLogObserver(sys.stdout, formatJSON)
