"""
Line ports with C{auth = true} over StringTransport (SPEC section 11): the
C{AUTH TOKEN} first line, fed in chunks of every size; nothing published or
delivered before it; one C{ERR} line for a refusal, counted by reason;
C{RESUME} and C{HELLO} after it; a client certificate that names a user; the
time a client has to send it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory
from backplane.acks import AckingFactory
from backplane.auth.authority import Authority
from backplane.auth.gate import AUTH_TIMEOUT
from backplane.auth.identity import AccessDenied, Permissions
from backplane.auth.lines import MAX_AUTH_LINE
from backplane.auth.signed import JWTVerifier
from backplane.auth.users import User, Users
from backplane.history import MemoryHistory
from backplane.protocols import BackplaneFactory, BackplaneProtocol
from backplane.resume import RESUME_WAIT, ResumingFactory
from backplane.testing import Recorder, connect

NOW = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef-backplane"
WRITER = "token-of-the-writer"
READER = "token-of-the-reader"

USERS = Users([
    User("writer", Permissions(("IN",), ()), tokenSha256=hashlib.sha256(WRITER.encode()).digest()),
    User("reader", Permissions((), ("OUT", "LOG")),
         tokenSha256=hashlib.sha256(READER.encode()).digest()),
    User("collector", Permissions(("IN",), ()), cert="collector.example.com"),
])


class FakeSubject:
    def __init__(self, commonName: str | None) -> None:
        self.commonName = commonName


class FakeCertificate:
    def __init__(self, commonName: str | None) -> None:
        self.subject = FakeSubject(commonName)

    def get_subject(self) -> FakeSubject:
        return self.subject


class TLSTransport(StringTransport):
    """
    A StringTransport that says it is TLS, with the client certificate a
    test gives it.
    """

    def __init__(self, commonName: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        directlyProvides(self, ISSLTransport)
        self.commonName = commonName

    def getPeerCertificate(self) -> FakeCertificate | None:
        return None if self.commonName is None else FakeCertificate(self.commonName)


class LineAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.service = BackplaneService()
        self.inbound = self.service.create("IN")
        self.outbound = self.service.create("OUT")
        self.log = self.service.create("LOG", history=MemoryHistory(100))
        self.recorder = Recorder.on(self.inbound)
        self.authority = Authority(USERS, JWTVerifier(SECRET, clock=self.clock))

    def publishPort(self) -> PublishToFactory:
        return PublishToFactory(self.service, "IN", authority=self.authority, clock=self.clock)

    def assertRefused(self, transport: StringTransport, line: bytes) -> None:
        self.assertEqual(transport.value(), b"ERR " + line + b"\n")
        self.assertTrue(transport.disconnecting)

    def signed(self, **claims: Any) -> str:
        return jwt.encode({"exp": NOW + 60, **claims}, SECRET, algorithm="HS256")

    def test_authThenLines(self) -> None:
        """
        AUTH, then lines, in chunks of every size: the lines are published,
        the AUTH line is not, and nothing is sent back.
        """
        stream = b"AUTH " + WRITER.encode() + b"\r\nhello\n\nworld\r\n"
        factory = self.publishPort()
        for size in range(1, len(stream) + 1):
            protocol, transport = connect(factory)
            for i in range(0, len(stream), size):
                protocol.dataReceived(stream[i:i + size])
            self.assertEqual(transport.value(), b"")
            self.assertFalse(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.recorder.messages, [b"hello", b"", b"world"] * len(stream))
        self.assertEqual(self.authority.counters.snapshot(),
                         {"accepted": len(stream), "refused": {}})
        self.assertEqual(self.inbound.stats.publishers, 0)

    def test_nothingBeforeAUTH(self) -> None:
        """
        A publisher is no publisher until admitted; a subscriber is handed
        nothing.
        """
        protocol, _transport = connect(self.publishPort())
        protocol.dataReceived(b"AUTH " + WRITER.encode())
        self.assertEqual((self.inbound.stats.publishers, self.recorder.messages), (0, []))
        protocol.dataReceived(b"\n")
        self.assertEqual(self.inbound.stats.publishers, 1)

        factory = SubscribeToFactory(self.service, "OUT", authority=self.authority,
                                     clock=self.clock)
        reader, readerTransport = connect(factory)
        self.outbound.publish(b"before")
        self.assertEqual((len(self.outbound), readerTransport.value()), (0, b""))
        reader.dataReceived(b"AUTH " + READER.encode() + b"\n")
        self.assertEqual(len(self.outbound), 1)
        self.outbound.publish(b"after")
        self.assertEqual(readerTransport.value(), b"after\n")

    def test_firstLineNotAUTH(self) -> None:
        protocol, transport = connect(self.publishPort())
        protocol.dataReceived(b"hello\nworld\n")
        self.assertRefused(transport, b"expected AUTH TOKEN as the first line")
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.authority.counters.refused, {"missing": 1})

    def test_refusals(self) -> None:
        """
        A missing, unknown, expired, tampered or insufficient token: one
        ERR line, nothing published, counted by reason.
        """
        header, payload, signature = self.signed(publish="IN").split(".")
        tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
        for line, reply in [
            (b"AUTH", b"expected AUTH TOKEN as the first line"),
            (b"AUTH ", b"expected AUTH TOKEN as the first line"),
            (b"AUTH a b", b"expected AUTH TOKEN as the first line"),
            (b"AUTH nope", b"unknown token"),
            (b"AUTH " + READER.encode(), b"may not publish to 'IN'"),
            (b"AUTH " + self.signed(publish="IN", exp=NOW - 60).encode(), b"token expired"),
            (b"AUTH " + tampered.encode(), b"token signature does not verify"),
            (b"AUTH " + self.signed(publish="OTHER").encode(), b"may not publish to 'IN'"),
        ]:
            protocol, transport = connect(self.publishPort())
            protocol.dataReceived(line + b"\nhello\n")
            self.assertRefused(transport, reply)
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.inbound.stats.publishers, 0)
        self.assertEqual(self.authority.counters.snapshot(), {
            "accepted": 2, "refused": {"expired": 1, "forbidden": 2, "invalid": 1, "missing": 3,
                                       "unknown": 1}})

    def test_signedToken(self) -> None:
        protocol, transport = connect(self.publishPort())
        protocol.dataReceived(b"AUTH " + self.signed(publish=["I?"]).encode() + b"\nsigned\n")
        self.assertEqual((transport.value(), self.recorder.messages), (b"", [b"signed"]))

    def test_timeout(self) -> None:
        """
        A client that sends no AUTH line in time is refused, half line or
        not.
        """
        for sent in [b"", b"AUTH " + WRITER.encode()]:
            protocol, transport = connect(self.publishPort())
            protocol.dataReceived(sent)
            self.clock.advance(AUTH_TIMEOUT - 0.5)
            self.assertFalse(transport.disconnecting)
            self.clock.advance(0.5)
            self.assertRefused(transport, b"no AUTH line within 10 seconds")
            protocol.dataReceived(b"\nhello\n")
            self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.authority.counters.refused, {"timeout": 2})

    def test_admittedInTime(self) -> None:
        protocol, transport = connect(self.publishPort())
        protocol.dataReceived(b"AUTH " + WRITER.encode() + b"\n")
        self.clock.advance(AUTH_TIMEOUT * 2)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_goneBeforeAUTH(self) -> None:
        protocol, _transport = connect(self.publishPort())
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.authority.counters.snapshot(), {"accepted": 0, "refused": {}})

    def test_tooLong(self) -> None:
        protocol, transport = connect(self.publishPort())
        protocol.dataReceived(b"AUTH " + b"x" * MAX_AUTH_LINE)
        self.assertRefused(transport, b"the first line is too long for AUTH TOKEN")
        self.assertEqual(self.authority.counters.refused, {"malformed": 1})

    def test_resumeAfterAUTH(self) -> None:
        """
        On an ids port, RESUME comes after AUTH; RESUME first is refused.
        """
        for i in range(1, 4):
            self.log.publish(b"m%d" % i)
        factory = ResumingFactory(self.service, subscribe_to="LOG", authority=self.authority,
                                  clock=self.clock)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"AUTH " + READER.encode() + b"\nRESUME 0\n")
        lines = transport.value().split(b"\n")
        self.assertEqual([line.split(b" ", 1)[1] for line in lines[:-1]], [b"m1", b"m2", b"m3"])

        protocol, transport = connect(factory)
        protocol.dataReceived(b"RESUME 0\n")
        self.assertRefused(transport, b"expected AUTH TOKEN as the first line")

        # Live only, from AUTH on: what was published before is not sent.
        protocol, transport = connect(factory)
        self.log.publish(b"before AUTH")
        protocol.dataReceived(b"AUTH " + READER.encode() + b"\n")
        self.log.publish(b"after AUTH")
        self.clock.advance(RESUME_WAIT)
        self.assertEqual(transport.value().split(b" ", 1)[1], b"after AUTH\n")

    def test_helloAfterAUTH(self) -> None:
        factory = AckingFactory(self.service, publish_to="IN", authority=self.authority,
                                clock=self.clock)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"AUTH " + WRITER.encode() + b"\nHELLO p1 0\na\nb\n")
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"ACK 2\n")
        self.assertEqual(self.recorder.messages, [b"a", b"b"])

    def test_certificate(self) -> None:
        """
        Over TLS, a client certificate whose CN is a user's cert admits the
        client without an AUTH line; any other client sends AUTH.
        """
        factory = self.publishPort()
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = factory.buildProtocol(address)
        assert isinstance(protocol, BackplaneProtocol)
        transport = TLSTransport("collector.example.com", peerAddress=address)
        protocol.makeConnection(transport)
        self.assertEqual(self.inbound.stats.publishers, 0)
        protocol.handshakeCompleted()
        self.assertEqual(self.inbound.stats.publishers, 1)
        protocol.dataReceived(b"from a certificate\n")
        self.assertEqual(self.recorder.messages, [b"from a certificate"])
        assert protocol.identity is not None
        self.assertEqual(protocol.identity.name, "collector")

        for commonName in ["someone.example.com", None]:
            protocol = factory.buildProtocol(address)
            assert isinstance(protocol, BackplaneProtocol)
            transport = TLSTransport(commonName, peerAddress=address)
            protocol.makeConnection(transport)
            publishers = self.inbound.stats.publishers
            protocol.handshakeCompleted()
            self.assertEqual(self.inbound.stats.publishers, publishers)
            protocol.dataReceived(b"AUTH " + WRITER.encode() + b"\nwith a token\n")
            self.assertEqual(self.recorder.messages[-1], b"with a token")
        self.assertEqual(self.authority.counters.snapshot(), {"accepted": 3, "refused": {}})

    def test_certificateBeyondRights(self) -> None:
        factory = SubscribeToFactory(self.service, "OUT", authority=self.authority,
                                     clock=self.clock)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(protocol, BackplaneProtocol)
        transport = TLSTransport("collector.example.com")
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        self.assertRefused(transport, b"may not subscribe to 'OUT'")
        self.assertEqual(len(self.outbound), 0)

    def test_authOff(self) -> None:
        """
        Without an authority, AUTH is a line like any other.
        """
        protocol, transport = connect(BackplaneFactory(self.service, publish_to="IN"))
        protocol.dataReceived(b"AUTH x\nhello\n")
        self.assertEqual(self.recorder.messages, [b"AUTH x", b"hello"])
        self.assertEqual(transport.value(), b"")


class GateTests(SynchronousTestCase):
    """
    The Gate alone: what a port without auth lets in, what a certificate
    alone gives, and the CN of a transport's certificate.
    """

    def test_authOff(self) -> None:
        from backplane.auth.gate import Gate

        gate = Gate(publish="IN")
        self.assertFalse(gate.auth)
        self.assertFalse(gate.checks)
        self.assertIsNone(gate.admit(None))
        self.assertIsNone(gate.certificate("collector.example.com"))
        gate.authorize(None, subscribe="ANY")
        self.assertTrue(Gate(web=True).checks)

    def test_certificate(self) -> None:
        from backplane.auth.gate import Gate

        gate = Gate(Authority(USERS), publish="IN")
        identity = gate.certificate("collector.example.com")
        assert identity is not None
        self.assertEqual(identity.name, "collector")
        self.assertIsNone(gate.certificate("nobody"))
        self.assertIsNone(gate.certificate(None))
        self.assertEqual(gate.counters.snapshot(), {"accepted": 1, "refused": {}})
        # A token wins over a certificate; no token and no certificate: 401.
        admitted = gate.admit(WRITER, commonName="collector.example.com")
        assert admitted is not None
        self.assertEqual(admitted.name, "writer")
        denied = self.assertRaises(AccessDenied, gate.admit, None, commonName="nobody")
        self.assertEqual((denied.status, denied.code), (401, "missing"))

    def test_peerCommonName(self) -> None:
        from backplane.address import peerCommonName

        self.assertIsNone(peerCommonName(StringTransport()))
        self.assertIsNone(peerCommonName(TLSTransport(None)))
        self.assertIsNone(peerCommonName(TLSTransport("")))
        self.assertEqual(peerCommonName(TLSTransport("collector.example.com")),
                         "collector.example.com")

        class Failing:
            def getPeerCertificate(self) -> None:
                raise ValueError("no handshake yet")

        self.assertIsNone(peerCommonName(Failing()))
