"""
Run a real C{twistd -n backplane} process for end-to-end tests.

The plugin is found the way a user's twistd finds it: from the installed
package (C{pip install .}), or from this checkout's C{twisted/plugins} when
the checkout is on the path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30, *,
             tracebacks: int = 0) -> None:
        """
        Send C{sig}, wait for the process to exit, and check that it shut
        down gracefully, having logged C{tracebacks} tracebacks (none,
        unless a test expects a failure to be logged).

        twistd ends a graceful shutdown on a signal by killing itself with
        that same signal, so that its parent sees why it ended: the exit
        status is C{-sig}, after "Server Shut Down." is logged.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout)
        output = self.text()
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
