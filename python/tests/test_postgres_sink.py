"""The exactly-once PostgreSQL upsert sink against a real server (initdb into a temporary
directory, on loopback): upserts at checkpoints, a crash and restart, and clear errors."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import rillet as rl

from servers import needs, postgres_bin_dir

PG_BIN = postgres_bin_dir()
pytestmark = needs(PG_BIN is not None and shutil.which("psql") is not None,
                   "PostgreSQL's server binaries (initdb, pg_ctl, postgres) and psql")


def as_postgres(args, **kwargs):
    """Run a PostgreSQL command as the postgres user when this is root (initdb refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def server():
    assert PG_BIN is not None, "no PostgreSQL server binaries: bash scripts/setup.sh installs them"
    data = tempfile.mkdtemp(prefix="rillet-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_postgres([f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres"])
    as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(data, "log"), "-w",
                 "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {data}", "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", port
    finally:
        as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(data, ignore_errors=True)


def psql(port, sql):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-At", "-c", sql],
                         check=True, capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def totals(rows):
    """The pipeline's final per-partition count and sum, recomputed."""
    from kill_sweep import value_of
    import numpy as np
    seq = np.arange(rows, dtype=np.uint64)
    return {p: (rows, int(value_of(np.full(rows, p), seq).sum())) for p in range(3)}


def pipeline(rows, rate=None):
    df = rl.read_sequence(partitions=3, rows=rows, rows_per_second=rate, batch_rows=200)
    return df.group_by("partition").running_agg(
        rl.count().alias("n"), rl.col("value").sum().alias("total")).select("partition", "n", "total")


def table_totals(port, table):
    return {int(p): (int(n), int(t)) for p, n, t in psql(port, f"SELECT partition, n, total FROM {table}")}


def test_running_totals_are_upserted_at_checkpoints_and_survive_a_restart(server, tmp_path):
    url, port = server
    psql(port, "CREATE TABLE totals (partition bigint PRIMARY KEY, n bigint, total bigint)")
    sink = rl.postgres_upsert(url, "totals", key="partition")
    df = pipeline(3000, rate=6000)
    first = df.start(sink, checkpoint_dir=tmp_path / "chk", job_id="pg", checkpoint_interval=0.05)
    deadline = time.monotonic() + 20
    while not psql(port, "SELECT 1 FROM totals LIMIT 1"):
        assert time.monotonic() < deadline, "nothing upserted"
        time.sleep(0.05)
    first.cancel()
    with pytest.raises(rl.JobCancelled):
        first.wait()
    partial = table_totals(port, "totals")
    assert all(n < 3000 for n, _ in partial.values()), partial
    second = rl.resume(tmp_path / "chk" / "pg", df, sink, checkpoint_interval=0.05)
    second.wait()
    assert table_totals(port, "totals") == totals(3000)


def test_without_checkpoints_rows_land_when_the_input_ends(server):
    url, port = server
    psql(port, "CREATE TABLE once (partition bigint PRIMARY KEY, n bigint, total bigint)")
    job = pipeline(500).start(rl.postgres_upsert(url, "once", key=["partition"]), job_id="plain")
    job.wait()
    assert table_totals(port, "once") == totals(500)


def test_a_missing_table_or_server_is_named_at_start(server):
    url, _ = server
    with pytest.raises(OSError, match='postgres table nope: checking the table: relation "nope" does not exist'):
        pipeline(10).start(rl.postgres_upsert(url, "nope", key="partition"), job_id="x")
    with pytest.raises(OSError, match="postgres table t: connecting"):
        pipeline(10).start(rl.postgres_upsert("postgresql://postgres@127.0.0.1:1/x", "t", key="k"), job_id="y")
