"""
Redis: the bridge that shares backplanes between nodes through a Redis
server's pub/sub.  Importing this package imports no Redis client; the
modules that need one (txredisapi) are imported only where they are used.
"""
