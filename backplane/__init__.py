"""
backplane: distribute lines of data from many sources to many destinations
through named backplanes, the Twisted form of Kamaelia's Backplane.

The public names (SPEC section 3) are imported from here; each is loaded from
its module on first use, so that C{import backplane.service} (the core) does
not import the config, endpoints, the Redis bridge or the WebSocket port.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from backplane._version import __version__

if TYPE_CHECKING:
    from backplane.build import loadConfig
    from backplane.errors import ConfigError
    from backplane.protocols import (
        PublishTo,
        PublishToFactory,
        SubscribeTo,
        SubscribeToFactory,
    )
    from backplane.relay import RelayFactory
    from backplane.service import Backplane, BackplaneService
    from backplane.sinks import FileSink
    from backplane.sources import TimeSource

    load_config = loadConfig

_WHERE = {
    "Backplane": "backplane.service",
    "BackplaneService": "backplane.service",
    "ConfigError": "backplane.errors",
    "FileSink": "backplane.sinks",
    "PublishTo": "backplane.protocols",
    "PublishToFactory": "backplane.protocols",
    "RelayFactory": "backplane.relay",
    "SubscribeTo": "backplane.protocols",
    "SubscribeToFactory": "backplane.protocols",
    "TimeSource": "backplane.sources",
    "loadConfig": "backplane.build",
    "load_config": "backplane.build",
}

__all__ = [
    "Backplane",
    "BackplaneService",
    "ConfigError",
    "FileSink",
    "PublishTo",
    "PublishToFactory",
    "RelayFactory",
    "SubscribeTo",
    "SubscribeToFactory",
    "TimeSource",
    "__version__",
    "loadConfig",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'backplane' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
