"""
The twistd plugin: Options and makeService directly, then end-to-end with a
real C{twistd -n backplane} process.
"""

import json
import re
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins

from backplane import tap
from backplane.config import DEFAULT_CONFIG
from tests.certs import Certificates
from tests.helpers import freePort, metricSamples, sample
from tests.twistd import Twistd, readLines, wsConnect, wsReceive, wsSend

ASCTIME = re.compile(rb"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$")


def test_pluginIsFound():
    plugins = {plugin.tapname: plugin for plugin in getPlugins(IServiceMaker)}
    assert "backplane" in plugins
    assert plugins["backplane"].options is tap.Options
    assert plugins["backplane"].makeService is tap.makeService


def test_optionsDefault():
    options = tap.Options()
    options.parseOptions([])
    assert options.config.path == "<embedded default>"
    assert list(options.config.backplanes) == ["TIME"]


def test_optionsConfig(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[backplane.A]\n[[listen]]\nendpoint = "tcp:0"\nsubscribe_to = "A"\n')
    options = tap.Options()
    options.parseOptions(["-c", str(path)])
    assert options.config.path == str(path)
    service = tap.makeService(options)
    assert isinstance(service, MultiService)
    (backplaneService,) = list(service)
    assert backplaneService.names() == ["A"]


def test_optionsBadConfigExits(tmp_path, capsys):
    options = tap.Options()
    with pytest.raises(SystemExit) as exit:
        options.parseOptions(["--config", str(tmp_path / "missing.toml")])
    assert exit.value.code == 1
    assert capsys.readouterr().err == f"backplane: {tmp_path / 'missing.toml'}: no such file\n"


def test_optionsCheck(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[backplane.A]\n')
    with pytest.raises(SystemExit) as exit:
        tap.Options().parseOptions(["--config", str(path), "--check"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_helpDocumentsEveryOption():
    help = str(tap.Options())
    for option in ("--config", "--check", "-c"):
        assert option in help


def test_helpIsSelfContained(tmp_path):
    """
    C{twistd backplane --help} says what a config holds and how to check
    one without docs at hand, and the docs/configuration.md it points to
    is in the source distribution.
    """
    import subprocess
    import sys
    import tarfile

    from tests.twistd import ROOT, TWISTD

    help = subprocess.run([*TWISTD, "backplane", "--help"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    text = " ".join(help.split())
    for table in ("[backplane.NAME]", "[[listen]]", "[[clock]]", "[[connect]]", "[[file]]",
                  "[redis]", "[monitor]", "[[user]]", "[auth]"):
        assert table in text, table
    assert "python -m backplane check FILE" in text
    assert "docs/configuration.md in backplane's source distribution" in text
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                    "sdist", "-d", str(tmp_path)], cwd=ROOT, check=True, timeout=120,
                   capture_output=True)
    (sdist,) = tmp_path.glob("backplane-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"docs/configuration.md", "docs/cli.md", "README.md"} <= names


# End-to-end: a real twistd process.


def subscribeTo(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_embeddedDefault(tmp_path):
    """
    twistd -n backplane with no config serves the time on port 1500.  If
    something else holds 1500 here, the same embedded config is run on a
    free port instead, so the test still runs.
    """
    port = 1500
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        twistd = Twistd(tmp_path)
    else:
        port = freePort()
        twistd = Twistd(tmp_path, config=DEFAULT_CONFIG.replace("tcp:1500:", f"tcp:{port}:"))
    twistd.start()
    try:
        twistd.waitForPort(port)
        with subscribeTo(port) as sock:
            start = time.monotonic()
            lines = readLines(sock, 2, timeout=10)
            elapsed = time.monotonic() - start
        for line in lines:
            assert ASCTIME.match(line), line
        assert 0.5 < elapsed < 5, "one line a second"
        twistd.stop()
    finally:
        twistd.kill()


def test_configClockInterval(tmp_path):
    port = freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.TIME]
[[clock]]
publish_to = "TIME"
interval = 0.2
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
subscribe_to = "TIME"
""").start()
    try:
        twistd.waitForPort(port)
        with subscribeTo(port) as sock:
            start = time.monotonic()
            lines = readLines(sock, 6, timeout=10)
            elapsed = time.monotonic() - start
        assert all(ASCTIME.match(line) for line in lines)
        assert elapsed < 3, f"6 lines at 0.2s took {elapsed:.1f}s"
        twistd.stop(signal.SIGINT)
    finally:
        twistd.kill()


def test_publishAndSubscribePorts(tmp_path):
    """
    A publish port and a subscribe port on one backplane, over real sockets
    to a real process: what one client sends, the others receive.
    """
    pubPort, subPort = freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.NEWS]
[[listen]]
endpoint = "tcp:{pubPort}:interface=127.0.0.1"
publish_to = "NEWS"
[[listen]]
endpoint = "tcp:{subPort}:interface=127.0.0.1"
subscribe_to = "NEWS"
""").start()
    try:
        twistd.waitForPort(pubPort)
        twistd.waitForPort(subPort)
        readers = [subscribeTo(subPort) for _ in range(3)]
        time.sleep(0.3)  # let the server attach them before publishing
        with socket.create_connection(("127.0.0.1", pubPort)) as writer:
            writer.sendall(b"hello\r\nworld\n\nhalf")
        for reader in readers:
            assert readLines(reader, 3) == [b"hello", b"world", b""]
            reader.close()
        twistd.stop()
    finally:
        twistd.kill()


def test_websocketPorts(tmp_path):
    """
    protocol = "websocket" ports of a real process: a page subscribing to
    the time gets it one message a line; what a WebSocket client sends
    reaches a line subscriber; on shutdown the page is told the server is
    going away (1001).
    """
    timePort, newsPort, linesPort = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.TIME]
[backplane.NEWS]
[[clock]]
publish_to = "TIME"
interval = 0.2
[[listen]]
endpoint = "tcp:{timePort}:interface=127.0.0.1"
protocol = "websocket"
subscribe_to = "TIME"
[[listen]]
endpoint = "tcp:{newsPort}:interface=127.0.0.1"
protocol = "websocket"
publish_to = "NEWS"
[[listen]]
endpoint = "tcp:{linesPort}:interface=127.0.0.1"
subscribe_to = "NEWS"
""").start()
    try:
        for port in (timePort, newsPort, linesPort):
            twistd.waitForPort(port)
        page = wsConnect(timePort)
        for _ in range(2):
            opcode, payload = wsReceive(page)
            assert opcode == 1, "a text message"
            assert ASCTIME.match(payload), payload
        reader = subscribeTo(linesPort)
        time.sleep(0.3)  # let the server attach it before publishing
        publisher = wsConnect(newsPort, "/news")
        wsSend(publisher, b"hello\r\nworld")
        assert readLines(reader, 2) == [b"hello", b"world"]
        publisher.close()
        twistd.sendSignal(signal.SIGTERM)
        while (frame := wsReceive(page))[0] != 8:
            assert frame[0] == 1
        assert frame[1][:2] == b"\x03\xe9", "1001: going away"
        wsSend(page, frame[1][:2], opcode=8)  # the close handshake's reply
        twistd.stop()
        page.close()
        reader.close()
    finally:
        twistd.kill()


def test_checkGood(tmp_path):
    status, output = Twistd(tmp_path, "--check", config='[backplane.A]\n').run()
    assert status == 0
    assert output.strip().endswith(": OK")


def test_checkBad(tmp_path):
    status, output = Twistd(tmp_path, "--check", config='[backplane.A]\nretain = "x"\n').run()
    assert status == 1
    assert "backplane.A.retain: must be an integer" in output
    assert "Traceback" not in output


BAD_CONFIGS = {
    "syntax": ('[backplane.A\n', ["not valid TOML", "line 1"]),
    "unknown table": ('[[lisen]]\n', ["unknown table [lisen]", "'listen'"]),
    "unknown key": ('[backplane.A]\n[[listen]]\nendpoint = "tcp:0"\nsubscribe_to = "A"\n'
                    'max_client = 3\n', ["listen[1]: unknown key 'max_client'", "'max_clients'"]),
    "wrong type": ('[backplane.A]\n[[clock]]\npublish_to = "A"\ninterval = "fast"\n',
                   ["clock[1].interval: must be a number"]),
    "undeclared": ('[backplane.A]\n[[listen]]\nendpoint = "tcp:0"\nsubscribe_to = "B"\n',
                   ["listen[1].subscribe_to: backplane 'B' is not declared"]),
    "no direction": ('[backplane.A]\n[[listen]]\nendpoint = "tcp:0"\n',
                     ["listen[1]: needs publish_to, subscribe_to, or both"]),
    "endpoint": ('[backplane.A]\n[[listen]]\nendpoint = "tcp:port"\nsubscribe_to = "A"\n',
                 ["listen[1].endpoint: cannot use endpoint 'tcp:port'"]),
    "monitor max_clients": ('[backplane.A]\n[monitor]\nendpoint = "tcp:0"\nmax_clients = 0\n',
                            ["monitor.max_clients: must be 1 or more, not 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_badConfig(tmp_path, case):
    text, fragments = BAD_CONFIGS[case]
    twistd = Twistd(tmp_path, config=text)
    status, output = twistd.run()
    assert status != 0
    for fragment in fragments:
        assert fragment in output
    assert str(tmp_path / "backplane.toml") in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_missingConfigFile(tmp_path):
    status, output = Twistd(tmp_path, "--config", str(tmp_path / "nope.toml")).run()
    assert status == 1
    assert output.strip() == f"backplane: {tmp_path / 'nope.toml'}: no such file"


def test_portInUse(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, output = Twistd(tmp_path, config=f"""
[backplane.A]
[[listen]]
endpoint = "tcp:{freePort()}:interface=127.0.0.1"
subscribe_to = "A"
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
subscribe_to = "A"
""").run()
    assert status == 1
    assert f"listen[2].endpoint: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "in use" in output
    assert "Traceback" not in output


def test_raiseFileLimit(monkeypatch):
    import resource

    from backplane.config import parse_config

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    config = parse_config({"backplane": {"A": {}}, "listen": [
        {"endpoint": "tcp:0", "subscribe_to": "A", "max_clients": 5000}]})
    from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
    from zope.interface import provider

    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        assert tap.raiseFileLimit(config) == 4096
    finally:
        globalLogPublisher.removeObserver(observe)
    assert calls == [(4096, 4096)]
    warnings = [e for e in events if "open files limit" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["needed"] == 5000 + tap.FD_MARGIN


def test_raiseFileLimitCountsTheMonitor(monkeypatch):
    """
    The monitor's connections count: C{max_clients}, and as many refused
    ones being closed.
    """
    import resource

    from backplane.config import parse_config

    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, 4096))
    config = parse_config({"backplane": {"A": {}}, "listen": [
        {"endpoint": "tcp:0", "subscribe_to": "A", "max_clients": 4000}],
        "monitor": {"endpoint": "tcp:0", "max_clients": 100}})
    from twisted.logger import capturedLogs

    with capturedLogs() as events:
        tap.raiseFileLimit(config)
    warnings = [e for e in events if "open files limit" in e.get("log_format", "")]
    assert [e["needed"] for e in warnings] == [4000 + 200 + tap.FD_MARGIN]


def test_makeServiceConfigError(tmp_path, capsys):
    """
    A mistake found only when the service is built (here a client CA file
    gone since the config was read) is one line and exit status 1 too.
    """
    certs = Certificates.make(tmp_path)
    path = tmp_path / "c.toml"
    path.write_text(f'[backplane.A]\n[[listen]]\nendpoint = "{certs.sslEndpoint()}"\n'
                    f'publish_to = "A"\ntls_client_ca = "{certs.ca.path}"\n')
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    certs.ca.path.unlink()
    with pytest.raises(SystemExit) as exit:
        tap.makeService(options)
    assert exit.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"backplane: {path}: listen[1].tls_client_ca: cannot use")
    assert "No such file or directory" in error


# End-to-end: operations.


def test_startLogsOneLinePerPort(tmp_path):
    """
    The log of a start has the service's own line for each port (its entry
    and address), and not Twisted's "BackplaneFactory starting on 1500" or
    "Starting factory" beside it.
    """
    ports = [freePort() for _ in range(3)]
    twistd = Twistd(tmp_path, config=f"""
[backplane.NEWS]
[[listen]]
endpoint = "tcp:{ports[0]}:interface=127.0.0.1"
publish_to = "NEWS"
[[listen]]
endpoint = "tcp:{ports[1]}:interface=127.0.0.1"
subscribe_to = "NEWS"
protocol = "websocket"
[monitor]
endpoint = "tcp:{ports[2]}:interface=127.0.0.1"
""").start()
    try:
        twistd.waitForLog(f"listen[2] listening on 127.0.0.1:{ports[1]}")
        twistd.stop()
    finally:
        twistd.kill()
    log = twistd.text()
    assert f"listen[1] listening on 127.0.0.1:{ports[0]}" in log
    assert f"monitor listening on 127.0.0.1:{ports[2]}" in log
    for port in ports:
        mentions = [line for line in log.splitlines()
                    if f":{port}" in line or f" {port}" in line]
        assert len(mentions) <= 2, mentions  # listening on ...; (TCP Port N Closed)
    assert "starting on" not in log
    assert "Starting factory" not in log


def httpGetJSON(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_monitorEndToEnd(tmp_path):
    """
    A real twistd with a [monitor] table: /healthz, /stats and /metrics are
    served, and reflect the lines flowing through it.
    """
    pubPort, subPort, monitorPort = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.NEWS]
[[listen]]
endpoint = "tcp:{pubPort}:interface=127.0.0.1"
publish_to = "NEWS"
[[listen]]
endpoint = "tcp:{subPort}:interface=127.0.0.1"
subscribe_to = "NEWS"
[monitor]
endpoint = "tcp:{monitorPort}:interface=127.0.0.1"
allow = ["127.0.0.1"]
""").start()
    base = f"http://127.0.0.1:{monitorPort}"
    try:
        twistd.waitForPort(monitorPort)
        twistd.waitForPort(subPort)
        with urllib.request.urlopen(base + "/healthz", timeout=10) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        before = httpGetJSON(base + "/stats")
        assert before["backplanes"]["NEWS"]["messages_in"] == 0
        assert twistd.process is not None
        assert before["server"]["pid"] == twistd.process.pid

        readers = [subscribeTo(subPort) for _ in range(2)]
        deadline = time.monotonic() + 10
        while httpGetJSON(base + "/stats")["backplanes"]["NEWS"]["subscribers"] < 2:
            assert time.monotonic() < deadline, "subscribers never attached"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", pubPort)) as writer:
            writer.sendall(b"".join(b"line %d\n" % i for i in range(50)))
            for reader in readers:
                assert len(readLines(reader, 50)) == 50
            stats = httpGetJSON(base + "/stats")
            news = stats["backplanes"]["NEWS"]
            assert (news["messages_in"], news["deliveries"]) == (50, 100)
            assert (news["subscribers"], news["publishers"]) == (2, 1)
            ports = {s["name"]: s for s in stats["services"]}
            assert ports["listen[1]"]["counters"]["messages_in"] == 50
            assert ports["listen[2]"]["gauges"]["clients"] == 2
            assert stats["server"]["rss_bytes"] > 0

            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                samples = metricSamples(response.read().decode())
            assert sample(samples, "backplane_messages_in_total", backplane="NEWS") == 50
            assert sample(samples, "backplane_deliveries_total", backplane="NEWS") == 100
            assert sample(samples, "backplane_listen_clients", name="listen[2]",
                          protocol="lines") == 2
            assert sample(samples, "backplane_listen_accepted_total", name="listen[1]",
                          protocol="lines") == 1
        for reader in readers:
            reader.close()
        twistd.stop()
    finally:
        twistd.kill()


def test_mutualTLSEndToEnd(tmp_path):
    """
    A publish port requiring client certificates, from a config file: a
    client without one is refused and nothing it sends is published; a
    client with one publishes.
    """
    certs = Certificates.make(tmp_path)
    pubPort, subPort = freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.NEWS]
[[listen]]
endpoint = "{certs.sslEndpoint(pubPort)}"
publish_to = "NEWS"
tls_client_ca = "{certs.ca.path.name}"
[[listen]]
endpoint = "tcp:{subPort}:interface=127.0.0.1"
subscribe_to = "NEWS"
""").start()
    try:
        twistd.waitForPort(pubPort)
        twistd.waitForPort(subPort)
        reader = subscribeTo(subPort)
        time.sleep(0.3)  # let the server attach it

        anonymous = ssl.create_default_context(cafile=str(certs.ca.path))
        with socket.create_connection(("127.0.0.1", pubPort), timeout=10) as raw:
            with anonymous.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"sneaky\n")
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    if tls.recv(1) == b"":  # closed without a TLS alert
                        raise ConnectionError("closed")

        member = ssl.create_default_context(cafile=str(certs.ca.path))
        member.load_cert_chain(str(certs.client.certificate), str(certs.client.key))
        with socket.create_connection(("127.0.0.1", pubPort), timeout=10) as raw:
            with member.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"hello\n")
                assert readLines(reader, 1) == [b"hello"]
        reader.close()
        twistd.stop()
    finally:
        twistd.kill()


@pytest.mark.parametrize("key, fragments", [
    ("endpoint", ["listen[1].endpoint: cannot use endpoint 'ssl:",
                  "No such file or directory: '/nonexistent/server.key'"]),
    ("tls_client_ca", ["listen[1].tls_client_ca: cannot use '/nonexistent/ca.pem'",
                       "No such file or directory"]),
])
def test_checkBadCertificatePath(tmp_path, key, fragments):
    certs = Certificates.make(tmp_path)
    endpoint = certs.sslEndpoint(0)
    extra = ""
    if key == "endpoint":
        endpoint = endpoint.replace(str(certs.server.key), "/nonexistent/server.key")
    else:
        extra = 'tls_client_ca = "/nonexistent/ca.pem"\n'
    config = f'[backplane.A]\n[[listen]]\nendpoint = "{endpoint}"\npublish_to = "A"\n{extra}'
    status, output = Twistd(tmp_path, "--check", config=config).run()
    assert status == 1
    for fragment in fragments:
        assert fragment in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_jsonLogs(tmp_path):
    """
    twistd --logger backplane.logs.jsonStdout: every line of the log is a
    JSON object with time, level, namespace, message and the event's fields.
    """
    port = freePort()
    twistd = Twistd(tmp_path, twistdArgs=("--logger", "backplane.logs.jsonStdout"), config=f"""
[backplane.A]
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
publish_to = "A"
max_line_length = 10
""").start()
    try:
        twistd.waitForPort(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"x" * 20 + b"\n")
            client.recv(1)
        twistd.waitForLog("max_line_length")
        twistd.stop()
    finally:
        twistd.kill()
    records = [json.loads(line) for line in twistd.text().splitlines()]
    for record in records:
        assert {"time", "level", "namespace", "message"} <= set(record), record
        assert record["time"].endswith("Z")
    listening = [r for r in records if r["namespace"] == "backplane.ports.ListenService"]
    assert listening[0]["message"] == f"listen[1] listening on 127.0.0.1:{port}"
    assert listening[0]["where"] == "listen[1]"
    (overlong,) = [r for r in records if "max_line_length" in r["message"]]
    assert overlong["level"] == "warn"
    assert overlong["limit"] == 10
    assert overlong["peer"].startswith("127.0.0.1:")
    assert records[-1]["message"] == "Server Shut Down."


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_signalReopensFileSinks(tmp_path, sig):
    """
    logrotate's way, under load: the file is moved away, then SIGHUP (or
    SIGUSR1, with twistd logging to standard output): the process goes on,
    writes on to a new file at the same path, and loses no line.
    """
    port = freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.LOG]
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
publish_to = "LOG"
[[file]]
subscribe_to = "LOG"
path = "log.txt"
flush_interval = 0.05
""").start()
    try:
        twistd.waitForPort(port)
        with socket.create_connection(("127.0.0.1", port)) as publisher:
            n = 0
            for round in range(3):
                for _ in range(20):
                    publisher.sendall(b"".join(b"line %d\n" % (n + i) for i in range(100)))
                    n += 100
                    time.sleep(0.005)
                (tmp_path / "log.txt").rename(tmp_path / f"log.txt.{round}")
                twistd.sendSignal(sig)
                twistd.signalled = None
                twistd.waitForLog(f"{signal.Signals(sig).name}: reopening 1 file sinks")
                assert twistd.process is not None and twistd.process.poll() is None
            publisher.sendall(b"the end\n")
        time.sleep(0.3)
        twistd.stop()
    finally:
        twistd.kill()
    written = b"".join((tmp_path / f"log.txt.{i}").read_bytes() for i in range(3))
    written += (tmp_path / "log.txt").read_bytes()
    assert written.split(b"\n")[:-1] == [b"line %d" % i for i in range(n)] + [b"the end"]
    assert all((tmp_path / f"log.txt.{i}").stat().st_size > 0 for i in range(3))


LISTEN = '[backplane.A]\n[[listen]]\nsubscribe_to = "A"\nendpoint = '
HOSTILE_CONFIGS = {
    "nested arrays": ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "a huge port": (LISTEN + '"tcp:99999999"\n', "the port must be a number from 0 to 65535"),
    "a bad interface": (LISTEN + '"tcp:1500:interface=999.1.1.1"\n',
                        "interface must be an IP address"),
    "a huge backlog": (LISTEN + '"tcp:1500:backlog=99999999"\n', "backlog must be a number"),
    "a key file that never ends": (LISTEN + '"ssl:1500:privateKey=/dev/zero:certKey=/dev/zero"\n',
                                   "privateKey '/dev/zero': not a regular file"),
    "a tiny interval": ('[backplane.A]\n[[clock]]\npublish_to = "A"\ninterval = 1e-300\n',
                        "clock[1].interval: must be 0.001 or more"),
    "a huge retain": ('[backplane.A]\nretain = 9223372036854775807\n',
                      "backplane.A.retain: must be 1000000 or less"),
    "a huge history": ('[backplane.A]\nhistory = 9223372036854775807\n',
                       "backplane.A.history: must be 100000000 or less"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_checkHostile(tmp_path, case):
    """
    --check is as strict as start-up, and quick: each hostile file is one
    line naming what is wrong, in seconds, without a traceback.
    """
    text, fragment = HOSTILE_CONFIGS[case]
    started = time.monotonic()
    status, output = Twistd(tmp_path, "--check", config=text).run(timeout=20)
    assert status == 1, output
    assert fragment in output, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output[:2000]
    assert time.monotonic() - started < 10


def test_configFileBounded(tmp_path):
    """
    A config file that is not a regular file (a device, a pipe) or is
    bigger than 1 MiB is refused without being read to its end.
    """
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    for path, fragment in ((big, "bigger than"), (Path("/dev/zero"), "not a regular file")):
        status, output = Twistd(tmp_path, "--check", "--config", str(path)).run(timeout=20)
        assert status == 1 and fragment in output, output


def test_composeExampleSaysWhatItServes(tmp_path):
    """
    C{python docs/examples/compose.py} prints what it serves and how to
    try it, and serves that.  (Run from a copy on free ports, so that a
    service on 1500 here does not get in the way.)
    """
    import subprocess
    import sys

    from tests.twistd import ROOT

    sub, pub = freePort(), freePort()
    script = (ROOT / "docs" / "examples" / "compose.py").read_text()
    script = script.replace("1500", str(sub)).replace("1501", str(pub))
    (tmp_path / "compose.py").write_text(script)
    process = subprocess.Popen([sys.executable, str(tmp_path / "compose.py")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("backplane TIME: the time on 127.0.0.1:"), line
        assert f"127.0.0.1:{sub} (try: nc localhost {sub})" in line
        assert f"127.0.0.1:{pub}" in line
        with subscribeTo(sub) as sock:
            assert ASCTIME.match(readLines(sock, 1, timeout=10)[0])
    finally:
        process.terminate()
        process.wait(10)
