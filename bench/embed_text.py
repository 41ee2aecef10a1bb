"""Text embedding, side by side in one run: real documents (the plain-text files under
/usr/share/doc, gathered into one Parquet file) -> chunks of 80 words -> one row per chunk ->
paraphrase-MiniLM-L3-v2 sentence embeddings (ONNX Runtime, mean-pooled over real tokens,
L2-normalised) -> Parquet.

Every engine runs the same model on the same runtime (ONNX Runtime 1.31.1, every core):
- ``rillet``: the built-in ``rl.ai.embed_text`` (Rust tokenizer and ONNX Runtime through ``ort``),
  which runs each distinct text through the model once: repeats within a batch, or of one
  of the last 4,096 texts it embedded, get the same vector (in the 300 documents, 357 of
  the 2,672 chunks repeat an earlier one, mostly licence text; the Python jobs embed every
  chunk);
- ``rillet_udf``: the same model as a Rillet Python class UDF (onnxruntime + tokenizers);
- ``daft``, ``ray``: that UDF's code as a Daft class UDF and a Ray Data ``map_batches`` class;
- ``bare``: the model alone in a tight loop: the chunks (read from a Parquet file made
  beforehand) tokenized and run 256 at a time, sorted by length within each 256 and cut into
  groups of at most 8,192 tokens (what ``embed_text`` does), no engine and no output.

Reports chunks/s (median of --runs after one warm-up), peak RSS, and each engine's ratio,
with the pipeline efficiency (Rillet's throughput over the bare model's).

    bash bench/run.sh embed_text.py [--docs 1500] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import model_benchmark  # noqa: E402
from engine_overhead import ensure_peers  # noqa: E402

HERE = Path(__file__).parent
WORDS = 80
BATCH = 256

# The model code every Python job shares (onnxruntime + tokenizers, like embed_text).
EMBEDDER = f"""
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
def chunk(text, size={WORDS}):
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
class Embedder:
    def __init__(self, model_dir):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_dir + "/model.onnx", options, providers=["CPUExecutionProvider"])
        self.hidden = self.session.get_outputs()[2].name   # rows x tokens x 384
        self.tokenizer = Tokenizer.from_file(model_dir + "/tokenizer.json")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(128)
    def encode(self, texts):
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]
    def groups(self, ids):
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= 8192:
                end += 1
            rows = order[start:end]
            width = len(ids[rows[-1]])
            batch = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])] = ids[i]
                mask[j, :len(ids[i])] = 1
            yield rows, batch, mask
            start = end
    def run(self, batch, mask):
        hidden = self.session.run([self.hidden], {{"input_ids": batch, "attention_mask": mask}})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    def __call__(self, texts):
        ids = self.encode(texts)
        out = np.zeros((len(ids), 384), np.float32)
        for rows, batch, mask in self.groups(ids):
            out[rows] = self.run(batch, mask)
        return out
"""

JOBS = {
    "rillet": """
import sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
(rl.read_parquet(sys.argv[1] + "/docs.parquet")
   .select("path", col("text").text.chunk(%d, unit="words").alias("chunk"))
   .explode("chunk")
   .select("path", "chunk", rl.ai.embed_text(col("chunk"), model="paraphrase-minilm-l3-v2").alias("embedding"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""" % WORDS,
    "rillet_udf": EMBEDDER + """
import sys, pyarrow as pa, rillet as rl
from rillet import col, models
rl.set_config(progress=False)
MODEL = str(models.fetch("paraphrase-minilm-l3-v2"))
@rl.udf(return_dtype=rl.Embedding(rl.float32, 384), batch=True, batch_size=%d, concurrency=1)
class Embed:
    def __init__(self):
        self.embedder = Embedder(MODEL)
    def __call__(self, texts):
        vectors = self.embedder(texts.to_pylist())
        return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384)
(rl.read_parquet(sys.argv[1] + "/docs.parquet")
   .select("path", col("text").text.chunk(%d, unit="words").alias("chunk"))
   .explode("chunk")
   .select("path", "chunk", Embed(col("chunk")).alias("embedding"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""" % (BATCH, WORDS),
    "daft": EMBEDDER + """
import sys, daft, pyarrow as pa
from daft import col, DataType
MODEL = sys.argv[1] + "/model"
@daft.udf(return_dtype=DataType.fixed_size_list(DataType.float32(), 384), batch_size=%d)
class Embed:
    def __init__(self):
        self.embedder = Embedder(MODEL)
    def __call__(self, texts):
        vectors = self.embedder(texts.to_pylist())
        return daft.Series.from_arrow(pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384))
df = daft.read_parquet(sys.argv[1] + "/docs.parquet")
df = df.with_column("chunk", col("text").apply(chunk, return_dtype=DataType.list(DataType.string())))
df = df.explode(col("chunk")).where(col("chunk").not_null())
df = df.select(col("path"), col("chunk"), Embed(col("chunk")).alias("embedding"))
df.write_parquet(sys.argv[2])
""" % BATCH,
    "ray": EMBEDDER + """
import sys, numpy as np, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
MODEL = sys.argv[1] + "/model"
class Embed:
    def __init__(self):
        self.embedder = Embedder(MODEL)
    def __call__(self, batch):
        return {"path": batch["path"], "chunk": batch["chunk"], "embedding": self.embedder(list(batch["chunk"]))}
ds = ray.data.read_parquet(sys.argv[1] + "/docs.parquet")
ds = ds.flat_map(lambda row: [{"path": row["path"], "chunk": c} for c in chunk(row["text"])])
ds = ds.map_batches(Embed, batch_size=%d, concurrency=1, batch_format="numpy")
ds.write_parquet(sys.argv[2])
""" % BATCH,
    "bare": EMBEDDER + """
import sys, pyarrow.parquet as pq
embedder = Embedder(sys.argv[1] + "/model")
chunks = pq.read_table(sys.argv[1] + "/chunks.parquet").column("chunk").to_pylist()
done = 0
for start in range(0, len(chunks), %d):
    ids = embedder.encode(chunks[start:start + %d])
    for rows, batch, mask in embedder.groups(ids):
        embedder.run(batch, mask)
        done += len(rows)
assert done == len(chunks), (done, len(chunks))
""" % (BATCH, BATCH),
}


def documents(count: int) -> Path:
    """``count`` plain-text files from /usr/share/doc (README, copyright, changelogs that
    are not compressed) as ``docs.parquet`` (path, text), their 80-word chunks as
    ``chunks.parquet`` for the bare model, and the model's files under ``model/``."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rillet import models

    out = HERE / "data" / f"docs-{count}"
    if (out / "chunks.parquet").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths, texts = [], []
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if len(paths) == count:
            break
        if not path.is_file() or path.suffix in (".gz", ".html", ".png", ".svg", ".pdf", ".css", ".js"):
            continue
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text.split()) >= 20:
            paths.append(str(path))
            texts.append(text)
    if len(paths) < count:
        sys.exit(f"only {len(paths)} text documents under /usr/share/doc, asked for {count}")
    pq.write_table(pa.table({"path": paths, "text": texts}), out / "docs.parquet")
    chunks = [" ".join(w[i:i + WORDS]) for t in texts for w in [t.split()] for i in range(0, len(w), WORDS)]
    pq.write_table(pa.table({"chunk": chunks}), out / "chunks.parquet")
    model = models.fetch("paraphrase-minilm-l3-v2")
    shutil.copytree(model, out / "model")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default=",".join(JOBS))
    args = parser.parse_args()
    peers_python = ensure_peers()
    data = documents(args.docs)
    import pyarrow.parquet as pq

    chunks = pq.ParquetFile(data / "chunks.parquet").metadata.num_rows
    jobs = {name: JOBS[name] for name in args.engines.split(",")}
    model_benchmark(f"embed_text, {args.docs:,} documents from /usr/share/doc, {chunks:,} chunks of {WORDS} words",
                    jobs, peers_python, data, HERE / "data" / "out-embed", args.runs, chunks, "chunks/s",
                    f"bash bench/run.sh embed_text.py --docs {args.docs} --runs {args.runs}",
                    f"Model: paraphrase-MiniLM-L3-v2 (ONNX), batches of {BATCH}.")

if __name__ == "__main__":
    main()
