"""
The issue's rows against a real C{twistd -n backplane}: a client with a
valid certificate gets into a mutual-TLS port whose C{max_clients}
connections are held open without a handshake, and an 8 MB WebSocket
header costs its log file less than 64 KiB.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import Certificates
from tests.helpers import freePort
from tests.twistd import Twistd

SLOTS = 10
TIMEOUT = 3.0


@dataclass
class Server:
    twistd: Twistd
    certs: Certificates
    tls: int
    websocket: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder: Path = tmp_path_factory.mktemp("handshakes")
    certs = Certificates.make(folder)
    tls, websocket = freePort(), freePort()
    twistd = Twistd(folder, config=f"""
[backplane.TICKS]

[[clock]]
publish_to = "TICKS"
interval = 0.05

[[listen]]
endpoint = "{certs.sslEndpoint(tls)}"
subscribe_to = "TICKS"
tls_client_ca = "{certs.ca.path}"
max_clients = {SLOTS}
handshake_timeout = {TIMEOUT}

[[listen]]
endpoint = "tcp:{websocket}:interface=127.0.0.1"
protocol = "websocket"
subscribe_to = "TICKS"
max_clients = {SLOTS}
""")
    twistd.start()
    try:
        twistd.waitForPort(websocket)
        twistd.waitForLog("listen[1] listening")
        yield Server(twistd, certs, tls, websocket)
        twistd.stop()
    finally:
        twistd.kill()


def test_validClientGetsInPastUnfinishedHandshakes(server: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", server.tls), timeout=10)
            for _ in range(SLOTS)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        context = ssl.create_default_context(cafile=str(server.certs.ca.path))
        context.load_cert_chain(str(server.certs.client.certificate),
                                str(server.certs.client.key))
        with socket.create_connection(("127.0.0.1", server.tls), timeout=TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as client:
            line = b""
            while not line.endswith(b"\n"):
                line += client.recv(1)
            assert line.strip(), line
            assert time.monotonic() - started < TIMEOUT
        # The held connections are cut: the oldest to make room for the
        # client, the others at the timeout.
        for sock in held:
            sock.settimeout(TIMEOUT + 5)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass  # aborted
    finally:
        for sock in held:
            sock.close()
    server.twistd.waitForLog("its handshake did not finish within handshake_timeout")


def test_hugeWebSocketHeaderCostsTheLogLittle(server: Server) -> None:
    before = server.twistd.output.stat().st_size
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: "
               + b"Z" * (8 * 1024 * 1024) + b"\r\n\r\n")
    response = b""
    with socket.create_connection(("127.0.0.1", server.websocket), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # refused before it was all sent
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except OSError:
            pass
    assert b"Z" * 64 not in response
    if response:  # else reset before the client read it
        assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    server.twistd.waitForLog("Refused 127.0.0.1")
    time.sleep(0.2)
    grown = server.twistd.output.stat().st_size - before
    assert grown < 64 * 1024
    text = server.twistd.text()
    assert "Z" * 64 not in text
    assert text.count("WebSocket handshake: a request head of more than") == 1
