"""
The twistd plugin's options and service: C{twistd backplane [--config FILE] [--check]}.
"""

from __future__ import annotations

import resource
import signal
import sys
from typing import Any, cast

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python import usage

from backplane._types import defaultReactor
from backplane.build import buildService
from backplane.config import Config, ListenEntry, defaultConfig, readConfig
from backplane.errors import ConfigError
from backplane.sinks import FileSink


class Options(usage.Options):
    """
    Command-line options of C{twistd backplane}.
    """

    synopsis = "[--config FILE] [--check]"
    longdesc = (
        "Distribute lines of data from many sources to many destinations through named "
        "backplanes. Without --config, runs the embedded default: backplane TIME, a clock "
        "publishing time.asctime() each second, served to every client of "
        "tcp:1500:interface=127.0.0.1 (try: nc localhost 1500). "
        "The config file is TOML: [backplane.NAME] tables declare backplanes; [[listen]] "
        "tables are ports (endpoint, publish_to, subscribe_to, protocol = \"lines\", "
        "\"websocket\" or \"sse\"); [[clock]], [[connect]] (relays to another server), "
        "[[file]] (sinks), [redis], [monitor], [[user]] and [auth] add the rest. A mistake is "
        "reported with the file, the entry and the key. "
        "'python -m backplane check FILE' validates a file, and 'python -m backplane --help' "
        "lists a command-line client's commands (sub, pub, tail). The full reference of every "
        "key is docs/configuration.md in backplane's source distribution."
    )
    optParameters = [
        ["config", "c", None,
         "The TOML config file describing backplanes, ports, clocks, relays and files "
         "(default: the embedded default)."],
    ]
    optFlags = [
        ["check", None, "Validate the config and exit: 0 and 'OK' if it is good, "
                        "1 and the error if not."],
    ]

    config: Config

    def postOptions(self) -> None:
        try:
            self.config = readConfig(self["config"]) if self["config"] else defaultConfig()
        except ConfigError as e:
            _exit(f"backplane: {e}", 1)
        if self["check"]:
            _exit(f"{self.config.path}: OK", 0)


def _exit(message: str, status: int) -> None:
    (sys.stdout if status == 0 else sys.stderr).write(message + "\n")
    raise SystemExit(status)


class _Twistd(MultiService):
    """
    The service twistd runs: it turns a start-up error of the user's making
    (a port already in use) into one clear line and a non-zero exit, where
    twistd would print a traceback.
    """

    log = Logger()

    def __init__(self, nodaemon: bool) -> None:
        super().__init__()
        self.nodaemon = nodaemon

    def startService(self) -> None:
        super().startService()
        self.installSignals()

    def installSignals(self) -> None:
        """
        SIGHUP (and SIGUSR1, unless twistd rotates its log file with it)
        reopens every C{[[file]]} sink, after writing what waits: what
        C{logrotate}'s C{postrotate} sends.  Without this, either signal
        would end the process at once, losing what waits to be written.
        """
        reactor = cast(IReactorThreads, defaultReactor())

        def handler(number: int, frame: object) -> None:
            # In a signal handler: do the work on the reactor's next turn.
            reactor.callFromThread(self.reopen, signal.Signals(number).name)

        signal.signal(signal.SIGHUP, handler)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, handler)

    def reopen(self, why: str = "SIGHUP") -> None:
        """
        Reopen every file sink of the service.
        """
        sinks = [child for service in self for child in _descendants(service)
                 if isinstance(child, FileSink)]
        self.log.info("{signal}: reopening {count} file sinks", signal=why, count=len(sinks))
        for sink in sinks:
            sink.reopen()

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ConfigError as e:
            self.log.critical("{error}", error=str(e))
            if self.nodaemon:
                _exit(f"backplane: {e}", 1)
            raise


def _descendants(service: Any) -> list[Any]:
    found = [service]
    if isinstance(service, MultiService):
        for child in service:
            found.extend(_descendants(child))
    return found


log = Logger()

# Descriptors the process needs besides its clients: listening ports, files,
# relays, the log, Python's own.
FD_MARGIN = 64


def _connections(entry: ListenEntry) -> int | None:
    """
    The most connections a port holds at once: C{max_clients}, and as many
    again in their handshake (C{max_handshakes}) on a port that has one
    (TLS, WebSocket, SSE); L{None}: no bound.
    """
    limits = entry.limits
    if limits.max_clients is None:
        return None
    tls = entry.endpoint.split(":", 1)[0].lower() == "ssl"
    if (tls or entry.protocol != "lines") and limits.handshakeLimit is not None:
        return limits.max_clients + limits.handshakeLimit
    return limits.max_clients


def raiseFileLimit(config: Config) -> int:
    """
    Raise the soft limit on open files (RLIMIT_NOFILE) to the hard limit, so
    that every client a port may accept can have a descriptor, and warn when
    the ports' C{max_clients} (and the monitor's) still cannot all fit.

    Running out anyway is not fatal: the port logs it, refuses the new
    connection and keeps serving the clients it has.

    @return: the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warn("Could not raise the open files limit from {soft} to {target}: {error}",
                     soft=soft, target=target, error=e)
    limits = [_connections(entry) for entry in config.listen]
    if config.monitor is not None:
        # The connections it holds, and as many refused ones being closed.
        limits.append(2 * config.monitor.max_clients)
    if all(limit is not None for limit in limits):
        needed = sum(limit for limit in limits if limit is not None) + FD_MARGIN
        if needed > soft:
            log.warn(
                "The open files limit ({soft}) is lower than the ports' max_clients allow "
                "({needed} with a margin of {margin}); raise it (ulimit -n, or LimitNOFILE= "
                "in a systemd unit)", soft=soft, needed=needed, margin=FD_MARGIN,
            )
    return soft


def makeService(options: Options) -> IService:
    """
    Build the whole service from the parsed options.
    """
    twistd: Any = getattr(options, "parent", None)
    root = _Twistd(nodaemon=bool(twistd is None or twistd.get("nodaemon")))
    raiseFileLimit(options.config)
    try:
        buildService(options.config).setServiceParent(root)
    except ConfigError as e:
        _exit(f"backplane: {e}", 1)
    return root
