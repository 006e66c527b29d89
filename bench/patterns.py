"""
Idle Redis clients that hold pattern subscriptions (C{PSUBSCRIBE}) matching
no channel the publisher uses: what C{python -m bench fanout --only patterns}
runs its fan-out beside, to show what patterns cost a publish.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from bench.load import connect
from bench.wire import RespError, bulk, parse_resp

# Patterns a client subscribes to, in one PSUBSCRIBE.
PATTERNS_PER_CLIENT = 10


def pattern_names(client: int, count: int) -> list[bytes]:
    """
    The C{count} distinct patterns of idle client C{client}: C{idle.I.J.*},
    which match neither C{bench} nor C{BENCH}.
    """
    return [b"idle.%d.%d.*" % (client, j) for j in range(count)]


def psubscribe_command(patterns: list[bytes]) -> bytes:
    """
    C{PSUBSCRIBE pattern...} in RESP.
    """
    return b"*%d\r\n" % (len(patterns) + 1) + bulk(b"PSUBSCRIBE") + b"".join(
        bulk(p) for p in patterns)


def await_psubscribed(sock: socket.socket, patterns: list[bytes], timeout: float) -> None:
    """
    Read a client's answers to C{PSUBSCRIBE} of C{patterns}: a confirmation
    of each, in order, with the client's subscription count 1, 2, ...

    @raise RespError: the server answered something else.
    @raise TimeoutError: it did not answer in C{timeout} seconds.
    """
    sock.settimeout(timeout)
    expected = [[b"psubscribe", p, n] for n, p in enumerate(patterns, 1)]
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RespError("the server closed the connection")
        data += chunk
        values, used = parse_resp(data)
        if len(values) >= len(expected):
            if values != expected or used != len(data):
                raise RespError(f"unexpected answer to PSUBSCRIBE: {values[:3]!r}...")
            return


@contextlib.contextmanager
def holding_patterns(port: int, patterns: int, timeout: float = 120.0,
                     per_client: int = PATTERNS_PER_CLIENT) -> Iterator[int]:
    """
    Connect idle clients to the Redis-protocol C{port}, each subscribed to
    C{per_client} distinct patterns (the last to what is left), C{patterns}
    in all, every subscription confirmed before this yields; close them on
    exit.  The clients send nothing more, and nothing is published to them.

    @return: (yields) the patterns confirmed.
    @raise OSError: a connection failed.
    @raise RespError: the server refused a subscription.
    """
    socks: list[socket.socket] = []
    names: list[list[bytes]] = []
    try:
        for client, first in enumerate(range(0, patterns, per_client)):
            names.append(pattern_names(client, min(per_client, patterns - first)))
            socks.append(connect(port))
            socks[-1].sendall(psubscribe_command(names[-1]))
        for sock, mine in zip(socks, names, strict=True):
            await_psubscribed(sock, mine, timeout)
        yield sum(len(mine) for mine in names)
    finally:
        for sock in socks:
            sock.close()
