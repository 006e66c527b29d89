#!/usr/bin/env python3
"""
A publisher that never loses a line, in plain Python (the standard library
only): it sends the lines of a file, or of its standard input, to a
backplane port with `acks = true` (SPEC section 10), and keeps every line
until the server acknowledges it.

    python3 reliable_publisher.py --port 1601 --state publisher.json lines.txt
    tail -f app.log | python3 reliable_publisher.py --port 1601 --state publisher.json

The protocol, all of it:

  - each connection begins with `HELLO PUBLISHER-ID SEQ`: SEQ is how many of
    this publisher's lines the server acknowledged before;
  - then come the lines not yet acknowledged, oldest first, then new ones;
  - the server answers `ACK N`: the first N lines of this connection are
    safe (published; on disk, if the backplane has a store). It skips the
    lines it already had, so resending never duplicates one;
  - `ERR reason` means the server refused the HELLO (it lost the lines it
    had acknowledged, with its store) and closes the connection: this script
    then goes on as a new publisher.

Its state is a small JSON file: the publisher id, how many of its lines
were acknowledged, and, reading a file, where the next line begins. It is
replaced at every acknowledgement, so that run again with the same state
file and the same input file it goes on where it was, even after a kill -9.
(Reading a pipe, the lines read but not yet acknowledged are lost with the
process: the pipe cannot be read again.)

It reads no further ahead than MAX_UNACKED lines not acknowledged (the input
waits), so it drops nothing, and it exits once its input is done and every
line acknowledged.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import socket
import struct
import sys
import time
from collections import deque

#: The most lines kept waiting for an acknowledgement.
MAX_UNACKED = 100_000
#: Seconds a connection may stay silent with lines not acknowledged.
TIMEOUT = 30.0


class State:
    """
    The publisher id, its lines acknowledged, and the input offset after
    them, kept in a JSON file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path) as f:
                saved = json.load(f)
            self.id, self.acked, self.offset = saved["id"], saved["acked"], saved["offset"]
        except FileNotFoundError:
            # A new publisher: its id is kept before any line is sent, so
            # that a publisher killed before its first acknowledgement is
            # still the same one when it runs again.
            self.newId()
            self.offset = 0
            self.save()

    def newId(self) -> None:
        self.id = "pub-" + secrets.token_hex(8)
        self.acked = 0

    def save(self) -> None:
        """
        Replace the file: a new one, fsynced, renamed over the old one.
        """
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            json.dump({"id": self.id, "acked": self.acked, "offset": self.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)


class Publisher:
    def __init__(self, host: str, port: int, state: State, source: int, seekable: bool) -> None:
        self.address = (host, port)
        self.state = state
        self.source = source
        self.offset = state.offset  # of the next line read
        if seekable:
            os.lseek(source, state.offset, os.SEEK_SET)
        self.unacked: deque[tuple[bytes, int]] = deque()  # each line, and the offset after it
        self.half = b""
        self.done = False  # the input is at its end

    def run(self) -> None:
        delay = 0.1
        while not (self.done and not self.unacked):
            try:
                sock = socket.create_connection(self.address, timeout=TIMEOUT)
            except OSError as e:
                log(f"cannot connect ({e}); again in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                self.session(sock)
                sock.close()  # everything was acknowledged
            except OSError as e:
                log(f"connection lost ({e}); resending what is not acknowledged")
                # A reset, not a close: the server must not take a half line
                # written before the failure as a last line.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                time.sleep(0.1)

    def session(self, sock: socket.socket) -> None:
        state = self.state
        base = state.acked
        hello = b"HELLO %s %d\n" % (state.id.encode("ascii"), base)
        sock.sendall(hello + b"".join(line for line, _ in self.unacked))
        received = b""
        while not (self.done and not self.unacked):
            reading = [sock]
            if not self.done and len(self.unacked) < MAX_UNACKED:
                reading.append(self.source)
            readable, _, _ = select.select(reading, [], [], TIMEOUT)
            if not readable:
                raise OSError("the server said nothing for too long")
            if self.source in readable:
                sock.sendall(self.read())
            if sock in readable:
                data = sock.recv(65536)
                if not data:
                    raise OSError("closed by the server")
                received += data
                *replies, received = received.split(b"\n")
                for reply in replies:
                    if reply.startswith(b"ACK "):
                        self.acknowledged(base + int(reply[4:]))
                    elif reply.startswith(b"ERR "):
                        log(f"the server refused {hello!r}: {reply[4:]!r}; going on as a new "
                            "publisher with the lines not acknowledged")
                        state.newId()
                        state.save()
                        raise OSError("refused")
                    else:
                        raise OSError(f"not a port with acks = true? it sent {reply[:80]!r}")

    def read(self) -> bytes:
        """
        Read what the input has: its complete lines, kept until acknowledged
        and returned to be sent.
        """
        chunk = os.read(self.source, 65536)
        if not chunk:
            self.done = True
            chunk, self.half = (self.half + b"\n", b"") if self.half else (b"", b"")
        else:
            chunk, self.half = self.half + chunk, b""
        *lines, self.half = chunk.split(b"\n")
        new = []
        for line in lines:
            self.offset += len(line) + 1
            self.unacked.append((line + b"\n", self.offset))
            new.append(line + b"\n")
        if self.done and self.half:  # pragma: no cover - cannot happen: the end ends a line
            raise AssertionError(self.half)
        return b"".join(new)

    def acknowledged(self, total: int) -> None:
        """
        The first C{total} lines of this publisher are safe: forget them, and
        say so in the state file.
        """
        state = self.state
        if total <= state.acked:
            return
        while state.acked < total:
            _, state.offset = self.unacked.popleft()
            state.acked += 1
        state.save()


def log(message: str) -> None:
    print(f"reliable_publisher: {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="the state file (made if missing)")
    parser.add_argument("file", nargs="?", help="the lines to publish (default: stdin)")
    args = parser.parse_args()
    state = State(args.state)
    if args.file is None:
        publisher = Publisher(args.host, args.port, state, sys.stdin.fileno(), False)
    else:
        publisher = Publisher(args.host, args.port, state, os.open(args.file, os.O_RDONLY), True)
    publisher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
