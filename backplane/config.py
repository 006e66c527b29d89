"""
The configuration file: parsed and validated in one place, into plain typed
objects, before any service is built.

L{readConfig} reads a TOML file into a L{Config}, which
L{backplane.build.buildService} turns into a service (L{backplane.build.loadConfig}
does both).  Every user mistake is a L{ConfigError}
naming the file, the entry (e.g. C{listen[2]}, the second C{[[listen]]}) and
the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import stat
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor

from backplane.address import Network
from backplane.budget import DEFAULT_MAX_PENDING_TOTAL, DEFAULT_MAX_UNFINISHED_TOTAL
from backplane.errors import ConfigError
from backplane.history.ids import ID_PREFIX_ROOM
from backplane.protocols import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PENDING,
    Limits,
)
from backplane.redis.address import parseURL

#: Bounds that keep a config from asking for more than a process can give
#: (docs/limits.md): what start-up would fail on, --check refuses.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_KEY_FILE_BYTES = 1024 * 1024
MAX_RETAIN = 1_000_000
MAX_HISTORY = 100_000_000
MIN_INTERVAL = 0.001
MAX_TIMEOUT = 86400.0

#: The defaults of a Redis port (SPEC section 12), as L{backplane.redis.server}'s.
DEFAULT_MAX_BACKPLANES = 1000
DEFAULT_MAX_REQUEST = 8 * 1024 * 1024
MIN_PENDING_TOTAL = 1024 * 1024
MAX_PENDING_TOTAL = 1024 ** 4
MAX_LINGER = 1.0
MIN_UNFINISHED_TOTAL = 1024 * 1024
MAX_UNFINISHED_TOTAL = 1024 ** 4

#: The most connections the monitor holds at once by default, as
#: L{backplane.monitor}'s (docs/limits.md).
DEFAULT_MONITOR_CLIENTS = 64
#: The defaults of a backplane's history (SPEC section 9; docs/configuration.md).
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
DEFAULT_STORE_BYTES = 1024 * 1024 * 1024
DEFAULT_FSYNC_INTERVAL = 0.1
#: The defaults of a relay's spool (SPEC section 10), as L{backplane.outbox}'s.
DEFAULT_SPOOL_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_FSYNC_INTERVAL = 0.05


def _option(default: Any = dataclasses.MISSING, *, doc: str = "", minimum: float | None = None,
            above: float | None = None, maximum: float | None = None,
            parse: Callable[[Any], Any] | None = None) -> Any:
    """
    A config key: its default, and the bounds its value must respect.

    @param parse: for a key whose value is not a plain string, number or
        boolean: takes the TOML value and returns the key's value, or raises
        L{ValueError} with a message saying what is wrong with it.
    """
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "above": above,
                                            "maximum": maximum, "parse": parse})


def _hosts(value: Any) -> tuple[str, ...]:
    """
    The value of C{[monitor] hosts}: an array of host names or addresses.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f'must be an array of host names such as ["monitor.example.com"], '
                         f"not {str(value)[:80]}")
    for host in value:
        if not re.fullmatch(r"[A-Za-z0-9.:_\[\]-]{1,253}", host):
            raise ValueError(f"{host[:80]!r} is not a host name or address")
    return tuple(value)


def _networks(value: Any) -> tuple[Network, ...]:
    """
    The value of an C{allow} key: an array of IP addresses and networks.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"must be an array of IP networks such as "
                         f'["127.0.0.0/8", "::1"], not {value!r}')
    if not value:
        raise ValueError("must not be empty: leave allow out to let everyone connect")
    networks = []
    for text in value:
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as e:
            hint = ""
            try:
                hint = f" (did you mean {str(ipaddress.ip_network(text, strict=False))!r}?)"
            except ValueError:
                pass
            raise ValueError(f"{text!r} is not an IP address or network: {e}{hint}") from None
    return tuple(networks)


def _patterns(value: Any) -> tuple[str, ...]:
    """
    The value of a C{publish} or C{subscribe} key: an array of backplane
    names and Redis glob patterns.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'must be an array of backplane names or glob patterns such as '
                         f'["TIME", "chat.*"], not {value!r}')
    if "" in value:
        raise ValueError("must not hold an empty name")
    return tuple(value)


def _prefix(value: Any) -> tuple[str, ...]:
    """
    The value of a C{prefix} key (L{backplane.prefix.parsePrefix}).
    """
    from backplane.prefix import parsePrefix

    return parsePrefix(value)


def _sha256(value: Any) -> str:
    """
    The value of a C{token_sha256} key: 64 hexadecimal digits.
    """
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    # Never quoted: it may be the token itself, pasted here by mistake.
    what = f"{len(value)} characters" if isinstance(value, str) else _describe(type(value))
    raise ValueError(f"must be the hex SHA-256 of the token, 64 hexadecimal digits, not {what} "
                     f"(python -m backplane hash-token makes it; the token itself never goes "
                     f"in the config)")


def _origins(value: Any) -> tuple[str, ...]:
    """
    The value of an C{origins} key: an array of origins, or C{"*"}.
    """
    from backplane.auth.origins import parseOrigin

    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'must be an array of origins such as ["https://app.example.com"], '
                         f"not {value!r}")
    for text in value:
        if text == "null":
            raise ValueError("'null' cannot be listed: every sandboxed frame and file: page "
                             "sends it; list '*' to allow every page")
        if text != "*":
            parseOrigin(text)
    return tuple(value)


@dataclass(frozen=True)
class BackplaneEntry:
    """
    C{[backplane.NAME]}: declares a backplane.
    """

    name: str = field(metadata={"internal": True})
    retain: int = _option(0, minimum=0, maximum=MAX_RETAIN,
                          doc="replay the last N messages to each new subscriber")
    shared: bool = _option(False, doc="shared with other nodes through [redis]")
    history: int = _option(
        0, minimum=0, maximum=MAX_HISTORY,
        doc="keep the last N messages in memory, with ids, for RESUME (0: none)")
    history_bytes: int = _option(
        DEFAULT_HISTORY_BYTES, minimum=1, doc="the most bytes a memory history keeps")
    store: str | None = _option(
        None, doc="keep the history on disk in this folder (relative to the config file)")
    store_bytes: int = _option(
        DEFAULT_STORE_BYTES, minimum=1, doc="the most bytes of a store's files (oldest removed)")
    fsync_interval: float = _option(
        DEFAULT_FSYNC_INTERVAL, minimum=0.0,
        doc="seconds between a store's fsyncs while it has unsynced data (0: every append)")

    @property
    def hasHistory(self) -> bool:
        """
        Whether its messages have ids: it keeps a history in memory or on disk.
        """
        return bool(self.history or self.store)


@dataclass(frozen=True)
class ListenEntry:
    """
    C{[[listen]]}: a server port whose clients publish and/or subscribe.
    """

    endpoint: str = _option(doc="a Twisted server endpoint description")
    publish_to: str | None = _option(None, doc="each client's lines are published here")
    subscribe_to: str | None = _option(None, doc="each client receives every line of this")
    protocol: Literal["lines", "websocket", "sse", "redis"] = _option(
        "lines", doc="what clients speak: lines, one line per WebSocket message, "
                     "Server-Sent Events (subscribe only), or Redis pub/sub")
    backplanes: tuple[str, ...] | None = _option(
        None, parse=_patterns,
        doc="the backplanes the clients of a redis, websocket or sse port may choose "
            "(names and glob patterns)")
    max_backplanes: int = _option(
        DEFAULT_MAX_BACKPLANES, minimum=0,
        doc="with backplanes: the most backplanes created on demand that may exist")
    max_request: int = _option(
        DEFAULT_MAX_REQUEST, minimum=1,
        doc="a redis port: the most bytes of one request (a command and its arguments)")
    ids: bool = _option(
        False, doc="send each message with its id, and take RESUME (subscribe_to needs a history)")
    acks: bool = _option(
        False, doc="acknowledge publishers' lines with ACK N, and take HELLO (publish_to only)")
    ack_lines: int = _option(1000, minimum=1, doc="an ACK at least every this many lines")
    ack_interval: float = _option(1.0, above=0.0, doc="an ACK at least this often (seconds)")
    max_line_length: int = _option(DEFAULT_MAX_LINE_LENGTH, minimum=1)
    max_pending: int = _option(DEFAULT_MAX_PENDING, minimum=0)
    slow: Literal["disconnect", "drop"] = _option("disconnect")
    linger: float = _option(
        0.0, minimum=0.0, maximum=MAX_LINGER,
        doc="seconds a subscriber's chunks may be held back to be written together "
            "(0: each at once)")
    max_clients: int | None = _option(None, minimum=0)
    handshake_timeout: float = _option(
        DEFAULT_HANDSHAKE_TIMEOUT, above=0.0, maximum=3600.0,
        doc="seconds a connection has to finish its TLS, WebSocket or HTTP handshake")
    max_handshakes: int | None = _option(
        None, minimum=1, maximum=1_000_000,
        doc="connections in their handshake at once, past which the oldest is closed "
            "(default: max_clients)")
    idle_timeout: float = _option(
        0.0, minimum=0.0, maximum=MAX_TIMEOUT,
        doc="close a publisher that holds an unfinished line this long without sending "
            "(seconds; 0: never)")
    backlog: int = _option(511, minimum=1, maximum=65535,
                           doc="the listen queue of a tcp, ssl or unix port")
    allow: tuple[Network, ...] | None = _option(
        None, parse=_networks, doc="the networks clients may connect from (default: any)")
    tls_client_ca: str | None = _option(
        None, doc="an ssl: port requires client certificates signed by a CA in this PEM file")
    auth: bool = _option(False, doc="every client must present a token (SPEC section 11)")
    origins: tuple[str, ...] | None = _option(
        None, parse=_origins, doc="the web page origins allowed besides the port's own")
    prefix: tuple[str, ...] = _option(
        (), parse=_prefix, doc='put before each line published: ["time", "address"], its receive '
                               "time and its sender's address")
    framing: Literal["lines", "syslog"] = _option(
        "lines", doc="how what clients send is split into messages: lines, or syslog "
                     "(RFC 6587 octet counting and newline-terminated frames, one message each)")

    @property
    def udp(self) -> bool:
        """
        Whether the port receives UDP datagrams (C{udp:PORT}).
        """
        return self.endpoint.split(":", 1)[0].lower() == "udp"

    @property
    def limits(self) -> Limits:
        """
        What one client of this port may do.
        """
        return Limits(
            max_line_length=self.max_line_length,
            max_pending=self.max_pending,
            slow=self.slow,
            max_clients=self.max_clients,
            allow=self.allow,
            handshake_timeout=self.handshake_timeout,
            max_handshakes=self.max_handshakes,
            idle_timeout=self.idle_timeout,
            framing=self.framing,
            prefix=self.prefix,
            linger=self.linger,
        )

    @property
    def description(self) -> str:
        """
        The endpoint description, with the default C{backlog} added where the
        endpoint takes one and the user did not set it.
        """
        kind = self.endpoint.split(":", 1)[0].lower()
        if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in self.endpoint:
            return f"{self.endpoint}:backlog={self.backlog}"
        return self.endpoint


@dataclass(frozen=True)
class ConnectEntry:
    """
    C{[[connect]]}: a relay to an upstream server, reconnecting with backoff.
    """

    endpoint: str = _option(doc="a Twisted client endpoint description")
    publish_to: str | None = _option(None, doc="lines from upstream are published here")
    subscribe_to: str | None = _option(None, doc="lines of this are sent upstream")
    initial_delay: float = _option(1.0, above=0.0)
    max_delay: float = _option(60.0, above=0.0)
    buffer: int = _option(10000, minimum=0)
    idle_timeout: float | None = _option(None, above=0.0)
    max_line_length: int = _option(DEFAULT_MAX_LINE_LENGTH, minimum=1)
    resume: bool = _option(
        False, doc="upstream sends ids (ids = true): RESUME from the last one on every connect")
    acks: bool = _option(
        False, doc="upstream is an acks = true port: keep every line until it is acknowledged, "
                   "HELLO and resend on every connect (subscribe_to only)")
    spool: str | None = _option(
        None, doc="with acks: keep the lines in this folder (relative to the config file), "
                  "across restarts")
    spool_bytes: int = _option(
        DEFAULT_SPOOL_BYTES, minimum=1,
        doc="the most bytes of a spool's files (the oldest lines dropped past it)")
    spool_fsync_interval: float = _option(
        DEFAULT_SPOOL_FSYNC_INTERVAL, minimum=0.0,
        doc="seconds between a spool's fsyncs while it has unsynced lines (0: every write)")


@dataclass(frozen=True)
class ClockEntry:
    """
    C{[[clock]]}: a L{TimeSource}.
    """

    publish_to: str = _option(doc="the backplane the time is published to")
    interval: float = _option(1.0, minimum=MIN_INTERVAL, maximum=86400.0)


@dataclass(frozen=True)
class FileEntry:
    """
    C{[[file]]}: a L{FileSink}, appending a backplane's lines to a file.
    """

    subscribe_to: str = _option(doc="the backplane whose lines are written")
    path: str = _option(doc="the file, relative to the config file's folder")
    flush_interval: float = _option(1.0, above=0.0)
    fsync: bool = _option(False)
    rotate_bytes: int = _option(0, minimum=0)
    max_files: int = _option(10, minimum=1)


@dataclass(frozen=True)
class RedisEntry:
    """
    C{[redis]}: the Redis server through which C{shared} backplanes are
    shared with other nodes.
    """

    url: str = _option("redis://127.0.0.1:6379/0")
    prefix: str = _option("backplane:", doc="the prefix of the channel names")
    initial_delay: float = _option(0.5, above=0.0)
    max_delay: float = _option(30.0, above=0.0)
    queue: int = _option(8 * 1024 * 1024, minimum=1, doc="bytes waiting to go to Redis")
    timeout: float = _option(10.0, above=0.0)


@dataclass(frozen=True)
class MonitorEntry:
    """
    C{[monitor]}: the HTTP monitor (C{/stats}, C{/metrics}, C{/healthz}, the
    status page C{/} and its live tails C{/tail/NAME}).
    """

    endpoint: str = _option(doc="a Twisted server endpoint description")
    allow: tuple[Network, ...] | None = _option(
        None, parse=_networks, doc="the networks clients may connect from (default: any)")
    tail: bool = _option(True, doc="whether /tail/NAME serves the lines of backplanes")
    max_tails: int = _option(16, minimum=1, doc="live tails open at once")
    max_clients: int = _option(
        DEFAULT_MONITOR_CLIENTS, minimum=1,
        doc="connections held at once (live tails included); one more gets 503 and is closed")
    auth: bool = _option(False, doc="every request must present a token")
    hosts: tuple[str, ...] = _option(
        (), parse=_hosts, doc="the names the monitor is served under (DNS rebinding)")


@dataclass(frozen=True)
class LimitsEntry:
    """
    C{[limits]}: bounds of the whole service.
    """

    max_pending_total: int = _option(
        DEFAULT_MAX_PENDING_TOTAL, minimum=MIN_PENDING_TOTAL, maximum=MAX_PENDING_TOTAL,
        doc="bytes that may wait for all subscribers together; past it, the subscribers "
            "furthest behind apply their slow policy first")
    max_unfinished_total: int = _option(
        DEFAULT_MAX_UNFINISHED_TOTAL, minimum=MIN_UNFINISHED_TOTAL, maximum=MAX_UNFINISHED_TOTAL,
        doc="bytes of unfinished lines (WebSocket messages, Redis requests) that all clients "
            "and relays' connections upstream may hold together; past it, the connection "
            "holding the most is disconnected first")


@dataclass(frozen=True)
class UserEntry:
    """
    C{[[user]]}: a user, who proves who it is with a token (kept here only
    as its SHA-256) or a client certificate, and the backplanes it may use.
    """

    name: str = _option(doc="the user's name, in log lines and statistics")
    token_sha256: str | None = _option(None, parse=_sha256, doc="the hex SHA-256 of its token")
    cert: str | None = _option(None, doc="a client certificate subject CN that names it")
    publish: tuple[str, ...] = _option((), parse=_patterns, doc="names or globs it may publish to")
    subscribe: tuple[str, ...] = _option(
        (), parse=_patterns, doc="names or globs it may subscribe to")


@dataclass(frozen=True)
class AuthEntry:
    """
    C{[auth]}: signed tokens (JWT) that a web application mints for its
    pages.
    """

    jwt_key_file: str = _option(
        doc="an HS256 secret or an Ed25519/RSA public key (PEM); relative to the config file")
    jwt_audience: str | None = _option(None, doc="tokens must name this in their aud claim")
    jwt_issuer: str | None = _option(None, doc="tokens must have this iss claim")


@dataclass(frozen=True)
class Config:
    """
    A whole, validated configuration.
    """

    path: str
    backplanes: dict[str, BackplaneEntry]
    listen: list[ListenEntry] = field(default_factory=list)
    connect: list[ConnectEntry] = field(default_factory=list)
    clock: list[ClockEntry] = field(default_factory=list)
    file: list[FileEntry] = field(default_factory=list)
    monitor: MonitorEntry | None = None
    redis: RedisEntry | None = None
    user: list[UserEntry] = field(default_factory=list)
    auth: AuthEntry | None = None
    limits: LimitsEntry = field(default_factory=LimitsEntry)

    @property
    def shared(self) -> list[str]:
        """
        The names of the backplanes shared through Redis.
        """
        return [name for name, entry in self.backplanes.items() if entry.shared]


# The arrays of tables of a config file, and the type of their entries.
_TABLES: dict[str, type] = {
    "listen": ListenEntry,
    "connect": ConnectEntry,
    "clock": ClockEntry,
    "file": FileEntry,
    "user": UserEntry,
}
# The tables written once, and the type of their entry.
_SINGLE_TABLES: dict[str, type] = {
    "redis": RedisEntry,
    "monitor": MonitorEntry,
    "auth": AuthEntry,
    "limits": LimitsEntry,
}
_TOP_LEVEL = ["backplane", *_TABLES, *_SINGLE_TABLES]
# The protocols of ports that browsers reach, whose Origin is checked.
_ORIGIN_PROTOCOLS = ("websocket", "sse")

DEFAULT_CONFIG = """\
# The embedded default: the time, once a second, to every client of port 1500.
[backplane.TIME]

[[clock]]
publish_to = "TIME"
interval = 1.0

[[listen]]
endpoint = "tcp:1500:interface=127.0.0.1"
subscribe_to = "TIME"
"""


def readConfig(path: str | Path) -> Config:
    """
    Read and validate a config file.

    @raise ConfigError: the file is missing or unreadable, is not valid TOML,
        or describes something invalid.
    """
    name = str(path)
    try:
        text = readBounded(path, MAX_CONFIG_BYTES).decode("utf-8")
        document = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError("no such file", path=name) from None
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror}", path=name) from None
    except ValueError as e:  # too big, not a regular file
        if isinstance(e, (tomllib.TOMLDecodeError, UnicodeDecodeError)):
            reason = ("the file is not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e))
            raise ConfigError(f"not valid TOML: {reason}", path=name) from None
        raise ConfigError(str(e), path=name) from None
    except RecursionError:
        raise ConfigError("not valid TOML: its arrays or tables are nested too deeply",
                          path=name) from None
    return parseConfig(document, path=name, folder=Path(path).resolve().parent)


def readBounded(path: str | Path, limit: int) -> bytes:
    """
    The bytes of a regular file of at most C{limit} bytes: never reads more
    (a path to C{/dev/zero} or a pipe is refused, not read for ever).

    @raise OSError: it cannot be read.
    @raise ValueError: it is not a regular file, or it is bigger.
    """
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"bigger than {limit:,} bytes")
    return data


def parseConfig(document: Mapping[str, Any], *, path: str = "<config>",
                 folder: Path | None = None) -> Config:
    """
    Validate a parsed TOML document.

    @param folder: what relative paths are relative to (the config file's
        folder; the working directory if L{None}).
    @raise ConfigError: it describes something invalid.
    """
    return _Parser(path, folder or Path.cwd()).parse(document)


def defaultConfig() -> Config:
    """
    The embedded default: backplane C{TIME}, a clock publishing
    C{time.asctime()} each second, served on C{tcp:1500:interface=127.0.0.1}.
    """
    return parseConfig(tomllib.loads(DEFAULT_CONFIG), path="<embedded default>")


#: Aliases, the spellings of earlier releases.
read_config = readConfig
parse_config = parseConfig
default_config = defaultConfig


class _Parser:
    def __init__(self, path: str, folder: Path) -> None:
        self.path = path
        self.folder = folder

    def error(self, where: str | None, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, where=where)

    def parse(self, document: Mapping[str, Any]) -> Config:
        for key in document:
            if key not in _TOP_LEVEL:
                raise self.error(None, f"unknown table [{key}]{_suggest(key, _TOP_LEVEL)}")
        backplanes = self.backplanes(document.get("backplane", {}))
        tables: dict[str, Any] = {}
        for table, entryType in _TABLES.items():
            entries = document.get(table, [])
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise self.error(table, f"must be written [[{table}]] (an array of tables)")
            tables[table] = [
                self.entry(entryType, entry, f"{table}[{i}]")
                for i, entry in enumerate(entries, 1)
            ]
        tables["file"] = [dataclasses.replace(e, path=str(self.folder / e.path))
                          for e in tables["file"]]
        tables["connect"] = [dataclasses.replace(e, spool=str(self.folder / e.spool))
                             if e.spool else e for e in tables["connect"]]
        backplanes = {
            name: dataclasses.replace(e, store=str(self.folder / e.store)) if e.store else e
            for name, e in backplanes.items()
        }
        tables["listen"] = [
            dataclasses.replace(e, tls_client_ca=str(self.folder / e.tls_client_ca))
            if e.tls_client_ca else e for e in tables["listen"]
        ]
        singles: dict[str, Any] = {}
        for table, entryType in _SINGLE_TABLES.items():
            if table in document:
                entry = document[table]
                if not isinstance(entry, dict):
                    raise self.error(table, f"must be written [{table}] (one table)")
                singles[table] = self.entry(entryType, entry, table)
        config = self.access(Config(path=self.path, backplanes=backplanes, **tables, **singles))
        self.references(config)
        return config

    def access(self, config: Config) -> Config:
        """
        Check the C{[[user]]} tables, the C{[auth]} table and the C{auth} and
        C{origins} keys of ports; return the config with the key file's path
        made relative to the config file's folder.
        """
        seen: dict[str, dict[str, int]] = {"name": {}, "cert": {}, "token_sha256": {}}
        for i, user in enumerate(config.user, 1):
            where = f"user[{i}]"
            for key, earlier in seen.items():
                value = getattr(user, key)
                if value is not None and value in earlier:
                    raise self.error(f"{where}.{key}",
                                     f"must be unique: it is the same as user[{earlier[value]}]'s")
                earlier[value] = i
            if user.token_sha256 is None and user.cert is None:
                raise self.error(where, "needs token_sha256, cert, or both (python -m backplane "
                                        "hash-token --new makes a token and its hash)")
        if config.auth is not None:
            from backplane.auth.signed import KeyFileError, readKeyFile

            path = str(self.folder / config.auth.jwt_key_file)
            try:
                readKeyFile(path)
            except KeyFileError as e:
                raise self.error("auth.jwt_key_file", f"cannot use {path!r}: {e}") from None
            config = dataclasses.replace(
                config, auth=dataclasses.replace(config.auth, jwt_key_file=path))
        for i, entry in enumerate(config.listen, 1):
            if entry.udp and entry.auth:
                raise self.error(f"listen[{i}].auth", "a udp: port cannot check tokens (a "
                                                      "datagram has no AUTH line): restrict it "
                                                      "with allow")
        checking = [(f"listen[{i}]", entry.auth) for i, entry in enumerate(config.listen, 1)]
        if config.monitor is not None:
            checking.append(("monitor", config.monitor.auth))
        for where, auth in checking:
            if auth and not config.user and config.auth is None:
                raise self.error(f"{where}.auth", "needs a [[user]] table or an [auth] table "
                                                  "with jwt_key_file, to check tokens against")
        for i, entry in enumerate(config.listen, 1):
            if entry.origins is not None and entry.protocol not in _ORIGIN_PROTOCOLS:
                raise self.error(f"listen[{i}].origins",
                                 f"applies to web ports only ({', '.join(_ORIGIN_PROTOCOLS)}), "
                                 f"not to protocol {entry.protocol!r}")
        return config

    def backplanes(self, table: Any) -> dict[str, BackplaneEntry]:
        if not isinstance(table, dict):
            raise self.error("backplane", "must be written [backplane.NAME] (one table a name)")
        result = {}
        for name, options in table.items():
            where = f"backplane.{name}"
            if not isinstance(options, dict):
                raise self.error(where, "must be a table: write [backplane.NAME]")
            if not name:
                raise self.error(where, "a backplane needs a name")
            result[name] = self.entry(BackplaneEntry, {**options}, where, name=name)
        return result

    def entry(self, entryType: Any, raw: Mapping[str, Any], where: str, **given: Any) -> Any:
        fields = {f.name: f for f in dataclasses.fields(entryType)
                  if not f.metadata.get("internal")}
        hints = typing.get_type_hints(entryType)
        for key in raw:
            if key not in fields:
                raise self.error(where, f"unknown key {key!r}{_suggest(key, list(fields))}")
        values = dict(given)
        for name, spec in fields.items():
            parse = spec.metadata.get("parse")
            if name in raw and parse is not None:
                try:
                    values[name] = parse(raw[name])
                except ValueError as e:
                    raise self.error(f"{where}.{name}", str(e)) from None
            elif name in raw:
                values[name] = self.value(raw[name], hints[name], spec, f"{where}.{name}")
            elif spec.default is dataclasses.MISSING:
                raise self.error(where, f"missing key {name!r}")
        return entryType(**values)

    def value(self, value: Any, hint: Any, spec: dataclasses.Field[Any], where: str) -> Any:
        allowed = _alternatives(hint)
        if value is None and type(None) in allowed:  # pragma: no cover - TOML has no null
            return None
        for kind in allowed:
            if typing.get_origin(kind) is Literal:
                choices = typing.get_args(kind)
                if value in choices:
                    return value
                raise self.error(where, f"must be one of {', '.join(map(repr, choices))}, "
                                        f"not {value!r}")
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return self.bounded(float(value), spec, where)
            if kind is int and isinstance(value, int) and not isinstance(value, bool):
                return self.bounded(value, spec, where)
            if kind in (str, bool) and isinstance(value, kind):
                if kind is str and not value:
                    raise self.error(where, "must not be empty")
                return value
        expected = " or ".join(_describe(k) for k in allowed if k is not type(None))
        raise self.error(where, f"must be {expected}, not {_describe(type(value))} {value!r}")

    def bounded(self, value: float, spec: dataclasses.Field[Any], where: str) -> Any:
        minimum, above = spec.metadata.get("minimum"), spec.metadata.get("above")
        if minimum is not None and value < minimum:
            raise self.error(where, f"must be {minimum} or more, not {value}")
        if above is not None and not value > above:
            raise self.error(where, f"must be more than {above}, not {value}")
        maximum = spec.metadata.get("maximum")
        if maximum is not None and value > maximum:
            shown = int(maximum) if float(maximum).is_integer() else maximum
            raise self.error(where, f"must be {shown} or less, not {value}")
        return value

    def references(self, config: Config) -> None:
        declared = config.backplanes
        for table in _TABLES:
            for i, entry in enumerate(getattr(config, table), 1):
                where = f"{table}[{i}]"
                for key in ("publish_to", "subscribe_to"):
                    name = getattr(entry, key, None)
                    if name is not None and name not in declared:
                        known = ", ".join(sorted(declared)) or "none"
                        raise self.error(f"{where}.{key}",
                                         _undeclared(name, key, known))
                if table == "listen" and self.chosenBackplanes(entry, where):
                    continue
                if table in ("listen", "connect") and not (entry.publish_to or entry.subscribe_to):
                    raise self.error(where, "needs publish_to, subscribe_to, or both")
        self.history(config)
        if config.shared and config.redis is None:
            raise self.error(f"backplane.{config.shared[0]}.shared",
                             "a shared backplane needs a [redis] table with the server's url")
        if config.redis is not None:
            try:
                parseURL(config.redis.url)
            except ValueError as e:
                raise self.error("redis.url", str(e)) from None
            if config.redis.max_delay < config.redis.initial_delay:
                raise self.error("redis.max_delay",
                                 f"must be at least initial_delay ({config.redis.initial_delay})")
        total = config.limits.max_pending_total
        unfinished = config.limits.max_unfinished_total
        for i, entry in enumerate(config.listen, 1):
            if entry.framing == "syslog" and (entry.protocol != "lines" or entry.ids
                                              or entry.acks or entry.publish_to is None):
                raise self.error(f"listen[{i}].framing",
                                 "syslog framing is for a lines port that publishes: it needs "
                                 "publish_to, protocol = \"lines\", and no ids or acks")
            if entry.prefix and (entry.protocol != "lines" or entry.acks
                                 or entry.publish_to is None):
                raise self.error(f"listen[{i}].prefix",
                                 "a prefix is for a lines port that publishes: it needs "
                                 "publish_to, protocol = \"lines\", and no acks")
            if entry.udp:
                self.udp(entry, f"listen[{i}]")
                continue
            if entry.max_pending > total:
                raise self.error(f"listen[{i}].max_pending",
                                 f"must be at most [limits] max_pending_total ({total}), "
                                 f"which bounds every subscriber together, not {entry.max_pending}")
            bounded = ("max_line_length", "max_request") if entry.protocol == "redis" else (
                "max_line_length",)
            for key in bounded:
                if getattr(entry, key) > unfinished:
                    raise self.error(
                        f"listen[{i}].{key}",
                        f"must be at most [limits] max_unfinished_total ({unfinished}), which "
                        f"bounds every client's unfinished input together, "
                        f"not {getattr(entry, key)}")
            endpoint = self.endpoint(entry.endpoint, endpoints.serverFromString,
                                     f"listen[{i}].endpoint", parsed=entry.description)
            if entry.tls_client_ca is not None:
                self.clientCertificates(endpoint, entry, f"listen[{i}]")
        if config.monitor is not None:
            self.endpoint(config.monitor.endpoint, endpoints.serverFromString, "monitor.endpoint")
        for i, entry in enumerate(config.connect, 1):
            # With resume, upstream's lines carry an id besides.
            room = ID_PREFIX_ROOM if entry.resume else 0
            if entry.max_line_length + room > unfinished:
                raise self.error(
                    f"connect[{i}].max_line_length",
                    f"must be at most [limits] max_unfinished_total ({unfinished})"
                    + (f" less {room} bytes for an id (resume = true)" if room else "")
                    + ", which bounds every connection's unfinished input together, relays' "
                      f"included, not {entry.max_line_length}")
            self.endpoint(entry.endpoint, endpoints.clientFromString, f"connect[{i}].endpoint")
            if entry.max_delay < entry.initial_delay:
                raise self.error(f"connect[{i}].max_delay",
                                 f"must be at least initial_delay ({entry.initial_delay})")

    def chosenBackplanes(self, entry: ListenEntry, where: str) -> bool:
        """
        Check the keys of a C{[[listen]]} whose clients choose their
        backplanes (SPEC section 12): a C{"redis"} port, or a C{"websocket"}
        or C{"sse"} port that lists C{backplanes}; return whether it is one.
        """
        if entry.protocol != "redis" and entry.max_request != DEFAULT_MAX_REQUEST:
            raise self.error(f"{where}.max_request", 'is for a port with protocol = "redis"')
        if entry.backplanes is None:
            if entry.protocol == "redis":
                raise self.error(where, 'a redis port needs backplanes = [...]: the names or '
                                        'glob patterns of the backplanes its clients may reach, '
                                        'such as ["TIME", "chat.*"]')
            if entry.max_backplanes != DEFAULT_MAX_BACKPLANES:
                raise self.error(f"{where}.max_backplanes", "is for a port that lists backplanes")
            return False
        if entry.protocol not in ("redis", *_ORIGIN_PROTOCOLS):
            raise self.error(f"{where}.backplanes",
                             'is for a port with protocol = "redis", "websocket" or "sse", whose '
                             "clients choose their backplanes")
        for key in ("publish_to", "subscribe_to"):
            if getattr(entry, key) is not None:
                raise self.error(f"{where}.{key}",
                                 "the clients of a port that lists backplanes choose theirs "
                                 "(by name, or by the request's path): leave publish_to and "
                                 "subscribe_to out")
        for key in ("ids", "acks"):
            if getattr(entry, key):
                raise self.error(f"{where}.{key}", "is not for a port that lists backplanes")
        return True

    def history(self, config: Config) -> None:
        """
        The keys that need a history, or that a history rules out.
        """
        stores: dict[str, str] = {}
        for name, backplane in config.backplanes.items():
            if backplane.store is not None:
                other = stores.setdefault(str(Path(backplane.store).resolve()), name)
                if other != name:
                    raise self.error(f"backplane.{name}.store",
                                     f"backplane {other!r} has this store already: "
                                     "each backplane needs a folder of its own")
        for i, entry in enumerate(config.listen, 1):
            where = f"listen[{i}]"
            if entry.protocol == "sse" and (entry.publish_to or not entry.subscribe_to) \
                    and entry.backplanes is None:
                raise self.error(where, "an sse port only serves a backplane: it needs "
                                        "subscribe_to and no publish_to")
            if entry.idle_timeout and (entry.protocol != "lines" or entry.publish_to is None):
                raise self.error(f"{where}.idle_timeout",
                                 "is for a lines port with publish_to: its publishers' "
                                 "unfinished lines")
            if entry.acks and (entry.subscribe_to or entry.protocol != "lines"):
                raise self.error(f"{where}.acks", "acks are for a lines port that only publishes: "
                                                  "remove subscribe_to, or acks")
            if not entry.ids:
                continue
            if entry.publish_to is not None:
                raise self.error(f"{where}.ids", "ids are for a port that only subscribes: "
                                                 "remove publish_to, or ids")
            if entry.protocol == "sse":
                raise self.error(f"{where}.ids", "an sse port always sends ids where the "
                                                 "backplane has a history: leave ids out")
            backplane = config.backplanes[entry.subscribe_to or ""]
            if not backplane.hasHistory:
                raise self.error(
                    f"{where}.ids",
                    f"backplane {backplane.name!r} keeps no history, so its messages have no "
                    f"ids: add history = N or store = \"DIR\" to [backplane.{backplane.name}]")
        for i, connect in enumerate(config.connect, 1):
            if connect.resume and connect.publish_to is None:
                raise self.error(f"connect[{i}].resume",
                                 "resume is for what comes from upstream: it needs publish_to")
        self.acks(config, stores)

    def acks(self, config: Config, stores: dict[str, str]) -> None:
        """
        The keys of a relay with acks (SPEC section 10), and its spool's
        folder, which nothing else may use.
        """
        spools: dict[str, str] = {}
        for i, connect in enumerate(config.connect, 1):
            where = f"connect[{i}]"
            if connect.acks and (connect.subscribe_to is None or connect.publish_to is not None):
                raise self.error(f"{where}.acks",
                                 "acks are for a relay that only sends upstream: it needs "
                                 "subscribe_to, and no publish_to")
            if connect.spool is None:
                for key, default in (("spool_bytes", DEFAULT_SPOOL_BYTES),
                                     ("spool_fsync_interval", DEFAULT_SPOOL_FSYNC_INTERVAL)):
                    if getattr(connect, key) != default:
                        raise self.error(f"{where}.{key}",
                                         'is for a spool: add spool = "DIR" (and acks = true)')
                if connect.acks and connect.buffer < 1:
                    raise self.error(f"{where}.buffer",
                                     "with acks, buffer must be at least 1 (the lines kept "
                                     "until upstream acknowledges them)")
                continue
            if not connect.acks:
                raise self.error(f"{where}.spool",
                                 "a spool keeps lines until upstream acknowledges them: "
                                 "add acks = true")
            folder = str(Path(connect.spool).resolve())
            if folder in stores:
                raise self.error(f"{where}.spool",
                                 f"backplane {stores[folder]!r} keeps its store there: a spool "
                                 "needs a folder of its own")
            other = spools.setdefault(folder, where)
            if other != where:
                raise self.error(f"{where}.spool",
                                 f"{other} has this spool already: each relay needs a "
                                 "folder of its own")

    def udp(self, entry: ListenEntry, where: str) -> None:
        """
        A C{udp:} port: its endpoint, and the keys that a datagram port
        cannot honour (it has no connections, no subscribers).
        """
        from backplane.datagram import parseUDP

        try:
            parseUDP(entry.endpoint)
        except ValueError as e:
            raise self.error(f"{where}.endpoint",
                             f"cannot use endpoint {entry.endpoint!r}: {e}") from None
        if entry.publish_to is None or entry.subscribe_to is not None:
            raise self.error(where, "a udp: port only publishes what it receives: it needs "
                                    "publish_to, and no subscribe_to")
        if entry.protocol != "lines":
            raise self.error(f"{where}.protocol",
                             f"a udp: port receives lines, not {entry.protocol!r}")
        refused = {
            "max_clients": (entry.max_clients is not None, "a udp: port has no connections"),
            "auth": (entry.auth, "a udp: port cannot check tokens (a datagram has no "
                                 "AUTH line): restrict it with allow"),
            "tls_client_ca": (entry.tls_client_ca is not None, "a udp: port has no TLS"),
            "acks": (entry.acks, "a udp: port cannot acknowledge: use a tcp port with acks"),
            "ids": (entry.ids, "a udp: port only publishes"),
        }
        for key, (wrong, reason) in refused.items():
            if wrong:
                raise self.error(f"{where}.{key}", reason)

    def endpoint(self, description: str, parse: Any, where: str,
                 parsed: str | None = None) -> Any:
        # What Twisted's parser accepts but start-up would not: a port out
        # of range, an interface that is no address, a key file that never
        # ends.
        problem = _endpointProblem(parsed or description, self.folder,
                                   parse is endpoints.serverFromString)
        if problem is not None:
            raise self.error(where, f"cannot use endpoint {description!r}: {problem}")
        # Parsing builds the endpoint (reading any certificate it names)
        # without listening or connecting; a memory reactor keeps it so, and
        # leaves the choice of the real reactor to twistd.
        try:
            return parse(MemoryReactor(), parsed or description)
        except Exception as e:
            reason = _explain(e)
            unexpected = re.search(r"unexpected keyword argument '(\w+)'", reason)
            if unexpected:
                reason = f"unknown parameter {unexpected.group(1)!r}"
            raise self.error(where, f"cannot use endpoint {description!r}: {reason}") from None

    def clientCertificates(self, endpoint: Any, entry: ListenEntry, where: str) -> None:
        from backplane.tls import loadCertificates, requireClientCertificates

        if entry.endpoint.split(":", 1)[0].lower() != "ssl":
            raise self.error(f"{where}.tls_client_ca",
                             f"needs an ssl: endpoint, not {entry.endpoint!r}")
        assert entry.tls_client_ca is not None
        try:
            authorities = loadCertificates(entry.tls_client_ca)
            requireClientCertificates(endpoint, authorities)
        except Exception as e:
            raise self.error(f"{where}.tls_client_ca",
                             f"cannot use {entry.tls_client_ca!r}: {_explain(e)}") from None


_FILE_PARAMETERS = ("privateKey", "certKey", "extraCertChain", "dhParameters", "certificate",
                    "caCertsDir")


def _endpointProblem(description: str, folder: Path, server: bool) -> str | None:
    """
    What is wrong with an endpoint description that Twisted's parser lets
    through, or L{None}.
    """
    fields = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    kind = fields[0].lower()
    positional = [part for part in fields[1:] if "=" not in part]
    keywords = dict(part.split("=", 1) for part in fields[1:] if "=" in part)
    if kind in ("tcp", "tcp6", "ssl", "tls"):
        # Servers: tcp:PORT; clients: tcp:HOST:PORT, tls:HOST:PORT.
        where = 0 if server else 1
        port = keywords.get("port", positional[where] if len(positional) > where else None)
        if port is not None and not (port.isdigit() and int(port) <= 65535):
            return f"the port must be a number from 0 to 65535, not {port[:40]!r}"
        interface = keywords.get("interface")
        if interface is not None:
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                return f"interface must be an IP address, not {interface[:60]!r}"
        backlog = keywords.get("backlog")
        if backlog is not None and not (backlog.isdigit() and 1 <= int(backlog) <= 65535):
            return f"backlog must be a number from 1 to 65535, not {backlog[:40]!r}"
    for key in _FILE_PARAMETERS:
        if key in keywords and key != "caCertsDir":
            path = folder / keywords[key]
            try:
                readBounded(path, MAX_KEY_FILE_BYTES)
            except FileNotFoundError:
                continue  # Twisted's own message names it
            except (OSError, ValueError) as e:
                reason = e.strerror if isinstance(e, OSError) else str(e)
                return f"{key} {keywords[key][:80]!r}: {reason}"
    return None


#: A name TOML takes unquoted as a key ("bare key").
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def tableHeader(name: str) -> str:
    """
    The TOML table header that declares backplane C{name}:
    C{[backplane.NEWS]}, or with the name quoted where it must be,
    C{[backplane."chat.room"]}.
    """
    if _BARE_KEY.fullmatch(name):
        return f"[backplane.{name}]"
    return f"[backplane.{json.dumps(name)}]"


def _undeclared(name: str, key: str, known: str) -> str:
    """
    What to say of a C{publish_to} or C{subscribe_to} that names no
    declared backplane.
    """
    if any(c in name for c in "*?["):
        return (f"backplane {name!r} is not declared: {key} names one backplane, not a "
                f"pattern (a port, relay or file serves one backplane; patterns are for "
                f"[[user]] rights); declare each backplane with a table such as "
                f"[backplane.NEWS] and name it here (declared: {known})")
    return f"backplane {name!r} is not declared: add {tableHeader(name)} (declared: {known})"


def _explain(error: Exception) -> str:
    """
    What went wrong, in words: an endpoint or a certificate that cannot be
    used.
    """
    if isinstance(error, OSError) and error.strerror:
        if error.filename is not None:
            return f"{error.strerror}: {error.filename!r}"
        return error.strerror
    original = getattr(error, "originalException", None)  # FilePath's UnlistableError
    if isinstance(original, OSError):
        return f"cannot list the folder: {_explain(original)}"
    if type(error).__module__.startswith("OpenSSL"):
        reasons = error.args[0] if error.args and isinstance(error.args[0], list) else []
        details = "; ".join(": ".join(str(part) for part in reason if part)
                            for reason in reasons if isinstance(reason, tuple))
        return f"not a valid PEM certificate or key (OpenSSL: {details or error})"
    if isinstance(error, ImportError):
        return f"TLS needs pyOpenSSL: pip install 'Twisted[tls]' ({error})"
    return str(error) or type(error).__name__


def _alternatives(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _describe(kind: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(kind, getattr(kind, "__name__", str(kind)))


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(choices)})"
