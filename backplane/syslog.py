"""
Syslog framing (C{framing = "syslog"}): what C{logger --tcp}, rsyslog and
syslog-ng send over a stream, RFC 6587, one message (one line) a frame.

Two framings share a port, told apart at the start of each frame (RFC 6587
section 3.4): a frame that starts with a digit and a space-terminated
length (C{MSG-LEN SP SYSLOG-MSG}) is octet-counted; any other (a syslog
message starts with C{<}) ends at its newline.  A frame is one message: a
newline inside an octet-counted frame (a multi-line message) is kept as
the four characters C{#012}, as rsyslog escapes it, so that it leaves no
orphan lines; one newline at its end (which some senders add) is dropped.
"""

from __future__ import annotations

import re

from backplane.framing import LineFramer, LinesReceiver, firstOverlong

#: What a newline inside a frame becomes: rsyslog's escape of control
#: characters (the octal code of C{\\n}).
ESCAPED_NEWLINE = b"#012"

#: The most digits of a frame's length (with more, it is a line).
MAX_LENGTH_DIGITS = 10

# A line that starts with a digit: it may start an octet-counted frame.
_DIGIT_LINE = re.compile(rb"\n[0-9]")


def escapeMessage(message: bytes) -> bytes:
    """
    One syslog message as one line: without one trailing newline (and one
    carriage return before it), its inner newlines escaped as
    L{ESCAPED_NEWLINE}, and a newline added.
    """
    if message[-1:] == b"\n":
        message = message[:-1]
    if message[-1:] == b"\r":
        message = message[:-1]
    if b"\n" in message:
        message = message.replace(b"\n", ESCAPED_NEWLINE)
    return message + b"\n"


def _octetCount(data: bytes, pos: int) -> tuple[int, int] | bool | None:
    """
    Read the length of an octet-counted frame at C{pos}, which holds a digit.

    @return: the message's length and where it starts; L{None} if more bytes
        must come to tell; C{False} if the frame is not octet-counted.
    """
    space = data.find(b" ", pos, pos + MAX_LENGTH_DIGITS + 1)
    if space < 0:
        available = data[pos:pos + MAX_LENGTH_DIGITS + 1]
        if len(available) <= MAX_LENGTH_DIGITS and available.isdigit():
            return None
        return False
    digits = data[pos:space]
    if not digits.isdigit():
        return False
    return int(digits), space + 1


class SyslogFramer(LineFramer):
    """
    A L{LineFramer} for syslog over a stream (RFC 6587): octet-counted and
    newline-terminated frames, told apart frame by frame, each handed on as
    one line (see the module's docstring).

    A frame longer than C{maxLineLength} (its declared length, for an
    octet-counted one) is handled as an overlong line:
    L{LinesReceiver.lineTooLong}, and nothing of it is handed on.  A run of
    newline-terminated frames in a chunk is handed on as it is, at C speed.
    At a clean end of input (L{finish}), a half newline-terminated frame is
    a message; a half octet-counted one is forgotten (and counted).
    """

    __slots__ = ()

    def __init__(self, receiver: LinesReceiver, maxLineLength: int = 64 * 1024) -> None:
        super().__init__(receiver, maxLineLength)

    def dataReceived(self, data: bytes) -> None:
        """
        Frame a chunk of a stream: hand on its complete frames, each as a
        line, and keep the start of the last one for the next chunk.
        """
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        limit = self.maxLineLength
        out: list[bytes] = []
        pos, size = 0, len(data)
        tooLong = -1
        while pos < size:
            if 0x30 <= data[pos] <= 0x39:
                counted = _octetCount(data, pos)
                if counted is None:
                    break
                if counted is not False:
                    assert not isinstance(counted, bool)
                    length, start = counted
                    if length > limit:
                        tooLong = length
                        break
                    end = start + length
                    if end > size:
                        break
                    out.append(escapeMessage(data[start:end]))
                    pos = end
                    continue
            # Newline-terminated frames, up to the next line that starts
            # with a digit (which may be octet-counted).
            match = _DIGIT_LINE.search(data, pos)
            end = match.start() + 1 if match is not None else data.rfind(b"\n", pos) + 1
            if end <= pos:
                break
            run = data[pos:end]
            bad = firstOverlong(run, limit)
            if bad >= 0:
                if bad:
                    out.append(run[:bad])
                tooLong = run.find(b"\n", bad) - bad
                break
            out.append(run)
            pos = end
        if tooLong < 0:
            rest = data[pos:]
            if len(rest) > limit + MAX_LENGTH_DIGITS + 1 or (
                    len(rest) > limit and not 0x30 <= rest[0] <= 0x39):
                tooLong = len(rest)
            else:
                self._buffer = rest
        if out:
            lines = b"".join(out)
            if b"\r" in lines:
                lines = lines.replace(b"\r\n", b"\n")
            self.receiver.linesReceived(lines)
        if tooLong >= 0:
            self._buffer = b""
            self.receiver.lineTooLong(tooLong)

    def messageReceived(self, data: bytes) -> None:
        """
        Frame a whole message (a datagram, or what is left at the end of a
        stream): it is one message, handed on as one line, its newlines
        escaped.  A half frame buffered by L{dataReceived} is its start.
        """
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        line = escapeMessage(data)
        if len(line) - 1 > self.maxLineLength:
            self.receiver.lineTooLong(len(line) - 1)
            return
        self.receiver.linesReceived(line)

    def finish(self) -> int:
        """
        The stream ended cleanly: a half newline-terminated frame is a
        message; a half octet-counted frame is forgotten.

        @return: the bytes forgotten.
        """
        rest = self._buffer
        if not rest:
            return 0
        counted = _octetCount(rest, 0) if 0x30 <= rest[0] <= 0x39 else False
        if counted is False or counted is None:
            self.messageReceived(b"")
            return 0
        self._buffer = b""
        return len(rest)
