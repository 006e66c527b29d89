"""
backplane: distribute lines of data from many sources to many destinations
through named backplanes, the Twisted form of Kamaelia's Backplane.
"""

from backplane.protocols import (
    PublishTo,
    PublishToFactory,
    SubscribeTo,
    SubscribeToFactory,
)
from backplane.relay import RelayFactory
from backplane.service import Backplane, BackplaneService
from backplane.sinks import FileSink

__all__ = [
    "Backplane",
    "BackplaneService",
    "FileSink",
    "PublishTo",
    "PublishToFactory",
    "RelayFactory",
    "SubscribeTo",
    "SubscribeToFactory",
]
