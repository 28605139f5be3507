"""How long this machine stops a running process: the floor under any server's maximum
latency.

    .venv/bin/python benchmarks/stalls.py [--cores 0,1] [--seconds 10]

One process per core, pinned, spins reading the clock for ``--seconds`` and notes every
gap between two consecutive readings longer than 1 ms: time in which the process did
not run although it never slept, taken by the kernel (interrupts, other tasks) or, on
a virtual machine, by the host (the vCPU not scheduled). A DNS server answering a
query that arrives in such a gap answers it that much later, whatever its code. Prints
per core: the gaps over 1 ms and over 3 ms, the longest, when the longest ones came,
and the steal time the kernel accounted for the core over the run (``/proc/stat``; the
host's preemptions are not always accounted as steal).

Bounded by ``--seconds``; no network.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

GAP_NS = 1_000_000  # what counts as a stall
Found = tuple[int, list[tuple[float, float]]]  # a core, and its gaps: (at s, length ms)


def steal_ticks(core: int) -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[8])
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def spin(core: int, seconds: float, out: multiprocessing.Queue[Found]) -> None:
    """Spin on ``core``; put what it found on ``out``."""
    os.sched_setaffinity(0, {core})
    clock = time.perf_counter_ns
    start = last = clock()
    end = start + int(seconds * 1e9)
    gaps = []
    while last < end:
        now = clock()
        if now - last > GAP_NS:
            gaps.append(((last - start) / 1e9, (now - last) / 1e6))
        last = now
    out.put((core, gaps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", default=",".join(map(str, sorted(os.sched_getaffinity(0)))))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    cores = [int(c) for c in args.cores.split(",")]
    out: multiprocessing.Queue[Found] = multiprocessing.Queue()
    steal0 = {core: steal_ticks(core) for core in cores}
    workers = [multiprocessing.Process(target=spin, args=(core, args.seconds, out)) for core in cores]
    for worker in workers:
        worker.start()
    found = dict(out.get(timeout=args.seconds + 30) for _ in workers)
    for worker in workers:
        worker.join()
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    print(f"a process spinning on each of cores {args.cores} for {args.seconds:g} s; "
          "gaps in its run:")
    for core in cores:
        gaps = found[core]
        longest = sorted(gaps, key=lambda g: -g[1])[:5]
        print(f"  core {core}: {len(gaps)} over 1 ms, {sum(g > 3 for _, g in gaps)} over 3 ms, "
              f"longest {max((g for _, g in gaps), default=0.0):.1f} ms, in all "
              f"{sum(g for _, g in gaps):.0f} ms; steal accounted "
              f"{(steal_ticks(core) - steal0[core]) * tick_ms:.0f} ms; longest at "
              + ", ".join(f"{at:.2f} s ({gap:.1f} ms)" for at, gap in sorted(longest)))


if __name__ == "__main__":
    main()
