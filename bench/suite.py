"""
The benchmark suites: which servers each run needs, which runs to make and
in which order, and what to record of each.

Every repeat of a scenario starts its own servers (in a temporary folder)
and stops them when it is done, so repeats are independent and the idle
run's memory baseline is a fresh server's.  Within a repeat the runs are
interleaved: backplane, then Redis, then NATS, for each subscriber count
(and, in C{nodes}, C{websocket} and C{sweep}, in an order that changes
between repeats).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from bench.fanin import FanInLoad, run_fanin
from bench.history import history_report, replayer
from bench.idle import IdleLoad, run_idle
from bench.load import GeneratorError, Load, Placement, Subscribers, Target, run_fanout
from bench.patterns import holding_patterns
from bench.procfs import rss_kib
from bench.servers import (
    BACKLOG,
    Server,
    ServerError,
    backplane_server,
    check_backplane_config,
    endpoint,
    free_port,
    nats_server,
    redis_server,
    redis_url,
    toml_config,
)
from bench.wire import RespError

SCENARIOS = ("fanout", "latency", "fanin", "idle", "resp", "patterns", "auth")
SUBSCRIBERS = (1, 10, 100, 1000)
# The fan-out runs over the Redis protocol (backplane's Redis port and Redis).
RESP_SUBSCRIBERS = (100, 1000)
# The fan-out over the Redis protocol beside idle pattern subscriptions:
# its subscribers (its messages are those of the fan-out run of the same
# S), and the pattern subscriptions by default.
PATTERNS_SUBSCRIBERS = 100
PATTERNS = 10_000
POLICIES = ("disconnect", "drop")

# Messages a fan-out run publishes, by subscriber count: about 2 to 30
# million deliveries, a few seconds each on one core.  --quick divides them.
FANOUT_MESSAGES = {1: 2_000_000, 10: 1_000_000, 100: 200_000, 1000: 30_000}
QUICK_DIVISOR = 20
LATENCY_RATE = 10_000
LATENCY_SUBSCRIBERS = 100
# auth: S, and the token of its one user (sent in every client's AUTH line).
AUTH_SUBSCRIBERS = 100
AUTH_TOKEN = b"bench-" + b"0" * 58
FANIN_PUBLISHERS = 100
# Lines of a fan-in run: a few seconds, so that the sink's last flush
# (FLUSH_INTERVAL) is a small part of it; 260 MB of file.
FANIN_MESSAGES = 4_000_000
FLUSH_INTERVAL = 0.1
STALLED_READERS = 99
# Messages of a stalled run (full, quick): 26 MB or 6.5 MB to the stalled
# subscriber, past the ~2 MB the kernel takes for it, the transport's 64 KiB
# and the default max_pending (1 MiB).
STALLED_MESSAGES = {False: 400_000, True: 100_000}
# More server memory growth than this in a stalled run is unbounded buffering.
STALLED_MEMORY_KIB = 8 * 1024
NO_FILE_SINK = "this build has no [[file]] sink"
# The unmeasured warm-up run of a fresh server: subscribers, messages.
WARM_UP = (10, 20_000)
# nodes: the total subscriber counts, split evenly over nodes A and B (the
# messages are those of the fan-out run of the same S).
NODES_SUBSCRIBERS = (100, 1000)
# websocket: subscribers of each kind, and messages of every run.
WEBSOCKET_SUBSCRIBERS = 1000
WEBSOCKET_MESSAGES = 30_000
NO_REDIS = "redis-server is not on PATH"
# sweep: fixed rates (msgs/s) to SWEEP_SUBSCRIBERS, for SWEEP_SECONDS each
# (full, --quick), backplane with linger 0 and SWEEP_LINGER.
SWEEP_RATES = (1_000, 10_000, 30_000, 60_000, 100_000)
SWEEP_SUBSCRIBERS = 100
SWEEP_SECONDS = {False: 5.0, True: 1.0}
SWEEP_LINGER = 0.001
# history: its scenarios, and the Suite method of each.
HISTORY_SCENARIOS = {"history": "history_fanout", "replay": "replay", "memory": "memory"}
HISTORY_SUBSCRIBERS = (100, 1000)
# The memory history's bound (history = N), and the lines of the replay's
# store; --quick divides both.
HISTORY_MESSAGES = 1_000_000
REPLAY_LINES = 1_000_000
HISTORY_QUICK_DIVISOR = 10
# The fan-out runs with a history: the kind of run, its backplane (all on
# one server) and that backplane's options; a store's folder is named
# after the backplane and the repeat.
HISTORY_KINDS: dict[str, tuple[str, dict[str, object]]] = {
    "no history": ("PLAIN", {}),
    "history": ("MEMORY", {"history": HISTORY_MESSAGES}),
    "store": ("STORE", {"store": None}),
}
# Seconds of live traffic (10,000 msgs/s to 100 subscribers) without and
# with a replay: full, --quick.
REPLAY_SECONDS = {False: 5, True: 2}
# history_bytes of the memory run's history: room for every line it is
# given (the default, 64 MiB, holds 1 M lines of 64 bytes with little to
# spare), so that the message count is what binds.
MEMORY_HISTORY_BYTES = 256 * 1024 * 1024

# Log lines worth a look: errors, and clients the server cut off or refused.
LOG_PROBLEMS = ("Traceback", "Unhandled", "Disconnecting", "Refusing", "CRITICAL", "critical",
                "output buffer limits")


@dataclass(frozen=True)
class Options:
    """
    The options of a suite.

    @ivar only: the scenarios to run (all if empty).
    @ivar reactor: twistd's reactor (C{-r}); None: twistd's default.
    @ivar redis: whether to run Redis beside backplane.
    @ivar nats: whether to run NATS beside backplane (fan-out, latency,
        sweep).
    @ivar rates: the sweep's rates (msgs/s).
    """

    quick: bool = False
    repeat: int = 1
    only: tuple[str, ...] = ()
    reactor: str | None = None
    redis: bool = True
    workers: int = 2
    window: int = 10_000
    policies: tuple[str, ...] = POLICIES
    fanin_acks: bool = False
    fanin_store: bool = False
    nats: bool = False
    rates: tuple[int, ...] = SWEEP_RATES
    patterns: int = PATTERNS


@dataclass
class Running:
    """
    A started server and how the generator reaches it.

    @ivar others: more server processes of the system under test (the
        second node and the Redis of two nodes), watched like C{server}.
    @ivar kind: what sets it apart from the other targets of the same
        server (C{"linger=0.001"}: the port with C{linger}), labelling its
        runs; C{""}: nothing.
    """

    server: Server
    target: Target
    others: tuple[Server, ...] = ()
    kind: str = ""

    @property
    def processes(self) -> tuple[Server, ...]:
        return (self.server, *self.others)


@dataclass
class Backplanes:
    """
    A backplane server with several backplanes, each with a publish port
    and a subscribe port.

    @ivar running: each backplane's server and ports, by name.
    @ivar ids: the C{ids = true} subscribe port of each backplane that has one.
    @ivar histories: the backplanes that keep a history (C{history} or C{store}).
    @ivar monitor: the port of its C{[monitor]} (C{/stats}), 0 if none.
    """

    server: Server
    running: dict[str, Running]
    ids: dict[str, int]
    histories: tuple[str, ...]
    monitor: int


@dataclass
class Suite:
    """
    Runs scenarios and collects their rows in L{runs}; a scenario that could
    not run says why in L{skipped} (C{reason}, and the C{detail}).
    """

    options: Options
    folder: Path
    placement: Placement
    runs: list[dict[str, object]] = field(default_factory=list)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)

    def fanout_suite(self) -> None:
        """
        The scenarios of C{python -m bench fanout} (all, or C{options.only}).
        """
        for scenario in self.options.only or SCENARIOS:
            getattr(self, scenario)()

    def history_suite(self) -> None:
        """
        The scenarios of C{python -m bench history} (all, or C{options.only}).
        """
        for scenario in self.options.only or HISTORY_SCENARIOS:
            getattr(self, HISTORY_SCENARIOS[scenario])()

    # The scenarios.

    def fanout(self) -> None:
        """
        Full speed, one publisher, S = 1, 10, 100, 1000 subscribers.
        """
        for repeat in range(1, self.options.repeat + 1):
            with self.servers() as servers:
                for subscribers in SUBSCRIBERS:
                    load = self.load(subscribers, self.messages(FANOUT_MESSAGES[subscribers]))
                    for running in servers:
                        self.measure("fanout", repeat, running,
                                     lambda t, load=load: run_fanout(t, load, self.placement))

    def resp(self) -> None:
        """
        Full speed, one publisher, S = 100 and 1000, over the Redis
        protocol: the same RESP publisher and subscribers against
        backplane's Redis port (C{protocol = "redis"}) and against Redis.
        """
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(resp=True, nats=False) as servers:
                for subscribers in RESP_SUBSCRIBERS:
                    load = self.load(subscribers, self.messages(FANOUT_MESSAGES[subscribers]))
                    for running in servers:
                        self.measure("resp", repeat, running,
                                     lambda t, load=load: run_fanout(t, load, self.placement))

    def patterns(self) -> None:
        """
        Full speed, one publisher, S = 100, over the Redis protocol, with no
        pattern subscriptions and with C{options.patterns} of them that
        match nothing published (held by idle clients, 10 distinct
        patterns each, every one confirmed before the run starts): on
        backplane's Redis port and on Redis, each server's runs one after
        the other, in an order that alternates between repeats.
        """
        load = self.load(PATTERNS_SUBSCRIBERS,
                         self.messages(FANOUT_MESSAGES[PATTERNS_SUBSCRIBERS]))
        kinds = [0, self.options.patterns]
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(resp=True, nats=False) as servers:
                for running in servers:
                    for patterns in kinds if repeat % 2 else kinds[::-1]:
                        self.measure("patterns", repeat, running,
                                     partial(self.beside_patterns, load=load,
                                             patterns=patterns),
                                     kind="patterns" if patterns else "no patterns")

    def auth(self) -> None:
        """
        Full speed (S = 100) and 10,000 messages a second to 100
        subscribers, one publisher, on one backplane server through a pair
        of ports without C{auth} and a pair with C{auth = true} (every
        client sends an C{AUTH} line first), in an order that alternates
        between repeats.
        """
        seconds = 2 if self.options.quick else 5
        loads = [self.load(AUTH_SUBSCRIBERS, self.messages(FANOUT_MESSAGES[AUTH_SUBSCRIBERS])),
                 self.load(AUTH_SUBSCRIBERS, LATENCY_RATE * seconds, rate=LATENCY_RATE)]
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(auth=True, redis=False, nats=False) as servers:
                for load in loads:
                    for running in servers if repeat % 2 else servers[::-1]:
                        self.measure("auth", repeat, running,
                                     lambda t, load=load: run_fanout(t, load, self.placement),
                                     kind=running.kind or "auth off")

    def latency(self) -> None:
        """
        A fixed rate (10,000 messages a second) to 100 subscribers.
        """
        seconds = 2 if self.options.quick else 10
        load = self.load(LATENCY_SUBSCRIBERS, LATENCY_RATE * seconds, rate=LATENCY_RATE)
        for repeat in range(1, self.options.repeat + 1):
            with self.servers() as servers:
                for running in servers:
                    self.measure("latency", repeat, running,
                                 lambda t: run_fanout(t, load, self.placement))

    def sweep(self) -> None:
        """
        Fixed rates (C{options.rates}) to 100 subscribers, each for a few
        seconds: backplane with C{linger} 0 and 1 ms (two subscribe ports
        of one server), Redis and NATS; the order of the servers turns
        between repeats.
        """
        seconds = SWEEP_SECONDS[self.options.quick]
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(linger=SWEEP_LINGER) as servers:
                shift = (repeat - 1) % len(servers)
                order = servers[shift:] + servers[:shift]
                for rate in self.options.rates:
                    load = self.load(SWEEP_SUBSCRIBERS, max(1, round(rate * seconds)),
                                     rate=rate, spans=True)
                    for running in order:
                        labels = {"kind": running.kind} if running.kind else {}
                        self.measure("sweep", repeat, running,
                                     lambda t, load=load: run_fanout(t, load, self.placement),
                                     **labels)

    def fanin(self) -> None:
        """
        100 publishers at full speed into one C{[[file]]} sink.
        """
        load = FanInLoad(FANIN_PUBLISHERS, self.messages(FANIN_MESSAGES),
                         workers=self.options.workers)
        for repeat in range(1, self.options.repeat + 1):
            try:
                running, path = self.start_fanin_backplane(repeat)
            except ServerError as e:
                if "[[file]]" in str(e) or "file[1]" in str(e):
                    self.skipped["fanin"] = {"reason": NO_FILE_SINK, "detail": str(e)}
                    return
                raise
            with running.server:
                self.measure("fanin", repeat, running,
                             lambda t, path=path: run_fanin(t, load, path, self.placement))
            path.unlink(missing_ok=True)

    def idle(self) -> None:
        """
        10,000 idle subscribers (1,000 with --quick): memory and tick latency.
        """
        quick = self.options.quick
        subscribers = 1_000 if quick else 10_000
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(backplane="TIME", clock=1.0, warm_up=False,
                              nats=False) as servers:
                for running in servers:
                    load = IdleLoad(subscribers, ticks=2 if quick else 5, interval=1.0,
                                    clock=running.target.name == "backplane",
                                    workers=self.options.workers)
                    self.measure("idle", repeat, running,
                                 lambda t, load=load: run_idle(t, load, self.placement))

    def stalled(self) -> None:
        """
        99 reading subscribers without and with one that never reads, for
        each C{slow} policy.

        Under C{slow = "disconnect"} the stalled subscriber must have been
        disconnected by the end: the run sends it far more than the kernel's
        buffers, the transport's 64 KiB and the default C{max_pending} hold.
        Under either policy the server's memory must stay bounded: it may
        grow by C{max_pending} (1 MiB) and then some, not by what the stalled
        subscriber misses.
        """
        messages = STALLED_MESSAGES[self.options.quick]
        for repeat in range(1, self.options.repeat + 1):
            for policy in self.options.policies:
                with self.servers(redis=False, slow=policy) as (running,):
                    for stalled in (0, 1) if repeat % 2 else (1, 0):
                        load = self.load(STALLED_READERS, messages, stalled=stalled)
                        self.measure("stalled", repeat, running,
                                     lambda t, load=load: run_fanout(t, load, self.placement),
                                     policy=policy, stalled=stalled)
                        if stalled:
                            self.check_stalled(self.runs[-1], policy)

    def nodes(self) -> None:
        """
        Two nodes sharing the backplane through Redis, the publisher on node
        A, the subscribers split evenly over A and B; beside one node with
        as many subscribers, in the same repeat.
        """
        if not self.options.redis:
            self.skipped["nodes"] = {"reason": NO_REDIS, "detail": ""}
            return
        for repeat in range(1, self.options.repeat + 1):
            with self.node_servers() as (single, pair, b):
                for subscribers in NODES_SUBSCRIBERS:
                    load = self.load(subscribers, self.messages(FANOUT_MESSAGES[subscribers]))
                    split = self.split(pair, b, subscribers)
                    runs = [(single, (), "1 node"), (pair, split, "2 nodes")]
                    for running, groups, kind in runs if repeat % 2 else runs[::-1]:
                        self.measure("nodes", repeat, running,
                                     lambda t, load=load, groups=groups:
                                     run_fanout(t, load, self.placement, groups),
                                     kind=kind)

    def websocket(self) -> None:
        """
        1,000 WebSocket subscribers beside 1,000 line subscribers of the same
        backplane, then each kind alone.
        """
        count = WEBSOCKET_SUBSCRIBERS
        messages = self.messages(WEBSOCKET_MESSAGES)
        for repeat in range(1, self.options.repeat + 1):
            with self.servers(redis=False, websocket=True) as (running,):
                target = running.target
                lines = Subscribers("lines", target.subscribe, "lines", count)
                ws = Subscribers("ws", target.websocket, "websocket", count)
                runs = [("lines+websocket", (lines, ws)), ("websocket", (ws,)),
                        ("lines", (lines,))]
                for kind, groups in runs if repeat % 2 else runs[::-1]:
                    load = self.load(sum(g.count for g in groups), messages)
                    self.measure("websocket", repeat, running,
                                 lambda t, load=load, groups=groups:
                                 run_fanout(t, load, self.placement, groups),
                                 kind=kind)

    def history_fanout(self) -> None:
        """
        Full speed, one publisher, S = 100 and 1000 plain subscribers, to a
        backplane without a history, with C{history = 1000000} and with a
        store (the default C{fsync_interval}), all three on one server; the
        order of the three rotates between repeats.
        """
        kinds = list(HISTORY_KINDS)
        for repeat in range(1, self.options.repeat + 1):
            backplanes = {name: {k: v if v is not None else f"store-{name}-{repeat}"
                                 for k, v in options.items()}
                          for name, options in HISTORY_KINDS.values()}
            with self.backplanes("history", backplanes) as server:
                for running in server.running.values():
                    self.warm_up(running)
                shift = (repeat - 1) % len(kinds)
                for subscribers in HISTORY_SUBSCRIBERS:
                    load = self.load(subscribers, self.messages(FANOUT_MESSAGES[subscribers]))
                    for kind in kinds[shift:] + kinds[:shift]:
                        self.measure("history", repeat, server.running[HISTORY_KINDS[kind][0]],
                                     partial(run_fanout, load=load, placement=self.placement),
                                     kind=kind)

    def replay(self) -> None:
        """
        A store filled with 1,000,000 lines (--quick: 100,000) through its
        publish port at full speed (one subscriber), then 10,000 messages a
        second to 100 live subscribers for a few seconds without, then with
        (the order alternates between repeats) a client on an C{ids = true}
        port that sends C{RESUME 0} as the live messages start and reads
        the whole history (up to its last line when the run starts).  The
        live subscribers' latency is also estimated for every message
        (C{msg_lat_*}, see L{bench.wire.LineCounter}), since a stall holds
        many messages back but shows in few chunks.
        """
        lines = self.history_lines(REPLAY_LINES)
        seconds = REPLAY_SECONDS[self.options.quick]
        live = self.load(LATENCY_SUBSCRIBERS, round(LATENCY_RATE * seconds), rate=LATENCY_RATE,
                         spans=True)
        for repeat in range(1, self.options.repeat + 1):
            store = {"STORE": {"store": f"store-replay-{repeat}"}}
            with self.backplanes("replay", store, ids=("STORE",), monitor=True) as server:
                running = server.running["STORE"]
                self.measure("replay", repeat, running,
                             partial(run_fanout, load=self.load(1, lines),
                                     placement=self.placement),
                             kind="fill")
                runs = [("live", False), ("live + replay", True)]
                for kind, replaying in runs if repeat % 2 else runs[::-1]:
                    history = history_report(server.monitor, "STORE")
                    companions = ((replayer(server.ids["STORE"], history["last"]),)
                                  if replaying else ())
                    self.measure("replay", repeat, running,
                                 partial(run_fanout, load=live, placement=self.placement,
                                         companions=companions),
                                 kind=kind, history_messages=history["messages"])

    def memory(self) -> None:
        """
        The server's memory (VmRSS) for a history of 1,000,000 lines of 64
        bytes (--quick: 100,000), against the same server with the history
        empty.  One server, no warm-up, filled at full speed through each
        backplane's publish port (one subscriber), in this order: a
        backplane without a history (the baseline: what a fill leaves
        behind by itself), the memory history (C{history = N}), the memory
        history again (N more lines: it drops the oldest as it goes), a
        store.
        """
        lines = self.history_lines(HISTORY_MESSAGES)
        fill = self.load(1, lines)
        for repeat in range(1, self.options.repeat + 1):
            backplanes: dict[str, dict[str, object]] = {
                "PLAIN": {},
                "MEMORY": {"history": lines, "history_bytes": MEMORY_HISTORY_BYTES},
                "STORE": {"store": f"store-memory-{repeat}"},
            }
            with self.backplanes("memory", backplanes, monitor=True) as server:
                # The baseline of each step: the server fresh, then as the
                # fill without a history left it (the memory history empty),
                # then (0) as the step before left it.
                baselines = {"PLAIN": rss_kib(server.server.pid)}
                steps = [("no history", "PLAIN"), ("history", "MEMORY"),
                         ("history, refilled", "MEMORY"), ("store", "STORE")]
                for kind, name in steps:
                    self.measure("memory", repeat, server.running[name],
                                 partial(self.fill_memory, load=fill, server=server,
                                         backplane=name, baseline=baselines.get(name, 0)),
                                 kind=kind)
                    baselines.setdefault("MEMORY", rss_kib(server.server.pid))

    # Helpers.

    def history_lines(self, full: int) -> int:
        """
        The lines of a history run: C{full}, or a tenth of it with --quick.
        """
        return full // HISTORY_QUICK_DIVISOR if self.options.quick else full

    def fill_memory(self, target: Target, load: Load, server: Backplanes, backplane: str,
                    baseline: int) -> dict[str, object]:
        """
        Fill C{backplane} (a fan-out run), then note the server's VmRSS, its
        growth over C{baseline} (KiB; 0: over what it was before this run),
        and, if the backplane keeps a history, what the history says it
        keeps and the growth per line kept.
        """
        before = rss_kib(server.server.pid)
        row = run_fanout(target, load, self.placement)
        rss = rss_kib(server.server.pid)
        baseline = baseline or before
        row.update(rss_kib=rss, rss_baseline_kib=baseline, rss_growth_kib=rss - baseline)
        if backplane in server.histories:
            history = history_report(server.monitor, backplane)
            kept = history["messages"]
            row.update(history_messages=kept, history_bytes=history["bytes"],
                       rss_bytes_per_line=round((rss - baseline) * 1024 / max(1, kept), 1),
                       history_bytes_per_line=round(history["bytes"] / max(1, kept), 1))
        return row

    def beside_patterns(self, target: Target, load: Load, patterns: int) -> dict[str, object]:
        """
        A fan-out run beside idle clients holding C{patterns} pattern
        subscriptions on C{target}'s Redis-protocol port (none: a plain
        run); the row says how many were confirmed.
        """
        try:
            with holding_patterns(target.subscribe, patterns, load.setup_timeout) as held:
                row = run_fanout(target, load, self.placement)
        except (OSError, RespError) as e:
            raise GeneratorError(f"holding {patterns} patterns: {e}") from e
        return {**row, "patterns": held}

    @staticmethod
    def split(pair: Running, b: int, subscribers: int) -> tuple[Subscribers, ...]:
        """
        C{subscribers} split evenly over node A (C{pair}'s subscribe port)
        and node B (port C{b}).
        """
        on_a = subscribers // 2
        return (Subscribers("A", pair.target.subscribe, "lines", on_a),
                Subscribers("B", b, "lines", subscribers - on_a))

    def check_stalled(self, row: dict[str, object], policy: str) -> None:
        """
        Add to a stalled run's status what the server should have done and
        did not.
        """
        problems = [] if row["status"] == "ok" else [str(row["status"])]
        if policy == "disconnect" and row.get("stalled_disconnected") == 0:
            problems.append("the stalled subscriber was not disconnected")
        growth = row.get("server_rss_growth_kib")
        if isinstance(growth, int) and growth > STALLED_MEMORY_KIB:
            problems.append(f"server memory grew by more than {STALLED_MEMORY_KIB // 1024} MiB")
        row["status"] = ", ".join(problems) or "ok"

    def messages(self, full: int) -> int:
        """
        A run's message count: C{full}, or a twentieth of it with --quick.
        """
        return full // QUICK_DIVISOR if self.options.quick else full

    def load(self, subscribers: int, messages: int, **options: float) -> Load:
        """
        A fan-out L{Load} with the suite's generator options.
        """
        return Load(subscribers, messages, window=self.options.window,
                    redis_window=self.options.window, workers=self.options.workers,
                    **options)  # type: ignore[arg-type]

    def measure(self, scenario: str, repeat: int, running: Running,
                run: Callable[[Target], dict[str, object]], **labels: object) -> None:
        """
        Make one run, label its row and note what the server logged
        meanwhile; a generator failure is recorded as the run's status.
        """
        offsets = [server.log_size() for server in running.processes]
        try:
            row = run(running.target)
        except GeneratorError as e:
            row = {"server": running.target.name, "status": f"error: {e}"}
        problems = []
        for server, offset in zip(running.processes, offsets, strict=True):
            if not server.alive():
                row["status"] = f"{row['status']}; {server.name} exited"
            problems += [f"{server.name}: {line}"
                         for line in server.output_since(offset).splitlines()
                         if any(word in line for word in LOG_PROBLEMS)]
        if problems:
            row["server_log"] = f"{len(problems)} notable lines, e.g.: {problems[0][:300]}"
        row = {"scenario": scenario, "repeat": repeat, **labels, **row}
        self.runs.append(row)
        _progress(row)

    @contextlib.contextmanager
    def servers(self, backplane: str = "BENCH", clock: float | None = None,
                redis: bool | None = None, slow: str | None = None,
                warm_up: bool = True, websocket: bool = False, nats: bool | None = None,
                linger: float | None = None, resp: bool = False,
                auth: bool = False) -> Iterator[list[Running]]:
        """
        Start a backplane server (one publish port and one subscribe port on
        backplane C{backplane}, with a clock publishing to it if C{clock} is
        its interval, the subscribe port's C{slow} policy if given, a
        WebSocket subscribe port if C{websocket}, and a second publish port
        and subscribe port with C{linger} if given), a Redis unless C{redis} is false (by
        default, C{options.redis}), and a NATS server unless C{nats} is
        false (by default, C{options.nats}); stop them all on exit.  With
        C{resp}, backplane is reached through a Redis-protocol port instead,
        as Redis is.  With C{auth}, also a second publish port and subscribe
        port with C{auth = true}, reached as their own target (C{"auth on"}).

        @param warm_up: give each server a short unmeasured run first, so
            that the first measured run does not pay for its start.
        @return: the targets: backplane, backplane with C{linger} if given,
            Redis and NATS if run.
        """
        with contextlib.ExitStack() as stack:
            first = self.start_backplane(backplane, clock, slow, websocket=websocket,
                                         linger=linger, resp=resp, auth=auth)
            servers = [first]
            stack.callback(first.server.stop)
            if auth:
                servers.append(Running(first.server,
                                       replace(first.target, publish=first.server.ports[-2],
                                               subscribe=first.server.ports[-1],
                                               token=AUTH_TOKEN),
                                       kind="auth on"))
            if linger is not None:
                servers.append(Running(first.server,
                                       replace(first.target, publish=first.server.ports[-2],
                                               subscribe=first.server.ports[-1]),
                                       kind=f"linger={linger:g}"))
            if self.options.redis if redis is None else redis:
                server = self.start_redis()
                stack.callback(server.stop)
                servers.append(Running(server, Target("redis", "resp", server.ports[0],
                                                      server.ports[0], (server.pid,))))
            if self.options.nats if nats is None else nats:
                server = nats_server(self.folder, free_port(), self.placement.server).start()
                stack.callback(server.stop)
                servers.append(Running(server, Target("nats", "nats", server.ports[0],
                                                      server.ports[0], (server.pid,))))
            if warm_up:
                for running in servers:
                    self.warm_up(running)
            yield servers

    @contextlib.contextmanager
    def node_servers(self) -> Iterator[tuple[Running, Running, int]]:
        """
        Start a private Redis and two backplane nodes that share the
        backplane through it (A and B, each with a publish port and a
        subscribe port), and a single plain node; stop them all on exit.

        @return: the single node; the two nodes as one system under test
            (publishing to A; the CPU of A, B and Redis measured each on its
            own), and node B's subscribe port.
        """
        with contextlib.ExitStack() as stack:
            redis = self.start_redis()
            stack.callback(redis.stop)
            url = redis_url(redis.ports[0])
            a = self.start_backplane("BENCH", name="nodeA", redis=url)
            stack.callback(a.server.stop)
            b = self.start_backplane("BENCH", name="nodeB", redis=url)
            stack.callback(b.server.stop)
            single = self.start_backplane("BENCH")
            stack.callback(single.server.stop)
            pair = Running(a.server, replace(a.target, pids=(a.server.pid, b.server.pid,
                                                               redis.pid),
                                             roles=("A", "B", "redis")),
                           others=(b.server, redis))
            self.warm_up(single)
            self.warm_up(pair, self.split(pair, b.target.subscribe, WARM_UP[0]))
            yield single, pair, b.target.subscribe

    def warm_up(self, running: Running, groups: tuple[Subscribers, ...] = ()) -> None:
        """
        A short unmeasured run (on a WebSocket port's server, with WebSocket
        subscribers too).
        """
        target = running.target
        subscribers, messages = WARM_UP
        if target.websocket and not groups:
            groups = (target.subscribers(subscribers // 2),
                      Subscribers("", target.websocket, "websocket",
                                  subscribers - subscribers // 2))
        run_fanout(target, self.load(subscribers, messages), self.placement, groups)

    @contextlib.contextmanager
    def backplanes(self, name: str, backplanes: Mapping[str, Mapping[str, object]],
                   ids: Sequence[str] = (), monitor: bool = False) -> Iterator[Backplanes]:
        """
        Start a backplane server with several backplanes (C{backplanes}: the
        options of each, e.g. C{{"history": 1000000}}), each with a publish
        port and a subscribe port, an C{ids = true} subscribe port for each
        of C{ids}, and a C{[monitor]} if C{monitor}; on exit, stop it and
        remove the folders of its stores.
        """
        ports: list[int] = []
        listen: list[dict[str, object]] = []
        running: dict[str, tuple[int, int]] = {}
        id_ports: dict[str, int] = {}
        for backplane in backplanes:
            publish, subscribe = free_port(), free_port()
            running[backplane] = (publish, subscribe)
            listen += [
                {"endpoint": endpoint(publish), "publish_to": backplane, "backlog": BACKLOG},
                {"endpoint": endpoint(subscribe), "subscribe_to": backplane,
                 "backlog": BACKLOG},
            ]
            ports += [publish, subscribe]
            if backplane in ids:
                id_ports[backplane] = free_port()
                listen.append({"endpoint": endpoint(id_ports[backplane]),
                               "subscribe_to": backplane, "ids": True, "backlog": BACKLOG})
                ports.append(id_ports[backplane])
        monitor_port = free_port() if monitor else 0
        sections = {"monitor": {"endpoint": endpoint(monitor_port)}} if monitor else None
        if monitor:
            ports.append(monitor_port)
        config = toml_config(backplanes, sections, listen=listen)
        stores = [self.folder / str(options["store"]) for options in backplanes.values()
                  if "store" in options]
        try:
            server = backplane_server(self.folder, name, config, ports, self.options.reactor,
                                      self.placement.server).start()
            with server:
                yield Backplanes(
                    server,
                    {b: Running(server, Target("backplane", "lines", publish, subscribe,
                                               (server.pid,)))
                     for b, (publish, subscribe) in running.items()},
                    id_ports,
                    tuple(b for b, options in backplanes.items()
                          if "history" in options or "store" in options),
                    monitor_port)
        finally:
            for store in stores:
                shutil.rmtree(store, ignore_errors=True)

    def start_redis(self) -> Server:
        """
        Start a private Redis.
        """
        return redis_server(self.folder, free_port(), self.placement.server).start()

    def start_backplane(self, backplane: str, clock: float | None = None,
                        slow: str | None = None, *, name: str = "backplane",
                        websocket: bool = False, redis: str | None = None,
                        linger: float | None = None, resp: bool = False,
                        auth: bool = False) -> Running:
        """
        Start a backplane server with a publish port and a subscribe port,
        a WebSocket subscribe port if C{websocket}, and a second subscribe
        port and a second publish port with C{linger} if given (the last two
        of its ports); with C{redis}
        (a url), the backplane is shared through that Redis.  With C{resp}
        (not with C{linger}), also a Redis-protocol port serving the
        backplane, which the generator then reaches (as it reaches Redis).
        With C{auth} (not with C{linger}), also a publish port and a
        subscribe port with C{auth = true} (the last two), and one user
        whose token is L{AUTH_TOKEN}.
        """
        publish, subscribe = free_port(), free_port()
        subscriber: dict[str, object] = {"endpoint": endpoint(subscribe),
                                         "subscribe_to": backplane, "backlog": BACKLOG}
        if slow:
            subscriber["slow"] = slow
        tables: dict[str, list[dict[str, object]]] = {"listen": [
            {"endpoint": endpoint(publish), "publish_to": backplane, "backlog": BACKLOG},
            subscriber,
        ]}
        ports = [publish, subscribe]
        if websocket:
            ports.append(free_port())
            tables["listen"].append({"endpoint": endpoint(ports[-1]), "protocol": "websocket",
                                     "subscribe_to": backplane, "backlog": BACKLOG})
        if resp:
            if linger is not None:
                raise ValueError("a backplane reached over RESP has no linger port")
            ports.append(free_port())
            tables["listen"].append({"endpoint": endpoint(ports[-1]), "protocol": "redis",
                                     "backplanes": [backplane], "backlog": BACKLOG})
        if linger is not None:
            # A publish port and a subscribe port of their own, both with
            # linger (the last two ports).
            ports += [free_port(), free_port()]
            tables["listen"] += [
                {"endpoint": endpoint(ports[-2]), "publish_to": backplane, "backlog": BACKLOG,
                 "linger": linger},
                {**subscriber, "endpoint": endpoint(ports[-1]), "linger": linger},
            ]
        if auth:
            if linger is not None:
                raise ValueError("a backplane run with auth has no linger ports")
            ports += [free_port(), free_port()]
            tables["listen"] += [
                {"endpoint": endpoint(ports[-2]), "publish_to": backplane, "backlog": BACKLOG,
                 "auth": True},
                {**subscriber, "endpoint": endpoint(ports[-1]), "auth": True},
            ]
            tables["user"] = [{"name": "bench",
                               "token_sha256": hashlib.sha256(AUTH_TOKEN).hexdigest(),
                               "publish": [backplane], "subscribe": [backplane]}]
        if clock:
            tables["clock"] = [{"publish_to": backplane, "interval": clock}]
        options: dict[str, object] = {"shared": True} if redis else {}
        sections = {"redis": {"url": redis}} if redis else None
        config = toml_config({backplane: options}, sections, **tables)
        server = backplane_server(self.folder, name, config, ports,
                                  self.options.reactor, self.placement.server).start()
        if resp:
            return Running(server, Target("backplane", "resp", ports[-1], ports[-1],
                                          (server.pid,), channel=backplane.encode()))
        return Running(server, Target("backplane", "lines", publish, subscribe, (server.pid,),
                                      websocket=ports[2] if websocket else 0))

    def start_fanin_backplane(self, repeat: int) -> tuple[Running, Path]:
        """
        Start a backplane server whose publish port feeds a file sink.

        @raise ServerError: it did not start; it says C{[[file]]} if this
            build has no file sink (its C{--check} rejects the config, or
            starting does).
        """
        publish = free_port()
        path = self.folder / f"fanin-{repeat}.data"
        port: dict[str, object] = {"endpoint": endpoint(publish), "publish_to": "LOG",
                                   "backlog": BACKLOG}
        if self.options.fanin_acks:
            port["acks"] = True
        backplane: dict[str, object] = {}
        if self.options.fanin_store:
            backplane["store"] = f"fanin-{repeat}.store"
        config = toml_config({"LOG": backplane}, listen=[port], file=[
            {"subscribe_to": "LOG", "path": path.name, "flush_interval": FLUSH_INTERVAL}])
        valid, message = check_backplane_config(self.folder, "fanin-check", config)
        if not valid:
            raise ServerError(message)
        server = backplane_server(self.folder, "fanin", config, [publish],
                                  self.options.reactor, self.placement.server).start()
        return Running(server, Target("backplane", "lines", publish, 0, (server.pid,))), path


def _progress(row: dict[str, object]) -> None:
    figures = []
    for field_, unit in (("delivered_msgs_per_s", "msgs/s"), ("lines_per_s", "lines/s"),
                         ("server_cpu_us_per_delivery", "µs CPU/delivery"),
                         ("lat_p99_us", "µs p99"), ("msg_lat_p99_us", "µs p99 every message"),
                         ("rss_per_subscriber_bytes", "B/subscriber"),
                         ("replay_lines_per_s", "lines/s replayed"),
                         ("rss_bytes_per_line", "B RSS/kept line")):
        if field_ in row:
            figures.append(f"{row[field_]} {unit}")
    labels = " ".join(f"{k}={row[k]}" for k in ("kind", "S", "P", "rate", "policy", "stalled",
                                                 "patterns")
                      if row.get(k))
    print(f"[{row['scenario']} #{row['repeat']}] {row['server']} {labels}: "
          f"{', '.join(figures)}; {row['status']}", file=sys.stderr, flush=True)
