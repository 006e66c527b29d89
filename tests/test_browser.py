"""
The status page end to end: a real C{twistd -n backplane} with a
C{[monitor]}, and the page in a real headless Chromium driven by Selenium
through Debian's chromedriver.

Outside CI the test is skipped when there is no Chromium, chromedriver or
Selenium (C{apt-get install chromium chromium-driver}; Selenium comes with
C{pip install '.[test]'}); in CI a skip is a failure (tests/conftest.py).
C{CHROMIUM} and C{CHROMEDRIVER} name other binaries.  C{STATUS_SCREENSHOT}
names a file to copy the screenshot to (docs/status-page.png is made so).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import freePort
from tests.twistd import Twistd

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

# As the project runs Chromium in tests: no sandbox (root in a container), no
# network of its own (updates, sync, QUIC), a fresh profile.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def chromium(tmp_path):
    """
    A headless Chromium under Selenium (skipped if there is none), with the
    browser's console log kept, quit after the test.
    """
    yield from _chromium(tmp_path)


@pytest.fixture
def chromiumTrustingEveryCertificate(tmp_path):
    """
    L{chromium}, taking any server certificate (the tests' own CA is not
    one it knows), so that a page can reach C{ssl:} ports.
    """
    yield from _chromium(tmp_path, ["--ignore-certificate-errors"])


def _chromium(tmp_path, extra: list[str] | None = None):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("Selenium is not installed: pip install '.[test]'")
    for path, package, variable in ((CHROMIUM, "chromium", "CHROMIUM"),
                                    (CHROMEDRIVER, "chromium-driver", "CHROMEDRIVER")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"no {path}: apt-get install {package}, or set {variable} to its path")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, *(extra or ()), f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1200,1300"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def pageOrigin(tmp_path):
    """
    A maker of web servers on 127.0.0.1 of one page, C{/page.html}, each a
    web origin of its own (its port): it starts one and returns its origin,
    C{http://127.0.0.1:PORT}.  They are shut down after the test.
    """
    import functools
    import http.server
    import threading

    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "page.html").write_text("<!doctype html><title>page</title>")
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve() -> str:
        pages = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler,
                                                directory=str(folder)))
        threading.Thread(target=pages.serve_forever, daemon=True).start()
        servers.append(pages)
        return f"http://127.0.0.1:{pages.server_address[1]}"

    yield serve
    for pages in servers:
        pages.shutdown()


def waitFor(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    """
    Poll C{check} until it returns something true, and return that.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # the page may be changing under us
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def consoleErrors(driver) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_statusPage(tmp_path, chromium):
    """
    The page of a real service shows its backplanes (with a rate), its
    services with their state, and the live tail of a backplane chosen from
    the list shows the lines published meanwhile, as text; no console
    errors, and it fits a phone's screen.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    newsPort, timePort, monitorPort = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.TIME]
retain = 1
[backplane.NEWS]
history = 100
[[clock]]
publish_to = "TIME"
interval = 0.25
[[listen]]
endpoint = "tcp:{newsPort}:interface=127.0.0.1"
publish_to = "NEWS"
[[listen]]
endpoint = "tcp:{timePort}:interface=127.0.0.1"
subscribe_to = "TIME"
[[file]]
subscribe_to = "NEWS"
path = "news.log"
[monitor]
endpoint = "tcp:{monitorPort}:interface=127.0.0.1"
allow = ["127.0.0.1"]
""").start()
    base = f"http://127.0.0.1:{monitorPort}/"

    def stats() -> dict[str, Any]:
        with urllib.request.urlopen(base + "stats", timeout=10) as response:
            document: dict[str, Any] = json.load(response)
            return document

    try:
        twistd.waitForPort(monitorPort)
        twistd.waitForPort(newsPort)
        driver = chromium
        driver.get(base)
        assert driver.title == "backplane status"

        names = waitFor("the backplanes", lambda: [
            h.text for h in driver.find_elements(By.CSS_SELECTOR, "#backplanes .card h3")])
        assert names == ["NEWS", "TIME"]
        rows = waitFor("the services", lambda: {
            row.get_attribute("data-name"): row.find_element(By.CSS_SELECTOR, ".state").text
            for row in driver.find_elements(By.CSS_SELECTOR, "#services tbody tr")})
        assert rows == {"monitor": "listening", "file[1]": "writing", "clock[1]": "running",
                        "listen[1]": "listening", "listen[2]": "listening"}
        assert "backplane " in driver.find_element(By.ID, "server").text

        # The clock's rate: the difference of two readings of /stats.
        timeCard = driver.find_element(By.CSS_SELECTOR, '#backplanes .card[data-name="TIME"]')
        rate = waitFor("TIME's rate", lambda: float(
            timeCard.find_element(By.CSS_SELECTOR, ".rate-value").text or "0"))
        assert 1 <= rate <= 8, rate
        assert timeCard.find_element(By.CSS_SELECTOR, ".spark-line").get_attribute("d")

        # The live tail, chosen from the list: TIME's retained line comes at
        # once, then live ones.
        choices = Select(driver.find_element(By.ID, "tail-backplane"))
        assert [o.get_attribute("value") for o in choices.options] == ["", "NEWS", "TIME"]
        choices.select_by_value("TIME")
        waitFor("TIME's lines", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#tail li")) >= 2)
        assert driver.execute_script("return location.hash") == "#tail=TIME"

        # Then NEWS: the lines published while the page shows it.
        choices.select_by_value("NEWS")
        waitFor("the tail to subscribe", lambda: stats()["backplanes"]["NEWS"]["subscribers"] == 2)
        waitFor("the TIME tail to close",
                lambda: stats()["backplanes"]["TIME"]["subscribers"] == 0)
        waitFor("the tail to open",
                lambda: "live" in driver.find_element(By.ID, "tail-status").text)
        published = [b"hello from the test", b"caf\xc3\xa9 and \xff not UTF-8",
                     b"<script>alert(1)</script><b>not bold</b>", b"", b"\x1b[1mbold\x1b[0m"]
        with socket.create_connection(("127.0.0.1", newsPort)) as publisher:
            publisher.sendall(b"".join(line + b"\n" for line in published))
            shown = waitFor("the lines in the tail", lambda: (
                texts := [li.text for li in driver.find_elements(
                    By.CSS_SELECTOR, "#tail li .text")]) and len(texts) == 5 and texts)
        assert shown == ["hello from the test", "café and \ufffd not UTF-8",
                         "<script>alert(1)</script><b>not bold</b>", "", "^[[1mbold^[[0m"]
        assert driver.find_elements(By.CSS_SELECTOR, "#tail script, #tail b") == []
        assert "5 lines received" in driver.find_element(By.ID, "tail-status").text

        # NEWS keeps a history: its card says what it keeps.
        epoch = stats()["backplanes"]["NEWS"]["history"]["epoch"]
        newsCard = driver.find_element(By.CSS_SELECTOR, '#backplanes .card[data-name="NEWS"]')
        historyLine = waitFor("NEWS's history", lambda: (
            text := newsCard.find_element(By.CSS_SELECTOR, ".history").text) and "5 kept" in text
            and text)
        assert historyLine.startswith(f"history {epoch}: ids 1\u20135, 5 kept"), historyLine
        assert not timeCard.find_element(By.CSS_SELECTOR, ".history").is_displayed()

        time.sleep(2.5)  # one more reading of /stats, drawn
        driver.save_screenshot(str(tmp_path / "status.png"))
        if os.environ.get("STATUS_SCREENSHOT"):
            shutil.copyfile(tmp_path / "status.png", os.environ["STATUS_SCREENSHOT"])

        # A phone's screen: nothing wider than it.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        driver.refresh()
        waitFor("the page on a phone", lambda: driver.find_elements(By.CSS_SELECTOR, ".card"))
        waitFor("the tail named in the address (#tail=NEWS) to open again",
                lambda: "NEWS: live" in driver.find_element(By.ID, "tail-status").text)
        widths = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
        driver.save_screenshot(str(tmp_path / "status-phone.png"))

        assert consoleErrors(driver) == []
        driver.get("about:blank")  # closes the page's tail
        twistd.stop()
    finally:
        twistd.kill()
    assert Path(tmp_path / "status.png").stat().st_size > 0


def test_statusPageWithoutTail(tmp_path, chromium):
    """
    With tail = false the page shows the statistics, and no tail: no list,
    no Tail buttons, even when the address asks for one; no console errors.
    """
    from selenium.webdriver.common.by import By

    monitorPort = freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.TIME]
[[clock]]
publish_to = "TIME"
[monitor]
endpoint = "tcp:{monitorPort}:interface=127.0.0.1"
tail = false
""").start()
    try:
        twistd.waitForPort(monitorPort)
        driver = chromium
        driver.get(f"http://127.0.0.1:{monitorPort}/#tail=TIME")
        waitFor("the statement that the tail is off",
                lambda: "tail is off" in driver.find_element(By.ID, "tail-status").text)
        assert [h.text for h in driver.find_elements(By.CSS_SELECTOR, ".card h3")] == ["TIME"]
        assert not driver.find_element(By.ID, "tail-controls").is_displayed()
        assert not driver.find_element(By.CSS_SELECTOR, ".tail-button").is_displayed()
        assert consoleErrors(driver) == []
        driver.get("about:blank")
        twistd.stop()
    finally:
        twistd.kill()


def test_eventSourceResumes(tmp_path, chromium, pageOrigin):
    """
    A browser's own EventSource, reading an SSE port of a backplane with a
    store: when the server is killed (kill -9) and started again, it
    reconnects by itself with Last-Event-ID, and gets every line published
    while it was away, once, in order.
    """
    from tests.test_resume_twistd import Server

    origin = pageOrigin()
    # The page's origin may read the stream (SPEC section 11).
    server = Server(tmp_path, 'store = "store"', sseOrigins=[origin]).start()
    try:
        # A page of another origin (another port) than the stream's.
        chromium.get(f"{origin}/page.html")
        chromium.execute_script(f"""
            window.got = []; window.opened = 0;
            const source = new EventSource("http://127.0.0.1:{server.sse}/");
            source.onopen = () => window.opened += 1;
            source.onmessage = (e) => window.got.push([e.lastEventId, e.data]);
            source.addEventListener("gap", (e) => window.got.push(["gap", e.data]));
        """)
        waitFor("the stream to open", lambda: chromium.execute_script("return window.opened"))
        time.sleep(0.3)
        server.publish([b"m%d" % i for i in range(1, 11)])
        waitFor("10 events", lambda: len(chromium.execute_script("return window.got")) >= 10)
        server.stop(__import__("signal").SIGKILL)
        server.start()
        server.publish([b"m%d" % i for i in range(11, 21)])
        got = waitFor("20 events after the reconnection",
                      lambda: (lambda g: g if len(g) >= 20 else None)(
                          chromium.execute_script("return window.got")), timeout=30)
        time.sleep(0.5)
        got = chromium.execute_script("return window.got")
        assert [data for _, data in got] == [f"m{i}" for i in range(1, 21)], got
        epochs = {eventId.split(":")[0] for eventId, _ in got}
        assert len(epochs) == 1, got
        assert [int(eventId.split(":")[1]) for eventId, _ in got] == list(range(1, 21))
        assert chromium.execute_script("return window.opened") == 2
        # The only error a console may show: the connection the kill cut.
        errors = [e for e in consoleErrors(chromium) if "favicon.ico" not in e["message"]]
        assert all("net::ERR" in entry["message"] for entry in errors), errors
    finally:
        server.stop()


def test_secureWebSocketAndEventSource(tmp_path, chromiumTrustingEveryCertificate, pageOrigin):
    """
    A page opens C{wss://} and an C{EventSource} on C{https://}: ssl: ports,
    whose TLS handshake with the browser (which offers ALPN) completes, the
    page publishes over its WebSocket, and both get what a line client
    publishes.
    """
    from tests.certs import Certificates
    from tests.twistd import readLines

    chromium = chromiumTrustingEveryCertificate
    (tmp_path / "certs").mkdir()
    certs = Certificates.make(tmp_path / "certs")
    origin = pageOrigin()
    wssPort, ssePort, tapPort = freePort(), freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.CHAT]
[[listen]]
endpoint = "{certs.sslEndpoint(wssPort)}"
protocol = "websocket"
publish_to = "CHAT"
subscribe_to = "CHAT"
origins = ["{origin}"]
[[listen]]
endpoint = "{certs.sslEndpoint(ssePort)}"
protocol = "sse"
subscribe_to = "CHAT"
origins = ["{origin}"]
[[listen]]
endpoint = "tcp:{tapPort}:interface=127.0.0.1"
publish_to = "CHAT"
subscribe_to = "CHAT"
""").start()
    try:
        for port in (wssPort, ssePort, tapPort):
            twistd.waitForPort(port)
        with socket.create_connection(("127.0.0.1", tapPort), timeout=10) as tap:
            time.sleep(0.2)
            chromium.get(f"{origin}/page.html")
            chromium.execute_script(f"""
                window.events = []; window.ws = []; window.sse = [];
                const source = new EventSource("https://127.0.0.1:{ssePort}/");
                source.onopen = () => window.events.push("sse open");
                source.onmessage = (e) => window.sse.push(e.data);
                const socket = new WebSocket("wss://127.0.0.1:{wssPort}/");
                socket.onopen = () => {{
                    window.events.push("wss open");
                    socket.send("from the page over wss");
                }};
                socket.onmessage = (e) => window.ws.push(e.data);
                socket.onerror = () => window.events.push("wss error");
            """)
            waitFor("both to open", lambda: sorted(chromium.execute_script(
                "return window.events")) == ["sse open", "wss open"])
            assert readLines(tap, 1) == [b"from the page over wss"]
            tap.sendall(b"to the page over TLS\n")
            # The WebSocket gets what others publish, the stream everything.
            waitFor("the line on both", lambda: chromium.execute_script(
                "return [window.ws, window.sse]") == [
                    ["to the page over TLS"],
                    ["from the page over wss", "to the page over TLS"]])
        assert "tls_failures" not in twistd.text()
        twistd.stop()
    finally:
        twistd.kill()


def test_webSocketOrigins(tmp_path, chromium, pageOrigin):
    """
    A WebSocket port with origins = [the page's origin] and auth: the page
    of that origin connects with its token beside the subprotocol
    "backplane", publishes and receives; the same page from another origin
    (another port), token and all, is refused before the upgrade, as is the
    right page without a token; neither publishes anything.
    """
    import hashlib

    from tests.twistd import readLines

    token = "page-token-0123456789abcdef0123456789abcdef"
    right, other = pageOrigin(), pageOrigin()
    wsPort, tapPort = freePort(), freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.CHAT]
[[listen]]
endpoint = "tcp:{wsPort}:interface=127.0.0.1"
protocol = "websocket"
publish_to = "CHAT"
subscribe_to = "CHAT"
auth = true
origins = ["{right}"]
[[listen]]
endpoint = "tcp:{tapPort}:interface=127.0.0.1"
publish_to = "CHAT"
subscribe_to = "CHAT"
[[user]]
name = "page"
token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
publish = ["CHAT"]
subscribe = ["CHAT"]
""").start()

    def openSocket(protocols: str) -> None:
        chromium.execute_script(f"""
            window.events = []; window.got = [];
            const socket = new WebSocket("ws://127.0.0.1:{wsPort}/", {protocols});
            window.socket = socket;
            socket.onopen = () => {{
                window.events.push("open:" + socket.protocol);
                socket.send("from the page");
            }};
            socket.onmessage = (e) => window.got.push(e.data);
            socket.onerror = () => window.events.push("error");
            socket.onclose = (e) => window.events.push("close:" + e.code);
        """)

    def events() -> list[str]:
        got: list[str] = chromium.execute_script("return window.events")
        return got

    try:
        twistd.waitForPort(wsPort)
        twistd.waitForPort(tapPort)
        with socket.create_connection(("127.0.0.1", tapPort), timeout=10) as tap:
            time.sleep(0.2)
            # Another origin, with the token: refused before the upgrade.
            chromium.get(f"{other}/page.html")
            openSocket(f'["backplane", "{token}"]')
            waitFor("the refusal", lambda: "close:1006" in events())
            assert "error" in events() and not any(e.startswith("open") for e in events())
            # The right origin without a token: refused too.
            chromium.get(f"{right}/page.html")
            openSocket("[]")
            waitFor("the refusal", lambda: "close:1006" in events())
            # The right origin with its token: open, "backplane" chosen.
            openSocket(f'["backplane", "{token}"]')
            waitFor("the socket to open", lambda: "open:backplane" in events())
            assert readLines(tap, 1) == [b"from the page"]
            tap.sendall(b"to the page\n")
            waitFor("the message", lambda: chromium.execute_script("return window.got")
                    == ["to the page"])
            tap.settimeout(0.5)
            with pytest.raises(TimeoutError):
                tap.recv(100)  # nothing else was published
        chromium.execute_script("window.socket.close()")
        text = twistd.text()
        assert f"origin '{other}' not allowed" in text
        assert token not in text
        twistd.stop()
    finally:
        twistd.kill()


def test_statusPageWithAuth(tmp_path, chromium):
    """
    With [monitor] auth = true, the page opened as /?token=TOKEN shows the
    statistics and a tail (the token goes with its requests); without a
    token, or with one that may not subscribe, it says why.
    """
    import hashlib

    from selenium.webdriver.common.by import By

    token, limited = "monitor-token-0123456789abcdef0123456789ab", "limited-token-0123456789ab"
    monitorPort = freePort()
    twistd = Twistd(tmp_path, config=f"""
[backplane.TIME]
retain = 1
[[clock]]
publish_to = "TIME"
interval = 0.25
[monitor]
endpoint = "tcp:{monitorPort}:interface=127.0.0.1"
auth = true
[[user]]
name = "operator"
token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
subscribe = ["*"]
[[user]]
name = "dashboard"
token_sha256 = "{hashlib.sha256(limited.encode()).hexdigest()}"
""").start()
    base = f"http://127.0.0.1:{monitorPort}/"
    try:
        twistd.waitForPort(monitorPort)
        driver = chromium
        driver.get(base)
        waitFor("the refusal", lambda: "HTTP 401" in driver.find_element(By.ID, "connection").text)
        driver.get(f"{base}?token={token}#tail=TIME")
        names = waitFor("the backplanes", lambda: [
            h.text for h in driver.find_elements(By.CSS_SELECTOR, "#backplanes .card h3")])
        assert names == ["TIME"]
        waitFor("TIME's lines", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#tail li")) >= 2)
        driver.get(f"{base}?token={limited}#tail=TIME")
        waitFor("the tail's refusal", lambda: "refused (403): may not subscribe to 'TIME'"
                in driver.find_element(By.ID, "tail-status").text)
        driver.get("about:blank")
        assert token not in twistd.text()
        twistd.stop()
    finally:
        twistd.kill()
