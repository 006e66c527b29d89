"""
C{/metrics} against Prometheus' conventions and against the table of
docs/operations.md: a service with every feature configured (ports of each
protocol, ids, acks, auth, a clock, relays with and without acks, a file
sink, a memory history and a store, the Redis bridge, the monitor) serves
exactly the metrics the table lists, with the table's types, labels and
help, and every name passes the naming check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from backplane import BackplaneService
from backplane.build import loadConfig
from backplane.metrics import STATES, labelValue
from backplane.monitor import MonitorService
from tests.helpers import connectClient, httpGet, metricSamples, portNumber, sample, waitUntil

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "the-token-of-the-metrics-test"

EVERYTHING = f"""
[backplane.TIME]
history = 100
[backplane.LOG]
store = "log.store"
shared = true
[backplane.UP]

[[clock]]
publish_to = "TIME"
interval = 0.5

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
subscribe_to = "TIME"
ids = true

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
publish_to = "LOG"
acks = true
auth = true

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
protocol = "websocket"
subscribe_to = "TIME"

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
protocol = "sse"
subscribe_to = "TIME"

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
protocol = "redis"
backplanes = ["TIME", "chat.*"]

[[listen]]
endpoint = "tcp:0:interface=127.0.0.1"
protocol = "websocket"
backplanes = ["room.*"]

[[listen]]
endpoint = "udp:0:interface=127.0.0.1"
publish_to = "LOG"
framing = "syslog"

[[connect]]
endpoint = "tcp:host=127.0.0.1:port=1"
subscribe_to = "LOG"
acks = true
spool = "spool"

[[connect]]
endpoint = "tcp:host=127.0.0.1:port=1"
publish_to = "UP"

[[file]]
subscribe_to = "LOG"
path = "log.data"

[redis]
url = "redis://127.0.0.1:1/0"

[monitor]
endpoint = "tcp:0:interface=127.0.0.1"
auth = true

[[user]]
name = "tester"
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
publish = ["*"]
subscribe = ["*"]
"""


@dataclass(frozen=True)
class Row:
    """
    One row of the table of metrics in docs/operations.md.
    """

    name: str
    type: str
    labels: frozenset[str]
    help: str


def documentedMetrics() -> dict[str, Row]:
    """
    The table under "### Every metric" in docs/operations.md, by name.
    """
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Every metric", 1)[1].split("\n#", 1)[0]
    rows: dict[str, Row] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        name, type, labels, help = cells
        assert name not in rows, f"{name} twice in the table"
        rows[name.strip("`")] = Row(name.strip("`"), type,
                                    frozenset(re.findall(r"`([a-z_]+)`", labels)), help)
    assert rows, "no table of metrics in docs/operations.md"
    return rows


@dataclass(frozen=True)
class Served:
    """
    One metric family as C{/metrics} serves it, parsed by prometheus_client.
    """

    name: str
    type: str
    labels: frozenset[str]
    help: str
    samples: int


def servedMetrics(text: str) -> dict[str, Served]:
    """
    The families of a text exposition, by the name of their samples
    (a counter's with its C{_total}).
    """
    served = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(key for s in family.samples for key in s.labels)
        served[name] = Served(name, family.type, labels, family.documentation,
                              len(family.samples))
    return served


def tableRow(family: Served) -> str:
    """
    The row of the table of docs/operations.md that documents C{family}.
    """
    kind = "info" if family.name.endswith("_info") else family.type
    labels = ", ".join(f"`{label}`" for label in sorted(family.labels)) or " "
    return f"| `{family.name}` | {kind} | {labels} | {family.help} |"


@pytest.fixture
def everything(tmp_path: Path) -> Generator[BackplaneService, None, None]:
    """
    The service of L{EVERYTHING}, running.
    """
    config = tmp_path / "everything.toml"
    config.write_text(EVERYTHING)
    service = loadConfig(config)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


@inlineCallbacks
def scrape(service: BackplaneService) -> Generator[Any, Any, str]:
    """
    What C{/metrics} serves now, once a refused request and a refused
    token have been counted (so that the families of refusals have samples).
    """
    port = portNumber(service.getServiceNamed("monitor").port)
    base = f"http://127.0.0.1:{port}"
    refused, _ = yield httpGet(f"{base}/metrics")
    assert refused.code == 401
    client = yield connectClient(portNumber(service.getServiceNamed("listen[2]").port))
    client.send(b"AUTH not-a-token")
    yield client.closed
    response, body = yield httpGet(f"{base}/metrics?token={TOKEN}")
    assert response.code == 200
    return str(body.decode())


@pytest_twisted.inlineCallbacks
def test_tableMatchesWhatIsServed(everything):
    """
    Every metric served is in the table, and every metric of the table is
    served, with the table's type, labels and help.
    """
    text = yield scrape(everything)
    served = servedMetrics(text)
    table = documentedMetrics()
    undocumented = [tableRow(served[name]) for name in served if name not in table]
    assert not undocumented, "served but not in docs/operations.md:\n" + "\n".join(undocumented)
    assert sorted(set(table) - set(served)) == [], "in docs/operations.md but not served"
    for name, row in table.items():
        family = served[name]
        expected = "gauge" if row.type == "info" else row.type
        assert family.type == expected, name
        assert family.samples > 0, name
        assert family.labels == row.labels, name
        if not name.startswith("process_"):
            # prometheus_client's own process metrics have its help.
            assert family.help == row.help, name


@pytest_twisted.inlineCallbacks
def test_namingConventions(everything):
    """
    What is served passes the naming check: every counter ends in
    C{_total}, byte metrics in C{_bytes}, durations in C{_seconds}, static
    facts are C{_info}; no label is empty or a Python boolean; every help
    is written for people.
    """
    text = yield scrape(everything)
    families = list(text_string_to_metric_families(text))
    assert len(families) > 50
    for family in families:
        samples = {s.name for s in family.samples}
        if family.type == "counter":
            assert samples <= {family.name + "_total", family.name + "_created"}, family.name
        else:
            assert not family.name.endswith("_total"), family.name
        for unit in ("bytes", "seconds"):
            if unit in family.name.split("_"):
                assert family.name.endswith("_" + unit), family.name
        assert family.documentation.endswith("."), family.name
        assert not family.documentation.startswith("Undocumented"), family.name
        # Not the generated "The pending of each file now." of old.
        assert not re.fullmatch(r"The [a-z_]+ (counter )?of each [a-z ]+?( now)?\.",
                                family.documentation), family.name
        for s in family.samples:
            for key, value in s.labels.items():
                assert value != "", (s.name, key)
                assert value not in ("True", "False", "None"), (s.name, key, value)
            if family.name.endswith("_state"):
                assert s.value in (0, 1), s
    names = {family.name for family in families}
    assert {"backplane_info", "backplane_listen_info", "backplane_monitor_info"} <= names
    assert "backplane_redis_last_outage_seconds" in names
    assert "backplane_file_pending_bytes" in names
    assert "backplane_redis_queued_bytes" in names


@pytest_twisted.inlineCallbacks
def test_portsHaveTheirProtocol(everything):
    """
    Every metric of a port is labelled with its protocol.
    """
    samples = metricSamples((yield scrape(everything)))
    for name, protocol in (("listen[1]", "lines"), ("listen[3]", "websocket"),
                           ("listen[4]", "sse")):
        assert sample(samples, "backplane_listen_clients", name=name, protocol=protocol) == 0
        assert sample(samples, "backplane_listen_state", name=name, protocol=protocol,
                      state="listening") == 1
        assert sample(samples, "backplane_listen_state", name=name, protocol=protocol,
                      state="stopped") == 0
    listenNames = [labels for (metric, labels) in samples if metric.startswith("backplane_listen_")]
    assert all(dict(labels).get("protocol") for labels in listenNames)


@pytest_twisted.inlineCallbacks
def test_infoLabels(everything):
    """
    A setting not set is left out of an C{_info} metric; booleans read
    C{true}.
    """
    samples = metricSamples((yield scrape(everything)))
    infos = {dict(labels)["name"]: dict(labels) for (metric, labels) in samples
             if metric == "backplane_connect_info"}
    assert infos["connect[1]"]["acks"] == "true"
    assert "publish_to" not in infos["connect[1]"]
    assert infos["connect[2]"]["publish_to"] == "UP"
    assert "subscribe_to" not in infos["connect[2]"]
    monitor = [dict(labels) for (metric, labels) in samples if metric == "backplane_monitor_info"]
    assert monitor[0]["tail"] == "true"


def test_stateSeriesStay() -> None:
    """
    A source's state metric keeps a series for every state it can be in:
    when the state changes, the old one reads 0 rather than vanishing.
    """
    from tests.test_stats import FakeRelay

    class Relay(FakeRelay):
        state = "connected"

        def report(self) -> dict[str, object]:
            return {**super().report(), "state": self.state}

    service = BackplaneService()
    relay = Relay("connect[1]")
    relay.setServiceParent(service)
    monitor = MonitorService(service, endpoints.serverFromString(reactor, "tcp:0"),
                             description="tcp:0", clock=Clock())

    def states() -> dict[str, float]:
        samples = metricSamples(generate_latest(monitor.registry).decode())
        return {dict(labels)["state"]: value for (metric, labels), value in samples.items()
                if metric == "backplane_connect_state"}

    assert states() == {"connecting": 0, "connected": 1, "waiting": 0, "stopped": 0}
    relay.state = "waiting"
    assert states() == {"connecting": 0, "connected": 0, "waiting": 1, "stopped": 0}
    relay.state = "sulking"  # a state the catalogue does not know still shows
    assert states() == {"connecting": 0, "connected": 0, "waiting": 0, "stopped": 0,
                        "sulking": 1}
    assert set(STATES["connect"]) == {"connecting", "connected", "waiting", "stopped"}


def test_labelValue() -> None:
    assert labelValue(True) == "true"
    assert labelValue(False) == "false"
    assert labelValue(None) is None
    assert labelValue("") is None
    assert labelValue(0.5) == "0.5"
    assert labelValue("LOG") == "LOG"


@pytest_twisted.inlineCallbacks
def test_stateChangesOverTheWire(tmp_path):
    """
    A file sink that cannot write says C{failing} (and no longer
    C{writing}, which reads 0) in what is served.
    """
    config = tmp_path / "file.toml"
    config.write_text('[backplane.A]\n[[file]]\nsubscribe_to = "A"\npath = "no/such/dir/x"\n'
                      '[monitor]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
    service = loadConfig(config)
    service.startService()
    try:
        service.get("A").publish(b"x")
        sink = service.getServiceNamed("file[1]")
        yield waitUntil(lambda: sink.report()["state"] == "failing", what="failing")
        port = portNumber(service.getServiceNamed("monitor").port)
        _, body = yield httpGet(f"http://127.0.0.1:{port}/metrics")
        samples = metricSamples(body.decode())
        assert sample(samples, "backplane_file_state", name="file[1]", state="failing") == 1
        assert sample(samples, "backplane_file_state", name="file[1]", state="writing") == 0
        assert sample(samples, "backplane_file_pending_bytes", name="file[1]") == 2
    finally:
        yield service.stopService()
