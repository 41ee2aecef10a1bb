"""A Daft, Ray Data or Polars user's first day, step by step: multimodal values in Python
functions, map_batches without a schema, no silent wrong results, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_photos, sample_speech


@pytest.fixture(scope="module")
def photos():
    return [str(p) for p in sample_photos() if p.suffix.lower() in (".png", ".jpg", ".jpeg")][:6]


@pytest.fixture()
def images(photos):
    """Decoded RGB photos resized to one size, so batches stack."""
    return (rl.from_pydict({"path": photos})
            .with_column("img", col("path").image.decode("RGB").image.resize(32, 24)))


def _expected(photos):
    out = []
    for p in photos:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


# 1. Multimodal values arrive in Python as users know them ----------------------------------

@pytest.mark.parametrize("isolate", [False, True])
def test_row_udf_gets_and_returns_pil_images_and_numpy(photos, isolate):
    @rl.udf(return_dtype=rl.Image("RGB"), isolate=isolate)
    def flip(image):
        assert isinstance(image, Image.Image), type(image)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    @rl.udf(return_dtype=rl.Tensor("f32", (3,)), isolate=isolate)
    def mean_colour(image):
        return np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0)

    df = rl.from_pydict({"path": photos}).with_column("img", col("path").image.decode("RGB"))
    rows = df.with_columns({"flipped": flip(col("img")), "mean": mean_colour(col("img"))}).to_pylist()
    by_path = {r["path"]: r for r in rows}
    for path, pixels in zip(photos, _expected(photos)):
        row = by_path[path]
        assert isinstance(row["flipped"], Image.Image)
        np.testing.assert_array_equal(np.asarray(row["flipped"]), pixels[:, ::-1])
        assert row["mean"].dtype == np.float32 and row["mean"].shape == (3,)
        np.testing.assert_allclose(row["mean"], pixels.reshape(-1, 3).mean(axis=0), rtol=1e-4)


def test_row_udf_tensor_from_numpy_is_the_issue_example():
    @rl.udf(return_dtype=rl.Tensor("f32", (3,)))
    def zeros(x):
        return np.zeros(3, np.float32)

    out = rl.from_pydict({"x": [1, 2]}).with_column("t", zeros(col("x")))
    assert str(out.schema.field("t").type) == "Tensor[f32; 3]"
    values = out.to_pydict()["t"]
    assert all(isinstance(v, np.ndarray) and v.tolist() == [0, 0, 0] for v in values)


@pytest.mark.parametrize("isolate", [False, True])
def test_batch_udf_gets_stacked_numpy_and_returns_an_embedding_matrix(images, isolate):
    @rl.udf(return_dtype=rl.Embedding("f32", 3), batch=True, batch_format="numpy", isolate=isolate)
    def embed(batch):
        assert isinstance(batch, np.ndarray) and batch.ndim == 4 and batch.shape[1:] == (24, 32, 3)
        return batch.reshape(len(batch), -1, 3).mean(axis=1).astype(np.float32)

    out = images.with_column("e", embed(col("img")))
    assert str(out.schema.field("e").type) == "Embedding[f32; 3]"
    rows = out.to_pylist()
    for row in rows:
        expected = np.asarray(row["img"], np.float32).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(row["e"], expected, rtol=1e-4)


def test_batch_udf_pyarrow_arrays_give_pil_images_and_stack(images):
    seen = []

    @rl.udf(return_dtype="int64", batch=True)
    def widths(array):
        seen.append((type(array.to_pylist()[0]), array.to_numpy().shape))
        return [image.width for image in array.to_pylist()]

    assert images.with_column("w", widths(col("img"))).to_pydict()["w"] == [32] * len(images.to_pylist())
    assert all(kind is Image.Image and shape[1:] == (24, 32, 3) for kind, shape in seen)


def test_images_of_different_sizes_arrive_as_a_list_of_arrays(photos):
    df = rl.from_pydict({"path": photos}).with_column("img", col("path").image.decode("RGB"))
    shapes = df.map_batches(lambda b: {"shape": [str(a.shape) for a in b["img"]]}, batch_format="numpy")
    expected = sorted(str(p.shape) for p in _expected(photos))
    assert sorted(shapes.to_pydict()["shape"]) == expected


def test_audio_arrives_as_samples_and_rate():
    speech = [str(p) for p in sample_speech() if p.suffix == ".flac"][:1]

    @rl.udf(return_dtype="string")
    def describe(audio):
        samples, rate = audio
        return f"{type(samples).__name__} {samples.dtype} {rate}"

    out = rl.from_pydict({"path": speech}).with_column("a", col("path").audio.decode())
    assert out.with_column("d", describe(col("a"))).to_pydict()["d"][0].startswith("ndarray float32 ")


def test_to_pandas_and_pandas_batches_hold_python_values(images):
    frame = images.to_pandas()
    assert all(isinstance(v, Image.Image) for v in frame["img"])
    widths = images.map_batches(lambda p: p.assign(w=[v.width for v in p["img"]]), batch_format="pandas")
    out = widths.to_pandas()
    assert list(out["w"]) == [32] * len(out) and isinstance(out["img"][0], Image.Image)
    assert frame["img"][0].tobytes() == images.to_pylist()[0]["img"].tobytes()


# 2. map_batches finds its schema from real rows -----------------------------------------

def test_map_batches_numpy_with_strings_and_indexing_first_row():
    out = rl.from_pydict({"s": ["a", "b"]}).map_batches(lambda b: {"s": b["s"]}, batch_format="numpy")
    assert out.to_pydict() == {"s": ["a", "b"]}
    first = rl.range(30).map_batches(lambda b: {"first": [b["id"][0]] * len(b["id"])},
                                    batch_format="numpy", batch_size=10)
    assert sorted(set(first.to_pydict()["first"])) == [0, 10, 20]


def test_map_batches_on_an_endless_stream_needs_a_schema():
    with pytest.raises(rl.PlanError, match="stream without end.*pass schema="):
        rl.read_sequence(partitions=1).map_batches(lambda b: b)


# 5. No silent wrong results ------------------------------------------------------------

def test_udf_result_converted_only_without_loss():
    lossy = rl.udf(lambda x: 1.7, return_dtype="int64")
    with pytest.raises(rl.UserFunctionError, match="not int64 without loss"):
        rl.from_pydict({"x": [1]}).with_column("y", lossy(col("x"))).to_pydict()
    exact = rl.udf(lambda x: 2.0, return_dtype="int64")
    assert rl.from_pydict({"x": [1]}).with_column("y", exact(col("x"))).to_pydict()["y"] == [2]
    batch = rl.udf(lambda x: np.array([0.5] * len(x)), return_dtype="int32", batch=True)
    with pytest.raises(rl.UserFunctionError, match="without loss"):
        rl.from_pydict({"x": [1]}).with_column("y", batch(col("x"))).to_pydict()


# 3. Declared and produced nullability agree, over every operator ---------------------------

def _base_frames(photos):
    strict = pa.table({"k": pa.array([1, 2, 2, 3], pa.int64()), "s": pa.array(["a", "b", "b", None]),
                       "v": pa.array([1.0, 2.0, 2.0, 4.0])},
                      schema=pa.schema([pa.field("k", pa.int64(), nullable=False), pa.field("s", pa.string()),
                                        pa.field("v", pa.float64(), nullable=False)]))
    return {"files": rl.read_files(os.path.dirname(photos[0])), "arrow": rl.from_arrow(strict)}


_OPERATORS = {
    "select": lambda df, c: df.select(c[0]),
    "filter": lambda df, c: df.filter(col(c[0]).is_not_null()),
    "with_column": lambda df, c: df.with_column("n", col(c[0]).is_null()),
    "sort": lambda df, c: df.sort(c[0]),
    "limit": lambda df, c: df.limit(2),
    "distinct": lambda df, c: df.select(c[0]).distinct(),
    "drop_duplicates(subset)": lambda df, c: df.drop_duplicates(c[1]),
    "drop_duplicates()": lambda df, c: df.drop_duplicates(),
    "group_by": lambda df, c: df.group_by(c[0]).agg(rl.count().alias("n"), col(c[1]).min().alias("m")),
    "left join": lambda df, c: df.join(df.select(c[0], c[1]).rename({c[1]: "other"}), on=c[0], how="left"),
    "inner join": lambda df, c: df.join(df.select(c[0], c[1]).rename({c[1]: "other"}), on=c[0]),
    "union": lambda df, c: df.union(df),
    "map_batches": lambda df, c: df.map_batches(lambda t: t),
    "udf": lambda df, c: df.with_column("u", rl.udf(lambda x: x, return_dtype=df.schema.field(c[1]).type)(col(c[1]))),
    "sql": lambda df, c: rl.sql(f"SELECT {c[0]}, count(*) AS n FROM t GROUP BY {c[0]}", t=df),
}


@pytest.mark.parametrize("operator", list(_OPERATORS))
def test_declared_nullability_matches_the_rows_for_every_operator(photos, operator):
    for name, df in _base_frames(photos).items():
        columns = ["path", "size"] if name == "files" else ["k", "v"]
        out = _OPERATORS[operator](df, columns)
        table = out.collect()
        assert table.schema == out.schema, (name, operator)
        for field, column in zip(table.schema, table.columns):
            assert field.nullable or column.null_count == 0, (name, operator, field.name)
        streamed = list(out.iter_batches())
        assert all(b.schema == out.schema for b in streamed), (name, operator)
        assert out.count() == table.num_rows


def test_drop_duplicates_on_read_files_is_the_issue_example(photos):
    folder = os.path.dirname(photos[0])
    out = rl.read_files(folder).drop_duplicates("size").collect()
    sizes = {os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
    assert out.num_rows == len(sizes)


# 4. Sizes from user parameters are capped before anything is allocated -------------------

def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("operator", ["resize", "letterbox"])
def test_an_output_size_over_the_pixel_cap_fails_the_plan(photos, operator):
    before = _peak_rss_mib()
    df = rl.from_pydict({"path": photos[:1]})
    with pytest.raises(rl.PlanError, match=r"100000×100000 = 10000000000 pixels is over the cap"):
        df.with_column("r", getattr(col("path").image.decode().image, operator)(100000, 100000))
    assert _peak_rss_mib() - before < 500


@pytest.mark.parametrize("width", [-5, 0])
def test_zero_and_negative_sizes_get_one_message(photos, width):
    with pytest.raises(rl.PlanError, match=f"width must be a whole number of pixels from 1 to .*, not {width}"):
        rl.from_pydict({"path": photos[:1]}).with_column("r", col("path").image.decode().image.resize(width, 10))


def test_a_blur_wider_than_the_cap_fails_the_plan(photos):
    with pytest.raises(rl.PlanError, match="sigma must be at most"):
        rl.from_pydict({"path": photos[:1]}).with_column("r", col("path").image.decode().image.blur(1e9))


def test_audio_outputs_over_the_value_cap_fail_the_row():
    # 2000 frames at 1 Hz resampled to 768 kHz would be 6 GB; a spectrogram with hop 1 of
    # 3.4 M samples 1 GiB.
    df = rl.from_pydict({"a": [(np.zeros(2000, np.float32), 1)]})
    with pytest.raises(rl.DataError, match="over the cap of 1073741824 bytes per value"):
        df.with_column("r", col("a").audio.resample(768000, on_error="raise")).collect()
    long = rl.from_pydict({"a": [(np.zeros(3_400_000, np.float32), 16000)]})
    with pytest.raises(rl.DataError, match="use a larger hop"):
        long.with_column("m", col("a").audio.mel_spectrogram(hop=1, on_error="raise")).collect()
    assert _peak_rss_mib() < 4000


# 6. Missing inputs are an error --------------------------------------------------------

def test_a_glob_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(rl.PlanError, match=r"no files match .*nope/\*\.jpg.*allow_empty=True"):
        rl.read_files(str(tmp_path / "nope" / "*.jpg"))
    assert rl.read_files(str(tmp_path / "nope" / "*.jpg"), allow_empty=True).count() == 0
    with pytest.raises(rl.PlanError, match="relative to"):
        rl.read_files("no-such-folder/*.jpg")


# 5. Nulls by policy are counted and reported; mistakes are errors ---------------------------

def test_map_batches_schema_must_name_every_returned_column():
    df = rl.from_pydict({"x": [1, 2]})
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(rl.UserFunctionError, match=r"returned columns the schema does not name: \['y'\]"):
        df.map_batches(lambda t: t.append_column("y", t["x"]), schema=schema).collect()
    with pytest.raises(rl.UserFunctionError, match=r"did not return the schema's columns \['z'\]"):
        df.map_batches(lambda t: t, schema=pa.schema([("x", pa.int64()), ("z", pa.int64())])).collect()


def test_cosine_similarity_of_vectors_of_different_dimensions_is_an_error():
    df = rl.from_pydict({"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]})
    with pytest.raises(rl.DataError, match=r"dimensions differ on row 0 \(2 and 3\)"):
        df.with_column("c", col("a").vector.cosine_similarity(col("b"))).collect()
    fixed = rl.from_pydict({"a": [np.ones(2, np.float32)], "b": [np.ones(3, np.float32)]})
    with pytest.raises(rl.PlanError, match=r"dimensions differ \(2 and 3\)"):
        fixed.with_column("c", col("a").vector.cosine_similarity(col("b")))


def test_rows_nulled_by_policy_are_reported_at_the_end_of_a_run(tmp_path, caplog):
    df = rl.from_pydict({"path": ["a"]}).with_column("img", col("path").image.decode().image.resize(8, 8))
    with caplog.at_level("WARNING", logger="rillet"):
        assert df.to_pydict()["img"] == [None]
    expected = "image_resize: 1 of 1 rows null — a: no such file"
    assert [r.getMessage() for r in caplog.records if r.name == "rillet"] == [expected]
    assert df.stats()["nulls"] == [expected]
    op = next(o for o in df.stats()["operators"] if o["nulls"])
    assert op["nulls"] == [{"operator": "image_resize", "rows": 1, "nulled": 1, "reasons": ["a: no such file"]}]
    figures = df.write_parquet(tmp_path / "out")
    assert figures["nulls"] == [expected]
    # A clean run reports nothing.
    caplog.clear()
    with caplog.at_level("WARNING", logger="rillet"):
        rl.from_pydict({"x": [1]}).collect()
    assert not [r for r in caplog.records if r.name == "rillet"]


# 7. Errors point the right way ---------------------------------------------------------

def test_a_damaged_parquet_file_among_many_is_named(tmp_path):
    import pyarrow.parquet as pq

    for i in range(3):
        pq.write_table(pa.table({"x": [i]}), tmp_path / f"part-{i}.parquet")
    damaged = tmp_path / "part-1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-30])  # a truncated upload
    with pytest.raises(rl.DataError, match=r"part-1\.parquet is not a readable Parquet file"):
        rl.read_parquet(str(tmp_path / "*.parquet"))
    with pytest.raises(rl.DataError, match=r"part-1\.parquet"):
        rl.read_parquet(str(tmp_path))


def test_plan_errors_speak_of_columns_not_internal_names():
    df = rl.from_pydict({"x": [1]})
    with pytest.raises(rl.PlanError) as error:
        df.select("y")
    assert "Valid fields are x" in str(error.value) and "?table?" not in str(error.value)
    with pytest.raises(rl.PlanError, match=r'explode: column "s" is Utf8, not a list'):
        rl.from_pydict({"s": ["a"]}).explode("s")
    assert "DataFusion's code" not in str(error.value)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="limit: n must be a whole number >= 0"):
            df.limit(bad)
    text = df.with_column("i", col("x").cast(pa.string()).image.decode()).explain()
    assert "FunctionCall: image_decode(" in text and "PythonUdf" not in text and "?table?." not in text


def test_models_help_prints_usage_not_a_traceback():
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "rillet.models", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "usage: python -m rillet.models" in shown.stdout
    assert "all-minilm-l6-v2" in shown.stdout and "Traceback" not in shown.stderr
    wrong = subprocess.run([sys.executable, "-m", "rillet.models", "nope"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown model 'nope'" in wrong.stderr and "Traceback" not in wrong.stderr


def test_worker_tracebacks_show_the_users_file_and_line(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import rillet as rl\n"
        "@rl.udf(return_dtype='int64', isolate=True)\n"
        "def boom(x):\n"
        "    raise ValueError('bad value %d' % x)\n"
        "try:\n"
        "    rl.from_pydict({'x': [1]}).with_column('y', boom(rl.col('x'))).collect()\n"
        "except rl.UserFunctionError as e:\n"
        "    print(e)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path).stdout
    assert f'File "{script}", line 4, in boom' in out
    assert "raise ValueError('bad value %d' % x)" in out and "<dynamic-code>" not in out


def test_rows_per_second_holds_within_a_batch():
    import time

    started = time.monotonic()
    first = next(iter(rl.read_sequence(partitions=1, rows=None, rows_per_second=100).iter_batches()))
    assert first.num_rows <= 5, "a throttled batch holds at most 50 ms of rows"
    assert time.monotonic() - started < 20


def test_the_schema_names_types_as_their_repr_does(photos):
    df = rl.from_pydict({"path": photos[:1]}).with_column("img", col("path").image.decode("RGB"))
    assert "img: extension<rillet.image<Image[RGB, u8]>>" in str(df.schema)
    assert repr(df) == "DataFrame[path: string, img: Image[RGB, u8]]"
    assert df.schema.field("img").type == rl.Image("RGB")


def test_dir_shows_the_public_api_only():
    names = dir(rl)
    assert not {"os", "pa", "Any", "Iterable", "Sequence", "annotations"} & set(names)
    assert {"DataFrame", "col", "read_files", "udf"} <= set(names)


@pytest.mark.parametrize("isolate", [False, True])
def test_python_udf_rows_nulled_by_policy_are_counted(isolate, caplog):
    @rl.udf(return_dtype="int64", on_error="null", isolate=isolate)
    def parse(s):
        return int(s)

    df = rl.from_pydict({"s": ["1", "x", "3"]}).with_column("n", parse(col("s")))
    with caplog.at_level("WARNING", logger="rillet"):
        assert df.to_pydict()["n"] == [1, None, 3]
    expected = "udf(parse): 1 of 3 rows null — ValueError: invalid literal for int() with base 10: 'x'"
    assert df.stats()["nulls"] == [expected]
    assert expected in [r.getMessage() for r in caplog.records]


def test_service_rows_nulled_by_policy_are_counted():
    def parse(s):
        return int(s)

    with rl.service(rl.udf(parse, return_dtype="int64", on_error="null"), replicas=1) as svc:
        df = rl.from_pydict({"s": ["1", "x"]}).with_column("n", svc(col("s")))
        assert df.to_pydict()["n"] == [1, None]
    assert df.stats()["nulls"][0].endswith("1 of 2 rows null — ValueError: invalid literal for int() with base 10: 'x'")


# Found in review: no silent wrong values at the edges ----------------------------------

def test_rillet_types_differ_by_their_parameters():
    assert rl.Image("RGB") != rl.Image("L") and rl.Tensor("f32") != rl.Tensor("u8")
    assert rl.Tensor("f32", (4,)) != rl.Tensor("u8", (16,)) and rl.Embedding("f32", 3) == rl.Embedding("f32", 3)


def test_declared_types_are_built_without_loss():
    from rillet.types import to_extension_array

    with pytest.raises(ValueError, match="not uint8 without loss"):
        to_extension_array([np.array([300, -1])], rl.Tensor("u8", (2,)))
    with pytest.raises(ValueError, match="not int32 without loss"):
        to_extension_array(np.array([[1.5, 2.5]]), rl.Embedding("i32", 2))
    with pytest.raises(ValueError, match="not an Image\\('L16'\\) without loss"):
        to_extension_array([Image.new("RGB", (2, 2))], rl.Image("L16"))
    with pytest.raises(ValueError, match="mode F .* no Rillet image mode"):
        to_extension_array([Image.new("F", (2, 2))], rl.Image())
    samples, rate = rl.from_pydict({"a": [(np.array([16384, -32768], np.int16), 8000)]}).to_pylist()[0]["a"]
    assert samples.ravel().tolist() == [0.5, -1.0] and rate == 8000


def test_udf_returning_a_map_and_nested_images_in_worker_processes(photos):
    @rl.udf(return_dtype=pa.map_(pa.string(), pa.int64()))
    def as_map(x):
        return {"k": x}

    assert rl.from_pydict({"x": [1]}).with_column("m", as_map(col("x"))).to_pydict()["m"] == [[("k", 1)]]

    @rl.udf(return_dtype="string", num_cpus=1)
    def kinds(images):
        return ",".join(type(i).__name__ for i in images)

    images = rl.from_pydict({"path": photos[:2]}).select(col("path").image.decode("RGB").alias("i")).collect()
    nested = pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), images["i"].combine_chunks())
    frames = rl.from_arrow(pa.table({"imgs": nested}))
    assert frames.with_column("k", kinds(col("imgs"))).to_pydict()["k"] == ["Image,Image"]


def test_map_batches_vectors_stay_lists_and_pandas_names_become_strings():
    import pandas as pd

    out = rl.range(40).map_batches(
        lambda b: {"v": [np.arange(3 if i < 16 else 5) for i in b["id"]]}, batch_format="numpy")
    assert pa.types.is_list(out.schema.field("v").type)
    assert sorted(len(v) for v in out.to_pydict()["v"]) == [3] * 16 + [5] * 24
    assert rl.range(3).map_batches(lambda p: pd.DataFrame({0: p["id"]}), batch_format="pandas").columns == ["0"]
    with pytest.raises(rl.PlanError, match="all null in the first"):
        rl.range(3).map_batches(lambda t: {"label": [None] * t.num_rows})


def test_fill_null_keeps_column_types_and_dataframes_have_no_truth_value():
    df = rl.from_pydict({"a": [1, None]}).with_column("u", col("a").cast(pa.uint8()))
    assert df.fill_null(0).schema.field("u").type == pa.uint8()
    with pytest.raises(ValueError, match="-1 does not fit column 'u'"):
        df.fill_null(-1, subset="u")
    with pytest.raises(TypeError, match="ambiguous"):
        bool(df)


def test_webdataset_round_trip_keeps_the_shard_url(tmp_path):
    first = rl.write_webdataset(rl.from_pydict({"txt": ["a"]}), tmp_path / "one")
    again = rl.write_webdataset(rl.read_webdataset(first[0]), tmp_path / "two")
    assert rl.read_webdataset(again[0]).to_pydict()["__url__"] == [again[0]]


def test_hive_discovery_never_skips_a_file(tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "year=2024").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "year=2024" / "a.parquet")
    pq.write_table(pa.table({"x": [2]}), tmp_path / "b.parquet")
    assert sorted(rl.read_parquet(str(tmp_path)).to_pydict()["x"]) == [1, 2]
    (tmp_path / "b.parquet").unlink()
    assert rl.read_parquet(f"{tmp_path}/./").to_pydict() == {"x": [1], "year": ["2024"]}


def test_a_list_of_images_gathered_by_group_by_stays_images(photos):
    df = rl.from_pydict({"path": photos[:2]}).with_column("img", col("path").image.decode("RGB"))
    gathered = df.group_by().agg(col("img").list().alias("imgs"))
    assert str(gathered.schema.field("imgs").type.value_type) == "Image[RGB, u8]"
    assert all(isinstance(i, Image.Image) for i in gathered.to_pydict()["imgs"][0])


def test_map_batches_reuses_the_result_of_the_rows_it_sampled():
    calls = []

    def tag(batch):
        calls.append(batch.num_rows)
        return batch.append_column("n", pa.array([len(calls)] * batch.num_rows))

    out = rl.range(30).map_batches(tag, batch_size=10)
    assert calls == [10], "the schema came from the first 10 rows"
    got = out.sort("id").to_pydict()
    assert got["id"] == list(range(30)) and sorted(calls) == [10, 10, 10]
    # The first ten rows kept the sample's result (call 1); the others ran in the job.
    assert set(got["n"][:10]) == {1}
