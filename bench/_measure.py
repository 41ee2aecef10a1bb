"""Shared helpers for the benchmarks: run a command as a child process and sample the peak
resident memory of its whole process tree (Ray starts helper processes; Rillet and Daft run
in one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Telemetry switches of the peers (Daft honours DO_NOT_TRACK too).
QUIET = {"DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0", "DAFT_ANALYTICS_ENABLED": "0"}


def run_measured(argv: list[str], env: dict | None = None, interval: float = 0.05) -> dict:
    """Run ``argv``; return wall seconds, peak tree RSS in bytes, exit code and output."""
    import psutil

    # Nothing may try to reach outside this machine: the peers' telemetry off.
    env = {**os.environ, **QUIET, **(env or {})}
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


def settle(limit: float = 20.0) -> None:
    """Flush written files to disk, then wait (up to ``limit`` seconds) until the machine is
    nearly idle, so that one engine's leftovers (Ray's daemons shut down after the driver
    exits; the kernel writing back the hundreds of MB of Parquet the job before wrote) do
    not slow the next one."""
    import os

    import psutil

    os.sync()
    deadline = time.perf_counter() + limit
    while psutil.cpu_percent(interval=0.5) > 10 and time.perf_counter() < deadline:
        pass


def written_rows(out: Path) -> int | None:
    """Rows in the Parquet files under ``out``, or None when nothing was written there."""
    import pyarrow.parquet as pq

    if not out.exists():
        return None
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))


def side_by_side(jobs: dict[str, str], pythons: dict[str, str], data: Path, out_prefix: Path, runs: int,
                 items: int, unit: str, precision: int = 0, expected_rows: int | None = None) -> str:
    """Run every job ``runs`` times after one warm-up, each as ``python -c JOB DATA OUT``
    (OUT is ``out_prefix-NAME``, emptied first) on a machine left idle by the job before, and
    return a Markdown table of median time,
    ``items``/s in ``unit``, median peak RSS, and Rillet's ratios to each engine.

    Every job that writes Parquet to OUT must write the same number of rows as the others
    (``expected_rows`` when given), so that no engine is timed for skipping work; each
    output is deleted once counted, as the runs would otherwise leave gigabytes behind."""
    import shutil
    import statistics

    results: dict[str, list[dict]] = {name: [] for name in jobs}
    written: dict[str, int] = {}
    for run in range(runs + 1):  # run 0 is the warm-up
        for name, job in jobs.items():
            out = Path(f"{out_prefix}-{name}")
            shutil.rmtree(out, ignore_errors=True)
            settle()
            result = run_measured([pythons[name], "-c", job, str(data), str(out)])
            if result["code"] != 0:
                sys.exit(f"{name} failed:\n{result['output']}")
            count = written_rows(out)
            shutil.rmtree(out, ignore_errors=True)
            if count is not None:
                written[name] = count
                if len(set(written.values())) > 1 or (expected_rows is not None and count != expected_rows):
                    sys.exit(f"the engines wrote different row counts (expected {expected_rows}): {written}")
            if run > 0:
                results[name].append(result)
    rows = []
    for name, measured in results.items():
        secs = statistics.median(r["seconds"] for r in measured)
        rss = statistics.median(r["peak_rss"] for r in measured)
        rows.append((name, secs, items / secs, rss))
    base = {name: (tput, rss) for name, _, tput, rss in rows}
    table = [f"| engine | median time | {unit} | peak RSS | Rillet throughput ratio | Rillet RSS ratio |",
             "|---|---|---|---|---|---|"]
    for name, secs, tput, rss in rows:
        table.append(f"| {name} | {secs:.1f} s | {tput:,.{precision}f} | {mib(rss)} | "
                     f"{base['rillet'][0] / tput:.2f}x | {base['rillet'][1] / rss:.2f} |")
    return "\n".join(table)


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


if __name__ == "__main__":
    print(run_measured(sys.argv[1:]))


def model_benchmark(title: str, jobs: dict[str, str], peers_python: Path, data: Path, out_prefix: Path,
                    runs: int, items: int, unit: str, command: str, about: str) -> str:
    """Run the model benchmark ``jobs`` side by side (``daft``, ``ray`` and ``bare`` in the
    peers' interpreter, Rillet's jobs in this one), print the table and append it to
    RESULTS.md under ``title`` with the ``command`` that produced it, the peers' versions
    and ``about`` (the model and batching). Returns the table."""
    import datetime
    import subprocess

    # daft, ray, bare and their variants (daft_tuned) in the peers' interpreter.
    pythons = {name: str(peers_python) if name.split("_")[0] in ("daft", "ray", "bare") else sys.executable
               for name in jobs}
    text = side_by_side(jobs, pythons, data, out_prefix, runs, items, unit, 1, expected_rows=items)
    print(text)
    version = subprocess.run([str(peers_python), "-c", "import daft, ray, onnxruntime; print(daft.__version__, "
                              "ray.__version__, onnxruntime.__version__)"], capture_output=True, text=True).stdout.split()
    daft_v, ray_v, ort_v = (version + ["?", "?", "?"])[:3]
    with open(Path(__file__).parent / "RESULTS.md", "a") as f:
        f.write(f"\n### {title}, {datetime.date.today()}, {runs} runs + warm-up\n\nCommand: `{command}` "
                f"(Daft {daft_v}, Ray {ray_v}, onnxruntime {ort_v}). {about} Pipeline efficiency = rillet "
                f"throughput / bare throughput (the inverse of the `bare` row's ratio).\n\n{text}\n")
    return text
