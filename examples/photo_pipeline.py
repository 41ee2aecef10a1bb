"""The demo job: which photos are watched most, and for how long?

Reads the photo files (one row per file: path, size, modified), names them with a Python
UDF, joins them with two million view events from Parquet, aggregates per photo, derives a
column in pandas with map_batches, and writes the result to Parquet.

    python examples/photo_pipeline.py demo-data
"""

from __future__ import annotations

import os
import sys
import time

import rillet as rl
from rillet import col


@rl.udf(return_dtype="string")
def file_name(path: str) -> str:
    return os.path.basename(path)


def add_minutes(frame):
    frame["minutes_per_view"] = frame["seconds"] / frame["views"] / 60.0
    return frame


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "demo-data"
    started = time.perf_counter()

    photos = (rl.read_files(f"{root}/photos")
                .with_column("photo", file_name(col("path")))
                .with_column("kib", col("size").cast("float64") / 1024))
    views = rl.read_parquet(f"{root}/views").filter(col("seconds") > 0.5)

    per_photo = (views.join(photos, on="photo", how="inner")
                      .group_by("photo", "kib")
                      .agg(rl.count().alias("views"), col("seconds").sum().alias("seconds"))
                      .map_batches(add_minutes, batch_format="pandas")
                      .sort("views", descending=True))

    print(per_photo.explain())
    stats = per_photo.write_parquet(f"{root}/out", mode="overwrite")
    print(f"\nwrote {stats['rows_written']} rows to {stats['files_written']}")
    for op in stats["operators"]:
        print(f"  {op['name']}: {op['rows_out']} rows, {op['rows_per_s']:.0f} rows/s")

    result = rl.read_parquet(f"{root}/out").sort("views", descending=True)
    result.show(5)
    unmatched = views.join(photos, on="photo", how="anti").count()
    print(f"views of photos that do not exist: {unmatched}")
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
