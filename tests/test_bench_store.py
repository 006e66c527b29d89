"""
C{python -m bench store}: a smoke run at tiny sizes (the figures are not
checked, only that every run happens and reads back what it appended).
"""

import contextlib
import io
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bench import store
from bench.__main__ import main


class StoreBenchTests(SynchronousTestCase):
    def test_quick(self):
        folder = tempfile.mkdtemp(prefix="bench-store-test-")
        self.addCleanup(os.rmdir, folder)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            self.assertEqual(main(["store", "--quick", "--dir", folder]), 0)
        rows = {tuple(line.split()[:3]): line.split()
                for line in output.getvalue().splitlines()[3:]}
        for count in store.CHUNKS:
            lines = f"{store.LINES[count] // 100 // count * count:,}"
            for what in ("disk append", "memory append"):
                key = (*what.split(), str(count))
                self.assertEqual(rows[key][3], lines)
            self.assertIn(("withIds", str(count), lines), rows)
        replayed = f"{store.REPLAY_LINES // 100:,}"
        self.assertEqual(rows[("disk", "read", "256")][4], replayed)
        self.assertEqual(rows[("memory", "read", "256")][4], replayed)
        self.assertEqual(os.listdir(folder), [])

    def test_chunk(self):
        data = store.chunk(3)
        self.assertEqual(len(data), 3 * store.LINE)
        self.assertEqual(data.count(b"\n"), 3)
