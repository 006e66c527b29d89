"""
The twistd plugin: Options and makeService directly, then end-to-end with a
real C{twistd -n backplane} process.
"""

import re
import signal
import socket
import time

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from backplane import tap
from backplane.config import DEFAULT_CONFIG
from tests.helpers import freePort
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
    events = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(events.append)
    try:
        assert tap.raiseFileLimit(config) == 4096
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert calls == [(4096, 4096)]
    warnings = [e for e in events if "open files limit" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["needed"] == 5000 + tap.FD_MARGIN
