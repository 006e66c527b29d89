"""
TLS over real sockets, with certificates the tests make: ssl: ports, and
ports that require a client certificate (mutual TLS).
"""

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import gatherResults
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue

from backplane import BackplaneService
from backplane.monitor import MonitorService
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory
from backplane.sse import SSEFactory
from backplane.testing import Recorder
from backplane.tls import loadCertificates, requireClientCertificates
from backplane.websocket import WebSocketFactory
from tests.certs import Certificates, Issued
from tests.helpers import LineClient, connectClient, waitUntil


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates.make(tmp_path_factory.mktemp("certs"))


def tlsPort(service, certs, *, clientCertificates: bool = False, factory=BackplaneFactory,
            **directions):
    """
    Start an ssl: port on 127.0.0.1 (requiring client certificates signed
    by the test CA, if asked) as a child of C{service}, with a C{factory}
    (a line port's by default).
    """
    endpoint = endpoints.serverFromString(reactor, certs.sslEndpoint())
    if clientCertificates:
        requireClientCertificates(endpoint, loadCertificates(str(certs.ca.path)))
    port = ListenService(endpoint, factory(service, **directions),
                         description="ssl:0", where="listen[1]")
    port.setServiceParent(service)
    return port


def connectTLS(port, certs, client: Issued | None = None, alpn: list[bytes] | None = None):
    """
    Connect a L{LineClient} over TLS, trusting the test CA, presenting
    C{client}'s certificate if given, offering the protocols C{alpn} in
    ALPN if given.
    """
    trust = Certificate.loadPEM(certs.ca.path.read_bytes())
    mine = None
    if client is not None:
        mine = PrivateCertificate.loadPEM(client.certificate.read_bytes()
                                          + client.key.read_bytes())
    options = optionsForClientTLS("localhost", trustRoot=trust, clientCertificate=mine,
                                  acceptableProtocols=alpn)
    endpoint = endpoints.wrapClientTLS(
        options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.port.getHost().port))
    return endpoint.connect(Factory.forProtocol(LineClient))


@pytest_twisted.inlineCallbacks
def test_publishAndSubscribeOverTLS(service, certs):
    data = service.get("DATA")
    publishPort = tlsPort(service, certs, publish_to="DATA")
    subscribePort = tlsPort(service, certs, subscribe_to="DATA")
    readers = yield gatherResults([connectTLS(subscribePort, certs) for _ in range(2)])
    yield waitUntil(lambda: len(data) == 2, what="TLS subscribers attached")
    writer = yield connectTLS(publishPort, certs)
    writer.send(b"secret", b"", b"still secret")
    yield waitUntil(lambda: all(len(r.lines) == 3 for r in readers), what="lines over TLS")
    for reader in readers:
        assert reader.lines == [b"secret", b"", b"still secret"]
    assert publishPort.factory.stats.messages_in == 3
    assert publishPort.factory.stats.tls_failures == 0


@pytest_twisted.inlineCallbacks
def test_alpnOfferedToALinePort(service, certs):
    """
    A client that offers protocols in ALPN (as every browser and curl does:
    C{h2}, C{http/1.1}) completes its handshake with a line port, which
    names none, and no protocol is chosen.  (Twisted alone fails it.)
    """
    data = service.get("DATA")
    publishPort = tlsPort(service, certs, publish_to="DATA")
    subscribePort = tlsPort(service, certs, subscribe_to="DATA")
    reader = yield connectTLS(subscribePort, certs, alpn=[b"h2", b"http/1.1"])
    yield waitUntil(lambda: len(data) == 1, what="the TLS subscriber attached")
    writer = yield connectTLS(publishPort, certs, alpn=[b"backplane"])
    writer.send(b"negotiated nothing")
    yield waitUntil(lambda: reader.lines == [b"negotiated nothing"], what="a line over TLS")
    assert reader.transport.negotiatedProtocol is None
    assert writer.transport.negotiatedProtocol is None
    assert publishPort.factory.stats.tls_failures == 0


@pytest.mark.parametrize("factory", [WebSocketFactory, SSEFactory])
@pytest_twisted.inlineCallbacks
def test_alpnOfWebPorts(service, certs, factory):
    """
    A WebSocket or Server-Sent Events port chooses C{http/1.1} in ALPN
    when the client offers it, even after C{h2}, which it does not speak;
    a client that offers only other protocols gets none, and its handshake
    completes.
    """
    service.get("DATA")
    port = tlsPort(service, certs, factory=factory, subscribe_to="DATA")
    browser = yield connectTLS(port, certs, alpn=[b"h2", b"http/1.1"])
    yield waitUntil(lambda: browser.transport.negotiatedProtocol is not None,
                    what="the handshake")
    assert browser.transport.negotiatedProtocol == b"http/1.1"
    other = yield connectTLS(port, certs, alpn=[b"h2"])
    other.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    yield waitUntil(lambda: bool(other.lines), what="an answer over TLS")
    assert other.lines[0].startswith(b"HTTP/1.1 ")
    assert other.transport.negotiatedProtocol is None
    browser.transport.loseConnection()
    other.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_alpnOfTheMonitor(service, certs):
    """
    An ssl: monitor chooses C{http/1.1} in ALPN, even after C{h2}: its
    channels speak HTTP/1.1 only, even where Twisted's L{Site} could speak
    C{h2}.
    """
    endpoint = endpoints.serverFromString(reactor, certs.sslEndpoint())
    monitor = MonitorService(service, endpoint, description="ssl:0")
    monitor.setServiceParent(service)
    browser = yield connectTLS(monitor, certs, alpn=[b"h2", b"http/1.1"])
    browser.transport.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    yield waitUntil(lambda: bool(browser.lines), what="an answer over TLS")
    assert browser.lines[0].startswith(b"HTTP/1.1 200")
    assert browser.transport.negotiatedProtocol == b"http/1.1"
    browser.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_alpnRealClients(service, certs):
    """
    curl (which offers C{h2} and C{http/1.1}) gets its answer from a
    WebSocket port over TLS, C{426} to a plain C{GET}, over HTTP/1.1; and
    C{openssl s_client -alpn h2,http/1.1} publishes a line to a line port.
    """
    data = service.get("DATA")
    web = tlsPort(service, certs, factory=WebSocketFactory, subscribe_to="DATA")
    port = web.port.getHost().port
    out, err, code = yield getProcessOutputAndValue(
        "curl", ["-sS", "--max-time", "10", "--cacert", str(certs.ca.path),
                 "--resolve", f"localhost:{port}:127.0.0.1", "-o", "/dev/null",
                 "-w", "%{http_code} %{http_version}", f"https://localhost:{port}/"])
    assert (code, out) == (0, b"426 1.1"), err
    publishPort = tlsPort(service, certs, publish_to="DATA")
    subscribePort = tlsPort(service, certs, subscribe_to="DATA")
    reader = yield connectTLS(subscribePort, certs)
    yield waitUntil(lambda: len(data) == 1, what="the TLS subscriber attached")
    out, err, code = yield getProcessOutputAndValue(
        "sh", ["-c", "printf 'from openssl\\n' | openssl s_client -quiet -no_ign_eof "
                     f"-alpn h2,http/1.1 -CAfile {certs.ca.path} -servername localhost "
                     f"-connect 127.0.0.1:{publishPort.port.getHost().port}"])
    yield waitUntil(lambda: reader.lines == [b"from openssl"], what="openssl's line")
    assert b"alert" not in err, err


@pytest_twisted.inlineCallbacks
def test_mutualTLSRefusesAClientWithoutACertificate(service, certs):
    """
    On a port that requires a client certificate, a client without one is
    disconnected, and nothing it sends is published.
    """
    data = service.get("DATA")
    recorder = Recorder.on(data)
    port = tlsPort(service, certs, clientCertificates=True, publish_to="DATA")
    anonymous = yield connectTLS(port, certs)
    anonymous.send(b"let me in")
    yield anonymous.closed
    stranger = yield connectTLS(port, certs, client=certs.stranger)
    stranger.send(b"me too")
    yield stranger.closed
    yield waitUntil(lambda: port.factory.stats.tls_failures == 2, what="failures counted")
    assert recorder.messages == []
    assert data.stats.messages_in == 0
    assert data.stats.publishers == 0
    assert port.factory.clients == 0

    trusted = yield connectTLS(port, certs, client=certs.client)
    trusted.send(b"signed by the CA")
    yield waitUntil(lambda: recorder.messages == [b"signed by the CA"], what="trusted line")
    assert trusted.connected
    assert data.stats.publishers == 1
    assert port.factory.stats.tls_failures == 2


@pytest_twisted.inlineCallbacks
def test_mutualTLSSubscriber(service, certs):
    """
    A subscriber without a certificate is never handed a message; one with a
    certificate receives them.
    """
    data = service.get("DATA")
    port = tlsPort(service, certs, clientCertificates=True, subscribe_to="DATA")
    anonymous = yield connectTLS(port, certs)
    trusted = yield connectTLS(port, certs, client=certs.client)
    yield waitUntil(lambda: len(data) == 1, what="the trusted subscriber attached")
    data.publish(b"for members")
    yield waitUntil(lambda: trusted.lines == [b"for members"], what="the trusted line")
    yield anonymous.closed
    assert anonymous.lines == []
    assert len(data) == 1


@pytest_twisted.inlineCallbacks
def test_plainClientOnTLSPort(service, certs):
    data = service.get("DATA")
    port = tlsPort(service, certs, publish_to="DATA")
    plain = yield connectClient(port.port.getHost().port)
    plain.send(b"not TLS at all")
    yield plain.closed
    yield waitUntil(lambda: port.factory.stats.tls_failures == 1)
    assert data.stats.messages_in == 0


@pytest_twisted.inlineCallbacks
def test_stopClosesTLSSubscribersAfterSendingWhatIsPending(certs):
    """
    A TLS connection closes only once its producer is unregistered: stopping
    the service closes TLS subscribers at once (not after close_timeout),
    and they get what was published before.
    """
    service = BackplaneService()
    data = service.create("DATA")
    port = tlsPort(service, certs, subscribe_to="DATA")
    port.closeTimeout = 30
    service.startService()
    readers = yield gatherResults([connectTLS(port, certs) for _ in range(3)])
    yield waitUntil(lambda: len(data) == 3)
    data.publishMany([b"last words"] * 1000)
    started = reactor.seconds()
    yield service.stopService()
    for reader in readers:
        yield reader.closed
        assert reader.lines == [b"last words"] * 1000
    assert reactor.seconds() - started < 10


def test_sslEndpointTripwire(tmp_path):
    """
    The tripwire of L{backplane.tls.requireClientCertificates}, the one use
    of a private attribute of Twisted's C{SSL4ServerEndpoint}
    (C{_sslContextFactory}): an C{ssl:} endpoint made by C{serverFromString}
    must still keep its L{CertificateOptions} there.
    """
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import MemoryReactor

    from backplane.tls import requireClientCertificates

    certs = Certificates.make(tmp_path)
    endpoint = endpoints.serverFromString(MemoryReactor(), certs.sslEndpoint())
    assert isinstance(getattr(endpoint, "_sslContextFactory", None), CertificateOptions), \
        "SSL4ServerEndpoint changed: requireClientCertificates must find another way"
    requireClientCertificates(endpoint, loadCertificates(str(certs.ca.path)))
    assert endpoint._sslContextFactory.requireCertificate


@pytest_twisted.inlineCallbacks
def test_refusedTLSClientIsClosed(service, certs):
    """
    A TLS client past max_clients is closed at once, as a plain TCP one is:
    it cannot complete its handshake and hold a connection beyond the limit.
    """
    from backplane.protocols import Limits

    port = tlsPort(service, certs, subscribe_to="DATA", limits=Limits(max_clients=1))
    first = yield connectTLS(port, certs)
    yield waitUntil(lambda: len(service.get("DATA")) == 1, what="the first client")
    second = yield connectTLS(port, certs)
    yield waitUntil(lambda: second.closed.called, timeout=10, what="the refused client closed")
    assert port.factory.stats.refused == 1
    assert not first.closed.called
    service.get("DATA").publish(b"still served")
    yield waitUntil(lambda: first.lines == [b"still served"])


@pytest_twisted.inlineCallbacks
def test_lastLineAtACleanTLSClose(service, certs):
    """
    A TLS client's last line without a newline is published when it closes
    cleanly (Twisted's loseConnection sends close_notify); one that is
    aborted publishes no half line, and its bytes are counted.
    """
    recorder = Recorder.on(service.get("DATA"))
    port = tlsPort(service, certs, publish_to="DATA")
    clean = yield connectTLS(port, certs)
    clean.transport.write(b"whole\nlast, no newline")
    clean.transport.loseConnection()
    yield clean.closed
    yield waitUntil(lambda: len(recorder.messages) >= 2, what="the last line")
    assert recorder.messages == [b"whole", b"last, no newline"]
    aborted = yield connectTLS(port, certs)
    aborted.transport.write(b"half a line")
    factory = port.factory
    yield waitUntil(lambda: any(p.framer.buffered == b"half a line" for p in factory.protocols),
                    what="the half line read")
    aborted.transport.abortConnection()
    yield waitUntil(lambda: factory.clients == 0, what="the abort seen")
    assert recorder.messages == [b"whole", b"last, no newline"]
    assert factory.stats.discarded_bytes == len(b"half a line")


@pytest_twisted.inlineCallbacks
def test_lingerReadsATLSPublisherOnceALinger(service, certs):
    """
    A TLS publisher on a port with C{linger}: held between reads (its TCP
    connection, under the TLS layer, stops reading), every line it sends one
    a write arrives, in order.
    """
    from twisted.internet.task import deferLater

    from backplane.protocols import Limits

    recorder = Recorder.on(service.get("DATA"))
    publishPort = tlsPort(service, certs, publish_to="DATA", limits=Limits(linger=0.02))
    writer = yield connectTLS(publishPort, certs)
    for n in range(10):
        writer.send(b"line %d" % n)
        yield deferLater(reactor, 0.005, lambda: None)
    yield waitUntil(lambda: len(recorder.messages) == 10, what="every line over TLS")
    assert recorder.messages == [b"line %d" % n for n in range(10)]
    assert publishPort.factory.linger is not None
