"""
The Redis bridge's former home, kept so that C{from backplane.bridge import
RedisBridge} (as older docs show) goes on working.

The bridge lives in L{backplane.redis}: L{backplane.redis.bridge} (the
service), L{backplane.redis.wire} (the wire format), L{backplane.redis.link}
(the connections) and L{backplane.redis.address} (C{redis://} URLs).
"""

from backplane.redis.bridge import BridgeStats, RedisBridge

__all__ = ["BridgeStats", "RedisBridge"]
