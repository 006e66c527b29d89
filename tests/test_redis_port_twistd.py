"""
The Redis-protocol port end to end (SPEC section 12): one real C{twistd -n
backplane} with a C{protocol = "redis"} port, and clients nobody here wrote
(C{redis-cli}, redis-py in RESP2 and RESP3), and the same requests sent to a
real redis-server and to backplane, their replies compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.certs import Certificates
from tests.helpers import freePort
from tests.redis_helpers import RedisServer, findRedisServer
from tests.resp_client import RawClient
from tests.twistd import Twistd, readLines

redis = pytest.importorskip("redis", reason="pip install '.[test]'")

TOKEN = "writer-token-0123456789abcdef0123456789"


@dataclass
class Server:
    twistd: Twistd
    ports: dict[str, int]
    certs: Certificates

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['monitor']}/stats") as r:
            result: dict[str, Any] = json.load(r)
            return result

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['monitor']}/metrics") as r:
            text: str = r.read().decode()
            return text

    def client(self, protocol: int = 2, port: str = "redis") -> Any:
        return redis.Redis(port=self.ports[port], protocol=protocol, socket_timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("redisport")
    ports = {name: freePort() for name in
             ["redis", "small", "lines", "secure", "ws", "sse", "monitor"]}
    certs = Certificates.make(folder)
    twistd = Twistd(folder, config=f"""
[backplane.NEWS]
history = 100

[[user]]
name = "writer"
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
publish = ["chat.w*"]
subscribe = ["chat.*"]

[[listen]]
endpoint = "{certs.sslEndpoint(ports['secure'])}"
protocol = "redis"
backplanes = ["chat.*"]
auth = true

[[listen]]
endpoint = "tcp:{ports['redis']}:interface=127.0.0.1"
protocol = "redis"
backplanes = ["chat.*", "NEWS", "room?"]
max_line_length = 100

[[listen]]
endpoint = "tcp:{ports['small']}:interface=127.0.0.1"
protocol = "redis"
backplanes = ["lim.*"]
max_backplanes = 2

[[listen]]
endpoint = "tcp:{ports['ws']}:interface=127.0.0.1"
protocol = "websocket"
backplanes = ["chat.*", "NEWS"]

[[listen]]
endpoint = "tcp:{ports['sse']}:interface=127.0.0.1"
protocol = "sse"
backplanes = ["chat.*"]

[[listen]]
endpoint = "tcp:{ports['lines']}:interface=127.0.0.1"
publish_to = "NEWS"
subscribe_to = "NEWS"

[monitor]
endpoint = "tcp:{ports['monitor']}:interface=127.0.0.1"
""").start()
    try:
        for port in ports.values():
            twistd.waitForPort(port)
        yield Server(twistd, ports, certs)
    finally:
        twistd.stop()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = findRedisServer()
    if binary is None:
        pytest.skip("redis-server not found (Debian: apt-get install redis-server)")
    real = RedisServer(binary, tmp_path_factory.mktemp("realredis"))
    real.start()
    yield real
    real.kill()


def both(real: RedisServer, server: Server,
         scenario: Callable[[int], list[bytes]]) -> tuple[list[bytes], list[bytes]]:
    """
    The replies of a scenario run against redis-server, then backplane.
    """
    return scenario(real.port), scenario(server.ports["redis"])


def pubsub2(port: int) -> list[bytes]:
    """
    RESP2: subscribe, psubscribe, publish, the subscribe context, ping.
    """
    out = []
    with RawClient(port) as a, RawClient(port) as b:
        out.append(a.call("PING"))
        out.append(a.call("PING", "hi"))
        out.append(a.call("ECHO", "x y"))
        out.append(a.call("SUBSCRIBE", "chat.a", "chat.b", replies=2))
        out.append(a.call("SUBSCRIBE", "chat.a"))
        out.append(a.call("PING"))
        out.append(a.call("PING", "x"))
        out.append(a.call("ECHO", "x"))
        out.append(a.call("PUBLISH", "chat.a", "x"))
        out.append(a.call("CLIENT", "GETNAME"))
        out.append(a.call("HELLO", "3"))
        out.append(a.call("FOO", "k"))
        out.append(b.call("PUBSUB", "NUMSUB", "chat.a", "chat.q"))
        out.append(a.call("PSUBSCRIBE", "chat.*"))
        out.append(b.call("PUBLISH", "chat.a", "hello world"))
        out.append(a.read(2))
        out.append(b.call("PUBLISH", "chat.zzz", ""))
        out.append(a.read(1))
        out.append(b.call("PUBLISH", "chat.b", "\x00\xff binary"))
        out.append(a.read(2))
        out.append(a.call("UNSUBSCRIBE", "chat.a", "chat.nope", replies=2))
        out.append(a.call("PUNSUBSCRIBE"))
        out.append(a.call("PUNSUBSCRIBE"))
        out.append(a.call("UNSUBSCRIBE"))
        out.append(a.call("UNSUBSCRIBE"))
        out.append(a.call("PING"))
        out.append(b.call("PUBLISH", "chat.a", "nobody"))
        out.append(a.call("PSUBSCRIBE", "room?", "chat.[ab]", replies=2))
        out.append(b.call("PUBLISH", "room1", "r"))
        out.append(a.read(1))
        out.append(a.call("RESET"))
        out.append(b.call("PUBLISH", "room1", "r"))
        out.append(a.call("PING"))
        out.append(a.call("QUIT"))
        assert a.closed()
    return out


def pubsub3(port: int) -> list[bytes]:
    """
    RESP3: pushes, PING while subscribed, publishing to oneself.
    """
    out = []
    with RawClient(port) as a, RawClient(port) as b:
        hello = a.call("HELLO", "3")
        # Who the server is, its version and the client's id differ.
        out.append(hello.split(b"$5\r\nproto")[1].split(b"$2\r\nid")[0])
        out.append(hello.split(b"$4\r\nmode")[1])
        out.append(a.call("CLIENT", "GETNAME"))
        out.append(a.call("SUBSCRIBE", "chat.a"))
        out.append(a.call("PSUBSCRIBE", "chat.*"))
        out.append(a.call("PING"))
        out.append(a.call("PING", "x"))
        out.append(a.call("ECHO", "x"))
        out.append(a.call("PUBLISH", "chat.a", "to myself", replies=3))
        out.append(b.call("PUBLISH", "chat.a", "hi"))
        out.append(a.read(2))
        out.append(a.call("UNSUBSCRIBE"))
        out.append(a.call("UNSUBSCRIBE"))
        out.append(a.call("PUNSUBSCRIBE"))
        out.append(a.call("HELLO", "2").split(b"$4\r\nmode")[1])
        out.append(a.call("SUBSCRIBE", "chat.a"))
        out.append(a.call("PING"))
    return out


def errors(port: int) -> list[bytes]:
    """
    Errors, arity, subcommands, inline commands: the connection stays.
    """
    out = []
    with RawClient(port) as a:
        for command in [
            ("FOO", "a", "b"), ("foo",), ("FOO", "a" * 100, "b" * 100, "c"), ("X" * 200,),
            ("FOO", "a\r\nb", "c\x00d"), ("SUBSCRIBE",), ("PSUBSCRIBE",), ("PUBLISH", "a"),
            ("ECHO",), ("PING", "a", "b"), ("SELECT", "0"), ("SELECT", "x"), ("SELECT",),
            ("SELECT", "-1"), ("CLIENT",), ("CLIENT", "FOO"), ("CLIENT", "SETNAME"),
            ("CLIENT", "ID", "x"), ("CLIENT", "SETNAME", "a b"), ("CLIENT", "SETNAME", "me"),
            ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", ""), ("CLIENT", "GETNAME"),
            ("PUBSUB",), ("PUBSUB", "FOO"), ("PUBSUB", "NUMPAT", "x"), ("PUBSUB", "NUMSUB"),
            ("AUTH",), ("AUTH", "secret"), ("AUTH", "user", "secret"), ("HELLO", "4"),
            ("HELLO", "x"), ("HELLO", "3", "FOO"), ("HELLO", "3", "AUTH", "u"),
            ("HELLO", "2", "SETNAME", "a b"), ("RESET", "x"),
        ]:
            out.append(a.call(*command))
        a.send(b"PING\r\nECHO  hello\r\n\r\nFOO \"a b\" c\n")
        out.append(a.read(3))
        a.send(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n")
        out.append(a.read(1))
        a.send(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n*1\r\n$4\r\nPI")
        out.append(a.read(1))
        a.send(b"NG\r\n")
        out.append(a.read(1))
        out.append(a.call("PING"))
    with RawClient(port) as a:
        a.send(b"*2\r\nxx\r\n")
        out.append(a.read(1))
        assert a.closed()
    with RawClient(port) as a:
        a.send(b"*1\r\n:5\r\n")
        out.append(a.read(1))
        assert a.closed()
    return out


def test_pubsubResp2SameAsRedis(real: RedisServer, server: Server) -> None:
    """
    RESP2 subscribers and publishers get from backplane the very bytes
    redis-server sends them.
    """
    expected, got = both(real, server, pubsub2)
    assert got == expected


def test_pubsubResp3SameAsRedis(real: RedisServer, server: Server) -> None:
    """
    RESP3 (after HELLO 3): the same pushes and replies as redis-server.
    """
    expected, got = both(real, server, pubsub3)
    assert got == expected


def test_errorsSameAsRedis(real: RedisServer, server: Server) -> None:
    """
    Unknown commands, wrong arities, unknown subcommands and protocol errors
    are answered as redis-server answers them; the connection stays usable
    (except after a protocol error, which closes it, as Redis does).
    """
    expected, got = both(real, server, errors)
    assert got == expected


def test_hello(server: Server) -> None:
    """
    HELLO says what the server is, and the client's id (as CLIENT ID).
    """
    with RawClient(server.ports["redis"]) as a:
        clientId = a.call("CLIENT", "ID")
        assert a.call("HELLO", "3", "SETNAME", "me") == (
            b"%7\r\n$6\r\nserver\r\n$9\r\nbackplane\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n"
            b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n" + clientId
            + b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
            b"$7\r\nmodules\r\n*0\r\n")
        assert a.call("CLIENT", "GETNAME") == b"$2\r\nme\r\n"
        assert a.call("CLIENT", "SETINFO", "LIB-NAME", "x") == b"+OK\r\n"
        assert a.call("CLIENT", "SETINFO", "other", "x") == b"-ERR Unrecognized option 'other'\r\n"
        assert a.call("SELECT", "1") == b"-ERR DB index is out of range\r\n"
        # No keys, no streams: what a Redis server stores is unknown here.
        for command in [("GET", "key"), ("SET", "k", "v"), ("XADD", "s", "*", "f", "v")]:
            assert a.call(*command) == (b"-ERR unknown command '%s', with args beginning with: "
                                        % command[0].encode()
                                        + b"".join(b"'%s' " % c.encode() for c in command[1:])
                                        + b"\r\n")
        assert a.call("PING") == b"+PONG\r\n"


def test_outsideBackplanesRefused(server: Server) -> None:
    """
    A name outside the port's backplanes is refused: PUBLISH and SUBSCRIBE
    with an error (SUBSCRIBE as a whole, as Redis refuses one its ACLs
    forbid), and nothing is created.
    """
    with RawClient(server.ports["redis"]) as a:
        refusal = b"-ERR backplane 'other' is not served by this port\r\n"
        assert a.call("PUBLISH", "other", "x") == refusal
        assert a.call("SUBSCRIBE", "chat.ok", "other") == refusal
        assert a.call("PING") == b"+PONG\r\n"  # not in subscribe mode: nothing subscribed
        assert a.call("PUBLISH", "room12", "x") == \
            b"-ERR backplane 'room12' is not served by this port\r\n"
    client = server.client()
    with pytest.raises(redis.ResponseError, match="not served"):
        client.publish("other", "x")
    pubsub = client.pubsub()
    pubsub.subscribe("other")
    with pytest.raises(redis.ResponseError, match="not served"):
        pubsub.get_message(timeout=5)
    pubsub.close()
    assert "other" not in set(server.stats()["backplanes"])


def test_maxBackplanes(server: Server) -> None:
    """
    A port creates at most max_backplanes backplanes on demand; one is
    forgotten once its last subscriber leaves, which makes room.
    """
    with RawClient(server.ports["small"]) as a, RawClient(server.ports["small"]) as b:
        a.call("SUBSCRIBE", "lim.1", "lim.2", replies=2)
        assert b.call("SUBSCRIBE", "lim.3") == \
            b"-ERR cannot create backplane 'lim.3': max_backplanes (2) reached\r\n"
        # Existing ones are not created, so not refused.
        assert b.call("SUBSCRIBE", "lim.2") == b"*3\r\n$9\r\nsubscribe\r\n$5\r\nlim.2\r\n:1\r\n"
        names = set(server.stats()["backplanes"])
        assert {"lim.1", "lim.2"} <= names
        a.call("UNSUBSCRIBE", "lim.1")
        assert b.call("SUBSCRIBE", "lim.3") == b"*3\r\n$9\r\nsubscribe\r\n$5\r\nlim.3\r\n:2\r\n"
    deadline = time.monotonic() + 10
    while {"lim.1", "lim.2", "lim.3"} & set(server.stats()["backplanes"]):
        assert time.monotonic() < deadline, "on-demand backplanes never forgotten"
        time.sleep(0.05)


def test_redisPy(server: Server) -> None:
    """
    redis-py, RESP2 and RESP3: subscribe and psubscribe, publish counts,
    messages as redis-py decodes them.
    """
    for protocol in (2, 3):
        client = server.client(protocol)
        assert client.ping()
        pubsub = client.pubsub()
        pubsub.subscribe("chat.py")
        pubsub.psubscribe("chat.p*")
        confirmations = [pubsub.get_message(timeout=5) for _ in range(2)]
        assert [c["type"] for c in confirmations if c] == ["subscribe", "psubscribe"]
        publisher = server.client(protocol)
        assert publisher.publish("chat.py", "one") == 2
        assert publisher.publish("chat.px", "two\nthree") == 1
        messages: list[tuple[str, bytes, bytes]] = []
        while len(messages) < 4:
            message = pubsub.get_message(timeout=5)
            assert message is not None, messages
            messages.append((message["type"], message["channel"], message["data"]))
        assert sorted(messages[:2]) == [("message", b"chat.py", b"one"),
                                        ("pmessage", b"chat.py", b"one")]
        assert messages[2:] == [("pmessage", b"chat.px", b"two"),
                                ("pmessage", b"chat.px", b"three")]
        assert publisher.pubsub_numpat() >= 1
        assert dict(publisher.pubsub_numsub("chat.py")) == {b"chat.py": 2}
        assert b"chat.py" in publisher.pubsub_channels("chat.*")
        pubsub.close()
        publisher.close()
        client.close()


def test_redisCli(server: Server) -> None:
    """
    redis-cli subscribes and publishes.
    """
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not found (Debian: apt-get install redis-tools)")
    port = str(server.ports["redis"])
    subscriber = subprocess.Popen([cli, "-p", port, "--no-raw", "SUBSCRIBE", "chat.cli"],
                                  stdout=subprocess.PIPE)
    try:
        assert subscriber.stdout is not None
        lines = [subscriber.stdout.readline() for _ in range(4)]
        assert lines[1:] == [b'1) "subscribe"\n', b'2) "chat.cli"\n', b"3) (integer) 1\n"]
        published = subprocess.run([cli, "-p", port, "PUBLISH", "chat.cli", "from cli"],
                                   capture_output=True, check=True)
        assert published.stdout == b"1\n"
        lines = [subscriber.stdout.readline() for _ in range(3)]
        assert lines == [b'1) "message"\n', b'2) "chat.cli"\n', b'3) "from cli"\n']
        unknown = subprocess.run([cli, "-p", port, "FLUSHALL"], capture_output=True, check=True)
        assert unknown.stdout.startswith(b"ERR unknown command 'FLUSHALL'")
    finally:
        subscriber.kill()
        subscriber.wait()


def test_linePortBothWays(server: Server) -> None:
    """
    A line client and a Redis client on one declared backplane (which keeps
    its history), both ways; a multi-line PUBLISH arrives as separate lines,
    and a line longer than max_line_length is refused, nothing of it
    published.
    """
    lines = socket.create_connection(("127.0.0.1", server.ports["lines"]), timeout=10)
    with lines, RawClient(server.ports["redis"]) as sub, RawClient(server.ports["redis"]) as pub:
        sub.call("SUBSCRIBE", "NEWS")
        lines.sendall(b"from a line client\r\n")
        assert sub.read(1) == b"*3\r\n$7\r\nmessage\r\n$4\r\nNEWS\r\n$18\r\nfrom a line client\r\n"
        assert pub.call("PUBLISH", "NEWS", "first\nsecond\r\nthird") == b":2\r\n"
        assert readLines(lines, 3) == [b"first", b"second", b"third"]
        assert sub.read(3) == (b"*3\r\n$7\r\nmessage\r\n$4\r\nNEWS\r\n$5\r\nfirst\r\n"
                               b"*3\r\n$7\r\nmessage\r\n$4\r\nNEWS\r\n$6\r\nsecond\r\n"
                               b"*3\r\n$7\r\nmessage\r\n$4\r\nNEWS\r\n$5\r\nthird\r\n")
        assert pub.call("PUBLISH", "NEWS", "ok\n" + "x" * 101) == (
            b"-ERR a line of the message is longer than max_line_length (100 bytes): nothing "
            b"of it was published\r\n")
        assert pub.call("PUBLISH", "NEWS", "after") == b":2\r\n"
        assert readLines(lines, 1) == [b"after"]
    news = server.stats()["backplanes"]["NEWS"]
    assert news["history"]["last"] >= 5  # declared: its history kept


def test_stats(server: Server) -> None:
    """
    A Redis port reports like every port, with its own counters besides.
    """
    with RawClient(server.ports["redis"]) as a:
        a.call("SUBSCRIBE", "chat.stats")
        a.call("PSUBSCRIBE", "chat.s*")
        report = next(s for s in server.stats()["services"]
                      if s["info"].get("endpoint", "").startswith(f"tcp:{server.ports['redis']}"))
        assert report["kind"] == "listen"
        assert report["info"]["protocol"] == "redis"
        assert report["info"]["backplanes"] == "chat.*, NEWS, room?"
        assert report["gauges"]["subscriptions"] >= 1
        assert report["gauges"]["pattern_subscriptions"] >= 1
        assert report["counters"]["commands"] > 0
        assert report["counters"]["unknown_commands"] > 0
        metrics = server.metrics()
        assert "backplane_listen_commands_total" in metrics
        assert "backplane_listen_subscriptions" in metrics


def test_tlsAndAuth(server: Server) -> None:
    """
    redis-py over TLS to an ssl: Redis port with auth = true: a token's
    rights apply to each backplane; no token, or a wrong one, is refused as
    Redis refuses them.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def client(protocol: int = 2, **options: Any) -> Any:
        # No retries: redis-py retries a refused AUTH, with a backoff.
        return redis.Redis(port=server.ports["secure"], ssl=True, protocol=protocol,
                           ssl_ca_certs=str(server.certs.ca.path), socket_timeout=10,
                           retry=Retry(NoBackoff(), 0), **options)

    with pytest.raises(redis.AuthenticationError):
        client(password="wrong").ping()
    anonymous = client()
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        anonymous.publish("chat.w1", "x")
    for protocol in (2, 3):
        subscriber = client(protocol, password=TOKEN).pubsub()
        subscriber.subscribe("chat.w1")
        assert subscriber.get_message(timeout=5)["type"] == "subscribe"
        writer = client(protocol, username="writer", password=TOKEN)
        assert writer.publish("chat.w1", "secret") == 1
        message = subscriber.get_message(timeout=5)
        assert (message["channel"], message["data"]) == (b"chat.w1", b"secret")
        with pytest.raises(redis.ResponseError, match=r"may not publish to 'chat\.other'"):
            writer.publish("chat.other", "x")
        subscriber.close()
        writer.close()


def test_webPortsChooseByPath(server: Server) -> None:
    """
    WebSocket and SSE ports that list backplanes: the request's path
    chooses the backplane (created on demand), shared with Redis clients;
    a path outside the port's backplanes is refused with 404.
    """
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws = f"ws://127.0.0.1:{server.ports['ws']}"
    with connect(f"{ws}/chat.room1") as alice, connect(f"{ws}/chat.room1") as bob, \
            connect(f"{ws}/chat.room2") as carol, RawClient(server.ports["redis"]) as redisClient:
        redisClient.call("SUBSCRIBE", "chat.room1")
        curl = subprocess.Popen(["curl", "-sN", f"http://127.0.0.1:{server.ports['sse']}/chat.room1"],
                                stdout=subprocess.PIPE)
        try:
            assert curl.stdout is not None
            assert curl.stdout.readline() == b"retry: 2000\n"  # the stream has begun
            alice.send("hello room1")
            assert bob.recv(timeout=10) == "hello room1"
            assert redisClient.read(1) == \
                b"*3\r\n$7\r\nmessage\r\n$10\r\nchat.room1\r\n$11\r\nhello room1\r\n"
            assert curl.stdout.readline() == b"\n"
            assert curl.stdout.readline() == b"data: hello room1\n"
            with RawClient(server.ports["redis"]) as publisher:
                assert publisher.call("PUBLISH", "chat.room2", "to carol") == b":1\r\n"
            assert carol.recv(timeout=10) == "to carol"
            with pytest.raises(TimeoutError):
                alice.recv(timeout=0.2)  # a client does not hear itself
        finally:
            curl.kill()
            curl.wait()
    for url in (f"{ws}/other", f"{ws}/"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url)
        assert refused.value.response.status_code == 404
    with pytest.raises(urllib.error.HTTPError) as notFound:
        urllib.request.urlopen(f"http://127.0.0.1:{server.ports['sse']}/NEWS")
    assert notFound.value.code == 404
    deadline = time.monotonic() + 10
    while {"chat.room1", "chat.room2"} & set(server.stats()["backplanes"]):
        assert time.monotonic() < deadline, "on-demand backplanes never forgotten"
        time.sleep(0.05)
