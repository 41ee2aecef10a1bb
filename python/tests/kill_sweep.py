"""Kill sweep: a streaming job killed with SIGKILL at random instants and restarted, then
checked by the sequence oracle (``rillet.testing.check_sequence``: no row lost, repeated
or wrong).

The job reads the sequence source, keeps every row through a filter, adds per split the
running count and sum (keyed state), and writes Parquet exactly once with checkpoints.
The sweep starts it in a child process, kills it at a random instant after it started,
checks that what is committed so far is a clean prefix of every split (no repeat, no
wrong value, nothing out of order), restarts it with the same job id, and so on; after the
last kill it lets the job finish and checks the whole output: every row exactly once, the
right total, and every running aggregate equal to its recomputed value.

    python python/tests/kill_sweep.py --kills 50            # a new seed, printed
    python python/tests/kill_sweep.py --kills 50 --seed 7   # replay seed 7's kill instants
    python python/tests/kill_sweep.py --kills 50 --source redis   # from Redis Streams
    python python/tests/kill_sweep.py --kills 50 --source kafka --rate 1000   # from Kafka (tansu)
    python python/tests/kill_sweep.py --kills 50 --udf      # through a slow Python function
    python python/tests/kill_sweep.py --kills 50 --aborts 0.1    # 10% of checkpoints fail to write too
    python python/tests/kill_sweep.py --kills 50 --job window    # a tumbling-window job instead
    python python/tests/kill_sweep.py --kills 50 --sink redis    # into the Redis stream sink (or kafka)

The test suite runs it with 5 kills (python/tests/test_streaming.py).
"""

from __future__ import annotations

import argparse
import os
import random
import re
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
#: Where ``--aborts`` makes a checkpoint fail to write: its manifest, once per checkpoint.
ABORT_POINT = "checkpoint-before-manifest"
#: The window job's tumbling windows, in sequence numbers (its event time).
WINDOW = 500


def value_of(partition: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """The sequence source's value of each (partition, seq), as the source computes it."""
    with np.errstate(over="ignore"):
        mixed = (seq.astype(np.uint64) * np.uint64(2_654_435_761)) ^ partition.astype(np.uint64)
    return (mixed % np.uint64(1000)).astype(np.int64)


def build(rows: int, rate: float, redis_url: str | None = None, bounded: bool = True,
          kafka: str | None = None):
    import rillet as rl
    if kafka is not None:
        # The same rows in topic "seq": Kafka partition p holds sequence partition p, each
        # record keyed by its seq with its value as text.
        df = rl.read_kafka(kafka, "seq", bounded=bounded)
        df = df.select(rl.lit("seq").alias("source"), rl.col("partition").cast("uint32").alias("partition"),
                       rl.col("key").cast("string").cast("uint64").alias("seq"),
                       rl.col("value").cast("string").cast("int64").alias("value"))
    elif redis_url is None:
        df = rl.read_sequence(partitions=PARTITIONS, rows=rows, rows_per_second=rate, batch_rows=500)
    else:
        # The same rows, written to one Redis stream per partition by the sweep.
        df = rl.read_redis_streams(redis_url, [f"seq/{p}" for p in range(PARTITIONS)],
                                   ["source", "partition", "seq", "value"], bounded=bounded, batch_rows=500)
        df = df.select("source", rl.col("partition").cast("uint32").alias("partition"),
                       rl.col("seq").cast("uint64").alias("seq"), rl.col("value").cast("int64").alias("value"))
    df = df.filter(rl.col("value") >= 0)
    if os.environ.get("SWEEP_JOB") == "window":
        # Splits of one task interleave by batch: the watermark's delay covers that.
        return df.with_watermark("seq", delay=1000).group_by("partition").window_agg(
            rl.tumbling("seq", WINDOW), rl.count().alias("n"), rl.col("value").sum().alias("total"))
    df = df.group_by("source", "partition").running_agg(
        rl.count().alias("running_count"), rl.col("value").sum().alias("running_sum"))
    if os.environ.get("SWEEP_UDF") == "1":
        # A model answering each call after a few milliseconds: checkpoints (and kills)
        # find calls in flight, whose rows a restore must call again.
        df = df.map_batches(slow_identity, concurrency=2, batch_size=100, schema=df.schema)
    return df


def slow_identity(table):
    """The rows unchanged, after 2 to 20 ms."""
    time.sleep(0.002 + (hash(table.num_rows) % 19) / 1000)
    return table


def target(out: str):
    """Where the sweep's job writes: Parquet files in ``out``, or the exactly-once Redis
    stream or Kafka topic ``out`` that ``SWEEP_SINK`` names (``redis:<url>``,
    ``kafka:<brokers>``)."""
    import rillet as rl
    kind, _, where = os.environ.get("SWEEP_SINK", "files:").partition(":")
    if kind == "redis":
        return rl.redis_stream_sink(where, "out")
    if kind == "kafka":
        return rl.kafka_sink(where, "out", key="partition", records_per_request=1)
    return out


def child(out: str, chk: str, rows: int, rate: float, interval: float) -> None:
    redis_url = os.environ.get("SWEEP_REDIS")
    bounded = os.environ.get("SWEEP_BOUNDED", "1") == "1"
    df = build(rows, rate, redis_url, bounded, os.environ.get("SWEEP_KAFKA"))
    job = df.start(target(out), checkpoint_dir=chk, job_id=JOB_ID, checkpoint_interval=interval)
    print("started", flush=True)
    job.wait()
    print("finished", job.metrics()["checkpoints"], flush=True)


def committed(out: str, sink: str = "files:") -> pa.Table:
    """Every row the job has committed, in the sink ``sink`` names (as ``SWEEP_SINK``
    does), typed as the sequence oracle reads them."""
    kind, _, where = sink.partition(":")
    if kind == "files":
        from rillet.testing import read_committed
        return read_committed(out)
    if kind == "redis":
        import redis
        entries = redis.Redis.from_url(where).xrange("out")
        rows = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    else:
        import json
        import rillet as rl
        values = rl.read_kafka(where, "out", bounded=True).collect()["value"].to_pylist()
        rows = [json.loads(v) for v in values]
    types = {"source": pa.string(), "partition": pa.uint32(), "seq": pa.uint64(), "value": pa.int64(),
             "running_count": pa.int64(), "running_sum": pa.int64()}
    return pa.table({c: pa.array([r[c] if t == pa.string() else int(r[c]) for r in rows], t)
                     for c, t in types.items()})


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


def check_windows(table: pa.Table, rows: int, complete: bool = False) -> int:
    """The window job's output, of a sequence of ``rows`` rows per split: each (partition,
    window) at most once, with the count and sum of exactly its rows; ``complete``: every
    window there. Returns the row count."""
    if table.num_rows == 0 and not complete:
        return 0
    keys = list(zip(table["partition"].to_pylist(), table["window_start"].to_pylist()))
    if len(set(keys)) != len(keys):
        raise AssertionError(f"{len(keys) - len(set(keys))} windows emitted twice")
    for (p, start), n, total in zip(keys, table["n"].to_pylist(), table["total"].to_pylist()):
        seqs = np.arange(start, min(start + WINDOW, rows), dtype=np.uint64)
        want = int(value_of(np.full(len(seqs), p), seqs).sum())
        if (n, total) != (len(seqs), want):
            raise AssertionError(f"window {p}/{start}: {n} rows summing to {total}, "
                                 f"expected {len(seqs)} summing to {want}")
    if complete:
        want = {(p, start) for p in range(PARTITIONS) for start in range(0, rows, WINDOW)}
        missing = want - set(keys)
        if missing:
            raise AssertionError(f"{len(missing)} windows missing, e.g. {sorted(missing)[:3]}")
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


class RedisProducer:
    """A Redis server on loopback and a thread writing the sequence's rows into one stream
    per partition at ``rate`` rows/s per stream, as a live producer would."""

    def __init__(self, rows: int, rate: float):
        import socket
        import threading
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.rows, self.rate = rows, rate
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _produce(self) -> None:
        step = 200
        started = time.monotonic()
        for first in range(0, self.rows, step):
            seqs = np.arange(first, min(first + step, self.rows), dtype=np.uint64)
            pipe = self.client.pipeline(transaction=False)
            for p in range(PARTITIONS):
                values = value_of(np.full(len(seqs), p), seqs)
                for seq, value in zip(seqs.tolist(), values.tolist()):
                    pipe.xadd(f"seq/{p}", {"source": "seq", "partition": p, "seq": seq, "value": value})
            pipe.execute()
            due = started + (first + step) / self.rate
            time.sleep(max(0.0, due - time.monotonic()))

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def tansu_binary() -> str | None:
    """The tansu Kafka-protocol broker: on PATH, or in ``$RILLET_CACHE/tools/bin`` where
    scripts/test.sh builds it."""
    import shutil
    cache = os.environ.get("RILLET_CACHE") or os.path.expanduser("~/.cache/rillet")
    cached = os.path.join(cache, "tools", "bin", "tansu")
    return shutil.which("tansu") or (cached if os.path.exists(cached) else None)


class KafkaProducer:
    """A tansu broker on loopback (in memory) and a thread writing the sequence's rows into
    topic ``seq``, one partition per sequence partition, at ``rate`` rows/s per partition.

    Each record goes in a batch of its own: tansu 0.6.0 gives a multi-record batch a single
    offset (its high watermark moves by one per batch), which no Kafka client can read
    back correctly."""

    def __init__(self, rows: int, rate: float):
        import socket
        import threading
        from confluent_kafka import Producer
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        address = f"tcp://127.0.0.1:{self.port}"
        binary = tansu_binary()
        if binary is None:
            raise RuntimeError("no tansu broker on PATH or in $RILLET_CACHE/tools/bin: "
                               "scripts/test.sh builds it")
        self.server = subprocess.Popen([binary, "broker", "--listener-url", address,
                                        "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.create_topic("seq", PARTITIONS)
        self.producer = Producer({"bootstrap.servers": self.brokers, "log_level": 0,
                                  "batch.num.messages": 1, "linger.ms": 0})
        self.rows, self.rate = rows, rate
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create_topic(self, name: str, partitions: int) -> None:
        """Create topic ``name`` with ``partitions`` partitions, waiting until it exists."""
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.brokers, "log_level": 0})  # alive until resolved
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
            future.result(timeout=20)

    def _produce(self) -> None:
        step = 100
        started = time.monotonic()
        for first in range(0, self.rows, step):
            seqs = np.arange(first, min(first + step, self.rows), dtype=np.uint64)
            for p in range(PARTITIONS):
                values = value_of(np.full(len(seqs), p), seqs)
                for seq, value in zip(seqs.tolist(), values.tolist()):
                    self.producer.produce("seq", key=str(seq).encode(), value=str(value).encode(), partition=p)
            self.producer.poll(0)
            due = started + (first + step) / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
        if self.producer.flush(60) != 0:
            raise RuntimeError("the Kafka producer could not deliver every record")

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def sweep(kills: int, seed: int, rows: int | None = None, rate: float = 4000.0,
          interval: float = 0.1, max_delay: float = 1.0, log=print, source: str = "sequence",
          udf: bool = False, aborts: float = 0.0, sink: str = "files", job: str = "running") -> dict:
    """Run the sweep; returns its figures. Raises AssertionError (with the seed) on a bad
    output. ``source="redis"`` (or ``"kafka"``) reads the rows from Redis streams (a Kafka
    topic on a tansu broker) a producer keeps writing while the job is killed and restarted.
    ``udf=True`` adds a slow Python function after the running aggregate, so that
    checkpoints and kills find its calls in flight. ``aborts`` is the share of checkpoint
    artifact writes that fail (failpoint ``checkpoint-artifact-upload``), each aborting its
    checkpoint while the job goes on, in every run, the last included. ``sink="redis"`` (or
    ``"kafka"``) writes to the exactly-once Redis stream (Kafka topic) sink on a server of
    its own instead of Parquet files. ``job="window"`` runs a tumbling-window aggregate
    (event time: the sequence numbers) instead of the running aggregate, into files."""
    rng = random.Random(seed)
    # Enough rows that the job is still running at every kill: each run makes about
    # max_delay / 2 seconds of progress.
    # A Redis producer writes as the sweep goes: it should outlast the restarts too.
    per_kill = max_delay * 0.6 + (0.6 if source in ("redis", "kafka") else 0.0)
    rows = rows or int(rate * (kills * per_kill + 1.0))
    work = tempfile.mkdtemp(prefix="rillet-kill-sweep-")
    out, chk = os.path.join(work, "out"), os.path.join(work, "chk")
    log(f"kill sweep: seed {seed}, {kills} kills, {PARTITIONS} x {rows} rows at {rate:.0f} rows/s per split, "
        f"checkpoints every {interval}s, in {work}")
    command = [sys.executable, os.path.abspath(__file__), "--child", out, chk, str(rows), str(rate), str(interval)]
    env = dict(os.environ, SWEEP_UDF="1" if udf else "0", SWEEP_JOB=job)
    if job == "window":
        if sink != "files" or udf:
            raise ValueError("the window job writes files, without a function")
        log(f"  a tumbling-window job: windows of {WINDOW} rows by event time")
    if udf:
        log("  through a slow Python function (map_batches, 2 workers)")
    if aborts > 0:
        env["RILLET_FAILPOINTS"] = f"{ABORT_POINT}={aborts * 100:g}%return"
        log(f"  {aborts:.0%} of checkpoints fail to write, and are aborted")
    sink_server = None
    if sink == "redis":
        sink_server = RedisProducer(rows=0, rate=1.0)  # the server alone
        env["SWEEP_SINK"] = f"redis:{sink_server.url}"
        log(f"  writing Redis stream out at {sink_server.url}")
    elif sink == "kafka":
        sink_server = KafkaProducer(rows=0, rate=1.0)  # the broker alone
        sink_server.create_topic("out", 2)
        env["SWEEP_SINK"] = f"kafka:{sink_server.brokers}"
        log(f"  writing Kafka topic out at {sink_server.brokers}")
    producer = None
    if source == "redis":
        producer = RedisProducer(rows, rate)
        # While the producer writes, the job waits for more; only the last run ends.
        env.update(SWEEP_REDIS=producer.url, SWEEP_BOUNDED="0")
        log(f"  reading Redis streams at {producer.url}")
    elif source == "kafka":
        producer = KafkaProducer(rows, rate)
        env.update(SWEEP_KAFKA=producer.brokers, SWEEP_BOUNDED="0")
        log(f"  reading Kafka topic seq from tansu at {producer.brokers}")
    try:
        return _sweep(kills, seed, rows, rng, command, env, out, work, max_delay, log, producer)
    finally:
        for server in (producer, sink_server):
            if server is not None:
                server.close()


def _sweep(kills, seed, rows, rng, command, env, out, work, max_delay, log, producer) -> dict:
    landed = 0
    recovery = []
    started_at = time.monotonic()
    for k in range(kills):
        delay = rng.uniform(0.05, max_delay)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
            visible = (check_windows(committed(out), rows) if job_kind(env) == "window"
                       else check_prefix(committed(out, env.get("SWEEP_SINK", "files:"))))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}, after kill {k + 1}: {e}") from None
        landed += not finished
        log(f"  kill {k + 1}: {delay:.3f}s after start, {'mid-run' if not finished else 'after the end'}, "
            f"{visible} rows committed")
    if producer is not None:
        producer.thread.join()
        env["SWEEP_BOUNDED"] = "1"
    # The last run: a failed final checkpoint (an injected abort) fails it, and a restart
    # takes it from its latest checkpoint, as an operator would.
    for attempt in range(10):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        injected = f"failpoint {ABORT_POINT}" in proc.stderr
        if proc.returncode == 0 or not injected:
            break
        log(f"  the last run's final checkpoint was aborted (attempt {attempt + 1}): restarting")
    if proc.returncode != 0:
        raise AssertionError(f"seed {seed}: the last run failed: {proc.stdout}{proc.stderr}")
    aborted = re.search(r"'aborted': (\d+)", proc.stdout)
    table = committed(out, env.get("SWEEP_SINK", "files:"))
    expected = {("seq", p): rows for p in range(PARTITIONS)}
    from rillet.testing import check_sequence
    try:
        if job_kind(env) == "window":
            check_windows(table, rows, complete=True)
            total = int(pc.sum(table["n"]).as_py())
        else:
            total = check_sequence(table, expected)
            check_rows(table)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from None
    assert total == rows * PARTITIONS
    if os.path.isdir(os.path.join(out, "_pending")):
        leftovers = os.listdir(os.path.join(out, "_pending"))
        assert not leftovers, f"seed {seed}: staged files left after the end: {leftovers}"
    figures = {"seed": seed, "source": env.get("SWEEP_KAFKA") and "kafka" or ("redis" if producer else "sequence"),
               "sink": env.get("SWEEP_SINK", "files:").partition(":")[0],
               "job": job_kind(env), "udf": env["SWEEP_UDF"] == "1", "kills": kills, "kills_mid_run": landed, "rows": total,
               "aborted_in_last_run": int(aborted.group(1)) if aborted else None,
               "elapsed_s": round(time.monotonic() - started_at, 1),
               "restart_to_running_s_p50": round(float(np.median(recovery)), 3) if recovery else None}
    log(f"kill sweep passed: {figures}")
    return figures


def job_kind(env) -> str:
    """The sweep's job: ``running`` (keyed running aggregates) or ``window``."""
    return env.get("SWEEP_JOB", "running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=4000.0, help="rows per second per split")
    parser.add_argument("--source", choices=["sequence", "redis", "kafka"], default="sequence")
    parser.add_argument("--udf", action="store_true", help="through a slow Python function too")
    parser.add_argument("--sink", choices=["files", "redis", "kafka"], default="files")
    parser.add_argument("--aborts", type=float, default=0.0,
                        help="share of checkpoints that fail to write (and are aborted)")
    parser.add_argument("--job", choices=["running", "window"], default="running",
                        help="keyed running aggregates, or a tumbling-window aggregate")
    parser.add_argument("--child", nargs=5, metavar=("OUT", "CHK", "ROWS", "RATE", "INTERVAL"))
    args = parser.parse_args()
    if args.child:
        out, chk, rows, rate, interval = args.child
        child(out, chk, int(rows), float(rate), float(interval))
        return
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    sweep(args.kills, seed, rate=args.rate, source=args.source, udf=args.udf, aborts=args.aborts,
          sink=args.sink, job=args.job)


if __name__ == "__main__":
    main()
