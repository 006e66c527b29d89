"""
A raw RESP client for the tests: it sends commands over a blocking socket
and returns the exact bytes of the replies, counting them with
C{hiredis.Reader} (which knows nothing of backplane), so that the same
requests can be sent to a real redis-server and to backplane and the bytes
compared.
"""

from __future__ import annotations

import socket
import time

import hiredis

from tests.redis_helpers import encodeCommand


class RawClient:
    """
    One connection; L{call} sends a command and reads its replies.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.reader = hiredis.Reader()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, *args: bytes | str, replies: int = 1) -> bytes:
        """
        Send one command; return the raw bytes of its C{replies} replies
        (pushes count as replies).
        """
        self.send(encodeCommand(*(a.encode() if isinstance(a, str) else a for a in args)))
        return self.read(replies)

    def read(self, replies: int = 1) -> bytes:
        """
        The raw bytes of the next C{replies} replies or pushes.
        """
        data = b""
        deadline = time.monotonic() + self.timeout
        got = 0
        while True:
            while got < replies:
                value = self.reader.gets()
                if value is False:
                    break
                got += 1
            if got >= replies:
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"only {got} of {replies} replies: {data!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed after {got} of {replies} replies: {data!r}")
            data += chunk
            self.reader.feed(chunk)

    def closed(self, timeout: float = 10.0) -> bool:
        """
        Whether the server closes the connection (with nothing more sent)
        within C{timeout} seconds.
        """
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
