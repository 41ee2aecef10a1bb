"""The main job: one pass over a folder of real media, all native operators, Parquet out.

- photos: validate, decode, resize to fit 224 px, perceptual hash (near-duplicate search)
- speech: duration, silences, 16 kHz mono, Whisper-style log-mel features
- videos: metadata, one frame per second (exploded into rows), resized and hashed
- texts: read, normalise, chunk into ~80-word pieces (exploded), exact and MinHash signatures

    python examples/multimodal_pipeline.py demo-data
"""

from __future__ import annotations

import sys
import time

import rillet as rl
from rillet import col


def photos(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/photos/*").with_column("valid", col("file").image.is_valid())
    return (files.filter(col("valid"))
                 .with_column("image", col("file").image.decode("RGB"))
                 .with_column("thumb", col("image").image.resize(224, 224, keep_aspect=True))
                 .select("path", col("image").image.width().alias("width"),
                         col("image").image.height().alias("height"),
                         col("thumb").image.phash().alias("phash"), "thumb"))


def speech(root: str) -> rl.DataFrame:
    files = rl.read_files(f"{root}/speech/*.wav")
    return (files.with_column("audio", col("file").audio.standardize(16000, 1))
                 .select("path",
                         col("file").audio.duration().alias("seconds"),
                         col("audio").audio.detect_silence(threshold_db=-40, min_silence_ms=250).alias("silences"),
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
                         col("chunk").text.minhash(num_perm=32).alias("minhash")))


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "demo-data"
    started = time.perf_counter()
    jobs = {"images": photos(root), "audio": speech(root), "frames": video_frames(root), "chunks": text_chunks(root)}
    for name, df in jobs.items():
        stats = df.write_parquet(f"{root}/out/{name}", mode="overwrite")
        print(f"{name}: wrote {stats['rows_written']} rows to {len(stats['files_written'])} file(s) in {root}/out/{name}")
    print()
    rl.read_parquet(f"{root}/out/images").select("path", "width", "height", "phash", "thumb").show(5)
    rl.read_parquet(f"{root}/out/audio").select("path", "seconds", "silences", "log_mel").show(4)
    rl.read_parquet(f"{root}/out/frames").show(4)
    rl.read_parquet(f"{root}/out/chunks").select("path", "chunk", "hash").show(4)
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
