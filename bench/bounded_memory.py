"""Bounded memory: read_parquet -> filter -> with_column -> write_parquet over a generated
Parquet dataset of at least 4 GB on disk; reports the process's peak RSS.

    RILLET_PROFILE=release bash bench/run.sh bounded_memory.py [--gb 4.2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _measure import mib, run_measured, written_rows  # noqa: E402

HERE = Path(__file__).parent
DATA = HERE / "data" / "bounded"

PIPELINE = """
import sys, rillet as rl
from rillet import col
rl.set_config(memory_budget=256 << 20, progress=False)
stats = (rl.read_parquet(sys.argv[1])
           .filter(col("a") > 0.25)
           .with_column("score", col("a") * 2 + col("b") - col("c"))
           .write_parquet(sys.argv[2], mode="overwrite"))
print("ROWS", stats["rows_written"])
"""


def generate(target_bytes: int) -> tuple[int, int]:
    DATA.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in DATA.glob("*.parquet"))
    rows_per_file = 4_000_000
    rng = np.random.default_rng(42)
    tags = pa.array(["cat", "dog", "bird", "fish", "ant"])
    i = len(list(DATA.glob("*.parquet")))
    while size < target_bytes:
        n = rows_per_file
        table = pa.table({
            "id": np.arange(i * n, (i + 1) * n, dtype=np.int64),
            "a": rng.random(n), "b": rng.random(n), "c": rng.random(n), "d": rng.random(n),
            "tag": tags.take(rng.integers(0, len(tags), n)),
        })
        path = DATA / f"part-{i:04d}.parquet"
        pq.write_table(table, path, compression="none", row_group_size=256 * 1024)
        size += path.stat().st_size
        i += 1
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in DATA.glob("*.parquet"))
    return size, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=4.2)
    args = parser.parse_args()
    size, rows = generate(int(args.gb * 1e9))
    out = HERE / "data" / "bounded-out"
    shutil.rmtree(out, ignore_errors=True)
    result = run_measured([sys.executable, "-c", PIPELINE, str(DATA), str(out)])
    if result["code"] != 0:
        sys.exit(result["output"])
    written = written_rows(out)
    shutil.rmtree(out, ignore_errors=True)  # about as large as the dataset
    reported = int(result["output"].split("ROWS", 1)[1].split()[0])
    if written != reported:
        sys.exit(f"the job reported {reported} rows written but the files hold {written}")
    line = (f"| {size / 1e9:.2f} GB, {rows:,} rows | {result['seconds']:.1f} s | "
            f"{mib(result['peak_rss'])} | {'PASS' if result['peak_rss'] < 1 << 30 else 'FAIL'} (< 1 GiB) |")
    print(result["output"].strip())
    print(line)
    profile = os.environ.get("RILLET_PROFILE", "dev")
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n### bounded_memory, {datetime.date.today()}, {profile} build\n\n"
                "| dataset | time | peak RSS | verdict |\n|---|---|---|---|\n" + line + "\n")

if __name__ == "__main__":
    main()
