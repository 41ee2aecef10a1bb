"""Text embedding, side by side in one run: real documents (the plain-text files under
/usr/share/doc, gathered into one Parquet file) -> chunks of 80 words -> one row per chunk ->
sentence embeddings of --model (default paraphrase-MiniLM-L3-v2; ``all-minilm-l6-v2`` is
embed_text's default, its checkpoint exported to ONNX by ``rillet.models``) on ONNX Runtime,
mean-pooled over real tokens, L2-normalised -> Parquet.

Every engine runs the same model on the same runtime (ONNX Runtime 1.31.1, every core):
- ``rillet``: the built-in ``rl.ai.embed_text`` (Rust tokenizer and ONNX Runtime through ``ort``).
  It cuts each batch, sorted by length, into passes of at most 512 tokens (rows x longest
  row) and runs them on one single-threaded session per core. It runs each distinct text
  through the model once: a repeat within a batch, or of one of the last 4,096 texts it
  embedded, gets the same vector. In the 300 documents, 357 of the 2,672 chunks repeat an
  earlier one, mostly licence text; the Python jobs embed every chunk.
- ``rillet_udf``: the same model as a Rillet Python class UDF (onnxruntime + tokenizers). The
  UDF sorts each batch by length and cuts it into passes of at most 8,192 tokens on one
  session over every core: a careful user's code (the naive one pads all 256 rows to the
  longest and runs them in one pass).
- ``daft``, ``ray``: that UDF's code as a Daft class UDF and a Ray Data ``map_batches`` class;
- ``daft_tuned``: the Daft job with the model code tuned by hand the way ``embed_text`` is
  (512-token passes, one single-threaded session per core, the passes split between the
  sessions' threads by tokens): the best a Daft user gets from this model without skipping
  repeats;
- ``bare``: the model alone in a tight loop, tuned the same way: the chunks (read from a
  Parquet file made beforehand) tokenized and run 256 at a time, no engine and no output;
- ``rillet_l3`` (only when named in --engines): ``embed_text`` on paraphrase-MiniLM-L3-v2
  whatever --model is, to put the 6-layer default beside the 3-layer model.

Reports chunks/s (median of --runs after one warm-up), peak RSS, and each engine's ratio,
with the pipeline efficiency (Rillet's throughput over the bare model's).

    bash bench/run.sh embed_text.py [--docs 1500] [--runs 3] [--model NAME] [--engines a,b]
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
import os, threading, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
def chunk(text, size={WORDS}):
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
class Embedder:
    def __init__(self, model_dir, tokens_per_pass=8192, sessions=1):
        self.sessions = []
        for _ in range(sessions):
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if sessions > 1:
                options.intra_op_num_threads = 1
            self.sessions.append(ort.InferenceSession(model_dir + "/model.onnx", options, providers=["CPUExecutionProvider"]))
        self.session = self.sessions[0]
        self.tokens_per_pass = tokens_per_pass
        self.hidden = next(o.name for o in self.session.get_outputs() if len(o.shape) == 3)  # rows x tokens x 384
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
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= self.tokens_per_pass:
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
    def run(self, batch, mask, session=None):
        hidden = (session or self.session).run([self.hidden], {{"input_ids": batch, "attention_mask": mask}})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    def parts(self, groups):
        # Consecutive groups, one part per session, of about equal tokens.
        total = sum(batch.size for _, batch, _ in groups)
        parts, done = [[] for _ in self.sessions], 0
        for group in groups:
            parts[min(done * len(parts) // max(total, 1), len(parts) - 1)].append(group)
            done += group[1].size
        return parts
    def __call__(self, texts):
        ids = self.encode(texts)
        out = np.zeros((len(ids), 384), np.float32)
        errors = []
        def run_part(part, session):
            try:
                for rows, batch, mask in part:
                    out[rows] = self.run(batch, mask, session)
            except Exception as e:
                errors.append(e)
        parts = self.parts(list(self.groups(ids)))
        threads = [threading.Thread(target=run_part, args=(part, s)) for part, s in zip(parts[1:], self.sessions[1:])]
        for t in threads:
            t.start()
        run_part(parts[0], self.session)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out
"""

# How the tuned jobs (the bare loop, ``daft_tuned``) build the model: what embed_text does.
TUNED = "tokens_per_pass=512, sessions=os.cpu_count()"

JOBS = {
    "rillet": """
import sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
(rl.read_parquet(sys.argv[1] + "/docs.parquet")
   .select("path", col("text").text.chunk(%d, unit="words").alias("chunk"))
   .explode("chunk")
   .select("path", "chunk", rl.ai.embed_text(col("chunk")MODEL_ARGUMENT).alias("embedding"))
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""" % WORDS,
    "rillet_udf": EMBEDDER + """
import sys, pyarrow as pa, rillet as rl
from rillet import col, models
rl.set_config(progress=False)
MODEL = str(models.fetch("MODEL_NAME"))
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
MODEL = sys.argv[1] + "/model-MODEL_NAME"
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
MODEL = sys.argv[1] + "/model-MODEL_NAME"
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
embedder = Embedder(sys.argv[1] + "/model-MODEL_NAME", %s)
chunks = pq.read_table(sys.argv[1] + "/chunks.parquet").column("chunk").to_pylist()
done = 0
for start in range(0, len(chunks), %d):
    done += len(embedder(chunks[start:start + %d]))
assert done == len(chunks), (done, len(chunks))
""" % (TUNED, BATCH, BATCH),
}
# Daft with the model code tuned by hand as embed_text is: what a Daft user gets by
# copying the passes and the sessions into the UDF.
JOBS["daft_tuned"] = JOBS["daft"].replace("Embedder(MODEL)", "Embedder(MODEL, %s)" % TUNED)
assert JOBS["daft_tuned"] != JOBS["daft"]
# Rillet on the 3-layer model whatever --model is: what the 6-layer default costs over it.
JOBS["rillet_l3"] = JOBS["rillet"].replace("MODEL_ARGUMENT", ', model="paraphrase-minilm-l3-v2"')
DEFAULT_MODEL = "all-minilm-l6-v2"


def jobs_for(model: str, names: list[str]) -> dict[str, str]:
    """The named jobs, running ``model`` (the Rillet job without ``model=`` when it is
    embed_text's default)."""
    argument = "" if model == DEFAULT_MODEL else f', model="{model}"'
    return {name: JOBS[name].replace("MODEL_ARGUMENT", argument).replace("MODEL_NAME", model)
            for name in names}


def documents(count: int, model_names: list[str]) -> Path:
    """``count`` plain-text files from /usr/share/doc (README, copyright, changelogs that
    are not compressed) as ``docs.parquet`` (path, text), their 80-word chunks as
    ``chunks.parquet`` for the bare model, and each model's files under ``model-NAME/``."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rillet import models

    out = HERE / "data" / f"docs-{count}"
    out.mkdir(parents=True, exist_ok=True)
    for name in model_names:
        if not (out / f"model-{name}").exists():
            shutil.copytree(models.fetch(name), out / f"model-{name}")
    if (out / "chunks.parquet").exists():
        return out
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="paraphrase-minilm-l3-v2",
                        help=f"the model every job runs (rillet_l3 aside); {DEFAULT_MODEL} is embed_text's default")
    parser.add_argument("--engines", default=",".join(name for name in JOBS if name != "rillet_l3"))
    args = parser.parse_args()
    peers_python = ensure_peers()
    data = documents(args.docs, [args.model])
    import pyarrow.parquet as pq

    chunks = pq.ParquetFile(data / "chunks.parquet").metadata.num_rows
    jobs = jobs_for(args.model, args.engines.split(","))
    model_benchmark(f"embed_text, {args.docs:,} documents from /usr/share/doc, {chunks:,} chunks of {WORDS} words",
                    jobs, peers_python, data, HERE / "data" / "out-embed", args.runs, chunks, "chunks/s",
                    f"bash bench/run.sh embed_text.py --docs {args.docs} --runs {args.runs} --model {args.model} "
                    f"--engines {args.engines}",
                    f"Model: {args.model} (ONNX; rillet_l3 runs paraphrase-minilm-l3-v2), batches of {BATCH}.")

if __name__ == "__main__":
    main()
