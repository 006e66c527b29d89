"""
The time server, composed by hand in a Twisted application (no twistd):
backplane TIME, a clock publishing time.asctime() each second, served to every
client of tcp:1500 on 127.0.0.1, and a port 1501 whose clients publish to it.

    python docs/examples/compose.py
    nc localhost 1500

It prints what it serves and how to try it, then runs until Ctrl-C.
"""

import time

from twisted.internet import endpoints, reactor, task

from backplane import BackplaneService, PublishToFactory, SubscribeToFactory


def main() -> None:
    service = BackplaneService()
    clock = service.create("TIME")
    endpoints.serverFromString(reactor, "tcp:1500:interface=127.0.0.1").listen(
        SubscribeToFactory(service, "TIME")
    )
    endpoints.serverFromString(reactor, "tcp:1501:interface=127.0.0.1").listen(
        PublishToFactory(service, "TIME")
    )
    task.LoopingCall(lambda: clock.publish(time.asctime().encode())).start(1.0)
    service.startService()
    print("backplane TIME: the time on 127.0.0.1:1500 (try: nc localhost 1500); "
          "lines sent to 127.0.0.1:1501 are published to it (nc localhost 1501). Ctrl-C stops.",
          flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
