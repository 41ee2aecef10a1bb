"""Executor behaviour: early stop for limit, cancellation, bounded memory."""

import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rillet as rl
from rillet import col


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    rows = 2_000_000
    rng = np.random.default_rng(1)
    table = pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "x": rng.random(rows),
        "s": pa.array(np.char.mod("row-%d", np.arange(rows) % 977)),
    })
    pq.write_table(table, path, row_group_size=64 * 1024, compression="none")
    return path


def test_limit_reads_only_a_small_part(big_parquet):
    size = big_parquet.stat().st_size
    df = rl.read_parquet(big_parquet).filter(col("x") >= 0).limit(10)
    assert df.count() == 10
    scanned = df.stats()["bytes_scanned"]
    assert 0 < scanned < size * 0.1, (scanned, size)
    # The full scan really reads the file: the metric measures what it claims.
    full = rl.read_parquet(big_parquet).filter(col("x") >= 0)
    full.collect()  # all columns (a count would read only `x`)
    assert full.stats()["bytes_scanned"] > size * 0.5


def test_limit_above_a_python_stage_stops_upstream_early(big_parquet):
    rl.set_config(memory_budget=8 << 20, progress=False)
    calls = []

    def identity(t):
        calls.append(t.num_rows)
        return t

    df = rl.read_parquet(big_parquet).map_batches(identity).limit(5)
    assert df.count() == 5
    assert sum(calls) < 2_000_000 * 0.5, sum(calls)
    assert df.stats()["bytes_scanned"] < big_parquet.stat().st_size * 0.5


def test_closing_the_iterator_cancels_the_job():
    progress = {"rows": 0}

    def slow(t):
        progress["rows"] += t.num_rows
        time.sleep(0.05)
        return t

    stream = rl.range(10_000_000).map_batches(slow, batch_size=1000).iter_batches()
    next(stream)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0
    time.sleep(0.3)  # let any call in flight finish
    seen = progress["rows"]
    time.sleep(0.5)
    assert progress["rows"] == seen, "the job kept running after the iterator closed"
    assert seen < 10_000_000


def test_breaking_out_of_a_for_loop_cancels(big_parquet):
    for i, batch in enumerate(rl.read_parquet(big_parquet).iter_batches()):
        assert batch.num_rows > 0
        if i == 2:
            break
    # A new job runs normally afterwards (nothing left holding the pool).
    assert rl.range(10).count() == 10


def test_work_spreads_over_cores_for_one_file(big_parquet):
    text = rl.read_parquet(big_parquet).filter(col("x") > 0.5).explain()
    parallelism = rl.current_session().parallelism
    assert f"(parallelism {parallelism})" in text


def test_exchange_memory_stays_bounded(big_parquet):
    # A tiny budget forces backpressure; the job still finishes with the right answer.
    rl.set_config(memory_budget=1 << 20, progress=False)
    threads = []

    def slow_identity(t):
        threads.append(threading.get_ident())
        time.sleep(0.001)
        return t

    df = rl.read_parquet(big_parquet).map_batches(slow_identity).filter(col("id") % 2 == 0)
    assert df.count() == 1_000_000
    ops = {op["name"]: op for op in df.stats()["operators"]}
    scan = next(op for name, op in ops.items() if name.startswith("scan"))
    assert scan["wait_output_ms"] > 0, "the scan never waited on a full channel"


def test_ctrl_c_cancels_the_job_and_the_process_exits_cleanly(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    # Ctrl-C once the job runs: its first call says so. (A fixed delay after start could
    # land while the plan is built, a different case.) The schema is given, so that no call
    # runs before the job does.
    script.write_text(
        "import faulthandler, sys, time, pyarrow as pa, rillet as rl\n"
        "faulthandler.dump_traceback_later(15, file=sys.stderr)  # a hang shows its Python stacks\n"
        "said = []\n"
        "def slow(t):\n"
        "    if not said:\n"
        "        said.append(print('running', flush=True))\n"
        "    time.sleep(0.2)\n"
        "    return t\n"
        "schema = pa.schema([pa.field('id', pa.int64(), nullable=False)])\n"
        f"rl.range(100_000_000).map_batches(slow, batch_size=1000, schema=schema).write_parquet({str(tmp_path / 'out')!r})\n")
    # As at a terminal: a process started in the background by a shell without job control
    # (`cmd &`, as CI scripts often are) inherits SIGINT ignored, Python then installs no
    # handler, and Ctrl-C rightly does nothing.
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "running", proc.stderr.read()[-3000:]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        # Record where every thread is (a hang was once a SIGINT ignored from the parent).
        native = subprocess.run(["gdb", "-p", str(proc.pid), "-batch", "-ex", "thread apply all bt 12"],
                                capture_output=True, text=True, timeout=60).stdout if shutil.which("gdb") else ""
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no exit 20 s after Ctrl-C\n--- stderr before the stacks ---\n{err[:3000]}\n"
                    f"--- Python stacks ---\n{err[-6000:]}\n--- native stacks ---\n"
                    + "\n".join(line for line in native.splitlines() if line.startswith(("#", "Thread")))[-12000:])
    # Python ends an uncaught KeyboardInterrupt by re-raising SIGINT (-2; a shell shows 130).
    # An abort (a Python call outliving the interpreter) would be -6.
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err[-2000:])
    assert "KeyboardInterrupt: job cancelled by Ctrl-C" in err


def test_a_native_function_after_exploding_a_function_result():
    # The explode runs as one task over the chunking stage; the counting stage after it
    # must read as many partitions as that task gives (it once looked for two).
    df = rl.from_pydict({"t": ["a b c d e", "f g", None]})
    out = (df.select(rl.col("t").text.chunk(2, unit="words").alias("c")).explode("c")
             .select("c", rl.col("c").text.count_tokens("cl100k_base").alias("n")))
    rows = [r for r in out.to_pylist() if r["c"] is not None]
    assert [r["c"] for r in rows] == ["a b", "c d", "e", "f g"]
    assert all(r["n"] >= 1 for r in rows)
