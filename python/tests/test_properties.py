"""Property tests: on random data, Rillet's answers equal pyarrow's and pandas'."""

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

import rillet as rl
from rillet import col

ints = st.one_of(st.none(), st.integers(min_value=-1000, max_value=1000))
keys = st.sampled_from(["a", "b", "c", "d"])
rows = st.lists(st.tuples(keys, ints, st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)),
                min_size=0, max_size=200)

SETTINGS = settings(max_examples=25, deadline=None)


def table(data):
    return pa.table({
        "k": pa.array([r[0] for r in data], pa.string()),
        "v": pa.array([r[1] for r in data], pa.int64()),
        "f": pa.array([r[2] for r in data], pa.float64()),
    })


@SETTINGS
@given(rows, st.integers(min_value=-1000, max_value=1000))
def test_filter_and_arithmetic_match_pyarrow(data, threshold):
    t = table(data)
    got = (rl.from_arrow(t).filter(col("v") > threshold)
             .with_column("w", col("v") * 3 - 1).sort(["k", "v", "f"]).collect())
    mask = pc.fill_null(pc.greater(t["v"], threshold), False)
    expected = t.filter(mask)
    expected = expected.append_column("w", pc.subtract(pc.multiply(expected["v"], 3), 1))
    expected = expected.sort_by([("k", "ascending"), ("v", "ascending"), ("f", "ascending")])
    assert got.to_pydict() == expected.to_pydict()


@SETTINGS
@given(rows)
def test_group_by_matches_pandas(data):
    t = table(data)
    got = (rl.from_arrow(t).group_by("k")
             .agg(col("v").sum().alias("s"), rl.count().alias("n"), col("f").max().alias("m"))
             .sort("k").to_pandas())
    frame = t.to_pandas()
    if frame.empty:
        assert got.empty
        return
    expected = frame.groupby("k").agg(s=("v", lambda x: x.sum(min_count=1)), n=("v", "size"), m=("f", "max"))
    expected = expected.reset_index().sort_values("k").reset_index(drop=True)
    assert got["k"].tolist() == expected["k"].tolist()
    assert got["n"].tolist() == expected["n"].tolist()
    assert [None if pd.isna(x) else int(x) for x in got["s"]] == [None if pd.isna(x) else int(x) for x in expected["s"]]
    assert got["m"].tolist() == expected["m"].tolist()


@SETTINGS
@given(rows, rows)
def test_inner_join_matches_pandas(left, right):
    lt, rt = table(left), table(right).rename_columns(["k", "v2", "f2"])
    got = rl.from_arrow(lt).join(rl.from_arrow(rt), on="k").to_pandas()
    expected = lt.to_pandas().merge(rt.to_pandas(), on="k")
    cols = ["k", "v", "f", "v2", "f2"]
    norm = lambda d: sorted(map(tuple, d[cols].astype(object).where(d[cols].notna(), None).values.tolist()), key=repr)
    assert norm(got) == norm(expected)


@SETTINGS
@given(rows, st.integers(min_value=0, max_value=50))
def test_sort_and_limit_match_pyarrow(data, n):
    t = table(data)
    got = rl.from_arrow(t).sort(["f", "k"], descending=[True, False]).limit(n).collect()
    expected = t.sort_by([("f", "descending"), ("k", "ascending")]).slice(0, n)
    assert got.column("f").to_pylist() == expected.column("f").to_pylist()


@SETTINGS
@given(rows)
def test_map_batches_identity_preserves_rows(data):
    t = table(data)
    got = rl.from_arrow(t).map_batches(lambda b: b, batch_size=7).collect()
    key = [("k", "ascending"), ("v", "ascending"), ("f", "ascending")]
    assert got.sort_by(key).to_pydict() == t.sort_by(key).to_pydict()
