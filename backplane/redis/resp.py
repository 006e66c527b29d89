"""
RESP, the Redis protocol, as a server writes it: replies in RESP2 and RESP3,
and the C{message} / C{pmessage} pushes of pub/sub, byte for byte as Redis
sends them.  Plain functions on bytes: this module imports nothing of
Twisted and no Redis client (requests are parsed by C{hiredis.Reader}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
RESET = b"+RESET\r\n"

#: What Redis answers a command that a RESP2 client in subscribe mode may not
#: send (C{%s}: the command's lower-case name).
SUBSCRIBE_CONTEXT = (b"Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                     b"QUIT / RESET are allowed in this context")

#: The most bytes of a command and of its arguments that Redis quotes in the
#: error for an unknown command.
QUOTED = 128


def bulk(value: bytes) -> bytes:
    """
    A bulk string.
    """
    return b"$%d\r\n%s\r\n" % (len(value), value)


def null(protocol: int) -> bytes:
    """
    The null bulk string of RESP2 (C{$-1}), or RESP3's null (C{_}).
    """
    return b"_\r\n" if protocol == 3 else b"$-1\r\n"


def integer(value: int) -> bytes:
    """
    An integer reply.
    """
    return b":%d\r\n" % value


def error(message: bytes) -> bytes:
    """
    An error reply: C{message} begins with its code (C{ERR}, C{NOPERM}, ...);
    a C{\\r} or C{\\n} in it becomes a space, as Redis makes it.
    """
    return b"-" + message.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def array(items: Sequence[bytes]) -> bytes:
    """
    An array of replies, each already encoded.
    """
    return b"*%d\r\n" % len(items) + b"".join(items)


def push(items: Sequence[bytes], protocol: int) -> bytes:
    """
    A pub/sub message or confirmation, each item already encoded: an array
    in RESP2, a push (C{>}) in RESP3.
    """
    return (b">%d\r\n" if protocol == 3 else b"*%d\r\n") % len(items) + b"".join(items)


def mapping(pairs: Iterable[tuple[bytes, bytes]], protocol: int) -> bytes:
    """
    A map of encoded keys to encoded values: a map (C{%}) in RESP3, a flat
    array of keys and values in RESP2.
    """
    flat = [part for pair in pairs for part in pair]
    if protocol == 3:
        return b"%%%d\r\n" % (len(flat) // 2) + b"".join(flat)
    return array(flat)


def _cString(value: bytes) -> bytes:
    # Redis formats its arguments with %s: each ends at its first NUL byte.
    end = value.find(b"\x00")
    return value if end < 0 else value[:end]


def unknownCommand(args: Sequence[bytes]) -> bytes:
    """
    Redis's exact error for a command it does not know: C{-ERR unknown
    command 'NAME', with args beginning with: 'a' 'b' }, quoting at most
    L{QUOTED} bytes of the name and of the arguments.
    """
    quoted = b""
    for arg in args[1:]:
        if len(quoted) >= QUOTED:
            break
        quoted += b"'" + _cString(arg)[:QUOTED - len(quoted)] + b"' "
    return error(b"ERR unknown command '" + _cString(args[0])[:QUOTED]
                 + b"', with args beginning with: " + quoted)


def unknownSubcommand(command: bytes, subcommand: bytes) -> bytes:
    """
    Redis's error for a subcommand it does not know (C{CLIENT FOO}).
    """
    return error(b"ERR unknown subcommand '" + _cString(subcommand)[:QUOTED]
                 + b"'. Try " + command.upper() + b" HELP.")


def wrongArity(name: bytes) -> bytes:
    """
    Redis's error for a command (C{b"publish"}) or subcommand
    (C{b"client|setname"}) with the wrong number of arguments.
    """
    return error(b"ERR wrong number of arguments for '" + name + b"' command")


class Pushes:
    """
    The C{message} or C{pmessage} pushes of one subscription, encoded fast:
    what comes before each payload (the push's header, the channel and the
    pattern) is made once, when the client subscribes, in RESP2 and RESP3,
    and a chunk of lines becomes its pushes in one C{bytes.join}.

    @ivar prefixes: the bytes before each payload's bulk string, by
        protocol (2, 3).
    """

    __slots__ = ("prefixes",)

    def __init__(self, channel: bytes, pattern: bytes | None = None) -> None:
        """
        @param channel: the channel (backplane name) the messages come from.
        @param pattern: for a pattern subscription, the pattern: C{pmessage}s.
        """
        if pattern is None:
            rest = bulk(b"message") + bulk(channel)
            self.prefixes = {2: b"*3\r\n" + rest, 3: b">3\r\n" + rest}
        else:
            rest = bulk(b"pmessage") + bulk(pattern) + bulk(channel)
            self.prefixes = {2: b"*4\r\n" + rest, 3: b">4\r\n" + rest}

    def encode(self, payloads: list[bytes], protocol: int) -> bytes:
        """
        The pushes of a chunk in RESP C{protocol}, given its payloads as
        bulk strings (L{payloads}).
        """
        prefix = self.prefixes[protocol]
        return prefix + prefix.join(payloads)


def payloads(data: bytes, count: int) -> list[bytes]:
    """
    The bulk strings of the lines of a chunk (C{count} lines, each ending
    with C{b"\\n"}), the same for every subscription's pushes: computed once
    per chunk (see L{backplane.service.Backplane.encoded}).
    """
    lines = data.split(b"\n")
    lines.pop()
    return [b"$%d\r\n%s\r\n" % (len(line), line) for line in lines]
