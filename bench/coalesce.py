"""
C{python -m bench coalesce}: the server's own CPU per delivery, in-process,
with and without C{linger}, where the generator cannot blur it.

A backplane and a subscribe port (a L{SubscribeToFactory} on 127.0.0.1,
Twisted's reactor) with S real TCP subscribers, which this process reads
itself between rounds, outside the time measured.  A round publishes K
chunks of one 64-byte message each (as a fixed-rate publisher's lines
arrive, one a read) with C{publishLines}, then has the port's L{Linger}
write what its subscribers hold (as its timer would); the thread's CPU time
of the round (C{time.thread_time_ns}: Python and the kernel's C{send}s,
loopback included) over S x K deliveries.  Beside each, its floor: one
C{send} of the K messages to each subscriber's socket, with none of
backplane's work, which no C{linger} can go below.  Also a tick: one
message to many idle subscribers, per subscriber.  Prints the median and the quartiles of
the rounds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock

from backplane.protocols import Limits, SubscribeToFactory
from backplane.service import BackplaneService
from bench.report import render, significant

LINGER = 0.001
MESSAGE = b"M" + b"x" * 62 + b"\n"
# (subscribers, chunks a round) of the linger runs, and the subscribers of
# the tick; rounds of each; --quick divides the rounds and the tick's
# subscribers.
RUNS = ((100, 1), (100, 10), (100, 30))
TICK_SUBSCRIBERS = 2000
ROUNDS = 200
QUICK_DIVISOR = 10


def addParser(commands: Any) -> None:
    """
    Add the C{coalesce} command to the subcommands of C{python -m bench}.
    """
    coalesce = commands.add_parser(
        "coalesce", help="in-process: server CPU per delivery with and without linger, and "
                         "a tick to many idle subscribers")
    coalesce.add_argument("--quick", action="store_true",
                          help="a smoke run: a tenth of the rounds, 200 idle subscribers")


class Port:
    """
    A subscribe port of a fresh backplane with C{subscribers} connected
    TCP subscribers, read by this process.
    """

    def __init__(self, subscribers: int, linger: float) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        service = BackplaneService()
        self.backplane = service.create("B")
        # The port's time stands still (its handshake timers never fire):
        # every round is within one linger of the last flush, as under
        # steady traffic, so its chunks are held until publishRound flushes.
        self.factory = SubscribeToFactory(service, "B", limits=Limits(linger=linger),
                                          clock=Clock())
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1", backlog=4096)
        port = self.listening.getHost().port
        self.clients: list[socket.socket] = []
        for _ in range(subscribers):
            self.clients.append(socket.create_connection(("127.0.0.1", port)))
            reactor.iterate(0)
        deadline = time.monotonic() + 30
        while len(self.factory.protocols) < subscribers and time.monotonic() < deadline:
            reactor.iterate(0.01)
        if len(self.factory.protocols) < subscribers:
            raise RuntimeError("the subscribers did not all connect")
        for client in self.clients:
            client.setblocking(False)

    def drain(self) -> int:
        """
        Read everything the subscribers were sent; how many bytes.
        """
        total = 0
        for client in self.clients:
            try:
                while data := client.recv(1 << 20):
                    total += len(data)
            except BlockingIOError:
                pass
        return total

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.listening.stopListening()
        for _ in range(100):
            self.reactor.iterate(0)


def measure(port: Port, round_: Callable[[], None], deliveries: int,
            rounds: int) -> dict[str, float]:
    """
    CPU µs a delivery over C{rounds} rounds: median, quartiles.
    """
    samples = []
    for _ in range(rounds):
        port.drain()
        start = time.thread_time_ns()
        round_()
        samples.append((time.thread_time_ns() - start) / deliveries / 1000)
    quartiles = statistics.quantiles(samples, n=4)
    return {"median": statistics.median(samples), "q1": quartiles[0], "q3": quartiles[2]}


def publishRound(port: Port, chunks: int) -> None:
    """
    Publish C{chunks} chunks of one message, then have the port's L{Linger}
    (if it has one) write what its subscribers hold, as its timer would.
    """
    publishLines = port.backplane.publishLines
    for _ in range(chunks):
        publishLines(MESSAGE, 1)
    if port.factory.linger is not None:
        port.factory.linger.flush()


def sendRound(port: Port, chunks: int) -> None:
    """
    The floor of a round under C{linger}: what the kernel's C{send} alone
    costs, one C{send} of the round's C{chunks} messages to each subscriber
    straight on its socket, with none of backplane's work.
    """
    data = MESSAGE * chunks
    for protocol in port.factory.protocols:
        protocol.transport.getHandle().send(data)  # type: ignore[attr-defined]


def run(arguments: argparse.Namespace) -> int:
    """
    Run every measurement and print the table.
    """
    divisor = QUICK_DIVISOR if arguments.quick else 1
    rounds = ROUNDS // divisor
    rows = []
    for subscribers, chunks in RUNS:
        for linger in (0.0, LINGER):
            port = Port(subscribers, linger)
            figures = measure(port, lambda port=port, chunks=chunks: publishRound(port, chunks),
                              subscribers * chunks, rounds)
            # The last round's messages, every one to every subscriber.
            received, expected = port.drain(), subscribers * chunks * len(MESSAGE)
            port.close()
            rows.append([f"{chunks} one-message chunks", str(subscribers), f"{linger:g}",
                         *(significant(figures[k]) for k in ("median", "q1", "q3")),
                         "ok" if received == expected else f"{received} of {expected} bytes"])
        port = Port(subscribers, 0.0)
        figures = measure(port, lambda port=port, chunks=chunks: sendRound(port, chunks),
                          subscribers * chunks, rounds)
        received, expected = port.drain(), subscribers * chunks * len(MESSAGE)
        port.close()
        rows.append([f"{chunks} messages, one send() (floor)", str(subscribers), "-",
                     *(significant(figures[k]) for k in ("median", "q1", "q3")),
                     "ok" if received == expected else f"{received} of {expected} bytes"])
    subscribers = TICK_SUBSCRIBERS // divisor
    port = Port(subscribers, 0.0)
    figures = measure(port, lambda: port.backplane.publish(b"Thu Dec  3 15:05:29 2026"),
                      subscribers, max(3, rounds // 4))
    port.close()
    rows.append(["a tick to idle subscribers", str(subscribers), "0",
                 *(significant(figures[k]) for k in ("median", "q1", "q3")), "ok"])
    print(render(["what a round publishes", "S", "linger", "CPU µs/delivery", "q1", "q3",
                  "status"], rows))
    return 0
