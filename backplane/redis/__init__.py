"""
Redis: the bridge that shares backplanes between nodes through a Redis
server's pub/sub.

  - L{backplane.redis.address}: C{redis://} URLs;
  - L{backplane.redis.wire}: the wire format, bytes to bytes;
  - L{backplane.redis.link}: the connections, each kept up by a
    L{ClientService<twisted.application.internet.ClientService>};
  - L{backplane.redis.bridge}: L{RedisBridge<backplane.redis.bridge.RedisBridge>},
    the service.

Importing this package, C{address} or C{wire} imports no Redis client; only
C{link} and C{bridge} import txredisapi.
"""
