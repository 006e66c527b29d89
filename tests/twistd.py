"""
Run a real C{twistd -n backplane} process for end-to-end tests.

The plugin is found the way a user's twistd finds it: from the installed
package (C{pip install .}), or from this checkout's C{twisted/plugins} when
the checkout is on the path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# twistd as the same Python runs it, whatever scripts folder it has.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Twistd:
    """
    One C{twistd -n backplane} process, its output going to a file.
    """

    def __init__(self, folder: Path, *args: str, config: str | None = None,
                 name: str = "backplane", twistdArgs: tuple[str, ...] = ()) -> None:
        """
        @param args: the plugin's arguments (after C{backplane}).
        @param twistdArgs: twistd's own (before C{backplane}).
        """
        self.folder = folder
        self.twistdArgs = list(twistdArgs)
        self.args = list(args)
        if config is not None:
            path = folder / f"{name}.toml"
            path.write_text(config)
            self.args = ["--config", str(path), *self.args]
        self.output = folder / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.signalled: int | None = None

    def command(self) -> list[str]:
        return [*TWISTD, "-n", "--pidfile=", *self.twistdArgs, "backplane", *self.args]

    def start(self, preexec_fn: Callable[[], None] | None = None) -> Twistd:
        """
        Start the process; C{preexec_fn} runs in it before twistd does.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, preexec_fn=preexec_fn,
            )
        return self

    def run(self, timeout: float = 30) -> tuple[int, str]:
        """
        Run to completion: the exit status and everything it printed.
        """
        self.start()
        assert self.process is not None
        status = self.process.wait(timeout)
        return status, self.text()

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def waitForPort(self, port: int, timeout: float = 20) -> None:
        """
        Wait until C{port} on 127.0.0.1 accepts connections.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}:\n"
                                     + self.text())
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=1)
                # Reset, not closed: a clean close is a half-close, and a
                # half-closed subscriber stays subscribed (SPEC section 6).
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                probe.close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"port {port} never listened:\n" + self.text())

    def waitForLog(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never logged:\n" + self.text())
            time.sleep(0.05)

    def sendSignal(self, sig: int = signal.SIGTERM) -> None:
        """
        Send C{sig} now, to watch the shutdown it starts before L{stop}.
        """
        assert self.process is not None
        self.process.send_signal(sig)
        self.signalled = sig

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30, *,
             tracebacks: int = 0) -> None:
        """
        Send C{sig} (unless L{sendSignal} sent it already), wait for the
        process to exit, and check that it shut down gracefully, having
        logged C{tracebacks} tracebacks (none, unless a test expects a
        failure to be logged).

        twistd ends a graceful shutdown on a signal by killing itself with
        that same signal, so that its parent sees why it ended: the exit
        status is C{-sig}, after "Server Shut Down." is logged.
        """
        assert self.process is not None
        if self.process.poll() is None and self.signalled is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout)
        output = self.text()
        sig = self.signalled or sig
        assert status == -sig, f"exit status {status}:\n{output}"
        assert "Server Shut Down." in output, output
        assert output.count("Traceback") == tracebacks, output

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def readLines(sock: socket.socket, count: int, timeout: float = 20) -> list[bytes]:
    """
    Read until C{count} complete lines have arrived on a blocking socket.
    """
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while (got := data.count(b"\n")) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {got} of {count} lines arrived")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {got} of {count} lines")
        data += chunk
    return data.split(b"\n")[:count]


# A blocking WebSocket client, enough for end-to-end tests.


def wsConnect(port: int, path: str = "/", timeout: float = 10, *,
              origin: str | None = None) -> socket.socket:
    """
    Open a WebSocket connection to C{port} on 127.0.0.1, as a browser does
    from a page of the port's own origin (or of C{origin}).
    """
    origin = origin or f"http://127.0.0.1:{port}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall((
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"closed during the handshake: {response!r}")
        response += chunk
    assert response.startswith(b"HTTP/1.1 101 "), response
    return sock


def wsSend(sock: socket.socket, payload: bytes, opcode: int = 1) -> None:
    """
    Send one message in one masked frame, as a client must.
    """
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 0x10000:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def wsReceive(sock: socket.socket, timeout: float = 20) -> tuple[int, bytes]:
    """
    Read one frame: its opcode (1 text, 2 binary, 8 close) and payload.
    """
    sock.settimeout(timeout)

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError("closed in the middle of a frame")
            data += chunk
        return data

    first, second = read(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read(8))
    return first & 0x0F, read(n)


def monitorGet(port: int, path: str) -> bytes:
    """
    The body of C{GET path} on the monitor listening on C{port} of 127.0.0.1.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
        return body


def monitorStats(port: int) -> dict[str, Any]:
    """
    The monitor's C{/stats} document.
    """
    document: dict[str, Any] = json.loads(monitorGet(port, "/stats"))
    return document
