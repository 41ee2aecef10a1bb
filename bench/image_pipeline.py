"""Image pipeline, side by side in one run: camera-size JPEG photos (1200-2000 px on the long
side, derived from the real sample photos) -> decode -> resize to 224x224 -> uint8 HWC
tensor, materialised batch by batch, on Rillet, Daft (its native image ops) and Ray Data
(map_batches with Pillow), against the physical limit: the best known technique in a tight
loop on every core, Pillow's ``draft`` (libjpeg-turbo decoding at 1/2, 1/4 or 1/8 scale in
the DCT domain) followed by a bilinear resize, in one process per core. Reports images/s
(median of --runs after one warm-up) and peak RSS of the process tree, with ratios. Every
job checks that it produced one tensor per photo.

    bash bench/run.sh image_pipeline.py [--images 2000] [--runs 3] [--format jpg|png|webp] [--op resize|crop]
        [--engines a,b]

``--format png`` or ``webp`` re-encodes the same photos (PNG level 6, WebP quality 90) to
measure the formats without a reduced decode: the limit is then Pillow's full decode (its
``draft`` does nothing for them) and the same resize.

``--memory`` runs the memory benchmark instead: decode + resize over --images photos of
4000x3000 (default 5000), Rillet only, reporting peak RSS against the 2 GB target.
"""

from __future__ import annotations

import argparse
import datetime
import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import mib, run_measured, side_by_side  # noqa: E402
from engine_overhead import ensure_peers  # noqa: E402

HERE = Path(__file__).parent
SIZE = 224
LONG_SIDE = (1200, 2000)

# Each job: argv[1] the photo folder, argv[2] an output folder it leaves alone.
JOBS = {
    "rillet": f"""
import glob, sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
df = rl.read_files(sys.argv[1] + "/*.EXT").select(
    col("file").image.decode("RGB").image.resize({SIZE}, {SIZE})
    .image.to_tensor(dtype="u8", layout="HWC").alias("tensor"))
done = sum(batch.num_rows for batch in df.iter_batches())
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "daft": f"""
import glob, sys, daft
from daft import col
from daft.functions import decode_image, download, image_to_tensor, resize
df = daft.from_glob_path(sys.argv[1] + "/*.EXT")
df = df.select(image_to_tensor(resize(decode_image(download(col("path")), mode="RGB"), {SIZE}, {SIZE}))
               .alias("tensor"))
done = sum(len(part) for part in df.iter_partitions())
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "ray": f"""
import glob, io, sys, numpy as np, ray
from PIL import Image
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
def transform(batch):
    out = []
    for data in batch["bytes"]:
        with Image.open(io.BytesIO(data)) as img:
            out.append(np.asarray(img.convert("RGB").resize(({SIZE}, {SIZE}), Image.BILINEAR)))
    return {{"tensor": np.stack(out)}}
ds = ray.data.read_binary_files(sys.argv[1]).map_batches(transform, batch_size=32, batch_format="numpy")
done = sum(len(batch["tensor"]) for batch in ds.iter_batches(batch_size=256, batch_format="numpy"))
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "limit": f"""
import glob, os, sys, numpy as np
from multiprocessing import Pool
from PIL import Image
def tensor(path):
    with Image.open(path) as img:
        img.draft("RGB", ({SIZE}, {SIZE}))
        return np.asarray(img.convert("RGB").resize(({SIZE}, {SIZE}), Image.BILINEAR)).shape
paths = glob.glob(sys.argv[1] + "/*.EXT")
with Pool(os.cpu_count()) as pool:
    done = sum(1 for shape in pool.imap_unordered(tensor, paths, chunksize=16) if shape == ({SIZE}, {SIZE}, 3))
assert done == len(paths), done
""",
}

# --op crop: a fixed 224x224 window at (200, 150) of each photo (every photo is larger),
# as a uint8 tensor. The limit is Pillow decoding in full and cropping on every core: it
# has no region decode (its ``draft`` only scales), so Rillet's partial decode is measured
# against what a Python loop does, and the decoded-pixel fraction is what it saves.
CROP = (200, 150, SIZE, SIZE)
CROP_JOBS = {
    "rillet": f"""
import glob, sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
df = rl.read_files(sys.argv[1] + "/*.EXT").select(
    col("file").image.decode("RGB").image.crop({CROP[0]}, {CROP[1]}, {CROP[2]}, {CROP[3]})
    .image.to_tensor(dtype="u8", layout="HWC").alias("tensor"))
done = sum(batch.num_rows - batch.column(0).null_count for batch in df.iter_batches())
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "daft": f"""
import glob, sys, daft
from daft import col
from daft.functions import crop, decode_image, download, image_to_tensor
df = daft.from_glob_path(sys.argv[1] + "/*.EXT")
df = df.select(image_to_tensor(crop(decode_image(download(col("path")), mode="RGB"), {CROP})).alias("tensor"))
done = sum(len(part) for part in df.iter_partitions())
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "ray": f"""
import glob, io, sys, numpy as np, ray
from PIL import Image
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
x, y, w, h = {CROP}
def transform(batch):
    out = []
    for data in batch["bytes"]:
        with Image.open(io.BytesIO(data)) as img:
            out.append(np.asarray(img.convert("RGB").crop((x, y, x + w, y + h))))
    return {{"tensor": np.stack(out)}}
ds = ray.data.read_binary_files(sys.argv[1]).map_batches(transform, batch_size=32, batch_format="numpy")
done = sum(len(batch["tensor"]) for batch in ds.iter_batches(batch_size=256, batch_format="numpy"))
assert done == len(glob.glob(sys.argv[1] + "/*.EXT")), done
""",
    "limit": f"""
import glob, os, sys, numpy as np
from multiprocessing import Pool
from PIL import Image
x, y, w, h = {CROP}
def tensor(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").crop((x, y, x + w, y + h))).shape
paths = glob.glob(sys.argv[1] + "/*.EXT")
with Pool(os.cpu_count()) as pool:
    done = sum(1 for shape in pool.imap_unordered(tensor, paths, chunksize=16) if shape == (h, w, 3))
assert done == len(paths), done
""",
}


def photos(count: int, long_side: tuple[int, int], exact: tuple[int, int] | None = None) -> Path:
    """``count`` JPEGs made from the real sample photos: random crops, flips and scales to a
    long side in ``long_side`` (or exactly ``exact`` pixels), quality 85-95."""
    from PIL import Image, ImageOps
    from rillet.dev.datasets import sample_photos

    name = f"photos-{count}-{exact[0]}x{exact[1]}" if exact else f"photos-{count}-{long_side[0]}-{long_side[1]}"
    out = HERE / "data" / name
    if out.exists() and len(list(out.glob("*.jpg"))) == count:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(7)
    sources = []
    for path in sample_photos():
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if min(img.size) >= 256:
                sources.append(img.copy())
    # 4000x3000 JPEGs are ~3 MB each: make 200 distinct ones and link the rest to them (the
    # engine reads and decodes every link as its own file).
    distinct = min(count, 200) if exact else count
    for i in range(count):
        if i >= distinct:
            (out / f"img-{i:05d}.jpg").symlink_to(out / f"img-{i % distinct:05d}.jpg")
            continue
        img = sources[i % len(sources)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        if exact:
            target = exact
        else:
            side = rng.randint(*long_side)
            scale = side / max(crop.size)
            target = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop.resize(target, Image.BICUBIC).save(out / f"img-{i:05d}.jpg", quality=rng.randint(85, 95))
    return out


def reencoded(folder: Path, fmt: str) -> Path:
    """The JPEGs in ``folder`` saved again as ``fmt`` (png or webp), in a sibling folder."""
    from PIL import Image

    out = folder.with_name(f"{folder.name}-{fmt}")
    jpegs = sorted(folder.glob("*.jpg"))
    if out.exists() and len(list(out.glob(f"*.{fmt}"))) == len(jpegs):
        return out
    out.mkdir(exist_ok=True)
    options = {"png": {"compress_level": 6}, "webp": {"quality": 90}}[fmt]
    for jpeg in jpegs:
        with Image.open(jpeg) as img:
            img.save(out / f"{jpeg.stem}.{fmt}", **options)
    return out


def image_benchmark(args) -> None:
    peers_python = ensure_peers()
    data = photos(args.images, LONG_SIDE)
    if args.format != "jpg":
        data = reencoded(data, args.format)
    pythons = {"rillet": sys.executable, "daft": str(peers_python), "ray": str(peers_python),
               "limit": str(peers_python)}
    chosen = CROP_JOBS if args.op == "crop" else JOBS
    jobs = {name: chosen[name].replace("EXT", args.format) for name in args.engines.split(",")}
    what = f"crop {SIZE}x{SIZE} at {CROP[:2]}" if args.op == "crop" else f"resize {SIZE}"
    text = side_by_side(jobs, pythons, data, HERE / "data" / "out-image", args.runs, args.images, "images/s", 1)
    print(text)
    version = subprocess.run([str(peers_python), "-c", "import daft, ray; print(daft.__version__, ray.__version__)"],
                             capture_output=True, text=True).stdout.split()
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### image_pipeline, {datetime.date.today()}, {args.images:,} {args.format.upper()}s "
                f"({LONG_SIDE[0]}-{LONG_SIDE[1]} px) -> {what} -> tensor, {args.runs} runs + warm-up\n\nCommand: `bash bench/run.sh image_pipeline.py --images {args.images} "
                f"--runs {args.runs} --format {args.format} --op {args.op} --engines {args.engines}` (Daft {version[0] if version else '?'}, Ray {version[1] if len(version) > 1 else '?'}).\n\n"
                f"{text}\n")


def memory_benchmark(args) -> None:
    data = photos(args.images, (0, 0), exact=(4000, 3000))
    # The job itself checks that it made one tensor per photo.
    job = JOBS["rillet"].replace("EXT", "jpg")
    result = run_measured([sys.executable, "-c", job, str(data), str(HERE / "data" / "unused")])
    if result["code"] != 0:
        sys.exit(f"rillet failed:\n{result['output']}")
    verdict = "PASS" if result["peak_rss"] < 2e9 else "FAIL"
    text = ("| images | time | images/s | peak RSS | verdict |\n|---|---|---|---|---|\n"
            f"| {args.images:,} x 4000x3000 JPEG | {result['seconds']:.1f} s | {args.images / result['seconds']:.1f} | "
            f"{mib(result['peak_rss'])} | {verdict} (< 2 GB) |")
    print(text)
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### image_memory, {datetime.date.today()}\n\nCommand: `bash bench/run.sh image_pipeline.py "
                f"--memory --images {args.images}`; pipeline as in image_pipeline (decode, resize to {SIZE}, "
                f"tensor, materialised).\n\n{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--format", choices=["jpg", "png", "webp"], default="jpg")
    parser.add_argument("--engines", default=",".join(JOBS))
    parser.add_argument("--op", choices=["resize", "crop"], default="resize")
    args = parser.parse_args()
    if args.memory:
        args.images = args.images or 5000
        memory_benchmark(args)
    else:
        args.images = args.images or 2000
        image_benchmark(args)


if __name__ == "__main__":
    main()
