"""
UDP ports (C{endpoint = "udp:PORT"}): datagrams from Python sockets and
util-linux C{logger -d}, each a whole message; the config's checks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from ipaddress import ip_network
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from backplane.build import buildService
from backplane.config import Config, parseConfig
from backplane.datagram import DatagramReader, DatagramService, UDPAddress, parseUDP
from backplane.errors import CannotListen, ConfigError
from backplane.protocols import Limits
from backplane.testing import Recorder
from tests.helpers import portNumber, waitUntil

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOGGER = shutil.which("logger")


def udpPort(service, limits=None):
    """
    A started L{DatagramService} on a free UDP port of 127.0.0.1, publishing
    to C{DATA}.
    """
    reader = DatagramReader(service.get("DATA"), limits or Limits())
    listening = DatagramService(cast(IReactorUDP, reactor), UDPAddress(0, "127.0.0.1"), reader,
                                description="udp:0:interface=127.0.0.1", where="listen[1]")
    listening.startService()
    return listening, portNumber(listening.port)


def send(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def received(listening: DatagramService, count: int) -> Callable[[], bool]:
    return lambda: listening.reader.stats.datagrams >= count


@pytest_twisted.inlineCallbacks
def test_hundredDatagramsArriveWhole(service):
    """
    100 datagrams, with and without a last newline, some of several lines:
    each datagram's lines are published, none split or merged with another's.
    """
    listening, port = udpPort(service)
    recorder = Recorder.on(service.get("DATA"))
    datagrams = []
    expected = []
    for i in range(100):
        if i % 3 == 0:
            datagrams.append(b"datagram %d" % i)
            expected.append(b"datagram %d" % i)
        elif i % 3 == 1:
            datagrams.append(b"datagram %d\n" % i)
            expected.append(b"datagram %d" % i)
        else:
            datagrams.append(b"datagram %d a\r\ndatagram %d b" % (i, i))
            expected += [b"datagram %d a" % i, b"datagram %d b" % i]
    try:
        # A few at a time: loopback drops none when the reader keeps up.
        for start in range(0, 100, 10):
            yield deferToThread(send, port, *datagrams[start:start + 10])
            yield waitUntil(received(listening, start + 10), what="the datagrams")
        yield waitUntil(lambda: len(recorder.messages) >= len(expected), what="every line")
        assert recorder.messages == expected
        report = listening.report()
        assert report["state"] == "listening"
        assert report["counters"]["datagrams"] == 100
        assert report["counters"]["messages_in"] == len(expected)
    finally:
        yield listening.stopService()


@pytest_twisted.inlineCallbacks
def test_overlongAndDisallowed(service):
    """
    A datagram with a line longer than C{max_line_length} is dropped whole,
    and counted; one from an address not in C{allow} is dropped, counted.
    """
    listening, port = udpPort(service, Limits(max_line_length=10))
    recorder = Recorder.on(service.get("DATA"))
    try:
        yield deferToThread(send, port, b"short\n" + b"x" * 11, b"", b"ok")
        yield waitUntil(lambda: recorder.messages == [b"ok"], what="the short datagram")
        stats = listening.reader.stats
        assert (stats.overlong, stats.discarded_bytes) == (1, 17)
    finally:
        yield listening.stopService()
    listening, port = udpPort(service, Limits(allow=(ip_network("10.0.0.0/8"),)))
    try:
        yield deferToThread(send, port, b"not allowed")
        yield waitUntil(lambda: listening.reader.stats.disallowed == 1, what="the refusal")
        assert recorder.messages == [b"ok"]
    finally:
        yield listening.stopService()


@pytest.mark.skipif(LOGGER is None, reason="logger not found (Debian: bsdutils)")
@pytest_twisted.inlineCallbacks
def test_loggerOverUDP(service, tmp_path):
    """
    C{logger -d} (syslog over UDP) with C{framing = "syslog"}: 100 messages,
    one a datagram, and a multi-line message as one line.
    """
    listening, port = udpPort(service, Limits(framing="syslog"))
    recorder = Recorder.on(service.get("DATA"))
    where = ["-d", "-n", "127.0.0.1", "-P", str(port), "-t", "test"]

    def logger(*arguments: str) -> None:
        result = subprocess.run([str(LOGGER), *where, *arguments], capture_output=True,
                                timeout=20, check=False)
        assert result.returncode == 0, result.stderr

    try:
        yield deferToThread(logger, "first\nsecond")
        yield waitUntil(lambda: len(recorder.messages) == 1, what="the multi-line message")
        assert recorder.messages[0].startswith(b"<13>")
        assert recorder.messages[0].endswith(b" first#012second")
        path = tmp_path / "lines"
        path.write_text("".join(f"line {i}\n" for i in range(100)))
        yield deferToThread(logger, "-f", str(path))
        yield waitUntil(lambda: len(recorder.messages) >= 101, what="100 messages")
        assert [m.rsplit(b" ", 1)[-1] for m in recorder.messages[1:]] == [
            b"%d" % i for i in range(100)]
    finally:
        yield listening.stopService()


class DatagramServiceTests(SynchronousTestCase):
    def test_addressInUse(self) -> None:
        """
        A UDP port that cannot listen raises L{CannotListen} naming the entry.
        """
        from backplane import BackplaneService

        service = BackplaneService()
        service.create("DATA")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            listening = DatagramService(
                cast(IReactorUDP, reactor), UDPAddress(port, "127.0.0.1"),
                DatagramReader(service.get("DATA"), Limits()),
                description=f"udp:{port}", where="listen[3]", path="b.toml")
            error = self.assertRaises(CannotListen, listening.privilegedStartService)
        self.assertIn(f"cannot listen on 'udp:{port}'", str(error))
        self.assertIn("listen[3].endpoint", str(error))
        self.assertEqual(listening.report()["state"], "failed")

    def test_parse(self) -> None:
        self.assertEqual(parseUDP("udp:514"), UDPAddress(514))
        self.assertEqual(parseUDP(r"udp:port=514:interface=\:\:1"), UDPAddress(514, "::1"))
        for bad, message in [("udp:", "not ''"), ("udp:x", "not 'x'"),
                             ("udp:70000", "from 0 to 65535"),
                             ("udp:514:interface=localhost", "must be an IP address"),
                             ("udp:514:backlog=5", "unknown parameter 'backlog=5'")]:
            with self.assertRaises(ValueError) as raised:
                parseUDP(bad)
            self.assertIn(message, str(raised.exception), bad)


BASE = """
[backplane.LOG]
[[listen]]
publish_to = "LOG"
"""


class UDPConfigTests(SynchronousTestCase):
    def parse(self, listen: str) -> Config:
        return parseConfig(tomllib.loads(BASE + listen), path="b.toml")

    def test_valid(self) -> None:
        config = self.parse('endpoint = "udp:0:interface=127.0.0.1"\nframing = "syslog"\n'
                            'allow = ["127.0.0.0/8"]\nmax_line_length = 2000')
        entry = config.listen[0]
        self.assertTrue(entry.udp)
        self.assertEqual(entry.limits.framing, "syslog")
        service = buildService(config)
        listening = service.getServiceNamed("listen[1]")
        self.assertIsInstance(listening, DatagramService)
        self.assertEqual(listening.report()["state"], "stopped")

    def test_refused(self) -> None:
        for keys, where, fragment in [
            ('endpoint = "udp:nope"', "listen[1].endpoint", "cannot use endpoint 'udp:nope'"),
            ('endpoint = "udp:514"\nmax_clients = 5', "listen[1].max_clients",
             "no connections"),
            ('endpoint = "udp:514"\nsubscribe_to = "LOG"', "listen[1]", "no subscribe_to"),
            ('endpoint = "udp:514"\ntls_client_ca = "ca.pem"', "listen[1].tls_client_ca",
             "no TLS"),
            ('endpoint = "udp:514"\nauth = true', "listen[1].auth", "restrict it with allow"),
            ('endpoint = "udp:514"\nacks = true', "listen[1].acks", "cannot acknowledge"),
            ('endpoint = "udp:514"\nprotocol = "websocket"', "listen[1].protocol",
             "receives lines"),
            ('endpoint = "tcp:514"\nframing = "syslog"\nacks = true', "listen[1].framing",
             "no ids or acks"),
            ('endpoint = "tcp:514"\nframing = "json"', "listen[1].framing",
             "must be one of 'lines', 'syslog'"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                self.parse(keys)
            message = str(raised.exception)
            self.assertIn(where, message, keys)
            self.assertIn(fragment, message, keys)
