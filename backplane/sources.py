"""
In-process sources that publish to a backplane.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from backplane.interfaces import IStatsSource
from backplane.service import Backplane


def asctime(seconds: float) -> bytes:
    """
    The default format of a L{TimeSource}: C{time.asctime()} of local time,
    e.g. C{b"Thu Nov 26 08:48:23 2026"}.
    """
    return time.asctime(time.localtime(seconds)).encode("ascii")


@implementer(IStatsSource)
class TimeSource(Service):
    """
    Publishes the time to a backplane every C{interval} seconds, the first
    time as soon as it starts: Kamaelia's clock, as a L{LoopingCall}.

    The time comes from C{clock.seconds()}, so a L{twisted.internet.task.Clock}
    drives it completely in tests (see L{backplane.testing.timeSource}).
    """

    log = Logger()

    def __init__(
        self,
        backplane: Backplane,
        interval: float = 1.0,
        *,
        clock: IReactorTime | None = None,
        format: Callable[[float], bytes] = asctime,
    ) -> None:
        """
        @param interval: seconds between two messages; more than 0.
        @param clock: the time and the scheduler (the reactor by default).
        @param format: makes the message from the time in seconds since the epoch.
        """
        if not interval > 0:
            raise ValueError(f"interval must be more than 0 seconds, not {interval!r}")
        if clock is None:
            from twisted.internet import reactor as globalReactor

            clock = globalReactor
        self.backplane = backplane
        self.interval = interval
        self.clock: IReactorTime = clock
        self.format = format
        self.published = 0
        self._call = LoopingCall(self.tick)
        self._call.clock = self.clock
        self._done: Deferred[LoopingCall] | None = None

    def tick(self) -> None:
        """
        Publish the time now.
        """
        self.backplane.publish(self.format(self.clock.seconds()))
        self.published += 1

    def report(self) -> dict[str, object]:
        """
        The clock's statistics (L{IStatsSource}): C{published}, the messages
        it has published.
        """
        return {
            "name": self.name or "clock",
            "kind": "clock",
            "state": "running" if self._call.running else "stopped",
            "counters": {"published": self.published},
            "gauges": {},
            "info": {"publish_to": self.backplane.name, "interval": self.interval},
        }

    def startService(self) -> None:
        super().startService()
        self._done = self._call.start(self.interval, now=True)
        self._done.addErrback(
            lambda failure: self.log.failure(
                "The clock of backplane {name} stopped", failure, name=self.backplane.name
            )
        )

    def stopService(self) -> None:
        super().stopService()
        if self._call.running:
            self._call.stop()
