"""Image operators against Pillow / numpy on real photos (the scikit-image and scikit-learn
wheels' sample data), the bad-input corpus, the on_error policies, SQL, and type round trips."""

from __future__ import annotations

import io
import math
import os
import struct
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance, ImageOps

import rillet as rl
from rillet import col
from rillet.dev.datasets import sample_photos


@pytest.fixture(scope="module")
def photos():
    paths = [p for p in sample_photos() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert len(paths) >= 10, "the sample wheels should ship real photos"
    return paths


@pytest.fixture(scope="module")
def rgb_photos(photos):
    """(path, PIL RGB image) for the 8-bit RGB photos."""
    out = []
    for p in photos:
        raw = p.read_bytes()
        if raw.startswith(b"\x89PNG") and raw[24] != 8:
            continue  # 16-bit PNG: Pillow reduces it to 8 bits, Rillet keeps 16
        with Image.open(p) as im:
            if im.mode == "RGB":
                out.append((p, im.copy()))
    assert len(out) >= 5
    return out


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _array(value) -> np.ndarray:
    return np.asarray(value)


def test_decode_matches_pillow_on_real_photos(photos):
    df = rl.from_pydict({"path": [str(p) for p in photos]}).with_column("img", col("path").image.decode())
    assert str(df.schema.field("img").type) == "Image[mixed]"
    decoded = df.to_pydict()
    for path, ours in zip(decoded["path"], decoded["img"]):
        with Image.open(path) as reference:
            reference = ImageOps.exif_transpose(reference)
            if reference.mode not in ("L", "LA", "RGB", "RGBA"):
                continue
            assert ours is not None, path
            if isinstance(ours, np.ndarray):  # 16-bit colour: we keep the depth, Pillow drops it
                assert ours.dtype == np.uint16 and ours.shape[:2] == (reference.height, reference.width)
                assert np.abs(ours / 257.0 - _array(reference)).max() <= 1, path
                continue
            assert ours.size == reference.size and ours.mode == reference.mode, path
            diff = np.abs(_array(ours).astype(int) - _array(reference).astype(int))
            if path.endswith(".png"):
                assert diff.max() == 0, path
            else:  # JPEG decoders may round IDCT differently
                assert diff.mean() < 1.5, (path, diff.mean())


def test_decode_with_mode_converts(rgb_photos):
    path, reference = rgb_photos[0]
    out = rl.from_pydict({"p": [str(path)]}).select(col("p").image.decode("L").alias("g"))
    assert str(out.schema.field("g").type) == "Image[L, u8]"
    grey = out.to_pylist()[0]["g"]
    expected = reference.convert("L")
    assert np.abs(_array(grey).astype(int) - _array(expected).astype(int)).max() <= 2


def test_resize_matches_pillow(rgb_photos):
    paths = [str(p) for p, _ in rgb_photos]
    df = rl.from_pydict({"p": paths}).select(col("p").image.decode().image.resize(64, 48, "bilinear").alias("r"))
    for (_, reference), ours in zip(rgb_photos, df.to_pydict()["r"]):
        expected = reference.resize((64, 48), Image.BILINEAR)
        assert ours.size == (64, 48)
        diff = np.abs(_array(ours).astype(int) - _array(expected).astype(int))
        assert diff.mean() < 2.0, diff.mean()


def test_resize_keep_aspect_and_letterbox(rgb_photos):
    path, reference = next((p, im) for p, im in rgb_photos if im.width != im.height)
    w, h = reference.size
    df = rl.from_pydict({"p": [str(path)]}).with_column("img", col("p").image.decode())
    fitted = df.select(col("img").image.resize(100, 100, keep_aspect=True).alias("x")).to_pylist()[0]["x"]
    scale = min(100 / w, 100 / h)
    assert fitted.size == (round(w * scale), round(h * scale))
    boxed = df.select(col("img").image.letterbox(100, 100, fill=114).alias("x")).to_pylist()[0]["x"]
    assert boxed.size == (100, 100)
    pixels = _array(boxed)
    if fitted.size[1] < 100:  # padding above and below
        assert (pixels[0] == 114).all()
    else:
        assert (pixels[:, 0] == 114).all()


def test_geometry_is_exact(rgb_photos):
    path, reference = rgb_photos[1]
    ref = _array(reference)
    h, w = ref.shape[:2]
    img = col("img")
    df = rl.from_pydict({"p": [str(path)]}).with_column("img", col("p").image.decode()).select(
        img.image.crop(5, 7, 20, 10).alias("crop"),
        img.image.center_crop(w // 2, h // 2).alias("center"),
        img.image.flip().alias("fliph"),
        img.image.flip(horizontal=False, vertical=True).alias("flipv"),
        img.image.rotate(90).alias("r90"),
        img.image.rotate(180).alias("r180"),
    )
    row = df.to_pylist()[0]
    assert np.array_equal(_array(row["crop"]), ref[7:17, 5:25])
    x0, y0 = (w - w // 2) // 2, (h - h // 2) // 2
    assert np.array_equal(_array(row["center"]), ref[y0:y0 + h // 2, x0:x0 + w // 2])
    assert np.array_equal(_array(row["fliph"]), ref[:, ::-1])
    assert np.array_equal(_array(row["flipv"]), ref[::-1])
    assert np.array_equal(_array(row["r90"]), np.rot90(ref, k=-1))
    assert np.array_equal(_array(row["r180"]), np.rot90(ref, k=2))


def test_convert_mode_and_adjust_match_pillow(rgb_photos):
    _, reference = rgb_photos[2]
    img = col("img")
    # Start from the same pixels on both sides (JPEG decoders differ by a unit or two).
    row = rl.from_pylist([{"img": reference}]).select(
        img.image.convert_mode("L").alias("l"),
        img.image.convert_mode("RGBA").alias("rgba"),
        img.image.adjust(brightness=0.5).alias("dark"),
        img.image.adjust(contrast=1.5).alias("contrast"),
        img.image.adjust(saturation=0.0).alias("grey"),
    ).to_pylist()[0]
    assert np.abs(_array(row["l"]).astype(int) - _array(reference.convert("L")).astype(int)).max() <= 1
    assert row["rgba"].mode == "RGBA" and (_array(row["rgba"])[..., 3] == 255).all()
    for ours, expected in [(row["dark"], ImageEnhance.Brightness(reference).enhance(0.5)),
                           (row["contrast"], ImageEnhance.Contrast(reference).enhance(1.5)),
                           (row["grey"], ImageEnhance.Color(reference).enhance(0.0))]:
        assert np.abs(_array(ours).astype(int) - _array(expected).astype(int)).max() <= 2


def test_to_tensor_normalises_per_channel(rgb_photos):
    path, reference = rgb_photos[0]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    small = col("p").image.decode().image.resize(32, 24)
    row = rl.from_pydict({"p": [str(path)]}).select(
        small.alias("img"),
        small.image.to_tensor(mean=mean, std=std).alias("chw"),
        small.image.to_tensor(dtype="u8", layout="HWC").alias("hwc"),
    ).to_pylist()[0]
    pixels = _array(row["img"]).astype(np.float64)
    expected = ((pixels / 255.0 - mean) / std).transpose(2, 0, 1)
    assert row["chw"].shape == (3, 24, 32)
    np.testing.assert_allclose(row["chw"], expected, atol=1e-5)
    assert np.array_equal(row["hwc"], _array(row["img"]))


def test_metadata_reads_headers_without_decoding(photos):
    df = rl.from_pydict({"p": [str(p) for p in photos]}).select(
        col("p"), col("p").image.metadata().alias("m"), col("p").image.aspect_ratio().alias("ar"))
    for row in df.to_pylist():
        with Image.open(row["p"]) as im:
            w, h = ImageOps.exif_transpose(im).size
            fmt = im.format.lower()
        m = row["m"]
        assert (m["width"], m["height"]) == (w, h), row["p"]
        assert m["format"] == fmt
        assert row["ar"] == pytest.approx(w / h)


def test_encode_round_trips(rgb_photos):
    path, reference = rgb_photos[0]
    img = col("p").image.decode()
    row = rl.from_pydict({"p": [str(path)]}).select(
        img.image.encode("png").alias("png"),
        img.image.encode("jpeg", quality=85).alias("jpeg"),
        col("p").image.convert_format("webp").alias("webp"),
    ).to_pylist()[0]
    assert np.array_equal(_array(Image.open(io.BytesIO(row["png"]))), _array(reference))
    jpeg = Image.open(io.BytesIO(row["jpeg"]))
    assert jpeg.format == "JPEG" and jpeg.size == reference.size
    assert np.abs(_array(jpeg).astype(int) - _array(reference).astype(int)).mean() < 6
    assert Image.open(io.BytesIO(row["webp"])).format == "WEBP"


def test_perceptual_hashes_find_near_duplicates(rgb_photos):
    paths = [str(p) for p, _ in rgb_photos]
    # Near-duplicates: the same photos re-encoded as JPEG at a smaller size.
    variants = [_encode(im.resize((im.width // 2, im.height // 2)), "JPEG", quality=70) for _, im in rgb_photos]
    df = rl.from_pydict({"orig": paths, "variant": variants}).select(
        col("orig").image.phash().alias("a"), col("variant").image.phash().alias("b"),
        col("orig").image.dhash().alias("da"), col("variant").image.dhash().alias("db"))
    df = df.with_columns(same=col("a").image.hamming(col("b")), dsame=col("da").image.hamming(col("db")))
    out = df.to_pydict()
    assert max(out["same"]) <= 8, out["same"]
    assert max(out["dsame"]) <= 10, out["dsame"]
    hashes = out["a"]
    different = [bin(hashes[i] ^ hashes[j]).count("1") for i in range(len(hashes)) for j in range(i + 1, len(hashes))]
    assert np.median(different) >= 20, different


def test_sharpness_drops_when_blurred(rgb_photos):
    path, _ = rgb_photos[0]
    img = col("p").image.decode()
    row = rl.from_pydict({"p": [str(path)]}).select(
        img.image.sharpness().alias("sharp"), img.image.blur(3.0).image.sharpness().alias("blurred"),
        img.image.quality_score().alias("q")).to_pylist()[0]
    assert row["blurred"] < row["sharp"] / 4
    assert 0.0 <= row["q"] <= 1.0


def test_crop_black_border():
    inner = np.full((20, 30, 3), 200, np.uint8)
    framed = np.zeros((40, 50, 3), np.uint8)
    framed[10:30, 10:40] = inner
    row = rl.from_pydict({"img": [Image.fromarray(framed)]}).select(
        col("img").image.crop_black_border().alias("x")).to_pylist()[0]
    assert np.array_equal(_array(row["x"]), inner)


# ---- the bad-input corpus -----------------------------------------------------------------

def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def corpus(rgb_photos, tmp_path_factory):
    """Bad and awkward image files, generated here. name -> (bytes, expected outcome)."""
    _, photo = rgb_photos[0]
    photo = photo.resize((120, 80))
    jpeg = _encode(photo, "JPEG", quality=90)
    png = _encode(photo, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    gif_frames = [Image.new("P", (16, 12), i) for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, "GIF", save_all=True, append_images=gif_frames[1:])
    deep = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero.jpg": b"",
        "truncated.png": png[: len(png) // 3],
        "zero.png": b"",
        "png_named.jpg": png,
        "huge_header.png": _png_claiming(100_000, 100_000),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "deep16.png": _encode(deep, "PNG"),
        "animated.gif": gif.getvalue(),
        "exif_rotated.jpg": _encode(photo, "JPEG", exif=exif.tobytes()),
        "text.jpg": b"hello, this is not an image at all",
    }


def test_bad_input_corpus_gives_documented_results(corpus):
    names = list(corpus)
    df = rl.from_pydict({"name": names, "bytes": [corpus[n] for n in names]})
    out = df.select(
        col("name"),
        col("bytes").image.decode(on_error="column").alias("d"),
        col("bytes").image.is_valid().alias("ok"),
    ).to_pylist()
    result = {r["name"]: r for r in out}
    for bad in ["truncated.jpg", "zero.jpg", "truncated.png", "zero.png", "huge_header.png", "text.jpg"]:
        assert result[bad]["d"]["value"] is None, bad
        assert result[bad]["d"]["error"], bad
        assert result[bad]["ok"] is False, bad
    assert "empty input" in result["zero.png"]["d"]["error"]
    assert "over the cap" in result["huge_header.png"]["d"]["error"]
    assert "not a recognised image format" in result["text.jpg"]["d"]["error"]
    # Content decides, not the extension.
    assert result["png_named.jpg"]["d"]["value"].size == (120, 80)
    # CMYK JPEG: converted to RGB.
    cmyk = result["cmyk.jpg"]["d"]
    assert cmyk["error"] is None and cmyk["value"].mode == "RGB" and cmyk["value"].size == (120, 80)
    # 16-bit PNG keeps its depth.
    deep = result["deep16.png"]["d"]["value"]
    assert deep.mode == "I;16" and deep.size == (64, 48)
    # Animated GIF: the first frame.
    assert result["animated.gif"]["d"]["value"].size == (16, 12)
    # EXIF orientation applied: 120x80 displayed rotated is 80x120.
    assert result["exif_rotated.jpg"]["d"]["value"].size == (80, 120)
    for good in ["png_named.jpg", "cmyk.jpg", "deep16.png", "animated.gif", "exif_rotated.jpg"]:
        assert result[good]["ok"] is True, good


def test_on_error_raise_names_the_row(corpus):
    df = rl.from_pydict({"bytes": [corpus["png_named.jpg"], corpus["truncated.jpg"]]})
    with pytest.raises(rl.DataError, match="image_decode failed on row 1"):
        df.select(col("bytes").image.decode(on_error="raise")).collect()
    # null is the default
    assert df.select(col("bytes").image.decode().alias("d")).to_pydict()["d"][1] is None


def test_missing_file_is_bad_data_with_its_path(tmp_path):
    missing = str(tmp_path / "nope.png")
    out = rl.from_pydict({"p": [missing]}).select(col("p").image.decode(on_error="column").alias("d")).to_pylist()
    assert out[0]["d"]["value"] is None and missing in out[0]["d"]["error"]


def test_wrong_input_type_is_a_plan_error():
    df = rl.from_pydict({"n": [1, 2]})
    with pytest.raises(rl.PlanError, match="image_resize: input must be an Image"):
        df.select(col("n").image.resize(10, 10))
    with pytest.raises(rl.PlanError, match="method"):
        rl.from_pydict({"b": [b"x"]}).select(col("b").image.resize(10, 10, "cubic-ish"))
    with pytest.raises(rl.PlanError, match="mode"):
        rl.from_pydict({"b": [b"x"]}).select(col("b").image.decode("CMYKX"))


def test_sql_functions_share_the_implementation(rgb_photos):
    paths = [str(p) for p, _ in rgb_photos]
    t = rl.from_pydict({"path": paths})
    out = rl.sql("SELECT path, image_width(image_resize(image_decode(path), 40, 30)) AS w, "
                 "image_height(path) AS h FROM t", t=t).to_pydict()
    assert out["w"] == [40] * len(paths)
    assert out["h"] == [im.height for _, im in rgb_photos]


# ---- types ------------------------------------------------------------------------------

def test_image_type_round_trips_through_parquet_and_python(rgb_photos, tmp_path):
    images = [im.resize((32, 24)) for _, im in rgb_photos[:3]] + [None]
    df = rl.from_pylist([{"i": i, "img": im} for i, im in enumerate(images)])
    assert str(df.schema.field("img").type) == "Image[RGB, u8]"
    df.write_parquet(tmp_path / "out")
    back = rl.read_parquet(tmp_path / "out").sort("i")
    assert str(back.schema.field("img").type) == "Image[RGB, u8]"
    rows = back.to_pylist()
    for original, row in zip(images, rows):
        if original is None:
            assert row["img"] is None
        else:
            assert np.array_equal(_array(row["img"]), _array(original))
    # pyarrow alone (extension types registered by importing rillet) reads the same.
    table = pq.read_table(tmp_path / "out")
    assert isinstance(table.schema.field("img").type, rl.types.ImageType)
    # Arrow IPC keeps the type too.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert isinstance(pa.ipc.open_stream(sink.getvalue()).read_all().schema.field("img").type, rl.types.ImageType)


def test_tensors_round_trip_through_parquet_as_whole_buffers(rgb_photos, tmp_path):
    """Tensor elements are stored as one little-endian byte buffer per row (a fixed shape
    as fixed_size_binary), so Parquet writes one value per tensor, not one per element; the
    type and values survive Rillet's reader and pyarrow's."""
    small = col("img").image.resize(16, 12)
    photos = rl.from_pylist([{"i": i, "img": im} for i, (_, im) in enumerate(rgb_photos[:3])])
    photos.select("i", small.image.to_tensor(dtype="u8", layout="HWC").alias("hwc"),
                  small.image.to_tensor().alias("chw")).write_parquet(tmp_path / "var")
    fixed = rl.Tensor("f32", (2, 3))
    values = [np.arange(6, dtype=np.float32).reshape(2, 3) * k for k in range(3)]
    storage = pa.array([v.astype("<f4").tobytes() for v in values] + [None], type=pa.binary(24))
    rl.from_arrow(pa.table({"t": pa.ExtensionArray.from_storage(fixed, storage)})).write_parquet(tmp_path / "fixed")

    for table in (rl.read_parquet(tmp_path / "var").sort("i").collect(), pq.read_table(tmp_path / "var").sort_by("i")):
        assert str(table.schema.field("hwc").type) == "Tensor[u8]" and str(table.schema.field("chw").type) == "Tensor[f32]"
        for (_, im), hwc, chw in zip(rgb_photos[:3], table["hwc"].to_pylist(), table["chw"].to_pylist()):
            expected = np.asarray(im.resize((16, 12), Image.BILINEAR))
            assert hwc.shape == (12, 16, 3) and hwc.dtype == np.uint8
            assert chw.shape == (3, 12, 16) and chw.dtype == np.float32
            assert np.allclose(chw, hwc.transpose(2, 0, 1) / 255.0, atol=1e-6)
            assert np.abs(hwc.astype(int) - expected).max() <= 2
    leaf = pq.ParquetFile(next((tmp_path / "var").glob("*.parquet"))).schema_arrow.field("hwc").type.storage_type
    assert leaf.field("data").type == pa.large_binary()
    for table in (rl.read_parquet(tmp_path / "fixed").collect(), pq.read_table(tmp_path / "fixed")):
        assert str(table.schema.field("t").type) == "Tensor[f32; 2×3]"
        rows = table["t"].to_pylist()
        assert rows[3] is None and all(np.array_equal(r, v) for r, v in zip(rows, values))


def test_tensor_embedding_audio_round_trip():
    emb = [np.arange(4, dtype=np.float32), np.ones(4, np.float32)]
    tensors = [np.arange(6, dtype=np.float64).reshape(2, 3), np.zeros((1, 2, 2))]
    audio = [(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2), 16000), (np.zeros(3, np.float32), 8000)]
    df = rl.from_pydict({"emb": emb, "t": tensors, "a": audio})
    schema = {f.name: str(f.type) for f in df.schema}
    assert schema == {"emb": "Embedding[f32; 4]", "t": "Tensor[f64]", "a": "Audio"}
    row0, row1 = df.to_pylist()
    assert np.array_equal(row0["emb"], emb[0]) and np.array_equal(row1["emb"], emb[1])
    assert np.array_equal(row0["t"], tensors[0]) and row1["t"].shape == (1, 2, 2)
    samples, rate = row0["a"]
    assert rate == 16000 and samples.shape == (4, 2) and np.array_equal(samples, audio[0][0])
    assert row1["a"][0].shape == (3, 1)


def test_show_summarises_media(rgb_photos, capsys):
    _, im = rgb_photos[0]
    rl.from_pylist([{"img": im.resize((64, 48))}]).show()
    printed = capsys.readouterr().out
    assert "<Image 64×48 RGB>" in printed and "Image[RGB, u8]" in printed


def test_read_files_then_decode_reads_lazily_from_file_refs(photos, tmp_path):
    for p in photos[:4]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    df = (rl.read_files(tmp_path)
          .with_column("img", col("file").image.decode())
          .with_column("w", col("img").image.width()))
    rows = {os.path.basename(r["path"]): r for r in df.select("path", "w").to_pylist()}
    assert rows["broken.jpg"]["w"] is None
    for p in photos[:4]:
        with Image.open(p) as im:
            assert rows[p.name]["w"] == ImageOps.exif_transpose(im).width


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory, rgb_photos):
    """Twelve 1500x1000 JPEGs (4.5 MB each once decoded) made from a real photo."""
    out = tmp_path_factory.mktemp("large")
    base = rgb_photos[0][1]
    for i in range(12):
        frame = ImageOps.mirror(base) if i % 2 else base
        frame.resize((1500, 1000), Image.BICUBIC).rotate(i, fillcolor=(i, i, i)).save(out / f"p{i:02d}.jpg", quality=90)
    return out


def _pipeline(folder):
    return rl.read_files(f"{folder}/*.jpg").select(
        "path", col("file").image.decode("RGB").image.resize(32, 24).image.width().alias("w"))


def test_chained_operators_run_as_one_vertex_in_order_and_pass_on_only_their_result(large_photos):
    df = _pipeline(large_photos)
    plan = df.explain()
    # The decode is fused into the resize that consumes it: each photo is decoded, resized
    # and dropped within its row, at 1/2, 1/4 or 1/8 of its size where that still covers
    # the result (the plan shows the bound).
    assert "udf(image_decode[dct≤1/8]+image_resize) → udf(image_width)" in plan, plan
    out = df.to_pydict()
    # One input partition: rows come back in the listing's order.
    assert out["path"] == sorted(str(p) for p in large_photos.glob("*.jpg"))
    assert out["w"] == [32] * 12
    chain = next(op for op in df.stats()["operators"] if op["name"].startswith("udf(image_decode"))
    # 54 MB were decoded; the chain hands on only widths (and the listing's columns):
    # the decoded and resized images were freed inside the call, not queued downstream.
    assert chain["bytes_out"] < 2 << 20, chain


def test_a_fused_decode_gives_what_a_separate_decode_gives(large_photos, tmp_path):
    (tmp_path / "a.jpg").write_bytes((large_photos / "p00.jpg").read_bytes())
    (tmp_path / "b.jpg").write_bytes((large_photos / "p01.jpg").read_bytes()[:5000])
    Image.new("L", (300, 200), 90).save(tmp_path / "c.jpg")
    files = rl.read_files(f"{tmp_path}/*.jpg")
    fused = files.select("path", col("file").image.decode("RGB").image.resize(64, 48).alias("small"))
    # A decoded column used by name is an input of its own: nothing to fuse.
    separate = (files.with_column("img", col("file").image.decode("RGB"))
                .select("path", col("img").image.resize(64, 48).alias("small")))
    assert "image_decode[dct≤1/8]+image_resize" in fused.explain()
    assert "+image_resize" not in separate.explain()
    assert fused.schema == separate.schema
    one, two = fused.to_arrow(), separate.to_arrow()
    assert one.column("path").equals(two.column("path"))
    # The fused decode may decode a large JPEG at a DCT scale (see the reduced-decode
    # test): the same images, within 35 dB PSNR.
    for x, y in zip(one.column("small").to_pylist(), two.column("small").to_pylist()):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.size == y.size and x.mode == y.mode
            assert _psnr(np.asarray(x), np.asarray(y)) >= 35
    assert [r["small"] is None for r in one.to_pylist()] == [False, True, False]
    assert one.column("small")[2].as_py().mode == "RGB"  # the grey JPEG was converted


def test_decoded_images_count_against_the_memory_budget(large_photos):
    # Calls get half the budget: 4 MiB, less than one decoded photo. Each call then
    # reserves the whole of it, so calls run one at a time, and the rest wait, visibly.
    rl.set_config(memory_budget=8 << 20, progress=False)
    # Decoded whole (a resize this small would decode them at 1/8 scale).
    df = rl.read_files(f"{large_photos}/*.jpg").select(
        "path", col("file").image.decode("RGB").image.rotate(90).image.width().alias("w"))
    assert df.to_pydict()["w"] == [1000] * 12
    chain = next(op for op in df.stats()["operators"] if op["name"].startswith("udf(image_decode"))
    assert chain["wait_memory_ms"] > 0, chain
    # With the default budget the same job never waits on memory.
    rl.set_config(progress=False)
    df = _pipeline(large_photos)
    df.collect()
    chain = next(op for op in df.stats()["operators"] if op["name"].startswith("udf(image_decode"))
    assert chain["wait_memory_ms"] == 0, chain


def test_large_batches_spill_to_disk_instead_of_waiting_and_the_files_go_with_the_job(
        large_photos, tmp_path, monkeypatch):
    monkeypatch.setenv("RILLET_SPILL_DIR", str(tmp_path))

    def stalled_consumer(stall):
        """A consumer whose first call with rows stalls until `stall()` returns: the
        decoder runs ahead of it and fills every channel. (Its schema is given, so no call
        runs while planning.)"""
        first = [True]

        def consume(t):
            if first[0] and t.num_rows > 0:
                first[0] = False
                stall()
            return t.select(["path"])
        return consume

    def spill_files_appear():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(tmp_path.glob("*/*.arrow")):
            time.sleep(0.02)

    def job(consumer):
        # Different batch sizes keep the stages apart, so decoded images cross channels.
        # Under a 64 MiB budget a channel holds 8 MiB, less than one decoder call's batch
        # of about three photos (calls may hold 32 MiB, so decoding never waits on the
        # stalled consumer's call). The consumer takes one photo per call: while its first
        # call stalls, its stage holds at most twice its pool's size of calls (4 photos), so
        # the other 8 (36 MB) must queue in channels. With 3 photos per call the stage could
        # take all 12 photos and no channel would fill (seen once in CI).
        return (rl.read_files(f"{large_photos}/*.jpg")
                .with_column("img", col("file").image.decode("RGB"))
                .map_batches(consumer, batch_size=1, schema=pa.schema([("path", pa.string())])))

    rl.set_config(memory_budget=64 << 20, spill_budget=1 << 30, progress=False)
    df = job(stalled_consumer(spill_files_appear))
    out = df.to_pydict()
    assert out["path"] == sorted(str(p) for p in large_photos.glob("*.jpg"))
    # Whichever producer met a full channel first (the decoder, or the projection between
    # it and the consumer) spilled instead of waiting.
    ops = df.stats()["operators"]
    assert sum(op["spilled_bytes"] for op in ops) > 0, ops
    assert not list(tmp_path.iterdir()), "the job's spill directory outlived it"
    # Without a spill budget the same job waits instead.
    rl.set_config(memory_budget=64 << 20, progress=False)
    df = job(stalled_consumer(lambda: time.sleep(2)))
    df.collect()
    ops = df.stats()["operators"]
    # As above, whichever producer met the full channel first (which one depends on how
    # the decoder's calls were sized) waited for the consumer.
    producers = [op for op in ops if op["name"].startswith(("udf(image_decode", "exchange", "projection"))]
    assert producers and all(op["spilled_bytes"] == 0 for op in ops), ops
    assert any(op["wait_output_ms"] > 0 for op in producers), ops


# ---- draw_boxes ---------------------------------------------------------------------------

def outline_mask(height, width, boxes, thickness):
    """Where image_draw_boxes must paint: the documented pixel rule, written out in numpy."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        left, top = round(x1), round(y1)
        right, bottom = max(round(x2) - 1, left), max(round(y2) - 1, top)
        for ring in range(thickness):
            l, t, r, b = left + ring, top + ring, right - ring, bottom - ring
            if l > r or t > b:
                break
            for x in range(l, r + 1):
                for y in (t, b):
                    if 0 <= x < width and 0 <= y < height:
                        mask[y, x] = True
            for y in range(t, b + 1):
                for x in (l, r):
                    if 0 <= x < width and 0 <= y < height:
                        mask[y, x] = True
    return mask


def test_draw_boxes_paints_exactly_the_outline_pixels(rgb_photos):
    _, photo = rgb_photos[0]
    photo = photo.resize((64, 48))
    boxes = [[3.0, 4.0, 30.0, 20.0], [40.2, 10.7, 70.0, 60.0], [-5.0, 30.0, 10.0, 44.0]]
    out = rl.from_pydict({"img": [photo], "boxes": [boxes]}).select(
        col("img").image.draw_boxes("boxes", color="#00ff80", thickness=2).alias("d")).to_pylist()
    got = np.asarray(out[0]["d"])
    before = np.asarray(photo)
    mask = outline_mask(48, 64, boxes, 2)
    assert mask.sum() > 100
    assert (got[mask] == [0, 255, 128]).all()
    assert (got[~mask] == before[~mask]).all(), "pixels off the outlines must be untouched"


def test_draw_boxes_takes_detections_and_encoded_input_and_sql(rgb_photos, tmp_path):
    path, photo = rgb_photos[1]
    detections = pa.array([[{"label": "face", "score": 0.9, "box": [10.0, 12.0, 50.0, 40.0]}]],
                          pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32()),
                                              ("box", pa.list_(pa.float32(), 4))])))
    table = pa.table({"path": [str(path)], "found": detections})
    t = rl.from_arrow(table)
    via_sql = rl.sql("SELECT image_draw_boxes(path, found, 'blue', 1) AS d FROM t", t=t).to_pylist()
    via_df = t.select(col("path").image.draw_boxes(col("found"), color="blue", thickness=1).alias("d")).to_pylist()
    got = np.asarray(via_sql[0]["d"])
    assert (got == np.asarray(via_df[0]["d"])).all()
    mask = outline_mask(photo.height, photo.width, [[10.0, 12.0, 50.0, 40.0]], 1)
    assert (got[mask] == [0, 0, 255]).all()
    assert (got[~mask] == np.asarray(photo)[~mask]).all()


def test_draw_boxes_in_grey_and_sixteen_bit_images():
    grey = Image.fromarray(np.full((10, 10), 7, dtype=np.uint8))
    out = rl.from_pydict({"img": [grey], "b": [[[0, 0, 10, 10]]]}).select(
        col("img").image.draw_boxes("b", color="white", thickness=1).alias("d")).to_pylist()
    got = np.asarray(out[0]["d"])
    assert got[0, 0] == 255 and got[9, 9] == 255 and got[5, 5] == 7
    deep = rl.from_pydict({"img": [grey], "b": [[[0, 0, 10, 10]]]}).select(
        col("img").image.convert_mode("L16").image.draw_boxes("b", color="white", thickness=1).alias("d"))
    assert deep.to_arrow().schema.field("d").type.__str__().startswith("Image[L16")


def test_draw_boxes_bad_boxes_are_bad_rows_with_a_reason():
    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    rows = [[[1.0, 1.0, 4.0, 4.0]], [[5.0, 5.0, 1.0, 1.0]], [[1.0, 2.0, 3.0]], [[0.0, float("nan"), 2.0, 2.0]],
            [], None]
    out = rl.from_pydict({"img": [img] * len(rows), "b": rows}).select(
        col("img").image.draw_boxes("b", on_error="column").alias("d")).to_pylist()
    assert out[0]["d"]["error"] is None
    assert "corners reversed" in out[1]["d"]["error"]
    assert "has 3 numbers" in out[2]["d"]["error"]
    assert "finite" in out[3]["d"]["error"]
    assert (np.asarray(out[4]["d"]["value"]) == 0).all(), "no boxes: the image unchanged"
    assert out[5]["d"]["value"] is None and out[5]["d"]["error"] is None
    with pytest.raises(rl.DataError, match="row 1.*corners reversed"):
        rl.from_pydict({"img": [img] * 2, "b": rows[:2]}).select(
            col("img").image.draw_boxes("b", on_error="raise")).collect()


def test_draw_boxes_refuses_what_is_not_boxes_when_planning():
    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    df = rl.from_pydict({"img": [img], "s": ["x"]})
    with pytest.raises(rl.PlanError, match="boxes must be"):
        df.select(col("img").image.draw_boxes("s"))
    with pytest.raises(rl.PlanError, match="unknown color"):
        rl.from_pydict({"img": [img], "b": [[[0, 0, 1, 1]]]}).select(
            col("img").image.draw_boxes("b", color="mauve"))


def test_on_error_column_keeps_a_decoded_images_mode():
    # The planner knows the input's mode (RGB) and declares it inside {value, error}; the
    # result must carry it too (it once failed with a type mismatch for every operator).
    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    out = rl.from_pydict({"img": [img]}).select(
        col("img").image.crop(0, 0, 2, 2, on_error="column").alias("c"),
        col("img").image.crop(0, 0, 20, 2, on_error="column").alias("bad")).to_pylist()
    assert out[0]["c"]["value"].size == (2, 2) and out[0]["c"]["error"] is None
    assert out[0]["bad"]["value"] is None and "does not fit" in out[0]["bad"]["error"]


def test_draw_boxes_over_many_rows_and_every_box_layout():
    # More rows than one call takes (16), so calls see slices of the boxes column; boxes as
    # LargeList of lists, and as structs with a null entry.
    rows = 40
    images = [Image.fromarray(np.full((12, 12, 3), i, dtype=np.uint8)) for i in range(rows)]
    boxes = [[[float(i % 6), 1.0, float(i % 6) + 5.0, 9.0]] for i in range(rows)]
    large = pa.array(boxes, pa.large_list(pa.list_(pa.float64())))
    t = rl.from_pydict({"i": list(range(rows)), "img": images}).join(
        rl.from_arrow(pa.table({"i": list(range(rows)), "b": large})), on="i").sort("i")
    out = t.select("i", col("img").image.draw_boxes("b", thickness=1).alias("d")).to_pylist()
    assert len(out) == rows
    for row in out:
        i = row["i"]
        got = np.asarray(row["d"])
        mask = outline_mask(12, 12, boxes[i], 1)
        assert (got[mask] == [255, 0, 0]).all(), i
        assert (got[~mask] == i).all(), i
    struct_type = pa.list_(pa.struct([("label", pa.string()), ("box", pa.list_(pa.float32(), 4))]))
    found = pa.array([[{"label": "a", "box": [1, 1, 3, 3]}, None]], struct_type)
    one = rl.from_pydict({"img": images[:1]}).with_column("k", rl.lit(0)).join(
        rl.from_arrow(pa.table({"k": [0], "b": found})), on="k")
    bad = one.select(col("img").image.draw_boxes("b", on_error="column").alias("d")).to_pylist()
    assert bad[0]["d"]["value"] is None and "box 1: is null" in bad[0]["d"]["error"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("size,keep", [((100, 80), False), ((224, 224), False), ((160, 160), True)])
def test_resize_decodes_jpegs_reduced_without_visible_loss(photos, large_photos, size, keep):
    """Decode fused into resize takes libjpeg-turbo's DCT-scaled decode (1/2, 1/4 or 1/8), to
    no less than the result on either axis, when the photo is at least twice the result:
    against a full decode and the same resize, PSNR >= 35 dB on the real sample photos and
    on camera-size ones, and identical output where no DCT scale applies (PNGs, and JPEGs
    less than twice the result)."""
    paths = [str(p) for p in photos] + [str(p) for p in sorted(large_photos.glob("*.jpg"))[:3]]
    df = rl.from_pydict({"path": paths})
    fused = df.select("path", col("path").image.decode("RGB").image.resize(*size, keep_aspect=keep).alias("r"))
    decoding = df.select("path", col("path").image.decode("RGB").alias("img"))
    decoded = rl.from_arrow(decoding.collect())
    full = decoded.select("path", col("img").image.resize(*size, keep_aspect=keep).alias("r"))
    a = {r["path"]: r["r"] for r in fused.to_pylist()}
    b = {r["path"]: r["r"] for r in full.to_pylist()}
    reduced = 0
    for path in paths:
        if b[path] is None:
            assert a[path] is None
            continue
        x, y = np.asarray(a[path]), np.asarray(b[path])
        assert x.shape == y.shape, path
        with Image.open(path) as im:
            # The factor the resize shrinks by (per axis, or the fitting one with
            # keep_aspect): a reduced decode applies when 1/2 or 1/4 still covers the
            # shrunk size on both axes, or 1/8 covers three times it.
            ratios = (size[0] / im.width, size[1] / im.height)
            factor = min(ratios) if keep else max(ratios)
            applies = im.format == "JPEG" and any(
                all(math.ceil(side / r) >= max(1, math.ceil(side * factor * margin)) for side in im.size)
                for r, margin in ((2, 1), (4, 1), (8, 3)))
        if applies:
            reduced += 1
            # Decoded reduced (so not bit-identical), and without visible loss.
            assert not np.array_equal(x, y) and _psnr(x, y) >= 35, (path, _psnr(x, y))
        else:
            np.testing.assert_array_equal(x, y, err_msg=path)
    assert reduced >= 3, "the camera-size JPEGs take the reduced decode"
    # The decoded-bytes metric shows the saving: the separate decode produced every pixel
    # of every photo, the fused one far fewer.
    produced = {name: sum(op["decoded_bytes"] for op in frame.stats()["operators"])
                for name, frame in (("fused", fused), ("separate", decoding))}
    assert produced["fused"] < produced["separate"] / 2, produced


@pytest.mark.parametrize("size,keep,mode", [((224, 224), False, "RGB"), ((160, 160), True, None)])
def test_resize_decodes_webps_scaled_without_visible_loss(rgb_photos, large_photos, tmp_path, size, keep, mode):
    """Decode fused into resize has libwebp scale a WebP while converting it to RGB, to three
    times the result, when the photo is over three times the result: against a full decode
    and the same resize, PSNR >= 35 dB on camera-size photos (lossy, lossless, with alpha);
    identical output where it does not apply (small photos, animations, EXIF orientation)."""
    scaled = {}
    for i, p in enumerate(sorted(large_photos.glob("*.jpg"))[:3]):
        with Image.open(p) as im:
            im.save(tmp_path / f"lossy{i}.webp", quality=90)
        scaled[f"lossy{i}.webp"] = True
    with Image.open(sorted(large_photos.glob("*.jpg"))[3]) as im:
        im.save(tmp_path / "lossless.webp", lossless=True)
        alpha = im.convert("RGBA")
        alpha.putalpha(Image.linear_gradient("L").resize(im.size))
        alpha.save(tmp_path / "alpha.webp", quality=90)
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(tmp_path / "exif.webp", quality=90, exif=exif.tobytes())
        im.save(tmp_path / "animated.webp", save_all=True, append_images=[ImageOps.mirror(im)], quality=90)
    scaled.update({"lossless.webp": True, "alpha.webp": True, "exif.webp": False, "animated.webp": False})
    for i, (_, photo) in enumerate(rgb_photos[:3]):
        photo.save(tmp_path / f"small{i}.webp", quality=90)
        scaled[f"small{i}.webp"] = max(size[0] / photo.width, size[1] / photo.height) * 3 < 1 if not keep \
            else min(size[0] / photo.width, size[1] / photo.height) * 3 < 1
    df = rl.from_pydict({"name": list(scaled), "path": [str(tmp_path / n) for n in scaled]})
    image = col("path").image.decode(mode) if mode else col("path").image.decode()
    fused = df.select("name", image.image.resize(*size, keep_aspect=keep).alias("r"))
    decoding = df.select("name", image.alias("img"))
    full = rl.from_arrow(decoding.collect()).select("name", col("img").image.resize(*size, keep_aspect=keep).alias("r"))
    a = {r["name"]: np.asarray(r["r"]) for r in fused.to_pylist()}
    b = {r["name"]: np.asarray(r["r"]) for r in full.to_pylist()}
    def visible(x: np.ndarray) -> np.ndarray:
        # With alpha, what shows: the colour weighted by its opacity (the colour of a
        # nearly transparent pixel is rounding noise in either resize), and the opacity.
        if x.shape[-1] != 4:
            return x
        return np.concatenate([x[..., :3] * (x[..., 3:] / 255.0), x[..., 3:]], axis=-1)

    for name, applies in scaled.items():
        assert a[name].shape == b[name].shape, name
        if applies:
            quality = _psnr(visible(a[name]), visible(b[name]))
            assert not np.array_equal(a[name], b[name]) and quality >= 35, (name, quality)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a["alpha.webp"].shape[-1] == (3 if mode == "RGB" else 4)
    # The decoded-bytes metric shows the saving on the photos scaled.
    only = rl.from_pydict({"path": [str(tmp_path / n) for n, applies in scaled.items() if applies]})
    image = col("path").image.decode(mode) if mode else col("path").image.decode()
    produced = {}
    for name, frame in (("fused", only.select(image.image.resize(*size, keep_aspect=keep))), ("separate", only.select(image))):
        frame.to_pydict()
        produced[name] = sum(op["decoded_bytes"] for op in frame.stats()["operators"])
    assert produced["fused"] < produced["separate"] / 2, produced


def _jpeg_variants(photo: Image.Image) -> dict[str, bytes]:
    """The JPEG kinds a reduced decode must handle, from one 480x320 photo, and broken ones."""
    photo = photo.convert("RGB").resize((480, 320))
    baseline = _encode(photo, "JPEG", quality=90)
    exif = Image.Exif()
    variants = {
        "baseline.jpg": baseline,
        "progressive.jpg": _encode(photo, "JPEG", quality=90, progressive=True),
        "grey.jpg": _encode(photo.convert("L"), "JPEG", quality=90),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=90),
        "444.jpg": _encode(photo, "JPEG", quality=90, subsampling=0),
        "422.jpg": _encode(photo, "JPEG", quality=90, subsampling=1),
        "odd_size.jpg": _encode(photo.resize((473, 301)), "JPEG", quality=90),
    }
    for orientation in (2, 3, 5, 6, 7, 8):
        exif[0x0112] = orientation
        variants[f"exif_{orientation}.jpg"] = _encode(photo, "JPEG", quality=90, exif=exif.tobytes())
    corrupt = bytearray(baseline)
    middle = len(corrupt) // 2
    corrupt[middle:middle + 200] = os.urandom(200)
    # A header claiming 60000x60000 pixels over real 480x320 data.
    sof = baseline.index(b"\xff\xc0")
    huge = baseline[:sof + 5] + struct.pack(">HH", 60000, 60000) + baseline[sof + 9:]
    variants.update({
        "corrupt.jpg": bytes(corrupt),
        "truncated.jpg": baseline[: len(baseline) // 2],
        "huge_header.jpg": huge,
        "zero.jpg": b"",
        "text.jpg": b"hello, this is not an image at all",
        "png_named.jpg": _encode(photo, "PNG"),
    })
    return variants


@pytest.mark.parametrize("keep", [False, True])
def test_every_jpeg_variant_takes_the_fused_reduced_decode_like_a_separate_one(rgb_photos, keep):
    """Through decode fused into resize (where 1/8 scale covers 60x40), every JPEG kind —
    progressive, grey, CMYK, each chroma subsampling, odd sizes, every EXIF orientation —
    gives what a separate full decode and resize give (same size, PSNR >= 35 dB, or null
    alike for broken data), with the reasons of the separate path."""
    variants = _jpeg_variants(rgb_photos[0][1])
    names = list(variants)
    df = rl.from_pydict({"name": names, "bytes": [variants[n] for n in names]})
    fused = df.select("name", col("bytes").image.decode("RGB").image.resize(60, 40, keep_aspect=keep).alias("r"))
    assert "image_decode[dct≤1/8]+image_resize" in fused.explain()
    decoded = rl.from_arrow(df.select("name", col("bytes").image.decode("RGB").alias("img")).collect())
    separate = decoded.select("name", col("img").image.resize(60, 40, keep_aspect=keep).alias("r"))
    a = {r["name"]: r["r"] for r in fused.to_pylist()}
    b = {r["name"]: r["r"] for r in separate.to_pylist()}
    for name in names:
        if b[name] is None:
            assert a[name] is None, name
            continue
        assert a[name] is not None, name
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.shape == y.shape, name
        assert _psnr(x, y) >= 35, (name, _psnr(x, y))
    good = {"baseline.jpg", "progressive.jpg", "grey.jpg", "cmyk.jpg", "444.jpg", "422.jpg", "odd_size.jpg",
            "png_named.jpg"} | {f"exif_{o}.jpg" for o in (2, 3, 5, 6, 7, 8)}
    assert {n for n in names if a[n] is not None} >= good
    for broken in ["truncated.jpg", "huge_header.jpg", "zero.jpg", "text.jpg"]:
        assert a[broken] is None, broken
    # Orientations 5-8 turn the photo: its upright shape is fitted, not the stored one.
    if keep:
        assert np.asarray(a["exif_6.jpg"]).shape[0] == 40 > np.asarray(a["exif_6.jpg"]).shape[1]
    # The fused call reports its nulls as the separate decode does.
    nulls = fused.stats()["nulls"]
    expected = sum(1 for name in names if b[name] is None)
    assert len(nulls) == 1 and f"{expected} of {len(names)} rows null" in nulls[0], nulls


@pytest.mark.parametrize("keep", [False, True])
def test_a_crop_feeding_a_resize_is_read_in_place_and_decoded_reduced(photos, large_photos, keep):
    """crop/center_crop -> resize fuse into one call that reads the window where it lies,
    in the pixels of a DCT-scaled decode when the window shrinks enough: against cropping
    a full decode and resizing the copy, PSNR >= 35 dB where the decode was reduced, the
    same pixels where it was not (a decoded column, PNGs), and the crop's own reason for a
    window that does not fit."""
    paths = [str(p) for p in photos] + [str(p) for p in sorted(large_photos.glob("*.jpg"))[:3]]
    df = rl.from_pydict({"path": paths})
    image = col("path").image.decode("RGB")
    for crop in (lambda e: e.image.center_crop(400, 300), lambda e: e.image.crop(20, 10, 360, 240)):
        fused = df.select("path", crop(image).image.resize(64, 48, keep_aspect=keep).alias("r"))
        plan = fused.explain()
        assert "image_decode[dct≤1/8]+image_" in plan and "crop+image_resize" in plan, plan
        decoded = rl.from_arrow(df.select("path", image.alias("img")).collect())
        cropped = rl.from_arrow(decoded.select("path", crop(col("img")).alias("c")).collect())
        separate = cropped.select("path", col("c").image.resize(64, 48, keep_aspect=keep).alias("r"))
        a = {r["path"]: r["r"] for r in fused.to_pylist()}
        b = {r["path"]: r["r"] for r in separate.to_pylist()}
        assert any(v is None for v in b.values()), "some photos are smaller than the window"
        reduced = 0
        for path in paths:
            if b[path] is None:
                assert a[path] is None, path
                continue
            x, y = np.asarray(a[path]), np.asarray(b[path])
            assert x.shape == y.shape, path
            if path.endswith(".jpg") and not np.array_equal(x, y):
                reduced += 1
                assert _psnr(x, y) >= 35, (path, _psnr(x, y))
            else:
                np.testing.assert_array_equal(x, y, err_msg=path)
        assert reduced >= 3, "the camera-size JPEGs take the reduced decode"
        nulls = fused.stats()["nulls"]
        assert any("crop" in line for line in nulls), nulls
    # Over a decoded column the crop fuses too, and the pixels are exactly the copy's.
    decoded = rl.from_arrow(df.select("path", image.alias("img")).collect())
    fused = decoded.select("path", col("img").image.center_crop(200, 150).image.resize(50, 40).alias("r"))
    assert "image_center_crop+image_resize" in fused.explain()
    separate = rl.from_arrow(decoded.select("path", col("img").image.center_crop(200, 150).alias("c")).collect())
    expected = {r["path"]: r["r"] for r in separate.select("path", col("c").image.resize(50, 40).alias("r")).to_pylist()}
    for row in fused.to_pylist():
        if expected[row["path"]] is None:
            assert row["r"] is None
        else:
            np.testing.assert_array_equal(np.asarray(row["r"]), np.asarray(expected[row["path"]]))


def _same_window(name: str, got, want) -> None:
    """The window a region decode gave is the one a full decode and crop give."""
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)


def test_a_crop_decodes_only_its_window_of_a_jpeg_with_the_pixels_of_a_full_decode(photos, rgb_photos,
                                                                                    large_photos):
    """crop/center_crop over encoded JPEGs decode only the window's region (libjpeg-turbo's
    partial decode, the window mapped through the EXIF orientation): exactly the pixels of
    cropping a full decode, for every JPEG kind, orientation, window position (edges, odd
    offsets) and mode, the crop's own reasons for windows that do not fit, and the broken
    files null alike; on camera-size photos it decodes a fraction of the pixels."""
    variants = _jpeg_variants(rgb_photos[0][1])
    exif = Image.Exif()
    exif[0x0112] = 4
    variants["exif_4.jpg"] = _encode(rgb_photos[0][1].convert("RGB").resize((480, 320)), "JPEG", quality=90,
                                     exif=exif.tobytes())
    for p in photos:
        variants[p.name] = p.read_bytes()
    for p in sorted(large_photos.glob("*.jpg"))[:2]:
        variants[p.name] = p.read_bytes()
    names = list(variants)
    df = rl.from_pydict({"name": names, "bytes": [variants[n] for n in names]})
    crops = [lambda e: e.image.center_crop(96, 64), lambda e: e.image.crop(0, 0, 40, 24),
             lambda e: e.image.crop(33, 17, 129, 71), lambda e: e.image.crop(250, 150, 70, 50),
             lambda e: e.image.crop(300, 200, 150, 100)]
    for mode in (None, "RGB", "L"):
        image = col("bytes").image.decode(mode) if mode else col("bytes").image.decode()
        decoded = rl.from_arrow(df.select("name", image.alias("img")).collect())
        for crop in crops:
            fused = df.select("name", crop(image).alias("c"))
            assert "image_decode[region]+image_" in fused.explain()
            got = {r["name"]: r["c"] for r in fused.to_pylist()}
            want = {r["name"]: r["c"] for r in decoded.select("name", crop(col("img")).alias("c")).to_pylist()}
            for name in names:
                if want[name] is None:
                    assert got[name] is None, (mode, name)
                    continue
                assert got[name] is not None, (mode, name)
                _same_window(name, got[name], want[name])
    # Every kind that libjpeg-turbo decodes takes the region path, each orientation too.
    for name in ["baseline.jpg", "progressive.jpg", "grey.jpg", "444.jpg", "422.jpg"] + \
            [f"exif_{o}.jpg" for o in range(2, 9)]:
        one = rl.from_pydict({"b": [variants[name]]}).select(col("b").image.center_crop(64, 48))
        one.to_pydict()
        decoded = sum(op["decoded_bytes"] for op in one.stats()["operators"])
        assert 0 < decoded < 0.5 * 480 * 320 * (1 if name == "grey.jpg" else 3), (name, decoded)
    # Without a fused decode, a crop of the bytes reads the region too.
    direct = df.select("name", col("bytes").image.crop(10, 20, 64, 48).alias("c")).to_pylist()
    reference = rl.from_arrow(df.select("name", col("bytes").image.decode().alias("img")).collect())
    want = {r["name"]: r["c"] for r in reference.select("name", col("img").image.crop(10, 20, 64, 48).alias("c")).to_pylist()}
    for row in direct:
        if want[row["name"]] is None:
            assert row["c"] is None
        else:
            _same_window(row["name"], row["c"], want[row["name"]])
    # The reasons are the crop's: a window that does not fit, and broken data.
    small = df.select("name", col("bytes").image.crop(400, 300, 200, 100, on_error="column").alias("c"))
    reasons = {r["name"]: r["c"]["error"] for r in small.to_pylist()}
    assert "does not fit" in reasons["baseline.jpg"] and reasons["truncated.jpg"] and reasons["text.jpg"]
    # A 224x224 centre crop of a 1500x1000 photo decodes a small part of it.
    large = rl.from_pydict({"p": [str(p) for p in sorted(large_photos.glob("*.jpg"))]})
    cropped = large.select(col("p").image.decode().image.center_crop(224, 224).alias("c"))
    cropped.to_pydict()
    decoded_bytes = sum(op["decoded_bytes"] for op in cropped.stats()["operators"])
    assert decoded_bytes < 0.15 * 12 * 1500 * 1000 * 3, decoded_bytes
