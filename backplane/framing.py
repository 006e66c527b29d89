"""
The one framing step of every line reader (a line port's client, a WebSocket
client's messages, a relay's upstream): bytes in, chunks of complete lines
out, C{\\r\\n} made C{\\n}, C{max_line_length} enforced.
"""

from __future__ import annotations

from typing import Protocol

DEFAULT_MAX_LINE_LENGTH = 64 * 1024


class LinesReceiver(Protocol):
    """
    What a L{LineFramer} hands its lines to: the owner of the framer (a
    protocol), or whatever it put in its place (see L{LineFramer.receiver}).
    """

    def linesReceived(self, data: bytes) -> None:
        """
        Take a chunk of complete lines: one or more messages, each ending with
        C{b"\\n"}, one trailing C{b"\\r"} already removed from each.
        """

    def lineTooLong(self, length: int) -> None:
        """
        A line of C{length} bytes or more (without its delimiter) is longer
        than the framer's C{maxLineLength}.  Nothing of it, nor anything
        after it, was or will be handed on: the framer has forgotten it; the
        receiver is expected to stop reading (close the connection).
        """


def firstOverlong(data: bytes, limit: int) -> int:
    """
    Find the first line of C{data} longer than C{limit} bytes.

    @param data: complete lines, each ending with C{b"\\n"}.
    @return: the offset where that line starts, or -1 if there is none.
    """
    if len(data) <= limit:
        return -1
    # A line of more than `limit` bytes covers a whole aligned block of `step`
    # bytes, so if every block holds a newline there is no such line: a few
    # C-speed finds per chunk instead of a look at every line.
    step = (limit + 1) // 2
    find = data.find
    for start in range(0, len(data) - step + 1, step):
        if find(b"\n", start, start + step) == -1:
            break
    else:
        return -1
    offset = 0
    for line in data.split(b"\n"):
        if len(line) > limit:
            return offset
        offset += len(line) + 1
    return -1


class LineFramer:
    """
    Splits what a peer sends into lines, a chunk at a time (never a line at
    a time), and hands the complete lines of each chunk, together, to its
    L{receiver}.

    Lines are delimited by C{b"\\n"}; one trailing C{b"\\r"} is removed from
    each; any other byte passes unchanged, and an empty line is a message.
    A line longer than C{maxLineLength} bytes (counting a trailing C{\\r})
    is never handed on, in part or whole: the complete lines before it in
    the same chunk are, then L{LinesReceiver.lineTooLong} is called, and the
    framer forgets what it holds.  A half line is refused as soon as it
    grows past the limit, without waiting (or buffering) for the rest.

    Two ways in: L{dataReceived} for a stream (TCP, TLS, UNIX), where a
    half line waits for the next chunk; L{messageReceived} for a message
    (a WebSocket message), whose end ends its last line.

    Hooks for what reads a stream differently:

      - L{receiver} may be replaced at any time, e.g. by a reader of control
        lines (C{HELLO}, C{AUTH}, C{RESUME}) that takes the first lines of
        the connection and hands the rest of the chunk on to the data
        receiver;
      - on a clean close (a FIN) the owner publishes the last half line
        (L{buffered}) with L{finish}, which frames it as a line, instead of
        forgetting it with L{discard}.

    @ivar receiver: a L{LinesReceiver}.
    @ivar maxLineLength: the longest line, in bytes without the C{\\n}.
    """

    __slots__ = ("_buffer", "maxLineLength", "receiver")

    def __init__(self, receiver: LinesReceiver,
                 maxLineLength: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if maxLineLength < 1:
            raise ValueError("maxLineLength must be at least 1")
        self.receiver = receiver
        self.maxLineLength = maxLineLength
        self._buffer = b""

    @property
    def buffered(self) -> bytes:
        """
        The half line waiting for its newline.
        """
        return self._buffer

    def dataReceived(self, data: bytes) -> None:
        """
        Frame a chunk of a stream: hand on its complete lines (with the half
        line before them), keep its last half line for the next chunk.
        """
        if self._buffer:
            data = self._buffer + data
        end = data.rfind(b"\n") + 1
        limit = self.maxLineLength
        if not end:
            if len(data) > limit:
                self._buffer = b""
                self.receiver.lineTooLong(len(data))
            else:
                self._buffer = data
            return
        if end < len(data):
            complete, self._buffer = data[:end], data[end:]
        else:
            complete, self._buffer = data, b""
        bad = firstOverlong(complete, limit)
        if bad >= 0:
            complete = complete[:bad]
            self._buffer = b""
        if complete:
            if b"\r" in complete:
                complete = complete.replace(b"\r\n", b"\n")
            self.receiver.linesReceived(complete)
        if bad >= 0:
            self.receiver.lineTooLong(data.find(b"\n", bad) - bad)
        elif len(self._buffer) > limit:
            length, self._buffer = len(self._buffer), b""
            self.receiver.lineTooLong(length)

    def messageReceived(self, data: bytes) -> None:
        """
        Frame a whole message: its end ends its last line, so C{b"a"} and
        C{b"a\\n"} are the one line C{a}, and an empty message is one empty
        line.  Its lines are handed on together, or, if one of them is too
        long, none of them.  A half line buffered by L{dataReceived} is the
        start of the message.
        """
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        if data[-1:] != b"\n":
            data += b"\n"
        bad = firstOverlong(data, self.maxLineLength)
        if bad >= 0:
            self.receiver.lineTooLong(data.find(b"\n", bad) - bad)
            return
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        self.receiver.linesReceived(data)

    def finish(self) -> int:
        """
        The stream ended cleanly (a FIN): hand on the half line waiting for
        its newline as a line, as a file's last line without a newline is
        still a line.

        @return: the bytes forgotten instead (none here; a framer of frames
            forgets an incomplete frame).
        """
        if self._buffer:
            self.messageReceived(b"")
        return 0

    def discard(self) -> bytes:
        """
        Forget the half line waiting for its newline (the connection is
        closing: a half line is never published), and return it.
        """
        rest, self._buffer = self._buffer, b""
        return rest
