"""
UDP ports (C{endpoint = "udp:PORT[:interface=ADDR]"}): each datagram is a
whole message, its lines published together.

Twisted has no C{udp:} server endpoint, so L{DatagramService} listens with
C{reactor.listenUDP} itself, as L{backplane.ports.EndpointService} listens
on a stream endpoint: it refuses clearly (L{CannotListen}) when the address
is taken, and reports its statistics (L{IStatsSource}).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from backplane._types import defaultReactor
from backplane.address import describePeer, isAllowed
from backplane.errors import CannotListen
from backplane.interfaces import IStatsSource
from backplane.prefix import hostPort, makePrefix
from backplane.protocols import Limits, makeFramer
from backplane.service import Backplane

#: The largest datagram read whole: a longer one is cut by the system (UDP
#: over IPv4 carries at most 65,507 bytes).
MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class UDPAddress:
    """
    Where a UDP port listens: C{udp:PORT[:interface=ADDR]}.

    @ivar port: the port number (0: any free port).
    @ivar interface: the address to listen on (C{""}: every IPv4 address).
    """

    port: int
    interface: str = ""


def parseUDP(description: str) -> UDPAddress:
    """
    Read a C{udp:PORT[:interface=ADDR]} endpoint description.

    @raise ValueError: with a message saying what is wrong with it.
    """
    fields = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    if fields[0].lower() != "udp":
        raise ValueError("a UDP endpoint starts with udp:")
    port: str | None = None
    interface = ""
    for part in fields[1:]:
        key, equals, value = part.partition("=")
        if not equals and port is None:
            port = key
        elif key == "port" and port is None:
            port = value
        elif key == "interface":
            interface = value
        else:
            raise ValueError(f"unknown parameter {part[:40]!r} (udp:PORT[:interface=ADDR])")
    if port is None or not (port.isdigit() and int(port) <= 65535):
        shown = "nothing" if port is None else repr(port[:40])
        raise ValueError(f"the port must be a number from 0 to 65535, not {shown}")
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f"interface must be an IP address, not {interface[:60]!r}") from None
    return UDPAddress(int(port), interface)


@dataclass
class DatagramStats:
    """
    Counters of one UDP port.  They only ever grow.

    @ivar datagrams: datagrams received (from allowed addresses).
    @ivar disallowed: datagrams dropped: their address is not in C{allow}.
    @ivar overlong: datagrams dropped whole: one of their lines (or the
        message, with C{framing = "syslog"}) is longer than
        C{max_line_length}.
    @ivar messages_in: lines published.
    @ivar bytes_in: bytes of those lines, delimiters included.
    @ivar discarded_bytes: bytes of the datagrams dropped as overlong.
    """

    datagrams: int = 0
    disallowed: int = 0
    overlong: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    discarded_bytes: int = 0


class DatagramReader(DatagramProtocol):
    """
    Publishes the lines of each datagram to a backplane, through a framer
    (L{makeFramer}: lines, or syslog) that frames the datagram as one whole
    message: its last line needs no newline, and a line is never made of
    two datagrams.  A datagram with a line longer than C{max_line_length}
    is dropped whole; an empty one publishes nothing.
    """

    log = Logger()

    def __init__(self, backplane: Backplane, limits: Limits,
                 clock: IReactorTime | None = None) -> None:
        """
        @param clock: the time (the reactor by default), for a C{prefix}
            with the receive time.
        """
        self.backplane = backplane
        self.limits = limits
        self.clock = clock if clock is not None else defaultReactor()
        self.stats = DatagramStats()
        self.framer = makeFramer(self, limits)
        self._peer = ("?", 0)
        self._size = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host, port = addr[0], addr[1]
        stats = self.stats
        if self.limits.allow is not None and not isAllowed(_address(host, port),
                                                           self.limits.allow):
            stats.disallowed += 1
            return
        stats.datagrams += 1
        if not datagram:
            # Nothing to publish (a probe): not even an empty line.
            return
        self._peer, self._size = (host, port), len(datagram)
        self.framer.messageReceived(datagram)

    def linesReceived(self, data: bytes) -> None:
        """
        The datagram's lines: publish them (after the port's C{prefix}).
        """
        if self.limits.prefix:
            prefix = makePrefix(self.limits.prefix, self.clock, hostPort(*self._peer))
            assert prefix is not None
            data = prefix(data)
        count = data.count(b"\n")
        stats = self.stats
        stats.messages_in += count
        stats.bytes_in += len(data)
        self.backplane.publishLines(data, count, origin=self)

    def lineTooLong(self, length: int) -> None:
        """
        The datagram holds a line longer than C{max_line_length}: it is
        dropped, and counted.
        """
        stats = self.stats
        if not stats.overlong:
            self.log.warn("Dropping a datagram from {peer}: a line of {length} bytes is longer "
                          "than max_line_length ({limit}); such datagrams are counted, not "
                          "logged again", peer=f"{self._peer[0]}:{self._peer[1]}", length=length,
                          limit=self.limits.max_line_length)
        stats.overlong += 1
        stats.discarded_bytes += self._size


def _address(host: str, port: int) -> Any:
    from twisted.internet.address import IPv4Address, IPv6Address

    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


@implementer(IStatsSource)
class DatagramService(Service):
    """
    Listens on a UDP port and publishes what arrives (L{DatagramReader}).
    It listens in C{privilegedStartService}, so twistd binds it before
    dropping privileges; a port that cannot listen makes it raise
    L{CannotListen} naming the entry.
    """

    log = Logger()

    def __init__(self, reactor: IReactorUDP, address: UDPAddress, reader: DatagramReader, *,
                 description: str, where: str | None = None, path: str | None = None) -> None:
        """
        @param description: the endpoint as the user wrote it, for messages.
        @param where: the config entry, e.g. C{listen[2]}, for messages.
        @param path: the config file, for messages.
        """
        self.reactor = reactor
        self.address = address
        self.reader = reader
        self.description = description
        self.where = where
        self.path = path
        self.port: IListeningPort | None = None
        self.failed = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        self.failed = False
        try:
            self.port = self.reactor.listenUDP(self.address.port, self.reader,
                                               interface=self.address.interface,
                                               maxPacketSize=MAX_DATAGRAM)
        except CannotListenError as e:
            self.failed = True
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise CannotListen(f"cannot listen on {self.description!r}: {reason}",
                               path=self.path,
                               where=f"{self.where}.endpoint" if self.where else None) from None
        self.log.info("{where} listening on {address}", where=self.where or "port",
                      address=describePeer(self.port.getHost()))

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def report(self) -> dict[str, object]:
        """
        The port's statistics: state, the counters of L{DatagramStats}.
        """
        state = "listening" if self.port else "failed" if self.failed else "stopped"
        return {
            "name": self.name or self.where or self.description,
            "kind": "listen",
            "state": state,
            "counters": asdict(self.reader.stats),
            "gauges": {},
            "info": {
                "endpoint": self.description,
                "protocol": "udp",
                "address": describePeer(self.port.getHost()) if self.port else None,
                "publish_to": self.reader.backplane.name,
                "subscribe_to": None,
            },
        }
