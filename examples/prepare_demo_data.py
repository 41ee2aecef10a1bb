"""Prepare the main job's media under one directory: real photos from the scikit-image and
scikit-learn wheels (downloaded from PyPI once, cached outside the repository), the
scikit-learn wheel's dataset descriptions as text, speech spoken by espeak-ng, and short
videos made by ffmpeg. Plus a generated Parquet dataset of photo views for
``photo_pipeline.py``.

    python examples/prepare_demo_data.py demo-data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rillet.dev.datasets import sample_photos, sample_speech, sample_texts, sample_videos


def generate_views(photos: list[Path], target: Path, rows: int = 2_000_000, files: int = 4) -> None:
    if target.exists() and any(target.glob("*.parquet")):
        return
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    names = np.array([p.name for p in photos] + ["missing-photo.png"])
    per_file = rows // files
    for i in range(files):
        table = pa.table({
            "view_id": np.arange(i * per_file, (i + 1) * per_file, dtype=np.int64),
            "photo": names[rng.integers(0, len(names), per_file)],
            "user_id": rng.integers(0, 50_000, per_file),
            "seconds": rng.gamma(2.0, 3.0, per_file).round(2),
        })
        pq.write_table(table, target / f"views-{i}.parquet", row_group_size=128 * 1024)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data")
    photos = sample_photos(root / "photos")
    texts = sample_texts(root / "texts")
    speech = sample_speech(root / "speech")
    videos = sample_videos(root / "video", count=3, seconds=6)
    generate_views(photos, root / "views")
    print(f"prepared in {root}: {len(photos)} photos, {len(texts)} texts, {len(speech)} speech files, "
          f"{len(videos)} videos, and photo views")


if __name__ == "__main__":
    main()
