"""How ONNX Runtime should use the cores for each benchmark model: one session whose runs
spread over every core (intra-op threads), or one single-threaded session per core with the
runs split between them. The bare model in a tight loop on the data the model benchmarks
prepared (run those first), same batches, ONNX Runtime in the peers' environment. This is
what `rillet_ai::onnx::Parallelism` is chosen from.

    bench/.venv-peers/bin/python bench/model_parallelism.py   # appends to RESULTS.md
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

DATA = Path(__file__).parent / "data"
CORES = os.cpu_count() or 1


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def vad_work(data: Path):
    stored = np.load(data / "clips16k.npz")
    clips = [stored[k] for k in sorted(stored.files)]
    sr = np.array(16000, np.int64)

    def run(s, batch):  # clips side by side, the batch shrinking as short clips end
        order = sorted(range(len(batch)), key=lambda i: -len(batch[i]))
        windows = [-(-len(c) // 512) for c in batch]
        state = np.zeros((2, len(batch), 128), np.float32)
        active, step = len(batch), 0
        while True:
            while active and windows[order[active - 1]] <= step:
                active -= 1
            if not active:
                return
            x = np.zeros((active, 576), np.float32)
            for slot, i in enumerate(order[:active]):
                piece = batch[i][max(step * 512 - 64, 0):step * 512 + 512]
                offset = 64 if step == 0 else 0
                x[slot, offset:offset + len(piece)] = piece
            _, new = s.run(None, {"input": x, "state": np.ascontiguousarray(state[:, :active]), "sr": sr})
            state[:, :active] = new
            step += 1

    return data / "model" / "model.onnx", [clips[i:i + 32] for i in range(0, len(clips), 32)], run


def detect_work(data: Path):
    boxed = np.load(data / "letterboxed.npy")
    batches = [np.ascontiguousarray(boxed[i:i + 16].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
               for i in range(0, len(boxed), 16)]
    return data / "model" / "model.onnx", batches, lambda s, x: s.run(None, {"images": x})


def embed_work(data: Path):
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(data / "model" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    chunks = pq.read_table(data / "chunks.parquet").column("chunk").to_pylist()
    batches = []
    for start in range(0, len(chunks), 256):
        ids = sorted((e.ids for e in tokenizer.encode_batch(chunks[start:start + 256])), key=len)
        while ids:  # groups of at most 8,192 tokens, as the benchmark makes them
            n = 1
            while n < len(ids) and (n + 1) * len(ids[n]) <= 8192:
                n += 1
            group, ids = ids[:n], ids[n:]
            width = len(group[-1])
            x = np.zeros((len(group), width), np.int64)
            m = np.zeros_like(x)
            for j, row in enumerate(group):
                x[j, :len(row)] = row
                m[j, :len(row)] = 1
            batches.append((x, m))
    return (data / "model" / "model.onnx", batches,
            lambda s, b: s.run(None, {"input_ids": b[0], "attention_mask": b[1]}))


def timed(model: Path, batches: list, run, sessions: int, threads: int) -> float:
    pool = [session(model, threads) for _ in range(sessions)]
    for s in pool:
        run(s, batches[0])  # warm-up
    start = time.perf_counter()
    workers = [threading.Thread(target=lambda k=k: [run(pool[k], b) for b in batches[k::sessions]])
               for k in range(sessions)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def main() -> None:
    rows = []
    for name, data, work in (("Silero VAD, 200 clips, 32 side by side", "speech-200", vad_work),
                             ("NudeNet 320n, 300 photos, 16 per run", "photos-300", detect_work),
                             ("paraphrase-MiniLM-L3-v2, docs-300 chunks", "docs-300", embed_work)):
        if not (DATA / data).exists():
            print(f"skipping {name}: run its model benchmark first to prepare {DATA / data}")
            continue
        model, batches, run = work(DATA / data)
        one = min(timed(model, batches, run, 1, CORES) for _ in range(2))
        many = min(timed(model, batches, run, CORES, 1) for _ in range(2))
        rows.append(f"| {name} | {one:.2f} s | {many:.2f} s | {one / many:.2f}x |")
        print(rows[-1])
    table = ("| model, work | 1 session x %d threads | %d sessions x 1 thread | sessions' speed-up |\n"
             "|---|---|---|---|\n" % (CORES, CORES)) + "\n".join(rows)
    with open(Path(__file__).parent / "RESULTS.md", "a") as f:
        f.write(f"\n## Model parallelism (issue #4), {datetime.date.today()}\n\nCommand: "
                f"`bench/.venv-peers/bin/python bench/model_parallelism.py` (onnxruntime {ort.__version__}, "
                f"{CORES} cores, best of 2). The bare model on the benchmarks' data; the batches are "
                "split between the sessions' threads.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
