"""
CPU time and memory of processes, and the host's CPU time, from /proc.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The fields of the "cpu" line of /proc/stat.
HOST_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_ns(pid: int) -> int:
    """
    The CPU time a process has used so far, in ns: the on-CPU time of each
    of its threads from C{/proc/PID/task/*/schedstat} (exact), or its
    utime+stime from C{/proc/PID/stat} (in clock ticks) where there is no
    schedstat.

    @raise ProcessLookupError: there is no such process.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread has just ended
        except (OSError, ValueError, IndexError):
            return _stat_cpu_ns(pid)
    return total


def _stat_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        # The fields after the command name, which may contain blanks.
        fields = f.read().rsplit(b")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * 1_000_000_000 // CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """
    The resident memory of a process (VmRSS), in KiB.
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(pid)


def host_cpu() -> tuple[int, ...]:
    """
    The host's CPU time so far by kind (L{HOST_FIELDS}), in clock ticks,
    summed over its CPUs.
    """
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    return tuple(int(v) for v in fields[1:1 + len(HOST_FIELDS)])


@dataclass(frozen=True)
class Snapshot:
    """
    The CPU time of the servers, of the load generator and of the host at
    one moment.

    @ivar each_ns: the CPU time of each server process, in order.
    """

    wall_ns: int
    server_ns: int
    generator_ns: int
    host: tuple[int, ...]
    each_ns: tuple[int, ...] = ()

    @classmethod
    def take(cls, servers: Iterable[int], generator: Iterable[int]) -> Snapshot:
        """
        Read the CPU time of the processes C{servers} and C{generator} (a
        process that has ended counts 0) and of the host.
        """
        each = tuple(_sum_cpu([pid]) for pid in servers)
        return cls(time.monotonic_ns(), sum(each), _sum_cpu(generator), host_cpu(), each)

    def usage(self, later: Snapshot, names: Sequence[str] = ()) -> dict[str, float]:
        """
        What was used from this snapshot to C{later}: the window (s), the
        CPU time of the servers and of the generator (s), and the host's
        busy, softirq and "other" time in percent of one CPU.  "Other" is
        the host's busy time (user, system, irq, softirq) that neither the
        servers nor the generator account for: about 0 on a quiet machine,
        it shows how much else was running.

        @param names: if given, a name for each server process: its CPU
            time (s) is C{NAME_cpu_s}.
        """
        wall = (later.wall_ns - self.wall_ns) / 1e9
        server = (later.server_ns - self.server_ns) / 1e9
        generator = (later.generator_ns - self.generator_ns) / 1e9
        host = dict(zip(HOST_FIELDS, (b - a for a, b in zip(self.host, later.host, strict=True)),
                        strict=True))
        busy = sum(host[k] for k in ("user", "nice", "system", "irq", "softirq")) / CLOCK_TICKS
        percent = 100 / wall if wall > 0 else 0.0
        result = {
            "window_s": round(wall, 4),
            "server_cpu_s": round(server, 4),
            "gen_cpu_s": round(generator, 4),
            "host_busy_pct": round(busy * percent, 1),
            "host_softirq_pct": round(host["softirq"] / CLOCK_TICKS * percent, 1),
            "host_other_pct": round((busy - server - generator) * percent, 1),
        }
        if names:
            for name, a, b in zip(names, self.each_ns, later.each_ns, strict=True):
                result[f"{name}_cpu_s"] = round((b - a) / 1e9, 4)
        return result


def _sum_cpu(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += cpu_ns(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return total
