"""
A listening port as a service: listen on start, refuse clearly when the
address is taken, and on stop close every client, not only the port.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from backplane.config import ConfigError
from backplane.protocols import BackplaneFactory, describePeer


class ListenService(Service):
    """
    Serves a L{BackplaneFactory} on a server endpoint.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    port that cannot listen (an address in use, a permission denied) makes
    C{startService} raise a L{ConfigError} naming the entry, and
    C{stopService} also closes the connections of the clients, giving them
    C{close_timeout} seconds to take what is still pending for them.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: BackplaneFactory, *,
                 description: str, where: str | None = None, path: str | None = None,
                 close_timeout: float = 5.0, clock: IReactorTime | None = None) -> None:
        """
        @param description: the endpoint as the user wrote it, for messages.
        @param where: the config entry, e.g. C{listen[2]}, for messages.
        @param path: the config file, for messages.
        """
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.where = where
        self.path = path
        self.closeTimeout = close_timeout
        self.clock = clock
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        results: list[IListeningPort | Failure] = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addBoth(results.append)
        if not results:  # an endpoint that listens asynchronously
            self._listening.addCallback(self._listened)
            return
        if isinstance(results[0], Failure):
            self._listening = None
            raise self._cannotListen(results[0])
        self._listened(results[0])

    def _listened(self, port: object) -> None:
        if isinstance(port, Failure):
            self.log.critical("{error}", error=str(self._cannotListen(port)))
            return
        self.port = listening = IListeningPort(port)
        self.log.info("{where} listening on {address}", where=self.where or "port",
                      address=describePeer(listening.getHost()))

    def _cannotListen(self, failure: Failure) -> ConfigError:
        reason = getattr(failure.value, "socketError", None) or failure.value
        reason = getattr(reason, "strerror", None) or str(reason)
        return ConfigError(f"cannot listen on {self.description!r}: {reason}",
                           path=self.path, where=f"{self.where}.endpoint" if self.where else None)

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, then close every client's connection.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        port, self.port, self._listening = self.port, None, None
        if port is not None:
            await maybeDeferred(port.stopListening)
        if not self.factory.protocols:
            return
        clock: Any = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        timer = clock.callLater(self.closeTimeout, self.factory.abortAll)
        try:
            await self.factory.disconnectAll()
        finally:
            if timer.active():
                timer.cancel()
