"""
The backplane benchmark: C{python -m bench fanout}, C{stalled}, C{nodes}
(two nodes sharing a backplane through Redis), C{websocket} (WebSocket
beside line subscribers) and C{history} (backplanes that keep a history:
fan-out, a replay beside live subscribers, memory); see docs/performance.md.

It starts a real C{twistd backplane} process and, where C{redis-server} is
on PATH, a private Redis, pins them away from its own load generator, drives
them over loopback and reports delivered msgs/s, server CPU per delivery,
latency and loss.  Self-contained: Python and the standard library, plus
matplotlib for the plot.
"""
