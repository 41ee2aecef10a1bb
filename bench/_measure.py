"""Shared helpers for the benchmarks: run a command as a child process and sample the peak
resident memory of its whole process tree (Ray starts helper processes; Rillet and Daft run
in one)."""

from __future__ import annotations

import subprocess
import sys
import time


def run_measured(argv: list[str], env: dict | None = None, interval: float = 0.05) -> dict:
    """Run ``argv``; return wall seconds, peak tree RSS in bytes, exit code and output."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [parent] + parent.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    output = proc.stdout.read() if proc.stdout else ""
    return {"seconds": time.perf_counter() - started, "peak_rss": peak, "code": proc.returncode, "output": output}


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


if __name__ == "__main__":
    print(run_measured(sys.argv[1:]))
