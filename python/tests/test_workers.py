"""UDFs in worker processes: one constructor per worker, Arrow batches in and out, workers
replaced after SIGKILL with exact output, resources reserved from the machine (virtual GPUs
here), and clear errors for what cannot work."""

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


def udf_stats(df):
    return next(op for op in df.stats()["operators"] if op["name"].startswith("udf("))


def test_class_udf_is_built_once_per_worker_process():
    @rl.udf(return_dtype=pa.string(), batch=True, batch_size=25, concurrency=(2, 2), num_cpus=0.5)
    class Tag:
        def __init__(self):
            self.tag = f"{os.getpid()}:{id(self)}"

        def __call__(self, x):
            time.sleep(0.05)  # keep both workers busy
            return pa.array([self.tag] * len(x))

    df = rl.range(400).with_column("tag", Tag(col("id")))
    out = df.to_pydict()
    assert sorted(out["id"]) == list(range(400))
    pids = {t.split(":")[0] for t in out["tag"]}
    assert str(os.getpid()) not in pids
    # One instance per worker process, at most two workers.
    assert len(set(out["tag"])) == len(pids) <= 2
    assert udf_stats(df)["workers_started"] == 2


def test_batch_udf_gets_exact_batches_in_a_worker():
    @rl.udf(return_dtype=pa.int64(), batch=True, batch_size=64)
    def batch_len(x):
        assert isinstance(x, pa.Array)
        return pa.array([len(x)] * len(x), pa.int64())

    out = rl.range(1000).with_column("n", batch_len(col("id"))).to_pydict()
    sizes = sorted(set(out["n"]))
    assert sizes == [1000 % 64, 64]


def test_isolate_false_runs_in_this_process():
    @rl.udf(return_dtype=pa.int64(), batch=True, isolate=False)
    def pid(x):
        return pa.array([os.getpid()] * len(x), pa.int64())

    out = rl.range(10).with_column("pid", pid(col("id"))).to_pydict()
    assert set(out["pid"]) == {os.getpid()}


class KillOnce:
    """Kills its own worker with SIGKILL in the middle of the first call that sees row 137,
    once per test (a marker file remembers), as an OOM killer or an operator would."""

    marker = None

    def __init__(self):
        pass

    def __call__(self, x):
        if 137 in x.to_pylist() and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return pc.multiply(x, 3)


def test_sigkilled_worker_is_replaced_and_its_batch_retried(tmp_path):
    marker = str(tmp_path / "killed")

    @rl.udf(return_dtype=pa.int64(), batch=True, batch_size=50, concurrency=(1, 2), num_cpus=0.5)
    class Triple(KillOnce):
        def __init__(self):
            self.marker = marker

    df = rl.range(1000).with_column("t", Triple(col("id")))
    out = df.to_pydict()
    assert os.path.exists(marker)
    pairs = sorted(zip(out["id"], out["t"]))
    assert pairs == [(i, 3 * i) for i in range(1000)]  # nothing lost, nothing twice
    stats = udf_stats(df)
    assert stats["retries"] == 1
    assert stats["workers_started"] >= 2


def test_worker_killed_from_outside_mid_batch(tmp_path):
    pid_file = tmp_path / "pid"

    @rl.udf(return_dtype=pa.int64(), batch=True, batch_size=20, concurrency=1)
    class Slow:
        def __init__(self):
            pid_file.write_text(str(os.getpid()))

        def __call__(self, x):
            time.sleep(0.02)
            return pc.add(x, 1)

    def killer():
        while not pid_file.exists():
            time.sleep(0.01)
        time.sleep(0.3)  # mid-job: a few batches in
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    df = rl.range(2000).with_column("y", Slow(col("id")))
    out = df.to_pydict()
    thread.join()
    assert sorted(zip(out["id"], out["y"])) == [(i, i + 1) for i in range(2000)]
    assert udf_stats(df)["retries"] == 1


def test_a_worker_that_always_dies_fails_after_max_retries():
    @rl.udf(return_dtype=pa.int64(), batch=True, max_retries=1)
    def crash(x):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(rl.UserFunctionError) as info:
        rl.range(5).with_column("y", crash(col("id"))).collect()
    message = str(info.value)
    assert "died 2 times" in message and "SIGKILL" in message and "max_retries=1" in message


def test_unpicklable_udf_says_what_to_change():
    lock = threading.Lock()

    @rl.udf(return_dtype=pa.int64(), batch=True)
    def locked(x):
        with lock:
            return x

    with pytest.raises(TypeError) as info:
        locked(col("id"))
    message = str(info.value)
    assert "cannot be pickled" in message and "__init__" in message and "isolate=False" in message


def test_an_exception_that_cannot_be_pickled_still_reaches_the_job():
    @rl.udf(return_dtype=pa.int64(), batch=True)
    def fails(x):
        class LockedError(Exception):
            def __init__(self):
                super().__init__("model server unreachable")
                self.lock = threading.Lock()

        raise LockedError()

    with pytest.raises(rl.UserFunctionError) as info:
        rl.range(3).with_column("y", fails(col("id"))).collect()
    assert "LockedError: model server unreachable" in str(info.value)
    assert "Traceback" in str(info.value)


def test_a_failing_constructor_fails_the_job_with_its_traceback():
    @rl.udf(return_dtype=pa.int64())
    class NoModel:
        def __init__(self):
            raise FileNotFoundError("weights.safetensors")

        def __call__(self, x):
            return x

    with pytest.raises(rl.UserFunctionError) as info:
        rl.range(3).with_column("y", NoModel(col("id"))).collect()
    assert "could not start" in str(info.value) and "weights.safetensors" in str(info.value)


def test_an_impossible_gpu_request_fails_within_a_second():
    @rl.udf(return_dtype=pa.int64(), num_gpus=1)
    class NeedsGpu:
        def __call__(self, x):
            return x

    started = time.monotonic()
    with pytest.raises(rl.PlanError) as info:
        rl.range(3).with_column("y", NeedsGpu(col("id"))).collect()
    assert time.monotonic() - started < 1.0
    message = str(info.value)
    assert "asks for 1 CPU, 1 GPU per worker" in message and "no GPU" in message
    assert "rl.init(num_gpus=N)" in message


def test_more_workers_than_the_cpus_allow_fails_with_the_numbers():
    cpus = rl.resources()["num_cpus"]

    @rl.udf(return_dtype=pa.int64(), batch=True, concurrency=int(cpus) + 1, num_cpus=1)
    def ident(x):
        return x

    with pytest.raises(rl.PlanError) as info:
        rl.range(3).with_column("y", ident(col("id"))).collect()
    assert f"this machine has {cpus:g} CPU" in str(info.value)


def where_udf(**resources):
    """A UDF naming, for each row, the GPU list and pid of the worker that computed it; each
    call sleeps so that every worker of the pool gets calls."""

    @rl.udf(return_dtype=pa.string(), batch=True, batch_size=1, **resources)
    class Where:
        def __call__(self, x):
            time.sleep(0.2)
            return pa.array([f"{os.environ['CUDA_VISIBLE_DEVICES']}:{os.getpid()}"] * len(x))

    return Where


def test_fractional_virtual_gpus_pack_two_workers_per_gpu():
    rl.init(num_gpus=2)
    where = where_udf(concurrency=4, num_gpus=0.5, num_cpus=0.25)
    out = rl.range(24).with_column("where", where(col("id"))).to_pydict()
    by_worker = dict(w.split(":")[::-1] for w in set(out["where"]))
    assert len(by_worker) == 4
    assert sorted(by_worker.values()) == ["0", "0", "1", "1"]


def test_whole_gpus_are_not_shared():
    rl.init(num_gpus=2)
    where = where_udf(concurrency=2, num_gpus=1, num_cpus=0.5)
    out = rl.range(8).with_column("where", where(col("id"))).to_pydict()
    assert sorted({w.split(":")[0] for w in out["where"]}) == ["0", "1"]


def test_pool_grows_while_calls_wait_and_model_loading_is_a_wait_reason():
    @rl.udf(return_dtype=pa.int64(), batch=True, batch_size=1, concurrency=(1, 2), num_cpus=0.5)
    class Loads:
        def __init__(self):
            time.sleep(0.5)  # "loading a model"

        def __call__(self, x):
            time.sleep(0.1)
            return x

    df = rl.range(20).with_column("y", Loads(col("id")))
    assert sorted(df.to_pydict()["y"]) == list(range(20))
    stats = udf_stats(df)
    assert stats["workers_started"] == 2
    assert stats["wait_loading_ms"] >= 400


def test_on_error_null_and_column_in_a_worker():
    @rl.udf(return_dtype=pa.float64(), on_error="null", isolate=True)
    def inverse(x):
        return 1 / x

    out = rl.from_pydict({"x": [1, 0, 4]}).with_column("y", inverse(col("x"))).to_pydict()
    assert out["y"] == [1.0, None, 0.25]

    @rl.udf(return_dtype=pa.float64(), on_error="column", isolate=True)
    def inverse_why(x):
        return 1 / x

    out = rl.from_pydict({"x": [2, 0]}).with_column("y", inverse_why(col("x"))).to_pydict()
    assert out["y"][0] == {"value": 0.5, "error": None}
    assert out["y"][1]["value"] is None
    assert out["y"][1]["error"].startswith("ZeroDivisionError")


def test_async_udf_runs_a_batch_of_calls_concurrently():
    import asyncio

    in_flight = [0, 0]  # now, most

    @rl.udf(return_dtype=pa.int64())
    async def lookup(x):
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        await asyncio.sleep(0.05)
        in_flight[0] -= 1
        return x * 10

    out = rl.range(50).with_column("y", lookup(col("id"))).to_pydict()
    assert sorted(out["y"]) == [10 * i for i in range(50)]
    assert in_flight[1] > 1


def test_async_udf_calls_in_flight_are_bounded_across_batches():
    import asyncio

    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    @rl.udf(return_dtype=pa.int64(), max_concurrency=5)
    async def lookup(x):
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        await asyncio.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        if x == 7:
            raise KeyError("no such user")
        return x * 10

    df = rl.range(400).repartition(4).with_column("y", lookup(col("id")))
    with pytest.raises(rl.UserFunctionError, match="no such user"):
        df.collect()
    assert in_flight[1] == 5

    in_flight[1] = 0
    lookup_or_null = rl.udf(return_dtype=pa.int64(), max_concurrency=5, on_error="null")(lookup.__wrapped__)
    out = rl.range(400).repartition(4).with_column("y", lookup_or_null(col("id"))).to_pydict()
    assert sorted(zip(out["id"], out["y"])) == [(i, None if i == 7 else 10 * i) for i in range(400)]
    assert in_flight[1] == 5
    with pytest.raises(ValueError, match="max_concurrency bounds an async function"):
        rl.udf(return_dtype="int64", max_concurrency=3)(lambda x: x)


def test_an_async_udf_raising_system_exit_fails_the_job_and_the_udf_still_works():
    import asyncio
    import sys

    @rl.udf(return_dtype=pa.int64(), max_concurrency=4)
    async def leave(x):
        await asyncio.sleep(0)
        if x == 3:
            sys.exit(2)
        return x

    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        rl.range(10).with_column("y", leave(col("id"))).collect()
    assert "SystemExit" in repr(info.value) or "2" in str(info.value), info.value
    assert time.monotonic() - started < 30, "not a hang"
    out = rl.range(3).with_column("y", leave(col("id"))).to_pydict()
    assert out["y"] == [0, 1, 2]


def test_resources_and_init():
    machine = rl.resources()
    assert machine["num_cpus"] >= 1 and machine["memory"] > 0
    rl.init(num_gpus=3, num_cpus=8, memory="1GiB")
    declared = rl.resources()
    assert declared["num_gpus"] == 3 and declared["virtual_gpus"]
    assert declared["num_cpus"] == 8 and declared["memory"] == 1 << 30
    with pytest.raises(ValueError):
        rl.udf(return_dtype="int64", memory="lots")(lambda x: x)
    with pytest.raises(ValueError):
        rl.udf(return_dtype="int64", num_gpus=0.5, isolate=False)(lambda x: x)


def batches_stats(df):
    return next(op for op in df.stats()["operators"] if op["name"].startswith("map_batches("))


def test_map_batches_with_a_class_runs_it_once_per_worker_process():
    class AddPid:
        def __init__(self, offset=100):
            self.pid = os.getpid()
            self.offset = offset

        def __call__(self, table):
            return table.append_column("y", pc.add(table["id"], self.offset)).append_column(
                "pid", pa.array([self.pid] * table.num_rows, pa.int64()))

    schema = pa.schema([("id", pa.int64()), ("y", pa.int64()), ("pid", pa.int64())])
    df = rl.range(1000).map_batches(AddPid, schema=schema, batch_size=100, concurrency=(1, 2), num_cpus=0.5)
    out = df.to_pydict()
    assert sorted(zip(out["id"], out["y"])) == [(i, i + 100) for i in range(1000)]
    assert os.getpid() not in set(out["pid"]) and len(set(out["pid"])) <= 2
    assert 1 <= batches_stats(df)["workers_started"] <= 2


def test_map_batches_worker_killed_mid_job_keeps_the_output_exact(tmp_path):
    pid_file = tmp_path / "pid"

    class Slow:
        def __init__(self):
            pid_file.write_text(str(os.getpid()))

        def __call__(self, batch):
            time.sleep(0.02)
            return {"id": batch["id"], "y": batch["id"] * 2}

    def killer():
        while not pid_file.exists():
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    schema = pa.schema([("id", pa.int64()), ("y", pa.int64())])
    df = rl.range(2000).map_batches(Slow, schema=schema, batch_format="numpy", batch_size=20, concurrency=1)
    out = df.to_pydict()
    thread.join()
    assert sorted(zip(out["id"], out["y"])) == [(i, 2 * i) for i in range(2000)]
    assert batches_stats(df)["retries"] == 1


def test_map_batches_class_schema_from_first_rows_and_functions_stay_in_process_by_default():
    class Nothing:
        def __call__(self, table):
            return table

    # The class is built once here for the first rows (the output's schema) and runs in
    # worker processes; a stream without end cannot be sampled and needs schema=.
    assert sorted(rl.range(40).map_batches(Nothing).to_pydict()["id"]) == list(range(40))
    with pytest.raises(rl.PlanError, match="pass schema="):
        rl.read_sequence(partitions=1).map_batches(Nothing)
    pids = rl.range(3).map_batches(
        lambda t: t.append_column("pid", pa.array([os.getpid()] * t.num_rows, pa.int64()))).to_pydict()["pid"]
    assert set(pids) == {os.getpid()}
    isolated = rl.range(3).map_batches(
        lambda t: t.append_column("pid", pa.array([os.getpid()] * t.num_rows, pa.int64())),
        isolate=True).to_pydict()["pid"]
    assert os.getpid() not in set(isolated)
    with pytest.raises(ValueError, match="need worker processes"):
        rl.range(3).map_batches(Nothing, schema=pa.schema([("id", pa.int64())]), isolate=False)


def protocol_fd():
    """In a worker process: the descriptor its replies to the engine go out on (a pipe
    open for writing that is not stderr)."""
    import fcntl
    import stat
    stderr = os.fstat(2)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            info = os.fstat(fd)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if (fd > 2 and stat.S_ISFIFO(info.st_mode) and flags & os.O_ACCMODE == os.O_WRONLY
                and (info.st_dev, info.st_ino) != (stderr.st_dev, stderr.st_ino)):
            return fd
    raise RuntimeError("no protocol pipe found")


@pytest.mark.parametrize("garbage", [
    b"O" + (1 << 39).to_bytes(8, "little") + b"then it dies",  # a length that lies, then EOF
    b"O" + (1 << 62).to_bytes(8, "little"),  # a length no frame can have, worker alive
    b"O" + (12).to_bytes(8, "little") + b"not arrow!!!",  # a payload that is not a batch
    b"\xff" * 64,  # not a frame at all
])
def test_a_worker_writing_garbage_is_replaced_and_its_batch_retried(tmp_path, garbage):
    marker = str(tmp_path / "garbled")

    @rl.udf(return_dtype=pa.int64(), batch=True, batch_size=50, concurrency=1)
    def double(x):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.write(protocol_fd(), garbage)
            if garbage.endswith(b"dies"):
                os._exit(0)
            time.sleep(60)  # alive and silent: the engine must not wait for it
        return pc.multiply(x, 2)

    started = time.monotonic()
    df = rl.range(500).with_column("y", double(col("id")))
    out = df.to_pydict()
    assert sorted(zip(out["id"], out["y"])) == [(i, 2 * i) for i in range(500)]
    assert udf_stats(df)["retries"] == 1
    assert time.monotonic() - started < 30
