"""
Build the service a validated L{Config} describes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints

from backplane.config import Config, ConfigError
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory
from backplane.service import BackplaneService
from backplane.sources import TimeSource


def build_service(config: Config, reactor: Any = None) -> BackplaneService:
    """
    The L{BackplaneService} that C{config} describes, with every port,
    source, sink and relay as a child service, ready to start.

    Children are added so that stopping (last added first) stops accepting
    input before it closes the outputs: ports, then clocks, then sinks.
    """
    if reactor is None:
        from twisted.internet import reactor
    service = BackplaneService()
    for entry in config.backplanes.values():
        service.create(entry.name, retain=entry.retain)
    for table in ("connect", "file"):
        if getattr(config, table):
            raise ConfigError(f"[[{table}]] is not supported by this version yet",
                              path=config.path, where=f"{table}[1]")
    for i, clock in enumerate(config.clock, 1):
        source = TimeSource(service.get(clock.publish_to), clock.interval, clock=reactor)
        source.setName(f"clock[{i}]")
        source.setServiceParent(service)
    for i, listen in enumerate(config.listen, 1):
        factory = BackplaneFactory(service, publish_to=listen.publish_to,
                                   subscribe_to=listen.subscribe_to, limits=listen.limits)
        port = ListenService(endpoints.serverFromString(reactor, listen.description), factory,
                             description=listen.endpoint, where=f"listen[{i}]",
                             path=config.path, clock=reactor)
        port.setName(f"listen[{i}]")
        port.setServiceParent(service)
    return service
