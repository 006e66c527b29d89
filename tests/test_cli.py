"""
C{python -m backplane sub|pub|tail|check}, run as a user runs them (a
subprocess) against a service on 127.0.0.1 built from a config, in this
process.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from backplane import BackplaneService
from backplane.build import loadConfig
from backplane.cli import tailURL
from backplane.testing import Recorder
from tests.helpers import freePort, portNumber, waitUntil

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "the-token-of-the-cli-test"

CONFIG = f"""
[backplane.NEWS]
[backplane.LOG]
[backplane.IDS]
history = 100

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
subscribe_to = "NEWS"

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
publish_to = "LOG"

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
publish_to = "LOG"
acks = true

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
subscribe_to = "IDS"
ids = true

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
subscribe_to = "NEWS"
auth = true

[monitor]
endpoint = "tcp:0:interface=127.0.0.1"

[[user]]
name = "reader"
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
subscribe = ["NEWS"]
"""

#: The ports of CONFIG, by what they do.
SUB, PUB, ACKS, IDS, AUTH = (f"listen[{i}]" for i in range(1, 6))


class Run(ProcessProtocol):
    """
    One C{python -m backplane ...} process: its output, and its exit
    status once it has ended (L{ended}).
    """

    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred[Run] = Deferred()
        self.status: int | None = None

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.status = getattr(reason.value, "exitCode", None)
        self.ended.callback(self)

    @property
    def lines(self) -> list[bytes]:
        return self.out.splitlines()


def cli(*args: str, stdin: bytes | None = b"") -> Run:
    """
    Start C{python -m backplane ARGS} (standard input: C{stdin}, then its
    end; L{None}: left open).
    """
    run = Run(stdin)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    reactor.spawnProcess(run, sys.executable, [sys.executable, "-m", "backplane", *args],
                         env=env, path=str(ROOT))
    return run


@pytest.fixture
def service(tmp_path: Path) -> Generator[BackplaneService, None, None]:
    path = tmp_path / "cli.toml"
    path.write_text(CONFIG)
    service = loadConfig(path)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def where(service: BackplaneService, name: str) -> str:
    return f"127.0.0.1:{portNumber(service.getServiceNamed(name).port)}"


def assertOneLine(run: Run, *fragments: str) -> None:
    """
    The command failed with one line on standard error, no traceback.
    """
    assert run.status == 1, (run.status, run.err)
    text = run.err.decode()
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


@inlineCallbacks
def stopPort(service: BackplaneService, name: str) -> Generator[Deferred[Any], Any, None]:
    yield service.getServiceNamed(name).stopService()


@pytest_twisted.inlineCallbacks
def test_subPrintsTheLinesUntilTheServerCloses(service):
    news = service.get("NEWS")
    run = cli("sub", where(service, SUB))
    yield waitUntil(lambda: len(news) == 1, what="the subscriber attached")
    news.publishMany([b"one", b"two", "tr\u00e8s".encode()])
    yield waitUntil(lambda: run.out.count(b"\n") == 3, what="three lines printed")
    yield stopPort(service, SUB)
    yield run.ended
    assert run.status == 0, run.err
    assert run.lines == [b"one", b"two", "tr\u00e8s".encode()]
    assert run.err == b""


@pytest_twisted.inlineCallbacks
def test_subResumes(service):
    """
    C{--resume ID} on an ids port: the lines after ID, with their ids.
    """
    ids = service.get("IDS")
    ids.publishMany([b"line %d" % i for i in range(1, 6)])
    epoch = ids.history.epoch
    port = where(service, IDS)
    run = cli("sub", port, "--resume", f"{epoch}:2")
    yield waitUntil(lambda: run.out.count(b"\n") == 3, what="three lines printed")
    yield stopPort(service, IDS)
    yield run.ended
    assert run.lines == [f"{epoch}:{i} line {i}".encode() for i in (3, 4, 5)]
    bad = yield cli("sub", port, "--resume", "yesterday").ended
    assertOneLine(bad, "--resume 'yesterday'", "EPOCH:SEQ")


@pytest_twisted.inlineCallbacks
def test_subWithAToken(service):
    news = service.get("NEWS")
    port = where(service, AUTH)
    refused = yield cli("sub", port, "--token", "not-the-token").ended
    assertOneLine(refused, f"{port} refused:")
    run = cli("sub", port, "--token", TOKEN)
    yield waitUntil(lambda: len(news) == 1, what="the subscriber attached")
    news.publish(b"for readers")
    yield waitUntil(lambda: run.out == b"for readers\n")
    yield stopPort(service, AUTH)
    yield run.ended
    assert run.status == 0


@pytest_twisted.inlineCallbacks
def test_pubArguments(service):
    log = Recorder.on(service.get("LOG"))
    run = yield cli("pub", where(service, PUB), "hello", "world").ended
    assert (run.status, run.err) == (0, b"")
    yield waitUntil(lambda: log.messages == [b"hello", b"world"])


@pytest_twisted.inlineCallbacks
def test_pubStandardInput(service):
    """
    Every line of standard input, the last one too without its newline.
    """
    log = Recorder.on(service.get("LOG"))
    lines = [b"line %d" % i for i in range(2000)]
    run = yield cli("pub", where(service, PUB), stdin=b"\n".join(lines)).ended
    assert (run.status, run.err) == (0, b"")
    yield waitUntil(lambda: log.messages == lines, what="every line")


@pytest_twisted.inlineCallbacks
def test_pubAcks(service):
    """
    C{--acks}: exit 0 once every line is acknowledged; on a port without
    acks, exit 1 saying how many were.
    """
    log = Recorder.on(service.get("LOG"))
    lines = b"".join(b"%d\n" % i for i in range(5000))
    run = yield cli("pub", "--acks", where(service, ACKS), stdin=lines).ended
    assert (run.status, run.err) == (0, b"")
    assert log.messages == lines.split()
    acks = service.getServiceNamed(ACKS).report()
    assert acks["counters"]["acknowledged"] == 5000
    (figures,) = acks["publishers"].values()
    assert figures["acknowledged"] == 5000

    plain = yield cli("pub", "--acks", "--timeout", "0.5", where(service, PUB), "x").ended
    assertOneLine(plain, "acknowledged 0 of 1 lines", "acks = true")


@pytest_twisted.inlineCallbacks
def test_tail(service):
    monitor = service.getServiceNamed("monitor")
    news = service.get("NEWS")
    run = cli("tail", where(service, "monitor"), "NEWS")
    yield waitUntil(lambda: len(monitor.tails.clients) == 1, what="the tail opened")
    news.publishMany([b"first", b"second"])
    # One event of 200 kB: the lines of one chunk.
    many = [b"%d " % i + b"y" * 200 for i in range(1000)]
    news.publishMany(many)
    yield waitUntil(lambda: run.out.count(b"\n") == 1002, what="every line printed")
    yield monitor.stopService()
    yield run.ended
    assert run.status == 0, run.err
    assert run.lines == [b"first", b"second", *many]


@pytest_twisted.inlineCallbacks
def test_tailOfAnUnknownBackplane(service):
    run = yield cli("tail", f"http://{where(service, 'monitor')}/", "NOPE").ended
    assertOneLine(run, "/tail/NOPE: 404 Not Found: ", "'NOPE'")


def test_tailURL():
    assert tailURL("localhost:9100", "TIME") == "http://localhost:9100/tail/TIME"
    assert tailURL("https://example.org/monitor/", "chat room") == (
        "https://example.org/monitor/tail/chat%20room")


@pytest_twisted.inlineCallbacks
def test_connectionRefused():
    """
    Nothing listening: one line, exit 1, for each network command.
    """
    port = freePort()
    for args in (("sub", f"localhost:{port}"), ("pub", f"127.0.0.1:{port}", "x"),
                 ("tail", f"127.0.0.1:{port}", "TIME"),
                 ("sub", f"tcp:host=127.0.0.1:port={port}")):
        run = yield cli(*args).ended
        assertOneLine(run, "cannot connect to", "connection refused")


@pytest_twisted.inlineCallbacks
def test_userMistakes():
    run = yield cli("sub", "nowhere").ended
    assertOneLine(run, "expected HOST:PORT")
    run = yield cli("sub", "tcp:host=x:port=notaport").ended
    assertOneLine(run, "cannot use endpoint")
    run = yield cli("pub", "localhost:70000", "x").ended
    assertOneLine(run, "the port must be 1 to 65535")


@pytest_twisted.inlineCallbacks
def test_check(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[backplane.A]\n[[listen]]\nendpoint = "tcp:1500"\nsubscribe_to = "A"\n')
    run = yield cli("check", str(good)).ended
    assert (run.status, run.out) == (0, f"{good}: OK\n".encode())
    bad = tmp_path / "bad.toml"
    bad.write_text('[backplane.A]\n[[listen]]\nendpoint = "tcp:1500"\nsubscribe_to = "B"\n')
    run = yield cli("check", str(bad)).ended
    assertOneLine(run, f"{bad}: listen[1].subscribe_to: backplane 'B' is not declared")


@pytest_twisted.inlineCallbacks
def test_help():
    run = yield cli("--help").ended
    for name in (b"sub", b"pub", b"tail", b"check", b"hash-token"):
        assert name in run.out
    for command in ("sub", "pub", "tail", "check"):
        run = yield cli(command, "--help").ended
        assert run.status == 0
        assert b"usage: python -m backplane " + command.encode() in run.out
        if command != "check":
            assert b"examples:" in run.out


def test_repliesSplitLines():
    """
    Lines split as they come, in pieces of any size; one longer than the
    limit is skipped, and the lines after it are not.
    """
    from backplane.cli import _Replies

    stream = b"one\r\ntwo\n" + b"x" * 50 + b"\nthree\n\nfour\n"
    for size in (1, 2, 3, 7, 64, len(stream)):
        replies, lines = _Replies(limit=20), []
        for i in range(0, len(stream), size):
            lines += replies.feed(stream[i:i + size])
        assert lines == [b"one", b"two", b"three", b"", b"four"], size
        assert replies.skipped == 1


@pytest_twisted.inlineCallbacks
def test_subEndsQuietlyOnCtrlC(service):
    """
    Ctrl-C (SIGINT) ends C{sub} with status 0 and nothing on standard
    error.
    """
    news = service.get("NEWS")
    run = cli("sub", where(service, SUB))
    yield waitUntil(lambda: len(news) == 1, what="the subscriber attached")
    news.publish(b"before")
    yield waitUntil(lambda: run.out == b"before\n")
    run.transport.signalProcess("INT")  # type: ignore[union-attr]
    yield run.ended
    assert (run.status, run.err) == (0, b"")


def test_clientEndpoint():
    """
    C{HOST:PORT} (a name, IPv4, or IPv6 in brackets) is a
    L{HostnameEndpoint}; anything else with a colon a Twisted client
    endpoint description.
    """
    from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint

    from backplane.cli import UserError, clientEndpoint

    for where, host, port in (("localhost:1500", b"localhost", 1500),
                              ("10.1.2.3:80", b"10.1.2.3", 80), ("[::1]:1500", b"::1", 1500)):
        endpoint = clientEndpoint(reactor, where)
        assert isinstance(endpoint, HostnameEndpoint), where
        assert (endpoint._hostBytes, endpoint._port) == (host, port)
    assert isinstance(clientEndpoint(reactor, "tcp:host=example.org:port=1500"),
                      TCP4ClientEndpoint)
    assert isinstance(clientEndpoint(reactor, "unix:path=/run/backplane.sock"),
                      UNIXClientEndpoint)
    for bad in ("nowhere", "localhost:0", "tcp:host=x:port=y", "nosuchtype:path=x"):
        with pytest.raises(UserError):
            clientEndpoint(reactor, bad)
