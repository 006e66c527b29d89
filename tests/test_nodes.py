"""
Several nodes, each a real twistd process, sharing a backplane through a real
redis-server (SPEC §7).
"""

import socket
import time

import pytest

from tests.helpers import freePort
from tests.twistd import Twistd, readLines

NODE = """
[backplane.NEWS]
shared = true

[backplane.LOCAL]

[redis]
url = "redis://127.0.0.1:{redis}/0"
prefix = "test:"
initial_delay = 0.1
max_delay = 0.5
timeout = 2.0

[[listen]]
endpoint = "tcp:{pub}:interface=127.0.0.1"
publish_to = "NEWS"

[[listen]]
endpoint = "tcp:{sub}:interface=127.0.0.1"
subscribe_to = "NEWS"
"""


class Node:
    def __init__(self, folder, name, redisPort):
        self.pub, self.sub = freePort(), freePort()
        self.twistd = Twistd(folder, name=name, config=NODE.format(
            redis=redisPort, pub=self.pub, sub=self.sub))

    def start(self):
        self.twistd.start()
        self.twistd.waitForPort(self.pub)
        self.twistd.waitForPort(self.sub)
        return self

    def subscriber(self):
        return socket.create_connection(("127.0.0.1", self.sub), timeout=10)

    def publish(self, *lines):
        with socket.create_connection(("127.0.0.1", self.pub)) as sock:
            sock.sendall(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def nodes(tmp_path, redis_server):
    started = []

    def make(count=2):
        for i in range(count):
            started.append(Node(tmp_path, f"node{i}", redis_server.port).start())
        for node in started:
            node.twistd.waitForLog("Sharing backplanes")
        return started

    yield make
    for node in started:
        node.twistd.kill()


def assertNothingMore(sock, wait=0.5):
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        data = sock.recv(65536)
        raise AssertionError(f"unexpected: {data!r}")


def test_everyNodeOnce(nodes):
    a, b = nodes(2)
    onA, onB = a.subscriber(), b.subscriber()
    time.sleep(0.3)
    a.publish(b"from a", b"second")
    b.publish(b"from b")
    assert sorted(readLines(onA, 3)) == sorted([b"from a", b"second", b"from b"])
    assert sorted(readLines(onB, 3)) == sorted([b"from a", b"second", b"from b"])
    assertNothingMore(onA)
    assertNothingMore(onB)
    for node in (a, b):
        node.twistd.stop()


def test_plainRedisClient(nodes, redis_server):
    """
    A message any Redis client publishes on the channel reaches every node's
    subscribers, as lines.
    """
    a, b = nodes(2)
    onA, onB = a.subscriber(), b.subscriber()
    time.sleep(0.3)
    assert redis_server.publish(b"test:NEWS", b"hello\r\nworld") == 2
    assert readLines(onA, 2) == [b"hello", b"world"]
    assert readLines(onB, 2) == [b"hello", b"world"]


def test_redisRestarts(nodes, redis_server):
    """
    Redis killed and restarted on the same port: local delivery never stops,
    and cross-node delivery resumes once both nodes have re-subscribed.
    """
    a, b = nodes(2)
    onA, onB = a.subscriber(), b.subscriber()
    time.sleep(0.3)
    a.publish(b"before")
    assert readLines(onA, 1) == [b"before"]
    assert readLines(onB, 1) == [b"before"]

    redis_server.kill()
    a.twistd.waitForLog("is unreachable")
    a.publish(b"during")
    assert readLines(onA, 1) == [b"during"], "local delivery goes on"
    assertNothingMore(onB)

    redis_server.start()
    for node in (a, b):
        node.twistd.waitForLog("is back after")
    a.publish(b"after")
    assert readLines(onA, 1) == [b"after"]
    assert readLines(onB, 1) == [b"after"]
    # Once B is known to be back (A learns it from the PUBLISH of "after").
    a.twistd.waitForLog("1 messages published on this node meanwhile did not reach")
    text = a.twistd.text()
    assert text.count("is unreachable") == 1, "the outage is logged once"
    for node in (a, b):
        node.twistd.stop()
