"""
C{python -m bench fanout|sweep|stalled|nodes|websocket|history [options]}: run a
suite, print its tables, write its JSON file (and, for C{fanout} and C{sweep},
its plot).
C{python -m bench store}: the history store in-process (L{bench.store}).
C{python -m bench coalesce}: linger and a tick in-process (L{bench.coalesce}).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import signal
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from bench import coalesce, store
from bench.load import Placement
from bench.report import document, plot, sweep_plot, tables, write_json
from bench.servers import ServerError, nats_path, nats_version, redis_path, redis_version
from bench.suite import (
    HISTORY_SCENARIOS,
    PATTERNS,
    POLICIES,
    SCENARIOS,
    SWEEP_RATES,
    Options,
    Suite,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Each command's method of Suite, and the server processes it runs.
COMMANDS = {
    "fanout": ("fanout_suite", "backplane, Redis, NATS"),
    "sweep": ("sweep", "backplane, Redis, NATS"),
    "stalled": ("stalled", "backplane"),
    "nodes": ("nodes", "nodes A and B, their Redis, and the single node"),
    "websocket": ("websocket", "backplane"),
    "history": ("history_suite", "backplane"),
}


def parser() -> argparse.ArgumentParser:
    """
    The command line.
    """
    main = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the backplane server (a real twistd process) against Redis "
                    "over loopback. See docs/performance.md.",
    )
    commands = main.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true",
                        help="a smoke run: a twentieth of the messages, fewer idle subscribers")
    common.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="repeat each run N times, interleaved; report median and min..max")
    common.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where the JSON file and the plot go (default: bench/results/)")
    common.add_argument("--reactor", metavar="NAME",
                        help="twistd's reactor (-r), e.g. epoll, poll, select, asyncio "
                             "(default: twistd's default)")
    common.add_argument("--workers", type=int, metavar="N",
                        help="subscriber (or publisher) processes of the load generator "
                             "(default: one a generator CPU, at least 2)")
    common.add_argument("--window", type=int, default=10_000, metavar="N",
                        help="the most messages the publisher may be ahead of the slowest "
                             "subscriber, and the most un-acked PUBLISH commands "
                             "(default 10000)")
    fanout = commands.add_parser(
        "fanout", parents=[common],
        help="fan-out S = 1..1000, fixed-rate latency, fan-in, idle scale, fan-out over "
             "the Redis protocol (resp) and beside idle pattern subscriptions (patterns); "
             "backplane beside Redis",
    )
    fanout.add_argument("--only", action="append", choices=SCENARIOS, default=[],
                        help="run only this scenario (may be given more than once)")
    fanout.add_argument("--no-redis", action="store_true",
                        help="do not run Redis, even if redis-server is on PATH")
    fanout.add_argument("--no-nats", action="store_true",
                        help="do not run NATS, even if nats-server is on PATH")
    fanout.add_argument("--fanin-acks", action="store_true",
                        help="fanin: the publish port has acks = true (ACK N lines back)")
    fanout.add_argument("--fanin-store", action="store_true",
                        help="fanin: the backplane keeps a store (acks then wait for its fsyncs)")
    fanout.add_argument("--patterns", type=int, default=PATTERNS, metavar="N",
                        help="patterns: the idle pattern subscriptions (PSUBSCRIBE, 10 a "
                             f"client) beside the fan-out (default {PATTERNS})")
    sweep = commands.add_parser(
        "sweep", parents=[common],
        help="fixed rates (1k to 100k msgs/s) to 100 subscribers: backplane with linger 0 "
             "and 1 ms beside Redis and NATS; latency of every message, CPU, loss",
    )
    sweep.add_argument("--rates", type=_rates, default=SWEEP_RATES, metavar="R,R,...",
                       help="the rates, msgs/s (default: "
                            + ",".join(map(str, SWEEP_RATES)) + ")")
    sweep.add_argument("--no-redis", action="store_true",
                       help="do not run Redis, even if redis-server is on PATH")
    sweep.add_argument("--no-nats", action="store_true",
                       help="do not run NATS, even if nats-server is on PATH")
    stalled = commands.add_parser(
        "stalled", parents=[common],
        help="99 reading subscribers without and with one that never reads",
    )
    stalled.add_argument("--policy", choices=[*POLICIES, "both"], default="both",
                         help="the subscribe port's slow policy (default: both)")
    commands.add_parser(
        "nodes", parents=[common],
        help="two nodes sharing the backplane through Redis (S = 2x50, 2x500) beside one "
             "node; needs redis-server",
    )
    commands.add_parser(
        "websocket", parents=[common],
        help="1,000 WebSocket subscribers beside 1,000 line subscribers, then each alone",
    )
    history = commands.add_parser(
        "history", parents=[common],
        help="backplanes with a history: fan-out without / with a memory history / with a "
             "store, a replay of 1 M lines beside live subscribers, memory a kept line",
    )
    history.add_argument("--only", action="append", choices=list(HISTORY_SCENARIOS),
                         default=[],
                         help="run only this scenario (may be given more than once)")
    store.addParser(commands)
    coalesce.addParser(commands)
    return main


def main(argv: list[str] | None = None) -> int:
    """
    Run the command; return the exit status (1 if a server did not start,
    130 if interrupted by Ctrl-C or SIGTERM).
    """
    command_line = parser()
    arguments = command_line.parse_args(argv)
    if arguments.command == "store":
        return store.run(arguments)
    if arguments.command == "coalesce":
        return coalesce.run(arguments)
    if (arguments.repeat < 1 or arguments.window < 1 or (arguments.workers or 1) < 1
            or getattr(arguments, "patterns", 1) < 1):
        command_line.error("--repeat, --workers, --window and --patterns must be at least 1")
    redis = (arguments.command in ("fanout", "nodes", "sweep")
             and not getattr(arguments, "no_redis", False) and redis_path() is not None)
    nats = (arguments.command in ("fanout", "sweep") and not getattr(arguments, "no_nats", False)
            and nats_path() is not None)
    if arguments.command == "nodes" and not redis:
        print("bench nodes: needs redis-server on PATH (Debian: apt-get install redis-server)",
              file=sys.stderr)
        return 1
    _prepare()
    placement = Placement.choose()
    placement.pin_generator()
    options = Options(
        quick=arguments.quick,
        repeat=arguments.repeat,
        only=tuple(dict.fromkeys(getattr(arguments, "only", []))),
        reactor=arguments.reactor,
        redis=redis,
        workers=arguments.workers or max(2, len(placement.generator)),
        window=arguments.window,
        policies=POLICIES if getattr(arguments, "policy", "both") == "both"
        else (arguments.policy,),
        fanin_acks=getattr(arguments, "fanin_acks", False),
        fanin_store=getattr(arguments, "fanin_store", False),
        nats=nats,
        rates=getattr(arguments, "rates", SWEEP_RATES),
        patterns=getattr(arguments, "patterns", PATTERNS),
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = _meta(started, placement, options, arguments.command)
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        suite = Suite(options, Path(folder), placement)
        try:
            getattr(suite, COMMANDS[arguments.command][0])()
        except ServerError as e:
            print(f"bench: a server did not start: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; every server and generator process is stopped",
                  file=sys.stderr)
            return 130
    data = document(meta, suite.runs, suite.skipped)
    print(tables(data))
    arguments.out.mkdir(parents=True, exist_ok=True)
    stem = arguments.out / f"{arguments.command}-{started:%Y%m%dT%H%M%SZ}"
    write_json(stem.with_suffix(".json"), data)
    print(f"\nJSON: {stem.with_suffix('.json')}")
    if arguments.command == "fanout" and any(r["scenario"] == "fanout" for r in suite.runs):
        if plot(stem.with_suffix(".png"), data):
            print(f"plot: {stem.with_suffix('.png')}")
        else:
            print("plot: skipped, matplotlib is not installed (pip install '.[bench]')")
    if arguments.command == "sweep" and suite.runs:
        if sweep_plot(stem.with_suffix(".png"), data):
            print(f"plot: {stem.with_suffix('.png')}")
        else:
            print("plot: skipped, matplotlib is not installed (pip install '.[bench]')")
    return 0


def _rates(text: str) -> tuple[int, ...]:
    """
    The value of C{--rates}: positive whole msgs/s, comma-separated.
    """
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not rates such as 1000,10000: {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError("every rate must be at least 1 msg/s")
    return rates


def _prepare() -> None:
    """
    Make this process fit for the runs: as many file descriptors as allowed
    (10,000 connections and more), and SIGTERM handled like Ctrl-C, so that
    every server and generator process is stopped on the way out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _meta(started: datetime.datetime, placement: Placement, options: Options,
          command: str) -> dict[str, object]:
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "suite": command,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "placement": {"server": list(placement.server), "generator": list(placement.generator),
                      "servers": COMMANDS[command][1]},
        "python": platform.python_version(),
        "twisted": _version("Twisted"),
        "backplane": _version("backplane"),
        "redis": redis_version() if options.redis else None,
        "nats": nats_version() if options.nats else None,
        "reactor": options.reactor or "default",
        "options": {
            "quick": options.quick, "repeat": options.repeat, "only": list(options.only),
            "workers": options.workers, "window": options.window,
            "policies": list(options.policies), "rates": list(options.rates),
            "patterns": options.patterns,
        },
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
