"""
A real redis-server for the tests, and plain Redis clients that know nothing
of backplane: one that publishes over a blocking socket, one that subscribes
with its own RESP parser.

The server binary is C{$REDIS_SERVER}, or C{redis-server} on C{PATH}; without
one, the tests that need it skip (and fail in CI: tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from tests.helpers import freePort


def findRedisServer() -> str | None:
    """
    The path of the redis-server binary, or L{None}.
    """
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


class RedisServer:
    """
    A redis-server process on 127.0.0.1, with no persistence, in a folder of
    its own: start it, kill it, start it again on the same port, pause it.
    """

    def __init__(self, binary: str, folder: Path, port: int | None = None) -> None:
        self.binary = binary
        self.folder = folder
        self.port = port or freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server and wait until it answers PING.
        """
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def kill(self) -> None:
        """
        Kill the server at once (SIGKILL), as a crash would.
        """
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """
        Stop the process (SIGSTOP): its connections stay open but nothing is
        answered, as with a hung server or a broken network.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let a paused server go on (SIGCONT).
        """
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def command(self, *args: bytes) -> bytes:
        """
        Send one command over a new connection and return the raw reply.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(encodeCommand(*args))
            return s.recv(65536)

    def publish(self, channel: bytes, payload: bytes) -> int:
        """
        PUBLISH as a plain client would, and return how many subscribers
        Redis gave it to.
        """
        reply = self.command(b"PUBLISH", channel, payload)
        assert reply.startswith(b":"), reply
        return int(reply[1:].strip())


def encodeCommand(*args: bytes) -> bytes:
    """
    A Redis command in RESP.
    """
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class PlainSubscriber(Protocol):
    """
    A Redis client that subscribes to channels and records every message,
    with a RESP parser of its own (arrays, bulk strings, integers).

    @ivar messages: C{(channel, payload)} for every message, in order.
    """

    def __init__(self, channels: list[bytes]) -> None:
        self.channels = channels
        self.buffer = b""
        self.messages: list[tuple[bytes, bytes]] = []
        self.subscribed: Deferred[None] = Deferred()
        self._acks = 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(encodeCommand(b"SUBSCRIBE", *self.channels))

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            parsed = _parse(self.buffer, 0)
            if parsed is None:
                return
            reply, end = parsed
            self.buffer = self.buffer[end:]
            assert isinstance(reply, list), reply
            if reply[0] == b"message":
                self.messages.append((reply[1], reply[2]))
            elif reply[0] == b"subscribe":
                self._acks += 1
                if self._acks == len(self.channels):
                    self.subscribed.callback(None)

    def payloads(self) -> list[bytes]:
        """
        The payloads received so far.
        """
        return [payload for _, payload in self.messages]


def _parse(data: bytes, start: int) -> tuple[object, int] | None:
    end = data.find(b"\r\n", start)
    if end < 0:
        return None
    kind, value = data[start : start + 1], data[start + 1 : end]
    if kind == b":":
        return int(value), end + 2
    if kind == b"$":
        length = int(value)
        if len(data) < end + 2 + length + 2:
            return None
        return data[end + 2 : end + 2 + length], end + 2 + length + 2
    if kind == b"*":
        items: list[object] = []
        position = end + 2
        for _ in range(int(value)):
            parsed = _parse(data, position)
            if parsed is None:
                return None
            item, position = parsed
            items.append(item)
        return items, position
    raise AssertionError(f"unexpected RESP reply {data[start:end]!r}")


@inlineCallbacks
def plainSubscriber(port: int, *channels: bytes):
    """
    Connect a L{PlainSubscriber} and wait until Redis confirms its
    subscriptions.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    factory = Factory.forProtocol(lambda: PlainSubscriber(list(channels)))
    subscriber = yield endpoint.connect(factory)
    yield subscriber.subscribed
    return subscriber
