"""
LineFramer on its own: a stream in chunks of every size (as Twisted's own
test_basic feeds its line receivers), \\r\\n, overlong lines, messages, and
its hooks.
"""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from backplane.framing import LineFramer


class Receiver:
    """
    A LinesReceiver that records what it is handed.
    """

    def __init__(self):
        self.chunks: list[bytes] = []
        self.tooLong: list[int] = []

    def linesReceived(self, data):
        self.chunks.append(data)

    def lineTooLong(self, length):
        self.tooLong.append(length)

    @property
    def lines(self):
        return b"".join(self.chunks).split(b"\n")[:-1]


def expectedLines(stream: bytes) -> list[bytes]:
    """
    The contract, spelled out slowly: the complete lines of a stream, each
    without its delimiter and with one trailing carriage return removed.
    """
    lines = stream.split(b"\n")[:-1]
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def framed(stream: bytes, size: int, limit: int = 1000) -> tuple[LineFramer, Receiver]:
    receiver = Receiver()
    framer = LineFramer(receiver, limit)
    for i in range(0, len(stream), size):
        framer.dataReceived(stream[i : i + size])
    return framer, receiver


STREAM = (
    b"first\r\n"
    b"\n"
    b"\r\n"
    b"  spaces kept  \n"
    b"cr\rinside\n"
    b"two crs\r\r\n"
    b"\x00\xff binary \x80\n"
    + b"x" * 300 + b"\n"
    b"half"
)


class StreamTests(SynchronousTestCase):
    def test_chunksOfEverySize(self):
        """
        However the stream is cut, the same lines come out, and the half
        line at its end waits.
        """
        expected = expectedLines(STREAM)
        self.assertEqual(expected[:3], [b"first", b"", b""])
        self.assertEqual(expected[5], b"two crs\r")
        for size in range(1, len(STREAM) + 1):
            framer, receiver = framed(STREAM, size)
            self.assertEqual(receiver.lines, expected, f"chunk size {size}")
            self.assertEqual(framer.buffered, b"half", f"chunk size {size}")
            self.assertEqual(receiver.tooLong, [])

    def test_oneCallPerChunk(self):
        """
        The complete lines of a chunk are handed on together, with the half
        line of the chunk before at their head.
        """
        receiver = Receiver()
        framer = LineFramer(receiver)
        framer.dataReceived(b"a\nb\r\nc\nhal")
        framer.dataReceived(b"f\nd\n")
        framer.dataReceived(b"no newline yet")
        self.assertEqual(receiver.chunks, [b"a\nb\nc\n", b"half\nd\n"])

    def test_crLfAcrossChunks(self):
        _, receiver = framed(b"one\r\ntwo\r\n", 4)
        self.assertEqual(receiver.chunks, [b"one\n", b"two\n"])

    @given(stream=st.binary(max_size=2000),
           cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40))
    @settings(max_examples=200, deadline=None)
    def test_anyChunking(self, stream, cuts):
        receiver = Receiver()
        framer = LineFramer(receiver, 10_000)
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for start, end in itertools.pairwise(bounds):
            framer.dataReceived(stream[start:end])
        self.assertEqual(receiver.lines, expectedLines(stream))
        self.assertEqual(framer.buffered, stream.rsplit(b"\n", 1)[-1])

    def test_discardForgetsTheHalfLine(self):
        framer, receiver = framed(b"whole\nhalf a li", 3)
        self.assertEqual(framer.discard(), b"half a li")
        self.assertEqual(framer.buffered, b"")
        framer.dataReceived(b"ne\n")
        self.assertEqual(receiver.lines, [b"whole", b"ne"])

    def test_limitValidated(self):
        self.assertRaises(ValueError, LineFramer, Receiver(), 0)


class OverlongTests(SynchronousTestCase):
    def test_exactlyTheLimit(self):
        _, receiver = framed(b"y" * 10 + b"\n", 1, limit=10)
        self.assertEqual(receiver.lines, [b"y" * 10])
        self.assertEqual(receiver.tooLong, [])

    def test_linesBeforeItAreHandedOnNothingOfItOrAfter(self):
        receiver = Receiver()
        framer = LineFramer(receiver, 10)
        framer.dataReceived(b"ok\r\n" + b"y" * 11 + b"\nafter\nhalf")
        self.assertEqual(receiver.chunks, [b"ok\n"])
        self.assertEqual(receiver.tooLong, [11])
        self.assertEqual(framer.buffered, b"", "forgotten")

    def test_carriageReturnCounts(self):
        _, receiver = framed(b"abc\r\n", 5, limit=3)
        self.assertEqual((receiver.chunks, receiver.tooLong), ([], [4]))

    def test_halfLineRefusedAsSoonAsItIsTooLong(self):
        """
        A line that grows past the limit is refused at once, whatever the
        chunks, without waiting (or buffering) for its newline.
        """
        for size in range(1, 12):
            framer, receiver = framed(b"z" * 11, size, limit=10)
            self.assertEqual(len(receiver.tooLong), 1, size)
            self.assertGreater(receiver.tooLong[0], 10)
            self.assertEqual(framer.buffered, b"")
            self.assertEqual(receiver.chunks, [])

    def test_halfLineAfterCompleteLines(self):
        framer, receiver = framed(b"a\n" + b"z" * 11, 100, limit=10)
        self.assertEqual((receiver.chunks, receiver.tooLong), ([b"a\n"], [11]))
        self.assertEqual(framer.buffered, b"")

    def test_overlongDeepInALongChunk(self):
        limit = 100
        lines = [b"%d" % i * 5 for i in range(200)]
        lines[150] = b"b" * (limit + 1)
        receiver = Receiver()
        LineFramer(receiver, limit).dataReceived(b"\n".join(lines) + b"\n")
        self.assertEqual(receiver.lines, lines[:150])
        self.assertEqual(receiver.tooLong, [limit + 1])

    @given(stream=st.binary(max_size=600),
           cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=30),
           limit=st.integers(min_value=1, max_value=40))
    @settings(max_examples=300, deadline=None)
    def test_anyChunkingAnyLimit(self, stream, cuts, limit):
        """
        The lines before the first overlong one are handed on, nothing of it
        or after it is, and lineTooLong is called once exactly when there is
        one (the framer's owner stops reading then: so does this test).
        """
        receiver = Receiver()
        framer = LineFramer(receiver, limit)
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for start, end in itertools.pairwise(bounds):
            if receiver.tooLong:
                break
            framer.dataReceived(stream[start:end])
        *complete, tail = stream.split(b"\n")
        overlong = [i for i, line in enumerate(complete) if len(line) > limit]
        if overlong:
            kept, cut = complete[: overlong[0]], True
        else:
            kept, cut = complete, len(tail) > limit
        self.assertEqual(receiver.lines, expectedLines(b"".join(line + b"\n" for line in kept)))
        self.assertEqual(len(receiver.tooLong), int(cut))


class MessageTests(SynchronousTestCase):
    def test_theEndOfAMessageEndsItsLastLine(self):
        receiver = Receiver()
        framer = LineFramer(receiver)
        for message in (b"a", b"a\n", b"a\r", b"a\r\n", b"", b"b\nc", b"d\r\ne\n"):
            framer.messageReceived(message)
        self.assertEqual(receiver.chunks,
                         [b"a\n", b"a\n", b"a\n", b"a\n", b"\n", b"b\nc\n", b"d\ne\n"])

    def test_allOrNothing(self):
        receiver = Receiver()
        LineFramer(receiver, 3).messageReceived(b"ok\nfour\nok\n")
        self.assertEqual((receiver.chunks, receiver.tooLong), ([], [4]))

    def test_aBufferedHalfLineStartsTheMessage(self):
        """
        What L{LineFramer.dataReceived} holds is the start of a message: how
        an owner would publish the last line of a cleanly closed stream.
        """
        receiver = Receiver()
        framer = LineFramer(receiver)
        framer.dataReceived(b"one\nlast, no newline")
        framer.messageReceived(b"")
        self.assertEqual(receiver.chunks, [b"one\n", b"last, no newline\n"])
        self.assertEqual(framer.buffered, b"")


class ReceiverHookTests(SynchronousTestCase):
    def test_aControlLineReaderInFront(self):
        """
        The receiver can be replaced: a reader of control lines takes the
        first line of the connection and hands the rest on to the data
        receiver, which then reads on its own.
        """
        data = Receiver()
        control: list[bytes] = []
        framer = LineFramer(data)

        class Hello:
            def linesReceived(self, chunk):
                line, _, rest = chunk.partition(b"\n")
                control.append(line)
                framer.receiver = data
                if rest:
                    data.linesReceived(rest)

            def lineTooLong(self, length):
                data.lineTooLong(length)

        framer.receiver = Hello()
        framer.dataReceived(b"HELLO 7\r\nfirst\nsec")
        framer.dataReceived(b"ond\n")
        self.assertEqual(control, [b"HELLO 7"])
        self.assertEqual(data.chunks, [b"first\n", b"second\n"])
