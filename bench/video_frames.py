"""One frame a second from long clips, side by side in one run: --clips clips of --seconds
seconds (1280x720, 30 fps, H.264 High with B-frames, a key frame every 2 seconds (``-g 60``)
as cameras and phones write them, made by ffmpeg from its test sources with grain). Every
job turns each clip into RGB frames at 0 s, 1 s, 2 s, ... and checks how many it got:

- ``rillet``: ``col("p").video.frames(interval_ms=1000)``, exploded, streamed in batches;
- ``seek``, the limit: ``ffmpeg -ss T -i clip -frames:v 1`` per timestamp (accurate seeking:
  to the key frame before T, then decoding up to T), one process per frame, on every core;
- ``decode_all``: ``ffmpeg -i clip -vf fps=1`` per clip, which decodes every frame and keeps
  one a second, on every core.

With ``--size N`` every job also shrinks each frame to N x N (bilinear): Rillet by
``image.resize`` after the explode (which the planner fuses into the frames stage), ffmpeg by
its ``scale`` filter.

All ffmpeg runs are single-threaded (``-threads 1``), as Rillet's decoders are: the clips run
side by side, one a core. Reports frames/s (median of --runs after one warm-up) and peak RSS.

    bash bench/run.sh video_frames.py [--clips 10] [--seconds 60] [--runs 3] [--size 224]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import side_by_side  # noqa: E402

HERE = Path(__file__).parent
FPS = 30
# ffmpeg's moving test sources, scaled to 720p.
SOURCES = ["testsrc2", "mandelbrot", "life=mold=10:ratio=0.1", "cellauto=rule=110", "smptehdbars",
           "gradients=speed=0.02", "mptestsrc", "testsrc", "mandelbrot=start_scale=1", "life=ratio=0.3"]

JOBS = {
    "rillet": """
import glob, sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
clips = sorted(glob.glob(sys.argv[1] + "/*.mp4"))
image = col("f")["image"]
if SIZE:
    image = image.image.resize(SIZE, SIZE)
df = (rl.from_pydict({"p": clips}).select("p", col("p").video.frames(interval_ms=1000).alias("f"))
      .explode("f").select("p", col("f")["pts_ms"].alias("pts"), image.alias("image")))
frames = 0
for batch in df.iter_batches():
    frames += batch.num_rows
    assert batch.column("image").null_count == 0
assert frames >= 60 * len(clips), frames
""",
    "seek": """
import glob, json, os, subprocess, sys
from multiprocessing.pool import ThreadPool
clips = sorted(glob.glob(sys.argv[1] + "/*.mp4"))
def seconds(clip):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", clip],
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["format"]["duration"])
def frame(task):
    clip, t = task
    scale = ["-vf", f"scale={SIZE}:{SIZE}:flags=bilinear"] if SIZE else []
    return len(subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", "1", "-ss", str(t), "-i", clip,
                               "-frames:v", "1", *scale, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                              check=True, capture_output=True).stdout)
tasks = [(c, t) for c in clips for t in range(int(seconds(c)) + 1) if t < seconds(c)]
with ThreadPool(os.cpu_count()) as pool:
    sizes = pool.map(frame, tasks, chunksize=1)
assert all(s == FRAME_BYTES for s in sizes) and len(sizes) >= 60 * len(clips), len(sizes)
""",
    "decode_all": """
import glob, os, subprocess, sys
from multiprocessing.pool import ThreadPool
clips = sorted(glob.glob(sys.argv[1] + "/*.mp4"))
def frames(clip):
    scale = f",scale={SIZE}:{SIZE}:flags=bilinear" if SIZE else ""
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", "1", "-i", clip, "-vf", "fps=1:round=up" + scale,
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return len(out) // FRAME_BYTES
with ThreadPool(os.cpu_count()) as pool:
    counts = pool.map(frames, clips, chunksize=1)
assert sum(counts) >= 60 * len(clips), counts
""",
}


def jobs_for(size: int) -> dict[str, str]:
    """The jobs, shrinking every frame to ``size`` x ``size`` (0: full size)."""
    frame_bytes = 3 * (size * size if size else 1280 * 720)
    header = f"SIZE = {size}\nFRAME_BYTES = {frame_bytes}\n"
    return {name: header + job for name, job in JOBS.items()}


def clips(count: int, seconds: int) -> Path:
    """``count`` H.264 clips of ``seconds`` s, 1280x720 at 30 fps with a key frame every 2 s."""
    out = HERE / "data" / f"clips-{count}-{seconds}s"
    if out.exists() and len(list(out.glob("*.mp4"))) == count:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = out / f"clip-{i:02d}.mp4"
        if target.exists():
            continue
        source = SOURCES[i % len(SOURCES)]
        partial = target.with_suffix(".part.mp4")
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, "-t", str(seconds),
                        "-vf", f"scale=1280:720,fps={FPS},noise=alls=5:allf=t,format=yuv420p", "-c:v", "libx264", "-preset", "veryfast",
                        "-profile:v", "high", "-g", str(2 * FPS), "-keyint_min", str(2 * FPS),
                        "-sc_threshold", "0", str(partial)], check=True)
        partial.rename(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=0, help="shrink every frame to SIZE x SIZE (0: full size)")
    parser.add_argument("--prepare", action="store_true", help="only make the clips")
    args = parser.parse_args()
    data = clips(args.clips, args.seconds)
    if args.prepare:
        return
    frames = args.clips * args.seconds
    pythons = {name: sys.executable for name in JOBS}
    text = side_by_side(jobs_for(args.size), pythons, data, HERE / "data" / "out-video", args.runs, frames, "frames/s", 1)
    print(text)
    shrunk = f" shrunk to {args.size}x{args.size}" if args.size else ""
    size_flag = f" --size {args.size}" if args.size else ""
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### video_frames, {datetime.date.today()}, {args.clips} clips of {args.seconds} s (720p30, "
                f"H.264 High, key frame every 2 s), 1 frame/s{shrunk}, {args.runs} runs + warm-up\n\nCommand: "
                f"`bash bench/run.sh video_frames.py --clips {args.clips} --seconds {args.seconds} --runs "
                f"{args.runs}{size_flag}`. `seek` (the limit) is `ffmpeg -ss T -frames:v 1` per frame, `decode_all` is "
                f"`ffmpeg -vf fps=1` per clip; all single-threaded, one clip or frame a core.\n\n{text}\n")


if __name__ == "__main__":
    main()
