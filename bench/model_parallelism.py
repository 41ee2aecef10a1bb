"""How ONNX Runtime should use the cores for each benchmark model: one session whose runs
spread over every core (intra-op threads), or one single-threaded session per core with the
runs split between them. The bare model in a tight loop on the data the model benchmarks
prepared (run those first), same batches, ONNX Runtime in the peers' environment. This is
what `rillet_ai::onnx::Parallelism` is chosen from.

    bench/.venv-peers/bin/python bench/model_parallelism.py            # appends to RESULTS.md
    bench/.venv-peers/bin/python bench/model_parallelism.py --passes   # the text encoder's pass size
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
DATA = Path(__file__).parent / "data"
CORES = os.cpu_count() or 1


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def shared_class(code: str, name: str) -> type:
    """A class of the model code every Python job of a model benchmark shares."""
    namespace: dict = {}
    exec(code, namespace)
    return namespace[name]


def on(cls: type, s: ort.InferenceSession, **attributes):
    """An instance of the benchmarks' model class ``cls`` running on session ``s``."""
    model = cls.__new__(cls)
    model.session = s
    model.__dict__.update(attributes)
    return model


def vad_work(data: Path):
    from detect_speech import BATCH, VAD

    vad = shared_class(VAD, "Vad")
    stored = np.load(data / "clips16k.npz")
    clips = [stored[k] for k in sorted(stored.files)]
    sr = np.array(16000, np.int64)
    return (data / "model" / "model.onnx", [clips[i:i + BATCH] for i in range(0, len(clips), BATCH)],
            lambda s, batch: on(vad, s, sr=sr).probabilities(batch))


def detect_work(data: Path):
    from detect_objects import BATCH, DETECTOR

    detector = shared_class(DETECTOR, "Detector")
    boxed = np.load(data / "letterboxed.npy")
    return (data / "model" / "model.onnx", [list(boxed[i:i + BATCH]) for i in range(0, len(boxed), BATCH)],
            lambda s, batch: on(detector, s).run(batch))


def embed_work(data: Path, tokens_per_pass: int = 8192):
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from embed_text import BATCH, EMBEDDER

    embedder = shared_class(EMBEDDER, "Embedder")
    tokenizer = Tokenizer.from_file(str(data / "model" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    chunks = pq.read_table(data / "chunks.parquet").column("chunk").to_pylist()
    batches = []
    for start in range(0, len(chunks), BATCH):  # tokenized beforehand: the model alone is timed
        ids = on(embedder, None, tokenizer=tokenizer).encode(chunks[start:start + BATCH])
        passes = on(embedder, None, tokens_per_pass=tokens_per_pass).groups(ids)
        batches.extend((batch, mask) for _, batch, mask in passes)

    def run(s, group):
        model = on(embedder, s)
        model.hidden = s.get_outputs()[2].name
        return model.run(*group)

    return data / "model" / "model.onnx", batches, run


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


def both_layouts(model: Path, batches: list, run) -> tuple[float, float]:
    """Best of 2 on one session over every core, and on one single-threaded session per core."""
    return (min(timed(model, batches, run, 1, CORES) for _ in range(2)),
            min(timed(model, batches, run, CORES, 1) for _ in range(2)))


def append(title: str, command: str, about: str, header: str, rows: list[str]) -> None:
    """Append a table of ``rows`` under ``header`` to RESULTS.md."""
    with open(Path(__file__).parent / "RESULTS.md", "a") as f:
        f.write(f"\n## {title} (issue #4), {datetime.date.today()}\n\nCommand: `{command}` (onnxruntime "
                f"{ort.__version__}, {CORES} cores, best of 2). {about}\n\n{header}\n|---|---|---|---|\n"
                + "\n".join(rows) + "\n")


def layouts() -> None:
    """One session over every core against one single-threaded session per core, for each
    benchmark model."""
    rows = []
    for name, data, work in (("Silero VAD, 200 clips, 32 side by side", "speech-200", vad_work),
                             ("NudeNet 320n, 300 photos, 16 per run", "photos-300", detect_work),
                             ("paraphrase-MiniLM-L3-v2, docs-300 chunks", "docs-300", embed_work)):
        if not (DATA / data).exists():
            print(f"skipping {name}: run its model benchmark first to prepare {DATA / data}")
            continue
        one, many = both_layouts(*work(DATA / data))
        rows.append(f"| {name} | {one:.2f} s | {many:.2f} s | {one / many:.2f}x |")
        print(rows[-1])
    append("Model parallelism", "bench/.venv-peers/bin/python bench/model_parallelism.py",
           "The bare model on the benchmarks' data; the batches are split between the sessions' threads.",
           f"| model, work | 1 session x {CORES} threads | {CORES} sessions x 1 thread | sessions' speed-up |", rows)


def passes() -> None:
    """The text encoder's tokens per pass (rows x longest row, the rows of each batch of 256
    sorted by length), in both layouts: what ``embed_text``'s pass size is chosen from."""
    if not (DATA / "docs-300").exists():
        sys.exit(f"run embed_text.py first to prepare {DATA / 'docs-300'}")
    rows = []
    for tokens in (256, 512, 1024, 2048, 8192):
        model, batches, run = embed_work(DATA / "docs-300", tokens)
        one, many = both_layouts(model, batches, run)
        rows.append(f"| {tokens:,} | {len(batches)} | {one:.2f} s | {many:.2f} s |")
        print(rows[-1])
    append("Text encoder passes", "bench/.venv-peers/bin/python bench/model_parallelism.py --passes",
           "paraphrase-MiniLM-L3-v2 on the 2,672 chunks of docs-300, tokenized beforehand; the passes "
           "are dealt in turn to the sessions' threads.",
           f"| tokens per pass | passes | 1 session x {CORES} threads | {CORES} sessions x 1 thread |", rows)


def main() -> None:
    passes() if "--passes" in sys.argv[1:] else layouts()


if __name__ == "__main__":
    main()
