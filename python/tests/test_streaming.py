"""Streaming jobs from Python: exactly-once output through crashes, savepoints, status
and metrics, and the kill sweep with 5 kills (python/tests/kill_sweep.py runs 50)."""

import os
import random
import shutil

import pyarrow as pa
import pytest

import rillet as rl
from rillet.testing import check_sequence, read_committed

import kill_sweep
from servers import needs

needs_kafka = needs(kill_sweep.tansu_binary() is not None,
                    "the tansu Kafka broker (scripts/test.sh builds it into $RILLET_CACHE/tools)")


def pipeline(rows, rate=None):
    df = rl.read_sequence(partitions=3, rows=rows, rows_per_second=rate, batch_rows=200)
    return df.group_by("source", "partition").running_agg(
        rl.count().alias("running_count"), rl.col("value").sum().alias("running_sum"))


def expected(rows):
    return {("seq", p): rows for p in range(3)}


def test_a_bounded_job_commits_everything_and_reports_its_checkpoints(tmp_path):
    job = pipeline(2000).start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="bounded",
                               checkpoint_interval=0.05)
    stats = job.wait()
    assert job.status() == "finished"
    assert stats["rows_written"] == 6000
    checkpoints = job.metrics()["checkpoints"]
    assert checkpoints["completed"] >= 1 and checkpoints["restored_from"] is None
    assert len(checkpoints["durations_ms"]) == checkpoints["completed"]
    table = read_committed(tmp_path / "out")
    assert check_sequence(table, expected(2000)) == 6000
    kill_sweep.check_rows(table)
    # A reader of the directory never sees staged files.
    assert rl.read_parquet(str(tmp_path / "out")).count() == 6000


def test_cancel_then_restart_with_the_same_id_resumes_exactly(tmp_path):
    df = pipeline(3000, rate=6000)
    first = df.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="restart", checkpoint_interval=0.05)
    with pytest.raises(TimeoutError):
        first.wait(timeout=0.2)
    first.cancel()
    with pytest.raises(rl.JobCancelled):
        first.wait()
    assert first.status() == "cancelled"
    # By the job's directory: its newest valid checkpoint.
    second = rl.resume(tmp_path / "chk" / "restart", df, tmp_path / "out", checkpoint_interval=0.05)
    second.wait()
    assert second.metrics()["checkpoints"]["restored_from"] is not None
    table = read_committed(tmp_path / "out")
    assert check_sequence(table, expected(3000)) == 9000
    kill_sweep.check_rows(table)


def test_stop_with_a_savepoint_and_resume_from_it(tmp_path):
    df = pipeline(3000, rate=6000)
    first = df.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="sp", checkpoint_interval=0.05)
    with pytest.raises(TimeoutError):
        first.wait(timeout=0.2)
    savepoint = first.stop()
    assert first.status() == "stopped"
    assert os.path.isdir(savepoint) and os.path.basename(savepoint).startswith("savepoint-")
    assert read_committed(tmp_path / "out").num_rows < 9000
    second = rl.resume(savepoint, df, tmp_path / "out")
    second.wait()
    assert second.metrics()["checkpoints"]["restored_from"] == int(savepoint.rsplit("-", 1)[1])
    assert check_sequence(read_committed(tmp_path / "out"), expected(3000)) == 9000


def test_a_job_without_checkpoints_commits_at_the_end(tmp_path):
    job = pipeline(500).start(tmp_path / "out", format="json", job_id="plain")
    job.wait()
    files = [f for f in os.listdir(tmp_path / "out") if f.endswith(".json")]
    assert files and job.metrics().get("checkpoints") is None
    assert rl.read_json(str(tmp_path / "out")).count() == 1500


def test_the_oracle_names_gaps_and_repeats():
    table = rl.read_sequence(partitions=1, rows=10).collect()
    with pytest.raises(AssertionError, match="missing"):
        check_sequence(table.slice(0, 8), {("seq", 0): 10})
    with pytest.raises(AssertionError, match="repeated"):
        check_sequence(pa.concat_tables([table, table.slice(3, 1)]), {("seq", 0): 10})


def test_checkpoints_go_on_past_a_call_in_flight_and_a_restore_calls_it_again(tmp_path):
    import time
    hold = tmp_path / "hold"
    hold.touch()

    def slow(table):
        # A model that does not answer the call holding the first row of partition 0
        # until the test lets it; every other call is answered at once.
        first = any(p == 0 and s == 0 for p, s in zip(table["partition"].to_pylist(), table["seq"].to_pylist()))
        while first and hold.exists():
            time.sleep(0.005)
        return table

    rows, out, chk = 300, tmp_path / "out", tmp_path / "chk"
    source = rl.read_sequence(partitions=3, rows=rows, rows_per_second=50, batch_rows=10)
    # Four calls at once, up to eight in flight: the held call leaves room for the others
    # for a while (after that, its results hold up theirs and the input stops).
    # schema= given: finding it from the first rows would run the held call here.
    df = source.map_batches(slow, concurrency=4, schema=source.schema)
    job = df.start(out, checkpoint_dir=chk, job_id="slow-call", checkpoint_interval=0.05)
    deadline = time.monotonic() + 30
    try:
        while job.metrics()["checkpoints"]["completed"] < 3:
            assert time.monotonic() < deadline, "checkpoints waited for the call in flight"
            time.sleep(0.01)
    except AssertionError:
        hold.unlink()  # no job left hanging on the held call
        job.cancel()
        raise
    assert hold.exists()
    job.cancel()
    # A cancelled job ends once the calls it started return: let the held one go.
    import threading
    threading.Timer(0.3, hold.unlink).start()
    with pytest.raises(rl.JobCancelled):
        job.wait()
    committed = read_committed(out)
    assert not any(p == 0 and s == 0 for p, s in zip(committed["partition"].to_pylist(), committed["seq"].to_pylist()))
    # The newest checkpoint holds the rows of the call in flight (the source is past
    # them): the restarted job calls it again, and no row is lost.
    figures = rl.resume(chk / "slow-call", source.map_batches(slow, concurrency=4, schema=source.schema), out,
                        checkpoint_interval=0.05).wait()
    assert check_sequence(read_committed(out), expected(rows)) == 3 * rows
    # Counted, not hidden: the model saw those rows twice.
    assert sum(op["rows_recalled"] for op in figures["operators"]) >= 1


def test_what_a_streaming_job_cannot_run_is_refused_by_name(tmp_path):
    df = rl.read_sequence(partitions=2, rows=10).sort("seq")
    with pytest.raises(rl.PlanError, match="cannot run in a streaming job"):
        df.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk")
    with pytest.raises(ValueError, match="count, sum, min or max"):
        rl.read_sequence(partitions=1, rows=1).group_by("partition").running_agg(rl.col("value").mean())
    # Files read through the relational engine have no position: the error names the
    # source that has one.
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(rl.PlanError, match=r"rl.watch_directory\(path, format=..., bounded=True\)"):
        rl.read_parquet(tmp_path / "x.parquet").start(tmp_path / "out", checkpoint_dir=tmp_path / "chk")


def test_kill_sweep_with_five_kills():
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed)
    assert figures["kills_mid_run"] >= 3, figures


def test_kill_sweep_with_aborted_checkpoints_and_five_kills():
    # About 10% of checkpoints fail to write (each aborted while the job goes on) in every
    # run, besides the kills; the output is still exact.
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, aborts=0.1)
    assert figures["kills_mid_run"] >= 3, figures


def test_kill_sweep_of_a_tumbling_window_job_with_five_kills_and_aborted_checkpoints():
    # Open windows live in the checkpoints: each fires once, with exactly its rows.
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, job="window", aborts=0.1)
    assert figures["kills_mid_run"] >= 3, figures


@needs(shutil.which("redis-server") is not None, "redis-server")
def test_kill_sweep_into_the_redis_stream_sink_with_five_kills_and_aborted_checkpoints():
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, sink="redis", aborts=0.1)
    assert figures["kills_mid_run"] >= 3, figures


@needs_kafka
def test_kill_sweep_into_the_kafka_sink_with_five_kills_and_aborted_checkpoints():
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, sink="kafka", aborts=0.1, rate=1000.0)
    assert figures["kills_mid_run"] >= 3, figures


def test_kill_sweep_through_a_slow_function_with_five_kills():
    # Checkpoints and kills find the function's calls in flight: their rows live in the
    # checkpoints and are called again after each restart.
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, udf=True)
    assert figures["kills_mid_run"] >= 3, figures


@needs(shutil.which("redis-server") is not None, "redis-server")
def test_kill_sweep_from_redis_streams_with_five_kills():
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, source="redis")
    assert figures["kills_mid_run"] >= 3, figures


@needs(shutil.which("redis-server") is not None, "redis-server")
def test_redis_streams_bounded_read_and_a_clear_error_for_an_unreachable_server(tmp_path):
    producer = kill_sweep.RedisProducer(rows=300, rate=1e9)
    try:
        producer.thread.join()
        df = rl.read_redis_streams(producer.url, ["seq/0", "seq/1"], ["seq", "missing"], bounded=True)
        table = df.collect()
        assert table.num_rows == 600
        assert table.column("missing").null_count == 600
        assert sorted(set(table.column("stream").to_pylist())) == ["seq/0", "seq/1"]
    finally:
        producer.close()
    with pytest.raises(OSError, match="redis at redis://127.0.0.1:1"):
        rl.read_redis_streams("redis://127.0.0.1:1", ["s"], ["f"], bounded=True).collect()


@needs_kafka
def test_kill_sweep_from_kafka_with_five_kills():
    seed = random.SystemRandom().randrange(1 << 32)
    figures = kill_sweep.sweep(kills=5, seed=seed, source="kafka", rate=1000.0)
    assert figures["kills_mid_run"] >= 3, figures


@needs_kafka
def test_kafka_bounded_read_and_clear_errors():
    producer = kill_sweep.KafkaProducer(rows=250, rate=1e9)
    try:
        producer.thread.join()
        df = rl.read_kafka(producer.brokers, "seq", bounded=True)
        table = df.collect()
        assert table.num_rows == 250 * kill_sweep.PARTITIONS
        assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
        first = table.filter(pa.compute.equal(table["partition"], 1)).sort_by("offset").slice(0, 3)
        assert first["offset"].to_pylist() == [0, 1, 2]
        assert first["key"].to_pylist() == [b"0", b"1", b"2"]
        with pytest.raises(rl.PlanError, match='no topic "missing"'):
            rl.read_kafka(producer.brokers, "missing")
    finally:
        producer.close()
    with pytest.raises(OSError, match="kafka at 127.0.0.1:1"):
        rl.read_kafka("127.0.0.1:1", "seq")


@needs_kafka
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kafka_reads_topics_compressed_by_other_producers(codec):
    from confluent_kafka import Producer
    broker = kill_sweep.KafkaProducer(rows=0, rate=1.0)  # the broker alone
    try:
        broker.create_topic("photos", 1)
        # Values of ~10 KB that compress well (librdkafka sends a batch uncompressed when
        # compression would not shrink it), one record per batch (tansu's memory engine).
        values = [(f"record {i}: " + "caption of a photo, " * 500).encode() for i in range(20)]
        delivered = []
        producer = Producer({"bootstrap.servers": broker.brokers, "log_level": 0, "linger.ms": 0,
                             "batch.num.messages": 1, "compression.type": codec})
        for i, value in enumerate(values):
            producer.produce("photos", key=str(i).encode(), value=value,
                             on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(30) == 0 and delivered == [None] * 20
        table = rl.read_kafka(broker.brokers, "photos", bounded=True).collect().sort_by("offset")
        assert table["value"].to_pylist() == values
        assert table["key"].to_pylist() == [str(i).encode() for i in range(20)]
    finally:
        broker.close()


@needs_kafka
def test_kafka_sink_puts_keys_on_the_partitions_kafkas_own_clients_pick(tmp_path):
    from confluent_kafka import Producer
    broker = kill_sweep.KafkaProducer(rows=0, rate=1.0)  # the broker alone
    try:
        broker.create_topic("theirs", 7)
        broker.create_topic("ours", 7)
        keys = [str(seq).encode() for seq in range(200)]
        theirs = {}
        producer = Producer({"bootstrap.servers": broker.brokers, "log_level": 0, "linger.ms": 0,
                             "batch.num.messages": 1, "partitioner": "murmur2_random"})
        for key in keys:
            producer.produce("theirs", key=key, value=b"x",
                             on_delivery=lambda err, msg: theirs.__setitem__(msg.key(), msg.partition()))
        assert producer.flush(30) == 0 and len(theirs) == len(keys)
        assert len(set(theirs.values())) == 7

        df = rl.read_sequence(partitions=1, rows=len(keys), batch_rows=50)
        df.start(rl.kafka_sink(broker.brokers, "ours", key="seq", records_per_request=1),
                 checkpoint_dir=tmp_path / "chk", job_id="keyed").wait()
        ours = rl.read_kafka(broker.brokers, "ours", bounded=True).collect()
        assert dict(zip(ours["key"].to_pylist(), ours["partition"].to_pylist())) == theirs
    finally:
        broker.close()


TO_KAFKA = """
import rillet as rl
df = rl.read_sequence(partitions=3, rows={rows}, rows_per_second={rate}, batch_rows=200)
df = df.group_by("source", "partition").running_agg(
    rl.count().alias("running_count"), rl.col("value").sum().alias("running_sum"))
sink = rl.kafka_sink({brokers!r}, "out", key="partition", records_per_request=1)
df.start(sink, checkpoint_dir={chk!r}, job_id="to-kafka", checkpoint_interval=0.05).wait()
"""


@needs_kafka
def test_the_kafka_sink_produces_each_row_once_through_a_kill(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time
    broker = kill_sweep.KafkaProducer(rows=0, rate=1.0)  # the broker alone
    try:
        broker.create_topic("out", 2)
        rows, chk = 2000, str(tmp_path / "chk")
        script = tmp_path / "to_kafka.py"
        script.write_text(TO_KAFKA.format(rows=rows, rate=1000, brokers=broker.brokers, chk=chk))
        child = subprocess.Popen([sys.executable, str(script)])
        produced = lambda: rl.read_kafka(broker.brokers, "out", bounded=True).count()  # noqa: E731
        deadline = time.monotonic() + 60
        while produced() == 0:
            assert child.poll() is None and time.monotonic() < deadline, "the job wrote nothing"
            time.sleep(0.1)
        time.sleep(random.uniform(0.0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert 0 < produced() < 3 * rows, "killed mid-run"

        # Restarted under the same id, the job finishes the commit the kill may have cut
        # short and goes on from its checkpoint.
        exec(compile(TO_KAFKA.format(rows=rows, rate=None, brokers=broker.brokers, chk=chk), "to_kafka", "exec"))
        table = rl.read_kafka(broker.brokers, "out", bounded=True).collect()
        rows_out = [json.loads(v) for v in table["value"].to_pylist()]
        seen = sorted((r["partition"], r["seq"]) for r in rows_out)
        assert seen == [(p, s) for p in range(3) for s in range(rows)], "a row lost or repeated"
        # The running count restored exactly: each row's count is its place in its split.
        assert all(r["running_count"] == r["seq"] + 1 for r in rows_out)
        # Keyed by partition: each split's rows in one Kafka partition, in order.
        for p in range(3):
            mine = table.filter(pa.compute.equal(table["key"], str(p).encode()))
            assert len(set(mine["partition"].to_pylist())) == 1
            seqs = [json.loads(v)["seq"] for v in mine.sort_by("offset")["value"].to_pylist()]
            assert seqs == sorted(seqs)
        with pytest.raises(rl.PlanError, match='no topic "missing" to write to'):
            pipeline(10).start(rl.kafka_sink(broker.brokers, "missing"), job_id="x")
    finally:
        broker.close()


def write_ids(directory, name, start, count):
    """A Parquet file of ids, written under a skipped name and renamed into place."""
    import pyarrow.parquet as pq
    staging = os.path.join(directory, "_" + name)
    pq.write_table(pa.table({"id": pa.array(range(start, start + count), pa.int64())}), staging)
    os.rename(staging, os.path.join(directory, name))


def wait_for_rows(out, rows, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(out) and read_committed(out).num_rows >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {rows} rows committed in {timeout}s")


def test_a_watched_directory_streams_arriving_files_exactly_once_through_a_savepoint(tmp_path):
    src, out, chk = tmp_path / "in", str(tmp_path / "out"), tmp_path / "chk"
    src.mkdir()
    write_ids(src, "f000.parquet", 0, 1000)
    df = rl.watch_directory(src, splits=3).filter(rl.col("id") >= 0)
    first = df.start(out, checkpoint_dir=chk, job_id="dir", checkpoint_interval=0.05)
    for k in range(1, 5):
        write_ids(src, f"f{k:03}.parquet", k * 1000, 1000)
    wait_for_rows(out, 5000)
    savepoint = first.stop()
    # Files that arrive while the job is stopped are read after the resume.
    for k in range(5, 8):
        write_ids(src, f"f{k:03}.parquet", k * 1000, 1000)
    second = rl.resume(savepoint, df, out, checkpoint_interval=0.05)
    wait_for_rows(out, 8000)
    second.stop()
    ids = sorted(read_committed(out)["id"].to_pylist())
    assert ids == list(range(8000)), "a file lost or read twice"


def stream_rows(client, stream):
    """(partition, seq) of every entry of a Redis stream."""
    return [(int(fields[b"partition"]), int(fields[b"seq"])) for _, fields in client.xrange(stream)]


@needs(shutil.which("redis-server") is not None, "redis-server")
def test_the_redis_stream_sink_appends_each_row_once_through_a_restart(tmp_path):
    server = kill_sweep.RedisProducer(rows=0, rate=1.0)  # the server alone
    try:
        sink = rl.redis_stream_sink(server.url, "out")
        df = pipeline(2000, rate=6000)
        first = df.start(sink, checkpoint_dir=tmp_path / "chk", job_id="to-redis", checkpoint_interval=0.05)
        with pytest.raises(TimeoutError):
            first.wait(timeout=0.2)
        first.cancel()
        with pytest.raises(rl.JobCancelled):
            first.wait()
        assert 0 < len(stream_rows(server.client, "out")) < 6000
        rl.resume(tmp_path / "chk" / "to-redis", df, sink, checkpoint_interval=0.05).wait()
        rows = stream_rows(server.client, "out")
        assert sorted(rows) == [(p, s) for p in range(3) for s in range(2000)], "a row lost or repeated"
        lineage = (tmp_path / "chk" / "to-redis" / "_lineage").read_text()
        assert int(server.client.get(f"out:rillet:to-redis:{lineage}")) > 0
        # Without checkpoints the rows land when the input ends.
        pipeline(10).start(rl.redis_stream_sink(server.url, "plain"), job_id="plain").wait()
        assert len(stream_rows(server.client, "plain")) == 30
    finally:
        server.close()
    with pytest.raises(OSError, match="redis stream out at redis://127.0.0.1:1: connecting"):
        pipeline(10).start(rl.redis_stream_sink("redis://127.0.0.1:1", "out"), job_id="x")
