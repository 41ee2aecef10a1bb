"""Python UDFs and map_batches run in stages of their own and give the right answers."""

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import rillet as rl
from rillet import col


def test_row_udf_with_nulls_and_several_args():
    @rl.udf(return_dtype="string")
    def describe(name, age):
        return None if age is None else f"{name}:{age}"

    df = rl.from_pydict({"name": ["a", "b", "c"], "age": [1, None, 3]})
    assert df.with_column("d", describe(col("name"), col("age"))).to_pydict()["d"] == ["a:1", None, "c:3"]


def test_batch_udf_gets_arrow_arrays_and_batch_size():
    seen = []

    # In-process, so the list it appends to is this test's.
    @rl.udf(return_dtype=pa.float64(), batch=True, batch_size=100, isolate=False)
    def scaled(x):
        assert isinstance(x, pa.Array)
        seen.append(len(x))
        return pc.multiply(x.cast(pa.float64()), 0.5)

    out = rl.range(1050).with_column("half", scaled(col("id"))).to_pydict()
    assert sorted(out["half"]) == [i * 0.5 for i in range(1050)]
    assert sum(seen) == 1050
    assert max(seen) == 100


def test_udf_in_filter_select_and_nested():
    @rl.udf(return_dtype="int64")
    def inc(x):
        return x + 1

    df = rl.range(10)
    assert df.filter(inc(col("id")) > 8).to_pydict() == {"id": [8, 9]}
    assert df.select(inc(inc(col("id")))).limit(3).collect().column(0).to_pylist() == [2, 3, 4]
    assert df.select(inc(col("id"))).columns[0].startswith("inc")


def test_class_udf_is_instantiated_once():
    created = []

    @rl.udf(return_dtype="int64", isolate=False)
    class AddOffset:
        def __init__(self):
            created.append(1)
            self.offset = 100

        def __call__(self, x):
            return x + self.offset

    out = rl.range(500).with_column("y", AddOffset(col("id"))).to_pydict()
    assert sorted(out["y"]) == list(range(100, 600))
    assert len(created) == 1


def test_udf_runs_off_the_calling_thread():
    threads = set()

    @rl.udf(return_dtype="int64")
    def record(x):
        threads.add(threading.get_ident())
        return x

    rl.range(10).with_column("x", record(col("id"))).collect()
    assert threading.get_ident() not in threads


def test_map_batches_formats():
    df = rl.range(100).with_column("x", col("id") * 2)

    def arrow_fn(t):
        assert isinstance(t, pa.Table)
        return t.append_column("y", pc.add(t["x"], 1))

    def pandas_fn(frame):
        assert isinstance(frame, pd.DataFrame)
        frame["y"] = frame["x"] + 1
        return frame

    def numpy_fn(batch):
        assert isinstance(batch["x"], np.ndarray)
        return {"id": batch["id"], "x": batch["x"], "y": batch["x"] + 1}

    for fn, fmt in ((arrow_fn, "pyarrow"), (pandas_fn, "pandas"), (numpy_fn, "numpy")):
        out = df.map_batches(fn, batch_format=fmt).sort("id").to_pydict()
        assert out["y"] == [2 * i + 1 for i in range(100)], fmt


def test_map_batches_batch_size_and_declared_schema():
    sizes = []

    def count_rows(t):
        sizes.append(t.num_rows)
        return pa.table({"n": [t.num_rows]})

    out = rl.range(1000).map_batches(count_rows, batch_size=256, schema=pa.schema([("n", pa.int64())]))
    assert sorted(out.to_pydict()["n"]) == [232, 256, 256, 256] or sum(out.to_pydict()["n"]) == 1000
    assert max(sizes) <= 256


def test_map_batches_casts_to_the_declared_schema():
    out = rl.range(3).map_batches(lambda t: pa.table({"v": [1, 2, 3][: t.num_rows]}),
                                  schema=pa.schema([("v", pa.float32())]))
    assert out.schema.field("v").type == pa.float32()
    assert sorted(out.to_pydict()["v"]) == [1.0, 2.0, 3.0]


def test_pipeline_after_map_batches_continues_relationally():
    df = (rl.range(1000)
            .map_batches(lambda t: t.append_column("sq", pc.multiply(t["id"], t["id"])))
            .filter(col("sq") % 2 == 0)
            .group_by((col("id") % 3).alias("g"))
            .agg(col("sq").sum().alias("s"))
            .sort("g"))
    expected = [sum(i * i for i in range(0, 1000, 2) if i % 3 == g) for g in range(3)]
    assert df.to_pydict()["s"] == expected
