"""
C{python -m bench history}: the replaying client's counter.
"""

from twisted.trial.unittest import SynchronousTestCase

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
