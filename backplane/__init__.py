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

__all__ = [
    "Backplane",
    "BackplaneService",
    "PublishTo",
    "PublishToFactory",
    "RelayFactory",
    "SubscribeTo",
    "SubscribeToFactory",
]
