"""Checkpoint duration (p50/p99) with and without backpressure, and recovery time after a
SIGKILL, for a streaming job: the sequence source (4 splits, unbounded), a keyed running
aggregate, and the exactly-once Parquet sink.

- Without backpressure the source is throttled to 1M rows/s (4 splits of 250k), which
  the job keeps up with.
- With backpressure a `map_batches` stage sleeps 20 ms per 1,000-row batch (a slow model),
  so the channels before it stay full and each aligned barrier waits behind them.
- With slow calls in flight, without backpressure: a stage whose calls take 150 ms each
  (4 at once) fed 2,000 rows/s in 100-row batches, about 75% busy. Its calls are in
  flight at almost every barrier; a checkpoint records their rows rather than waiting
  for them.
- Recovery: the job is killed with SIGKILL mid-run and started again with the same job id;
  timed from the new process's start to (a) the job running again (checkpoint read, staged
  files repaired, tasks started) and (b) its first completed checkpoint (rows flowing and
  committed again). The Python interpreter's start and `import rillet` are included.

    bash bench/run.sh streaming_checkpoints.py [--seconds 20] [--kills 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np


def pipeline(slow: bool, calls_in_flight: bool = False):
    import rillet as rl
    if calls_in_flight:
        df = rl.read_sequence(partitions=4, rows=None, rows_per_second=500.0, batch_rows=100)
        df = df.group_by("source", "partition").running_agg(rl.count().alias("n"))

        def model(batch):
            time.sleep(0.15)
            return batch
        return df.map_batches(model, batch_size=100, concurrency=4)
    # Without backpressure the source is throttled to 1M rows/s in all, well under what
    # the job sustains (about 7M rows/s here); with it, the source runs flat out into
    # the slow stage.
    rate = None if slow else 250_000.0
    df = rl.read_sequence(partitions=4, rows=None, rows_per_second=rate, batch_rows=1000)
    df = df.group_by("source", "partition").running_agg(rl.count().alias("n"), rl.col("value").sum().alias("total"))
    if slow:
        def slow_model(batch):
            time.sleep(0.02)
            return batch
        df = df.map_batches(slow_model, batch_size=1000, concurrency=1)
    return df


def durations(seconds: float, slow: bool, interval: float, calls_in_flight: bool = False) -> dict:
    work = tempfile.mkdtemp(prefix="rillet-chk-bench-")
    job = pipeline(slow, calls_in_flight).start(os.path.join(work, "out"), checkpoint_dir=os.path.join(work, "chk"),
                               job_id="bench", checkpoint_interval=interval)
    time.sleep(seconds)
    metrics = job.metrics()
    job.cancel()
    try:
        job.wait()
    except Exception:  # noqa: BLE001 - a cancelled job raises JobCancelled
        pass
    chk = metrics["checkpoints"]
    d = np.array(chk["durations_ms"] or [float("nan")])
    rows = metrics["rows_written"] or max(op["rows_in"] for op in metrics["operators"][-1:])
    return {"checkpoints": chk["completed"], "aborted": chk["aborted"],
            "p50_ms": round(float(np.percentile(d, 50)), 1), "p99_ms": round(float(np.percentile(d, 99)), 1),
            "max_ms": round(float(d.max()), 1), "rows_per_s": round(rows / seconds)}


def child(out: str, chk: str) -> None:
    launched = float(os.environ["BENCH_LAUNCHED"])
    job = pipeline(False).start(out, checkpoint_dir=chk, job_id="recovery", checkpoint_interval=0.2)
    running = time.time() - launched
    print(f"running {running:.4f}", flush=True)
    first = job.metrics()["checkpoints"]["completed"]
    while job.metrics()["checkpoints"]["completed"] == first:
        time.sleep(0.002)
    print(f"checkpointed {time.time() - launched:.4f}", flush=True)
    time.sleep(3600)


def recovery(kills: int) -> dict:
    work = tempfile.mkdtemp(prefix="rillet-recovery-bench-")
    out, chk = os.path.join(work, "out"), os.path.join(work, "chk")
    running, checkpointed = [], []
    for k in range(kills + 1):
        env = dict(os.environ, BENCH_LAUNCHED=repr(time.time()))
        proc = subprocess.Popen([sys.executable, __file__, "--child", out, chk], stdout=subprocess.PIPE, text=True, env=env)
        first = proc.stdout.readline().split()
        second = proc.stdout.readline().split()
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if k > 0:  # the first run restores nothing
            running.append(float(first[1]))
            checkpointed.append(float(second[1]))
    return {"kills": kills,
            "to_running_s_p50": round(float(np.median(running)), 3),
            "to_running_s_max": round(float(np.max(running)), 3),
            "to_first_checkpoint_s_p50": round(float(np.median(checkpointed)), 3),
            "to_first_checkpoint_s_max": round(float(np.max(checkpointed)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"checkpoint every {args.interval}s, {args.seconds}s per case")
    print("no backpressure:", durations(args.seconds, False, args.interval))
    print("backpressure:   ", durations(args.seconds, True, args.interval))
    print("calls in flight:", durations(args.seconds, False, args.interval, calls_in_flight=True))
    print("recovery:       ", recovery(args.kills))


if __name__ == "__main__":
    main()
