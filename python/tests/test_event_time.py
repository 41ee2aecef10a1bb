"""Event time in streaming jobs: watermarks, tumbling and sliding window aggregates, late
rows counted, and windows emitted exactly once through a restart."""

from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import rillet as rl
from rillet.testing import read_committed

PARTITIONS = 3


def value_of(partition, seq):
    """The sequence source's value of a row (rillet_connectors::sequence::value_of)."""
    return (((seq * 2654435761) % (1 << 64)) ^ partition) % 1000


def windows_of(rows, size):
    """The expected tumbling windows of a sequence job: (partition, start) -> (count, sum)."""
    expected = {}
    for p in range(PARTITIONS):
        for start in range(0, rows, size):
            seqs = range(start, min(start + size, rows))
            expected[(p, start)] = (len(seqs), sum(value_of(p, s) for s in seqs))
    return expected


def windowed(rows, size, rate=None):
    # Splits of one task interleave by batch: the delay covers that disorder.
    df = rl.read_sequence(partitions=PARTITIONS, rows=rows, rows_per_second=rate, batch_rows=100)
    return df.with_watermark("seq", delay=1000).group_by("partition").window_agg(
        rl.tumbling("seq", size), rl.count().alias("n"), rl.col("value").sum().alias("total"))


def as_windows(table):
    out = {}
    for row in table.to_pylist():
        key = (row["partition"], row["window_start"])
        assert key not in out, f"window {key} emitted twice"
        assert row["window_end"] == row["window_start"] + 500
        out[key] = (row["n"], row["total"])
    return out


def window_operator(metrics):
    return next(op for op in metrics["operators"] if op["name"].startswith("window aggregate"))


def test_a_streaming_window_job_emits_every_window_once_and_exactly(tmp_path):
    job = windowed(3000, 500).start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="win",
                                    checkpoint_interval=0.05)
    job.wait()
    assert as_windows(read_committed(tmp_path / "out")) == windows_of(3000, 500)
    assert window_operator(job.metrics())["dropped_late"] == 0


def test_windows_survive_a_cancel_and_restart_exactly(tmp_path):
    df = windowed(4000, 500, rate=8000)
    first = df.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="win", checkpoint_interval=0.05)
    with pytest.raises(TimeoutError):
        first.wait(timeout=0.25)
    first.cancel()
    with pytest.raises(rl.JobCancelled):
        first.wait()
    committed = read_committed(tmp_path / "out").num_rows
    assert committed < len(windows_of(4000, 500)), "the first run should not have finished"
    second = rl.resume(tmp_path / "chk" / "win", df, tmp_path / "out", checkpoint_interval=0.05)
    second.wait()
    assert second.metrics()["checkpoints"]["restored_from"] is not None
    assert as_windows(read_committed(tmp_path / "out")) == windows_of(4000, 500)


def test_rows_behind_the_watermark_are_dropped_and_counted(tmp_path):
    # Event time jumps back to 0 at seq 1000: those rows' windows have already fired.
    df = rl.read_sequence(partitions=1, rows=2000, batch_rows=100)
    df = df.with_column("t", rl.col("seq").cast("int64") % 1000).with_watermark("t", delay=0)
    out = df.window_agg(rl.tumbling("t", 10), rl.count().alias("n"))
    job = out.start(tmp_path / "out", checkpoint_dir=tmp_path / "chk", job_id="late", checkpoint_interval=0.05)
    job.wait()
    dropped = window_operator(job.metrics())["dropped_late"]
    emitted = pc.sum(read_committed(tmp_path / "out").column("n")).as_py()
    assert dropped > 0
    assert emitted + dropped == 2000, "every row is either in a window or counted as late"


def test_sliding_windows_over_timestamps_in_a_batch_job():
    base = datetime(2026, 1, 1)
    df = rl.from_arrow(pa.table({
        "user": ["a", "a", "b", "a"],
        "at": pa.array([base, base + timedelta(seconds=40), base + timedelta(seconds=50),
                        base + timedelta(seconds=70)], pa.timestamp("ms")),
        "clicks": [1, 2, 3, 4],
    }))
    out = df.group_by("user").window_agg(
        rl.sliding("at", timedelta(minutes=1), timedelta(seconds=30)), rl.col("clicks").sum().alias("clicks"))
    rows = out.sort(["user", "window_start"]).to_pylist()
    got = [(r["user"], r["window_start"] - base, r["clicks"]) for r in rows]
    assert got == [
        ("a", timedelta(seconds=-30), 1),
        ("a", timedelta(0), 3),
        ("a", timedelta(seconds=30), 6),
        ("a", timedelta(seconds=60), 4),
        ("b", timedelta(0), 3),
        ("b", timedelta(seconds=30), 3),
    ]
    assert out.schema.field("window_start").type == pa.timestamp("ms")


def test_bad_windows_and_watermarks_are_refused_with_reasons():
    df = rl.read_sequence(partitions=1, rows=10)
    with pytest.raises(rl.PlanError, match="must be a timestamp, a date or an integer"):
        df.with_watermark("source")
    with pytest.raises(rl.PlanError, match="give lengths of its event time as numbers"):
        df.window_agg(rl.tumbling("seq", timedelta(seconds=1)), rl.count().alias("n"))
    with pytest.raises(rl.PlanError, match="would skip rows"):
        df.window_agg(rl.sliding("seq", 5, 10), rl.count().alias("n"))
    with pytest.raises(TypeError, match="rl.tumbling or rl.sliding"):
        df.group_by("partition").window_agg("seq", rl.count())
    with pytest.raises(rl.PlanError, match="no column"):
        df.window_agg(rl.tumbling("nope", 5), rl.count().alias("n"))


def test_a_stop_keeps_open_windows_in_its_savepoint_and_the_resume_emits_each_once(tmp_path):
    # A stop's savepoint is taken with windows still open: they live on in it, not fired
    # after the final barrier (where the sink could no longer commit them).
    df = windowed(4000, 500, rate=8000)
    out = tmp_path / "out"
    first = df.start(out, checkpoint_dir=tmp_path / "chk", job_id="win", checkpoint_interval=0.05)
    with pytest.raises(TimeoutError):
        first.wait(timeout=0.25)
    savepoint = first.stop()
    assert first.status() == "stopped"
    emitted = as_windows(read_committed(out))
    assert len(emitted) < len(windows_of(4000, 500)), "the first run should not have finished"
    second = rl.resume(savepoint, df, out, checkpoint_interval=0.05)
    second.wait()
    assert as_windows(read_committed(out)) == windows_of(4000, 500)
