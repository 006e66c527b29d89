"""
Build the service a validated L{Config} describes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorUDP

from backplane._types import IBackplaneReactor, defaultReactor
from backplane.budget import PendingBudget, UnfinishedBudget
from backplane.config import BackplaneEntry, Config, ListenEntry, readConfig
from backplane.errors import ConfigError
from backplane.history import DiskStore, History, MemoryHistory, StoreError
from backplane.ports import ListenService
from backplane.protocols import BackplaneFactory
from backplane.relay import RelayFactory, RelayService
from backplane.service import BackplaneService
from backplane.sinks import FileSink
from backplane.sources import TimeSource

if TYPE_CHECKING:
    from backplane.auth.authority import Authority


def loadConfig(path: str | Path, reactor: IBackplaneReactor | None = None) -> BackplaneService:
    """
    Parse a config file into a service: read and validate it
    (L{readConfig<backplane.config.readConfig>}), then build the
    L{BackplaneService} it describes (L{buildService}), ready to start.

    @raise ConfigError: anything wrong with the file.
    """
    return buildService(readConfig(path), reactor=reactor)


def buildService(config: Config, reactor: IBackplaneReactor | None = None) -> BackplaneService:
    """
    The L{BackplaneService} that C{config} describes, with every port,
    source, sink and relay as a child service named after its entry (e.g.
    C{listen[2]}), ready to start.

    Children are added so that stopping (last added first, one after the
    other) stops the inputs before it closes the outputs: ports, then
    clocks, then relays, then the Redis bridge, then file sinks, and the
    monitor (added first) last of all, so that it reports to the end.
    """
    reactor = defaultReactor(reactor)
    limits = config.limits
    service = BackplaneService(budget=PendingBudget(limits.max_pending_total),
                               unfinished=UnfinishedBudget(limits.max_unfinished_total))
    authority = _authorities(config, reactor)

    def add(child: IService, table: str, i: int) -> None:
        child.setName(f"{table}[{i}]")
        child.setServiceParent(service)

    for entry in config.backplanes.values():
        service.create(entry.name, retain=entry.retain,
                       history=_history(entry, reactor, config.path))
    if config.monitor is not None:
        from backplane.monitor import MonitorService

        monitor = MonitorService(
            service, endpoints.serverFromString(reactor, config.monitor.endpoint),
            description=config.monitor.endpoint, where="monitor", path=config.path,
            allow=config.monitor.allow, tail=config.monitor.tail,
            max_tails=config.monitor.max_tails, clock=reactor,
            authority=authority() if config.monitor.auth else None,
            hosts=config.monitor.hosts, max_clients=config.monitor.max_clients)
        monitor.setName("monitor")
        monitor.setServiceParent(service)
    for i, sink in enumerate(config.file, 1):
        add(FileSink(service.get(sink.subscribe_to), sink.path,
                     flush_interval=sink.flush_interval, fsync=sink.fsync,
                     rotate_bytes=sink.rotate_bytes, max_files=sink.max_files, clock=reactor),
            "file", i)
    if config.redis is not None and config.shared:
        # Imported only when used: txredisapi is not needed otherwise.
        from backplane.redis.bridge import RedisBridge

        redis = config.redis
        bridge = RedisBridge(service, redis.url, names=config.shared, prefix=redis.prefix,
                             initial_delay=redis.initial_delay, max_delay=redis.max_delay,
                             queue=redis.queue, timeout=redis.timeout, reactor=reactor)
        bridge.setName("redis")
        bridge.setServiceParent(service)
    for i, connect in enumerate(config.connect, 1):
        try:
            relay = RelayFactory(
                service, connect.publish_to, subscribe_to=connect.subscribe_to,
                buffer=connect.buffer, idle_timeout=connect.idle_timeout,
                initial_delay=connect.initial_delay, max_delay=connect.max_delay,
                max_line_length=connect.max_line_length, clock=reactor, resume=connect.resume,
                acks=connect.acks, spool=connect.spool, spool_bytes=connect.spool_bytes,
                spool_fsync_interval=connect.spool_fsync_interval,
            )
        except StoreError as e:
            raise ConfigError(str(e), path=config.path, where=f"connect[{i}].spool") from None
        add(RelayService(endpoints.clientFromString(reactor, connect.endpoint), relay,
                         description=connect.endpoint, clock=reactor), "connect", i)
    for i, clock in enumerate(config.clock, 1):
        add(TimeSource(service.get(clock.publish_to), clock.interval, clock=reactor), "clock", i)
    for i, listen in enumerate(config.listen, 1):
        if listen.udp:
            add(_datagramService(service, listen, reactor, f"listen[{i}]", config.path),
                "listen", i)
            continue
        factory = _factory(service, listen, reactor, authority() if listen.auth else None)
        endpoint = endpoints.serverFromString(reactor, listen.description)
        if listen.tls_client_ca is not None:
            _requireClientCertificates(endpoint, listen.tls_client_ca, config.path, i)
        add(ListenService(endpoint, factory, description=listen.endpoint, where=f"listen[{i}]",
                          path=config.path, clock=reactor, protocol=listen.protocol),
            "listen", i)
    return service


def _datagramService(service: BackplaneService, listen: ListenEntry,
                     reactor: IBackplaneReactor, where: str, configPath: str) -> IService:
    """
    The service of a C{udp:} port.
    """
    from backplane.datagram import DatagramReader, DatagramService, parseUDP

    assert listen.publish_to is not None
    reader = DatagramReader(service.get(listen.publish_to), listen.limits, clock=reactor)
    return DatagramService(cast(IReactorUDP, reactor), parseUDP(listen.endpoint), reader,
                           description=listen.endpoint, where=where, path=configPath)


def _history(entry: BackplaneEntry, reactor: IBackplaneReactor,
             configPath: str) -> History | None:
    """
    The history a C{[backplane.NAME]} entry asks for: in memory, on disk,
    or none.
    """

    if entry.store is not None:
        try:
            return DiskStore.open(entry.store, maxBytes=entry.store_bytes,
                                  maxMessages=entry.history or None,
                                  fsyncInterval=entry.fsync_interval, clock=reactor)
        except StoreError as e:
            raise ConfigError(str(e), path=configPath,
                              where=f"backplane.{entry.name}.store") from None
    if entry.history:
        return MemoryHistory(entry.history, maxBytes=entry.history_bytes)
    return None


def _authorities(config: Config, reactor: IBackplaneReactor) -> Callable[[], Authority]:
    """
    What makes the authority of each port (and of the monitor) with C{auth =
    true}: all share the users and the verifier of signed tokens, read once
    (and only if some port asks), and each counts its own decisions.
    """
    shared: list[Authority] = []

    def authority() -> Authority:
        from backplane.auth.authority import Authority
        from backplane.auth.signed import KeyFileError

        if not shared:
            try:
                shared.append(Authority.fromConfig(config, clock=reactor))
            except KeyFileError as e:
                # read_config has checked it already; the file may have gone since.
                raise ConfigError(str(e), path=config.path, where="auth.jwt_key_file") from None
        return Authority(shared[0].users, shared[0].jwt)

    return authority


def _requireClientCertificates(endpoint: Any, path: str, configPath: str, i: int) -> None:
    from backplane.tls import loadCertificates, requireClientCertificates

    # read_config has checked this already; the file may have gone since.
    try:
        requireClientCertificates(endpoint, loadCertificates(path))
    except Exception as e:
        raise ConfigError(f"cannot use {path!r}: {e}", path=configPath,
                          where=f"listen[{i}].tls_client_ca") from None


def _factory(service: BackplaneService, listen: ListenEntry, reactor: IBackplaneReactor,
             authority: Authority | None = None) -> BackplaneFactory:
    """
    The factory of a C{[[listen]]} port, with its authority if it has
    C{auth = true}.
    """
    if listen.ids and listen.protocol == "lines":
        from backplane.resume import ResumingFactory

        return ResumingFactory(service, subscribe_to=listen.subscribe_to, limits=listen.limits,
                               authority=authority, clock=reactor)
    if listen.acks:
        from backplane.acks import AckingFactory

        return AckingFactory(service, publish_to=listen.publish_to, limits=listen.limits,
                             ack_lines=listen.ack_lines, ack_interval=listen.ack_interval,
                             authority=authority, clock=reactor)
    if listen.protocol == "redis":
        from backplane.redis.server import RedisFactory

        assert listen.backplanes is not None
        return RedisFactory(service, backplanes=listen.backplanes,
                            max_backplanes=listen.max_backplanes,
                            max_request=listen.max_request, limits=listen.limits,
                            authority=authority, clock=reactor)
    if listen.protocol == "sse":
        from backplane.sse import SSEFactory

        return SSEFactory(service, subscribe_to=listen.subscribe_to, limits=listen.limits,
                          clock=reactor, origins=listen.origins, authority=authority,
                          backplanes=listen.backplanes, max_backplanes=listen.max_backplanes)
    if listen.protocol == "websocket":
        # Imported only when used: autobahn is big.
        from backplane.websocket import WebSocketFactory

        return WebSocketFactory(service, publish_to=listen.publish_to,
                                subscribe_to=listen.subscribe_to, limits=listen.limits,
                                ids=listen.ids, origins=listen.origins, authority=authority,
                                clock=reactor, backplanes=listen.backplanes,
                                max_backplanes=listen.max_backplanes)
    return _factoryType(listen.protocol)(
        service, publish_to=listen.publish_to, subscribe_to=listen.subscribe_to,
        limits=listen.limits, authority=authority, clock=reactor)


def _factoryType(protocol: str) -> type[BackplaneFactory]:
    """
    The factory of a C{[[listen]]} port whose clients speak C{protocol}.
    """
    if protocol == "websocket":
        # Imported only when used: autobahn is big.
        from backplane.websocket import WebSocketFactory

        return WebSocketFactory
    return BackplaneFactory


#: Aliases, the spellings of earlier releases.
load_config = loadConfig
build_service = buildService
