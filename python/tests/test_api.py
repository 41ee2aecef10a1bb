"""The DataFrame API end to end, results checked against pyarrow / pandas."""

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rillet as rl
from rillet import col, lit


@pytest.fixture
def people():
    return rl.from_pydict({
        "name": ["ann", "bob", "cid", "dee", None],
        "age": [31, 25, 47, None, 19],
        "city": ["oslo", "rome", "oslo", "lima", "rome"],
    })


def test_constructors_agree():
    data = {"a": [1, 2, 3], "b": ["x", "y", "z"]}
    expected = pa.table(data)
    assert rl.from_pydict(data).collect().equals(expected)
    assert rl.from_pylist(expected.to_pylist()).collect().equals(expected)
    assert rl.from_arrow(expected).collect().equals(expected)
    assert rl.from_arrow(expected.to_batches()[0]).collect().equals(expected)
    assert rl.from_pandas(pd.DataFrame(data)).to_pydict() == data
    assert rl.range(5).to_pydict() == {"id": [0, 1, 2, 3, 4]}


def test_from_arrow_accepts_the_pycapsule_stream_interface():
    class Capsule:
        def __init__(self, table):
            self.table = table

        def __arrow_c_stream__(self, requested_schema=None):
            return self.table.__arrow_c_stream__(requested_schema)

    table = pa.table({"v": [1.5, 2.5]})
    assert rl.from_arrow(Capsule(table)).to_pydict() == {"v": [1.5, 2.5]}


def test_select_with_column_filter_drop_rename(people):
    out = (people.with_column("age2", col("age") * 2)
                 .filter((col("city") == "oslo") | (col("age") < 20))
                 .select("name", "age2", (col("age") + 1).alias("next"))
                 .rename({"age2": "double"}))
    assert out.to_pydict() == {"name": ["ann", "cid", None], "double": [62, 94, 38], "next": [32, 48, 20]}
    assert people.drop("city", "age").columns == ["name"]
    assert people.where(col("age").is_null()).to_pydict()["name"] == ["dee"]


def test_with_column_replaces_in_place(people):
    out = people.with_column("age", col("age").fill_null(0))
    assert out.columns == ["name", "age", "city"]
    assert out.to_pydict()["age"] == [31, 25, 47, 0, 19]


def test_expressions_cast_when_str(people):
    out = people.select(
        col("name").str.upper().alias("upper"),
        col("name").str.len().alias("len"),
        col("name").str.contains("n").alias("has_n"),
        col("name").str.starts_with("a").alias("starts_a"),
        col("city").str.replace("o", "0").alias("city0"),
        col("age").cast("float64").alias("age_f"),
        rl.when(col("age") >= 30, "old").when(col("age") >= 20, "mid").otherwise("young").alias("band"),
        (~col("age").is_null()).alias("known"),
    ).to_pydict()
    assert out["upper"] == ["ANN", "BOB", "CID", "DEE", None]
    assert out["len"] == [3, 3, 3, 3, None]
    assert out["has_n"] == [True, False, False, False, None]
    assert out["starts_a"] == [True, False, False, False, None]
    assert out["city0"] == ["0sl0", "r0me", "0sl0", "lima", "r0me"]
    assert out["age_f"] == [31.0, 25.0, 47.0, None, 19.0]
    assert out["band"] == ["old", "mid", "old", "young", "young"]
    assert out["known"] == [True, True, True, False, True]


def test_split_and_explode():
    df = rl.from_pydict({"id": [1, 2], "tags": ["a,b", "c"]})
    out = df.with_column("tag", col("tags").str.split(",")).drop("tags").explode("tag")
    assert sorted(out.to_pylist(), key=lambda r: r["tag"]) == [
        {"id": 1, "tag": "a"}, {"id": 1, "tag": "b"}, {"id": 2, "tag": "c"}]


def test_sort_limit_distinct_union(people):
    assert people.sort("age", descending=True).to_pydict()["age"] == [47, 31, 25, 19, None]
    assert people.sort("age", nulls_first=True).limit(2).to_pydict()["age"] == [None, 19]
    assert people.sort(["city", "age"], descending=[False, True]).to_pydict()["name"] == [
        "dee", "cid", "ann", "bob", None]
    assert people.sort("age").limit(2, offset=1).to_pydict()["age"] == [25, 31]
    assert sorted(people.select("city").distinct().to_pydict()["city"]) == ["lima", "oslo", "rome"]
    assert people.union(people).count() == 10


def test_group_by_agg(people):
    out = (people.group_by("city")
                 .agg(rl.count().alias("n"), col("age").sum().alias("total"),
                      col("age").mean().alias("mean"), col("age").max().alias("oldest"))
                 .sort("city").to_pydict())
    assert out == {"city": ["lima", "oslo", "rome"], "n": [1, 2, 2], "total": [None, 78, 44],
                   "mean": [None, 39.0, 22.0], "oldest": [None, 47, 25]}
    assert people.agg(col("age").min().alias("youngest")).to_pydict() == {"youngest": [19]}


@pytest.mark.parametrize("how", ["inner", "left", "right", "full", "semi", "anti"])
def test_joins_match_pandas(how):
    left = pd.DataFrame({"k": [1, 2, 2, 3, None], "l": ["a", "b", "c", "d", "e"]})
    right = pd.DataFrame({"k": [2, 3, 4], "r": [20.0, 30.0, 40.0]})
    left["k"] = left["k"].astype("Int64")
    right["k"] = right["k"].astype("Int64")
    out = rl.from_pandas(left).join(rl.from_pandas(right), on="k", how=how).to_pandas()
    if how in ("semi", "anti"):
        matched = left["k"].isin(right["k"]) & left["k"].notna()
        expected = left[matched] if how == "semi" else left[~matched]
    else:
        expected = left.merge(right, on="k", how={"full": "outer"}.get(how, how))
        expected = expected[expected["k"].notna() | (how in ("left", "full"))]
    key = sorted(expected.columns)
    got = out[key].sort_values(key).reset_index(drop=True)
    want = expected[key].sort_values(key).reset_index(drop=True)
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_join_renames_clashing_right_columns():
    a = rl.from_pydict({"id": [1, 2], "v": [10, 20]})
    b = rl.from_pydict({"key": [2, 1], "v": [200, 100]})
    out = a.join(b, left_on="id", right_on="key").sort("id")
    assert out.columns == ["id", "v", "key", "right.v"]
    assert out.to_pydict()["right.v"] == [100, 200]
    assert out.select(col("right.v")).count() == 2


def test_results_formats(people):
    assert people.to_pandas().shape == (5, 3)
    assert people.to_pylist()[0] == {"name": "ann", "age": 31, "city": "oslo"}
    assert people.count() == 5
    assert people.schema.field("age").type == pa.int64()
    batches = list(rl.range(1000).iter_batches(batch_size=300))
    assert [b.num_rows for b in batches] == [300, 300, 300, 100]
    assert sum(1 for _ in people.iter_rows()) == 5


def test_show_prints_a_table(people, capsys):
    people.show(2)
    out = capsys.readouterr().out
    assert "| name" in out and "ann" in out and "(2 rows shown)" in out


def test_sql(people):
    out = rl.sql("SELECT city, count(*) AS n FROM p WHERE age > 20 GROUP BY city ORDER BY city",
                 p=people).to_pydict()
    assert out == {"city": ["oslo", "rome"], "n": [2, 1]}
    arrow_table = pa.table({"x": [1, 2, 3]})
    assert rl.sql("SELECT sum(x) AS s FROM t", t=arrow_table).to_pydict() == {"s": [6]}


def test_explain_shows_logical_plan_and_dataflow(people):
    text = people.filter(col("age") > 20).map_batches(lambda t: t).explain()
    assert "== Logical plan ==" in text and "MapBatches" in text
    assert "== Physical dataflow ==" in text
    assert "parallelism" in text and "edge [" in text
    assert "map_batches(<lambda>)" in text


def test_write_and_read_every_format(tmp_path, people):
    for fmt in ("parquet", "csv", "json"):
        stats = getattr(people, f"write_{fmt}")(tmp_path / fmt)
        assert stats["rows_written"] == 5
        assert stats["files_written"], "at least one file is written"
        back = getattr(rl, f"read_{fmt}")(tmp_path / fmt)
        assert back.sort("age").to_pydict()["age"] == [19, 25, 31, 47, None]
    # overwrite replaces, append adds
    people.write_parquet(tmp_path / "parquet", mode="overwrite")
    assert rl.read_parquet(tmp_path / "parquet").count() == 5
    people.write_parquet(tmp_path / "parquet")
    assert rl.read_parquet(tmp_path / "parquet").count() == 10
    first_json_file = sorted((tmp_path / "json").iterdir())[0]
    json.loads(first_json_file.read_text().splitlines()[0])


@pytest.mark.parametrize("codec", ["zstd", "snappy", "lz4", "gzip", "none"])
def test_write_parquet_compression(people, tmp_path, codec):
    people.write_parquet(tmp_path, compression=codec)
    (written,) = tmp_path.glob("*.parquet")
    column = pq.ParquetFile(written).metadata.row_group(0).column(0)
    expected = {"zstd": "ZSTD", "snappy": "SNAPPY", "lz4": "LZ4", "gzip": "GZIP", "none": "UNCOMPRESSED"}
    assert column.compression == expected[codec]
    assert rl.read_parquet(tmp_path).count() == 5


@pytest.mark.parametrize("codec", ["brotli", "gzip", "lz4", "snappy", "zstd"])
def test_read_parquet_written_by_pyarrow_with_each_codec(tmp_path, codec):
    """Parquet from other writers uses every codec, brotli included: the reason parquet's
    default features (which DataFusion turns on) stay in the build."""
    table = pa.table({"i": list(range(1000)), "s": [f"row {i % 7}" for i in range(1000)]})
    pq.write_table(table, tmp_path / "t.parquet", compression=codec)
    column = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0)
    assert column.compression == codec.upper() or (codec == "lz4" and column.compression == "LZ4")
    assert rl.read_parquet(tmp_path / "t.parquet").sort("i").to_pydict() == table.to_pydict()


def test_write_parquet_rejects_an_unknown_codec(people, tmp_path):
    with pytest.raises(rl.PlanError, match="unknown Parquet compression .bzip."):
        people.write_parquet(tmp_path, compression="bzip")


def test_read_parquet_glob_list_and_file(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"i": [i] * 4}), tmp_path / f"part{i}.parquet")
    assert rl.read_parquet(str(tmp_path / "part*.parquet")).count() == 12
    assert rl.read_parquet([tmp_path / "part0.parquet", tmp_path / "part1.parquet"]).count() == 8
    assert rl.read_parquet(tmp_path / "part2.parquet").to_pydict() == {"i": [2] * 4}


def test_read_files_lists_without_reading(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b.jpg").write_bytes(b"y" * 20)
    (tmp_path / "c.txt").write_text("z")
    df = rl.read_files(str(tmp_path / "**" / "*.jpg"))
    assert df.columns == ["path", "size", "modified", "file"]
    assert str(df.schema.field("file").type) == "File"
    rows = sorted(df.to_pylist(), key=lambda r: r["path"])
    assert [os.path.basename(r["path"]) for r in rows] == ["a.jpg", "b.jpg"]
    assert [r["size"] for r in rows] == [10, 20]
    assert [r["file"]["uri"] for r in rows] == [r["path"] for r in rows]
    assert {r["file"]["media_type"] for r in rows} == {"image/jpeg"}
    assert rl.read_files(tmp_path).count() == 3


def test_stats_after_run(people):
    df = people.filter(col("age") > 20)
    assert df.stats() is None
    df.collect()
    stats = df.stats()
    assert stats["rows_written"] == 3
    names = [op["name"] for op in stats["operators"]]
    assert names[-1] == "collect"
    assert all({"rows_out", "bytes_out", "rows_per_s", "wait_input_ms", "wait_output_ms",
                "wait_worker_ms"} <= set(op) for op in stats["operators"])


def test_sql_table_names_do_not_leak_between_queries():
    first = rl.sql("SELECT sum(x) AS s FROM t", t=rl.from_pydict({"x": [1, 2]})).to_pydict()
    second = rl.sql("SELECT sum(x) AS s FROM t", t=rl.from_pydict({"x": [10]})).to_pydict()
    assert (first, second) == ({"s": [3]}, {"s": [10]})
    with pytest.raises(rl.RilletError):
        rl.sql("SELECT * FROM t").collect()


def test_notebook_display_shows_thumbnails_and_audio_players():
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.full((300, 400, 3), 200, np.uint8))
    tone = (0.2 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    df = rl.from_pydict({"img": [image, None], "a": [(tone, 8000), None], "n": [1, 2]})
    page = df._repr_html_()
    assert page.count("<tr>") == 3
    assert 'src="data:image/png;base64,' in page and 'title="400×300 RGB"' in page
    assert 'src="data:audio/wav;base64,' in page and "<Audio 1.00s 8000 Hz ×1>".replace("<", "&lt;").replace(">", "&gt;") in page
    assert "<i>null</i>" in page
