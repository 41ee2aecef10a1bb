"""The built-in AI functions (rl.ai.*, and the same names in SQL) on real model weights."""

import numpy as np
import pyarrow as pa
import pytest

import rillet as rl
from rillet import models

PAIR = ["A man is eating food.", "A man is eating a piece of bread."]


def _vectors(df: rl.DataFrame, column: str = "v") -> list:
    return df.to_pydict()[column]


def test_embed_text_gives_the_published_similarity_and_keeps_nulls():
    df = rl.from_pydict({"t": [PAIR[0], None, PAIR[1]]})
    out = df.select(rl.ai.embed_text("t").alias("v")).to_arrow()
    assert str(out.schema.field("v").type) == "Embedding[f32; 384]"
    v = out.column("v").to_pylist()
    assert v[1] is None
    a, b = np.array(v[0]), np.array(v[2])
    assert a.shape == (384,)
    assert abs(float(a @ b) - 0.7553) < 0.001
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-4


def _reference_embeddings(model_dir, texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised BERT embeddings computed here in float64 numpy, one text at a
    time (no padding), straight from the checkpoint: the oracle for the engine's ONNX
    export. Token ids come from Hugging Face's tokenizers."""
    import json
    import math

    import struct

    from tokenizers import Tokenizer

    config = json.loads((model_dir / "config.json").read_text())
    # safetensors: a u64 header length, a JSON header of name -> dtype, shape, offsets, data.
    raw = (model_dir / "model.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + length])

    def w(name):
        entry = header.get(name) or header[f"bert.{name}"]
        assert entry["dtype"] == "F32", entry["dtype"]
        begin, end = entry["data_offsets"]
        return np.frombuffer(raw[8 + length + begin:8 + length + end], "<f4").reshape(entry["shape"]).astype(np.float64)

    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    erf = np.frompyfunc(math.erf, 1, 1)

    def linear(x, prefix):
        return x @ w(f"{prefix}.weight").T + w(f"{prefix}.bias")

    def norm(x, prefix):
        centred = x - x.mean(-1, keepdims=True)
        scaled = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps)
        return scaled * w(f"{prefix}.weight") + w(f"{prefix}.bias")

    def attention(x, prefix):
        n, size = x.shape
        split = lambda part: linear(x, f"{prefix}.self.{part}").reshape(n, heads, -1).transpose(1, 0, 2)  # noqa: E731
        q, k, v = split("query"), split("key"), split("value")
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size // heads)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, size)
        return linear(context, f"{prefix}.output.dense")

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    out = []
    for text in texts:
        ids = tokenizer.encode(text).ids
        x = (w("embeddings.word_embeddings.weight")[ids]
             + w("embeddings.position_embeddings.weight")[:len(ids)]
             + w("embeddings.token_type_embeddings.weight")[0])
        x = norm(x, "embeddings.LayerNorm")
        for layer in range(config["num_hidden_layers"]):
            prefix = f"encoder.layer.{layer}"
            x = norm(attention(x, f"{prefix}.attention") + x, f"{prefix}.attention.output.LayerNorm")
            inner = linear(x, f"{prefix}.intermediate.dense")
            inner = inner * 0.5 * (1.0 + erf(inner / math.sqrt(2.0)).astype(np.float64))
            x = norm(linear(inner, f"{prefix}.output.dense") + x, f"{prefix}.output.LayerNorm")
        pooled = x.mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.array(out)


def test_the_default_model_runs_an_onnx_export_that_matches_the_checkpoint():
    """Fetching all-MiniLM-L6-v2 exports its checkpoint to ONNX, which the encoder runs on
    ONNX Runtime; its vectors match the checkpoint computed independently in numpy."""
    default = models.fetch("all-minilm-l6-v2")
    assert (default / "model.onnx").stat().st_size > 80_000_000
    texts = PAIR + ["", "   ", "?!…", "Ünïcödé façade — naïve café", "東京は日本の首都です。",
                    "Привет, как дела?", "emoji 🙂🚀 and #hashtags", "word " * 300,
                    "The quick brown fox jumps over the lazy dog. " * 12] + [
        "short " * (i % 17) + f"text {i}" for i in range(40)]
    df = rl.from_pydict({"t": texts})
    onnx = np.array(_vectors(df.select(rl.ai.embed_text("t").alias("v"))))
    reference = _reference_embeddings(default, texts)
    cosines = (onnx * reference).sum(1) / np.linalg.norm(onnx, axis=1)
    assert cosines.min() >= 0.9999, (cosines.argmin(), cosines.min())
    assert abs(float(onnx[0] @ onnx[1]) - 0.7553) < 0.001


def _checkpoint_copy(directory, *, weights_copied: bool = False):
    """A directory holding the default model's checkpoint alone (no ONNX export): its
    files linked, or the weights copied so that they can change. Fetch before isolating
    the cache (see `_isolated_cache`)."""
    import shutil

    import os
    from pathlib import Path

    default = Path(os.environ.get("RILLET_MODELS", models.cache_dir() / "models")) / "all-minilm-l6-v2"
    directory.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if weights_copied and name == "model.safetensors":
            shutil.copyfile(default / name, directory / name)
        else:
            (directory / name).symlink_to(default / name)
    return directory


def _isolated_cache(tmp_path, monkeypatch):
    """A cache of the test's own for exports; the models and ONNX Runtime are fetched
    before, into the shared cache, and found there, so that nothing is downloaded again.
    Returns the exports' directory."""
    models.fetch("all-minilm-l6-v2")
    monkeypatch.setenv("ORT_DYLIB_PATH", str(models.fetch("onnxruntime") / "libonnxruntime.so"))
    monkeypatch.setenv("RILLET_MODELS", str(models.cache_dir() / "models"))
    monkeypatch.setenv("RILLET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exports"


def _overwrite_tensor(path, name: str, value: float) -> None:
    """Set every element of float32 tensor ``name`` in safetensors file ``path``, in place
    (the file keeps its size)."""
    import json
    import struct

    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        entry = header.get(name) or header[f"bert.{name}"]
        begin, end = entry["data_offsets"]
        f.seek(8 + length + begin)
        f.write(np.full((end - begin) // 4, value, "<f4").tobytes())


def test_a_checkpoint_directory_is_exported_once_and_runs_on_onnx_runtime(tmp_path, monkeypatch):
    """A directory holding only a BERT checkpoint (no model.onnx) is exported into the cache
    on first use, reused after, made again when the weights change (even keeping their size
    and time), and never written into; SQL reads the directory itself."""
    import os

    exports = _isolated_cache(tmp_path, monkeypatch)
    checkpoint = _checkpoint_copy(tmp_path / "checkpoint", weights_copied=True)
    df = rl.from_pydict({"t": PAIR})
    v = np.array(_vectors(df.select(rl.ai.embed_text("t", model=checkpoint).alias("v"))))
    assert abs(float(v[0] @ v[1]) - 0.7553) < 0.001
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors",
                                                            "tokenizer.json"]
    [export] = exports.iterdir()
    made = (export / "model.onnx").stat().st_mtime_ns
    assert models.export_checkpoint(checkpoint) == export
    assert (export / "model.onnx").stat().st_mtime_ns == made
    labels = df.select(rl.ai.classify_text("t", ["food", "cars"], model=str(checkpoint)).alias("c"))
    assert [c["label"] for c in labels.to_pydict()["c"]] == ["food", "food"]
    # Retrained weights of the same size, their file's time kept: a new export replaces
    # the old one, and runs the new weights.
    weights = checkpoint / "model.safetensors"
    times = weights.stat()
    _overwrite_tensor(weights, "encoder.layer.5.output.LayerNorm.bias", 0.5)
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))
    changed = models.export_checkpoint(checkpoint)
    assert changed != export and [p.name for p in exports.iterdir()] == [changed.name]
    v2 = np.array(_vectors(df.select(rl.ai.embed_text("t", model=checkpoint).alias("v"))))
    assert np.abs(v2 - v).max() > 1e-3
    # SQL and the rillet command take the directory as it is: without candle built in,
    # the error names the command that writes its export.
    sql = f"SELECT embed_text(t, '{checkpoint}') AS v FROM d"
    try:
        by_sql = np.array(_vectors(rl.sql(sql, d=pa.table({"t": PAIR}))))
    except Exception as e:  # noqa: BLE001 -- the engine's error, whatever its class
        assert f"python -m rillet.models --export {checkpoint}" in str(e)
    else:  # an extension built with the candle feature runs the checkpoint itself
        np.testing.assert_allclose(by_sql, v2, atol=1e-4)


def test_the_export_command_writes_a_stamped_export_that_sql_runs(tmp_path, monkeypatch):
    import subprocess
    import sys

    _isolated_cache(tmp_path, monkeypatch)
    checkpoint = _checkpoint_copy(tmp_path / "checkpoint")
    done = subprocess.run([sys.executable, "-m", "rillet.models", "--export", str(checkpoint)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(checkpoint / "model.onnx")
    assert models.export_checkpoint(checkpoint) == checkpoint, "its own export is current"
    by_sql = np.array(_vectors(rl.sql(f"SELECT embed_text(t, '{checkpoint}') AS v FROM d",
                                      d=pa.table({"t": PAIR}))))
    assert abs(float(by_sql[0] @ by_sql[1]) - 0.7553) < 0.001
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    refused = subprocess.run([sys.executable, "-m", "rillet.models", "--export", str(not_a_checkpoint)],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no config.json" in refused.stderr
    assert not list(not_a_checkpoint.iterdir())


def test_a_refused_export_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    import json

    exports = _isolated_cache(tmp_path, monkeypatch)
    checkpoint = _checkpoint_copy(tmp_path / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type 'roberta'"):
        rl.ai.embed_text("t", model=checkpoint)
    assert not exports.exists() or not list(exports.iterdir())


def test_the_bert_export_refuses_what_it_would_compute_wrongly(tmp_path):
    import json
    import shutil

    from rillet._bert_onnx import export_bert

    default = models.fetch("all-minilm-l6-v2")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").symlink_to(default / "model.safetensors")
    config = json.loads((default / "config.json").read_text())
    for change, message in [({"model_type": "roberta"}, "model_type 'roberta'"),
                            ({"hidden_act": "relu"}, "hidden_act 'relu'"),
                            ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                            ({"num_hidden_layers": 7}, "no tensor 'encoder.layer.6")]:
        (model / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            export_bert(model, model / "model.onnx")
        assert not list(model.glob("*.onnx*")), "a refused export leaves nothing behind"
    shutil.rmtree(model)


def test_embed_text_in_sql_and_the_dataframe_agree():
    directory = str(models.fetch("all-minilm-l6-v2"))
    docs = pa.table({"body": PAIR})
    by_sql = rl.sql(f"SELECT embed_text(body, '{directory}') AS v FROM docs", docs=docs)
    by_df = rl.from_arrow(docs).select(rl.ai.embed_text(rl.col("body")).alias("v"))
    for x, y in zip(_vectors(by_sql), _vectors(by_df)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_embed_text_on_onnx_runtime():
    df = rl.from_pydict({"t": PAIR + ["Completely unrelated: the stock market fell."]})
    v = [np.array(x) for x in _vectors(df.select(
        rl.ai.embed_text("t", model="paraphrase-minilm-l3-v2").alias("v")))]
    assert v[0].shape == (384,)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2  # paraphrases sit closer


def test_embed_text_many_rows_of_mixed_length_match_one_at_a_time():
    texts = [("word " * (i % 40)) + f"row {i}" for i in range(300)]
    together = _vectors(rl.from_pydict({"t": texts}).select(rl.ai.embed_text("t").alias("v")))
    for i in (0, 39, 151, 299):
        alone = _vectors(rl.from_pydict({"t": [texts[i]]}).select(rl.ai.embed_text("t").alias("v")))
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4)


def test_embed_text_refuses_a_non_text_column_when_planning():
    df = rl.from_pydict({"n": [1, 2]})
    with pytest.raises(rl.PlanError, match="embed_text: input must be a string column"):
        df.select(rl.ai.embed_text("n"))


def test_an_unknown_model_directory_says_how_to_fetch_models():
    df = rl.from_pydict({"t": ["x"]})
    with pytest.raises(rl.RilletError, match="python -m rillet.models"):
        df.select(rl.ai.embed_text("t", model="/no/such/model")).to_pydict()


def _detect(images: list[bytes], **options) -> list:
    df = rl.from_pydict({"img": images})
    return df.select(rl.ai.detect_objects("img", **options).alias("d")).to_pydict()["d"]


def _png(image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def astronaut():
    from PIL import Image

    from rillet.dev import datasets

    path = next(p for p in datasets.sample_photos() if p.name == "astronaut.png")
    return Image.open(path).convert("RGB")


def test_detect_objects_finds_the_astronauts_face(astronaut):
    (found,) = _detect([_png(astronaut)])
    faces = [d for d in found if d["label"] == "FACE_FEMALE"]
    assert len(faces) == 1 and faces[0]["score"] > 0.6, found
    x1, y1, x2, y2 = faces[0]["box"]
    # Eileen Collins' face in the 512 x 512 photo.
    assert 150 < x1 < 200 and 60 < y1 < 110 and 250 < x2 < 300 and 160 < y2 < 210, faces


def test_detect_objects_maps_boxes_back_through_padding_and_scale(astronaut):
    from PIL import Image

    (plain,) = _detect([_png(astronaut)])
    face = next(d for d in plain if d["label"] == "FACE_FEMALE")["box"]
    # The same photo placed at (300, 40) on a wide canvas (another letterbox geometry) ...
    canvas = Image.new("RGB", (1100, 600), (20, 20, 20))
    canvas.paste(astronaut, (300, 40))
    # ... and scaled to 1.5x.
    big = astronaut.resize((768, 768), Image.BILINEAR)
    shifted, scaled = _detect([_png(canvas), _png(big)])
    moved = next(d for d in shifted if d["label"] == "FACE_FEMALE")["box"]
    grown = next(d for d in scaled if d["label"] == "FACE_FEMALE")["box"]
    # The canvas shrinks the photo to 0.29x inside the model's input: allow a few pixels.
    np.testing.assert_allclose(moved, [face[0] + 300, face[1] + 40, face[2] + 300, face[3] + 40], atol=12)
    np.testing.assert_allclose(grown, [v * 1.5 for v in face], atol=6)


def test_detect_objects_pads_photos_of_any_shape_only_to_the_stride_and_keeps_their_order(astronaut):
    from PIL import Image

    # The detector takes any height and width (stride 32): a wide photo runs as 320 x 192,
    # a tall one as 192 x 320, the square one as 320 x 320; a batch mixing them is run one
    # shape at a time and must come back in its own order, as each photo does alone.
    wide = Image.new("RGB", (1100, 600), (20, 20, 20))
    wide.paste(astronaut, (300, 40))
    tall = Image.new("RGB", (600, 1100), (20, 20, 20))
    tall.paste(astronaut, (40, 300))
    photos = [_png(wide), _png(tall), _png(astronaut), _png(tall), _png(wide)]
    together = _detect(photos)
    alone = [_detect([p])[0] for p in photos]
    for mixed, single in zip(together, alone):
        assert [d["label"] for d in mixed] == [d["label"] for d in single]
        for a, b in zip(mixed, single):
            assert abs(a["score"] - b["score"]) < 1e-3
            np.testing.assert_allclose(a["box"], b["box"], atol=0.5)
    faces = [next(d for d in found if d["label"] == "FACE_FEMALE")["box"] for found in together]
    np.testing.assert_allclose(faces[0], faces[4], atol=0.5)
    np.testing.assert_allclose(faces[1], faces[3], atol=0.5)
    # The face sits 300 px right in the wide photo and 300 px down in the tall one.
    np.testing.assert_allclose(faces[0], [faces[2][0] + 300, faces[2][1] + 40, faces[2][2] + 300, faces[2][3] + 40], atol=12)
    np.testing.assert_allclose(faces[1], [faces[2][0] + 40, faces[2][1] + 300, faces[2][2] + 40, faces[2][3] + 300], atol=12)


def test_large_jpegs_are_decoded_reduced_with_boxes_in_full_size_coordinates(astronaut):
    import io

    from PIL import Image

    (plain,) = _detect([_png(astronaut)])
    face = next(d for d in plain if d["label"] == "FACE_FEMALE")["box"]
    # A 2048 x 2048 JPEG is decoded at 1/4 size (512 px covers the 320 input), and the
    # same photo stored on its side with EXIF orientation 6 ("rotate 90 clockwise") too.
    big = astronaut.resize((2048, 2048), Image.BILINEAR)
    upright, sideways = io.BytesIO(), io.BytesIO()
    big.save(upright, format="JPEG", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6
    big.transpose(Image.Transpose.ROTATE_90).save(sideways, format="JPEG", quality=92, exif=exif)
    found = _detect([upright.getvalue(), sideways.getvalue()])
    for detections in found:
        box = next(d for d in detections if d["label"] == "FACE_FEMALE")["box"]
        np.testing.assert_allclose(box, [v * 4 for v in face], atol=24)
    # Letterboxing takes the same reduced path and gives the full image's geometry.
    out = rl.from_pydict({"b": [upright.getvalue(), sideways.getvalue()]}).select(
        rl.col("b").image.letterbox(320, 320).alias("x")).to_pydict()["x"]
    reference = np.asarray(astronaut.resize((320, 320), Image.BILINEAR), dtype=np.int16)
    for boxed in out:
        assert boxed.size == (320, 320)
        assert np.abs(np.asarray(boxed, dtype=np.int16) - reference).mean() < 6


def test_detect_objects_thresholds_and_bad_images():
    blank = _png(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 48), (255, 255, 255)))
    found = _detect([blank, b"not an image", None], confidence=0.9)
    assert found[0] == [] and found[1] is None and found[2] is None
    with pytest.raises(rl.PlanError, match="confidence must be between 0 and 1"):
        _detect([blank], confidence=2.0)
    with pytest.raises(rl.DataError, match="detect_objects failed"):
        _detect([b"not an image"], on_error="raise")


def test_detect_objects_in_sql_on_decoded_images(astronaut):
    directory = str(models.fetch("nudenet-320n"))
    table = pa.table({"img": [_png(astronaut)]})
    out = rl.sql(f"SELECT detect_objects(image_decode(img), '{directory}', 0.5) AS d FROM t", t=table)
    (found,) = out.to_pydict()["d"]
    assert [d["label"] for d in found] == ["FACE_FEMALE"]


def _wav16k(samples: np.ndarray) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _speech(clips: list[bytes], **options) -> list:
    df = rl.from_pydict({"f": clips})
    audio = rl.col("f").audio.decode()
    return df.select(rl.ai.detect_speech(audio, **options).alias("s")).to_pydict()["s"]


def _sentence(index: int = 0) -> np.ndarray:
    from rillet.dev import datasets

    path = [p for p in datasets.sample_speech() if p.suffix == ".wav"][index]
    df = rl.from_pydict({"f": [path.read_bytes()]})
    (a,) = df.select(rl.col("f").audio.decode().audio.resample(16000).alias("a")).to_pylist()
    samples, rate = a["a"]  # Audio comes to Python as (samples, rate)
    assert rate == 16000
    return np.asarray(samples, dtype=np.float32).reshape(-1)  # frames x 1 channel


def test_detect_speech_finds_a_sentence_between_silences():
    sentence = _sentence(0)
    clip = np.concatenate([np.zeros(16000, np.float32), sentence, np.zeros(24000, np.float32)])
    (segments,) = _speech([_wav16k(clip)])
    assert segments, "a spoken sentence is speech"
    first, last = segments[0], segments[-1]
    # Where the voice is, by the signal itself (espeak leaves quiet at both ends).
    voiced = np.nonzero(np.abs(sentence) > 0.02)[0]
    voice_start, voice_end = 1000 + voiced[0] / 16, 1000 + voiced[-1] / 16
    assert abs(first["start_ms"] - voice_start) < 120, (segments, voice_start)
    assert abs(last["end_ms"] - voice_end) < 200, (segments, voice_end)
    assert len(segments) > 3, "the pauses between phrases split the sentence"
    (quiet,) = _speech([_wav16k(np.zeros(32000, np.float32))])
    assert quiet == []


def test_detect_speech_batches_clips_side_by_side_without_mixing_their_state():
    clips = [np.concatenate([np.zeros(8000 * (i + 1), np.float32), _sentence(i % 2)]) for i in range(4)]
    clips.append(np.zeros(3000, np.float32))  # shorter than its neighbours: leaves the batch first
    together = _speech([_wav16k(c) for c in clips])
    alone = [_speech([_wav16k(c)])[0] for c in clips]
    assert together == alone
    assert all(together[:4]) and together[4] == []


def test_detect_speech_wants_16_or_8_khz_and_splits_by_speech():
    from rillet.dev import datasets

    wav = [p for p in datasets.sample_speech() if p.suffix == ".wav"][0].read_bytes()  # 22050 Hz
    (row,) = rl.from_pydict({"f": [wav]}).select(
        rl.ai.detect_speech(rl.col("f").audio.decode(), on_error="column").alias("s")).to_pydict()["s"]
    assert row["value"] is None and "resample it first" in row["error"]
    audio = rl.col("f").audio.decode().audio.resample(16000)
    pieces = rl.from_pydict({"f": [wav]}).select(rl.ai.split_by_speech(audio).alias("p")).to_pydict()["p"][0]
    assert len(pieces) >= 1 and all(rate == 16000 for _, rate in pieces)


def test_classify_text_zero_shot_by_embeddings():
    texts = ["The goalkeeper saved a penalty in extra time.", "Preheat the oven and whisk the eggs with sugar.",
             "The central bank raised interest rates to fight inflation.", None]
    labels = ["sports", "cooking", "finance"]
    out = rl.from_pydict({"t": texts}).select(rl.ai.classify_text("t", labels).alias("c")).to_pydict()["c"]
    assert [c["label"] for c in out[:3]] == labels and out[3] is None
    assert all(0 < c["score"] <= 1 for c in out[:3])
    table = pa.table({"t": texts[:1]})
    directory = str(models.fetch("all-minilm-l6-v2"))
    by_sql = rl.sql(f"SELECT classify_text(t, 'cooking\nsports', '{directory}') AS c FROM x", x=table)
    assert by_sql.to_pydict()["c"][0]["label"] == "sports"
    with pytest.raises(rl.PlanError, match="at least two labels"):
        rl.from_pydict({"t": ["x"]}).select(rl.ai.classify_text("t", ["only"]))


def test_ocr_reads_the_scanned_page_in_reading_order():
    from rillet.dev import datasets

    photos = {p.name: p for p in datasets.sample_photos()}
    df = rl.from_pydict({"img": [photos["page.png"].read_bytes(), photos["coffee.png"].read_bytes(), b"junk"]})
    page, coffee, junk = df.select(rl.ai.ocr("img").alias("o")).to_pydict()["o"]
    assert page[0]["text"] == "Region-based segmentation"
    text = " ".join(line["text"] for line in page)
    assert "markers" in text and "background" in text and "histogram" in text
    tops = [line["box"][1] for line in page]
    assert tops == sorted(tops)  # one column of lines, top to bottom
    assert all(0.5 <= line["score"] <= 1 for line in page)
    assert coffee == [] and junk is None
    directory = str(models.fetch("pp-ocrv4"))
    by_sql = rl.sql(f"SELECT ocr(img, '{directory}') AS o FROM t", t=pa.table({"img": [photos["page.png"].read_bytes()]}))
    assert [line["text"] for line in by_sql.to_pydict()["o"][0]] == [line["text"] for line in page]
