"""
[[connect]] relays over the client endpoints a config names: TLS (checking
the upstream's certificate) and UNIX sockets, built from the config as twistd
builds them, against real upstream servers.
"""

import shutil
from collections.abc import Generator
from typing import Any

import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, inlineCallbacks

from backplane import BackplaneService, PublishToFactory
from backplane.build import build_service
from backplane.config import parse_config
from backplane.testing import Recorder
from tests.certs import Certificates
from tests.helpers import freePort, waitUntil


@inlineCallbacks
def relayThrough(serverDescription: str,
                 clientDescription: str) -> Generator[Deferred[Any], Any, None]:
    """
    Serve an upstream on C{serverDescription}, relay it through a
    C{[[connect]]} entry on C{clientDescription}, and check that lines go
    both ways.
    """
    upstream = BackplaneService()
    up = upstream.create("UP")
    upstreamLines = Recorder.on(up)
    port = yield endpoints.serverFromString(reactor, serverDescription).listen(
        PublishToFactory(upstream, "UP", subscribe_to="UP"))
    node = build_service(parse_config({
        "backplane": {"DOWN": {}, "OUT": {}},
        "connect": [{"endpoint": clientDescription, "publish_to": "DOWN",
                     "subscribe_to": "OUT", "initial_delay": 0.1, "max_delay": 0.5}],
    }))
    down = Recorder.on(node.get("DOWN"))
    node.startService()
    try:
        relay = node.getServiceNamed("connect[1]").factory
        # Connected, and (over TLS, once the handshake is done) subscribed
        # upstream.
        yield waitUntil(lambda: relay.connected and len(up) == 2, what="the relay connected")
        up.publish(b"from upstream")
        yield waitUntil(lambda: down.messages == [b"from upstream"])
        node.get("OUT").publish(b"to upstream")
        yield waitUntil(lambda: upstreamLines.messages[-1:] == [b"to upstream"])
        assert relay.stats.lines_in == 1
        assert relay.stats.lines_out == 1
    finally:
        yield node.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_relayOverTLS(tmp_path):
    certs = Certificates.make(tmp_path)
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(certs.ca.path, roots / "ca.pem")
    port = freePort()
    yield relayThrough(certs.sslEndpoint(port),
                       f"tls:host=localhost:port={port}:trustRoots={roots}")


@pytest_twisted.inlineCallbacks
def test_relayRefusesAnUntrustedUpstream(tmp_path):
    """
    Over TLS the relay checks the upstream's certificate: against the wrong
    roots it never connects, and nothing is relayed.
    """
    certs = Certificates.make(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    # The certificate of a CA that did not sign the upstream's.
    shutil.copy(Certificates.make(wrong).ca.path, wrong / "ca.pem")
    for other in wrong.glob("*"):
        if other.name != "ca.pem":
            other.unlink()
    upstream = BackplaneService()
    up = upstream.create("UP")
    port = yield endpoints.serverFromString(reactor, certs.sslEndpoint(0)).listen(
        PublishToFactory(upstream, "UP", subscribe_to="UP"))
    node = build_service(parse_config({
        "backplane": {"DOWN": {}},
        "connect": [{"endpoint": f"tls:host=localhost:port={port.getHost().port}"
                                 f":trustRoots={wrong}",
                     "publish_to": "DOWN", "initial_delay": 0.1, "max_delay": 0.2}],
    }))
    down = Recorder.on(node.get("DOWN"))
    node.startService()
    try:
        relay = node.getServiceNamed("connect[1]").factory
        yield waitUntil(lambda: relay.stats.attempts >= 3, what="a few attempts")
        assert len(up) == 0, "no handshake completed: the upstream has no subscriber"
        up.publish(b"secret")
        assert down.messages == []
    finally:
        yield node.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_relayOverUNIX(tmp_path):
    path = tmp_path / "upstream.sock"
    yield relayThrough(f"unix:{path}", f"unix:path={path}")



@pytest_twisted.inlineCallbacks
def test_statsShowTheConfiguredEndpoint():
    """
    A relay's statistics name its endpoint as configured
    (C{tcp:host=...:port=...}), connected or not; the address of the
    upstream it is connected to is C{peer}.
    """
    upstream = BackplaneService()
    upstream.create("UP")
    port = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        PublishToFactory(upstream, "UP", subscribe_to="UP"))
    number = port.getHost().port
    description = f"tcp:host=localhost:port={number}"
    node = build_service(parse_config({
        "backplane": {"DOWN": {}},
        "connect": [{"endpoint": description, "publish_to": "DOWN",
                     "initial_delay": 0.1, "max_delay": 0.5}],
    }))
    service = node.getServiceNamed("connect[1]")
    assert service.report()["info"]["endpoint"] == description
    assert service.report()["peer"] is None
    node.startService()
    try:
        yield waitUntil(lambda: service.relay.connected, what="the relay connected")
        report = service.report()
        assert report["info"]["endpoint"] == description
        assert report["peer"] == f"127.0.0.1:{number}"
    finally:
        yield node.stopService()
        yield port.stopListening()
