"""
The monitor's bound on its connections ([monitor] max_clients): the
connection past it gets a short 503 and is closed, its request never read;
a place comes back when a connection closes, however it closes.

Unit tests on the monitor's site with in-memory transports, then a real
twistd process and real HTTP clients (curl, urllib).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService
from backplane.config import DEFAULT_MONITOR_CLIENTS
from backplane.monitor import (
    BUSY_RESPONSE,
    DEFAULT_MAX_CLIENTS,
    REFUSAL_GRACE,
    REFUSAL_LOG_INTERVAL,
    MonitorService,
    MonitorSite,
)
from tests.certs import Certificates
from tests.helpers import freePort
from tests.twistd import Twistd, monitorStats

STATS = b"GET /stats HTTP/1.1\r\nHost: localhost\r\n\r\n"


class Connection(StringTransport):
    """
    An in-memory connection, which the test closes with L{close}.
    """

    protocol: Any = None

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def peer(n: int) -> IPv4Address:
    return IPv4Address("TCP", "127.0.0.1", 40000 + n)


class MaxClientsTests(SynchronousTestCase):
    """
    L{MonitorSite} holds at most C{max_clients} connections.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = MonitorService(
            BackplaneService(), serverFromString(self.reactor, "tcp:0"), description="tcp:0",
            clock=self.reactor, max_clients=2)
        self.site: MonitorSite = self.monitor.factory
        self.opened = 0

    def connect(self, transport: Connection | None = None) -> tuple[Any, Connection]:
        """
        A new connection to the site, as its port makes it.
        """
        self.opened += 1
        transport = transport if transport is not None else Connection()
        protocol = self.site.buildProtocol(peer(self.opened))
        assert protocol is not None
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.monitor.report()["counters"]  # type: ignore[assignment]
        return counters

    def clients(self) -> int:
        gauges: dict[str, int] = self.monitor.report()["gauges"]  # type: ignore[assignment]
        return gauges["clients"]

    def assertServes(self, protocol: Any, transport: Connection) -> None:
        before = self.monitor.requests
        protocol.dataReceived(STATS)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value())
        self.assertIn(b'"backplanes"', transport.value())
        self.assertEqual(self.monitor.requests, before + 1)
        transport.clear()

    def test_default(self) -> None:
        self.assertEqual(DEFAULT_MAX_CLIENTS, 64)
        self.assertEqual(DEFAULT_MONITOR_CLIENTS, DEFAULT_MAX_CLIENTS)
        monitor = MonitorService(BackplaneService(), serverFromString(self.reactor, "tcp:0"),
                                 description="tcp:0", clock=self.reactor)
        self.assertEqual(monitor.factory.maxClients, 64)

    def test_atLeastOne(self) -> None:
        self.assertRaises(ValueError, MonitorSite, self.monitor.resource, max_clients=0)

    def test_oneMoreGets503AndIsClosed(self) -> None:
        """
        Past C{max_clients}, a connection gets the 503 at once and is
        closed, and what it sends is never served; the connections held are
        unaffected.  (A real TCP connection is half-closed: see
        L{test_twistdMaxClients}.)
        """
        held = [self.connect() for _ in range(2)]
        self.assertEqual((self.clients(), self.counters()["refused"]), (2, 0))
        busy, transport = self.connect()
        self.assertEqual(transport.value(), BUSY_RESPONSE)
        head, body = BUSY_RESPONSE.split(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"\r\nConnection: close", head)
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertEqual(body, b"the monitor has too many connections (max_clients): "
                               b"try again later\n")
        self.assertTrue(transport.disconnecting)
        transport.clear()
        busy.dataReceived(STATS)
        self.assertEqual((transport.value(), self.monitor.requests), (b"", 0))
        self.assertEqual((self.clients(), self.counters()["refused"]), (2, 1))
        for protocol, connection in held:
            self.assertServes(protocol, connection)

    def test_placeBackWhenOneCloses(self) -> None:
        """
        Once a connection held closes, a new one is accepted and served.
        """
        (_, firstTransport), _ = self.connect(), self.connect()
        _, refused = self.connect()
        self.assertEqual(refused.value(), BUSY_RESPONSE)
        firstTransport.close()
        self.assertEqual(self.clients(), 1)
        protocol, transport = self.connect()
        self.assertServes(protocol, transport)
        self.assertEqual((self.clients(), self.counters()["refused"]), (2, 1))
        _, again = self.connect()
        self.assertEqual(again.value(), BUSY_RESPONSE)
        self.assertEqual(self.counters()["refused"], 2)

    def test_placeBackAfterTimeout(self) -> None:
        """
        A connection closed by the monitor's idle timeout gives its place
        back.
        """
        self.site.timeOut = 30
        for _ in range(2):
            self.connect(StringTransportWithDisconnection())  # type: ignore[arg-type]
        self.assertEqual(self.connect()[1].value(), BUSY_RESPONSE)
        self.reactor.advance(31)
        self.assertEqual(self.clients(), 0)
        protocol, transport = self.connect()
        self.assertServes(protocol, transport)

    def test_refusedAbortedAfterGrace(self) -> None:
        """
        A refused client that does not close within L{REFUSAL_GRACE} seconds
        is aborted; one that closes earlier leaves no timer behind.
        """
        self.connect()
        self.connect()
        _, transport = self.connect()
        _, promptTransport = self.connect()
        promptTransport.close()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 3)  # two idle timeouts, one grace
        self.reactor.advance(REFUSAL_GRACE - 0.1)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)  # StringTransport: abortConnection
        transport.close()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)

    def test_refusalsBeingClosedBounded(self) -> None:
        """
        With C{max_clients} refused connections still being closed, one more
        is aborted at once without an answer (L{None}: its port aborts it);
        it is counted all the same.
        """
        self.connect()
        self.connect()
        closing = [self.connect() for _ in range(2)]
        self.assertIsNone(self.site.buildProtocol(peer(99)))
        self.assertEqual(self.counters()["refused"], 3)
        closing[0][1].close()
        self.assertEqual(self.connect()[1].value(), BUSY_RESPONSE)
        self.assertEqual(self.counters()["refused"], 4)

    def test_disallowedFirst(self) -> None:
        """
        A client not in C{allow} is closed without an answer, and is not
        counted as refused for C{max_clients}.
        """
        from ipaddress import ip_network

        site = MonitorSite(self.monitor.resource, allow=[ip_network("10.0.0.0/8")],
                           reactor=self.reactor, max_clients=1)
        self.assertIsNone(site.buildProtocol(peer(1)))
        self.assertEqual((site.disallowed, site.refused, len(site.channels)), (1, 0, 0))

    def test_refusalsLoggedOnceAMinute(self) -> None:
        """
        The first refusal is logged; the next ones within
        L{REFUSAL_LOG_INTERVAL} seconds are only counted, and the next line
        says how many there were.
        """
        self.connect()
        self.connect()
        with capturedLogs() as events:
            for _ in range(5):
                self.connect()[1].close()
            self.reactor.advance(REFUSAL_LOG_INTERVAL)
            self.connect()[1].close()
        refusing = [event for event in events if "Refusing" in event.get("log_format", "")]
        self.assertEqual(len(refusing), 2)
        self.assertEqual([event["peer"] for event in refusing],
                         ["127.0.0.1:40003", "127.0.0.1:40008"])
        self.assertEqual(refusing[0]["limit"], 2)
        self.assertNotIn("{unlogged}", refusing[0]["log_format"])
        self.assertEqual(refusing[1]["unlogged"], 4)
        self.assertIn("{unlogged} more were refused", refusing[1]["log_format"])
        self.assertEqual(self.counters()["refused"], 6)


# A real twistd process.

CONFIG = """\
[backplane.A]

[monitor]
endpoint = "tcp:{port}:interface=127.0.0.1"
max_clients = 2
"""


def openTail(port: int) -> socket.socket:
    """
    A live tail of backplane A, its response's head read.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /tail/A HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed before its head: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def monitorOf(port: int, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """
    The monitor's own section of C{/stats} (over HTTPS with C{context}).
    """
    if context is None:
        document = monitorStats(port)
    else:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/stats", timeout=10,
                                    context=context) as response:
            document = json.loads(response.read())
    services: list[dict[str, Any]] = document["services"]
    (monitor,) = [s for s in services if s["kind"] == "monitor"]
    return monitor


def waitForIdle(port: int, context: ssl.SSLContext | None = None, held: int = 0) -> int:
    """
    Wait until the monitor holds no connection but C{held} and the one
    asking: the probe of L{Twistd.waitForPort}, and earlier requests, gone.

    @return: how many times it was refused meanwhile (503).
    """
    refused, deadline = 0, time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "connections still counted"
        try:
            if monitorOf(port, context)["gauges"]["clients"] == held + 1:
                return refused
        except urllib.error.HTTPError as e:
            assert e.code == 503, e
            refused += 1
        time.sleep(0.05)


def curl(port: int, path: str = "/stats") -> tuple[int, str]:
    """
    The status and the body curl gets for C{path}.
    """
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}",
         f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=20)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_twistdMaxClients(tmp_path) -> None:
    """
    With C{max_clients = 2} and two live tails open, curl gets 503 and the
    one-line body at once (three times: logged once), and so does a raw
    client; once a tail closes, C{/stats} is served again and counts every
    refusal.
    """
    port = freePort()
    twistd = Twistd(tmp_path, config=CONFIG.format(port=port)).start()
    try:
        twistd.waitForPort(port)
        refusals = waitForIdle(port)
        tails = [openTail(port), openTail(port)]
        for _ in range(3):
            started = time.monotonic()
            assert curl(port) == (503, "the monitor has too many connections (max_clients): "
                                       "try again later\n")
            assert time.monotonic() - started < REFUSAL_GRACE
        # A client's request is never read, yet it gets the whole answer and
        # a clean end (a half-close, not a reset), and may send more.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(STATS)
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
            assert answer == BUSY_RESPONSE
            raw.sendall(b"more")
            time.sleep(0.2)
            # A closed socket would have answered with a reset by now.
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            raw.sendall(b"more")
        tails[0].close()
        refusals += 4 + waitForIdle(port, held=1)  # the first tail's close seen
        monitor = monitorOf(port)
        assert monitor["counters"]["refused"] == refusals
        assert monitor["gauges"] == {"clients": 2, "tails": 1}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert f'backplane_monitor_refused_total{{name="monitor"}} {float(refusals)}' in metrics
        tails[1].close()
        assert twistd.text().count("Refusing 127.0.0.1:") == 1, twistd.text()
        assert "the monitor holds max_clients (2) connections" in twistd.text()
        twistd.stop()
    finally:
        twistd.kill()


def test_twistdMaxClientsTLS(tmp_path) -> None:
    """
    On an C{ssl:} monitor, the connection past C{max_clients} gets its 503
    over TLS (curl), and one that never starts its TLS handshake, so never
    reads the answer, is aborted after L{REFUSAL_GRACE} seconds.
    """
    certs = Certificates.make(tmp_path)
    port = freePort()
    twistd = Twistd(tmp_path, config=CONFIG.format(port=port).replace(
        f"tcp:{port}:interface=127.0.0.1", certs.sslEndpoint(port))).start()
    context = ssl.create_default_context(cafile=str(certs.ca.path))
    held = []
    try:
        twistd.waitForPort(port)
        waitForIdle(port, context)
        for _ in range(2):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                       server_hostname="localhost")
            held.append(sock)
            sock.sendall(b"GET /stats HTTP/1.1\r\n")  # unfinished: the place stays taken
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            result = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", str(certs.ca.path),
                 "-w", "\n%{http_code}", f"https://127.0.0.1:{port}/stats"],
                capture_output=True, text=True, timeout=20)
            assert result.stdout == ("the monitor has too many connections (max_clients): "
                                     "try again later\n\n503"), result
            try:
                assert silent.recv(100) == b""
            except ConnectionResetError:
                pass
            assert REFUSAL_GRACE - 0.5 < time.monotonic() - started < REFUSAL_GRACE + 3
        held[0].sendall(b"Host: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := held[0].recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        twistd.stop()
    finally:
        for sock in held:
            sock.close()
        twistd.kill()


def test_checkRejects(tmp_path) -> None:
    """
    C{--check} rejects a C{max_clients} start-up would reject: one line, no
    traceback.
    """
    for value, message in (("0", "monitor.max_clients: must be 1 or more, not 0"),
                           ('"many"', "monitor.max_clients: must be an integer, not a string")):
        status, output = Twistd(tmp_path, "--check", config=(
            f'[backplane.A]\n[monitor]\nendpoint = "tcp:9100"\nmax_clients = {value}\n')).run()
        assert status == 1
        assert message in output
        assert "Traceback" not in output
        assert len(output.strip().splitlines()) == 1, output

