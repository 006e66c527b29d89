"""
The wire format of the Redis bridge: what a node publishes on a Redis channel,
and how a payload read from one is taken (see docs/scaling.md).

A payload a node publishes is one tag line, C{b"\\x1ebackplane/1 NODE-ID\\n"},
followed by the chunk of lines as published; a payload without the tag (from
any other Redis client) is taken as lines.  Plain functions on bytes: this
module imports no Redis client and nothing of Twisted.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

MARK = b"\x1ebackplane/"
"""How the tag line of a payload published by a node begins: ASCII RS (0x1E),
then C{backplane/}."""

VERSION = b"1"

_NODE_ID = re.compile(r"[!-~]{1,100}")


def encodeTag(node: str) -> bytes:
    """
    The tag line a node puts before the lines of every payload it publishes.

    @param node: the node's id: 1 to 100 printable ASCII characters, no space.
    @raise ValueError: C{node} is not a valid node id.
    """
    if not _NODE_ID.fullmatch(node):
        raise ValueError(
            f"a node id is 1 to 100 printable ASCII characters without spaces, not {node!r}"
        )
    return MARK + VERSION + b" " + node.encode("ascii") + b"\n"


def encode(node: str, data: bytes) -> bytes:
    """
    The Redis payload of a chunk of lines published by node C{node}.

    @param data: complete lines, each ending with C{b"\\n"}.
    """
    return encodeTag(node) + data


@dataclass(frozen=True)
class Payload:
    """
    A Redis payload, decoded.

    @ivar node: the id of the node that published it, or L{None} for an
        untagged payload (published by a plain Redis client).
    @ivar data: its messages, each followed by C{b"\\n"}.
    @ivar count: how many messages C{data} holds.
    """

    node: bytes | None
    data: bytes
    count: int


def decode(payload: bytes) -> Payload | None:
    """
    Read a payload received from Redis.

    A tagged payload (one that begins with L{MARK}) is a tag line followed by
    lines that pass unchanged (a missing final C{b"\\n"} is added).  An
    untagged payload is one or more lines: a missing final C{b"\\n"} is added
    and one C{b"\\r"} before each C{b"\\n"} is removed, as on the network; an
    empty payload is one empty message.

    @return: the decoded payload, or L{None} if it is tagged with a version of
        the wire format that this one does not know.
    """
    if payload.startswith(MARK):
        end = payload.find(b"\n")
        if end < 0:
            header, data = payload, b""
        else:
            header, data = payload[:end], payload[end + 1 :]
        version, _, node = header[len(MARK) :].partition(b" ")
        if version != VERSION or not node:
            return None
        if data and data[-1:] != b"\n":
            data += b"\n"
        return Payload(node, data, data.count(b"\n"))
    data = payload if payload[-1:] == b"\n" else payload + b"\n"
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    return Payload(None, data, data.count(b"\n"))


def defaultNodeId() -> str:
    """
    A new node id, unique to this process and readable by people watching the
    channels: C{host.pid.random}.
    """
    host = re.sub(r"[^!-~]", "_", socket.gethostname())[:60] or "node"
    return f"{host}.{os.getpid()}.{secrets.token_hex(4)}"
