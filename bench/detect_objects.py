"""Object detection, side by side in one run: JPEG photos (640-960 px on the long side, or
phone-camera size with ``--size 4000x3000``, made from the real sample photos) -> decode -> letterbox to 320x320 -> the NudeNet 320n detector
(YOLOv8n-style, ONNX Runtime) -> confidence filter, per-class NMS, boxes mapped back to the
photo's pixels -> Parquet (one list of detections per photo).

Every engine runs the same model on the same runtime (ONNX Runtime 1.31.1, every core),
16 photos per model run:
- ``rillet``: the built-in ``rl.ai.detect_objects`` (decode fused into the operator; JPEGs
  at least twice the model's input are decoded at 1/2, 1/4 or 1/8 size by DCT scaling;
  one single-threaded session per core, each running 4 photos at a time; each photo padded
  only to the next multiple of the model's stride, 32, as Ultralytics' own predictor does,
  so a 4:3 photo runs as 320x256 instead of 320x320; the Python jobs pad to the square);
- ``rillet_udf``: the same model as a Rillet Python class UDF (Pillow + numpy + onnxruntime);
- ``daft``, ``ray``: that UDF's code as a Daft class UDF and a Ray Data ``map_batches`` class;
- ``bare``: the model alone in a tight loop over the photos already letterboxed (a uint8
  array made beforehand): scale to float, run 16 at a time; no decode, no output.

    bash bench/run.sh detect_objects.py [--images 1000] [--runs 3] [--size 4000x3000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import model_benchmark  # noqa: E402
from engine_overhead import ensure_peers  # noqa: E402
from image_pipeline import photos  # noqa: E402

HERE = Path(__file__).parent
BATCH = 16

# The model code the Python jobs share (Pillow letterbox, onnxruntime, numpy NMS).
DETECTOR = """
import ast, io, numpy as np, onnxruntime as ort
from PIL import Image
class Detector:
    def __init__(self, model_dir):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_dir + "/model.onnx", options, providers=["CPUExecutionProvider"])
        self.labels = ast.literal_eval(self.session.get_modelmeta().custom_metadata_map["names"])
    def letterbox(self, data):
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            scale = min(320 / img.width, 320 / img.height)
            w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
            canvas = Image.new("RGB", (320, 320), (114, 114, 114))
            left, top = (320 - w) // 2, (320 - h) // 2
            canvas.paste(img.resize((w, h), Image.BILINEAR), (left, top))
            return np.asarray(canvas), (scale, left, top, img.width, img.height)
    def run(self, boxed):
        x = np.ascontiguousarray(np.stack(boxed).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        return self.session.run(None, {"images": x})[0]
    def decode(self, out, geometry, confidence=0.25, iou=0.45):
        scale, left, top, width, height = geometry
        scores = out[4:].T
        classes = scores.argmax(1)
        best = scores[np.arange(len(classes)), classes]
        keep = best >= confidence
        cx, cy, w, h = out[:4, keep]
        boxes = np.stack([(cx - w / 2 - left) / scale, (cy - h / 2 - top) / scale,
                          (cx + w / 2 - left) / scale, (cy + h / 2 - top) / scale], 1)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        classes, best = classes[keep], best[keep]
        found = []
        for i in np.argsort(-best, kind="stable"):
            b = boxes[i]
            clash = False
            for f in found:
                if f[0] != classes[i]:
                    continue
                o = f[2]
                iw = max(0.0, min(b[2], o[2]) - max(b[0], o[0]))
                ih = max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                inter = iw * ih
                union = (b[2] - b[0]) * (b[3] - b[1]) + (o[2] - o[0]) * (o[3] - o[1]) - inter
                if union > 0 and inter / union > iou:
                    clash = True
                    break
            if not clash:
                found.append((classes[i], float(best[i]), b))
        return [{"label": self.labels[c], "score": s, "box": [float(v) for v in b]} for c, s, b in found]
    def __call__(self, images):
        prepared = [self.letterbox(data) for data in images]
        outputs = self.run([p[0] for p in prepared])
        return [self.decode(o, p[1]) for o, p in zip(outputs, prepared)]
"""

DETECTIONS = "pa.list_(pa.struct([('label', pa.string()), ('score', pa.float32()), ('box', pa.list_(pa.float32(), 4))]))"

JOBS = {
    "rillet": """
import sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
(rl.read_files(sys.argv[1] + "/*.jpg")
   .select("path", rl.ai.detect_objects(col("file"), model="nudenet-320n").alias("detections"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""",
    "rillet_udf": DETECTOR + f"""
import sys, pyarrow as pa, rillet as rl
from rillet import col, models
rl.set_config(progress=False)
MODEL = str(models.fetch("nudenet-320n"))
@rl.udf(return_dtype={DETECTIONS}, batch=True, batch_size={BATCH}, concurrency=1)
class Detect:
    def __init__(self):
        self.detector = Detector(MODEL)
    def __call__(self, files):
        return pa.array(self.detector(files.to_pylist()),
                        type={DETECTIONS})
(rl.read_files(sys.argv[1] + "/*.jpg")
   .select("path", Detect(col("file").file.read()).alias("detections"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""",
    "daft": DETECTOR + f"""
import sys, daft, pyarrow as pa
from daft import col, DataType
from daft.functions import download
MODEL = sys.argv[1] + "/model"
@daft.udf(return_dtype=DataType.from_arrow_type({DETECTIONS}), batch_size={BATCH})
class Detect:
    def __init__(self):
        self.detector = Detector(MODEL)
    def __call__(self, images):
        return daft.Series.from_arrow(pa.array(self.detector(images.to_pylist()), type={DETECTIONS}))
df = daft.from_glob_path(sys.argv[1] + "/*.jpg")
df = df.select(col("path"), Detect(download(col("path"))).alias("detections"))
df.write_parquet(sys.argv[2])
""",
    "ray": DETECTOR + f"""
import sys, pyarrow as pa, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
MODEL = sys.argv[1] + "/model"
class Detect:
    def __init__(self):
        self.detector = Detector(MODEL)
    def __call__(self, batch):
        found = pa.array(self.detector(list(batch["bytes"])), type={DETECTIONS})
        return pa.table({{"path": batch["path"], "detections": found}})
ds = ray.data.read_binary_files(sys.argv[1], include_paths=True, file_extensions=["jpg"])
ds = ds.map_batches(Detect, batch_size={BATCH}, concurrency=1, batch_format="pyarrow")
ds.write_parquet(sys.argv[2])
""",
    "bare": DETECTOR + f"""
import sys, numpy as np
detector = Detector(sys.argv[1] + "/model")
boxed = np.load(sys.argv[1] + "/letterboxed.npy")
for start in range(0, len(boxed), {BATCH}):
    detector.run(list(boxed[start:start + {BATCH}]))
""",
}


def dataset(count: int, exact: tuple[int, int] | None = None, long_side: tuple[int, int] = (640, 960)) -> Path:
    """``count`` photos (a long side in ``long_side``, or ``exact`` pixels), the model under
    ``model/``, and the photos letterboxed for the bare model as ``letterboxed.npy``."""
    import numpy as np

    from rillet import models

    data = photos(count, long_side, exact)
    if not (data / "letterboxed.npy").exists():
        sys.path.insert(0, str(HERE))
        namespace: dict = {}
        exec(DETECTOR, namespace)  # the letterbox the Python jobs use
        letterbox = namespace["Detector"].letterbox
        boxed = [letterbox(None, p.read_bytes())[0] for p in sorted(data.glob("*.jpg"))]
        np.save(data / "letterboxed.npy", np.stack(boxed))
    if not (data / "model").exists():
        shutil.copytree(models.fetch("nudenet-320n"), data / "model")
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default=",".join(JOBS))
    parser.add_argument("--size", default="", help="exact photo size, e.g. 4000x3000 (a phone "
                        "camera's 12 MP); default: a long side of 640-960 px")
    parser.add_argument("--long-side", default="640-960", help="range of the photos' long side in "
                        "pixels, e.g. 1200-2000 (camera size)")
    args = parser.parse_args()
    peers_python = ensure_peers()
    exact = tuple(int(v) for v in args.size.split("x")) if args.size else None
    long_side = tuple(int(v) for v in args.long_side.split("-"))
    data = dataset(args.images, exact, long_side)
    jobs = {name: JOBS[name] for name in args.engines.split(",")}
    size = args.size.replace("x", " x ") if exact else f"{long_side[0]}-{long_side[1]} px"
    command = f"bash bench/run.sh detect_objects.py --images {args.images} --runs {args.runs}"
    if exact:
        command += f" --size {args.size}"
    elif args.long_side != "640-960":
        command += f" --long-side {args.long_side}"
    if args.engines != ",".join(JOBS):
        command += f" --engines {args.engines}"
    model_benchmark(f"detect_objects, {args.images:,} JPEGs ({size})",
                    jobs, peers_python, data, HERE / "data" / "out-detect", args.runs, args.images,
                    "images/s", command, f"Model: NudeNet 320n (ONNX), {BATCH} photos per run.")


if __name__ == "__main__":
    main()
