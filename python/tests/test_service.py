"""Service operators: replica processes serving a model over Arrow Flight DoExchange,
registered only once loaded, batched dynamically, scaled and drained while jobs run, and
replaced after kill -9 with the job's output exact."""

import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import rillet as rl
from rillet import col


@pytest.fixture(autouse=True)
def detected_machine():
    rl.init()
    yield
    rl.init()


def service_stats(df):
    return next(op for op in df.stats()["operators"] if op["name"].startswith("udf(service("))


def wait_until(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class SlowIncrement:
    """Adds one, slowly enough that a job spans many requests; records its pid."""

    def __init__(self, delay=0.02):
        self.delay = delay
        self.pid = os.getpid()

    def __call__(self, x):
        time.sleep(self.delay)
        return pc.add(x, 1)


def run_in_thread(df):
    box = {}

    def run():
        try:
            box["out"] = df.to_pydict()
        except Exception as exc:  # noqa: BLE001 - re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def result(thread, box):
    thread.join(120)
    assert not thread.is_alive(), "the job did not finish"
    if "error" in box:
        raise box["error"]
    return box["out"]


def test_replicas_register_only_after_their_constructor_and_the_wait_is_model_loading():
    class Loads:
        def __init__(self):
            time.sleep(1.0)  # "loading a model"
            self.pid = os.getpid()

        def __call__(self, x):
            return pa.array([self.pid] * len(x), pa.int64())

    with rl.service(Loads, return_dtype="int64", num_cpus=0.5) as svc:
        status = svc.status()
        assert [r["state"] for r in status["replicas"]] == ["loading"]
        assert status["replicas"][0]["port"] is None
        df = rl.range(100).with_column("pid", svc(col("id")))
        out = df.to_pydict()
        [replica] = svc.status()["replicas"]
        assert replica["state"] == "ready" and replica["port"] > 0
        assert set(out["pid"]) == {replica["pid"]} and replica["pid"] != os.getpid()
        assert service_stats(df)["wait_loading_ms"] >= 500


def test_output_is_exact_and_calls_arriving_together_are_batched():
    with rl.service(SlowIncrement, return_dtype="int64", num_cpus=0.5, batch_size=8,
                    max_batch_size=64, max_wait_ms=20) as svc:
        assert svc.wait_ready(timeout=30)
        # Calls of 8 rows run concurrently and are merged into requests of up to 64.
        df = rl.range(3000).with_column("y", svc(col("id")))
        out = df.to_pydict()
        assert sorted(zip(out["id"], out["y"])) == [(i, i + 1) for i in range(3000)]
        status = svc.status()
        assert status["retries"] == 0
        assert status["requests"] < status["calls"], status


def test_a_service_is_shared_by_jobs_and_outlives_them():
    with rl.service(SlowIncrement, return_dtype="int64", replicas=1, num_cpus=0.5) as svc:
        first = rl.range(50).with_column("y", svc(col("id"))).to_pydict()
        pid = svc.status()["replicas"][0]["pid"]
        second = rl.sql("SELECT 1").with_column("y", svc(rl.lit(41))).to_pydict()
        assert sorted(first["y"]) == list(range(1, 51)) and second["y"] == [42]
        assert svc.status()["replicas"][0]["pid"] == pid  # the same replica served both


def test_kill_9_of_a_replica_mid_job_keeps_the_output_exact_and_replaces_it():
    with rl.service(SlowIncrement, return_dtype="int64", replicas=2, num_cpus=0.5,
                    max_batch_size=20, per_replica=1) as svc:
        assert svc.wait_ready(2, timeout=30)
        victim = svc.status()["replicas"][0]["pid"]

        def killer():
            wait_until(lambda: svc.status()["requests"] >= 10, what="requests")
            os.kill(victim, signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        df = rl.range(4000).with_column("y", svc(col("id")))
        out = df.to_pydict()
        thread.join()
        assert sorted(zip(out["id"], out["y"])) == [(i, i + 1) for i in range(4000)]
        # The replica is replaced: two ready again, the victim gone.
        assert svc.wait_ready(2, timeout=30)
        status = svc.status()
        assert status["replicas_lost"] == 1 and status["retries"] >= 1
        assert status["replicas_started"] == 3
        assert victim not in [r["pid"] for r in status["replicas"]]


def test_scale_while_a_job_runs_grows_then_drains_without_losing_a_request():
    with rl.service(SlowIncrement, return_dtype="int64", replicas=1, num_cpus=0.5,
                    max_batch_size=10, per_replica=1) as svc:
        assert svc.wait_ready(timeout=30)
        thread, box = run_in_thread(rl.range(6000).with_column("y", svc(col("id"))))
        wait_until(lambda: svc.status()["requests"] >= 5, what="the job to start")
        svc.scale(3)
        wait_until(lambda: sum(r["state"] == "ready" for r in svc.status()["replicas"]) == 3,
                   what="three ready replicas")
        wait_until(lambda: all(r["served"] > 0 for r in svc.status()["replicas"]),
                   what="every replica to serve")
        svc.scale(1)  # two replicas drain while the job keeps sending requests
        wait_until(lambda: len(svc.status()["replicas"]) == 1, what="the drain")
        out = result(thread, box)
        assert sorted(zip(out["id"], out["y"])) == [(i, i + 1) for i in range(6000)]
        status = svc.status()
        assert status["retries"] == 0 and status["replicas_lost"] == 0  # drained, not failed
        assert status["replicas_started"] == 3


def test_replicas_grow_while_requests_wait_and_shrink_when_idle():
    with rl.service(SlowIncrement, return_dtype="int64", replicas=(1, 2), num_cpus=0.5,
                    max_batch_size=10, per_replica=1, idle_timeout=0.5) as svc:
        assert svc.wait_ready(timeout=30)
        out = rl.range(3000).with_column("y", svc(col("id"))).to_pydict()
        assert sorted(out["y"]) == list(range(1, 3001))
        assert svc.status()["replicas_started"] == 2
        wait_until(lambda: len(svc.status()["replicas"]) == 1, what="the idle replica to drain")


def test_a_batch_of_more_than_64_mib_streams_through_both_ways():
    class Echo:
        def __call__(self, blobs):
            # Each row says how large the request it came in was, and echoes its blob.
            total = blobs.nbytes
            return pa.StructArray.from_arrays(
                [blobs, pa.array([total] * len(blobs), pa.int64())], names=["blob", "request"])

    rows, size = 72, 1 << 20
    blobs = [bytes([i]) * size for i in range(rows)]
    dtype = pa.struct([("blob", pa.binary()), ("request", pa.int64())])
    with rl.service(Echo, return_dtype=dtype, num_cpus=0.5, max_batch_size=rows) as svc:
        table = pa.table({"i": pa.array(range(rows), pa.int64()), "blob": pa.array(blobs)})
        out = rl.from_arrow(table).with_column("echo", svc(col("blob"))).to_pydict()
        echoed = {i: e for i, e in zip(out["i"], out["echo"])}
        assert all(echoed[i]["blob"] == blobs[i] for i in range(rows))
        assert max(e["request"] for e in echoed.values()) >= 64 << 20


def test_a_raising_function_fails_the_job_with_its_traceback_and_is_not_retried():
    class Fails:
        def __call__(self, x):
            raise ValueError("bad input for the model")

    with rl.service(Fails, return_dtype="int64", num_cpus=0.5) as svc:
        with pytest.raises(rl.UserFunctionError) as info:
            rl.range(10).with_column("y", svc(col("id"))).collect()
        assert "ValueError: bad input for the model" in str(info.value)
        assert svc.status()["retries"] == 0


def test_on_error_null_keeps_the_job_going():
    class Picky:
        def __call__(self, x):
            if x > 2:
                raise ValueError("too big")
            return x * 10

    svc = rl.service(rl.udf(Picky, return_dtype="int64", on_error="null"), batch=False,
                     num_cpus=0.5)
    try:
        out = rl.range(5).with_column("y", svc(col("id"))).to_pydict()
        assert sorted(zip(out["id"], out["y"])) == [(0, 0), (1, 10), (2, 20), (3, None),
                                                     (4, None)]
    finally:
        svc.shutdown()


def test_a_failing_constructor_fails_calls_with_its_traceback():
    class Broken:
        def __init__(self):
            raise RuntimeError("weights not found")

        def __call__(self, x):
            return x

    with rl.service(Broken, return_dtype="int64", num_cpus=0.5) as svc:
        with pytest.raises(rl.UserFunctionError) as info:
            rl.range(3).with_column("y", svc(col("id"))).collect()
        assert "RuntimeError: weights not found" in str(info.value)


def test_an_impossible_request_fails_within_a_second():
    started = time.monotonic()
    with pytest.raises(rl.PlanError) as info:
        rl.service(SlowIncrement, return_dtype="int64", num_gpus=1)
    assert time.monotonic() - started < 1.0
    assert "no GPU" in str(info.value)


def test_fractional_gpus_put_two_replicas_on_one_gpu():
    rl.init(num_gpus=1)

    class Devices:
        def __call__(self, x):
            return pa.array([os.environ.get("CUDA_VISIBLE_DEVICES")] * len(x), pa.string())

    with rl.service(Devices, return_dtype="string", replicas=2, num_cpus=0.5,
                    num_gpus=0.5) as svc:
        assert svc.wait_ready(2, timeout=30)
        out = rl.range(200).with_column("gpu", svc(col("id"))).to_pydict()
        assert set(out["gpu"]) == {"0"}
        with pytest.raises(rl.PlanError):
            svc.scale(3)  # a third half-GPU replica does not fit one GPU


def test_shutdown_stops_every_replica_and_later_calls_are_cancelled():
    svc = rl.service(SlowIncrement, return_dtype="int64", replicas=2, num_cpus=0.5)
    assert svc.wait_ready(2, timeout=30)
    pids = [r["pid"] for r in svc.status()["replicas"]]
    svc.shutdown()
    for pid in pids:
        wait_until(lambda: not _alive(pid), timeout=5, what=f"replica {pid} to exit")
    with pytest.raises(rl.RilletError):
        rl.range(3).with_column("y", svc(col("id"))).collect()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie until reaped counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"
