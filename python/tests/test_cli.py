"""The ``rillet`` command line steering streaming jobs it did not start: ``list``, ``stop``
(with a savepoint) and ``resume`` (the job's own program, run again), against real job
processes, with the sequence oracle checking the output after each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rillet.testing import check_sequence

PARTITIONS = 2
ROWS = 60_000  # per partition, at 15,000 rows/s each: about 4 s of input

JOB = textwrap.dedent(f"""
    import rillet as rl
    df = rl.read_sequence(partitions={PARTITIONS}, rows={ROWS}, rows_per_second=15000)
    df = df.with_columns(doubled=rl.col("value") * 2)
    job = df.start("out", checkpoint_dir="chk", job_id="orders", checkpoint_interval=0.2)
    written = job.wait()["rows_written"]
    print("status", job.status(), flush=True)
    print("rows written", written, flush=True)
""")


def rillet(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rillet", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def jobs(chk: Path) -> dict[str, dict]:
    listed = rillet("list", str(chk), "--json")
    assert listed.returncode == 0, listed.stderr
    return {j["job"]: j for j in json.loads(listed.stdout)}


def wait_for(chk: Path, predicate, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if chk.exists():
            job = jobs(chk).get("orders")
            if job is not None and predicate(job):
                return job
        time.sleep(0.1)
    raise AssertionError(f"job never {what}: {jobs(chk) if chk.exists() else 'no checkpoint dir'}")


def start_job(tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "orders_job.py"
    script.write_text(JOB)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Running, and at least one checkpoint in: stopping now is mid-run.
    wait_for(tmp_path / "chk", lambda j: j["state"] == "running" and j["latest_snapshot"], "ran")
    return proc


def assert_exact(out: Path) -> None:
    files = sorted(out.glob("*.parquet"))
    table = pq.read_table(files)
    assert check_sequence(table, {("seq", p): ROWS for p in range(PARTITIONS)}) == PARTITIONS * ROWS


def test_stop_with_a_savepoint_then_resume_gives_exact_output(tmp_path):
    chk = tmp_path / "chk"
    proc = start_job(tmp_path)
    job = jobs(chk)["orders"]
    assert job["pid"] == proc.pid
    assert job["command"][1:] == [str(tmp_path / "orders_job.py")]
    assert os.path.isabs(job["command"][0])

    stopped = rillet("stop", str(chk), "orders")
    assert stopped.returncode == 0, stopped.stderr
    savepoint = stopped.stdout.strip()
    assert "/orders/savepoint-" in savepoint and Path(savepoint).is_dir()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    written_before = int(out.split("rows written")[1])
    assert 0 < written_before < PARTITIONS * ROWS, "the stop came mid-run"
    # The job's own handle agrees with the listing: stopped, not finished.
    assert "status stopped" in out

    job = jobs(chk)["orders"]
    assert (job["state"], job["savepoint"]) == ("stopped", savepoint)
    import rillet as rl
    assert rl.jobs(chk) == [job], "the Python listing is the command line's"
    # Stopping a job that is not running says so, and asks nothing.
    again = rillet("stop", str(chk), "orders")
    assert again.returncode == 1 and "not running: stopped" in again.stderr

    # `resume` runs the recorded program again, from another directory: it continues
    # from the savepoint and finishes the input exactly once.
    resumed = rillet("resume", str(chk), "orders", cwd=Path("/"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"from {savepoint}" in resumed.stderr
    assert "job 'orders' is finished" in resumed.stderr
    job = jobs(chk)["orders"]
    assert job["state"] == "finished"
    assert job["restored_from"] == int(savepoint.rsplit("-", 1)[1])
    assert_exact(tmp_path / "out")


def test_a_killed_job_is_listed_as_lost_and_resumes_from_a_chosen_checkpoint(tmp_path):
    chk = tmp_path / "chk"
    proc = start_job(tmp_path)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    job = jobs(chk)["orders"]
    assert job["state"] == "lost" and "is gone" in job["note"]
    refused = rillet("stop", str(chk), "orders")
    assert refused.returncode == 1 and "not running: lost" in refused.stderr

    # Not the newest checkpoint: resuming from an older one withdraws what the newer
    # ones committed, and the output is still exact.
    checkpoints = sorted(p.name for p in (chk / "orders").glob("chk-*") if (p / "_manifest").exists())
    assert len(checkpoints) >= 2, checkpoints
    older = checkpoints[0]
    log = tmp_path / "resumed.log"
    detached = rillet("resume", str(chk), "orders", "--from", older, "--detach", "--log", str(log))
    assert detached.returncode == 0, detached.stderr
    assert "is running again" in detached.stdout
    job = wait_for(chk, lambda j: j["state"] != "running", "ended")
    assert job["state"] == "finished", (job, log.read_text())
    assert job["restored_from"] == int(older.split("-")[1])
    assert "rows written" in log.read_text()
    assert_exact(tmp_path / "out")


def test_mistakes_get_clear_errors(tmp_path):
    chk = tmp_path / "chk"
    empty = rillet("list", str(tmp_path))
    assert empty.returncode == 0 and "no jobs in" in empty.stdout
    missing = rillet("list", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no checkpoint directory" in missing.stderr

    proc = start_job(tmp_path)
    try:
        typo = rillet("stop", str(chk), "ordres")
        assert typo.returncode == 1 and "no job 'ordres'" in typo.stderr and "orders" in typo.stderr
        assert not (chk / "ordres").exists(), "a mistyped id leaves no directory behind"
        running = rillet("resume", str(chk), "orders")
        assert running.returncode == 1 and "is running" in running.stderr and "stop it first" in running.stderr
    finally:
        assert rillet("stop", str(chk), "orders").returncode == 0
        proc.communicate(timeout=60)
    nothing = rillet("resume", str(chk), "orders", "--from", "chk-99999")
    assert nothing.returncode == 1 and "has no snapshot chk-" in nothing.stderr
    bad = rillet("resume", str(chk), "orders", "--from", "yesterday")
    assert bad.returncode == 1 and "savepoint-<id>" in bad.stderr
    usage = rillet("stop", str(chk))
    assert usage.returncode == 2 and "Usage" in usage.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_succeed(args):
    shown = rillet(*args)
    assert shown.returncode == 0 and "rillet" in shown.stdout


def test_the_record_tells_a_cancelled_run_from_a_failed_one(tmp_path):
    import rillet as rl
    chk = tmp_path / "chk"
    df = rl.read_sequence(partitions=1, rows=None, rows_per_second=2000)
    job = df.start(str(tmp_path / "out"), checkpoint_dir=str(chk), job_id="orders", checkpoint_interval=0.05)
    wait_for(chk, lambda j: j["state"] == "running" and j["pid"] == os.getpid(), "ran")
    job.cancel()
    with pytest.raises(rl.JobCancelled):
        job.wait()
    assert jobs(chk)["orders"]["state"] == "cancelled"

    def explode(batch):
        if batch.num_rows:
            raise ValueError("the model server is down")
        return batch

    failing = df.map_batches(explode, schema=df.schema)
    job = failing.start(str(tmp_path / "out2"), checkpoint_dir=str(chk), job_id="broken", checkpoint_interval=0.05)
    with pytest.raises(rl.UserFunctionError):
        job.wait()
    record = jobs(chk)["broken"]
    assert record["state"] == "failed" and "the model server is down" in record["note"]


def test_resume_refuses_a_run_that_may_still_be_going(tmp_path):
    import socket
    chk = tmp_path / "chk"
    (chk / "ghost").mkdir(parents=True)
    host = Path("/proc/sys/kernel/hostname").read_text().strip()

    def record(pid, on_host):
        stale = int(time.time() * 1000) - 120_000  # two minutes without a heartbeat
        (chk / "ghost" / "_job.json").write_text(json.dumps({
            "job": "ghost", "run": f"{on_host}-{pid}-1", "state": "running", "pid": pid, "host": on_host,
            "started_ms": stale, "updated_ms": stale, "restored_from": None, "latest_snapshot": None,
            "savepoint": None, "error": None, "command": [sys.executable, "-c", "print('again')"],
            "cwd": str(tmp_path)}))

    # Quiet, but its process (this one) is alive: never resumed, not even with --force.
    record(os.getpid(), host)
    assert jobs(chk)["ghost"]["state"] == "lost"
    for extra in ([], ["--force"]):
        alive = rillet("resume", str(chk), "ghost", *extra)
        assert alive.returncode == 1 and "still alive" in alive.stderr, alive.stderr
    # On another host: cannot be checked from here, so only with --force.
    record(1, socket.gethostname() + ".elsewhere.invalid")
    unsure = rillet("resume", str(chk), "ghost")
    assert unsure.returncode == 1 and "--force" in unsure.stderr
    forced = rillet("resume", str(chk), "ghost", "--force")
    assert forced.returncode == 0 and "again" in forced.stdout, forced.stderr
