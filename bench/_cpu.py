"""Where the machine's CPU time went during a benchmark phase, read from /proc: each of our process
groups (with its descendants), PostgreSQL (every backend), the other tenants of a shared machine,
and idle. On a shared machine the ratio within one run is what counts; this says how much of the
machine each part had."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _procs() -> dict[int, tuple[int, str, float, float]]:
    """pid -> (parent pid, command name, CPU seconds so far, with its waited-for children's) for every
    process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / TICK
        out[int(d.name)] = (int(fields[1]), name, own, own + (int(fields[13]) + int(fields[14])) / TICK)
    return out


class CpuMeter:
    """Where the machine's CPU time went during a phase: our processes (each with its descendants),
    PostgreSQL (every client's), the other tenants of this shared machine, and idle."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def snapshot(self) -> tuple[float, dict[str, float], float, float]:
        procs = _procs()
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_) in procs.items():
            children.setdefault(ppid, []).append(pid)
        used: dict[str, float] = {}
        for group, roots in self.groups.items():
            todo, total = list(roots), 0.0
            while todo:
                pid = todo.pop()
                if pid in procs:
                    total += procs[pid][2]
                    if group != "bench":  # the others are this process's children: counted apart
                        todo += children.get(pid, [])
            used[group] = total
        used["postgres"] = sum(p[3] for p in procs.values() if p[1].startswith("postgres"))
        cpu = [int(x) / TICK for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = cpu[3] + cpu[4]
        return time.time(), used, sum(cpu[:8]) - idle, idle

    def report(self, before: tuple[float, dict[str, float], float, float], what: str) -> dict[str, float]:
        t0, used0, busy0, idle0 = before
        t1, used1, busy1, idle1 = self.snapshot()
        delta = {g: used1[g] - used0.get(g, 0.0) for g in used1}
        delta["other tenants"] = max(0.0, (busy1 - busy0) - sum(delta.values()))
        delta["idle"] = idle1 - idle0
        parts = ", ".join(f"{g} {v:.0f}" for g, v in delta.items())
        print(
            f"  cpu during {what} ({t1 - t0:.0f}s x {os.cpu_count()} cores, core-seconds): {parts}",
            flush=True,
        )
        return {**delta, "wall_s": t1 - t0}
