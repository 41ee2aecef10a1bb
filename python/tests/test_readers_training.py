"""The readers, training handoff and Polars-style conveniences a Daft, Ray Data or Polars
user reaches for, on real data: photos checked against Pillow, WebDataset shards written by
the webdataset package, Lance datasets written by pylance, DLPack batches read back by
numpy."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_photos, sample_texts


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Eight 8-bit RGB photos (JPEG and PNG) in a folder of their own."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sample_photos():
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as im:
            if im.mode != "RGB" or path.read_bytes()[:4] == b"\x89PNG" and path.read_bytes()[24] != 8:
                continue
        shutil.copy(path, folder / path.name)
        if len(list(folder.iterdir())) == 8:
            break
    return folder


def _pillow(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _assert_like_pillow(pixels, path) -> None:
    """PNG pixels exactly as Pillow's; JPEG within the rounding by which IDCT
    implementations differ (Pillow uses libjpeg-turbo)."""
    expected = _pillow(path)
    assert pixels.shape == expected.shape
    if str(path).lower().endswith(".png"):
        np.testing.assert_array_equal(pixels, expected)
        return
    diff = np.abs(pixels.astype(int) - expected.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5, (path, diff.max(), diff.mean())


# Readers ---------------------------------------------------------------------------------

def test_read_images_decodes_as_pillow_does(photo_dir):
    rows = rl.read_images(str(photo_dir), mode="RGB").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in photo_dir.iterdir())
    for row in rows:
        assert isinstance(row["image"], Image.Image)
        _assert_like_pillow(np.asarray(row["image"]), row["path"])
    resized = rl.read_images(str(photo_dir), mode="RGB", size=(30, 40))
    assert {r["image"].size for r in resized.to_pylist()} == {(40, 30)}
    with pytest.raises(ValueError, match=r"size must be \(height, width\)"):
        rl.read_images(str(photo_dir), size=40)


def test_read_text_by_line_and_by_file_and_binary_files():
    path = sample_texts()[0]
    content = path.read_text()
    lines = rl.read_text(str(path)).to_pydict()["text"]
    assert lines == content.splitlines()
    assert rl.read_text(str(path), drop_empty=True).to_pydict()["text"] == [x for x in content.splitlines() if x]
    assert rl.read_text(str(path), by="file").to_pydict()["text"] == [content]
    assert rl.read_binary_files(str(path)).to_pydict()["bytes"] == [path.read_bytes()]


def test_read_text_handles_crlf_and_a_missing_final_newline(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert rl.read_text(str(tmp_path / "a.txt")).to_pydict()["text"] == ["one", "two", "", "three"]


def _write_shards_with_webdataset(photo_dir, target, maxcount):
    import webdataset as wds

    paths = sorted(photo_dir.iterdir())
    pattern = str(target / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for i, path in enumerate(paths):
            ext = "png" if path.suffix.lower() == ".png" else "jpg"
            sink.write({"__key__": f"sample{i:04d}", ext: path.read_bytes(), "cls": i % 3,
                        "json": {"name": path.name}})
    return paths


def test_webdataset_shards_written_by_the_webdataset_package(photo_dir, tmp_path):
    # One extension per layout: the jpgs and pngs in shards of their own layouts would be
    # refused (see below), so use only jpgs here.
    jpgs = tmp_path / "jpgs"
    jpgs.mkdir()
    for p in photo_dir.iterdir():
        if p.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copy(p, jpgs / p.name)
    shards = tmp_path / "shards"
    shards.mkdir()
    paths = _write_shards_with_webdataset(jpgs, shards, maxcount=2)
    assert len(list(shards.glob("*.tar"))) == (len(paths) + 1) // 2
    df = rl.read_webdataset(str(shards / "*.tar"))
    assert df.columns == ["__key__", "__url__", "cls", "jpg", "json"]
    rows = sorted(df.to_pylist(), key=lambda r: r["__key__"])
    assert [r["__key__"] for r in rows] == [f"sample{i:04d}" for i in range(len(paths))]
    for i, (row, path) in enumerate(zip(rows, paths)):
        assert row["jpg"] == path.read_bytes() and row["cls"] == i % 3
        assert json.loads(row["json"]) == {"name": path.name}
    decoded = df.with_column("image", col("jpg").image.decode("RGB")).sort("__key__").to_pylist()
    for row, path in zip(decoded, paths):
        _assert_like_pillow(np.asarray(row["image"]), path)


def test_webdataset_shards_of_another_layout_are_refused_by_name(photo_dir, tmp_path):
    import tarfile

    for name, members in [("a.tar", {"k1.jpg": b"x"}), ("b.tar", {"k2.jpg": b"y", "k2.txt": b"t"})]:
        with tarfile.open(tmp_path / name, "w") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(rl.UserFunctionError, match=r"b\.tar has members \['txt'\]"):
        rl.read_webdataset(str(tmp_path / "*.tar")).collect()


def test_write_webdataset_reads_back_with_the_webdataset_package(photo_dir, tmp_path):
    import webdataset as wds

    df = rl.read_images(str(photo_dir), mode="RGB").with_column("cls", col("path").str.len())
    with pytest.raises(ValueError, match="would not read back as one sample"):
        df.select(col("path").alias("__key__"), col("image").alias("png")).write_webdataset(
            tmp_path / "bad", key="__key__")
    stem = col("path").str.extract(r"([^/]+)\.[A-Za-z]+$")
    df = df.select(stem.alias("__key__"), col("image").alias("png"), col("cls"))
    shards = df.write_webdataset(tmp_path / "out", key="__key__", samples_per_shard=3)
    assert len(shards) == 3 and all(os.path.exists(s) for s in shards)
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("rgb8"))
    assert len(samples) == 8
    for sample in samples:
        original = next(p for p in photo_dir.iterdir() if p.stem == sample["__key__"])
        _assert_like_pillow(sample["png"], original)
        assert int(sample["cls"]) == len(str(original))


def test_lance_written_by_pylance_and_by_rillet(photo_dir, tmp_path):
    import lance  # pylance, from requirements-dev.txt: a missing package fails, never skips
    paths = sorted(photo_dir.iterdir())
    table = pa.table({"path": [str(p) for p in paths], "bytes": [p.read_bytes() for p in paths],
                      "label": list(range(len(paths)))})
    lance.write_dataset(table, str(tmp_path / "by_pylance.lance"))
    df = rl.read_lance(tmp_path / "by_pylance.lance", columns=["path", "label"], filter="label >= 3")
    assert df.sort("label").to_pydict() == {"path": [str(p) for p in paths[3:]], "label": list(range(3, len(paths)))}
    decoded = rl.read_lance(tmp_path / "by_pylance.lance").with_column("image", col("bytes").image.decode("RGB"))
    first = decoded.sort("label").take(1)[0]
    _assert_like_pillow(np.asarray(first["image"]), paths[0])

    images = rl.read_images(str(photo_dir), mode="RGB", size=(16, 16))
    figures = images.write_lance(tmp_path / "by_rillet.lance")
    assert figures["rows"] == len(paths)
    assert lance.dataset(str(tmp_path / "by_rillet.lance")).count_rows() == len(paths)
    back = rl.read_lance(tmp_path / "by_rillet.lance")
    assert str(back.schema.field("image").type) == "Image[RGB, u8]"
    assert {r["image"].size for r in back.to_pylist()} == {(16, 16)}


# Training handoff ----------------------------------------------------------------------

def test_numpy_batches_have_a_fixed_size_and_dlpack_carries_them(photo_dir):
    from rillet.training import dlpack_ready

    df = rl.read_images(str(photo_dir), mode="RGB", size=(24, 32)).sort("path")
    batches = list(df.iter_numpy_batches(3))
    assert [len(b["path"]) for b in batches] == [3, 3, 2]
    assert [len(b["path"]) for b in df.iter_numpy_batches(3, drop_last=True)] == [3, 3]
    expected = {p: np.asarray(Image.open(p).convert("RGB").resize((32, 24), Image.BILINEAR)) for p in
                (str(x) for x in photo_dir.iterdir())}
    for batch in batches:
        images = batch["image"]
        assert images.shape[1:] == (24, 32, 3) and images.dtype == np.uint8
        handed = np.from_dlpack(dlpack_ready(images))
        assert handed.shape == images.shape
        assert np.shares_memory(handed, images), "a writable contiguous batch crosses without a copy"
        for path, pixels in zip(batch["path"], handed):
            # Same size and close to Pillow's bilinear filter (filters differ slightly).
            assert np.abs(pixels.astype(int) - expected[path].astype(int)).mean() < 12
    # Whole photos, one per batch: the values DLPack hands on are Pillow's, row for row.
    for batch in rl.read_images(str(photo_dir), mode="RGB").iter_numpy_batches(1):
        handed = np.from_dlpack(dlpack_ready(batch["image"]))
        assert handed.shape[0] == 1
        _assert_like_pillow(handed[0], batch["path"][0])
    ids = next(rl.range(10).iter_numpy_batches(10))["id"]
    assert np.from_dlpack(dlpack_ready(ids)).tolist() == list(range(10))


def test_torch_batches_need_torch_and_say_so():
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            next(rl.range(4).iter_torch_batches(2))
        return
    batch = next(rl.range(4).iter_torch_batches(2))
    assert batch["id"].tolist() == [0, 1]


def test_shuffle_sample_and_split_are_seeded_by_the_rows_not_their_order():
    base = rl.range(2000)
    spread = rl.range(2000).repartition(4)
    assert base.random_shuffle(seed=11).to_pydict() == spread.random_shuffle(seed=11).to_pydict()
    order = base.random_shuffle(seed=11).to_pydict()["id"]
    assert sorted(order) == list(range(2000)) and order != list(range(2000))
    assert order != base.random_shuffle(seed=12).to_pydict()["id"]
    sampled = sorted(base.sample(0.25, seed=3).to_pydict()["id"])
    assert sampled == sorted(spread.sample(0.25, seed=3).to_pydict()["id"])
    assert 400 < len(sampled) < 600
    train, test = base.train_test_split(test_size=0.2, seed=9)
    a, b = set(train.to_pydict()["id"]), set(test.to_pydict()["id"])
    assert not a & b and a | b == set(range(2000)) and 300 < len(b) < 500
    with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
        base.sample(1.5)


# Polars-style conveniences -------------------------------------------------------------

def test_polars_conveniences():
    df = rl.from_pydict({"a": [3, None, 1, 3], "s": ["x_12", "y", None, "x_12"],
                         "t": [datetime.datetime(2024, 3, 4, 5, 6, 7)] * 4, "f": [9.0, float("nan"), 4.0, 9.0]})
    assert len(df) == 4 and df.shape == (4, 4)
    assert df.head(2).count() == 2 and len(df.take(3)) == 3
    assert df[["a"]].columns == ["a"] and df.filter(df["a"] > 1).count() == 2
    with pytest.raises(KeyError, match="no column 'zz'"):
        df["zz"]
    assert df.unique().count() == 3
    assert df.fill_null(0).select("a").to_pydict() == {"a": [3, 0, 1, 3]}
    assert df.with_row_index().select("index").to_pydict() == {"index": [0, 1, 2, 3]}
    described = df.describe().to_pydict()
    assert described["statistic"] == ["count", "null_count", "mean", "std", "min", "max"]
    assert described["a"][:3] == [3.0, 1.0, 7 / 3]
    out = df.select(
        col("s").str.extract(r"_(\d+)").alias("num"), col("s").str.matches("^x").alias("isx"),
        col("t").dt.year().alias("y"), col("t").dt.weekday().alias("wd"), col("t").dt.second().alias("sec"),
        rl.coalesce(col("a"), 0).alias("c"), col("a").between(2, 3).alias("btw"), col("a").clip(2, 2).alias("cl"),
        col("f").is_nan().alias("nan"), col("f").sqrt().alias("sq"), col("f").log().exp().round(6).alias("le"),
        col("f").floor().alias("fl"), rl.concat_str(col("s"), col("a").cast(pa.string()), separator="-").alias("cs"),
    ).to_pydict()
    assert out["num"] == ["12", None, None, "12"] and out["isx"] == [True, False, None, True]
    assert out["y"] == [2024] * 4 and out["wd"] == [1] * 4 and out["sec"] == [7] * 4
    assert out["c"] == [3, 0, 1, 3] and out["btw"] == [True, None, False, True] and out["cl"] == [2, None, 2, 2]
    assert out["nan"] == [False, True, False, False] and out["sq"][2] == 2.0 and out["le"][3] == 9.0
    assert out["fl"][0] == 9.0 and out["cs"] == ["x_12-3", None, None, "x_12-3"]


def test_every_expression_method_has_a_docstring():
    from rillet import expr

    missing = []
    for cls in (expr.Expr, expr.StringNamespace, expr.DateTimeNamespace, expr.ImageNamespace, expr.TextNamespace,
                expr.VectorNamespace, expr.AudioNamespace, expr.FileNamespace, expr.PdfNamespace, expr.UrlNamespace,
                expr.VideoNamespace):
        for name, member in vars(cls).items():
            if name.startswith("_") or not callable(member) and not isinstance(member, property):
                continue
            if not (getattr(member, "__doc__", None) or "").strip():
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, missing


def test_read_parquet_finds_hive_partitions_and_pushes_columns_and_filter(tmp_path):
    import pyarrow.parquet as pq

    for year in (2023, 2024):
        for month in ("01", "02"):
            folder = tmp_path / f"year={year}" / f"month={month}"
            folder.mkdir(parents=True)
            pq.write_table(pa.table({"v": [year * 100 + int(month)], "w": ["x"]}), folder / "part-0.parquet")
    df = rl.read_parquet(str(tmp_path))
    assert df.columns == ["v", "w", "year", "month"]
    out = rl.read_parquet(str(tmp_path), columns=["v", "month"], filter=col("year") == "2024")
    assert out.sort("v").to_pydict() == {"v": [202401, 202402], "month": ["01", "02"]}
    assert rl.read_parquet(str(tmp_path / "year=2023" / "month=01")).to_pydict() == {"v": [202301], "w": ["x"]}


def test_write_parquet_partition_by_round_trips_and_overwrites_every_partition(tmp_path):
    out = tmp_path / "out"
    df = rl.from_pydict({"country": ["fr", "de", "fr", None, "a/b"], "year": [2023, 2024, 2024, 2024, 2023],
                         "x": [1, 2, 3, 4, 5]})
    figures = df.write_parquet(out, partition_by=["country", "year"])
    folders = sorted(str(p.relative_to(out)) for p in out.glob("*/*") if p.is_dir())
    assert folders == ["country=__HIVE_DEFAULT_PARTITION__/year=2024", "country=a%2Fb/year=2023",
                       "country=de/year=2024", "country=fr/year=2023", "country=fr/year=2024"]
    assert len(figures["files_written"]) == 5 and all(os.path.exists(f) for f in figures["files_written"])
    assert not list(out.glob("_staging-*")), "the staging folder goes once published"
    back = rl.read_parquet(str(out)).sort("x").to_pydict()
    assert back["x"] == [1, 2, 3, 4, 5] and back["year"] == ["2023", "2024", "2024", "2024", "2023"]
    assert back["country"][:3] == ["fr", "de", "fr"]
    # Append adds files; overwrite replaces the files of every partition.
    df.filter(col("x") == 2).write_parquet(out, partition_by=["country", "year"])
    assert rl.read_parquet(str(out)).count() == 6
    rl.from_pydict({"country": ["it"], "year": [2025], "x": [9]}).write_parquet(
        out, mode="overwrite", partition_by=["country", "year"])
    assert rl.read_parquet(str(out)).to_pydict() == {"x": [9], "country": ["it"], "year": ["2025"]}
    with pytest.raises(rl.PlanError, match="partition_by: no column 'nope'"):
        df.write_parquet(out, partition_by="nope")


def test_partitioned_write_of_images_and_a_failed_job_publishes_nothing(photo_dir, tmp_path):
    out = tmp_path / "out"
    images = rl.read_images(str(photo_dir), mode="RGB", size=(8, 8)).with_column(
        "kind", col("path").str.extract(r"\.([a-z]+)$"))
    images.write_parquet(out, partition_by="kind")
    kinds = sorted(p.name for p in out.iterdir())
    assert kinds and all(k.startswith("kind=") for k in kinds)
    back = rl.read_parquet(str(out))
    assert str(back.schema.field("image").type) == "Image[RGB, u8]" and back.count() == 8

    @rl.udf(return_dtype="int64")
    def fails_late(x):
        if x == 4:
            raise ValueError("late failure")
        return x

    bad = rl.from_pydict({"k": ["a", "b", "a", "b"], "x": [1, 2, 3, 4]}).with_column("y", fails_late(col("x")))
    with pytest.raises(rl.UserFunctionError):
        bad.write_parquet(tmp_path / "bad", partition_by="k")
    assert not [p for p in (tmp_path / "bad").rglob("*.parquet")], "a failed job publishes no partition"
