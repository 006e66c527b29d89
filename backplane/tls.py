"""
TLS for ports: requiring a client certificate on an C{ssl:} port, which
Twisted's C{ssl:} endpoint description cannot ask for, and settling the
protocol a client asks for in the handshake (ALPN) as a server should.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS, Connection
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from twisted.python.filepath import FilePath

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def loadCertificates(path: str) -> list[Certificate]:
    """
    Every certificate in a PEM file (a CA bundle), in the order written.

    @raise OSError: the file cannot be read.
    @raise ValueError: it holds no PEM certificate.
    @raise OpenSSL.crypto.Error: a certificate in it is not valid.
    """
    blocks = _PEM_CERTIFICATE.findall(FilePath(path).getContent())
    if not blocks:
        raise ValueError("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return [Certificate.loadPEM(block) for block in blocks]


def _sslOptions(endpoint: IStreamServerEndpoint) -> CertificateOptions | None:
    # SSL4ServerEndpoint keeps its context factory in a private attribute,
    # the only way to it: an ssl: description has no parameter for a trust
    # root, nor for ALPN.  The options are the endpoint's own, built by
    # serverFromString, and build their OpenSSL context only when first asked.
    options = getattr(endpoint, "_sslContextFactory", None)
    if isinstance(endpoint, SSL4ServerEndpoint) and isinstance(options, CertificateOptions):
        return options
    return None


def negotiateProtocols(endpoint: IStreamServerEndpoint, protocols: Sequence[bytes] = ()) -> None:
    """
    Make an C{ssl:} server endpoint settle the application protocol a client
    offers in its TLS handshake (ALPN, RFC 7301) the way its port can keep:
    the first of C{protocols} (a port's C{alpn}: C{http/1.1} on a WebSocket
    or Server-Sent Events port and the monitor) that the client offers, or
    none, the handshake going on as with a server that has no ALPN.

    Left to Twisted, the handshake of a client that offers protocols fails
    (an "internal error" alert) whenever the port's factory names none of
    them: with Twisted 26, on a factory that names none, every browser and
    C{curl} (C{h2}, C{http/1.1}) to every port.  A factory that names some
    (a web L{Site}) is no better with older Twisted and a recent pyOpenSSL,
    which refuses Twisted's per-connection change of the shared context.
    So no port's factory names its protocols to Twisted (a L{Site} hidden
    behind the port's wrapper); each port's context chooses them here.

    Call it before the endpoint listens, after L{requireClientCertificates}:
    it builds the endpoint's OpenSSL context.  Any other endpoint is left
    as it is.
    """
    options = _sslOptions(endpoint)
    if options is None:
        return
    ours = tuple(protocols)

    def select(connection: Connection, offered: list[bytes]) -> Any:
        for protocol in ours:
            if protocol in offered:
                return protocol
        return NO_OVERLAPPING_PROTOCOLS

    options.getContext().set_alpn_select_callback(select)


def requireClientCertificates(endpoint: IStreamServerEndpoint,
                              authorities: Sequence[Certificate]) -> None:
    """
    Make an C{ssl:} server endpoint require every client to present a
    certificate signed by one of C{authorities}: the TLS handshake of a
    client without one fails, and its connection is closed.

    Call it before the endpoint listens.

    @param endpoint: what C{serverFromString} made of an C{ssl:} description.
    @raise TypeError: C{endpoint} is not such an endpoint.
    """
    options = _sslOptions(endpoint)
    if options is None:
        raise TypeError(f"client certificates need an ssl: server endpoint, not {endpoint!r}")
    options.trustRoot = trustRootFromCertificates(list(authorities))
    options.verify = True
    options.requireCertificate = True
