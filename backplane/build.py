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
    input before it closes the outputs: ports, then clocks, then sinks, and
    the monitor (added first) last of all, so that it reports to the end.
    """
    if reactor is None:
        from twisted.internet import reactor
    service = BackplaneService()
    for entry in config.backplanes.values():
        service.create(entry.name, retain=entry.retain)
    if config.monitor is not None:
        from backplane.monitor import MonitorService

        monitor = MonitorService(
            service, endpoints.serverFromString(reactor, config.monitor.endpoint),
            description=config.monitor.endpoint, where="monitor", path=config.path,
            allow=config.monitor.allow, clock=reactor)
        monitor.setName("monitor")
        monitor.setServiceParent(service)
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
        endpoint = endpoints.serverFromString(reactor, listen.description)
        if listen.tls_client_ca is not None:
            _requireClientCertificates(endpoint, listen.tls_client_ca, config.path, i)
        port = ListenService(endpoint, factory,
                             description=listen.endpoint, where=f"listen[{i}]",
                             path=config.path, clock=reactor)
        port.setName(f"listen[{i}]")
        port.setServiceParent(service)
    return service


def _requireClientCertificates(endpoint: Any, path: str, configPath: str, i: int) -> None:
    from backplane.tls import loadCertificates, requireClientCertificates

    # read_config has checked this already; the file may have gone since.
    try:
        requireClientCertificates(endpoint, loadCertificates(path))
    except Exception as e:
        raise ConfigError(f"cannot use {path!r}: {e}", path=configPath,
                          where=f"listen[{i}].tls_client_ca") from None
