"""
Addresses: who may connect (L{isAllowed}), how a peer is named in log lines
(L{describePeer}), and the name its TLS client certificate gives it
(L{peerCommonName}).
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from twisted.internet.interfaces import IAddress

Network = IPv4Network | IPv6Network


def isAllowed(address: IAddress | None, allow: Sequence[Network] | None) -> bool:
    """
    Whether a client at C{address} may connect to a port with C{allow}.

    L{None} allows everyone.  Otherwise an IP client must be in one of the
    networks; an IPv4-mapped IPv6 address (C{::ffff:10.1.2.3}, what an IPv6
    port shows for an IPv4 client) is checked as its IPv4 address too.  An
    address without an IP (a UNIX socket) is always allowed; an address
    whose host is not an IP is never.
    """
    if allow is None:
        return True
    host = getattr(address, "host", None)
    if host is None:
        return True
    try:
        ip = ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return any(ip in network or (mapped is not None and mapped in network)
               for network in allow)


def describePeer(address: IAddress) -> str:
    """
    A short form of an address for log lines: C{host:port} where it has them.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return str(name) if name else str(address)


def peerCommonName(transport: object) -> str | None:
    """
    The subject common name (CN) of the certificate a TLS client presented,
    or L{None}: not TLS, no certificate, or one without a CN.

    @param transport: the connection's transport (an L{ISSLTransport}
        provides C{getPeerCertificate}).
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return None
    try:
        certificate = getPeerCertificate()
    except Exception:  # pyOpenSSL's, before the handshake is done
        return None
    if certificate is None:
        return None
    name = certificate.get_subject().commonName
    return name if isinstance(name, str) and name else None
