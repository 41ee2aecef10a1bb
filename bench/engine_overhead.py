"""Engine overhead, side by side in one run: read Parquet (10 M rows) -> filter ->
arithmetic column -> Python map_batches identity -> write Parquet, on Rillet, Daft and Ray
Data. Peers are installed into their own virtual environment (bench/.venv-peers). Reports
throughput (input rows per second, median of --runs after one warm-up) and peak RSS of the
process tree, with ratios.

    RILLET_PROFILE=release bash bench/run.sh engine_overhead.py [--rows 10000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _measure import side_by_side  # noqa: E402

HERE = Path(__file__).parent
PEERS = HERE / ".venv-peers"
# onnxruntime, tokenizers, scipy: the model benchmarks' peers and bare-model loops run the
# same runtime as Rillet's built-in AI functions.
PEER_PACKAGES = ["daft>=0.7,<0.8", "ray[data]>=2.60", "psutil", "pyarrow", "pandas", "pillow",
                 "onnxruntime==1.31.1", "tokenizers", "scipy"]

JOBS = {
    "rillet": """
import sys, rillet as rl
from rillet import col
rl.set_config(progress=False)
(rl.read_parquet(sys.argv[1]).filter(col("a") > 0.5)
   .with_column("y", col("a") * 2 + col("b"))
   .map_batches(lambda t: t, batch_format="pyarrow")
   .write_parquet(sys.argv[2], mode="overwrite", compression="snappy"))
""",
    "daft": """
import sys, daft
from daft import col
df = daft.read_parquet(sys.argv[1] + "/*.parquet").where(col("a") > 0.5)
df = df.with_column("y", col("a") * 2 + col("b"))
@daft.udf(return_dtype=daft.DataType.float64())
def identity(s):
    return s
df = df.with_column("y", identity(col("y")))
df.write_parquet(sys.argv[2])
""",
    "ray": """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
import pyarrow.compute as pc
ds = ray.data.read_parquet(sys.argv[1])
ds = ds.filter(expr="a > 0.5")
ds = ds.map_batches(lambda t: t.append_column("y", pc.add(pc.multiply(t["a"], 2), t["b"])), batch_format="pyarrow")
ds = ds.map_batches(lambda t: t, batch_format="pyarrow")
ds.write_parquet(sys.argv[2])
""",
}


def ensure_peers() -> Path:
    python = PEERS / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    if subprocess.run([str(python), "-c", "import daft, ray, psutil, pyarrow, pandas, PIL, onnxruntime, tokenizers, scipy"], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def generate(rows: int) -> Path:
    data = HERE / "data" / f"overhead-{rows}"
    if data.exists():
        return data
    data.mkdir(parents=True)
    rng = np.random.default_rng(3)
    per_file = 1_000_000
    for i in range(0, rows, per_file):
        n = min(per_file, rows - i)
        pq.write_table(pa.table({"id": np.arange(i, i + n, dtype=np.int64), "a": rng.random(n),
                                 "b": rng.random(n), "c": rng.random(n)}), data / f"part-{i // per_file:03d}.parquet")
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    peers_python = ensure_peers()
    data = generate(args.rows)
    pythons = {"rillet": sys.executable, "daft": str(peers_python), "ray": str(peers_python)}
    text = side_by_side(JOBS, pythons, data, HERE / "data" / "out", args.runs, args.rows, "throughput (rows/s)")
    print(text)
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### engine_overhead, {datetime.date.today()}, {args.rows:,} rows, {args.runs} runs + warm-up\n\n{text}\n")


if __name__ == "__main__":
    main()
