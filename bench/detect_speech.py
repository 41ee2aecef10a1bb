"""Voice activity, side by side in one run: speech clips spoken by espeak-ng (22,050 Hz WAV,
sentences from /usr/share/doc with silence around them) -> decode -> resample to 16 kHz ->
Silero VAD (ONNX Runtime) -> speech segments {start_ms, end_ms} -> Parquet.

Every engine runs the same model on the same runtime (ONNX Runtime 1.31.1) the same way:
32 clips side by side, one model run per 32 ms window step, the batch shrinking as short
clips end; segments by the same hysteresis rule (start at 0.5, end after 100 ms under 0.35,
drop under 250 ms, pad 30 ms):
- ``rillet``: the built-in ``rl.ai.detect_speech`` after Rillet's decode and resample;
- ``rillet_udf``: the Python code below as a Rillet class UDF (``wave`` + scipy
  ``resample_poly`` + onnxruntime);
- ``daft``, ``ray``: that code as a Daft class UDF and a Ray Data ``map_batches`` class;
- ``bare``: the model alone in a tight loop over the clips already at 16 kHz (an array
  made beforehand), 32 at a time; no decode, no resample, no output.

    bash bench/run.sh detect_speech.py [--clips 400] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import model_benchmark  # noqa: E402
from engine_overhead import ensure_peers  # noqa: E402

HERE = Path(__file__).parent
BATCH = 32

VAD = """
import io, wave, numpy as np, onnxruntime as ort
from scipy.signal import resample_poly
def decode_16k(data):
    with wave.open(io.BytesIO(data)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    x = x.reshape(-1, channels).mean(1)
    return resample_poly(x, 16000 // np.gcd(16000, rate), rate // np.gcd(16000, rate)).astype(np.float32)
class Vad:
    def __init__(self, model_dir):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_dir + "/model.onnx", options, providers=["CPUExecutionProvider"])
        self.sr = np.array(16000, np.int64)
    def probabilities(self, clips):
        order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
        windows = [-(-len(c) // 512) for c in clips]
        state = np.zeros((2, len(clips), 128), np.float32)
        probs = [[] for _ in clips]
        active, step = len(clips), 0
        while True:
            while active and windows[order[active - 1]] <= step:
                active -= 1
            if not active:
                return probs
            x = np.zeros((active, 576), np.float32)
            for slot, i in enumerate(order[:active]):
                if step == 0:
                    piece = clips[i][:512]
                    x[slot, 64:64 + len(piece)] = piece
                else:
                    piece = clips[i][step * 512 - 64:step * 512 + 512]
                    x[slot, :len(piece)] = piece
            out, new = self.session.run(None, {"input": x, "state": np.ascontiguousarray(state[:, :active]), "sr": self.sr})
            state[:, :active] = new
            for slot, i in enumerate(order[:active]):
                probs[i].append(float(out[slot, 0]))
            step += 1
    @staticmethod
    def segments(probs, samples, threshold=0.5, min_speech=4000, min_silence=1600, pad=480):
        low = max(threshold - 0.15, 0.01)
        found, start, quiet = [], None, None
        for i, p in enumerate(probs):
            at = i * 512
            if p >= threshold:
                quiet = None
                start = at if start is None else start
                continue
            if start is None:
                continue
            if p < low:
                quiet = at if quiet is None else quiet
                if at + 512 - quiet >= min_silence:
                    if quiet - start >= min_speech:
                        found.append((start, quiet))
                    start = quiet = None
        if start is not None and samples - start >= min_speech:
            found.append((start, samples))
        padded = [[max(s - pad, 0), min(e + pad, samples)] for s, e in found]
        for i in range(1, len(found)):
            if found[i][0] - found[i - 1][1] < 2 * pad:
                middle = found[i - 1][1] + (found[i][0] - found[i - 1][1]) // 2
                padded[i - 1][1] = padded[i][0] = middle
        return [{"start_ms": round(s / 16), "end_ms": round(e / 16)} for s, e in padded]
    def __call__(self, files):
        clips = [decode_16k(f) for f in files]
        return [self.segments(p, len(c)) for p, c in zip(self.probabilities(clips), clips)]
"""

SEGMENTS = "pa.list_(pa.struct([('start_ms', pa.int64()), ('end_ms', pa.int64())]))"

JOBS = {
    "rillet": """
import sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
audio = col("file").audio.decode().audio.resample(16000)
(rl.read_files(sys.argv[1] + "/*.wav")
   .select("path", rl.ai.detect_speech(audio, model="silero-vad").alias("speech"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""",
    "rillet_udf": VAD + f"""
import sys, pyarrow as pa, rillet as rl
from rillet import col, models
rl.set_config(progress=False)
MODEL = str(models.fetch("silero-vad"))
@rl.udf(return_dtype={SEGMENTS}, batch=True, batch_size={BATCH}, concurrency=1)
class Speech:
    def __init__(self):
        self.vad = Vad(MODEL)
    def __call__(self, files):
        return pa.array(self.vad(files.to_pylist()), type={SEGMENTS})
(rl.read_files(sys.argv[1] + "/*.wav")
   .select("path", Speech(col("file").file.read()).alias("speech"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""",
    "daft": VAD + f"""
import sys, daft, pyarrow as pa
from daft import col, DataType
from daft.functions import download
MODEL = sys.argv[1] + "/model"
@daft.udf(return_dtype=DataType.from_arrow_type({SEGMENTS}), batch_size={BATCH})
class Speech:
    def __init__(self):
        self.vad = Vad(MODEL)
    def __call__(self, files):
        return daft.Series.from_arrow(pa.array(self.vad(files.to_pylist()), type={SEGMENTS}))
df = daft.from_glob_path(sys.argv[1] + "/*.wav")
df = df.select(col("path"), Speech(download(col("path"))).alias("speech"))
df.write_parquet(sys.argv[2])
""",
    "ray": VAD + f"""
import sys, pyarrow as pa, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
MODEL = sys.argv[1] + "/model"
class Speech:
    def __init__(self):
        self.vad = Vad(MODEL)
    def __call__(self, batch):
        found = pa.array(self.vad(list(batch["bytes"])), type={SEGMENTS})
        return pa.table({{"path": batch["path"], "speech": found}})
ds = ray.data.read_binary_files(sys.argv[1], include_paths=True, file_extensions=["wav"])
ds = ds.map_batches(Speech, batch_size={BATCH}, concurrency=1, batch_format="pyarrow")
ds.write_parquet(sys.argv[2])
""",
    "bare": VAD + f"""
import sys, numpy as np
vad = Vad(sys.argv[1] + "/model")
stored = np.load(sys.argv[1] + "/clips16k.npz")
clips = [stored[k] for k in sorted(stored.files)]
for start in range(0, len(clips), {BATCH}):
    vad.probabilities(clips[start:start + {BATCH}])
""",
}


def dataset(count: int, python: str) -> Path:
    """``count`` WAV clips: a sentence or two from /usr/share/doc spoken by espeak-ng at a
    speed and pitch that vary, between 0.2-1.5 s of silence; the model under ``model/``;
    the clips at 16 kHz (the Python jobs' resampler, run in ``python``) as ``clips16k.npz``."""
    import random
    import re
    import wave

    import numpy as np

    from rillet import models

    out = HERE / "data" / f"speech-{count}"
    if (out / "clips16k.npz").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sentences = []
    for path in sorted(Path("/usr/share/doc").rglob("README*")):
        if path.suffix == ".gz" or not path.is_file():
            continue
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 40 <= len(s) <= 200 and s.count(" ") >= 6 and not re.search(r"[<>{}\\[\]|/_=@#]", s):
                sentences.append(s)
    rng = random.Random(11)
    for i in range(count):
        spoken = out / f"spoken-{i}.wav"
        text = " ".join(rng.sample(sentences, rng.choice([1, 1, 2])))
        subprocess.run(["espeak-ng", "-s", str(rng.randint(130, 180)), "-p", str(rng.randint(30, 70)),
                        "-w", str(spoken), "--stdin"], input=text.encode(), check=True, capture_output=True)
        with wave.open(str(spoken)) as w:
            params, frames = w.getparams(), w.readframes(w.getnframes())
        spoken.unlink()
        silence = lambda: b"\0\0" * int(params.framerate * rng.uniform(0.2, 1.5))  # noqa: E731
        with wave.open(str(out / f"clip-{i:05d}.wav"), "wb") as w:
            w.setparams(params)
            w.writeframes(silence() + frames + silence())
    shutil.copytree(models.fetch("silero-vad"), out / "model")
    resample = VAD + f"""
import glob, numpy as np
paths = sorted(glob.glob("{out}/clip-*.wav"))
np.savez("{out}/clips16k.npz", **{{f"c{{i:05d}}": decode_16k(open(p, "rb").read()) for i, p in enumerate(paths)}})
"""
    subprocess.run([python, "-c", resample], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default=",".join(JOBS))
    args = parser.parse_args()
    peers_python = ensure_peers()
    data = dataset(args.clips, str(peers_python))
    jobs = {name: JOBS[name] for name in args.engines.split(",")}
    model_benchmark(f"detect_speech, {args.clips:,} espeak-ng clips",
                    jobs, peers_python, data, HERE / "data" / "out-speech", args.runs, args.clips,
                    "clips/s", f"bash bench/run.sh detect_speech.py --clips {args.clips} --runs {args.runs}",
                    f"Model: Silero VAD (ONNX), {BATCH} clips side by side.")


if __name__ == "__main__":
    main()
