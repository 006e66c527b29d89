"""
Syslog framing (C{framing = "syslog"}, RFC 6587): the framer in chunks of
every size, and util-linux C{logger} on a real port.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from backplane import PublishToFactory
from backplane.protocols import Limits
from backplane.syslog import SyslogFramer, escapeMessage
from backplane.testing import Recorder
from tests.helpers import portNumber, waitUntil

LOGGER = shutil.which("logger")


class Collector:
    """
    A L{LinesReceiver} that keeps what a framer hands it.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.tooLong: list[int] = []

    def linesReceived(self, data: bytes) -> None:
        assert data.endswith(b"\n")
        self.chunks.append(data)

    def lineTooLong(self, length: int) -> None:
        self.tooLong.append(length)

    @property
    def lines(self) -> list[bytes]:
        return b"".join(self.chunks).split(b"\n")[:-1]


def counted(message: bytes) -> bytes:
    """
    An octet-counted frame (RFC 6587 section 3.4.1).
    """
    return b"%d %s" % (len(message), message)


MESSAGES: list[tuple[bytes, bytes]] = [
    # (a frame, the line it is)
    (counted(b"<13>1 - host app - - - hi"), b"<13>1 - host app - - - hi"),
    (b"<13>plain newline frame\n", b"<13>plain newline frame"),
    (counted(b"<14>first\nsecond\nthird"), b"<14>first#012second#012third"),
    (counted(b"<15>with its own newline\n"), b"<15>with its own newline"),
    (b"<13>crlf\r\n", b"<13>crlf"),
    (counted(b""), b""),
    (b"2026-12-03 not a count\n", b"2026-12-03 not a count"),
    (counted(b"12 34 digits inside"), b"12 34 digits inside"),
    (b"7digits\n", b"7digits"),
    (counted(b"<13>\r\nwindows\r\n"), b"<13>\r#012windows"),
]
STREAM = b"".join(frame for frame, _ in MESSAGES)
LINES = [line for _, line in MESSAGES]


class SyslogFramerTests(SynchronousTestCase):
    def feed(self, stream: bytes, size: int, limit: int = 1000) -> Collector:
        collector = Collector()
        framer = SyslogFramer(collector, limit)
        for i in range(0, len(stream), size):
            framer.dataReceived(stream[i:i + size])
        return collector

    def test_everyChunking(self) -> None:
        """
        Octet-counted and newline-terminated frames, mixed on one stream, in
        chunks of every size: one line a frame, a newline inside a frame
        escaped as C{#012}.
        """
        for size in range(1, len(STREAM) + 1):
            self.assertEqual(self.feed(STREAM, size).lines, LINES, size)

    def test_runOfNewlineFramesInOneChunk(self) -> None:
        """
        Newline-terminated frames in a chunk are handed on together.
        """
        collector = self.feed(b"<1>a\n<2>b\n<3>c\n" + counted(b"<4>d") + b"<5>e\n<6>f\n", 1000)
        self.assertEqual(collector.chunks, [b"<1>a\n<2>b\n<3>c\n<4>d\n<5>e\n<6>f\n"])

    def test_octetCountedFrameTooLong(self) -> None:
        """
        An octet-counted frame whose length is more than C{max_line_length}
        is refused at once, without waiting for its bytes; the frames
        before it are handed on.
        """
        collector = self.feed(b"<1>ok\n" + b"11 <13>", 1000, limit=10)
        self.assertEqual(collector.lines, [b"<1>ok"])
        self.assertEqual(collector.tooLong, [11])
        collector = self.feed(counted(b"<1>1234567"), 1000, limit=10)
        self.assertEqual(collector.lines, [b"<1>1234567"])
        self.assertEqual(collector.tooLong, [])

    def test_newlineFrameTooLong(self) -> None:
        """
        A newline-terminated frame longer than C{max_line_length} is an
        overlong line, complete or not.
        """
        collector = self.feed(b"<1>ok\n<1>far too long\n", 1000, limit=10)
        self.assertEqual((collector.lines, collector.tooLong), ([b"<1>ok"], [15]))
        collector = self.feed(b"<1>far too long", 1, limit=10)
        self.assertEqual((collector.lines, collector.tooLong), ([], [11]))

    def test_finish(self) -> None:
        """
        At a clean end of input, a half newline-terminated frame is a
        message; a half octet-counted one is forgotten, and its bytes
        returned.
        """
        collector = Collector()
        framer = SyslogFramer(collector, 1000)
        framer.dataReceived(b"<1>no newline")
        self.assertEqual(framer.finish(), 0)
        self.assertEqual(collector.lines, [b"<1>no newline"])
        framer.dataReceived(b"20 <1>short")
        self.assertEqual(framer.finish(), len(b"20 <1>short"))
        self.assertEqual(collector.lines, [b"<1>no newline"])
        framer.dataReceived(b"123")
        self.assertEqual(framer.finish(), 0)
        self.assertEqual(collector.lines, [b"<1>no newline", b"123"])
        self.assertEqual(framer.finish(), 0)

    def test_datagram(self) -> None:
        """
        A whole message (a datagram) is one line, whatever newlines it holds.
        """
        collector = Collector()
        framer = SyslogFramer(collector, 10)
        framer.messageReceived(b"<1>a\nb\n")
        framer.messageReceived(b"<1>far too long")
        self.assertEqual(collector.lines, [b"<1>a#012b"])
        self.assertEqual(collector.tooLong, [15])

    def test_escape(self) -> None:
        self.assertEqual(escapeMessage(b"a\nb\n"), b"a#012b\n")
        self.assertEqual(escapeMessage(b"a\r\n"), b"a\n")
        self.assertEqual(escapeMessage(b"\n"), b"\n")


class SyslogPropertyTests(SynchronousTestCase):
    @given(
        messages=st.lists(st.tuples(st.binary(max_size=30), st.booleans()), max_size=20),
        cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=30),
    )
    @settings(max_examples=300, deadline=None)
    def test_anyMessagesAnyChunking(self, messages: list[tuple[bytes, bool]],
                                    cuts: list[int]) -> None:
        """
        Property: any messages, octet-counted or newline-terminated (when
        they can be: no newline in them, not starting with a digit), in any
        chunks: one line each, in order.
        """
        stream, expected = b"", []
        for message, octets in messages:
            plain = b"<" + message.replace(b"\n", b"").replace(b"\r", b"")
            if octets:
                stream += counted(message)
                expected.append(escapeMessage(message)[:-1])
            else:
                stream += plain + b"\n"
                expected.append(plain)
        collector = Collector()
        framer = SyslogFramer(collector, 1000)
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for start, end in itertools.pairwise(bounds):
            framer.dataReceived(stream[start:end])
        self.assertEqual(collector.lines, expected)
        self.assertEqual(framer.buffered, b"")


@pytest_twisted.inlineCallbacks
def syslogPort(service, limit=64 * 1024):
    factory = PublishToFactory(service, "DATA",
                               limits=Limits(framing="syslog", max_line_length=limit))
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield endpoint.listen(factory)
    return port


def logger(*arguments: str) -> None:
    result = subprocess.run([str(LOGGER), *arguments], capture_output=True, timeout=20,
                            check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(LOGGER is None, reason="logger not found (Debian: bsdutils)")
@pytest_twisted.inlineCallbacks
def test_loggerOctetCountingAndNewlines(service):
    """
    util-linux C{logger} on one syslog port: octet-counted (C{--octet-count}),
    a multi-line octet-counted message, and newline framing (C{--tcp}); one
    line a message, the multi-line one escaped.
    """
    port = yield syslogPort(service)
    recorder = Recorder.on(service.get("DATA"))
    where = ["-n", "127.0.0.1", "-P", str(portNumber(port)), "-t", "test"]
    try:
        yield deferToThread(logger, "--tcp", "--octet-count", *where, "hi")
        yield waitUntil(lambda: len(recorder.messages) >= 1, what="the first message")
        yield deferToThread(logger, "--tcp", "--octet-count", *where, "first\nsecond\nthird")
        yield waitUntil(lambda: len(recorder.messages) >= 2, what="the multi-line message")
        yield deferToThread(logger, "--tcp", *where, "newline framed")
        yield waitUntil(lambda: len(recorder.messages) >= 3, what="the newline-framed one")
        first, multi, plain = recorder.messages
        assert first.startswith(b"<13>") and first.endswith(b" hi"), first
        assert multi.startswith(b"<13>") and multi.endswith(b" first#012second#012third"), multi
        assert plain.startswith(b"<13>") and plain.endswith(b" newline framed"), plain
    finally:
        yield port.stopListening()


@pytest.mark.skipif(LOGGER is None, reason="logger not found (Debian: bsdutils)")
@pytest_twisted.inlineCallbacks
def test_loggerFileOfLines(service, tmp_path):
    """
    C{logger --octet-count -f FILE} sends one message a line of the file,
    one connection for all: 100 lines, 100 messages, in order.
    """
    port = yield syslogPort(service)
    recorder = Recorder.on(service.get("DATA"))
    path = tmp_path / "lines"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    try:
        yield deferToThread(logger, "--tcp", "--octet-count", "-n", "127.0.0.1", "-P",
                            str(portNumber(port)), "-f", str(path))
        yield waitUntil(lambda: len(recorder.messages) >= 100, what="100 messages")
        assert [m.rsplit(b" ", 2)[-2:] for m in recorder.messages] == [
            [b"line", b"%d" % i] for i in range(100)]
    finally:
        yield port.stopListening()


@pytest.mark.skipif(LOGGER is None, reason="logger not found (Debian: bsdutils)")
@pytest_twisted.inlineCallbacks
def test_loggerFrameTooLong(service):
    """
    An octet-counted message longer than C{max_line_length} is handled as
    an overlong line: not published, the client disconnected and counted.
    """
    port = yield syslogPort(service, limit=200)
    factory = port.factory.wrappedFactory if hasattr(port.factory, "wrappedFactory") \
        else port.factory
    recorder = Recorder.on(service.get("DATA"))
    try:
        yield deferToThread(logger, "--tcp", "--octet-count", "-n", "127.0.0.1", "-P",
                            str(portNumber(port)), "x" * 300)
        yield waitUntil(lambda: factory.stats.overlong == 1, what="the overlong frame")
        assert recorder.messages == []
    finally:
        yield port.stopListening()
