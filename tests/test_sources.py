"""
TimeSource, driven by a task.Clock: no sleeping.
"""

import time

from twisted.trial.unittest import SynchronousTestCase

from backplane import Backplane, TimeSource
from backplane.sources import asctime
from backplane.testing import Recorder, timeSource


class TimeSourceTests(SynchronousTestCase):
    def setUp(self):
        self.backplane = Backplane("TIME")
        self.recorder = Recorder.on(self.backplane)

    def test_publishesAtStartThenEachInterval(self):
        start = 1_800_000_000.0
        source, clock = timeSource(self.backplane, interval=1.0, start=start)
        self.assertEqual(self.recorder.messages, [asctime(start)])
        clock.advance(0.5)
        self.assertEqual(len(self.recorder.messages), 1)
        clock.advance(0.5)
        clock.advance(1.0)
        self.assertEqual(self.recorder.messages,
                         [asctime(start), asctime(start + 1), asctime(start + 2)])
        source.stopService()
        clock.advance(10)
        self.assertEqual(len(self.recorder.messages), 3)

    def test_asctime(self):
        self.assertEqual(asctime(0), time.asctime(time.localtime(0)).encode())
        self.assertEqual(len(asctime(1_800_000_000)), 24)

    def test_interval(self):
        _, clock = timeSource(self.backplane, interval=0.2)
        clock.pump([0.2] * 10)
        self.assertEqual(len(self.recorder.messages), 11)

    def test_customFormat(self):
        source, clock = timeSource(self.backplane)
        source.stopService()
        custom = TimeSource(self.backplane, 1.0, clock=clock, format=lambda t: b"%d" % t)
        custom.startService()
        clock.advance(1)
        self.assertEqual(self.recorder.messages[-2:], [b"0", b"1"])

    def test_badInterval(self):
        for interval in (0, -1.0):
            self.assertRaises(ValueError, TimeSource, self.backplane, interval)

    def test_brokenFormatLogged(self):
        def broken(seconds):
            raise RuntimeError("format bug")

        _, clock = timeSource(self.backplane)
        source = TimeSource(self.backplane, 1.0, clock=clock, format=broken)
        source.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        source.stopService()
