"""Exactly-once through failures other than a kill, injected at the checkpoint protocol's
failpoints (``rillet.testing.failpoint``): checkpoints that fail to write and are aborted
while the job goes on. Every sink, against its real server, ends with each row once."""

import json
import os
import shutil

import pyarrow as pa
import pytest

import rillet as rl
from rillet.testing import failpoint, read_committed

import kill_sweep
from servers import needs, postgres_bin_dir
from test_postgres_sink import psql, server  # noqa: F401  (the PostgreSQL server fixture)

ROWS = 2000
#: Three checkpoints' states fail to write: each is aborted and the job goes on.
ABORT_THREE = "3*off->1*return->3*off->1*return->3*off->1*return->off"


def sequence(rows, rate=None, batch_rows=100):
    """Three splits of ``rows`` rows (at ``rate`` rows/s each), with running aggregates."""
    df = rl.read_sequence(partitions=3, rows=rows, rows_per_second=rate, batch_rows=batch_rows)
    return df.group_by("source", "partition").running_agg(
        rl.count().alias("running_count"), rl.col("value").sum().alias("running_sum"))


def run_with_aborts(sink, tmp_path, job_id):
    """Run the pipeline into ``sink`` while three checkpoints are aborted."""
    with failpoint("checkpoint-artifact-upload", ABORT_THREE):
        # A second of input: the three aborts fall well before the final checkpoint, whose
        # abort would fail the bounded job, on a busy machine too.
        job = sequence(ROWS, rate=2000, batch_rows=200).start(
            sink, checkpoint_dir=tmp_path / "chk", job_id=job_id, checkpoint_interval=0.05)
        job.wait()
    stats = job.metrics()["checkpoints"]
    assert stats["aborted"] >= 3, stats
    assert "failpoint checkpoint-artifact-upload" in (stats["last_failure"] or ""), stats


COLUMNS = ["partition", "seq", "value", "running_count", "running_sum"]


def assert_exact(rows, *, rows_per_partition=ROWS):
    """``rows``: dicts with the pipeline's columns (numbers, or their text), as written:
    each (partition, seq) once, with its value and running aggregates."""
    table = pa.table({c: pa.array([int(r[c]) for r in rows], pa.int64()) for c in COLUMNS})
    seen = sorted(zip(table["partition"].to_pylist(), table["seq"].to_pylist()))
    want = [(p, s) for p in range(3) for s in range(rows_per_partition)]
    lost, repeated = len(set(want) - set(seen)), len(seen) - len(set(seen))
    assert seen == want, f"{lost} rows lost, {repeated} repeated"
    kill_sweep.check_rows(table)


def test_aborted_checkpoints_lose_nothing_in_the_file_sink(tmp_path, caplog):
    caplog.set_level("WARNING", logger="rillet")
    run_with_aborts(str(tmp_path / "out"), tmp_path, "files")
    assert_exact(read_committed(tmp_path / "out").to_pylist())
    # Each abort is a WARNING of the rillet logger naming its checkpoint.
    aborts = [r for r in caplog.records if r.name == "rillet.runtime.checkpointing"
              and r.levelname == "WARNING" and "aborted" in r.getMessage()]
    assert len(aborts) >= 3, [r.getMessage() for r in caplog.records]
    for record in aborts:
        checkpoint = record.rillet["checkpoint"]
        assert isinstance(checkpoint, int), record.rillet
        assert f"checkpoint {checkpoint} aborted" in record.getMessage()
        assert "failpoint checkpoint-artifact-upload" in record.getMessage()


@needs(shutil.which("redis-server") is not None, "redis-server")
def test_aborted_checkpoints_lose_nothing_in_the_redis_sink(tmp_path):
    redis = kill_sweep.RedisProducer(rows=0, rate=1.0)  # the server alone
    try:
        run_with_aborts(rl.redis_stream_sink(redis.url, "out"), tmp_path, "to-redis")
        entries = redis.client.xrange("out")
        assert_exact([{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries])
    finally:
        redis.close()


@needs(kill_sweep.tansu_binary() is not None,
       "the tansu Kafka broker (scripts/test.sh builds it into $RILLET_CACHE/tools)")
def test_aborted_checkpoints_lose_nothing_in_the_kafka_sink(tmp_path):
    broker = kill_sweep.KafkaProducer(rows=0, rate=1.0)  # the broker alone
    try:
        broker.create_topic("out", 2)
        sink = rl.kafka_sink(broker.brokers, "out", key="partition", records_per_request=1)
        run_with_aborts(sink, tmp_path, "to-kafka")
        table = rl.read_kafka(broker.brokers, "out", bounded=True).collect()
        assert_exact([json.loads(v) for v in table["value"].to_pylist()])
    finally:
        broker.close()


@needs(postgres_bin_dir() is not None and shutil.which("psql") is not None,
       "PostgreSQL's server binaries (initdb, pg_ctl, postgres) and psql")
def test_aborted_checkpoints_lose_nothing_in_the_postgres_sink(server, tmp_path):  # noqa: F811
    url, port = server
    psql(port, "CREATE TABLE aborts (source text, partition bigint, seq bigint, value bigint, "
               "running_count bigint, running_sum bigint, PRIMARY KEY (partition, seq))")
    run_with_aborts(rl.postgres_upsert(url, "aborts", key=["partition", "seq"]), tmp_path, "to-pg")
    rows = psql(port, f"SELECT {', '.join(COLUMNS)} FROM aborts")
    assert_exact([dict(zip(COLUMNS, r)) for r in rows])


def test_failpoints_reach_a_child_process_through_the_environment():
    import os
    import subprocess
    import sys
    probe = "from rillet import _rillet; print(_rillet.failpoints())"
    env = {**os.environ, "RILLET_FAILPOINTS": "a-window=1*return->off; b-window=10%return"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'a-window': '1*return->off', 'b-window': '10%return'}"
    env["RILLET_FAILPOINTS"] = "no equals sign"
    failed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "is not name=actions" in failed.stderr


# Going back in time, twin runs and earlier runs' output (#27, failures 2, 4 and 6).

def stop_soon(job, after=0.3):
    with pytest.raises(TimeoutError):
        job.wait(timeout=after)
    return job.stop()


def test_resuming_an_older_savepoint_retires_the_newer_ones(tmp_path):
    df, out, chk = sequence(1500, rate=1000), tmp_path / "out", tmp_path / "chk"
    older = stop_soon(df.start(out, checkpoint_dir=chk, job_id="rewind", checkpoint_interval=0.05))
    newer = stop_soon(rl.resume(older, df, out, checkpoint_interval=0.05))
    assert int(newer.rsplit("-", 1)[1]) > int(older.rsplit("-", 1)[1])
    # Back to the older savepoint: what was committed after it is withdrawn, to be
    # written again. Cancelled before its first checkpoint.
    back = rl.resume(older, df, out, checkpoint_interval=60)
    back.cancel()
    with pytest.raises(rl.JobCancelled):
        back.wait()
    # A plain restart must not take the newer savepoint, whose rows were withdrawn.
    again = df.start(out, checkpoint_dir=chk, job_id="rewind", checkpoint_interval=0.05)
    again.wait()
    assert again.metrics()["checkpoints"]["restored_from"] <= int(older.rsplit("-", 1)[1])
    assert_exact(read_committed(out).to_pylist(), rows_per_partition=1500)
    # Naming it is refused with the reason, not restored into lost rows.
    with pytest.raises(rl.CheckpointError, match="retired"):
        rl.resume(newer, df, out)


def test_a_second_live_run_of_a_job_is_refused_naming_the_first(tmp_path):
    import socket
    df, out, chk = sequence(1500, rate=1000), tmp_path / "out", tmp_path / "chk"
    first = df.start(out, checkpoint_dir=chk, job_id="twin", checkpoint_interval=0.05)
    with pytest.raises(TimeoutError):
        first.wait(timeout=0.2)
    with pytest.raises(rl.CheckpointError, match=f"{os.getpid()}@{socket.gethostname()}"):
        df.start(out, checkpoint_dir=chk, job_id="twin", checkpoint_interval=0.05)
    with pytest.raises(rl.CheckpointError, match="already running"):
        rl.resume(chk / "twin", df, out)
    first.wait()
    assert_exact(read_committed(out).to_pylist(), rows_per_partition=1500)
    # Once the first has ended, the job may run again; a run cancelled and started again
    # at once waits for the cancelled one to end instead of being refused.
    again = df.start(out, checkpoint_dir=chk, job_id="twin")
    again.cancel()
    df.start(out, checkpoint_dir=chk, job_id="twin").wait()


def committed_rows(out):
    return sorted(zip(*read_committed(out).select(["partition", "seq"]).to_pydict().values()))


def test_a_checkpointed_run_never_deletes_what_a_run_without_checkpoints_committed(tmp_path):
    out, chk = tmp_path / "out", tmp_path / "chk"
    sequence(300).start(out, checkpoint_dir=chk, job_id="mixed", checkpoint_interval=0.05).wait()
    sequence(300).start(out, job_id="mixed").wait()
    # The checkpointed job again: it restores its final checkpoint and withdraws only
    # what its own checkpoints staged after it.
    sequence(300).start(out, checkpoint_dir=chk, job_id="mixed", checkpoint_interval=0.05).wait()
    assert len(committed_rows(out)) == 2 * 900


def test_a_new_checkpoint_directory_never_writes_over_an_earlier_runs_files(tmp_path):
    out = tmp_path / "out"
    sequence(400).start(out, checkpoint_dir=tmp_path / "chk-a", job_id="job",
                        checkpoint_interval=0.05).wait()
    first = committed_rows(out)
    sequence(300).start(out, checkpoint_dir=tmp_path / "chk-b", job_id="job",
                        checkpoint_interval=0.05).wait()
    rows = committed_rows(out)
    assert len(rows) == 1200 + 900, f"{len(rows)} rows: the second run replaced the first's files"
    assert set(first) <= set(rows)


# Restore at another parallelism (#27, key groups).

def windows(rows, rate=None):
    """The kill sweep's window job: per split, tumbling windows of its sequence numbers."""
    df = rl.read_sequence(partitions=kill_sweep.PARTITIONS, rows=rows, rows_per_second=rate, batch_rows=100)
    return df.with_watermark("seq", delay=1000).group_by("partition").window_agg(
        rl.tumbling("seq", kill_sweep.WINDOW), rl.count().alias("n"), rl.col("value").sum().alias("total"))


#: The jobs restored at another parallelism, by name.
RESCALED = {"running": sequence, "window": windows}


def assert_rescaled_output(job, out):
    """The rescaled job's output, exact: every row (or window) of 1,500 rows per split."""
    if job == "running":
        assert_exact(read_committed(out).to_pylist(), rows_per_partition=1500)
    else:
        kill_sweep.check_windows(read_committed(out), 1500, complete=True)


@pytest.mark.parametrize("later", [1, 4])
@pytest.mark.parametrize("job", ["running", "window"])
def test_a_savepoint_taken_at_parallelism_two_restores_at_another(tmp_path, job, later):
    build = RESCALED[job]
    out, chk = tmp_path / "out", tmp_path / "chk"
    try:
        rl.set_config(parallelism=2)
        first = build(1500, rate=1000).start(out, checkpoint_dir=chk, job_id="rescale", checkpoint_interval=0.05)
        savepoint = stop_soon(first)
        # As on a machine with another core count.
        rl.set_config(parallelism=later)
        resumed = rl.resume(savepoint, build(1500), out, checkpoint_interval=0.05)
        resumed.wait()
        assert resumed.metrics()["checkpoints"]["restored_from"] == int(savepoint.rsplit("-", 1)[1])
    finally:
        rl.set_config()
    assert_rescaled_output(job, out)


@pytest.mark.parametrize("job", ["running", "window"])
def test_a_checkpoint_restores_after_the_core_count_changed(tmp_path, job):
    # A crash (a cancel) at parallelism 2, a restart at 1 from the newest checkpoint.
    build = RESCALED[job]
    out, chk = tmp_path / "out", tmp_path / "chk"
    try:
        rl.set_config(parallelism=2)
        first = build(1500, rate=1000).start(out, checkpoint_dir=chk, job_id="cores", checkpoint_interval=0.05)
        with pytest.raises(TimeoutError):
            first.wait(timeout=0.4)
        first.cancel()
        with pytest.raises(rl.JobCancelled):
            first.wait()
        assert first.metrics()["checkpoints"]["completed"] >= 1
        rl.set_config(parallelism=1)
        again = build(1500).start(out, checkpoint_dir=chk, job_id="cores", checkpoint_interval=0.05)
        again.wait()
        assert again.metrics()["checkpoints"]["restored_from"] is not None
    finally:
        rl.set_config()
    assert_rescaled_output(job, out)


# Batch writes publish all their files or none (#27, atomic batch writes).

def failing_halfway(table):
    import pyarrow.compute as pc
    if (pc.max(table["id"]).as_py() or 0) >= 60_000:
        raise RuntimeError("the model fell over")
    return table


def visible_files(directory):
    return sorted(n for n in os.listdir(directory) if not n.startswith(("_", ".")))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_a_failed_batch_write_leaves_no_file_and_an_overwrite_keeps_the_old_output(tmp_path, fmt):
    out = tmp_path / "out"
    write = lambda df, **kw: getattr(df, f"write_{fmt}")(out, **kw)  # noqa: E731
    read = getattr(rl, f"read_{fmt}")
    write(rl.from_pydict({"id": list(range(10))}))
    before = visible_files(out)
    failing = rl.range(100_000).map_batches(failing_halfway, batch_size=5_000)
    with pytest.raises(rl.UserFunctionError, match="fell over"):
        write(failing)
    assert visible_files(out) == before, "a failed write left files a reader sees"
    with pytest.raises(rl.UserFunctionError, match="fell over"):
        write(failing, mode="overwrite")
    assert visible_files(out) == before, "a failed overwrite took the old output"
    assert read(str(out)).count() == 10
    write(rl.range(25), mode="overwrite")
    assert read(str(out)).count() == 25


# An idle input does not hold event time back (#27, idleness).

@needs(shutil.which("redis-server") is not None, "redis-server")
def test_an_idle_input_stops_holding_back_the_windows_of_the_others(tmp_path):
    import time
    redis = kill_sweep.RedisProducer(rows=0, rate=1.0)  # the server alone
    try:
        pipe = redis.client.pipeline(transaction=False)
        for seq in range(1000):
            pipe.xadd("busy", {"seq": seq})
        pipe.execute()
        rl.set_config(parallelism=2)
        # Two streams, one task each: "quiet" never gets a row.
        df = rl.read_redis_streams(redis.url, ["busy", "quiet"], ["seq"], bounded=False)
        df = df.select(rl.col("seq").cast("int64").alias("seq"))
        windows = df.with_watermark("seq", delay=0, idle_timeout=0.3).window_agg(
            rl.tumbling("seq", 100), rl.count().alias("n"))
        job = windows.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="idle",
                            checkpoint_interval=0.1)
        deadline = time.monotonic() + 20
        fired = 0
        while time.monotonic() < deadline and fired < 9:
            time.sleep(0.2)
            fired = read_committed(tmp_path / "out").num_rows
        job.cancel()
        with pytest.raises(rl.JobCancelled):
            job.wait()
        # Windows up to 800..900 fire (the watermark is 999); each with its 100 rows.
        table = read_committed(tmp_path / "out")
        assert table.num_rows >= 9, f"{table.num_rows} windows fired: the quiet stream held them back"
        assert set(table["n"].to_pylist()) == {100}
    finally:
        rl.set_config()
        redis.close()
