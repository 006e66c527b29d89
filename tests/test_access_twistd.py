"""
Access control end to end (SPEC section 11): one real C{twistd -n backplane}
with C{auth = true} on line, WebSocket and Server-Sent Events ports and on
the monitor, and clients nobody here wrote: Python's C{websockets},
C{http.client}, C{ssl} with a client certificate.  Tokens right, wrong,
missing and beyond their rights; signed tokens valid, expired and tampered;
pages of another site refused before the upgrade, having published nothing.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.certs import Certificates
from tests.helpers import freePort
from tests.twistd import Twistd, readLines

websockets = pytest.importorskip("websockets", reason="pip install '.[test]'")
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402
from websockets.typing import Origin, Subprotocol  # noqa: E402

WRITER = "writer-token-0123456789abcdef0123456789abcdef"
READER = "reader-token-0123456789abcdef0123456789abcdef"
STRANGER = "stranger-token-0123456789abcdef0123456789abc"
PROMETHEUS = "prometheus-token-0123456789abcdef0123456789"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Server:
    twistd: Twistd
    ports: dict[str, int]
    key: Ed25519PrivateKey
    certs: Certificates

    def signed(self, **claims: Any) -> str:
        return jwt.encode({"exp": int(time.time()) + 300, **claims}, self.key, algorithm="EdDSA")

    def url(self, name: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("access")
    certs = Certificates.make(folder)
    key = Ed25519PrivateKey.generate()
    (folder / "jwt.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ports = {name: freePort() for name in
             ["pub", "sub", "tap", "ws", "wsopen", "sse", "tls", "monitor"]}
    twistd = Twistd(folder, config=f"""
[backplane.CHAT]
[backplane.NEWS]
history = 100

# Line ports with auth: publish to CHAT, subscribe to it.
[[listen]]
endpoint = "tcp:{ports['pub']}:interface=127.0.0.1"
publish_to = "CHAT"
auth = true

[[listen]]
endpoint = "tcp:{ports['sub']}:interface=127.0.0.1"
subscribe_to = "CHAT"
auth = true

# What was published, seen by a subscriber of a port without auth.
[[listen]]
endpoint = "tcp:{ports['tap']}:interface=127.0.0.1"
subscribe_to = "CHAT"

[[listen]]
endpoint = "tcp:{ports['ws']}:interface=127.0.0.1"
protocol = "websocket"
publish_to = "CHAT"
subscribe_to = "CHAT"
auth = true
origins = ["https://app.example.com"]

# No auth: the origin check alone.
[[listen]]
endpoint = "tcp:{ports['wsopen']}:interface=127.0.0.1"
protocol = "websocket"
publish_to = "CHAT"

[[listen]]
endpoint = "tcp:{ports['sse']}:interface=127.0.0.1"
protocol = "sse"
subscribe_to = "CHAT"
auth = true
origins = ["https://app.example.com"]

[[listen]]
endpoint = "{certs.sslEndpoint(ports['tls'])}"
publish_to = "CHAT"
tls_client_ca = "{certs.ca.path}"
auth = true

[monitor]
endpoint = "tcp:{ports['monitor']}:interface=127.0.0.1"
auth = true

[[user]]
name = "writer"
token_sha256 = "{sha(WRITER)}"
publish = ["CHAT"]
subscribe = ["CHAT"]

[[user]]
name = "reader"
token_sha256 = "{sha(READER)}"
subscribe = ["CH*", "NEWS"]

[[user]]
name = "stranger"
token_sha256 = "{sha(STRANGER)}"
subscribe = ["OTHER"]

[[user]]
name = "prometheus"
token_sha256 = "{sha(PROMETHEUS)}"

[[user]]
name = "collector"
cert = "client"
publish = ["CHAT"]

[auth]
jwt_key_file = "jwt.pub"
""").start()
    try:
        for port in ports.values():
            twistd.waitForPort(port)
        yield Server(twistd, ports, key, certs)
        twistd.stop()
        assert "s3cret" not in twistd.text()
        for token in (WRITER, READER, STRANGER, PROMETHEUS):
            assert token not in twistd.text()
    finally:
        twistd.kill()


@pytest.fixture
def tap(server: Server) -> Iterator[socket.socket]:
    """
    A subscriber of CHAT on a port without auth: what was published.
    """
    with socket.create_connection(("127.0.0.1", server.ports["tap"])) as sock:
        time.sleep(0.2)  # subscribed
        yield sock


def publish(server: Server, *lines: bytes, token: str = WRITER) -> None:
    with socket.create_connection(("127.0.0.1", server.ports["pub"])) as sock:
        sock.sendall(b"AUTH " + token.encode() + b"\n" + b"".join(line + b"\n" for line in lines))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(100) == b""


def refusedLine(port: int, sent: bytes) -> bytes:
    """
    Send C{sent} to a line port: what it answers before it closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def nothingMore(sock: socket.socket, wait: float = 0.5) -> None:
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["publish"] = claims["subscribe"] = "*"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def stats(server: Server) -> dict[str, Any]:
    request = urllib.request.Request(server.url("monitor", "/stats"),
                                     headers={"Authorization": f"Bearer {PROMETHEUS}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document


def access(server: Server, port: str) -> dict[str, Any]:
    index = list(server.ports).index(port) + 1
    services = {s["name"]: s for s in stats(server)["services"]}
    result: dict[str, Any] = services[f"listen[{index}]"]["access"]
    return result


# Line ports.


def test_lineTokens(server: Server, tap: socket.socket) -> None:
    """
    The right token publishes (and nothing comes back); a wrong, missing
    or insufficient one gets one ERR line, and nothing it sent is published.
    """
    pub = server.ports["pub"]
    before = access(server, "pub")
    for sent, reply in [
        (b"AUTH nope\nsecret 1\n", b"ERR unknown token\n"),
        (b"secret 2\n", b"ERR expected AUTH TOKEN as the first line\n"),
        (b"AUTH " + READER.encode() + b"\nsecret 3\n", b"ERR may not publish to 'CHAT'\n"),
    ]:
        assert refusedLine(pub, sent) == reply
    publish(server, b"published")
    assert readLines(tap, 1) == [b"published"]
    nothingMore(tap)
    after = access(server, "pub")
    assert after["accepted"] == before["accepted"] + 2  # the reader, then the writer
    refused = {key: after["refused"].get(key, 0) - before["refused"].get(key, 0)
               for key in after["refused"]}
    assert refused == {"unknown": 1, "missing": 1, "forbidden": 1}


def test_lineSubscriber(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.ports["sub"]), timeout=10) as reader:
        reader.sendall(b"AUTH " + READER.encode() + b"\n")
        time.sleep(0.3)
        publish(server, b"to the reader")
        assert readLines(reader, 1) == [b"to the reader"]
    assert refusedLine(server.ports["sub"], b"AUTH " + STRANGER.encode() + b"\n") == \
        b"ERR may not subscribe to 'CHAT'\n"


def test_lineSignedTokens(server: Server, tap: socket.socket) -> None:
    """
    A signed token (EdDSA) that allows CHAT publishes; an expired or a
    tampered one does not.
    """
    pub = server.ports["pub"]
    expired = server.signed(publish="CHAT", exp=int(time.time()) - 120)
    assert refusedLine(pub, b"AUTH " + expired.encode() + b"\nsecret\n") == \
        b"ERR token expired\n"
    forged = tampered(server.signed(publish="NOTHING"))
    assert refusedLine(pub, b"AUTH " + forged.encode() + b"\nsecret\n") == \
        b"ERR token signature does not verify\n"
    assert refusedLine(pub, b"AUTH " + server.signed(publish="NEWS").encode() + b"\nsecret\n") \
        == b"ERR may not publish to 'CHAT'\n"
    publish(server, b"signed", token=server.signed(sub="page-1", publish=["CH?T"]))
    assert readLines(tap, 1) == [b"signed"]
    nothingMore(tap)


def test_clientCertificate(server: Server, tap: socket.socket) -> None:
    """
    On an ssl: port with client certificates, one whose CN is a user's
    cert publishes without an AUTH line.
    """
    context = ssl.create_default_context(cafile=str(server.certs.ca.path))
    context.load_cert_chain(server.certs.client.certificate, server.certs.client.key)
    with socket.create_connection(("127.0.0.1", server.ports["tls"]), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"from the collector\n")
        assert readLines(tap, 1) == [b"from the collector"]
        sock.unwrap()


# WebSocket ports.


def wsConnect(url: str, origin: str | None = None,
              subprotocols: list[str] | None = None) -> ClientConnection:
    """
    Open a WebSocket with Python's websockets, as a page of C{origin}.
    """
    return connect(url, origin=None if origin is None else Origin(origin),
                   subprotocols=None if subprotocols is None else [
                       Subprotocol(value) for value in subprotocols],
                   open_timeout=10)


def test_foreignOriginRefusedBeforeTheUpgrade(server: Server, tap: socket.socket) -> None:
    """
    A page of another site is refused with 403 before the upgrade, auth or
    not, even with a valid token; it publishes nothing.
    """
    for port, path in [("wsopen", "/"), ("ws", f"/?token={WRITER}")]:
        url = f"ws://127.0.0.1:{server.ports[port]}{path}"
        before = access(server, port)["refused"].get("origin", 0)
        with pytest.raises(InvalidStatus) as refused:
            with wsConnect(url, origin="https://evil.example") as ws:
                ws.send("hijacked")
        assert refused.value.response.status_code == 403
        assert access(server, port)["refused"]["origin"] == before + 1
    # Without an Origin (no page) or from its own origin, the open port takes lines.
    url = f"ws://127.0.0.1:{server.ports['wsopen']}/"
    with wsConnect(url) as ws:
        ws.send("no origin")
    with wsConnect(url, origin=f"http://127.0.0.1:{server.ports['wsopen']}") as ws:
        ws.send("same origin")
    assert readLines(tap, 2) == [b"no origin", b"same origin"]
    nothingMore(tap)


def test_webSocketTokens(server: Server, tap: socket.socket) -> None:
    url = f"ws://127.0.0.1:{server.ports['ws']}/"
    origin = "https://app.example.com"
    # A page's token beside the subprotocol "backplane", which the server chooses.
    with wsConnect(url, origin=origin, subprotocols=["backplane", WRITER]) as ws:
        assert ws.subprotocol == "backplane"
        ws.send("by subprotocol")
    with wsConnect(url + f"?token={server.signed(publish='CHAT', subscribe='CHAT')}",
                   origin=origin) as ws:
        ws.send("by a signed token")
    assert readLines(tap, 2) == [b"by subprotocol", b"by a signed token"]
    for path, protocols, status in [
        ("/", None, 401),
        ("/?token=nope", None, 401),
        ("/", ["backplane", "nope"], 401),
        (f"/?token={READER}", None, 403),
        (f"/?token={tampered(server.signed(publish='CHAT', subscribe='CHAT'))}", None, 401),
        (f"/?token={server.signed(publish='CHAT', subscribe='CHAT', exp=1)}", None, 401),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            with wsConnect(url.rstrip("/") + path, origin=origin,
                           subprotocols=protocols) as ws:
                ws.send("refused")
        assert refused.value.response.status_code == status, path
    nothingMore(tap)


# Server-Sent Events.


def sseOpen(server: Server, path: str = "/", **headers: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["sse"], timeout=10)
    connection.request("GET", path, headers=headers)
    return connection.getresponse()


def test_sseTokens(server: Server) -> None:
    for path, headers in [("/", {"Authorization": f"Bearer {READER}"}),
                          (f"/?token={server.signed(subscribe='CHAT')}", {})]:
        response = sseOpen(server, path, **headers)
        assert response.status == 200
        assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
        assert response.readline() == b"retry: 2000\n"
        assert response.readline() == b"\n"
        time.sleep(0.2)
        publish(server, b"streamed")
        assert response.readline() == b"data: streamed\n"
        response.close()
    for path, headers, status in [
        ("/", {}, 401),
        ("/", {"Authorization": "Bearer nope"}, 401),
        ("/?token=nope", {}, 401),
        ("/", {"Authorization": f"Bearer {STRANGER}"}, 403),
        (f"/?token={server.signed(subscribe='CHAT', exp=1)}", {}, 401),
    ]:
        response = sseOpen(server, path, **headers)
        assert response.status == status, (path, headers)
        body = response.read()
        if status == 401:
            assert response.getheader("www-authenticate", "").startswith('Bearer realm=')
        assert b"data:" not in body


def test_sseOrigins(server: Server) -> None:
    token = {"Authorization": f"Bearer {READER}"}
    response = sseOpen(server, "/", Origin="https://evil.example", **token)
    assert response.status == 403
    assert response.getheader("access-control-allow-origin") is None
    assert response.read() == b"origin 'https://evil.example' not allowed\n"
    for origin in ["https://app.example.com", f"http://127.0.0.1:{server.ports['sse']}"]:
        response = sseOpen(server, "/", Origin=origin, **token)
        assert response.status == 200
        assert response.getheader("access-control-allow-origin") == origin
        assert response.getheader("vary") == "Origin"
        response.close()


def test_ssePreflight(server: Server) -> None:
    """
    A page's preflight (fetch with an Authorization header) from an allowed
    origin is answered without a token; from another site it is refused.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["sse"], timeout=10)
    connection.request("OPTIONS", "/", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    response = connection.getresponse()
    response.read()
    assert response.status == 204
    assert response.getheader("access-control-allow-origin") == "https://app.example.com"
    assert "authorization" in (response.getheader("access-control-allow-headers") or "")
    connection.request("OPTIONS", "/", headers={"Origin": "https://evil.example"})
    response = connection.getresponse()
    response.read()
    assert response.status == 403
    connection.close()


# The monitor.


def monitor(server: Server, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(server.url("monitor", path), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read(200)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_monitor(server: Server) -> None:
    bearer = {"Authorization": f"Bearer {PROMETHEUS}"}
    for path in ["/stats", "/metrics", "/healthz", "/tail/CHAT", "/nothing"]:
        status, headers, body = monitor(server, path)
        assert (status, body) == (401, b"no token\n"), path
        assert headers["WWW-Authenticate"] == 'Bearer realm="backplane"'
        status, headers, _ = monitor(server, path, Authorization="Bearer nope")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="backplane", error="invalid_token"'
    for path in ["/stats", "/metrics", "/healthz"]:
        assert monitor(server, path, **bearer)[0] == 200
    assert monitor(server, f"/healthz?token={PROMETHEUS}")[0] == 200
    assert monitor(server, "/nothing", **bearer)[0] == 404
    # The status page's own files hold no data: no token needed.
    assert monitor(server, "/")[0] == 200
    assert monitor(server, "/assets/status.js")[0] == 200
    for path in ["//stats", "/assets/../stats", "/stats/", "/tail/"]:
        status, _, body = monitor(server, path)
        assert status in (401, 404) and b"uptime" not in body, path
    # A tail needs the right to subscribe to its backplane.
    status, _, body = monitor(server, "/tail/CHAT", **bearer)
    assert (status, body) == (403, b"may not subscribe to 'CHAT'\n")
    status, _, body = monitor(server, "/tail/NEWS", Authorization=f"Bearer {STRANGER}")
    assert (status, body) == (403, b"may not subscribe to 'NEWS'\n")
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["monitor"], timeout=10)
    connection.request("GET", f"/tail/NEWS?token={READER}")
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline() == b"retry: 2000\n"
    response.close()
    connection.close()


def test_countersInStatsAndMetrics(server: Server) -> None:
    """
    Each port reports its access counters in /stats and /metrics: accepted,
    and refused by reason.
    """
    refusedLine(server.ports["sub"], b"AUTH nope\n")
    document = stats(server)
    services = {s["name"]: s for s in document["services"]}
    assert services["listen[2]"]["access"]["refused"]["unknown"] >= 1
    assert "access" not in services["listen[3]"], "no auth, no web: nothing to count"
    assert services["listen[5]"]["access"]["accepted"] == 0
    assert services["monitor"]["access"]["accepted"] >= 1
    _, _, _ = monitor(server, "/stats")
    request = urllib.request.Request(server.url("monitor", "/metrics"),
                                     headers={"Authorization": f"Bearer {PROMETHEUS}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    assert ('backplane_listen_access_refused_total{name="listen[2]",protocol="lines",'
            'reason="unknown"}') in metrics
    assert 'backplane_listen_access_accepted_total{name="listen[1]",protocol="lines"}' in metrics
    assert 'backplane_monitor_access_refused_total{name="monitor",reason="missing"}' in metrics


def test_logsNameNoToken(server: Server) -> None:
    text = server.twistd.text()
    assert "Refused 127.0.0.1:" in text
    for token in (WRITER, READER, STRANGER, PROMETHEUS):
        assert token not in text
