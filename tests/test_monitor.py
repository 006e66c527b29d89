"""
The monitor over real sockets: /stats, /metrics and /healthz reflect what
the service does; its own registry; its allow.
"""

import json
import os
from collections.abc import Generator
from ipaddress import ip_network
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from twisted.application.service import IService
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.monitor import MonitorService, statsSources
from backplane.ports import ListenService
from tests.helpers import (
    LineClient,
    connectClient,
    httpGet,
    metricSamples,
    portNumber,
    sample,
    section,
    waitUntil,
)

LOCAL = "tcp:0:interface=127.0.0.1"


def portOf(service) -> int:
    return portNumber(service.port)


@pytest.fixture
def running():
    """
    A service as twistd would run it: backplane DATA, a publish port
    (listen[1]), a subscribe port (listen[2]) and the monitor.
    """
    service = BackplaneService()
    service.create("DATA")
    service.create("QUIET")
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL)
    monitor.setName("monitor")
    monitor.setServiceParent(service)
    for i, factory in enumerate((PublishToFactory(service, "DATA"),
                                 SubscribeToFactory(service, "DATA")), 1):
        port = ListenService(endpoints.serverFromString(reactor, LOCAL), factory,
                             description=LOCAL, where=f"listen[{i}]")
        port.setName(f"listen[{i}]")
        port.setServiceParent(service)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def urlOf(service, path: str) -> str:
    return f"http://127.0.0.1:{portOf(service.getServiceNamed('monitor'))}{path}"


@inlineCallbacks
def flow(service: BackplaneService, subscribers: int,
         lines: int) -> Generator[Deferred[Any], Any, tuple[LineClient, list[LineClient]]]:
    """
    Connect a publisher and subscribers, send C{lines} lines through, and
    return the clients once every subscriber has every line.
    """
    pub, sub = (portOf(service.getServiceNamed(f"listen[{i}]")) for i in (1, 2))
    readers = yield gatherResults([connectClient(sub) for _ in range(subscribers)])
    data = service.get("DATA")
    yield waitUntil(lambda: len(data) == subscribers, what="subscribers attached")
    writer = yield connectClient(pub)
    yield waitUntil(lambda: data.stats.publishers == 1, what="publisher counted")
    writer.send(*(b"line %d" % i for i in range(lines)))
    yield waitUntil(lambda: all(len(r.lines) == lines for r in readers), what="every line")
    return writer, readers


@pytest_twisted.inlineCallbacks
def test_healthz(running):
    response, body = yield httpGet(urlOf(running, "/healthz"))
    assert response.code == 200
    assert body == b"ok\n"
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]


@pytest_twisted.inlineCallbacks
def test_healthzWhenTheServiceIsNotRunning():
    """
    A monitor of a service that is not running (stopping) answers 503.
    """
    service = BackplaneService()
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL)
    monitor.startService()
    try:
        response, body = yield httpGet(f"http://127.0.0.1:{portOf(monitor)}/healthz")
        assert (response.code, body) == (503, b"stopping\n")
    finally:
        yield monitor.stopService()


@pytest_twisted.inlineCallbacks
def test_metricsMoveWhenLinesFlow(running):
    response, body = yield httpGet(urlOf(running, "/metrics"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(
        b"text/plain; version=0.0.4")
    before = metricSamples(body.decode())
    assert sample(before, "backplane_messages_in_total", backplane="DATA") == 0
    assert sample(before, "backplane_subscribers", backplane="DATA") == 0
    assert sample(before, "backplane_listen_state", name="listen[1]", protocol="lines",
                  state="listening") == 1

    writer, readers = yield flow(running, subscribers=3, lines=25)
    _, body = yield httpGet(urlOf(running, "/metrics"))
    after = metricSamples(body.decode())
    assert sample(after, "backplane_messages_in_total", backplane="DATA") == 25
    assert sample(after, "backplane_published_bytes_total", backplane="DATA") == sum(
        len(b"line %d\n" % i) for i in range(25))
    assert sample(after, "backplane_deliveries_total", backplane="DATA") == 75
    assert sample(after, "backplane_subscribers", backplane="DATA") == 3
    assert sample(after, "backplane_publishers", backplane="DATA") == 1
    assert sample(after, "backplane_messages_in_total", backplane="QUIET") == 0
    assert sample(after, "backplane_listen_accepted_total", name="listen[1]",
                  protocol="lines") == 1
    assert sample(after, "backplane_listen_accepted_total", name="listen[2]",
                  protocol="lines") == 3
    assert sample(after, "backplane_listen_clients", name="listen[2]",
                  protocol="lines") == 3
    assert sample(after, "backplane_listen_messages_in_total", name="listen[1]",
                  protocol="lines") == 25
    assert sample(after, "backplane_monitor_requests_total", name="monitor") == 2
    assert sample(after, "backplane_uptime_seconds") >= 0
    assert sample(after, "process_resident_memory_bytes") > 0
    info = [key for key in after if key[0] == "backplane_info"]
    assert dict(info[0][1])["version"]

    # Reset, not closed: a subscriber that closes cleanly is one that
    # half-closed (SPEC section 6), subscribed until a write finds it gone.
    for client in (writer, *readers):
        client.transport.abortConnection()
    yield waitUntil(lambda: len(running.get("DATA")) == 0)
    _, body = yield httpGet(urlOf(running, "/metrics"))
    gone = metricSamples(body.decode())
    assert sample(gone, "backplane_subscribers", backplane="DATA") == 0
    assert sample(gone, "backplane_listen_clients", name="listen[2]",
                  protocol="lines") == 0
    assert sample(gone, "backplane_messages_in_total", backplane="DATA") == 25


@pytest_twisted.inlineCallbacks
def test_openMetricsWhenAskedFor(running):
    response, body = yield httpGet(urlOf(running, "/metrics"),
                                   accept="application/openmetrics-text; version=1.0.0")
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(
        b"application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest_twisted.inlineCallbacks
def test_statsMatchWhatHappened(running):
    writer, readers = yield flow(running, subscribers=2, lines=10)
    response, body = yield httpGet(urlOf(running, "/stats"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    stats = json.loads(body)

    server = stats["server"]
    assert server["pid"] == os.getpid()
    assert server["version"]
    assert server["running"] is True
    assert server["uptime_seconds"] >= 0
    assert server["started"].endswith("Z")
    assert server["rss_bytes"] > 0
    assert server["max_rss_bytes"] > 0

    assert stats["backplanes"]["DATA"] == {
        "subscribers": 2, "publishers": 1, "retain": 0, "messages_in": 10,
        "bytes_in": sum(len(b"line %d\n" % i) for i in range(10)), "deliveries": 20,
        "dropped": 0, "slow_disconnects": 0, "errors": 0, "resumes": 0, "replayed": 0, "gaps": 0,
        "history": None,
    }
    assert stats["backplanes"]["QUIET"]["messages_in"] == 0

    services = {entry["name"]: entry for entry in stats["services"]}
    assert [entry["name"] for entry in stats["services"]] == ["monitor", "listen[1]",
                                                               "listen[2]"]
    publish, subscribe = services["listen[1]"], services["listen[2]"]
    assert publish["kind"] == "listen"
    assert publish["state"] == "listening"
    assert publish["gauges"] == {"clients": 1, "handshakes": 0}
    assert publish["counters"]["messages_in"] == 10
    assert publish["info"]["publish_to"] == "DATA"
    assert subscribe["gauges"] == {"clients": 2, "handshakes": 0}
    assert subscribe["counters"]["accepted"] == 2
    assert subscribe["info"]["subscribe_to"] == "DATA"
    assert services["monitor"]["counters"]["requests"] == 1
    for client in (writer, *readers):
        client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_unknownPaths(running):
    for path in ("/nothing", "/stats.json"):
        response, _ = yield httpGet(urlOf(running, path))
        assert response.code == 404, path


@pytest_twisted.inlineCallbacks
def test_monitorAllow():
    """
    A client of the monitor from an address not in its allow is closed at
    once, and counted.
    """
    service = BackplaneService()
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL, allow=[ip_network("127.0.0.1/32")])
    monitor.setServiceParent(service)
    service.startService()
    try:
        stranger = yield connectClient(portOf(monitor), source="127.0.0.2")
        yield stranger.closed
        assert section(monitor.report(), "counters")["disallowed"] == 1
        response, _ = yield httpGet(f"http://127.0.0.1:{portOf(monitor)}/healthz")
        assert response.code == 200
    finally:
        yield service.stopService()


def test_ownRegistry():
    """
    Each monitor has its own registry: two services in one process do not
    collide, and prometheus_client's global registry holds none of it.
    """
    first, second = BackplaneService(), BackplaneService()
    first.create("ONE")
    second.create("TWO")
    monitors = [MonitorService(s, endpoints.serverFromString(reactor, LOCAL),
                               description=LOCAL, clock=Clock()) for s in (first, second)]
    one = generate_latest(monitors[0].registry).decode()
    two = generate_latest(monitors[1].registry).decode()
    assert 'backplane="ONE"' in one and 'backplane="TWO"' not in one
    assert 'backplane="TWO"' in two
    assert "backplane_" not in generate_latest(REGISTRY).decode()


def test_reportWithAClock():
    clock = Clock()
    clock.advance(1_000_000)
    service = BackplaneService()
    service.create("A")
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL, clock=clock)
    assert monitor.uptime() == 0
    monitor.started = clock.seconds()
    clock.advance(12.5)
    report = monitor.document()
    assert section(report, "server")["uptime_seconds"] == 12.5
    assert section(report, "server")["started"] == "1970-01-12T13:46:40.000Z"
    assert section(report, "server")["now"] == "1970-01-12T13:46:52.500Z"
    assert report["services"] == []
    samples = metricSamples(generate_latest(monitor.registry).decode())
    assert sample(samples, "backplane_uptime_seconds") == 12.5
    assert sample(samples, "backplane_start_time_seconds") == 1_000_000


def test_sourcesOfOtherKinds():
    """
    Any IStatsSource child reports: a relay's counters and gauges become
    metrics named for its kind; a source that fails is left out.
    """
    from tests.test_stats import FakeRelay

    class Broken(FakeRelay):
        def report(self):
            raise RuntimeError("broken")

    service = BackplaneService()
    FakeRelay("connect[1]").setServiceParent(service)
    Broken("connect[2]").setServiceParent(service)
    monitor = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                             description=LOCAL, clock=Clock())
    assert [IService(s).name for s in statsSources(service)] == ["connect[1]", "connect[2]"]
    services = monitor.document()["services"]
    assert isinstance(services, list)
    assert [r["name"] for r in services] == ["connect[1]"]
    samples = metricSamples(generate_latest(monitor.registry).decode())
    assert sample(samples, "backplane_connect_connects_total", name="connect[1]") == 2
    assert sample(samples, "backplane_connect_lines_in_total", name="connect[1]") == 7
    assert sample(samples, "backplane_connect_buffered", name="connect[1]") == 3
    assert sample(samples, "backplane_connect_state", name="connect[1]", state="backoff") == 1
    assert sample(samples, "backplane_connect_state", name="connect[1]", state="connected") == 0


@pytest_twisted.inlineCallbacks
def test_portInUse():
    from backplane.errors import ConfigError

    service = BackplaneService()
    first = MonitorService(service, endpoints.serverFromString(reactor, LOCAL),
                           description=LOCAL)
    first.startService()
    taken = f"tcp:{portOf(first)}:interface=127.0.0.1"
    try:
        second = MonitorService(service, endpoints.serverFromString(reactor, taken),
                                description=taken, path="x.toml")
        with pytest.raises(ConfigError) as error:
            second.startService()
        assert str(error.value) == (
            f"x.toml: monitor.endpoint: cannot listen on {taken!r}: Address already in use")
    finally:
        yield first.stopService()
