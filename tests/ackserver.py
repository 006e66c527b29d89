"""
A fake upstream for acknowledged publishing (SPEC section 10): what a port
with C{acks = true} does, as a model (L{Upstream}, for unit tests) and as a
real TCP server in a thread that can be restarted (L{AckServer}, for the
end-to-end tests), written from the protocol's description rather than from
L{backplane.acks}.

It is stricter than the real server: the lines it publishes count only once
it acknowledged them (as a server whose store lost what it had not fsynced):
a L{Upstream.crash} forgets the lines and marks published since the last
C{ACK}.
"""

from __future__ import annotations

import re
import selectors
import socket
import struct
import threading
import time

HELLO = re.compile(rb"HELLO ([A-Za-z0-9._:-]{1,64}) (0|[1-9][0-9]{0,18})")


class Upstream:
    """
    The state of an C{acks = true} port and its backplane: the lines
    published, and each publisher id's mark.

    @ivar published: the lines published, in order (committed ones first).
    @ivar marks: each publisher id's mark (lines of it published).
    @ivar connections: connections made.
    @ivar refused: C{HELLO}s refused with C{ERR}.
    """

    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.marks: dict[str, int] = {}
        self._committed = 0
        self._committedMarks: dict[str, int] = {}
        self.connections = 0
        self.refused = 0
        self.deduplicated = 0
        #: Anything that should never happen, as it happened.
        self.errors: list[str] = []
        self._speakers: dict[str, Connection] = {}

    def connect(self) -> Connection:
        """
        A new connection.
        """
        self.connections += 1
        return Connection(self)

    def commit(self) -> None:
        """
        What is published is safe (as a store's fsync makes it).
        """
        self._committed = len(self.published)
        self._committedMarks = dict(self.marks)

    def crash(self) -> None:
        """
        Lose what was published since the last commit, marks included.
        """
        del self.published[self._committed:]
        self.marks = dict(self._committedMarks)
        for connection in list(self._speakers.values()):
            connection.closed = True
        self._speakers.clear()

    def forgetMarks(self) -> None:
        """
        Lose every mark (a server whose store was lost).
        """
        self.marks.clear()
        self._committedMarks.clear()


class Connection:
    """
    One connection to an L{Upstream}: bytes in, what the server writes out.

    @ivar closed: whether the server closed it (after an C{ERR}, or when
        another connection took its publisher id over).
    """

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.first = True
        self.publisherId: str | None = None
        self.base = 0
        self.received = 0
        self.acked = 0
        self.skip = 0
        self.closed = False

    def receive(self, data: bytes) -> bytes:
        """
        Take bytes from the publisher; return what the server writes back
        at once (an C{ERR} line, which closes the connection).
        """
        if self.closed:
            return b""
        data = self.buffer + data
        *lines, self.buffer = data.split(b"\n")
        for line in lines:
            if self.closed:
                return b""
            if self.first:
                self.first = False
                if line.startswith(b"HELLO"):
                    refusal = self.hello(line)
                    if refusal:
                        return refusal
                    continue
            self.line(line)
        return b""

    def hello(self, line: bytes) -> bytes:
        match = HELLO.fullmatch(line)
        upstream = self.upstream
        if match is None:
            return self.refuse(b"bad HELLO")
        publisherId, seq = match.group(1).decode("ascii"), int(match.group(2))
        mark = upstream.marks.get(publisherId, 0)
        if seq > mark:
            return self.refuse(b"HELLO %s %d: only %d lines" % (match.group(1), seq, mark))
        old = upstream._speakers.get(publisherId)
        if old is not None and old is not self:
            old.closed = True
        upstream._speakers[publisherId] = self
        self.publisherId = publisherId
        self.base = seq
        self.skip = mark - seq
        return b""

    def refuse(self, reason: bytes) -> bytes:
        self.upstream.refused += 1
        self.closed = True
        return b"ERR " + reason + b"\n"

    def line(self, line: bytes) -> None:
        self.received += 1
        if self.skip:
            self.skip -= 1
            self.upstream.deduplicated += 1
            return
        upstream = self.upstream
        upstream.published.append(line)
        if self.publisherId is not None:
            if upstream.marks.get(self.publisherId, 0) != self.base + self.received - 1:
                upstream.errors.append(f"{self.publisherId}: line {self.base + self.received} "
                                       f"after {upstream.marks.get(self.publisherId, 0)}")
            upstream.marks[self.publisherId] = self.base + self.received

    def ack(self) -> bytes:
        """
        Commit what is published and acknowledge this connection's lines:
        an C{ACK N} line, or nothing if there is nothing new.
        """
        if self.closed or self.received <= self.acked:
            return b""
        self.upstream.commit()
        self.acked = self.received
        return b"ACK %d\n" % self.received

    def lost(self) -> None:
        """
        The connection is gone.
        """
        self.closed = True
        upstream = self.upstream
        if self.publisherId is not None and upstream._speakers.get(self.publisherId) is self:
            del upstream._speakers[self.publisherId]


class AckServer:
    """
    L{Upstream} as a TCP server on 127.0.0.1, in a thread: it acknowledges
    every C{ackLines} lines and C{ackInterval} seconds, and can be
    restarted (L{restart}: every connection reset, what was not acknowledged
    lost, the port closed for a moment).
    """

    def __init__(self, port: int, *, ackLines: int = 200, ackInterval: float = 0.05) -> None:
        self.port = port
        self.ackLines = ackLines
        self.ackInterval = ackInterval
        self.upstream = Upstream()
        self.lock = threading.Lock()
        self.restarts = 0
        self._stopping = threading.Event()
        self._down = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AckServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "the fake upstream never listened"
                time.sleep(0.01)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)

    def restart(self, down: float = 0.3) -> None:
        """
        Crash: reset every connection, forget what was not acknowledged,
        stay down C{down} seconds, listen again.
        """
        self._down.set()
        time.sleep(down)
        self._down.clear()

    def published(self) -> list[bytes]:
        with self.lock:
            return list(self.upstream.published)

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        listener.listen(16)
        listener.setblocking(False)
        return listener

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._serve()
            if self._stopping.is_set():
                return
            while self._down.is_set():
                time.sleep(0.01)

    def _serve(self) -> None:
        listener = self._listen()
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        clients: dict[socket.socket, tuple[Connection, list[float]]] = {}
        try:
            while not self._stopping.is_set() and not self._down.is_set():
                for key, _ in selector.select(0.01):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        try:
                            client, _ = listener.accept()
                        except OSError:
                            continue
                        with self.lock:
                            connection = self.upstream.connect()
                        clients[client] = (connection, [time.monotonic()])
                        selector.register(client, selectors.EVENT_READ)
                        continue
                    connection, _ = clients[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    with self.lock:
                        reply = connection.receive(data) if data else b""
                    if reply:
                        self._send(sock, reply)
                    if not data or connection.closed:
                        # After an ERR, a polite close, so that it arrives.
                        self._drop(selector, clients, sock, reset=bool(data) and not reply)
                now = time.monotonic()
                for sock, (connection, last) in list(clients.items()):
                    with self.lock:
                        due = connection.received - connection.acked >= self.ackLines or (
                            connection.received > connection.acked
                            and now - last[0] >= self.ackInterval)
                        reply = connection.ack() if due else b""
                        closed = connection.closed
                    if reply:
                        last[0] = now
                        self._send(sock, reply)
                    if closed:
                        self._drop(selector, clients, sock, reset=True)
        finally:
            with self.lock:
                if self._down.is_set():
                    self.restarts += 1
                    self.upstream.crash()
            for sock in list(clients):
                self._drop(selector, clients, sock, reset=True)
            selector.close()
            listener.close()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    def _drop(self, selector: selectors.BaseSelector,
              clients: dict[socket.socket, tuple[Connection, list[float]]],
              sock: socket.socket, reset: bool) -> None:
        connection, _ = clients.pop(sock)
        with self.lock:
            connection.lost()
        selector.unregister(sock)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
