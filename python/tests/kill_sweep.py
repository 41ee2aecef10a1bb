"""Kill sweep: a streaming job killed with SIGKILL at random instants and restarted, then
checked by the sequence oracle (RELIABILITY.md).

The job reads the sequence source, keeps every row through a filter, adds per split the
running count and sum (keyed state), and writes Parquet exactly once with checkpoints.
The sweep starts it in a child process, kills it at a random instant after it started,
checks that what is committed so far is a clean prefix of every split (no repeat, no
wrong value, nothing out of order), restarts it with the same job id, and so on; after the
last kill it lets the job finish and checks the whole output: every row exactly once, the
right total, and every running aggregate equal to its recomputed value.

    python python/tests/kill_sweep.py --kills 50            # a new seed, printed
    python python/tests/kill_sweep.py --kills 50 --seed 7   # replay seed 7's kill instants

The test suite runs it with 5 kills (python/tests/test_streaming.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PARTITIONS = 4
JOB_ID = "sweep"


def value_of(partition: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """The sequence source's value of each (partition, seq), as the source computes it."""
    with np.errstate(over="ignore"):
        mixed = (seq.astype(np.uint64) * np.uint64(2_654_435_761)) ^ partition.astype(np.uint64)
    return (mixed % np.uint64(1000)).astype(np.int64)


def build(rows: int, rate: float):
    import rillet as rl
    df = rl.read_sequence(partitions=PARTITIONS, rows=rows, rows_per_second=rate, batch_rows=500)
    df = df.filter(rl.col("value") >= 0)
    return df.group_by("source", "partition").running_agg(
        rl.count().alias("running_count"), rl.col("value").sum().alias("running_sum"))


def child(out: str, chk: str, rows: int, rate: float, interval: float) -> None:
    job = build(rows, rate).start(out, checkpoint_dir=chk, job_id=JOB_ID, checkpoint_interval=interval)
    print("started", flush=True)
    job.wait()
    print("finished", job.metrics()["checkpoints"], flush=True)


def committed(out: str) -> pa.Table:
    from rillet.testing import read_committed
    return read_committed(out)


def check_prefix(table: pa.Table) -> int:
    """What is committed mid-run: per split, seqs 0..n-1 each once (a prefix), with the
    right values and running aggregates. Returns the row count."""
    if table.num_rows == 0:
        return 0
    check_rows(table)
    counts = table.group_by("partition").aggregate([("seq", "count"), ("seq", "max"), ("seq", "count_distinct")])
    for row in counts.to_pylist():
        n, top, distinct = row["seq_count"], row["seq_max"], row["seq_count_distinct"]
        if not (n == distinct == top + 1):
            raise AssertionError(f"partition {row['partition']}: {n} rows, {distinct} distinct, "
                                 f"max seq {top}: not a clean prefix")
    return table.num_rows


def check_rows(table: pa.Table) -> None:
    """Every row's value and running aggregates match what the source implies."""
    partition = table["partition"].to_numpy()
    seq = table["seq"].to_numpy()
    if not np.array_equal(table["value"].to_numpy(), value_of(partition, seq)):
        raise AssertionError("a row has the wrong value")
    if not np.array_equal(table["running_count"].to_numpy(), seq.astype(np.int64) + 1):
        raise AssertionError("a running count differs from seq + 1: keyed state lost or replayed twice")
    # The running sum of (p, s) is the sum of value_of(p, 0..=s).
    top = int(seq.max()) + 1
    expected = np.zeros(len(seq), dtype=np.int64)
    for p in np.unique(partition):
        prefix = np.cumsum(value_of(np.full(top, p), np.arange(top, dtype=np.uint64)))
        mask = partition == p
        expected[mask] = prefix[seq[mask].astype(np.int64)]
    if not np.array_equal(table["running_sum"].to_numpy(), expected):
        raise AssertionError("a running sum differs from its recomputed value")


def sweep(kills: int, seed: int, rows: int | None = None, rate: float = 4000.0,
          interval: float = 0.1, max_delay: float = 1.0, log=print) -> dict:
    """Run the sweep; returns its figures. Raises AssertionError (with the seed) on a bad
    output."""
    rng = random.Random(seed)
    # Enough rows that the job is still running at every kill: each run makes about
    # max_delay / 2 seconds of progress.
    rows = rows or int(rate * (kills * max_delay * 0.6 + 1.0))
    work = tempfile.mkdtemp(prefix="rillet-kill-sweep-")
    out, chk = os.path.join(work, "out"), os.path.join(work, "chk")
    log(f"kill sweep: seed {seed}, {kills} kills, {PARTITIONS} x {rows} rows at {rate:.0f} rows/s per split, "
        f"checkpoints every {interval}s, in {work}")
    command = [sys.executable, os.path.abspath(__file__), "--child", out, chk, str(rows), str(rate), str(interval)]
    landed = 0
    recovery = []
    started_at = time.monotonic()
    for k in range(kills):
        delay = rng.uniform(0.05, max_delay)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        launched = time.monotonic()
        line = proc.stdout.readline()
        if not line.startswith("started"):
            raise AssertionError(f"seed {seed}: the job did not start: {line}{proc.stderr.read()}")
        recovery.append(time.monotonic() - launched)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            visible = check_prefix(committed(out))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, after kill {k + 1}: {e}") from None
        landed += not finished
        log(f"  kill {k + 1}: {delay:.3f}s after start, {'mid-run' if not finished else 'after the end'}, "
            f"{visible} rows committed")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"seed {seed}: the last run failed: {proc.stdout}{proc.stderr}")
    table = committed(out)
    expected = {("seq", p): rows for p in range(PARTITIONS)}
    from rillet.testing import check_sequence
    try:
        total = check_sequence(table, expected)
        check_rows(table)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from None
    assert total == rows * PARTITIONS
    leftovers = os.listdir(os.path.join(out, "_pending"))
    assert not leftovers, f"seed {seed}: staged files left after the end: {leftovers}"
    figures = {"seed": seed, "kills": kills, "kills_mid_run": landed, "rows": total,
               "elapsed_s": round(time.monotonic() - started_at, 1),
               "restart_to_running_s_p50": round(float(np.median(recovery)), 3) if recovery else None}
    log(f"kill sweep passed: {figures}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=4000.0, help="rows per second per split")
    parser.add_argument("--child", nargs=5, metavar=("OUT", "CHK", "ROWS", "RATE", "INTERVAL"))
    args = parser.parse_args()
    if args.child:
        out, chk, rows, rate, interval = args.child
        child(out, chk, int(rows), float(rate), float(interval))
        return
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    sweep(args.kills, seed, rate=args.rate)


if __name__ == "__main__":
    main()
