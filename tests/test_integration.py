"""
Integration over real loopback sockets, composed as a user would compose it:
a BackplaneService with factories on server endpoints, no twistd.
"""

import random
import re
from ipaddress import ip_network

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, tcp
from twisted.internet.defer import gatherResults
from twisted.internet.error import ConnectionRefusedError

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.protocols import BackplaneProtocol, Limits
from tests.helpers import connectClient, portNumber, waitUntil


@pytest_twisted.inlineCallbacks
def listen(factory):
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1:backlog=1024")
    port = yield endpoint.listen(factory)
    return port


LINE = re.compile(rb"^P(\d) (\d{4}) [a-z]+$")


@pytest_twisted.inlineCallbacks
def test_manySubscribersTwoPublishers(service):
    """
    500 subscribers on one port, 1,000 lines from each of two publishers
    written in random-sized pieces: every subscriber gets every line, whole,
    in each publisher's order.
    """
    subscribers, lines = 500, 1000
    subPort = yield listen(SubscribeToFactory(service, "DATA"))
    pubPort = yield listen(PublishToFactory(service, "DATA"))
    try:
        clients = yield gatherResults(
            [connectClient(subPort.getHost().port) for _ in range(subscribers)]
        )
        data = service.get("DATA")
        yield waitUntil(lambda: len(data) == subscribers, what="subscribers attached")

        publishers = yield gatherResults([connectClient(pubPort.getHost().port)
                                          for _ in range(2)])
        rng = random.Random(7)
        streams = []
        for pid in range(2):
            stream = b"".join(
                b"P%d %04d %s\n" % (pid, seq, b"abcdefghij"[: rng.randint(1, 10)])
                for seq in range(lines)
            )
            streams.append(stream)
        # Interleave the two publishers' writes in pieces of random size, cut
        # anywhere (mid-line included).
        offsets = [0, 0]
        while offsets[0] < len(streams[0]) or offsets[1] < len(streams[1]):
            pid = rng.randrange(2)
            size = rng.randint(1, 3000)
            piece = streams[pid][offsets[pid] : offsets[pid] + size]
            offsets[pid] += len(piece)
            if piece:
                publishers[pid].transport.write(piece)

        total = 2 * lines
        yield waitUntil(lambda: all(len(c.lines) >= total for c in clients), timeout=60,
                        what="every line at every subscriber")
        for client in clients:
            assert len(client.lines) == total
            assert client.buffer == b""
            seen: dict[bytes, list[int]] = {b"0": [], b"1": []}
            for line in client.lines:
                match = LINE.match(line)
                assert match, f"merged or split line: {line!r}"
                seen[match.group(1)].append(int(match.group(2)))
            assert seen[b"0"] == list(range(lines))
            assert seen[b"1"] == list(range(lines))
        assert data.stats.messages_in == total
        assert data.stats.deliveries == total * subscribers
        for client in clients + publishers:
            client.transport.loseConnection()
    finally:
        yield subPort.stopListening()
        yield pubPort.stopListening()


@pytest_twisted.inlineCallbacks
def test_chatNoEcho(service):
    """
    On a port that publishes to and subscribes to one backplane, each client
    hears everybody but itself.
    """
    port = yield listen(PublishToFactory(service, "DATA", subscribe_to="DATA"))
    try:
        alice = yield connectClient(port.getHost().port)
        bob = yield connectClient(port.getHost().port)
        data = service.get("DATA")
        yield waitUntil(lambda: len(data) == 2)
        alice.send(b"from alice")
        bob.send(b"from bob")
        yield waitUntil(lambda: alice.lines and bob.lines)
        yield waitUntil(lambda: data.stats.messages_in == 2)
        assert alice.lines == [b"from bob"]
        assert bob.lines == [b"from alice"]
        alice.transport.loseConnection()
        bob.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_overlongLineDisconnectsOnlyThatClient(service):
    port = yield listen(PublishToFactory(service, "DATA", limits=Limits(max_line_length=100)))
    subPort = yield listen(SubscribeToFactory(service, "DATA"))
    try:
        watcher = yield connectClient(subPort.getHost().port)
        good = yield connectClient(port.getHost().port)
        bad = yield connectClient(port.getHost().port)
        yield waitUntil(lambda: len(service.get("DATA")) == 1)
        bad.send(b"fine", b"x" * 101, b"never")
        yield bad.closed
        good.send(b"still flowing")
        yield waitUntil(lambda: len(watcher.lines) == 2)
        assert watcher.lines == [b"fine", b"still flowing"]
        assert good.connected
        good.transport.loseConnection()
        watcher.transport.loseConnection()
    finally:
        yield port.stopListening()
        yield subPort.stopListening()


@pytest_twisted.inlineCallbacks
def test_maxClientsOverTCP(service):
    port = yield listen(SubscribeToFactory(service, "DATA", limits=Limits(max_clients=1)))
    try:
        first = yield connectClient(port.getHost().port)
        data = service.get("DATA")
        yield waitUntil(lambda: len(data) == 1)
        second = yield connectClient(port.getHost().port)
        yield second.closed
        data.publish(b"only the first")
        yield waitUntil(lambda: first.lines == [b"only the first"])
        assert first.connected
        first.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_listenServiceStopClosesClients():
    """
    Stopping the service stops accepting and closes every client, after
    sending what was pending for it.
    """
    from backplane.ports import ListenService

    service = BackplaneService()
    data = service.create("DATA")
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    factory = SubscribeToFactory(service, "DATA")
    port = ListenService(endpoint, factory, description="tcp:0", where="listen[1]")
    port.setServiceParent(service)
    service.startService()
    number = portNumber(port.port)
    clients = yield gatherResults([connectClient(number) for _ in range(3)])
    yield waitUntil(lambda: len(data) == 3)
    data.publishMany([b"last words"] * 1000)
    yield service.stopService()
    for client in clients:
        yield client.closed
        assert client.lines == [b"last words"] * 1000
    assert factory.clients == 0
    with pytest.raises(ConnectionRefusedError):
        yield connectClient(number)


@pytest_twisted.inlineCallbacks
def test_listenServicePortInUse():
    from backplane.errors import ConfigError
    from backplane.ports import ListenService

    service = BackplaneService()
    service.create("DATA")
    first = ListenService(endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
                          SubscribeToFactory(service, "DATA"), description="first")
    first.startService()
    taken = portNumber(first.port)
    try:
        second = ListenService(
            endpoints.serverFromString(reactor, f"tcp:{taken}:interface=127.0.0.1"),
            SubscribeToFactory(service, "DATA"), description=f"tcp:{taken}",
            where="listen[2]", path="x.toml")
        with pytest.raises(ConfigError) as error:
            second.startService()
        assert str(error.value) == (
            f"x.toml: listen[2].endpoint: cannot listen on 'tcp:{taken}': Address already in use"
        )
    finally:
        yield first.stopService()


def _hasIPv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


@pytest_twisted.inlineCallbacks
def test_allowClosesOtherAddressesAndCounts(service):
    """
    With allow = ["127.0.0.1/32"], a client from 127.0.0.2 (another address
    of the loopback interface) is closed at once and counted; nothing it
    sends is published; 127.0.0.1 is served.
    """
    data = service.get("DATA")
    factory = PublishToFactory(service, "DATA", limits=Limits(
        allow=(ip_network("127.0.0.1/32"),)))
    port = yield listen(factory)
    try:
        stranger = yield connectClient(port.getHost().port, source="127.0.0.2")
        stranger.send(b"from elsewhere")
        yield stranger.closed
        assert factory.stats.disallowed == 1
        assert factory.stats.accepted == 0
        local = yield connectClient(port.getHost().port, source="127.0.0.1")
        local.send(b"from here")
        yield waitUntil(lambda: data.stats.messages_in == 1)
        assert factory.stats.accepted == 1
        assert local.connected
        local.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest.mark.skipif(not _hasIPv6(), reason="no IPv6 on this machine")
@pytest_twisted.inlineCallbacks
def test_allowOnAnIPv6PortChecksIPv4MappedAddresses(service):
    """
    An IPv6 port on :: sees IPv4 clients as ::ffff:a.b.c.d; allow checks
    them as their IPv4 address.
    """
    factory = SubscribeToFactory(service, "DATA", limits=Limits(
        allow=(ip_network("127.0.0.1/32"),)))
    port = yield endpoints.serverFromString(reactor, r"tcp6:0:interface=\:\:").listen(factory)
    try:
        local = yield connectClient(port.getHost().port, source="127.0.0.1")
        yield waitUntil(lambda: factory.clients == 1)
        stranger = yield connectClient(port.getHost().port, source="127.0.0.2")
        yield stranger.closed
        assert (factory.stats.accepted, factory.stats.disallowed) == (1, 1)
        (peer,) = factory.protocols
        assert isinstance(peer, BackplaneProtocol)
        assert peer.peer.startswith("::ffff:127.0.0.1:")
        local.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_directAndBufferedWritesKeepOrder(service):
    """
    A subscriber's chunks go straight to its socket while the transport's
    buffer is empty, and through the transport once the socket is full:
    with a client that reads in slow bursts, both happen, and the bytes
    arrive exactly as published.
    """
    import socket as stdsocket

    from twisted.internet.task import deferLater

    factory = SubscribeToFactory(service, "DATA", limits=Limits(max_pending=1 << 30))
    port = yield listen(factory)
    data = service.get("DATA")
    client = stdsocket.socket()
    client.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    try:
        yield waitUntil(lambda: len(data) == 1)
        # Small kernel buffers on both sides, so that the socket fills up.
        (protocol,) = factory.protocols
        assert isinstance(protocol.transport, tcp.Server)
        protocol.transport.getHandle().setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF,
                                                  4096)
        rng = random.Random(3)
        expected, received = [], []
        for i in range(400):
            chunk = b"".join(b"%06d %s\n" % (i * 100 + j, b"z" * rng.randint(0, 300))
                             for j in range(rng.randint(1, 40)))
            expected.append(chunk)
            data.publishLines(chunk)
            if i % 50 == 0:
                yield deferLater(reactor, 0.01, lambda: None)
                try:
                    received.append(client.recv(1 << 20))
                except BlockingIOError:
                    pass
        want = b"".join(expected)

        def drain():
            try:
                while chunk := client.recv(1 << 20):
                    received.append(chunk)
            except BlockingIOError:
                pass
            return sum(map(len, received)) >= len(want)

        yield waitUntil(drain, timeout=30, what="everything")
        assert b"".join(received) == want
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_smallChunkSentAtOnce(service):
    """
    While a plain TCP subscriber's transport holds nothing, a chunk goes
    straight to its socket: the client can read it before the reactor has
    turned once, and the connection is never registered for writing.
    """
    import socket as stdsocket

    factory = SubscribeToFactory(service, "DATA")
    port = yield listen(factory)
    data = service.get("DATA")
    client = stdsocket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        yield waitUntil(lambda: len(data) == 1)
        (protocol,) = factory.protocols
        assert isinstance(protocol.transport, tcp.Server)
        data.publishLines(b"tick\n")
        assert protocol.transport not in reactor.getWriters()
        client.settimeout(5)
        assert client.recv(100) == b"tick\n"
    finally:
        client.close()
        yield port.stopListening()
