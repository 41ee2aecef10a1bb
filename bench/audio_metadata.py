"""Audio facts without decoding, side by side in one run: duration and metadata (rate,
channels, frames, codec, container) of --files speech files (WAV, MP3, FLAC, Ogg Vorbis and
AAC in MP4, spoken by espeak-ng and encoded by ffmpeg), on Rillet against the limit: header
reads alone with mutagen (pure-Python tag and header parsing) in a process pool on every
core. The Rillet job fails unless its operators decoded no samples at all (the
``decoded_bytes`` of every operator in ``df.stats()`` is 0). Reports files/s (median of
--runs after one warm-up) and peak RSS.

    bash bench/run.sh audio_metadata.py [--files 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import side_by_side  # noqa: E402

HERE = Path(__file__).parent
FORMATS = {".wav": None, ".mp3": "libmp3lame", ".flac": "flac", ".ogg": "libvorbis", ".m4a": "aac"}

JOBS = {
    "rillet": """
import glob, sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
df = rl.read_files(sys.argv[1] + "/*").select(
    "path", col("file").audio.duration().alias("seconds"), col("file").audio.metadata().alias("facts"))
rows = df.to_arrow()
assert rows.num_rows == len(glob.glob(sys.argv[1] + "/*")), rows.num_rows
assert rows.column("seconds").null_count == 0
decoded = sum(op["decoded_bytes"] for op in df.stats()["operators"])
assert decoded == 0, f"{decoded} bytes of samples decoded"
""",
    "limit": """
import glob, os, sys
from multiprocessing import Pool
import mutagen
def facts(path):
    info = mutagen.File(path).info
    return info.length, info.sample_rate, info.channels
paths = glob.glob(sys.argv[1] + "/*")
with Pool(os.cpu_count()) as pool:
    done = sum(1 for seconds, rate, channels in pool.imap_unordered(facts, paths, chunksize=32) if seconds > 0)
assert done == len(paths), done
""",
}


def speech_files(count: int) -> Path:
    """``count`` files: every sample sentence in every format, copied round-robin."""
    from rillet.dev.datasets import sample_speech

    out = HERE / "data" / f"speech-{count}"
    if out.exists() and len(list(out.iterdir())) == count:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sources = []
    for wav in sorted(p for p in sample_speech() if p.suffix == ".wav"):
        for ext, codec in FORMATS.items():
            encoded = out / f"src-{wav.stem}{ext}"
            if codec is None:
                shutil.copy(wav, encoded)
            else:
                subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), "-c:a", codec, str(encoded)],
                               check=True)
            sources.append(encoded)
    for i in range(count):
        source = sources[i % len(sources)]
        shutil.copy(source, out / f"clip-{i:05d}{source.suffix}")
    for source in sources:
        source.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = speech_files(args.files)
    pythons = {"rillet": sys.executable, "limit": sys.executable}
    text = side_by_side(JOBS, pythons, data, HERE / "data" / "out-audio", args.runs, args.files, "files/s", 0)
    print(text)
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### audio_metadata, {datetime.date.today()}, {args.files:,} speech files (WAV, MP3, FLAC, "
                f"Ogg, M4A), {args.runs} runs + warm-up\n\nCommand: `bash bench/run.sh audio_metadata.py --files "
                f"{args.files} --runs {args.runs}`. Rillet decoded 0 bytes of samples (asserted).\n\n{text}\n")


if __name__ == "__main__":
    main()
