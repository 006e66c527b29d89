"""
A port's C{prefix}: what the server knows of each line it receives, put
before the line (its receive time, its sender's address), for people
aggregating logs from many machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

#: The fields a C{prefix} may hold, in the order they are written.
PREFIX_FIELDS = ("time", "address")

Prefix = Callable[[bytes], bytes]


def receiveTime(seconds: float) -> bytes:
    """
    A receive time as written in a prefix: RFC 3339, UTC, milliseconds,
    e.g. C{2026-12-03T15:26:00.123Z}.
    """
    whole, milliseconds = divmod(round(seconds * 1000), 1000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            + f".{milliseconds:03d}Z").encode("ascii")


def hostPort(host: str, port: int) -> str:
    """
    An address as written in a prefix: C{host:port}, an IPv6 host in
    brackets (C{[::1]:514}).
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def makePrefix(fields: tuple[str, ...], clock: IReactorTime, address: str) -> Prefix | None:
    """
    What puts C{fields} before each line of a chunk received from
    C{address}, or L{None} for no fields.

    The prefix is the fields in the order of L{PREFIX_FIELDS}, each
    followed by a space: C{TIME ADDRESS line}.  The time is taken once a
    chunk (the lines of a chunk arrived together).

    @param address: the sender's address (L{hostPort}), or C{"-"} where
        it has none (a UNIX socket).
    @return: a function of a chunk of complete lines (each ending with
        C{b"\\n"}) to the same lines, prefixed.
    """
    if not fields:
        return None
    before = address.encode("ascii", "backslashreplace") + b" " if "address" in fields else b""
    timed = "time" in fields

    def prefix(data: bytes) -> bytes:
        head = receiveTime(clock.seconds()) + b" " + before if timed else before
        return head + data[:-1].replace(b"\n", b"\n" + head) + b"\n"

    return prefix


def parsePrefix(value: object) -> tuple[str, ...]:
    """
    The value of a C{prefix} key: an array of L{PREFIX_FIELDS}.

    @raise ValueError: with a message saying what is wrong with it.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'must be an array of fields such as ["time", "address"], '
                         f"not {str(value)[:80]}")
    for item in value:
        if item not in PREFIX_FIELDS:
            raise ValueError(f"{item[:40]!r} is not a prefix field: use "
                             f"{', '.join(map(repr, PREFIX_FIELDS))}")
    if len(set(value)) != len(value):
        raise ValueError("names a field twice")
    return tuple(field for field in PREFIX_FIELDS if field in value)
