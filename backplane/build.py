"""
Build the service a validated L{Config} describes.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints

from backplane.config import Config
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory
from backplane.relay import RelayFactory, RelayService
from backplane.service import BackplaneService
from backplane.sinks import FileSink
from backplane.sources import TimeSource


def build_service(config: Config, reactor: Any = None) -> BackplaneService:
    """
    The L{BackplaneService} that C{config} describes, with every port,
    source, sink and relay as a child service named after its entry (e.g.
    C{listen[2]}), ready to start.

    Children are added so that stopping (last added first, one after the
    other) stops the inputs before it closes the outputs: ports, then
    clocks, then relays, then file sinks.
    """
    if reactor is None:
        from twisted.internet import reactor
    service = BackplaneService()

    def add(child: IService, table: str, i: int) -> None:
        child.setName(f"{table}[{i}]")
        child.setServiceParent(service)

    for entry in config.backplanes.values():
        service.create(entry.name, retain=entry.retain)
    for i, sink in enumerate(config.file, 1):
        add(FileSink(service.get(sink.subscribe_to), sink.path,
                     flush_interval=sink.flush_interval, fsync=sink.fsync,
                     rotate_bytes=sink.rotate_bytes, max_files=sink.max_files, clock=reactor),
            "file", i)
    for i, connect in enumerate(config.connect, 1):
        relay = RelayFactory(
            service, connect.publish_to, subscribe_to=connect.subscribe_to,
            buffer=connect.buffer, idle_timeout=connect.idle_timeout,
            initial_delay=connect.initial_delay, max_delay=connect.max_delay,
            max_line_length=connect.max_line_length, clock=reactor,
        )
        add(RelayService(endpoints.clientFromString(reactor, connect.endpoint), relay,
                         description=connect.endpoint, clock=reactor), "connect", i)
    for i, clock in enumerate(config.clock, 1):
        add(TimeSource(service.get(clock.publish_to), clock.interval, clock=reactor), "clock", i)
    for i, listen in enumerate(config.listen, 1):
        factory = _factoryType(listen.protocol)(
            service, publish_to=listen.publish_to, subscribe_to=listen.subscribe_to,
            limits=listen.limits)
        add(ListenService(endpoints.serverFromString(reactor, listen.description), factory,
                          description=listen.endpoint, where=f"listen[{i}]",
                          path=config.path, clock=reactor), "listen", i)
    return service


def _factoryType(protocol: str) -> type[BackplaneFactory]:
    """
    The factory of a C{[[listen]]} port whose clients speak C{protocol}.
    """
    if protocol == "websocket":
        # Imported only when used: autobahn is big.
        from backplane.websocket import WebSocketFactory

        return WebSocketFactory
    return BackplaneFactory
