"""
The command-line client, for people without C{nc} habits:
C{python -m backplane sub|pub|tail|check}.

  - C{sub WHERE}: print the lines a port sends (a port that subscribes to a
    backplane), until the server closes the connection or Ctrl-C;
    C{--resume ID} on an C{ids = true} port, C{--token} on an C{auth = true}
    one.
  - C{pub WHERE [LINE ...]}: publish the lines given, or standard input's;
    with C{--acks}, on an C{acks = true} port, wait until the server has
    acknowledged every line, and fail if it does not.
  - C{tail MONITOR NAME}: print the lines of backplane C{NAME} from the
    monitor's live tail (C{/tail/NAME}).
  - C{check CONFIG}: validate a config file, as C{twistd backplane --check}
    does.

C{WHERE} is C{HOST:PORT} (C{localhost:1500}, C{[::1]:1500}) or a Twisted
client endpoint description (C{tcp:host=example.org:port=1500},
C{tls:example.org:1501}, C{unix:path=/run/backplane.sock}).  A mistake of
the user's (a refused connection, a refused token, a bad file) is one line
on standard error and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote, urlsplit

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import react
from twisted.python.failure import Failure

#: Where a user writes C{HOST:PORT}: a name or IPv4 address, or an IPv6
#: address in brackets, then the port.
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.%a-z]+)\]|(?P<host>[A-Za-z0-9_.-]+))"
                        r":(?P<port>[0-9]{1,5})")

#: The longest line of the server's that the client reads as a reply
#: (C{ERR reason}, C{ACK N}).
MAX_REPLY = 4096

#: The longest line of the live tail's stream (one event: a JSON array of
#: the lines of one chunk) that C{tail} reads.
MAX_EVENT_LINE = 64 * 1024 * 1024

#: Seconds C{pub --acks} waits, after its last line, for the server to
#: acknowledge every line (default).
DEFAULT_ACK_TIMEOUT = 10.0


class UserError(Exception):
    """
    Something the user gave or asked for cannot be done; the message says
    what, in one line.
    """


def clientEndpoint(reactor: Any, where: str) -> IStreamClientEndpoint:
    """
    The endpoint C{where} names: C{HOST:PORT}, or a Twisted client endpoint
    description.

    @raise UserError: C{where} is neither.
    """
    match = _HOST_PORT.fullmatch(where)
    if match is not None:
        port = int(match["port"])
        if not 0 < port < 65536:
            raise UserError(f"{where!r}: the port must be 1 to 65535")
        host = match["ipv6"] or match["host"]
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port)
        return endpoint
    if ":" not in where:
        raise UserError(f"{where!r}: expected HOST:PORT (localhost:1500) or an endpoint "
                        f"(tcp:host=localhost:port=1500)")
    try:
        described: IStreamClientEndpoint = clientFromString(reactor, where)
    except Exception as e:
        raise UserError(f"cannot use endpoint {where!r}: {e}") from None
    return described


def _reason(failure: Failure) -> str:
    """
    A failure to connect or a lost connection, in a few words.
    """
    if failure.check(ConnectionRefusedError):
        return "connection refused (is the service running, on that port?)"
    if failure.check(TimeoutError):
        return "timed out"
    return failure.getErrorMessage().strip().rstrip(".") or type(failure.value).__name__


async def _connect(reactor: Any, where: str, protocol: Protocol) -> None:
    endpoint = clientEndpoint(reactor, where)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
    except Exception:
        raise UserError(f"cannot connect to {where}: {_reason(Failure())}") from None


class _Replies:
    """
    The lines of a byte stream, split as they come; a line longer than
    C{limit} is skipped (and counted in L{skipped}).
    """

    def __init__(self, limit: int = MAX_REPLY) -> None:
        self.limit = limit
        self.pending: list[bytes] = []
        self.size = 0
        self.skipping = False
        self.skipped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """
        The complete lines C{data} ends, without their newline (and C{\\r}).
        """
        if b"\n" not in data:
            self._keep(data)
            return []
        first, *lines, rest = data.split(b"\n")
        # The end of the line kept so far, unless it was too long.
        complete = [] if self.skipping else [b"".join(self.pending) + first]
        self.pending, self.size, self.skipping = [], 0, False
        self._keep(rest)
        kept = [line.rstrip(b"\r") for line in complete + lines if len(line) <= self.limit]
        self.skipped += len(complete) + len(lines) - len(kept)
        return kept

    def _keep(self, data: bytes) -> None:
        if self.skipping or not data:
            return
        self.pending.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self.pending, self.size, self.skipping = [], 0, True
            self.skipped += 1


def _refusal(line: bytes) -> str | None:
    """
    The reason of an C{ERR reason} line, or L{None}.
    """
    if line.startswith(b"ERR "):
        return line[4:].decode("utf-8", "replace")
    return None


class SubscribeClient(Protocol):
    """
    Writes what the server sends to C{output}, once the greeting
    (C{AUTH}, C{RESUME}) is sent; a first line C{ERR reason} after a
    greeting is a refusal, not output.

    @ivar done: fires once the connection is lost.
    @ivar reason: why it was lost.
    @ivar refused: the reason the server refused the greeting, if it did.
    """

    transport: Any

    def __init__(self, output: BinaryIO, greeting: bytes = b"") -> None:
        self.output = Output(output)
        self.greeting = greeting
        self.checking = bool(greeting)
        self.first = b""
        self.refused: str | None = None
        self.done: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self.checking:
            self.first += data
            end = self.first.find(b"\n")
            if end < 0 and len(self.first) <= MAX_REPLY:
                return
            self.checking = False
            data, self.first = self.first, b""
            self.refused = _refusal(data[:end].rstrip(b"\r")) if end >= 0 else None
            if self.refused is not None:
                self.transport.loseConnection()
                return
        if not self.output.write(data):
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.first and self.refused is None:
            self.output.write(self.first)
        self.reason = reason if reason is not None else Failure(ConnectionDone())
        self.done.callback(None)


class PublishClient(Protocol):
    """
    Sends lines, after the greeting (C{AUTH}, C{HELLO}), and reads what the
    server says: C{ACK N} (with acks) and C{ERR reason}.

    @ivar sent: lines sent (after the greeting).
    @ivar acked: the N of the server's last C{ACK N}.
    @ivar refused: the reason of the server's C{ERR reason}, if it sent one.
    @ivar done: fires once the connection is lost.
    @ivar reason: why it was lost.
    """

    transport: Any

    def __init__(self, greeting: bytes = b"", *, acks: bool = False,
                 errFirstOnly: bool = True) -> None:
        self.greeting = greeting
        self.acks = acks
        self.errFirstOnly = errFirstOnly
        self.replies = _Replies()
        self.heard = 0
        self.sent = 0
        self.acked = 0
        self.refused: str | None = None
        self.partial = False
        self.done: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.progress: Callable[[], None] = lambda: None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def send(self, data: bytes) -> None:
        """
        Send C{data}, part of the lines: every C{b"\\n"} ends one.
        """
        if data:
            self.sent += data.count(b"\n")
            self.partial = not data.endswith(b"\n")
            self.transport.write(data)

    def finish(self) -> None:
        """
        The end of the lines: end the last one if it is not.
        """
        if self.partial:
            self.send(b"\n")

    def dataReceived(self, data: bytes) -> None:
        for line in self.replies.feed(data):
            self.heard += 1
            reason = _refusal(line)
            if reason is not None and (self.acks or not self.errFirstOnly or self.heard == 1):
                self.refused = reason
                self.transport.loseConnection()
                return
            if self.acks and line.startswith(b"ACK "):
                try:
                    self.acked = int(line[4:])
                except ValueError:
                    continue
                self.progress()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason if reason is not None else Failure(ConnectionDone())
        self.done.callback(None)


class _StandardInput(Protocol):
    """
    Standard input, handed to a L{PublishClient} as it comes.
    """

    def __init__(self, client: PublishClient) -> None:
        self.client = client
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.client.send(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.ended.called:
            self.ended.callback(None)


def _greeting(token: str | None, *lines: bytes) -> bytes:
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise UserError("a token is one word, without spaces")
    first = [b"AUTH " + token.encode("utf-8") + b"\n"] if token else []
    return b"".join(first + [line + b"\n" for line in lines])


def _lost(reason: Failure | None) -> str | None:
    """
    Why a connection ended, if not because it was closed cleanly.
    """
    return None if reason is None or reason.check(ConnectionDone) else _reason(reason)


class Output:
    """
    Where the lines received go (standard output): a reader that went
    away (C{| head}) ends the command quietly.

    @ivar gone: whether the reader went away.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.gone = False

    def write(self, data: bytes) -> bool:
        """
        Write and flush C{data}; L{False} if the reader has gone.
        """
        if self.gone:
            return False
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self.gone = True
            try:
                # What is still buffered would fail again as Python exits.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            return False
        return True


async def subscribe(reactor: Any, options: argparse.Namespace, stdout: BinaryIO,
                    stderr: TextIO) -> int:
    """
    C{sub}: print the lines a port sends until it closes the connection.
    """
    if options.resume is not None and not re.fullmatch(r"[0-9a-z]{1,32}:[0-9]{1,20}|0",
                                                        options.resume):
        raise UserError(f"--resume {options.resume!r}: expected an id EPOCH:SEQ "
                        f"(e.g. k3x9:1200) or 0")
    resume = [b"RESUME " + options.resume.encode("ascii")] if options.resume else []
    client = SubscribeClient(stdout, _greeting(options.token, *resume))
    await _connect(reactor, options.where, client)
    await client.done
    if client.refused is not None:
        raise UserError(f"{options.where} refused: {client.refused}")
    if client.output.gone:
        return 0
    lost = _lost(client.reason)
    if lost is not None:
        raise UserError(f"lost the connection to {options.where}: {lost}")
    return 0


def _first(*deferreds: Deferred[Any]) -> Deferred[None]:
    """
    A L{Deferred} that fires once any of C{deferreds} has, leaving their
    results to their own callbacks.
    """
    first: Deferred[None] = Deferred()

    def fired(result: object) -> object:
        if not first.called:
            first.callback(None)
        return result

    for deferred in deferreds:
        deferred.addBoth(fired)
    return first


async def publish(reactor: Any, options: argparse.Namespace,
                  readStandardInput: Callable[[Protocol], Any]) -> int:
    """
    C{pub}: publish the lines given, or standard input's; with C{--acks},
    wait for the server to acknowledge them all.
    """
    for line in options.lines:
        if "\n" in line:
            raise UserError("a LINE argument holds no newline: give each line as an argument")
    hello = [b"HELLO cli-" + secrets.token_hex(8).encode("ascii") + b" 0"] if options.acks else []
    client = PublishClient(_greeting(options.token, *hello), acks=options.acks)
    await _connect(reactor, options.where, client)
    if options.lines:
        client.send(b"".join(line.encode("utf-8") + b"\n" for line in options.lines))
    else:
        reader = _StandardInput(client)
        source: Any = readStandardInput(reader)
        # Standard input is read no faster than the server takes the lines.
        client.transport.registerProducer(source, True)
        await _first(reader.ended, client.done)
        if not client.done.called:
            client.transport.unregisterProducer()
        source.loseConnection()
    if not client.done.called:
        client.finish()
        if options.acks:
            await _acknowledged(reactor, client, options.timeout)
        client.transport.loseConnection()
    await client.done
    if client.refused is not None:
        raise UserError(f"{options.where} refused: {client.refused}")
    if options.acks and client.acked < client.sent:
        raise UserError(f"{options.where} acknowledged {client.acked} of {client.sent} lines "
                        f"(is it a port with acks = true?)")
    lost = _lost(client.reason)
    if lost is not None:
        raise UserError(f"lost the connection to {options.where}: {lost}")
    return 0


async def _acknowledged(reactor: Any, client: PublishClient, timeout: float) -> None:
    """
    Wait until the server has acknowledged every line C{client} sent, the
    connection is lost, or C{timeout} seconds have passed.
    """
    done: Deferred[None] = Deferred()

    def progress() -> None:
        if client.acked >= client.sent and not done.called:
            done.callback(None)

    client.progress = progress
    progress()
    timer = reactor.callLater(timeout, lambda: None if done.called else done.callback(None))
    await _first(done, client.done)
    if timer.active():
        timer.cancel()


class EventStream(Protocol):
    """
    Reads the live tail's Server-Sent Events (C{data: ["line", ...]}, and
    C{event: dropped} with how many lines it missed) and writes each line
    to C{output}.

    @ivar done: fires once the body has ended.
    @ivar reason: why it ended.
    """

    transport: Any

    def __init__(self, output: BinaryIO, stderr: TextIO) -> None:
        self.output = Output(output)
        self.stderr = stderr
        self.replies = _Replies(MAX_EVENT_LINE)
        self.event: bytes | None = None
        self.data: list[bytes] = []
        self.done: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        skipped = self.replies.skipped
        lines = self.replies.feed(data)
        if self.replies.skipped > skipped:
            self.stderr.write(f"(an event longer than {MAX_EVENT_LINE} bytes was skipped)\n")
        for line in lines:
            if not line:
                self.dispatch()
            elif not line.startswith(b":"):
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"data":
                    self.data.append(value)
                elif field == b"event":
                    self.event = value

    def dispatch(self) -> None:
        """
        An event is complete: write its lines, or say what it tells.
        """
        event, data = self.event, b"\n".join(self.data)
        self.event, self.data = None, []
        if not data:
            return
        if event == b"dropped":
            self.stderr.write(f"({data.decode('ascii', 'replace')} lines missed: this tail fell "
                              f"behind)\n")
            self.stderr.flush()
        elif event in (None, b"message"):
            try:
                lines = json.loads(data)
            except ValueError:
                return
            if not self.output.write(b"".join(str(line).encode("utf-8") + b"\n"
                                              for line in lines)):
                self.transport.stopProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason if reason is not None else Failure(ConnectionDone())
        self.done.callback(None)


class _Body(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if sum(map(len, self.chunks)) < MAX_REPLY:
            self.chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(b"".join(self.chunks))


def tailURL(monitor: str, name: str) -> str:
    """
    The URL of the live tail of backplane C{name} on C{monitor}: a URL
    (C{http://host:9100}, C{https://host/monitor/}) or C{HOST:PORT}.
    """
    if "://" not in monitor:
        if _HOST_PORT.fullmatch(monitor) is None:
            raise UserError(f"{monitor!r}: expected the monitor's URL (http://localhost:9100) "
                            f"or HOST:PORT")
        monitor = "http://" + monitor
    parts = urlsplit(monitor)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{monitor!r}: the monitor's URL is http:// or https://")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/tail/{quote(name, safe='')}"


async def tail(reactor: Any, options: argparse.Namespace, stdout: BinaryIO,
               stderr: TextIO) -> int:
    """
    C{tail}: print the lines of a backplane from the monitor's live tail.
    """
    from twisted.web.client import Agent, ResponseDone
    from twisted.web.http_headers import Headers

    url = tailURL(options.monitor, options.name)
    headers = Headers({b"accept": [b"text/event-stream"]})
    if options.token:
        headers.addRawHeader(b"authorization", b"Bearer " + options.token.encode("utf-8"))
    try:
        response = await Agent(reactor).request(b"GET", url.encode("ascii"), headers)
    except Exception:
        raise UserError(f"cannot connect to {url}: {_reason(Failure())}") from None
    if response.code != 200:
        body = _Body()
        response.deliverBody(body)
        text = (await body.done).decode("utf-8", "replace").strip().splitlines()
        raise UserError(f"{url}: {response.code} {response.phrase.decode('ascii', 'replace')}"
                        + (f": {text[0]}" if text else ""))
    stream = EventStream(stdout, stderr)
    response.deliverBody(stream)
    await stream.done
    reason = stream.reason
    if not stream.output.gone and reason is not None and not reason.check(ResponseDone,
                                                                            ConnectionDone):
        raise UserError(f"lost the tail {url}: {_reason(reason)}")
    return 0


def check(options: argparse.Namespace, stdout: TextIO) -> int:
    """
    C{check}: validate a config file as C{twistd backplane --check} does.
    """
    from backplane.config import readConfig
    from backplane.errors import ConfigError

    try:
        config = readConfig(options.config)
    except ConfigError as e:
        raise UserError(str(e)) from None
    stdout.write(f"{config.path}: OK\n")
    return 0


def addCommands(commands: Any) -> None:
    """
    Add C{sub}, C{pub}, C{tail} and C{check} to the subcommands of
    C{python -m backplane}.

    @param commands: what C{ArgumentParser.add_subparsers} returned.
    """
    where = ("HOST:PORT (localhost:1500, [::1]:1500) or a Twisted client endpoint "
             "(tcp:host=example.org:port=1500, tls:example.org:1501, "
             "unix:path=/run/backplane.sock)")
    token = "an access token, for a port or monitor with auth = true (sent first, as AUTH TOKEN)"
    sub = commands.add_parser(
        "sub", help="print the lines a port sends",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Connect to a port that subscribes to a backplane and print each line it\n"
                    "sends, until the server closes the connection (exit status 0) or Ctrl-C.",
        epilog="examples:\n"
               "  python -m backplane sub localhost:1500\n"
               "  python -m backplane sub localhost:1510 --resume k3x9:1200  # ids = true\n"
               "  python -m backplane sub tls:example.org:1501 --token \"$TOKEN\"")
    sub.add_argument("where", metavar="WHERE", help=where)
    sub.add_argument("--resume", metavar="ID",
                     help="on a port with ids = true: send RESUME ID first, to get the lines "
                          "after ID (0: everything the history has); each line comes as 'ID "
                          "line'")
    sub.add_argument("--token", help=token)

    pub = commands.add_parser(
        "pub", help="publish lines to a port",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Publish each LINE given, or else every line of standard input as it\n"
                    "comes, to a port that publishes to a backplane. With --acks, on a port\n"
                    "with acks = true, wait until the server has acknowledged every line:\n"
                    "exit status 0 only if it has. Options come before WHERE and the lines.",
        epilog="examples:\n"
               "  python -m backplane pub localhost:1501 'hello' 'world'\n"
               "  tail -f /var/log/syslog | python -m backplane pub localhost:1501\n"
               "  seq 1000 | python -m backplane pub localhost:1511 --acks")
    pub.add_argument("where", metavar="WHERE", help=where)
    pub.add_argument("lines", metavar="LINE", nargs="*",
                     help="a line to publish (default: read the lines from standard input)")
    pub.add_argument("--acks", action="store_true",
                     help="the port has acks = true: send HELLO, count the server's ACK N "
                          "lines, and fail unless every line is acknowledged")
    pub.add_argument("--timeout", type=float, default=DEFAULT_ACK_TIMEOUT, metavar="SECONDS",
                     help="with --acks: how long to wait for the acknowledgements after the "
                          "last line (default: %(default)s)")
    pub.add_argument("--token", help=token)

    tailing = commands.add_parser(
        "tail", help="print the live tail of a backplane, from the monitor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the lines of backplane NAME as the monitor's live tail (/tail/NAME)\n"
                    "serves them, until the monitor closes the stream or Ctrl-C. A tail that\n"
                    "falls behind misses lines, and says how many on standard error.",
        epilog="examples:\n"
               "  python -m backplane tail localhost:9100 TIME\n"
               "  python -m backplane tail https://example.org/monitor/ LOGGER --token \"$TOKEN\"")
    tailing.add_argument("monitor", metavar="MONITOR",
                         help="the monitor's URL (http://localhost:9100, https://host/prefix/) "
                              "or HOST:PORT")
    tailing.add_argument("name", metavar="NAME", help="the backplane")
    tailing.add_argument("--token", help="an access token, for a monitor with auth = true (sent "
                                         "as Authorization: Bearer TOKEN)")

    checking = commands.add_parser(
        "check", help="validate a config file (as twistd backplane --check)",
        description="Validate a config file as 'twistd backplane --config FILE --check' does: "
                    "exit status 0 and 'FILE: OK', or 1 and the problem (the file, the entry "
                    "and the key).")
    checking.add_argument("config", metavar="CONFIG", help="the TOML config file")


def run(options: argparse.Namespace, *, stdout: BinaryIO | None = None,
        stderr: TextIO | None = None) -> int:
    """
    Run C{sub}, C{pub}, C{tail} or C{check}: a network command under the
    reactor (L{react}, which exits the process).

    @return: the exit status of C{check}.
    """
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    prefix = f"python -m backplane {options.command}"
    if options.command == "check":
        try:
            return check(options, sys.stdout)
        except UserError as e:
            err.write(f"{prefix}: {e}\n")
            return 1

    async def main(reactor: Any) -> None:
        # Ctrl-C (SIGINT, SIGTERM) stops the reactor, which closes the
        # connection: for sub and tail, the end the user asked for; pub
        # says what it had not sent or had acknowledged.
        interrupted: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", interrupted.append, True)
        try:
            if options.command == "sub":
                status = await subscribe(reactor, options, out, err)
            elif options.command == "pub":
                status = await publish(reactor, options, stdio.StandardIO)
            else:
                status = await tail(reactor, options, out, err)
        except UserError as e:
            if interrupted and options.command != "pub":
                raise SystemExit(0) from None
            err.write(f"{prefix}: {e}\n")
            err.flush()
            raise SystemExit(1) from None
        except BrokenPipeError:
            raise SystemExit(0) from None
        if status:
            raise SystemExit(status)

    react(main)
    return 0  # pragma: no cover - react exits


def commandNames() -> Sequence[str]:
    """
    The commands of this module.
    """
    return ("sub", "pub", "tail", "check")
