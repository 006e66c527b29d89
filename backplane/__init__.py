"""
backplane: distribute lines of data from many sources to many destinations
through named backplanes, the Twisted form of Kamaelia's Backplane.
"""

from backplane.config import ConfigError, load_config
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
    "load_config",
]
