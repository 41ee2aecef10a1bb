"""Streaming throughput, Rillet side by side with an Apache Flink mini-cluster on the same
machine, in one run (the comparison with a peer engine; results in ``bench/RESULTS.md``).

Both jobs read a generated stream, run it through the same operators, and write CSV files
exactly once, checkpointing every second, with parallelism 2 (this machine's cores):

- stateless: keep the rows whose value is even, output (partition, seq, value * 2);
- keyed: per partition key, each row with the running count and sum of its key so far
  (Rillet's `group_by(...).running_agg(...)`; Flink SQL's `OVER (PARTITION BY p ORDER BY
  proctime ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)`, the append-only running
  aggregate);
- window: event time from the sequence column, watermarks 10,000 behind it, and per key
  (value % 100: 100 keys) tumbling windows of 10,000 with count and sum (Rillet's
  `with_watermark(...).group_by(...).window_agg(rl.tumbling(...))`; Flink SQL's `TUMBLE`
  window table function over a `WATERMARK FOR ts AS ts - INTERVAL '10' SECOND` column,
  one millisecond per sequence number).

The source is Rillet's sequence generator and Flink's `datagen` connector (a sequence
column and a random value column, 4 keys; its default throttle of 10,000 rows/s lifted). Records/s is rows read over the job's time, from
submitting the job to its end (its last checkpoint committed); neither side counts its
process or JVM start. Flink runs from the `apache-flink` wheel's jars on Java 17.

    bash bench/run.sh streaming_throughput.py [--rows 20000000] [--kinds stateless,keyed,window]
        [--flink-python PATH]

`--flink-python` is a Python with `apache-flink` installed (default: $RILLET_FLINK_PYTHON,
else ~/.cache/rillet/venv-flink/bin/python; create it with
`python3 -m venv ~/.cache/rillet/venv-flink && ~/.cache/rillet/venv-flink/bin/pip install apache-flink==2.3.0`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PARTITIONS = 4
PARALLELISM = 2


def rillet_job(kind: str, rows: int, out: str, chk: str) -> dict:
    import rillet as rl
    df = rl.read_sequence(partitions=PARTITIONS, rows=rows // PARTITIONS, batch_rows=8192)
    if kind == "stateless":
        df = df.filter(rl.col("value") % 2 == 0).select(
            "partition", "seq", (rl.col("value") * 2).alias("v2"))
    elif kind == "window":
        df = df.with_column("k", rl.col("value") % 100).with_watermark("seq", delay=10_000)
        df = df.group_by("k").window_agg(
            rl.tumbling("seq", 10_000), rl.count().alias("n"), rl.col("value").sum().alias("total"))
    else:
        df = df.group_by("partition").running_agg(
            rl.count().alias("n"), rl.col("value").sum().alias("total")).select(
            "partition", "seq", "value", "n", "total")
    started = time.perf_counter()
    job = df.start(out, format="csv", checkpoint_dir=chk, job_id=kind, checkpoint_interval=1.0)
    job.wait()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "checkpoints": job.metrics()["checkpoints"]["completed"]}


FLINK_SOURCE = """
CREATE TABLE src (
  p INT, seq BIGINT, v BIGINT, pt AS PROCTIME(), k AS v % 100, ts AS TO_TIMESTAMP_LTZ(seq, 3),
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
  'connector' = 'datagen', 'number-of-rows' = '{rows}', 'rows-per-second' = '1000000000',
  'fields.p.kind' = 'random', 'fields.p.min' = '0', 'fields.p.max' = '{keys}',
  'fields.seq.kind' = 'sequence', 'fields.seq.start' = '0', 'fields.seq.end' = '{last}',
  'fields.v.kind' = 'random', 'fields.v.min' = '0', 'fields.v.max' = '999'
)"""

FLINK_SINKS = {
    "stateless": ("CREATE TABLE sink_out (p INT, seq BIGINT, v2 BIGINT) WITH "
                  "('connector' = 'filesystem', 'path' = 'file://{out}', 'format' = 'csv')",
                  "INSERT INTO sink_out SELECT p, seq, v * 2 FROM src WHERE v % 2 = 0"),
    "keyed": ("CREATE TABLE sink_out (p INT, seq BIGINT, v BIGINT, n BIGINT, total BIGINT) WITH "
              "('connector' = 'filesystem', 'path' = 'file://{out}', 'format' = 'csv')",
              "INSERT INTO sink_out SELECT p, seq, v, "
              "COUNT(*) OVER w, SUM(v) OVER w FROM src "
              "WINDOW w AS (PARTITION BY p ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"),
    "window": ("CREATE TABLE sink_out (k BIGINT, window_start TIMESTAMP(3), window_end TIMESTAMP(3), "
               "n BIGINT, total BIGINT) WITH "
               "('connector' = 'filesystem', 'path' = 'file://{out}', 'format' = 'csv')",
               "INSERT INTO sink_out SELECT k, window_start, window_end, COUNT(*), SUM(v) FROM "
               "TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)) "
               "GROUP BY k, window_start, window_end"),
}


def flink_job(kind: str, rows: int, out: str, chk: str) -> dict:
    from pyflink.table import EnvironmentSettings, TableEnvironment
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(PARALLELISM))
    config.set("execution.checkpointing.interval", "1 s")
    config.set("execution.checkpointing.dir", f"file://{chk}")
    env.execute_sql(FLINK_SOURCE.format(rows=rows, keys=PARTITIONS - 1, last=rows - 1))
    ddl, insert = FLINK_SINKS[kind]
    env.execute_sql(ddl.format(out=out))
    started = time.perf_counter()
    env.execute_sql(insert).wait()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def run_child(python: str, engine: str, kind: str, rows: int) -> dict:
    work = tempfile.mkdtemp(prefix=f"stream-bench-{engine}-")
    out, chk = os.path.join(work, "out"), os.path.join(work, "chk")
    proc = subprocess.run([python, __file__, "--child", engine, kind, str(rows), out, chk],
                          capture_output=True, text=True, timeout=1800)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{engine} {kind} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(line[-1])
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs
                  if not f.startswith((".", "_")) and "_pending" not in d)
    shutil.rmtree(work, ignore_errors=True)
    result["records_per_s"] = round(result["rows"] / result["seconds"])
    result["output_bytes"] = written
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--flink-python", default=os.environ.get(
        "RILLET_FLINK_PYTHON", os.path.expanduser("~/.cache/rillet/venv-flink/bin/python")))
    parser.add_argument("--kinds", default="stateless,keyed,window",
                        help="comma-separated: stateless, keyed, window")
    parser.add_argument("--child", nargs=5)
    args = parser.parse_args()
    if args.child:
        engine, kind, rows, out, chk = args.child
        job = rillet_job if engine == "rillet" else flink_job
        print(json.dumps(job(kind, int(rows), out, chk)), flush=True)
        return
    print(f"{args.rows:,} rows, parallelism {PARALLELISM}, CSV out exactly once, checkpoints every 1 s")
    parser_kinds = args.kinds.split(",")
    for kind in parser_kinds:
        rillet = run_child(sys.executable, "rillet", kind, args.rows)
        flink = run_child(args.flink_python, "flink", kind, args.rows)
        print(f"{kind}: rillet {rillet['records_per_s']:,} rec/s ({rillet['seconds']:.1f} s, "
              f"{rillet['checkpoints']} checkpoints), flink {flink['records_per_s']:,} rec/s "
              f"({flink['seconds']:.1f} s) -> {rillet['records_per_s'] / flink['records_per_s']:.2f}x")


if __name__ == "__main__":
    main()
