"""
What a port checks when a client connects (SPEC section 11): a L{Gate}
holds a port's L{Authority} (if it has C{auth = true}), its C{origins} (if
web pages reach it) and the backplanes it serves, and decides, counts and
logs in one place, whatever the clients speak.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from backplane.auth.authority import AccessCounters, Authority
from backplane.auth.identity import AccessDenied, Identity
from backplane.auth.origins import checkOrigin

#: Seconds a line client of an C{auth = true} port has to send its C{AUTH}
#: line (or to complete its TLS handshake and then send it) before it is
#: refused.
AUTH_TIMEOUT = 10.0


class Gate:
    """
    The access checks of one port.

    With no L{Authority} (C{auth} off), L{admit} lets everyone in, as
    before; a web port still checks the C{Origin} of its requests
    (L{checkOrigin}).  Every refusal is counted in L{counters} (by reason)
    and logged with the client's address, never with its token.

    @ivar authority: decides who a client is and what it may do, or L{None}
        on a port without C{auth}.
    @ivar publish: the backplane the port's clients publish to, if any.
    @ivar subscribe: the backplane they subscribe to, if any.
    @ivar origins: the port's C{origins} (web ports), or L{None}.
    @ivar web: whether browsers reach the port (it checks origins).
    @ivar counters: what was decided (the authority's own, when there is
        one).
    @ivar timeout: seconds a line client has to send C{AUTH}.
    """

    log = Logger()

    def __init__(self, authority: Authority | None = None, *, publish: str | None = None,
                 subscribe: str | None = None, origins: tuple[str, ...] | None = None,
                 web: bool = False, clock: IReactorTime | None = None,
                 timeout: float = AUTH_TIMEOUT) -> None:
        self.authority = authority
        self.publish = publish
        self.subscribe = subscribe
        self.origins = origins
        self.web = web
        self.counters = authority.counters if authority is not None else AccessCounters()
        self.clock = clock
        self.timeout = timeout

    @property
    def auth(self) -> bool:
        """
        Whether clients must present a token (or a certificate that names a
        user).
        """
        return self.authority is not None

    @property
    def checks(self) -> bool:
        """
        Whether this gate checks anything (and so has counters worth
        reporting): C{auth} is on, or browsers reach the port.
        """
        return self.authority is not None or self.web

    def checkOrigin(self, origin: str | None, host: str | None, scheme: str, *,
                    peer: str = "?") -> None:
        """
        Check the C{Origin} of a web request against its C{Host} and the
        port's C{origins} (L{backplane.auth.origins.originAllowed}).

        @raise AccessDenied: (403, code C{"origin"}) it may not connect;
            counted and logged.
        """
        try:
            checkOrigin(origin, host, self.origins, scheme)
        except AccessDenied as denied:
            self.refused(denied, peer=peer)
            raise

    def admit(self, token: str | bytes | None, *, commonName: str | None = None,
              peer: str = "?") -> Identity | None:
        """
        Who a client is, and check that it may use the port's backplanes.

        A client without a token whose TLS certificate's subject common name
        (C{commonName}) is a user's C{cert} is that user.

        @return: its identity, or L{None} if the port has no C{auth} (then
            everyone is let in).
        @raise AccessDenied: (401) no token, or one not accepted; (403) one
            that does not allow the port's backplanes.  Counted and logged.
        """
        authority = self.authority
        if authority is None:
            return None
        if not token and commonName and authority.users.fromCertificate(commonName) is not None:
            identity = authority.identifyCertificate(commonName, peer=peer)
        else:
            identity = authority.identify(token, peer=peer)
        authority.authorize(identity, publish=self.publish, subscribe=self.subscribe, peer=peer)
        return identity

    def certificate(self, commonName: str | None, *, peer: str = "?") -> Identity | None:
        """
        The identity a TLS client certificate gives by itself: the user whose
        C{cert} its subject common name is, checked against the port's
        backplanes; or L{None} if no user has it (the client must then
        present a token: nothing is counted yet).

        @raise AccessDenied: (403) the user may not use the port's
            backplanes; counted and logged.
        """
        authority = self.authority
        if authority is None or not commonName \
                or authority.users.fromCertificate(commonName) is None:
            return None
        identity = authority.identifyCertificate(commonName, peer=peer)
        authority.authorize(identity, publish=self.publish, subscribe=self.subscribe, peer=peer)
        return identity

    def authorize(self, identity: Identity | None, *, publish: str | bytes | None = None,
                  subscribe: str | bytes | None = None, peer: str = "?") -> None:
        """
        Check that an admitted client may use another backplane than the
        port's own (the monitor's live tail of a backplane, say).  Nothing is
        checked for L{None}, a client of a port without C{auth}.

        @raise AccessDenied: (403) it may not; counted and logged.
        """
        if identity is not None and self.authority is not None:
            self.authority.authorize(identity, publish=publish, subscribe=subscribe, peer=peer)

    def refused(self, denied: AccessDenied, *, peer: str = "?") -> None:
        """
        Count and log a refusal that the authority did not decide itself (an
        origin, a malformed or missing C{AUTH} line, a client that took too
        long).
        """
        self.counters.refuse(denied.code)
        self.log.info("Refused {peer} ({status}): {reason}", peer=peer, status=denied.status,
                      reason=denied.reason, code=denied.code)
