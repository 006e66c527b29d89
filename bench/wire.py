"""
What goes over the wire: the payload every message carries, how the
protocols frame it (backplane lines, Redis RESP, NATS, WebSocket frames
from a server), fast batch building for publishers, bulk counting for
subscribers, and a WebSocket client's opening handshake.

A payload is exactly C{size} bytes of text, the layout of the C reference
generator (fanout.c): C{M}, the publisher (4 hex digits), the sequence
number (16 hex), the send time (16 hex, C{time.monotonic_ns()}, the same
clock in every process of the machine), then C{x} padding.  So the time and
the sequence of a message are at fixed offsets and a subscriber can read
them from the last message of a chunk without splitting the chunk.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from array import array
from dataclasses import dataclass

# The fixed part of a payload: "M", publisher, sequence, send time.
HEAD_SIZE = 1 + 4 + 16 + 16
MIN_SIZE = HEAD_SIZE
_SEQ = slice(5, 21)
_TIME = slice(21, 37)
_M = ord("M")
_NEWLINE = ord("\n")

# A probe line (lines protocol only): sent until every subscriber has seen
# one, so that nothing is measured before every subscriber is attached.
PROBE = b"Q"


def payload(publisher: int, seq: int, sent: int, size: int) -> bytes:
    """
    One payload of C{size} bytes (the reference form; publishers use
    L{BatchMaker}).
    """
    if size < MIN_SIZE:
        raise ValueError(f"a payload has at least {MIN_SIZE} bytes, not {size}")
    return b"M%04x%016x%016x" % (publisher, seq, sent) + b"x" * (size - HEAD_SIZE)


def parse_payload(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """
    The publisher, sequence number and send time of a payload.

    @raise ValueError: C{data} is not a payload.
    """
    if len(data) < HEAD_SIZE or data[0] != _M:
        raise ValueError(f"not a payload: {bytes(data[:HEAD_SIZE])!r}")
    return int(data[1:5], 16), int(data[_SEQ], 16), int(data[_TIME], 16)


def probe(publisher: int) -> bytes:
    """
    A probe line of a publisher.
    """
    return PROBE + b"%04x\n" % publisher


@dataclass(frozen=True)
class Framing:
    """
    How a protocol wraps one payload: in what a publisher sends, and in what
    a subscriber receives.
    """

    name: str
    publish_prefix: bytes
    publish_suffix: bytes
    deliver_prefix: bytes
    deliver_suffix: bytes

    def delivered_size(self, size: int) -> int:
        """
        The bytes a subscriber receives for one payload of C{size} bytes.
        """
        return len(self.deliver_prefix) + size + len(self.deliver_suffix)


LINES = Framing("lines", b"", b"\n", b"", b"\n")


def resp_framing(channel: bytes, size: int) -> Framing:
    """
    Redis pub/sub on C{channel}: C{PUBLISH channel payload} in, a
    C{message} push out.
    """
    return Framing(
        "resp",
        b"*3\r\n$7\r\nPUBLISH\r\n" + bulk(channel) + b"$%d\r\n" % size,
        b"\r\n",
        b"*3\r\n$7\r\nmessage\r\n" + bulk(channel) + b"$%d\r\n" % size,
        b"\r\n",
    )


def bulk(data: bytes) -> bytes:
    """
    A RESP bulk string.
    """
    return b"$%d\r\n%s\r\n" % (len(data), data)


def subscribe_command(channel: bytes) -> bytes:
    """
    C{SUBSCRIBE channel} in RESP.
    """
    return b"*2\r\n" + bulk(b"SUBSCRIBE") + bulk(channel)


def publish_command(channel: bytes, message: bytes) -> bytes:
    """
    C{PUBLISH channel message} in RESP.
    """
    return b"*3\r\n" + bulk(b"PUBLISH") + bulk(channel) + bulk(message)


# NATS (the client protocol of nats-server): a client says CONNECT (verbose
# off: no +OK after each command), subscribes with SUB, publishes with PUB,
# and is sent each message as a MSG; PING is answered with PONG, so a PONG
# after a SUB says the subscription is in place.
NATS_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"name":"bench"}\r\n'
NATS_PING = b"PING\r\n"
NATS_PONG = b"PONG\r\n"
# The most a server may send before the PONG that ends a subscriber's setup
# (its INFO line and the PONG).
MAX_NATS_GREETING = 16 * 1024


class NatsError(Exception):
    """
    A NATS server refused a client (C{-ERR}) or said something unexpected.
    """


def nats_framing(subject: bytes, size: int, sid: int = 1) -> Framing:
    """
    NATS on C{subject}: C{PUB subject size} and the payload in, C{MSG
    subject sid size} and the payload out (to the subscription C{sid}).
    """
    return Framing(
        "nats",
        b"PUB %s %d\r\n" % (subject, size),
        b"\r\n",
        b"MSG %s %d %d\r\n" % (subject, sid, size),
        b"\r\n",
    )


def nats_subscribe(subject: bytes, sid: int = 1) -> bytes:
    """
    What a NATS subscriber sends first: C{CONNECT}, C{SUB subject sid}, and
    a C{PING} whose C{PONG} confirms both.
    """
    return NATS_CONNECT + b"SUB %s %d\r\n" % (subject, sid) + NATS_PING


def nats_greeting_end(data: bytes | bytearray) -> int:
    """
    Where the server's answer to a subscriber's first commands ends (after
    its C{INFO} line and the C{PONG}), or -1 if it has not all come yet.

    @raise NatsError: the server sent C{-ERR}, or something other than
        C{INFO} and C{PONG} before the C{PONG}.
    """
    start = 0
    while True:
        end = data.find(b"\r\n", start)
        if end < 0:
            return -1
        line = bytes(data[start:end])
        if line == b"PONG":
            return end + 2
        if line.startswith(b"-ERR"):
            raise NatsError(f"the NATS server refused: {line[:200]!r}")
        if not (line.startswith(b"INFO ") or line in (b"+OK", b"PING")):
            raise NatsError(f"unexpected from the NATS server: {line[:200]!r}")
        start = end + 2


class BatchMaker:
    """
    Builds a publisher's writes: runs of consecutive messages, each with its
    own sequence number and all with one send time, at C speed (one slice
    and one C{bytes.join} a run, whatever its length).

    A run never crosses a multiple of 4096 in sequence numbers: within one,
    only the last three hex digits of the sequence change, and those come
    from a table.
    """

    BLOCK = 4096
    _LOW = [b"%03x" % i for i in range(BLOCK)]

    def __init__(self, framing: Framing, publisher: int, size: int) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"a payload has at least {MIN_SIZE} bytes, not {size}")
        self.head = framing.publish_prefix + b"M%04x" % publisher
        self.tail = b"x" * (size - HEAD_SIZE) + framing.publish_suffix

    def make(self, seq: int, count: int, sent: int) -> tuple[bytes, int]:
        """
        The messages C{seq}, C{seq + 1}, ... sent at time C{sent}: C{count}
        of them, or fewer where the run would cross a block.

        @return: the bytes to write and the number of messages in them.
        """
        low = seq % self.BLOCK
        n = min(count, self.BLOCK - low)
        start = self.head + b"%013x" % (seq // self.BLOCK)
        end = b"%016x" % sent + self.tail
        return start + (end + start).join(self._LOW[low:low + n]) + end, n

    def make_paced(self, seq: int, count: int, start: int, interval: float) -> bytes:
        """
        The messages C{seq} to C{seq + count - 1} of a fixed-rate
        publisher, each with its own send time: the time it was due,
        C{start + n * interval} for message C{n} (ns), however late it is
        written, so that a publisher held back does not hide latency.
        """
        head, tail = self.head, self.tail
        return b"".join(head + b"%016x%016x" % (n, int(start + n * interval)) + tail
                        for n in range(seq, seq + count))


class LineCounter:
    """
    Counts the messages of one publisher that a subscriber receives on a
    line stream, in bulk: C{bytes.count(b"\\n")} a chunk, and only the last
    complete line of a chunk is parsed, to check its framing and sequence
    number and to sample its latency.

    Until the first data line has arrived, chunks are read line by line, so
    that probe lines are told apart (L{attached} is set by the first) and
    never counted.

    A chunk's last line is its freshest message, so these samples leave
    out how long the older messages of a chunk waited: with C{spans}, the
    first complete line of each sampled chunk is parsed too, and the chunk
    is noted as three numbers, its lines and the latencies (ns) of its first
    and last complete lines, from which L{bench.stats.message_latency_summary}
    estimates every message's latency.
    """

    __slots__ = (
        "_carry", "_settled", "aligned", "attached", "bad", "latencies", "received",
        "sequence_errors", "size", "spans",
    )

    def __init__(self, size: int, latencies: array[int],
                 spans: array[int] | None = None) -> None:
        """
        @param size: the payload size.
        @param latencies: receives one latency sample (ns) a chunk.
        @param spans: if given, receives lines, first and last latency (ns)
            of every sampled chunk.
        """
        self.size = size
        self.latencies = latencies
        self.spans = spans
        self.received = 0
        self.bad = 0
        self.sequence_errors = 0
        self.attached = False
        # Whether the stream so far ends with a complete line.
        self.aligned = True
        self._settled = False
        self._carry = b""

    def feed(self, buffer: bytearray, n: int, now: int) -> None:
        """
        Count the first C{n} bytes of C{buffer}, received at C{now}.
        """
        if not self._settled:
            self._feedProbes(bytes(buffer[:n]), now)
            return
        lines = buffer.count(b"\n", 0, n)
        if not lines:
            self.aligned = False
            return
        self.received += lines
        end = buffer.rfind(b"\n", 0, n)
        start = end - self.size
        aligned, self.aligned = self.aligned, end == n - 1
        if start < 0:
            return  # the line began in an earlier chunk
        if not (buffer[start - 1] == _NEWLINE if start else aligned):
            self.bad += 1  # a longer line: merged or corrupt
            return
        if self._check(buffer, start, now) and self.spans is not None:
            first = 0 if aligned else min(buffer.find(b"\n", 0, n) + 1, start)
            try:
                sent = int(buffer[first + 21:first + 37], 16) if buffer[first] == _M else -1
            except ValueError:
                sent = -1  # not a payload: the last line's check counts what is bad
            if sent >= 0:
                self.spans.extend((lines, now - sent, self.latencies[-1]))

    def _feedProbes(self, data: bytes, now: int) -> None:
        # Before the first data line: probes, one by one.  From the first
        # data line on (no probe follows one), the bulk path.
        data = self._carry + data
        start = 0
        while start < len(data) and data[start] != _M:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if data[start:start + 1] == PROBE:
                self.attached = True
            else:
                self.bad += 1
            start = end + 1
        self._carry = data[start:]
        if self._carry[:1] == b"M":
            rest, self._carry = bytearray(self._carry), b""
            self._settled = True
            self.feed(rest, len(rest), now)

    def _check(self, data: bytes | bytearray, start: int, now: int) -> bool:
        # Check the line at start, and sample its latency: whether it could.
        if data[start] != _M:
            self.bad += 1
            return False
        try:
            seq = int(data[start + 5:start + 21], 16)
            sent = int(data[start + 21:start + 37], 16)
        except ValueError:
            self.bad += 1
            return False
        if seq != self.received - 1:
            self.sequence_errors += 1
        self.latencies.append(now - sent)
        return True


class IdLineCounter:
    """
    Counts the lines of a stream with ids (an C{ids = true} port's C{EPOCH:SEQ
    payload} lines), as a client that replays a history reads them, in bulk:
    C{bytes.count(b"\\n")} a chunk, and only the last complete line of a
    chunk is parsed.  Its id must be of the first line's epoch and its SEQ
    the first line's plus the lines counted since, so a lost, repeated or
    extra line (a C{GAP}, an C{ERR}) shows up as a sequence error or a bad
    line.  The payloads are not looked at: a history holds the probes of
    the runs that filled it beside their messages.

    @ivar first: the SEQ of the first line (0 until it has come, or if it
        was not an id line).
    @ivar last: the SEQ of the latest line checked (0: none).
    """

    __slots__ = ("_carry", "bad", "epoch", "first", "last", "received", "sequence_errors")

    def __init__(self) -> None:
        self.received = 0
        self.first = 0
        self.last = 0
        self.epoch = b""
        self.bad = 0
        self.sequence_errors = 0
        # The stream's bytes after its last newline so far.
        self._carry = b""

    def feed(self, buffer: bytearray, n: int) -> None:
        """
        Count the first C{n} bytes of C{buffer}.
        """
        end = buffer.rfind(b"\n", 0, n)
        if end < 0:
            self._carry += bytes(buffer[:n])
            return
        if not self.received:
            head = self._carry + bytes(buffer[:buffer.find(b"\n", 0, n)])
            parsed = self._parse(head)
            if parsed is None:
                self.bad += 1
            else:
                self.epoch, self.first = parsed
        self.received += buffer.count(b"\n", 0, end + 1)
        start = buffer.rfind(b"\n", 0, end) + 1
        line = bytes(buffer[start:end]) if start else self._carry + bytes(buffer[:end])
        self._carry = bytes(buffer[end + 1:n])
        parsed = self._parse(line)
        if parsed is None:
            self.bad += 1
            return
        epoch, self.last = parsed
        if self.first and (epoch != self.epoch
                           or self.last != self.first + self.received - 1):
            self.sequence_errors += 1

    @staticmethod
    def _parse(line: bytes) -> tuple[bytes, int] | None:
        # The epoch and SEQ of an "EPOCH:SEQ payload" line, or None.
        space = line.find(b" ")
        colon = line.find(b":", 0, space)
        if space < 0 or colon <= 0:
            return None
        try:
            return line[:colon], int(line[colon + 1:space])
        except ValueError:
            return None


class FrameCounter:
    """
    Counts fixed-size frames (a Redis C{message} push or a NATS C{MSG} a
    payload) by bytes, in bulk: the stream is a run of frames of one length,
    so the number of complete ones is the byte count divided by it.  The
    last complete frame of a chunk is checked (prefix, suffix, sequence
    number), which catches any frame of another length, and its latency
    sampled; with C{spans}, the first complete frame of the chunk is timed
    too, as L{LineCounter} does.
    """

    __slots__ = (
        "bad", "bytes", "frame", "latencies", "prefix", "received", "sequence_errors",
        "size", "spans", "suffix",
    )

    # Its stream has no probes: a subscriber is attached once connected
    # (on Redis, once its SUBSCRIBE is confirmed).
    attached = True

    def __init__(self, framing: Framing, size: int, latencies: array[int],
                 spans: array[int] | None = None) -> None:
        self.prefix = framing.deliver_prefix
        self.suffix = framing.deliver_suffix
        self.size = size
        self.frame = framing.delivered_size(size)
        self.latencies = latencies
        self.spans = spans
        self.received = 0
        self.bytes = 0
        self.bad = 0
        self.sequence_errors = 0

    def feed(self, buffer: bytearray, n: int, now: int) -> None:
        """
        Count the first C{n} bytes of C{buffer}, received at C{now}.
        """
        before = self.bytes
        self.bytes = before + n
        frames = self.bytes // self.frame
        if frames == self.received:
            return
        complete = frames - self.received
        self.received = frames
        start = (frames - 1) * self.frame - before
        if start < 0:
            return  # the frame began in an earlier chunk
        at = start + len(self.prefix)
        end = at + self.size
        if (buffer[start:at] != self.prefix or buffer[at] != _M
                or buffer[end:end + len(self.suffix)] != self.suffix):
            self.bad += 1
            return
        try:
            seq = int(buffer[at + 5:at + 21], 16)
            sent = int(buffer[at + 21:at + 37], 16)
        except ValueError:
            self.bad += 1
            return
        if seq != frames - 1:
            self.sequence_errors += 1
        self.latencies.append(now - sent)
        if self.spans is not None:
            # The first frame that begins in this chunk (the count includes
            # the one that began earlier and ended here, if any).
            first = -before % self.frame + len(self.prefix)
            try:
                early = int(buffer[first + 21:first + 37], 16) if buffer[first] == _M else -1
            except ValueError:
                early = -1
            if early >= 0:
                self.spans.extend((complete, now - early, now - sent))


class NatsCounter(FrameCounter):
    """
    A L{FrameCounter} for a NATS subscriber, whose stream may also hold a
    C{PING} between two messages (nats-server pings every client a couple
    of seconds after it connects, whatever C{ping_interval} says): a
    C{PING} is taken out before the frames are counted.  Only a C{PING} has
    a C{P}: a frame is C{MSG}, the subject, numbers and the payload, whose
    letters are M, lower-case hex and x.  The C{PING} is not answered: the
    server would only close the connection after two more unanswered ones,
    an hour apart (L{bench.servers.nats_server}).
    """

    __slots__ = ("_partial", "pings")

    def __init__(self, framing: Framing, size: int, latencies: array[int],
                 spans: array[int] | None = None) -> None:
        super().__init__(framing, size, latencies, spans)
        self.pings = 0
        # The start of a PING at the end of the last chunk.
        self._partial = b""

    def feed(self, buffer: bytearray, n: int, now: int) -> None:
        """
        Count the first C{n} bytes of C{buffer}, received at C{now}.
        """
        if not self._partial and buffer.find(b"P", 0, n) < 0:
            super().feed(buffer, n, now)
            return
        data = self._partial + bytes(buffer[:n])
        self.pings += data.count(NATS_PING)
        data = data.replace(NATS_PING, b"")
        start = data.rfind(b"P")
        self._partial = b""
        if start >= 0 and NATS_PING.startswith(data[start:]):
            self._partial, data = data[start:], data[:start]
        buffer[:len(data)] = data
        super().feed(buffer, len(data), now)


# WebSocket (RFC 6455), as a subscriber of a server sees it.  The harness
# only reads WebSocket: it publishes on line ports.

# The first byte of a final text frame (FIN and opcode 1); the server sends
# a line that is valid UTF-8 (every payload here is ASCII) as one.
WS_TEXT = 0x81
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WS_MEDIUM = struct.Struct("!H")
_WS_LONG = struct.Struct("!Q")
# The most a server may answer to the opening handshake before its headers
# end (a guard against reading a stream that is not HTTP forever).
MAX_UPGRADE_RESPONSE = 16 * 1024


class WebSocketError(Exception):
    """
    The server refused or botched the WebSocket opening handshake.
    """


def frame_header(first: int, length: int) -> bytes:
    """
    The header of an unmasked frame (a server's), with first byte C{first}
    (FIN, opcode) and a payload of C{length} bytes: 2, 4 or 10 bytes.
    """
    if length < 126:
        return bytes((first, length))
    if length < 0x10000:
        return bytes((first, 126)) + _WS_MEDIUM.pack(length)
    return bytes((first, 127)) + _WS_LONG.pack(length)


def websocket_framing(size: int) -> Framing:
    """
    What a WebSocket subscriber receives for a payload of C{size} bytes: one
    text frame, unmasked.  (The publish fields are empty: the harness
    publishes on line ports only.)
    """
    return Framing("websocket", b"", b"", frame_header(WS_TEXT, size), b"")


def parse_frame(data: bytes | bytearray, offset: int = 0) -> tuple[int, int, int, bool] | None:
    """
    The frame that starts at C{offset} of C{data}, if it is complete there.

    @return: its first byte (FIN, opcode), where its payload starts and
        ends in C{data}, and whether it is masked (a server's never is:
        such a payload is still the masked bytes); L{None} while incomplete.
    """
    if len(data) < offset + 2:
        return None
    first, second = data[offset], data[offset + 1]
    masked = bool(second & 0x80)
    length = second & 0x7F
    start = offset + 2
    if length == 126:
        if len(data) < start + 2:
            return None
        (length,) = _WS_MEDIUM.unpack_from(data, start)
        start += 2
    elif length == 127:
        if len(data) < start + 8:
            return None
        (length,) = _WS_LONG.unpack_from(data, start)
        start += 8
    if masked:
        start += 4
    end = start + length
    if len(data) < end:
        return None
    return first, start, end, masked


def websocket_key(nonce: bytes) -> bytes:
    """
    A C{Sec-WebSocket-Key}: the base64 of a 16-byte nonce.
    """
    if len(nonce) != 16:
        raise ValueError(f"a WebSocket nonce has 16 bytes, not {len(nonce)}")
    return base64.b64encode(nonce)


def accept_key(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} a server must answer to C{key}.
    """
    return base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())


def upgrade_request(port: int, key: bytes, host: str = "127.0.0.1", path: str = "/") -> bytes:
    """
    A client's opening handshake: an HTTP/1.1 GET that asks to upgrade to
    WebSocket version 13, without subprotocols or extensions.
    """
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode('ascii')}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


def check_upgrade(head: bytes, key: bytes) -> None:
    """
    Check a server's answer to the opening handshake (its status line and
    headers, up to the blank line): C{101}, C{Upgrade: websocket},
    C{Connection: Upgrade} and the C{Sec-WebSocket-Accept} of C{key}.

    @raise WebSocketError: it is anything else.
    """
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
        raise WebSocketError(f"the server answered {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise WebSocketError(f"Upgrade: {headers.get('upgrade')!r}")
    if "upgrade" not in [v.strip().lower() for v in headers.get("connection", "").split(",")]:
        raise WebSocketError(f"Connection: {headers.get('connection')!r}")
    if headers.get("sec-websocket-accept", "").encode("latin-1") != accept_key(key):
        raise WebSocketError(
            f"Sec-WebSocket-Accept: {headers.get('sec-websocket-accept')!r}, "
            f"not {accept_key(key).decode()!r}")


def upgrade_response_end(data: bytes | bytearray) -> int:
    """
    Where the server's answer to the opening handshake ends in C{data} (just
    after its blank line), or -1 if it has not ended yet.
    """
    end = data.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


class WebSocketCounter:
    """
    Counts the messages of one publisher that a WebSocket subscriber
    receives, in bulk: until the first data message, frames are parsed one
    by one (a probe, C{Q...}, attaches the subscriber and is not counted);
    from it on, every frame has the one size of a data message (a 64-byte
    message is a 66-byte text frame), so a L{FrameCounter} counts them from
    the byte count, keeping partial frames across reads, and checks and
    samples the last complete frame of each read.
    """

    __slots__ = ("_carry", "_settled", "attached", "frames", "probe_bad")

    def __init__(self, size: int, latencies: array[int]) -> None:
        self.frames = FrameCounter(websocket_framing(size), size, latencies)
        self.attached = False
        # Frames before the first data message that are not probes.
        self.probe_bad = 0
        self._settled = False
        self._carry = b""

    @property
    def received(self) -> int:
        return self.frames.received

    @property
    def bad(self) -> int:
        return self.frames.bad + self.probe_bad

    @property
    def sequence_errors(self) -> int:
        return self.frames.sequence_errors

    def feed(self, buffer: bytearray, n: int, now: int) -> None:
        """
        Count the first C{n} bytes of C{buffer}, received at C{now}.
        """
        if self._settled:
            self.frames.feed(buffer, n, now)
            return
        data = self._carry + bytes(buffer[:n])
        offset = 0
        while (frame := parse_frame(data, offset)) is not None:
            first, start, end, masked = frame
            if data[start:start + 1] == b"M" and not masked:
                rest = bytearray(data[offset:])
                self._carry = b""
                self._settled = True
                self.frames.feed(rest, len(rest), now)
                return
            if first == WS_TEXT and not masked and data[start:start + 1] == PROBE:
                self.attached = True
            else:
                self.probe_bad += 1
            offset = end
        self._carry = data[offset:]


class MessageReader:
    """
    Splits a slow stream into whole messages, one by one, for streams of a
    few messages a second where that costs nothing: lines, or the payloads
    of Redis C{message} pushes.
    """

    def __init__(self, protocol: str) -> None:
        """
        @param protocol: C{"lines"} or C{"resp"}.
        """
        self.protocol = protocol
        self.bad = 0
        self._carry = b""

    def feed(self, data: bytes) -> list[bytes]:
        """
        The messages completed by C{data}.

        @raise RespError: a RESP stream is not RESP.
        """
        data = self._carry + data
        if self.protocol == "lines":
            lines = data.split(b"\n")
            self._carry = lines.pop()
            return lines
        values, used = parse_resp(data)
        self._carry = data[used:]
        messages = []
        for value in values:
            if isinstance(value, list) and len(value) == 3 and value[0] == b"message":
                messages.append(value[2])
            else:
                self.bad += 1
        return messages


class FileChecker:
    """
    Checks the lines many publishers sent, as a file sink wrote them: every
    line is a whole payload, and each publisher's sequence numbers follow
    each other with no gap, repeat or reordering.
    """

    def __init__(self, publishers: int, size: int) -> None:
        self.size = size
        self.counts = [0] * publishers
        self.lines = 0
        self.bad = 0
        self.out_of_order = 0
        self._next = [0] * publishers
        self._carry = b""

    def feed(self, data: bytes) -> None:
        """
        Check the next C{data} of the file.
        """
        lines = (self._carry + data).split(b"\n")
        self._carry = lines.pop()
        self.lines += len(lines)
        counts, following, size = self.counts, self._next, self.size
        for line in lines:
            try:
                publisher, seq, _ = parse_payload(line)
                if len(line) != size:
                    raise ValueError(line)
                counts[publisher] += 1
            except (ValueError, IndexError):
                self.bad += 1
                continue
            if seq != following[publisher]:
                self.out_of_order += 1
            following[publisher] = seq + 1

    def close(self) -> None:
        """
        The end of the file: a last line without its newline is bad.
        """
        if self._carry:
            self.bad += 1
            self._carry = b""


class RespError(Exception):
    """
    A RESP error reply (C{-ERR ...}), or data that is not RESP.
    """


def parse_resp(data: bytes) -> tuple[list[object], int]:
    """
    Parse the complete RESP2 values at the start of C{data}.

    Simple strings and bulk strings become L{bytes}, integers L{int},
    arrays lists, a null bulk string or array L{None}; an error reply is
    returned as a L{RespError}.

    @return: the values, and how many bytes of C{data} they took; the rest
        is an incomplete value.
    @raise RespError: C{data} is not RESP.
    """
    values: list[object] = []
    offset = 0
    while offset < len(data):
        parsed = _resp_value(data, offset)
        if parsed is None:
            break
        value, offset = parsed
        values.append(value)
    return values, offset


def _resp_value(data: bytes, offset: int) -> tuple[object, int] | None:
    end = data.find(b"\r\n", offset)
    if end < 0:
        return None
    kind, line, after = data[offset:offset + 1], data[offset + 1:end], end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), after
    try:
        number = int(line)
    except ValueError:
        raise RespError(f"not RESP: {data[offset:end + 2]!r}") from None
    if kind == b":":
        return number, after
    if kind == b"$":
        if number < 0:
            return None, after
        if len(data) < after + number + 2:
            return None
        if data[after + number:after + number + 2] != b"\r\n":
            raise RespError("a bulk string without its CRLF")
        return data[after:after + number], after + number + 2
    if kind == b"*":
        if number < 0:
            return None, after
        items = []
        for _ in range(number):
            parsed = _resp_value(data, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise RespError(f"not RESP: {data[offset:end + 2]!r}")
