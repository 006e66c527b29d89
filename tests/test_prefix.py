"""
A port's C{prefix}: the receive time and the sender's address before each
line, on line ports and UDP ports.
"""

from __future__ import annotations

import sys

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from backplane import BackplaneService
from backplane.config import parseConfig
from backplane.datagram import DatagramReader
from backplane.errors import ConfigError
from backplane.prefix import hostPort, makePrefix, parsePrefix, receiveTime
from backplane.protocols import BackplaneFactory, BackplaneProtocol, Limits
from backplane.testing import Recorder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: 2026-12-03T15:26:00.123Z
WHEN = 1796311560.123


class PrefixTests(SynchronousTestCase):
    def test_receiveTime(self) -> None:
        self.assertEqual(receiveTime(WHEN), b"2026-12-03T15:26:00.123Z")
        self.assertEqual(receiveTime(0), b"1970-01-01T00:00:00.000Z")
        self.assertEqual(receiveTime(59.9996), b"1970-01-01T00:01:00.000Z")

    def test_eachLineOfAChunk(self) -> None:
        clock = Clock()
        clock.advance(WHEN)
        prefix = makePrefix(("time", "address"), clock, "10.0.0.5:4000")
        assert prefix is not None
        self.assertEqual(prefix(b"a\n\nb\n"),
                         b"2026-12-03T15:26:00.123Z 10.0.0.5:4000 a\n"
                         b"2026-12-03T15:26:00.123Z 10.0.0.5:4000 \n"
                         b"2026-12-03T15:26:00.123Z 10.0.0.5:4000 b\n")
        address = makePrefix(("address",), clock, "-")
        assert address is not None
        self.assertEqual(address(b"a\n"), b"- a\n")
        self.assertIsNone(makePrefix((), clock, "x"))
        self.assertEqual(hostPort("::1", 514), "[::1]:514")
        self.assertEqual(hostPort("10.0.0.5", 514), "10.0.0.5:514")

    def test_parse(self) -> None:
        self.assertEqual(parsePrefix(["address", "time"]), ("time", "address"))
        for bad, message in [("time", "must be an array"), (["when"], "not a prefix field"),
                             (["time", "time"], "twice"), ([1], "must be an array")]:
            with self.assertRaises(ValueError) as raised:
                parsePrefix(bad)
            self.assertIn(message, str(raised.exception))


class PortPrefixTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = BackplaneService()
        self.recorder = Recorder.on(self.service.create("LOG"))
        self.clock = Clock()
        self.clock.advance(WHEN)

    def test_linePort(self) -> None:
        """
        Each line a client publishes gets the receive time of its chunk and
        the client's address; a UNIX socket's client has C{-}.
        """
        factory = BackplaneFactory(self.service, publish_to="LOG",
                                   limits=Limits(prefix=("time", "address")), clock=self.clock)
        for peer, shown in [(IPv4Address("TCP", "10.1.2.3", 5000), b"10.1.2.3:5000"),
                            (UNIXAddress(None), b"-")]:
            self.recorder.messages.clear()
            protocol = factory.buildProtocol(peer)
            assert isinstance(protocol, BackplaneProtocol)
            protocol.makeConnection(StringTransport(peerAddress=peer))
            first = receiveTime(self.clock.seconds())
            protocol.dataReceived(b"one\ntw")
            self.clock.advance(1)
            second = receiveTime(self.clock.seconds())
            protocol.dataReceived(b"o\n")
            self.assertEqual(self.recorder.messages, [first + b" " + shown + b" one",
                                                      second + b" " + shown + b" two"])

    def test_udpPort(self) -> None:
        """
        Each line of a datagram gets its receive time and source address.
        """
        reader = DatagramReader(self.service.get("LOG"), Limits(prefix=("time", "address")),
                                clock=self.clock)
        reader.datagramReceived(b"a\nb", ("10.9.8.7", 514))
        self.assertEqual(self.recorder.messages, [b"2026-12-03T15:26:00.123Z 10.9.8.7:514 a",
                                                  b"2026-12-03T15:26:00.123Z 10.9.8.7:514 b"])

    def test_config(self) -> None:
        base = '[backplane.LOG]\n[[listen]]\nendpoint = "tcp:1"\n'
        config = parseConfig(tomllib.loads(base + 'publish_to = "LOG"\nprefix = ["time"]'))
        self.assertEqual(config.listen[0].limits.prefix, ("time",))
        for keys, fragment in [('subscribe_to = "LOG"\nprefix = ["time"]', "needs publish_to"),
                               ('publish_to = "LOG"\nacks = true\nprefix = ["time"]', "no acks"),
                               ('publish_to = "LOG"\nprefix = ["host"]', "not a prefix field")]:
            with self.assertRaises(ConfigError) as raised:
                parseConfig(tomllib.loads(base + keys))
            self.assertIn("listen[1].prefix", str(raised.exception))
            self.assertIn(fragment, str(raised.exception))
