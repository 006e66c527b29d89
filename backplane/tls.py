"""
Mutual TLS for ports: requiring a client certificate on an C{ssl:} port,
which Twisted's C{ssl:} endpoint description cannot ask for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
    # SSL4ServerEndpoint keeps its context factory in a private attribute,
    # the only way to it: an ssl: description has no parameter for a trust
    # root.  The options are the endpoint's own, built by serverFromString,
    # and build their OpenSSL context only at the first connection.
    options = getattr(endpoint, "_sslContextFactory", None)
    if not isinstance(endpoint, SSL4ServerEndpoint) or not isinstance(options,
                                                                       CertificateOptions):
        raise TypeError(f"client certificates need an ssl: server endpoint, not {endpoint!r}")
    options.trustRoot = trustRootFromCertificates(list(authorities))
    options.verify = True
    options.requireCertificate = True
